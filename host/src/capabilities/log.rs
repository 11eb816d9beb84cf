//! The `log` interface: leveled messages and progress, capped and rate-limited per try.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::{HasData, Linker};

use crate::bindings::sluice::task::log::{self, Host, Level};
use crate::events::{RunEvent, TaskKey};

use super::limits::Deadline;
use super::redact::Redactor;

/// Longest stored log line; longer ones are cut with a marker.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// What one try may log. Past a cap, lines are dropped and one marker line says
/// so; lines over the rate are dropped and counted, and the count is logged
/// when the rate allows again or the try ends. Lines from the host itself
/// (traps, timeouts, these markers) are never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Lines stored per try.
    pub max_lines: u32,
    /// Bytes stored per try (after cutting long lines).
    pub max_bytes: usize,
    /// Lines that may arrive at once before the rate applies.
    pub burst: u32,
    /// Sustained lines per second.
    pub per_second: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_lines: 10_000,
            max_bytes: 4 << 20,
            burst: 1_000,
            per_second: 100,
        }
    }
}

/// Shortest interval between two progress reports sent on (the last one always goes).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Log level names as stored.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Sends a try's log lines and progress to the scheduler, within its [`LogLimits`].
#[derive(Debug)]
pub struct LogSink {
    key: TaskKey,
    events: UnboundedSender<RunEvent>,
    redactor: std::sync::Arc<Redactor>,
    limits: LogLimits,
    lines: u32,
    bytes: usize,
    /// Dropped after a cap was reached (`None`: no cap reached).
    over_cap: Option<u64>,
    tokens: f64,
    refilled: Instant,
    over_rate: u64,
    progress_sent: Option<Instant>,
}

impl LogSink {
    /// A sink for task instance `key` with the default limits.
    pub fn new(key: TaskKey, events: UnboundedSender<RunEvent>) -> Self {
        Self::with_limits(key, events, LogLimits::default())
    }

    /// A sink for task instance `key` with `limits`.
    pub fn with_limits(key: TaskKey, events: UnboundedSender<RunEvent>, limits: LogLimits) -> Self {
        Self {
            key,
            events,
            redactor: Default::default(),
            limits,
            lines: 0,
            bytes: 0,
            over_cap: None,
            tokens: f64::from(limits.burst),
            refilled: Instant::now(),
            over_rate: 0,
            progress_sent: None,
        }
    }

    /// Replaces the granted connections' secrets in every line from now on.
    pub fn redacting(mut self, redactor: std::sync::Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    /// Records a line written by the task (through `log`, stdout or stderr).
    pub fn line(&mut self, level: &'static str, message: &str) {
        self.line_at(Instant::now(), level, message);
    }

    fn line_at(&mut self, now: Instant, level: &'static str, message: &str) {
        if let Some(dropped) = &mut self.over_cap {
            *dropped += 1;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.per_second))
            .min(f64::from(self.limits.burst));
        if self.tokens < 1.0 {
            self.over_rate += 1;
            return;
        }
        self.tokens -= 1.0;
        self.report_over_rate();
        let text = truncate(&self.redactor.redact(message));
        if self.lines >= self.limits.max_lines
            || self.bytes.saturating_add(text.len()) > self.limits.max_bytes
        {
            self.over_cap = Some(1);
            let LogLimits {
                max_lines,
                max_bytes,
                ..
            } = self.limits;
            self.host_line(
                "warn",
                &format!(
                    "[sluice] log limit of {max_lines} lines or {max_bytes} bytes reached; further lines dropped"
                ),
            );
            return;
        }
        self.lines += 1;
        self.bytes += text.len();
        self.send(level, text);
    }

    /// Records a line from the host (a trap, a timeout): never dropped.
    pub fn host_line(&mut self, level: &'static str, message: &str) {
        self.send(level, truncate(&self.redactor.redact(message)));
    }

    /// Ends the try's log: says how many lines were dropped and not yet reported.
    pub fn finish(&mut self) {
        self.report_over_rate();
        if let Some(dropped) = self.over_cap.take().filter(|n| *n > 0) {
            self.host_line(
                "warn",
                &format!("[sluice] {dropped} lines dropped after the log limit"),
            );
        }
    }

    fn report_over_rate(&mut self) {
        if self.over_rate > 0 {
            let (n, per_second, burst) =
                (self.over_rate, self.limits.per_second, self.limits.burst);
            self.over_rate = 0;
            self.host_line(
                "warn",
                &format!(
                    "[sluice] {n} lines dropped: over the log rate of {per_second} lines/s (bursts of {burst})"
                ),
            );
        }
    }

    /// Reports progress, at most every [`PROGRESS_INTERVAL`] (and always when done).
    pub fn progress(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        if done < total
            && self
                .progress_sent
                .is_some_and(|sent| now.saturating_duration_since(sent) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.progress_sent = Some(now);
        let _ = self.events.send(RunEvent::Progress {
            key: self.key.clone(),
            done,
            total,
        });
    }

    fn send(&self, level: &'static str, message: String) {
        let _ = self.events.send(RunEvent::Log {
            key: self.key.clone(),
            ts: Utc::now(),
            level,
            message,
        });
    }
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_LINE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_LINE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [sluice: line cut at {MAX_LINE_BYTES} of {} bytes]",
        &message[..end],
        message.len()
    )
}

