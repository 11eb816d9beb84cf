//! The `log` interface: leveled messages and progress, capped per try.

use chrono::Utc;
use tokio::sync::mpsc::UnboundedSender;

use crate::bindings::sluice::task::log::{Host, Level};
use crate::events::{RunEvent, TaskKey};

use super::TaskHost;

/// Longest stored log line; longer ones are cut with a marker.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Most lines stored per try; later ones are dropped after one marker line.
pub const MAX_LINES_PER_TRY: u32 = 10_000;

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

/// Sends a try's log lines and progress to the scheduler, within the caps.
#[derive(Debug, Clone)]
pub struct LogSink {
    key: TaskKey,
    events: UnboundedSender<RunEvent>,
    lines: u32,
    redactor: std::sync::Arc<super::Redactor>,
}

impl LogSink {
    /// A sink for task instance `key`.
    pub fn new(key: TaskKey, events: UnboundedSender<RunEvent>) -> Self {
        Self {
            key,
            events,
            lines: 0,
            redactor: Default::default(),
        }
    }

    /// Replaces the granted connections' secrets in every line from now on.
    pub fn redacting(mut self, redactor: std::sync::Arc<super::Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    /// Records a line from the host side (stdout capture, traps) or the guest.
    pub fn line(&mut self, level: &'static str, message: &str) {
        self.lines = self.lines.saturating_add(1);
        if self.lines > MAX_LINES_PER_TRY {
            if self.lines == MAX_LINES_PER_TRY + 1 {
                self.send(
                    "warn",
                    format!("[sluice] log limit of {MAX_LINES_PER_TRY} lines reached; further lines dropped"),
                );
            }
            return;
        }
        self.send(level, truncate(&self.redactor.redact(message)));
    }

    /// Reports progress.
    pub fn progress(&self, done: u64, total: u64) {
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

impl Host for TaskHost {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.check_deadline()?;
        if level != Level::Trace {
            self.log.line(level_name(level), &message);
        }
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.check_deadline()?;
        self.log.progress(done, total);
        Ok(())
    }
}
