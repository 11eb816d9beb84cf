//! Per-try limits: wall-clock deadline and linear memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The wall-clock deadline of a try, shared by the epoch callback (guest code),
/// the host calls, and the executor's watchdog (which interrupts DuckDB).
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
    fired: AtomicBool,
    /// Why the try was stopped before its deadline, if it was.
    stopped: std::sync::OnceLock<String>,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
            fired: AtomicBool::new(false),
            stopped: std::sync::OnceLock::new(),
        }
    }

    /// Ends the try now, for `reason` (the first reason given wins).
    pub fn stop(&self, reason: String) {
        let _ = self.stopped.set(reason);
        self.fired.store(true, Ordering::Relaxed);
    }

    /// The error that ends the try once [`Deadline::expired`] is true.
    pub fn error(&self) -> Stopped {
        Stopped {
            timeout: self.timeout,
            early: self.stopped.get().cloned(),
        }
    }

    /// The instant it expires.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fails a host call (trapping the guest) once the deadline has passed.
    pub fn check(&self) -> wasmtime::Result<()> {
        if self.expired() {
            return Err(wasmtime::Error::new(self.error()));
        }
        Ok(())
    }

    /// Whether it has passed (and remembers that it did).
    pub fn expired(&self) -> bool {
        if self.fired.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() >= self.at {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// The error that stops a task at its deadline (or earlier, with a reason).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", match .early {
    Some(reason) => reason.clone(),
    None => format!("timed out after {}", humantime::format_duration(*.timeout)),
})]
pub struct Stopped {
    /// The try's timeout.
    pub timeout: Duration,
    /// Why it was stopped before the timeout, if it was.
    pub early: Option<String>,
}

/// The error that stops a task growing its memory past the limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "memory limit exceeded: the task asked for {desired} bytes of linear memory; its limit is {limit} bytes"
)]
pub struct MemoryExceeded {
    /// Bytes requested.
    pub desired: usize,
    /// The limit.
    pub limit: usize,
}

/// Linear memory and table limits of a task instance.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimiter {
    memory: usize,
    table_elements: usize,
}

impl MemoryLimiter {
    /// A limiter allowing `memory` bytes of linear memory in all.
    pub fn new(memory: u64) -> Self {
        Self {
            memory: usize::try_from(memory).unwrap_or(usize::MAX),
            table_elements: 1 << 20,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(wasmtime::Error::new(MemoryExceeded {
                desired,
                limit: self.memory,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}
