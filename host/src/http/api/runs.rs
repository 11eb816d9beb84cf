//! Runs, task instances and their tries, logs, and clearing.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::runs::{LogPage, RunDetail, RunFilter, RunPage, RunResult, TaskDetail};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{Server, blocking, ids};
use crate::scheduler::ClearScope;

/// Which runs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only runs of this DAG.
    dag_id: Option<String>,
    /// Only runs in this state (`queued`, `running`, `success`, `failed`).
    state: Option<String>,
    /// Page size, 1 to 1000; default 50.
    limit: Option<u32>,
    /// Runs to skip (from `next_offset` of the previous page); default 0.
    offset: Option<u32>,
}

/// Runs, newest first, filtered by DAG and state, a page at a time.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(s): State<Server>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(q) = query?;
    let filter = RunFilter {
        dag_id: q
            .dag_id
            .as_deref()
            .map(|d| ids::dag_id("dag_id", d).map(str::to_owned))
            .transpose()?,
        state: q
            .state
            .as_deref()
            .map(|st| ids::run_state("state", st))
            .transpose()?,
        limit: q.limit.unwrap_or(50),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(
        blocking(&s.app, move |app| app.runs_page(&filter)).await?,
    ))
}

/// One run, its version label, sandboxes and task instances.
#[utoipa::path(get, path = "/api/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "run id")),
    responses((status = 200, body = RunDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(s): State<Server>,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.show_run(&run_id)).await?,
    ))
}

/// What a run produced: its leaves' outputs and what became of its staging
/// directory (and when it will be reclaimed).
#[utoipa::path(get, path = "/api/runs/{run_id}/result", tag = "runs",
    params(("run_id" = String, Path, description = "run id")),
    responses((status = 200, body = RunResult), (status = 404, body = ErrorBody)))]
pub async fn result(
    State(s): State<Server>,
    Path(run_id): Path<String>,
) -> Result<Json<RunResult>, ApiError> {
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.run_result(&run_id)).await?,
    ))
}

/// A task instance and its tries (version, component digest, state, error).
#[utoipa::path(get, path = "/api/runs/{run_id}/tasks/{task_id}", tag = "runs",
    params(("run_id" = String, Path, description = "run id"), ("task_id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskDetail), (status = 404, body = ErrorBody)))]
pub async fn task(
    State(s): State<Server>,
    Path((run_id, task_id)): Path<(String, String)>,
) -> Result<Json<TaskDetail>, ApiError> {
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    let task_id = ids::task_id("task_id", &task_id)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.task_detail(&run_id, &task_id)).await?,
    ))
}

/// Which log lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this try.
    #[serde(rename = "try")]
    #[param(rename = "try")]
    try_number: Option<u32>,
    /// Lines after this id (`next_after` of the previous page); default 0.
    after: Option<i64>,
    /// Page size, 1 to 1000; default 500.
    limit: Option<u32>,
}

/// A page of a task's log.
#[utoipa::path(get, path = "/api/runs/{run_id}/tasks/{task_id}/logs", tag = "runs",
    params(("run_id" = String, Path, description = "run id"), ("task_id" = String, Path, description = "task id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(s): State<Server>,
    Path((run_id, task_id)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let Query(q) = query?;
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    let task_id = ids::task_id("task_id", &task_id)?.to_owned();
    let (after, limit) = (q.after.unwrap_or(0), q.limit.unwrap_or(500));
    Ok(Json(
        blocking(&s.app, move |app| {
            app.logs_page(&run_id, &task_id, q.try_number, after, limit)
        })
        .await?,
    ))
}

/// How far a clear reaches.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    /// Also clear every task downstream.
    #[serde(default)]
    downstream: bool,
    /// Also clear every task upstream.
    #[serde(default)]
    upstream: bool,
    /// Only say what would be cleared.
    #[serde(default)]
    dry_run: bool,
}

/// What a clear reset (or would).
#[derive(Debug, Serialize, ToSchema)]
pub struct Cleared {
    /// The task ids, upstream before downstream.
    pub tasks: Vec<String>,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// Resets a task instance (and its scope) for another try and carries the
/// run on in the server; with `dry_run`, only says which tasks would re-run.
#[utoipa::path(post, path = "/api/runs/{run_id}/tasks/{task_id}/clear", tag = "runs",
    params(("run_id" = String, Path, description = "run id"), ("task_id" = String, Path, description = "task id")),
    request_body = ClearBody,
    responses((status = 200, body = Cleared), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clear(
    State(s): State<Server>,
    Path((run_id, task_id)): Path<(String, String)>,
    body: Result<Json<ClearBody>, JsonRejection>,
) -> Result<Json<Cleared>, ApiError> {
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    let task_id = ids::task_id("task_id", &task_id)?.to_owned();
    let Json(body) = body?;
    let scope = ClearScope {
        downstream: body.downstream,
        upstream: body.upstream,
    };
    let dry_run = body.dry_run;
    let tasks = blocking(&s.app, move |app| {
        app.clear_and_resume(&run_id, &task_id, scope, dry_run)
    })
    .await?;
    Ok(Json(Cleared { tasks, dry_run }))
}