/// What a `log` call reaches: the try's sink and its deadline.
pub struct LogView<'a> {
    /// The try's log.
    pub sink: &'a mut LogSink,
    /// The try's deadline.
    pub deadline: &'a Deadline,
}

/// The `log` capability, for [`Linker`] registration.
struct LogCapability;

impl HasData for LogCapability {
    type Data<'a> = LogView<'a>;
}

/// Registers the `log` interface, served from the [`LogView`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> LogView<'_>,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, LogCapability>(linker, get)
}

impl Host for LogView<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.deadline.check()?;
        if level != Level::Trace {
            self.sink.line(level_name(level), &message);
        }
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.deadline.check()?;
        self.sink.progress(done, total);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn sink(limits: LogLimits) -> (LogSink, mpsc::UnboundedReceiver<RunEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = TaskKey {
            run_id: "r".into(),
            task_id: "t".into(),
            try_number: 1,
        };
        (LogSink::with_limits(key, tx, limits), rx)
    }

    fn lines(rx: &mut mpsc::UnboundedReceiver<RunEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let RunEvent::Log { message, .. } = event {
                out.push(message);
            }
        }
        out
    }

    const LOOSE: LogLimits = LogLimits {
        max_lines: 1_000,
        max_bytes: 1 << 20,
        burst: 1_000,
        per_second: 1_000,
    };

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let limits = LogLimits {
            burst: 5,
            per_second: 10,
            ..LOOSE
        };
        let (mut log, mut rx) = sink(limits);
        let t0 = Instant::now();
        for i in 0..20 {
            log.line_at(t0, "info", &format!("line {i}"));
        }
        assert_eq!(
            lines(&mut rx),
            ["line 0", "line 1", "line 2", "line 3", "line 4"]
        );
        // A second later the bucket holds 10 tokens again (capped at the burst of 5).
        log.line_at(t0 + Duration::from_secs(1), "info", "later");
        let got = lines(&mut rx);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("15 lines dropped: over the log rate of 10 lines/s"),
            "{got:?}"
        );
        assert_eq!(got[1], "later");
        for _ in 0..7 {
            log.line_at(t0 + Duration::from_secs(1), "info", "again");
        }
        log.finish();
        let got = lines(&mut rx);
        assert_eq!(got.len(), 5, "4 tokens left, then the final count: {got:?}");
        assert!(got[4].contains("3 lines dropped"), "{got:?}");
    }

    #[test]
    fn the_line_and_byte_caps_stop_the_log_with_one_marker() {
        let (mut log, mut rx) = sink(LogLimits {
            max_lines: 3,
            ..LOOSE
        });
        for i in 0..10 {
            log.line("info", &format!("line {i}"));
        }
        log.finish();
        let got = lines(&mut rx);
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got[3].contains("log limit of 3 lines"), "{got:?}");
        assert!(
            got[4].contains("7 lines dropped after the log limit"),
            "{got:?}"
        );

        let (mut log, mut rx) = sink(LogLimits {
            max_bytes: 25,
            ..LOOSE
        });
        for _ in 0..5 {
            log.line("info", "ten bytes!");
        }
        let got = lines(&mut rx);
        assert_eq!(got.len(), 3, "two lines fit in 25 bytes: {got:?}");
        assert!(got[2].contains("or 25 bytes reached"), "{got:?}");
    }

    #[test]
    fn host_lines_pass_every_limit_and_long_lines_are_cut() {
        let (mut log, mut rx) = sink(LogLimits {
            max_lines: 1,
            burst: 1,
            per_second: 1,
            ..LOOSE
        });
        log.line("info", "one");
        log.line("info", "two");
        log.host_line("error", "[sluice] the task trapped");
        let got = lines(&mut rx);
        assert_eq!(
            got.last().map(String::as_str),
            Some("[sluice] the task trapped")
        );

        let (mut log, mut rx) = sink(LOOSE);
        log.line("info", &"x".repeat(MAX_LINE_BYTES + 10));
        let got = lines(&mut rx);
        assert!(got[0].ends_with(&format!(
            "[sluice: line cut at {MAX_LINE_BYTES} of {} bytes]",
            MAX_LINE_BYTES + 10
        )));
    }

    #[test]
    fn progress_is_throttled_but_the_last_report_goes() {
        let (mut log, mut rx) = sink(LOOSE);
        for done in 0..=1000 {
            log.progress(done, 1000);
        }
        let mut reports = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let RunEvent::Progress { done, .. } = event {
                reports.push(done);
            }
        }
        assert!(reports.len() < 10, "{reports:?}");
        assert_eq!(reports.last(), Some(&1000));
    }
}
