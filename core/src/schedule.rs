//! Schedules: a cron expression (or `@hourly`, `@daily`, `@weekly`, `@monthly`)
//! in a time zone, turned into data intervals. As in Airflow, the run for the
//! interval `[start, end)` has logical date `start` and becomes due at `end`.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

/// Why a schedule or start date is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Not an IANA time zone.
    #[error("unknown time zone `{0}`")]
    UnknownTimeZone(String),
    /// Not a cron expression.
    #[error("invalid schedule `{cron}`: {source}")]
    InvalidCron {
        /// The expression.
        cron: String,
        /// croner's reason.
        source: croner::errors::CronError,
    },
    /// A start date in no accepted form.
    #[error("invalid start_date `{0}`: write 2026-01-31, 2026-01-31T06:00:00 or RFC 3339")]
    StartDateForm(String),
    /// A local start date skipped by a DST change.
    #[error("start_date `{text}` does not exist in {timezone}")]
    StartDateMissing {
        /// The date as written.
        text: String,
        /// The time zone.
        timezone: String,
    },
}

/// How far before `from` fire times are looked at: longer than any gap or
/// repeated span in the tz database (Pacific/Apia skipped a whole day).
const LOOKBEHIND: chrono::Duration = chrono::Duration::hours(26);
/// The step and the number of steps taken back out of a gap.
const GAP_SEARCH_STEP: chrono::Duration = chrono::Duration::minutes(15);
const GAP_SEARCH_STEPS: i32 = 26 * 4;

fn time_zone(timezone: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(timezone).map_err(|_| ScheduleError::UnknownTimeZone(timezone.to_owned()))
}

/// A DAG's schedule as stored in its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Cron expression or `@daily`-style nickname.
    pub cron: String,
    /// IANA time zone the expression is read in (`UTC` by default).
    pub timezone: String,
    /// No interval starts before this.
    pub start_date: DateTime<Utc>,
    /// Whether missed intervals are all run (true) or only the latest (false).
    pub catchup: bool,
    /// How many runs of the DAG may be active at once.
    pub max_active_runs: u32,
}

