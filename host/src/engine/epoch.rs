//! The thread that advances the engine's epoch, and only while a guest runs.
//!
//! Epoch interruption is how a try's deadline reaches guest code: every tick,
//! each running store checks its deadline. A process with no store running
//! (the parent of a run's workers, a daemon between runs, a worker waiting
//! for its try) has nothing to interrupt, so the thread sleeps instead of
//! waking [`EPOCH_TICK`](super::EPOCH_TICK)-often for nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Calls `tick` every `interval` while at least one [`Ticking`] is held.
/// Dropping it wakes the thread instead of waiting out its tick: a worker
/// process drops its engine on the way out, and the parent waits for that exit.
pub(super) struct EpochTicker {
    state: Arc<State>,
    thread: Thread,
    join: Option<JoinHandle<()>>,
}

/// What the ticker thread and its holders share.
struct State {
    stop: AtomicBool,
    /// How many [`Ticking`] guards are alive.
    holders: AtomicUsize,
}

/// Keeps the epoch advancing while it lives (one per running store).
pub struct Ticking {
    state: Arc<State>,
    thread: Thread,
}

impl EpochTicker {
    /// Starts the (idle) thread.
    pub(super) fn start(
        interval: Duration,
        tick: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            holders: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let join = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let mut next: Option<Instant> = None;
                while !shared.stop.load(Ordering::Acquire) {
                    if shared.holders.load(Ordering::Acquire) == 0 {
                        // Nothing runs: sleep until a holder or `drop` wakes us.
                        next = None;
                        std::thread::park();
                        continue;
                    }
                    let now = Instant::now();
                    let due = *next.get_or_insert(now + interval);
                    if now < due {
                        // Woken early (a holder came or went, `drop`, or
                        // spuriously): look at the state again.
                        std::thread::park_timeout(due - now);
                        continue;
                    }
                    tick();
                    next = Some(now + interval);
                }
            })?;
        Ok(Self {
            state,
            thread: join.thread().clone(),
            join: Some(join),
        })
    }

    /// Ticks until the returned guard is dropped.
    pub(super) fn hold(&self) -> Ticking {
        if self.state.holders.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Ticking {
            state: self.state.clone(),
            thread: self.thread.clone(),
        }
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        if self.state.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Let the thread see it is idle now rather than at its next tick.
            self.thread.unpark();
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.thread.unpark();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to a deadline) until `ticks` stays put for two intervals in
    /// a row, and returns where it stayed.
    fn settled(ticks: &AtomicUsize, interval: Duration) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = ticks.load(Ordering::SeqCst);
        loop {
            std::thread::sleep(interval * 2);
            let now = ticks.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            assert!(Instant::now() < deadline, "still ticking: {now} ticks");
            last = now;
        }
    }

    #[test]
    fn it_ticks_only_while_a_guard_is_held() {
        let interval = Duration::from_millis(5);
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let ticker = EpochTicker::start(interval, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .expect("start the ticker");

        std::thread::sleep(interval * 10);
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "ticked with no holder");

        let first = ticker.hold();
        let second = ticker.hold();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticks.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "no ticks while held");
            std::thread::sleep(interval);
        }
        drop(first);
        // One holder left: it goes on ticking.
        let before = ticks.load(Ordering::SeqCst);
        while ticks.load(Ordering::SeqCst) < before + 3 {
            assert!(Instant::now() < deadline, "stopped with a holder left");
            std::thread::sleep(interval);
        }
        drop(second);
        let stopped = settled(&ticks, interval);
        std::thread::sleep(interval * 10);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            stopped,
            "ticked after the last holder left"
        );

        // Held again, it resumes; dropping the ticker ends the thread at once.
        let _again = ticker.hold();
        while ticks.load(Ordering::SeqCst) == stopped {
            assert!(Instant::now() < deadline, "did not resume");
            std::thread::sleep(interval);
        }
        drop(ticker);
    }
}
