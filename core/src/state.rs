//! Run and task-instance states, as in Airflow.

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
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
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

impl TaskState {
    /// Whether no further try will happen in this run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::UpstreamFailed | Self::Skipped
        )
    }
}
