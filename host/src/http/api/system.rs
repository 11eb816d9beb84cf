//! The host: staging volumes and the trust status (signature policy,
//! trusted keys, how tasks are confined).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::staging::StagingDir;
use crate::app::trust::TrustPolicy;
use crate::http::error::ApiError;
use crate::http::{Server, blocking};

/// Every staging directory ever recorded, newest first, with when it may be reclaimed.
#[utoipa::path(get, path = "/api/staging", tag = "host",
    responses((status = 200, body = [StagingDir])))]
pub async fn staging(State(s): State<Server>) -> Result<Json<Vec<StagingDir>>, ApiError> {
    Ok(Json(blocking(&s.app, |app| app.staging_dirs()).await?))
}

/// The signature policy, the trusted keys and the sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustStatus {
    /// The policy and keys.
    pub policy: TrustPolicy,
    /// How tasks started by this server are confined.
    pub sandbox: String,
}

/// Whether runs need a trusted signature, which keys are trusted, and how
/// tasks are confined.
#[utoipa::path(get, path = "/api/trust", tag = "host",
    responses((status = 200, body = TrustStatus)))]
pub async fn trust(State(s): State<Server>) -> Result<Json<TrustStatus>, ApiError> {
    let policy = blocking(&s.app, |app| app.trust_policy()).await?;
    Ok(Json(TrustStatus {
        policy,
        sandbox: s.app.sandbox().describe(),
    }))
}
