//! A task built against `sluice:task@0.1.0` (its WIT is a copy of that
//! contract's relevant part): a host of a later, incompatible contract must
//! refuse it at deploy and say which version it was built for.

wit_bindgen::generate!({
    path: "wit",
    world: "task",
});

struct Task;

impl Guest for Task {
    fn run(_input: String) -> Result<String, sluice::task::types::TaskError> {
        let rows =
            sluice::task::sql::execute("SELECT 1").map_err(|e| sluice::task::types::TaskError {
                kind: sluice::task::types::ErrorKind::Retryable,
                message: e.message,
            })?;
        Ok(format!(
            "{{\"task\":\"{}\",\"rows\":{rows}}}",
            sluice::task::context::task_id()
        ))
    }
}

export!(Task);
