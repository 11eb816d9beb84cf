//! The JSON endpoints, one module per area: [`dags`] (DAGs, grid, versions,
//! trigger), [`runs`] (runs, task instances, logs, clear), [`system`]
//! (staging, trust), [`connections`] (admin only; secrets write-only).

pub mod connections;
pub mod dags;
pub mod runs;
pub mod system;

use axum::Router;
use axum::routing::{get, post};

use super::Server;

/// The JSON routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/api/dags", get(dags::list))
        .route("/api/dags/{dag_id}/grid", get(dags::grid))
        .route("/api/dags/{dag_id}/versions", get(dags::versions))
        .route("/api/dags/{dag_id}/versions/{version}", get(dags::version))
        .route(
            "/api/dags/{dag_id}/versions/{from}/diff/{to}",
            get(dags::diff),
        )
        .route("/api/dags/{dag_id}/runs", post(dags::trigger))
        .route("/api/runs", get(runs::list))
        .route("/api/runs/{run_id}", get(runs::show))
        .route("/api/runs/{run_id}/result", get(runs::result))
        .route("/api/runs/{run_id}/tasks/{task_id}", get(runs::task))
        .route("/api/runs/{run_id}/tasks/{task_id}/logs", get(runs::logs))
        .route(
            "/api/runs/{run_id}/tasks/{task_id}/clear",
            post(runs::clear),
        )
        .route("/api/staging", get(system::staging))
        .route("/api/trust", get(system::trust))
        .route(
            "/api/connections",
            get(connections::list).post(connections::add),
        )
        .route(
            "/api/connections/{connection_id}",
            get(connections::show).delete(connections::delete),
        )
        .route(
            "/api/connections/{connection_id}/test",
            post(connections::test),
        )
}
