//! Run and task-instance states, as in Airflow, why a run exists, and the
//! states of a run's staging volume. Each has one stored name; the
//! metadatabase stores and reads them through these names.

use std::fmt;

/// The state of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Created, not started.
    Queued,
    /// Tasks are being run.
    Running,
    /// Every task succeeded (or was skipped).
    Success,
    /// At least one task failed.
    Failed,
}

/// The state of a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for its upstream tasks.
    Scheduled,
    /// Ready, waiting for a slot.
    Queued,
    /// A try is running.
    Running,
    /// Done.
    Success,
    /// Failed with no tries left (or permanently).
    Failed,
    /// A try failed; another will start after the retry delay.
    UpForRetry,
    /// An upstream task failed, so this one will not run.
    UpstreamFailed,
    /// Deliberately not run.
    Skipped,
}

macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// Parses a stored name.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }

            /// Every value, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant),*];
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

names!(RunState { Queued => "queued", Running => "running", Success => "success", Failed => "failed" });
names!(TaskState {
    Scheduled => "scheduled",
    Queued => "queued",
    Running => "running",
    Success => "success",
    Failed => "failed",
    UpForRetry => "up_for_retry",
    UpstreamFailed => "upstream_failed",
    Skipped => "skipped",
});

/// Why a run exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RunType {
    /// Started by `sluice run`.
    #[default]
    Manual,
    /// Created by `sluice scheduler` for a due interval.
    Scheduled,
    /// Created by `sluice backfill`.
    Backfill,
}

/// What became of a run's staging volume (its staging directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeState {
    /// Its run may still read and write it.
    Active,
    /// Its run ended and released it; kept for the staging TTL.
    Retained,
    /// Deleted (when and why are recorded with it).
    Deleted,
}

// The run type's name is also the prefix of its run ids.
names!(RunType { Manual => "manual", Scheduled => "scheduled", Backfill => "backfill" });
names!(VolumeState { Active => "active", Retained => "retained", Deleted => "deleted" });

impl RunType {
    /// Whether runs of this type are created for a data interval of the
    /// DAG's schedule (scheduled and backfill runs).
    pub fn has_interval(self) -> bool {
        !matches!(self, Self::Manual)
    }
}

impl TaskState {
    /// Whether no further try will happen in this run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::UpstreamFailed | Self::Skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name parses back to its value, and the names are distinct.
    #[test]
    fn names_round_trip() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            name: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            let mut seen = std::collections::HashSet::new();
            for &value in all {
                assert_eq!(parse(name(value)), Some(value), "{value:?}");
                assert!(seen.insert(name(value)), "{} twice", name(value));
            }
            assert_eq!(parse("no-such-name"), None);
        }
        check(RunState::ALL, RunState::as_str, RunState::parse);
        check(TaskState::ALL, TaskState::as_str, TaskState::parse);
        check(RunType::ALL, RunType::as_str, RunType::parse);
        check(VolumeState::ALL, VolumeState::as_str, VolumeState::parse);
        assert_eq!(RunState::ALL.len(), 4);
        assert_eq!(TaskState::ALL.len(), 8);
        assert_eq!(RunType::ALL.len(), 3);
        assert_eq!(VolumeState::ALL.len(), 3);
    }
}
