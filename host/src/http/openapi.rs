//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the result types' `ToSchema` derives, served at
//! `/api/openapi.json`.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;

use super::Server;
use super::api::{connections, dags, runs, system};
use super::{auth, error, live};
use crate::app;

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "The JSON API of `sluice serve`: DAGs, versions, runs, task instances, logs, staging and trust; live views as server-sent events."
    ),
    paths(
        dags::list,
        dags::grid,
        dags::versions,
        dags::version,
        dags::diff,
        dags::trigger,
        runs::list,
        runs::show,
        runs::result,
        runs::task,
        runs::logs,
        runs::clear,
        system::staging,
        system::trust,
        connections::list,
        connections::show,
        connections::add,
        connections::test,
        connections::delete,
        live::all_events,
        live::run_events,
        live::log_tail,
        auth::whoami,
        auth::login,
        auth::logout,
    ),
    components(schemas(
        error::ErrorBody,
        app::dags::DagSummary,
        app::dags::RunBrief,
        app::dags::ScheduleInfo,
        app::dags::Grid,
        app::dags::GridRun,
        app::dags::VersionDetail,
        app::dags::VersionTask,
        app::dags::Signer,
        app::dags::VersionDiff,
        app::dags::ComponentChange,
        app::deploy::VersionInfo,
        app::runs::RunInfo,
        app::runs::RunPage,
        app::runs::RunDetail,
        app::runs::RunResult,
        app::runs::StagingStatus,
        app::runs::TaskInfo,
        app::runs::TaskDetail,
        app::runs::TryInfo,
        app::runs::LogLine,
        app::runs::LogPage,
        app::staging::StagingDir,
        app::trust::TrustPolicy,
        app::trust::TrustedKey,
        app::tokens::Role,
        app::connections::ConnectionSummary,
        app::connections::ConnectionDetails,
        app::connections::Added,
        app::connections::CheckResult,
        dags::TriggerBody,
        connections::NewConnection,
        runs::ClearBody,
        runs::Cleared,
        system::TrustStatus,
        auth::Login,
        auth::SessionInfo,
    ))
)]
pub struct ApiDoc;

/// `/api/openapi.json`.
pub fn routes() -> Router<Server> {
    Router::new().route("/api/openapi.json", get(document))
}

async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
