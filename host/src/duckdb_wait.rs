//! DuckDB statements run to completion without a spinning thread.
//!
//! DuckDB 2.0 (the `duckdb` crate 1.20000.1) runs a statement that is not
//! streamed (`duckdb_execute_prepared`, and `duckdb_execute_prepared_streaming`
//! for anything but a `SELECT`: every `COPY`) in `QueryResult::CompleteInternal`.
//! That loop waits only when the executor reports a blocked task; when the
//! calling thread finds no task because DuckDB's other threads hold them all
//! (`NO_TASKS_AVAILABLE`), it asks again at once, holding a CPU at 100% until
//! a task frees. Whether that happens depends on which thread takes a
//! pipeline's only task, so a process of the seed ETL burned twice its work
//! in CPU time now and then: one crate baseline in five, one `sluice run` in
//! eleven; DuckDB's official Python build never did (BENCHMARKS.md, "A
//! spinning thread").
//!
//! The host's build script links every binary of this package with
//! `--wrap` for those two functions, so that the `duckdb` crate's calls land
//! here. They run the statement through DuckDB's pending-result API, with
//! the same streaming decision and the same result, and sleep while the
//! executor has no task for this thread (50 µs, doubling to 1 ms). A thread
//! that sleeps misses at most that long of a task freed meanwhile; DuckDB's
//! own threads take it at once.
//!
//! Remove this module and `host/build.rs` once DuckDB's completion loop
//! waits on `NO_TASKS_AVAILABLE` as its streaming fetch already does.

use std::ptr;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duckdb::ffi;

/// The first pause while this thread has no task, and the longest.
const FIRST_PAUSE: Duration = Duration::from_micros(50);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);

/// Statements run here, counted for the tests: the proof that the linker
/// sends the `duckdb` crate's calls here.
#[cfg(test)]
static EXECUTED: AtomicU64 = AtomicU64::new(0);

/// `duckdb_execute_prepared` (the linker sends the `duckdb` crate's calls
/// here): the statement's whole result, materialized.
///
/// # Safety
/// As `duckdb_execute_prepared`: `statement` is a prepared statement or null,
/// and `out` points to a `duckdb_result` the caller destroys.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_duckdb_execute_prepared(
    statement: ffi::duckdb_prepared_statement,
    out: *mut ffi::duckdb_result,
) -> ffi::duckdb_state {
    // SAFETY: the caller's guarantees, passed on.
    unsafe { execute(statement, out, false) }
}

/// `duckdb_execute_prepared_streaming` (the linker sends the `duckdb`
/// crate's calls here): a stream for a `SELECT` whose rows DuckDB streams, a
/// materialized result for anything else.
///
/// # Safety
/// As `duckdb_execute_prepared_streaming`: `statement` is a prepared
/// statement or null, and `out` points to a `duckdb_result` the caller
/// destroys.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_duckdb_execute_prepared_streaming(
    statement: ffi::duckdb_prepared_statement,
    out: *mut ffi::duckdb_result,
) -> ffi::duckdb_state {
    // SAFETY: the caller's guarantees, passed on.
    unsafe { execute(statement, out, true) }
}

