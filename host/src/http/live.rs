//! Server-sent events from the run loop's broadcast ([`crate::app::live`]):
//! a run's events, every run of a DAG (the grid), and a task's log tail.
//! Each stream says `missed` when it fell behind (the page re-reads) and
//! ends with `end`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::error::{ApiError, ErrorBody};
use super::{Server, blocking, ids};
use crate::app::live::{LogTail, Watch, Watched};

/// The SSE routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/api/events", get(all_events))
        .route("/api/runs/{run_id}/events", get(run_events))
        .route(
            "/api/runs/{run_id}/tasks/{task_id}/logs/live",
            get(log_tail),
        )
}

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One SSE event named `name` carrying `data` as JSON.
fn event(name: &str, data: &impl Serialize) -> Event {
    match Event::default().event(name).json_data(data) {
        Ok(e) => e,
        // Our own types always serialize; say so rather than drop it.
        Err(e) => Event::default()
            .event("error")
            .data(format!("cannot serialize a `{name}` event: {e}")),
    }
}

fn missed(n: u64) -> Event {
    event("missed", &serde_json::json!({ "missed": n }))
}

fn end() -> Event {
    Event::default().event("end").data("{}")
}

/// The stream's last event when the server failed to go on: `error`, with
/// the message as in an error response.
fn failed(e: &crate::app::AppError) -> Event {
    event("error", &serde_json::json!({ "error": e.to_string() }))
}

/// A stream of `first`, then the watch's notices as `notice` events.
fn notices(
    first: Option<Event>,
    watch: Watch,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures_util::stream::unfold((first, Some(watch)), |(first, watch)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, watch)));
        }
        let mut watch = watch?;
        let next = match watch.next().await {
            Watched::Item(n) => event("notice", &n),
            Watched::Missed(n) => missed(n),
            Watched::End => return Some((Ok(end()), (None, None))),
        };
        Some((Ok(next), (None, Some(watch))))
    })
}

/// Which DAG's events to follow.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of runs of this DAG.
    dag_id: Option<String>,
}

/// Every event (task states, log lines, run ends) of the runs this server
/// carries out, optionally of one DAG: `notice` events, `missed` when the
/// client fell behind.
#[utoipa::path(get, path = "/api/events", tag = "live", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of `notice` events", content_type = "text/event-stream")))]
pub async fn all_events(
    State(s): State<Server>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query?;
    let dag_id = q
        .dag_id
        .as_deref()
        .map(|d| ids::dag_id("dag_id", d))
        .transpose()?;
    let watch = s.app.watch_dag(dag_id);
    Ok(Sse::new(notices(None, watch)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A run as it is (`run` event, the run in detail), then its events
/// (`notice`) until it ends (`end`).
#[utoipa::path(get, path = "/api/runs/{run_id}/events", tag = "live",
    params(("run_id" = String, Path, description = "run id")),
    responses((status = 200, description = "text/event-stream: `run`, then `notice`s, then `end`", content_type = "text/event-stream"),
              (status = 404, body = ErrorBody)))]
pub async fn run_events(
    State(s): State<Server>,
    Path(run_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    let watch = blocking(&s.app, move |app| app.watch_run(&run_id)).await?;
    let first = event("run", &watch.detail);
    Ok(Sse::new(notices(Some(first), watch.events))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Where a log tail starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Only this try.
    #[serde(rename = "try")]
    #[param(rename = "try")]
    try_number: Option<u32>,
    /// Stored lines after this id first; default 0 (from the start).
    after: Option<i64>,
}

/// A task's log: the stored lines (`line` events), then each new line once
/// the run loop has stored it, each line once, until the run ends (`end`);
/// `error` if reading the stored lines failed.
#[utoipa::path(get, path = "/api/runs/{run_id}/tasks/{task_id}/logs/live", tag = "live",
    params(("run_id" = String, Path, description = "run id"), ("task_id" = String, Path, description = "task id"), TailQuery),
    responses((status = 200, description = "text/event-stream of `line` events, then `end`", content_type = "text/event-stream"),
              (status = 404, body = ErrorBody)))]
pub async fn log_tail(
    State(s): State<Server>,
    Path((run_id, task_id)): Path<(String, String)>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query?;
    let run_id = ids::run_id("run_id", &run_id)?.to_owned();
    let task_id = ids::task_id("task_id", &task_id)?.to_owned();
    let after = q.after.unwrap_or(0);
    let tail = blocking(&s.app, move |app| {
        app.tail_logs(&run_id, &task_id, q.try_number, after)
    })
    .await?;
    Ok(Sse::new(lines(tail)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The tail's lines, stored then live; an error reading the store ends the
/// stream with an `error` event naming it.
fn lines(tail: LogTail) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures_util::stream::unfold(Some(tail), |tail| async move {
        let mut tail = tail?;
        let next = match tail.next().await {
            Ok(Watched::Item(line)) => event("line", &line),
            Ok(Watched::Missed(n)) => missed(n),
            Ok(Watched::End) => return Some((Ok(end()), None)),
            Err(e) => return Some((Ok(failed(&e)), None)),
        };
        Some((Ok(next), Some(tail)))
    })
}
