//! Connections (admin only): list, show, add by URI or by type and fields,
//! test, delete. A secret goes in and never comes out: responses carry
//! none, and a body that does not parse is refused without echoing any of
//! its values.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::connections::{
    Added, CheckResult, ConnectionDetails, ConnectionInput, ConnectionSummary, SecretInput,
};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{Server, blocking, blocking_async, ids};

/// Every connection, without secrets.
#[utoipa::path(get, path = "/api/connections", tag = "connections",
    responses((status = 200, body = Vec<ConnectionSummary>, description = "every connection, no secret")))]
pub async fn list(State(s): State<Server>) -> Result<Json<Vec<ConnectionSummary>>, ApiError> {
    Ok(Json(blocking(&s.app, |app| app.list_connections()).await?))
}

/// One connection: its type's fields and whether a secret is stored (never the secret).
#[utoipa::path(get, path = "/api/connections/{connection_id}", tag = "connections",
    params(("connection_id" = String, Path, description = "connection id")),
    responses((status = 200, body = ConnectionDetails), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(s): State<Server>,
    Path(id): Path<String>,
) -> Result<Json<ConnectionDetails>, ApiError> {
    let id = ids::connection_id("connection_id", &id)?.to_owned();
    Ok(Json(
        blocking(&s.app, move |app| app.show_connection(&id)).await?,
    ))
}

/// A new connection: `id` and either `uri`, or `type`, `fields` and `secret`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    /// Connection id (what a DAG grants to a task).
    id: String,
    /// An Airflow-style URI, secret included (`postgresql://user:pw@host/db`).
    uri: Option<String>,
    /// The type (`postgres`, `s3`), with `fields`.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The type's fields (`host`, `port`, `user`, `database`, ...).
    #[serde(default)]
    fields: BTreeMap<String, String>,
    /// The password or secret key (write-only).
    secret: Option<String>,
    /// Overwrite a connection with this id.
    #[serde(default)]
    replace: bool,
}

/// What the body of `POST /api/connections` may hold, for a refusal that
/// echoes none of the values sent.
const SHAPE: &str = "request body: expected a JSON object with `id` (string) and either `uri` (string) or `type` (string), `fields` (object of strings) and `secret` (string); optional `replace` (boolean)";

/// Stores a connection (its secret sealed) and, for Postgres, opens it once
/// to report the role's privileges.
#[utoipa::path(post, path = "/api/connections", tag = "connections",
    request_body = NewConnection,
    responses((status = 201, body = Added), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add(
    State(s): State<Server>,
    body: Bytes,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    let new: NewConnection =
        serde_json::from_slice(&body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, SHAPE))?;
    ids::connection_id("id", &new.id)?;
    let input = match (new.uri, new.kind) {
        (Some(uri), None) if new.fields.is_empty() && new.secret.is_none() => {
            ConnectionInput::Uri { id: new.id, uri }
        }
        (None, Some(kind)) => ConnectionInput::Fields {
            id: new.id,
            kind,
            fields: new.fields,
            secret: new.secret.map_or(SecretInput::None, SecretInput::Value),
        },
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, SHAPE)),
    };
    let replace = new.replace;
    let added = blocking_async(&s.app, move |app| async move {
        app.add_connection(input, replace).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Opens a connection and says what answered, or why nothing did (secrets redacted).
#[utoipa::path(post, path = "/api/connections/{connection_id}/test", tag = "connections",
    params(("connection_id" = String, Path, description = "connection id")),
    responses((status = 200, body = CheckResult), (status = 404, body = ErrorBody)))]
pub async fn test(
    State(s): State<Server>,
    Path(id): Path<String>,
) -> Result<Json<CheckResult>, ApiError> {
    let id = ids::connection_id("connection_id", &id)?.to_owned();
    Ok(Json(
        blocking_async(
            &s.app,
            move |app| async move { app.test_connection(&id).await },
        )
        .await?,
    ))
}

/// Deletes a connection.
#[utoipa::path(delete, path = "/api/connections/{connection_id}", tag = "connections",
    params(("connection_id" = String, Path, description = "connection id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<Server>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ids::connection_id("connection_id", &id)?.to_owned();
    blocking(&s.app, move |app| app.delete_connection(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