/// One data interval: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// Start, which is also the run's logical date.
    pub start: DateTime<Utc>,
    /// End, when the run becomes due.
    pub end: DateTime<Utc>,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `cron` in time zone `timezone`.
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let tz = time_zone(timezone)?;
        let cron = Cron::from_str(cron).map_err(|source| ScheduleError::InvalidCron {
            cron: cron.to_owned(),
            source,
        })?;
        Ok(Self { cron, tz })
    }

    /// The schedule of `spec`.
    pub fn of(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        Self::parse(&spec.cron, &spec.timezone)
    }

    /// The instant a local fire time `naive` stands for. A time the clock
    /// shows twice (the repeated autumn hour) is its first occurrence; a time
    /// the clock skips (a spring-forward gap) moves forward by the gap's
    /// length, i.e. is read with the offset in force just before the gap.
    /// `None` only for a time beyond chrono's range or in a gap longer than a
    /// day (none in the tz database); [`Self::ticks`] then skips it, so the
    /// interval around it is longer, never missing.
    fn instant(&self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => {
                // Step back to the last local time before the gap; no gap in
                // the tz database lasts longer than a day.
                let before = (1..=GAP_SEARCH_STEPS).find_map(|k| {
                    let earlier = naive.checked_sub_signed(GAP_SEARCH_STEP * k)?;
                    self.tz.from_local_datetime(&earlier).latest()
                })?;
                let offset =
                    chrono::Duration::seconds(before.offset().fix().local_minus_utc().into());
                naive
                    .checked_sub_signed(offset)
                    .map(|t| Utc.from_utc_datetime(&t))
            }
        }
    }

    /// The schedule's fire times at or after `from`, strictly increasing.
    ///
    /// Local fire times are mapped by [`Self::instant`]; one whose instant is
    /// not later than an earlier fire time's (a time moved out of a gap onto
    /// one that exists anyway) is dropped, so every interval has a length.
    fn ticks(&self, from: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        // Start a day and more before `from` in local time, so that fire times
        // moved across a gap or a repeated hour before `from` are seen.
        let mut cursor = from
            .with_timezone(&self.tz)
            .naive_local()
            .checked_sub_signed(LOOKBEHIND);
        let mut inclusive = true;
        let mut latest: Option<DateTime<Utc>> = None;
        std::iter::from_fn(move || {
            loop {
                let naive = self.cron.find_next_occurrence(&cursor?, inclusive).ok();
                inclusive = false;
                cursor = naive;
                let Some(t) = self.instant(naive?) else {
                    continue;
                };
                if latest.is_some_and(|l| t <= l) {
                    continue;
                }
                latest = Some(t);
                if t >= from {
                    return Some(t);
                }
            }
        })
    }

    /// The interval whose start is the first tick at or after `t`.
    pub fn interval_at_or_after(&self, t: DateTime<Utc>) -> Option<Interval> {
        let mut ticks = self.ticks(t);
        let start = ticks.next()?;
        let end = ticks.next()?;
        Some(Interval { start, end })
    }

    /// Intervals whose start lies in `[from, to]`: contiguous, each one's end
    /// is the next one's start.
    pub fn intervals_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Interval> {
        let mut out = Vec::new();
        let mut ticks = self.ticks(from);
        let Some(mut start) = ticks.next() else {
            return out;
        };
        while start <= to {
            let Some(end) = ticks.next() else {
                break;
            };
            out.push(Interval { start, end });
            start = end;
        }
        out
    }

    /// Complete intervals (`end <= now`) starting at or after `from`.
    pub fn complete_since(&self, from: DateTime<Utc>, now: DateTime<Utc>) -> Vec<Interval> {
        let mut out = self.intervals_between(from, now);
        out.retain(|i| i.end <= now);
        out
    }

    /// When the next interval starting at or after `from` becomes due.
    pub fn next_due(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.interval_at_or_after(from).map(|i| i.end)
    }
}

/// Parses a start date: `2026-01-31` (midnight in `tz`), `2026-01-31T06:00:00`
/// (in `tz`) or RFC 3339 with an offset.
pub fn parse_start_date(text: &str, timezone: &str) -> Result<DateTime<Utc>, ScheduleError> {
    let tz = time_zone(timezone)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .map_err(|_| ScheduleError::StartDateForm(text.to_owned()))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ScheduleError::StartDateMissing {
            text: text.to_owned(),
            timezone: timezone.to_owned(),
        })
}

/// `ds` (`2026-01-31`) and `ds_nodash` (`20260131`) of a logical date, in UTC:
/// what a task's context serves.
pub fn ds(logical_date: DateTime<Utc>) -> (String, String) {
    (
        logical_date.format("%Y-%m-%d").to_string(),
        logical_date.format("%Y%m%d").to_string(),
    )
}

