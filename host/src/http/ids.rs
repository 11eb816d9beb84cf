//! Ids taken from request paths and queries, checked before they reach the
//! application layer: a DAG or task id is what a manifest allows, a run id
//! has the shape Sluice makes, a version is hex. Nothing else (no `/`, no
//! `..`) can reach a log or staging lookup.

use super::error::ApiError;
use crate::run_id::is_run_id;
use crate::state::RunState;

/// A DAG id from the request field `field`.
pub fn dag_id<'a>(field: &str, id: &'a str) -> Result<&'a str, ApiError> {
    manifest_id(field, id, "DAG")
}

/// A task id from the request field `field`.
pub fn task_id<'a>(field: &str, id: &'a str) -> Result<&'a str, ApiError> {
    manifest_id(field, id, "task")
}

/// A connection id from the request field `field`.
pub fn connection_id<'a>(field: &str, id: &'a str) -> Result<&'a str, ApiError> {
    manifest_id(field, id, "connection")
}

/// `id` if it is an id of the form manifests allow, else an error naming
/// `field` and what a `kind` id may hold.
fn manifest_id<'a>(field: &str, id: &'a str, kind: &str) -> Result<&'a str, ApiError> {
    if crate::dag::is_valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::field(
            field,
            format!(
                "`{}` is not a {kind} id (letters, digits, `_` and `-`)",
                shown(id)
            ),
        ))
    }
}

/// A run id from the request field `field`.
pub fn run_id<'a>(field: &str, id: &'a str) -> Result<&'a str, ApiError> {
    if is_run_id(id) {
        Ok(id)
    } else {
        Err(ApiError::field(
            field,
            format!(
                "`{}` is not a run id (<type>__<YYYYMMDD>T<HHMMSS>_<6 hex digits>)",
                shown(id)
            ),
        ))
    }
}

/// A version digest or a prefix of at least 8 of its hex digits.
pub fn version<'a>(field: &str, digest: &'a str) -> Result<&'a str, ApiError> {
    if (8..=64).contains(&digest.len()) && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digest)
    } else {
        Err(ApiError::field(
            field,
            format!(
                "`{}` is not a version digest (8 to 64 hex digits)",
                shown(digest)
            ),
        ))
    }
}

/// A run state's name.
pub fn run_state(field: &str, name: &str) -> Result<RunState, ApiError> {
    RunState::parse(name).ok_or_else(|| {
        let names: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::field(
            field,
            format!(
                "`{}` is not a run state ({})",
                shown(name),
                names.join(", ")
            ),
        )
    })
}

/// At most 80 characters of what the client sent, for an error message.
fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_traversal_and_odd_ids_are_refused_naming_the_field() {
        for bad in ["..", "../etc", "a/b", "", "a b", "x\0"] {
            let e = dag_id("dag_id", bad).expect_err(bad);
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(task_id("task_id", bad).is_err(), "{bad}");
            assert!(run_id("run_id", bad).is_err(), "{bad}");
        }
        assert!(run_id("run_id", "manual__20260101T000000_abcdef").is_ok());
        assert!(run_id("run_id", "manual__20260101T000000_abcdef/../x").is_err());
        assert!(version("version", "abcdef12").is_ok());
        assert!(version("version", "abc").is_err());
        assert!(version("version", "zzzzzzzzzz").is_err());
        assert!(run_state("state", "running").is_ok());
        assert!(run_state("state", "Running").is_err());
    }
}
