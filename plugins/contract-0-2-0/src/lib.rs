//! A task built against `sluice:task@0.2.0` (its WIT is a copy of that
//! contract's relevant part, before the cursor's `next-rows`): a host of a
//! later compatible contract (0.2.x) must link and run it.

wit_bindgen::generate!({
    path: "wit",
    world: "task",
});

struct Task;

impl Guest for Task {
    fn run(_input: String) -> Result<String, sluice::task::types::TaskError> {
        let fail = |e: sluice::task::sql::SqlError| sluice::task::types::TaskError {
            kind: e.kind,
            message: e.message,
        };
        let cursor = sluice::task::sql::query("SELECT 42 AS answer").map_err(fail)?;
        let mut batches = 0;
        while cursor.next_batch().map_err(fail)?.is_some() {
            batches += 1;
        }
        Ok(format!(
            "{{\"task\":\"{}\",\"batches\":{batches}}}",
            sluice::task::context::task_id()
        ))
    }
}

export!(Task);