/// Submits `statement`, runs it on this thread and DuckDB's until its
/// result (or its first rows, for a stream) is ready, and hands the result
/// to `out`. Errors (an interrupt included) reach `out` as DuckDB's own
/// execution does it.
unsafe fn execute(
    statement: ffi::duckdb_prepared_statement,
    out: *mut ffi::duckdb_result,
    streaming: bool,
) -> ffi::duckdb_state {
    if statement.is_null() || out.is_null() {
        return ffi::DuckDBError;
    }
    #[cfg(test)]
    EXECUTED.fetch_add(1, Ordering::Relaxed);
    let mut pending: ffi::duckdb_pending_result = ptr::null_mut();
    // SAFETY: `statement` is a prepared statement (the caller's guarantee);
    // DuckDB allocates `pending` even when submitting fails, with the error in it.
    let submitted = unsafe {
        if streaming {
            ffi::duckdb_pending_prepared_streaming(statement, &mut pending)
        } else {
            ffi::duckdb_pending_prepared(statement, &mut pending)
        }
    };
    if pending.is_null() {
        return ffi::DuckDBError;
    }
    if submitted == ffi::DuckDBSuccess {
        let mut pause = FIRST_PAUSE;
        loop {
            // SAFETY: `pending` is the live pending result made above.
            match unsafe { ffi::duckdb_pending_execute_task(pending) } {
                ffi::duckdb_pending_state_DUCKDB_PENDING_RESULT_NOT_READY => pause = FIRST_PAUSE,
                ffi::duckdb_pending_state_DUCKDB_PENDING_NO_TASKS_AVAILABLE => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
                // Ready, finished, or failed: `duckdb_execute_pending` hands
                // over the result or the error.
                _ => break,
            }
        }
    }
    // SAFETY: `pending` is live and `out` valid (checked above); the pending
    // result is destroyed once, after its result has moved to `out`.
    unsafe {
        let state = ffi::duckdb_execute_pending(pending, out);
        ffi::duckdb_destroy_pending(&mut pending);
        state
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use duckdb::Connection;

    /// The name of the thread that runs the statements below. DuckDB's own
    /// threads, started from it, inherit it, so that the CPU time of exactly
    /// these threads can be read while other tests run. (Linux keeps 15
    /// bytes of a thread's name.)
    const PROBE: &str = "duckdb-probe";

    /// CPU time (user and system) of this process's threads named [`PROBE`].
    fn probe_cpu() -> Duration {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut ticks = 0u64;
        for task in std::fs::read_dir("/proc/self/task").expect("threads") {
            let task = task.expect("thread").path();
            // A thread that ended between the listing and the read: not ours.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("stat")),
            ) else {
                continue;
            };
            if comm.trim_end() != PROBE {
                continue;
            }
            // After the parenthesized name: state (field 3), ..., utime (14), stime (15).
            let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 1..]
                .split_whitespace()
                .collect();
            ticks += fields[11].parse::<u64>().expect("utime")
                + fields[12].parse::<u64>().expect("stime");
        }
        Duration::from_secs_f64(ticks as f64 / ticks_per_second)
    }

    /// The extract of the seed ETL has one task in its source pipeline
    /// (`range` does not split): with two threads, whichever thread does not
    /// take it has nothing to do. Unwrapped, DuckDB's calling thread spun
    /// then in about one statement of this kind in ten (both CPUs busy for
    /// one CPU of work), so this test catches a lost `--wrap` only now and
    /// then; the next one catches it always. CPU time
    /// against wall time is compared, not either alone: a loaded machine
    /// only lowers the ratio. Its lower bound shows the probe reads the
    /// threads that did the work.
    #[test]
    fn a_thread_without_a_task_waits_instead_of_spinning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("raw.parquet");
        let copy = format!(
            "COPY (SELECT i AS id, 'cat_' || (i % 50) AS category, random() AS amount \
             FROM range(2000000) t(i)) TO '{}' (FORMAT parquet)",
            target.display()
        );
        let ratios = std::thread::Builder::new()
            .name(PROBE.into())
            .spawn(move || {
                let conn = Connection::open_in_memory().expect("open");
                conn.execute_batch("SET threads = 2").expect("threads");
                let mut ratios = Vec::new();
                for _ in 0..10 {
                    let (cpu, wall) = (probe_cpu(), Instant::now());
                    conn.execute(&copy, []).expect("copy");
                    ratios.push((probe_cpu() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64());
                }
                ratios
            })
            .expect("probe thread")
            .join()
            .expect("the probe thread panicked");
        assert!(
            ratios.iter().all(|&r| r > 0.5 && r < 1.5),
            "CPU time per wall time of each statement: {ratios:.2?}"
        );
    }

    #[test]
    fn results_errors_and_streams_come_through_the_pending_api() {
        let conn = Connection::open_in_memory().expect("open");
        let before = super::EXECUTED.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            conn.execute("CREATE TABLE t AS SELECT * FROM range(5) r(i)", [])
                .expect("create"),
            5
        );
        let sum: i64 = conn
            .query_row("SELECT sum(i) FROM t", [], |row| row.get(0))
            .expect("sum");
        assert_eq!(sum, 10);
        let rows: usize = conn
            .prepare("SELECT * FROM range(100000)")
            .expect("prepare")
            .stream_arrow([])
            .expect("stream")
            .map(|batch| batch.expect("batch").num_rows())
            .sum();
        assert_eq!(rows, 100_000);
        // Fails while it runs, not when it is prepared.
        let error = conn
            .execute(
                "INSERT INTO t SELECT ('x' || i)::BIGINT FROM range(3) r(i)",
                [],
            )
            .expect_err("a bad insert fails");
        assert!(
            error.to_string().contains("x0"),
            "the error names the value: {error}"
        );
        // Other tests run statements too: at least these four went through here.
        let after = super::EXECUTED.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            after >= before + 4,
            "{before} statements before, {after} after"
        );
    }
}
