//! DAGs, their grid, their versions, and triggering a run.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::app::dags::{DagSummary, Grid, VersionDetail, VersionDiff};
use crate::app::deploy::VersionInfo;
use crate::app::runs::{RunInfo, RunRequest};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{Server, blocking, ids};

/// Every deployed DAG: schedule, next due interval, latest runs.
#[utoipa::path(get, path = "/api/dags", tag = "dags",
    responses((status = 200, body = [DagSummary])))]
pub async fn list(State(s): State<Server>) -> Result<Json<Vec<DagSummary>>, ApiError> {
    Ok(Json(blocking(&s.app, App::dags).await?))
}

/// How many runs a grid shows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GridQuery {
    /// Runs (newest first), 1 to 100; default 25.
    limit: Option<u32>,
}

/// The most runs a grid shows.
const MAX_GRID: u32 = 100;

/// A DAG's latest runs × its tasks, coloured by state.
#[utoipa::path(get, path = "/api/dags/{dag_id}/grid", tag = "dags",
    params(("dag_id" = String, Path, description = "DAG id"), GridQuery),
    responses((status = 200, body = Grid), (status = 404, body = ErrorBody)))]
pub async fn grid(
    State(s): State<Server>,
    Path(dag_id): Path<String>,
    query: Result<Query<GridQuery>, QueryRejection>,
) -> Result<Json<Grid>, ApiError> {
    let Query(query) = query?;
    let dag_id = ids::dag_id("dag_id", &dag_id)?.to_owned();
    let limit = query.limit.unwrap_or(25);
    if !(1..=MAX_GRID).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be 1 to {MAX_GRID}, not {limit}"),
        ));
    }
    Ok(Json(
        blocking(&s.app, move |app| app.grid(&dag_id, limit)).await?,
    ))
}

/// Every version of a DAG, newest first.
#[utoipa::path(get, path = "/api/dags/{dag_id}/versions", tag = "versions",
    params(("dag_id" = String, Path, description = "DAG id")),
    responses((status = 200, body = [VersionInfo]), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(s): State<Server>,
    Path(dag_id): Path<String>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    let dag_id = ids::dag_id("dag_id", &dag_id)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.versions(&dag_id)).await?,
    ))
}

/// One version: its tasks' component digests and its signers.
#[utoipa::path(get, path = "/api/dags/{dag_id}/versions/{version}", tag = "versions",
    params(("dag_id" = String, Path, description = "DAG id"),
           ("version" = String, Path, description = "version digest, or a unique prefix of 8+ hex digits")),
    responses((status = 200, body = VersionDetail), (status = 404, body = ErrorBody)))]
pub async fn version(
    State(s): State<Server>,
    Path((dag_id, version)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let dag_id = ids::dag_id("dag_id", &dag_id)?.to_owned();
    let version = ids::version("version", &version)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.version_detail(&dag_id, &version)).await?,
    ))
}

/// Which component digests differ from one version to another.
#[utoipa::path(get, path = "/api/dags/{dag_id}/versions/{from}/diff/{to}", tag = "versions",
    params(("dag_id" = String, Path, description = "DAG id"),
           ("from" = String, Path, description = "the first version"),
           ("to" = String, Path, description = "the second version")),
    responses((status = 200, body = VersionDiff), (status = 404, body = ErrorBody)))]
pub async fn diff(
    State(s): State<Server>,
    Path((dag_id, from, to)): Path<(String, String, String)>,
) -> Result<Json<VersionDiff>, ApiError> {
    let dag_id = ids::dag_id("dag_id", &dag_id)?.to_owned();
    let from = ids::version("from", &from)?.to_owned();
    let to = ids::version("to", &to)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.version_diff(&dag_id, &from, &to)).await?,
    ))
}

/// A run to start.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// Run params (a JSON object); they override DAG and task params.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: serde_json::Map<String, serde_json::Value>,
    /// The logical date (RFC 3339; default now).
    logical_date: Option<DateTime<Utc>>,
    /// Keep the staging directory for the TTL even if the run succeeds.
    #[serde(default)]
    keep_staging: bool,
}

/// Starts a run of the DAG's current version; returns it as created (it
/// runs on in the server; follow it at `/api/runs/{run_id}/events`).
#[utoipa::path(post, path = "/api/dags/{dag_id}/runs", tag = "runs",
    params(("dag_id" = String, Path, description = "DAG id")),
    request_body = TriggerBody,
    responses((status = 201, body = RunInfo), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn trigger(
    State(s): State<Server>,
    Path(dag_id): Path<String>,
    body: Result<Json<TriggerBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RunInfo>), ApiError> {
    let dag_id = ids::dag_id("dag_id", &dag_id)?.to_owned();
    let Json(body) = body?;
    let request = RunRequest {
        params: body.params,
        logical_date: body.logical_date,
        keep_staging: body.keep_staging,
    };
    let run = blocking(&s.app, move |app| app.start_run(&dag_id, request)).await?;
    Ok((StatusCode::CREATED, Json(run)))
}