/// The intervals of a scheduled DAG that get a run now: of the `complete`
/// intervals (oldest first), those after the latest interval that already has
/// a run, only the newest one unless `catchup`, and no more than
/// `max_active_runs` leaves room for beside the `active` runs.
pub fn due_intervals(
    spec: &ScheduleSpec,
    complete: Vec<Interval>,
    latest_run: Option<DateTime<Utc>>,
    active: usize,
) -> Vec<Interval> {
    let mut due: Vec<Interval> = complete
        .into_iter()
        .filter(|i| latest_run.is_none_or(|l| i.start > l))
        .collect();
    if !spec.catchup {
        due = due.pop().into_iter().collect();
    }
    let room = (spec.max_active_runs as usize).saturating_sub(active);
    due.truncate(room);
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn daily(catchup: bool, max_active_runs: u32) -> (ScheduleSpec, Vec<Interval>) {
        let spec = ScheduleSpec {
            cron: "@daily".into(),
            timezone: "UTC".into(),
            start_date: utc("2026-01-01T00:00:00Z"),
            catchup,
            max_active_runs,
        };
        let complete = Schedule::of(&spec)
            .expect("schedule")
            .complete_since(spec.start_date, utc("2026-01-06T12:00:00Z"));
        (spec, complete)
    }

    fn starts(intervals: &[Interval]) -> Vec<String> {
        intervals.iter().map(|i| ds(i.start).0).collect()
    }

    #[test]
    fn catchup_runs_every_missed_interval_oldest_first() {
        let (spec, complete) = daily(true, 16);
        let due = due_intervals(&spec, complete, None, 0);
        assert_eq!(
            starts(&due),
            [
                "2026-01-01",
                "2026-01-02",
                "2026-01-03",
                "2026-01-04",
                "2026-01-05"
            ]
        );
    }

    #[test]
    fn without_catchup_only_the_latest_interval_runs() {
        let (spec, complete) = daily(false, 16);
        assert_eq!(
            starts(&due_intervals(&spec, complete, None, 0)),
            ["2026-01-05"]
        );
    }

    #[test]
    fn intervals_up_to_the_latest_run_are_not_run_again() {
        let (spec, complete) = daily(true, 16);
        let due = due_intervals(&spec, complete, Some(utc("2026-01-03T00:00:00Z")), 0);
        assert_eq!(starts(&due), ["2026-01-04", "2026-01-05"]);
    }

    #[test]
    fn max_active_runs_leaves_room_only_beside_active_runs() {
        let (spec, complete) = daily(true, 3);
        assert_eq!(
            starts(&due_intervals(&spec, complete.clone(), None, 1)),
            ["2026-01-01", "2026-01-02"]
        );
        assert!(due_intervals(&spec, complete, None, 3).is_empty());
    }

    #[test]
    fn ds_is_the_utc_date_of_the_logical_date() {
        assert_eq!(
            ds(utc("2026-01-31T23:30:00Z")),
            ("2026-01-31".to_owned(), "20260131".to_owned())
        );
        // A logical date given with an offset is a UTC instant: its UTC date counts.
        assert_eq!(ds(utc("2026-02-01T00:30:00+01:00")).0, "2026-01-31");
    }

    #[test]
    fn daily_intervals_cross_a_month_boundary() {
        let s = Schedule::parse("@daily", "UTC").expect("schedule");
        let got = s.intervals_between(utc("2026-01-30T00:00:00Z"), utc("2026-02-01T00:00:00Z"));
        let starts: Vec<String> = got.iter().map(|i| ds(i.start).0).collect();
        assert_eq!(starts, ["2026-01-30", "2026-01-31", "2026-02-01"]);
        assert_eq!(got[1].end, utc("2026-02-01T00:00:00Z"));
    }

    #[test]
    fn monthly_intervals_have_the_months_lengths() {
        let s = Schedule::parse("@monthly", "UTC").expect("schedule");
        let got = s.intervals_between(utc("2026-01-01T00:00:00Z"), utc("2026-02-01T00:00:00Z"));
        let days: Vec<i64> = got.iter().map(|i| (i.end - i.start).num_days()).collect();
        assert_eq!(days, [31, 28]);
    }

    #[test]
    fn a_dst_change_gives_a_23_hour_interval_in_local_time() {
        // Europe/Paris springs forward on 2026-03-29 at 02:00 local (01:00 UTC).
        let s = Schedule::parse("30 1 * * *", "Europe/Paris").expect("schedule");
        let got = s.intervals_between(utc("2026-03-27T00:00:00Z"), utc("2026-03-30T12:00:00Z"));
        let hours: Vec<i64> = got.iter().map(|i| (i.end - i.start).num_hours()).collect();
        assert_eq!(hours, [24, 24, 23, 24]);
        assert_eq!(got[2].start, utc("2026-03-29T00:30:00Z"), "01:30 CET");
        assert_eq!(got[2].end, utc("2026-03-29T23:30:00Z"), "01:30 CEST");
    }

    #[test]
    fn a_fire_time_in_the_spring_gap_moves_forward_by_the_gap() {
        // Issue 16: 02:30 does not exist in Paris on 2026-03-29; it fires at
        // 03:30 CEST (01:30 UTC), and the day keeps its interval.
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").expect("schedule");
        let got = s.intervals_between(utc("2026-03-27T00:00:00Z"), utc("2026-03-30T12:00:00Z"));
        let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
            got.iter().map(|i| (i.start, i.end)).collect();
        assert_eq!(
            spans,
            [
                (utc("2026-03-27T01:30:00Z"), utc("2026-03-28T01:30:00Z")),
                (utc("2026-03-28T01:30:00Z"), utc("2026-03-29T01:30:00Z")),
                (utc("2026-03-29T01:30:00Z"), utc("2026-03-30T00:30:00Z")),
                (utc("2026-03-30T00:30:00Z"), utc("2026-03-31T00:30:00Z")),
            ]
        );
        // Asked from inside the day of the change, the same interval.
        assert_eq!(
            s.interval_at_or_after(utc("2026-03-28T01:30:01Z")),
            Some(got[2])
        );
        assert_eq!(
            s.next_due(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn a_fire_time_in_the_repeated_autumn_hour_is_its_first_occurrence() {
        // 02:30 happens twice in Paris on 2026-10-25: at 00:30 UTC (CEST) and
        // 01:30 UTC (CET). The first one is the fire time; that day's interval
        // lasts 25 hours.
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").expect("schedule");
        let got = s.intervals_between(utc("2026-10-24T00:00:00Z"), utc("2026-10-25T12:00:00Z"));
        let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
            got.iter().map(|i| (i.start, i.end)).collect();
        assert_eq!(
            spans,
            [
                (utc("2026-10-24T00:30:00Z"), utc("2026-10-25T00:30:00Z")),
                (utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")),
            ]
        );
        // From inside the repeated hour, the next fire time is the next day's.
        assert_eq!(
            s.interval_at_or_after(utc("2026-10-25T01:00:00Z"))
                .map(|i| i.start),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn sub_hourly_fire_times_in_the_gap_are_not_doubled() {
        // Every 30 minutes across Paris's spring gap: 02:00 and 02:30 move to
        // 03:00 and 03:30 CEST, which also exist; each instant fires once.
        let s = Schedule::parse("*/30 * * * *", "Europe/Paris").expect("schedule");
        let got = s.intervals_between(utc("2026-03-29T00:00:00Z"), utc("2026-03-29T02:00:00Z"));
        let starts: Vec<DateTime<Utc>> = got.iter().map(|i| i.start).collect();
        assert_eq!(
            starts,
            [
                utc("2026-03-29T00:00:00Z"),
                utc("2026-03-29T00:30:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:30:00Z"),
                utc("2026-03-29T02:00:00Z"),
            ]
        );
        assert!(
            got.iter()
                .all(|i| i.end - i.start == chrono::Duration::minutes(30))
        );
    }

    /// Cron expressions the properties are checked on.
    const CRONS: &[&str] = &[
        "@daily",
        "@hourly",
        "@weekly",
        "@monthly",
        "30 2 * * *",
        "0 2 * * *",
        "45 1 * * *",
        "0 3 * * 0",
        "30 0 * * 1-5",
        "15,45 1-3 * * *",
        "0 */6 * * *",
        "0 0 29 * *",
        "30 2 1 * *",
        "45 23 * * 6",
        "*/20 0-4 * * *",
    ];

    /// Time zones with DST (or another offset change) and years holding changes.
    const ZONES: &[(&str, &[i32])] = &[
        ("Europe/Paris", &[2024, 2026]),
        ("America/New_York", &[2020, 2026]),
        ("Australia/Sydney", &[2024, 2026]),
        ("Asia/Tehran", &[2020, 2022]),
        ("Australia/Lord_Howe", &[2024, 2026]),
        ("Pacific/Apia", &[2011]),
        ("UTC", &[2024]),
    ];

    /// The longest and shortest gap between consecutive fire times of `cron`
    /// read as plain wall-clock times (no zone), over `[from, to]`.
    fn wall_clock_gaps(
        cron: &str,
        from: NaiveDateTime,
        to: NaiveDateTime,
    ) -> (chrono::Duration, chrono::Duration) {
        let cron = Cron::from_str(cron).expect("cron");
        let mut longest = chrono::Duration::zero();
        let mut shortest = chrono::Duration::MAX;
        let mut previous = cron.find_next_occurrence(&from, true).expect("a tick");
        while previous < to {
            let next = cron.find_next_occurrence(&previous, false).expect("a tick");
            longest = longest.max(next - previous);
            shortest = shortest.min(next - previous);
            previous = next;
        }
        (longest, shortest)
    }

    #[test]
    fn intervals_are_contiguous_increasing_and_bounded_across_zones_and_years() {
        let hour = chrono::Duration::hours(1);
        for cron in CRONS {
            for (zone, years) in ZONES {
                let s = Schedule::parse(cron, zone).expect("schedule");
                for year in *years {
                    let from = utc(&format!("{year}-01-01T00:00:00Z"));
                    let to = utc(&format!("{}-01-01T00:00:00Z", year + 1));
                    let got = s.intervals_between(from, to);
                    let what = format!("`{cron}` in {zone}, {year}");
                    let (longest, shortest) = wall_clock_gaps(
                        cron,
                        from.naive_utc() - chrono::Duration::days(40),
                        to.naive_utc() + chrono::Duration::days(40),
                    );
                    assert!(!got.is_empty(), "{what}: no interval");
                    assert!(got[0].start >= from, "{what}: starts before {from}");
                    for i in &got {
                        assert!(i.start < i.end, "{what}: {i:?} is empty or reversed");
                        assert!(i.start <= to, "{what}: {i:?} starts after {to}");
                        assert!(
                            i.end - i.start <= longest + hour,
                            "{what}: {i:?} is longer than {longest} + 1 h"
                        );
                    }
                    for pair in got.windows(2) {
                        assert_eq!(pair[0].end, pair[1].start, "{what}: a gap or overlap");
                    }
                    // Asked from any interval's start, the same intervals follow.
                    for i in got.iter().step_by(got.len().div_ceil(7)) {
                        let again = s.intervals_between(i.start, to);
                        assert_eq!(again.first(), Some(i), "{what}: from {}", i.start);
                        assert_eq!(again.last(), got.last(), "{what}: from {}", i.start);
                    }
                    // Fire times further apart than any offset change all fire:
                    // every wall-clock fire time has its interval.
                    if shortest > hour && *zone != "Pacific/Apia" {
                        let cron = Cron::from_str(cron).expect("cron");
                        let local_from = from.with_timezone(&s.tz).naive_local();
                        let local_to = to.with_timezone(&s.tz).naive_local();
                        let mut wall = 0;
                        let mut t = cron.find_next_occurrence(&local_from, true).expect("tick");
                        while t <= local_to {
                            wall += 1;
                            t = cron.find_next_occurrence(&t, false).expect("tick");
                        }
                        assert!(
                            got.len().abs_diff(wall) <= 1,
                            "{what}: {} intervals for {wall} wall-clock fire times",
                            got.len()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn complete_intervals_exclude_the_current_one() {
        let s = Schedule::parse("@daily", "UTC").expect("schedule");
        let got = s.complete_since(utc("2026-05-01T00:00:00Z"), utc("2026-05-03T12:00:00Z"));
        assert_eq!(got.len(), 2);
        assert_eq!(
            s.next_due(utc("2026-05-03T00:00:00Z")),
            Some(utc("2026-05-04T00:00:00Z"))
        );
    }

    #[test]
    fn start_dates_and_errors() {
        assert_eq!(
            parse_start_date("2026-03-01", "Europe/Paris").expect("a date"),
            utc("2026-02-28T23:00:00Z")
        );
        assert_eq!(
            parse_start_date("2026-03-01T00:00:00Z", "Europe/Paris").expect("a date"),
            utc("2026-03-01T00:00:00Z")
        );
        assert!(parse_start_date("yesterday", "UTC").is_err());
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert!(Schedule::parse("@daily", "Mars/Olympus").is_err());
    }
}
