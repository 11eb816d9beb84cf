//! Run ids: `<run type>__<YYYYMMDD>T<HHMMSS>_<6 hex digits>`, made by
//! [`new_run_id`] and recognised by [`is_run_id`] (the staging sweep deletes
//! nothing whose name is not one).

use std::hash::{BuildHasher, Hasher};

use chrono::{DateTime, Utc};

use crate::state::RunType;

/// A new run id: `<type>__<timestamp>_<random hex>`; the timestamp is the
/// logical date for scheduled and backfill runs, the creation time otherwise.
pub fn new_run_id(run_type: RunType, when: DateTime<Utc>) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    hasher.write_u32(std::process::id());
    format!(
        "{}__{}_{:06x}",
        run_type.as_str(),
        when.format("%Y%m%dT%H%M%S"),
        hasher.finish() & 0xff_ffff
    )
}

/// Whether `name` has the shape of the run ids Sluice makes
/// ([`new_run_id`]):
/// `<run type>__<YYYYMMDD>T<HHMMSS>_<6 lower-case hex digits>`.
pub fn is_run_id(name: &str) -> bool {
    let Some((kind, rest)) = name.split_once("__") else {
        return false;
    };
    let known = RunType::parse(kind).is_some();
    let Some((stamp, suffix)) = rest.split_once('_') else {
        return false;
    };
    known
        && stamp.len() == 15
        && stamp.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'T'
            } else {
                b.is_ascii_digit()
            }
        })
        && suffix.len() == 6
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_recognised_by_shape() {
        let now = Utc::now();
        for &kind in RunType::ALL {
            let id = new_run_id(kind, now);
            assert!(is_run_id(&id), "{id}");
        }
        for odd in [
            "left-behind",
            "manual__20240101T000000_abcdeg",
            "manual__20240101T000000_ABCDEF",
            "manual__20240101X000000_abcdef",
            "other__20240101T000000_abcdef",
            "manual__20240101T000000_abcdef/..",
            "manual__20240101T0000000_abcde",
            "",
        ] {
            assert!(!is_run_id(odd), "{odd}");
        }
    }
}
