//! Who may do what. On a loopback address the server is open (every local
//! user is an admin) but refuses requests whose `Host` is not a loopback
//! name (DNS rebinding) and state changes from another origin. On any other
//! address every `/api` request needs a token (`Authorization: Bearer`) or
//! a session cookie made by logging in with one (`POST /api/session`;
//! HttpOnly, SameSite=Strict); a state change made with a cookie must also
//! carry the session's CSRF token in `X-CSRF-Token`. Reading needs a viewer,
//! changing runs an operator, connections an admin. No CORS headers are
//! ever sent, so browsers keep other origins out.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{Server, blocking};
use crate::app::tokens::{Role, Session};
use crate::app::{App, AppError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sluice_session";
/// The header a cookie session's state changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Who may use this server.
#[derive(Debug)]
pub struct Auth {
    /// Bound to loopback: no token needed.
    open: bool,
    /// Whether any token existed when the server started.
    has_tokens: bool,
}

impl Auth {
    /// The tokens of `app`'s home; `open` for a loopback address.
    pub fn load(app: &App, open: bool) -> Result<Self, AppError> {
        Ok(Self {
            open,
            has_tokens: !app.tokens()?.is_empty(),
        })
    }

    /// Whether any token existed when the server started.
    pub fn has_tokens(&self) -> bool {
        self.has_tokens
    }
}

/// The live session of the request's cookie, if it has one.
async fn session(s: &Server, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(cookie) = cookie(headers, SESSION_COOKIE).map(str::to_owned) else {
        return Ok(None);
    };
    blocking(&s.app, move |app| app.session(&cookie)).await
}

/// The session and login routes.
pub fn routes() -> Router<Server> {
    Router::new().route("/api/session", get(whoami).post(login).delete(logout))
}

/// The role a request needs, or none for what anyone may fetch (the UI's
/// pages and assets, logging in).
fn required(method: &Method, path: &str) -> Option<Role> {
    if !path.starts_with("/api/") || path == "/api/session" {
        return None;
    }
    let reads = matches!(*method, Method::GET | Method::HEAD);
    Some(if path.starts_with("/api/connections") {
        Role::Admin
    } else if reads {
        Role::Viewer
    } else {
        Role::Operator
    })
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The host part of a `Host` header or an origin's authority.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn header(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Whether a state-changing request comes from this server's own pages: no
/// `Origin` (not a browser's cross-origin request) or one naming this host.
fn same_origin(headers: &HeaderMap) -> bool {
    match (header(headers, ORIGIN), header(headers, HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// Checks every request against the rules of this module.
pub async fn guard(State(s): State<Server>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if s.auth.open {
        let host = header(headers, HOST).map(host_name);
        if !matches!(host, Some("localhost" | "127.0.0.1" | "::1")) {
            return refuse(
                StatusCode::FORBIDDEN,
                "Host: this server listens on loopback and answers only to localhost, 127.0.0.1 or [::1]",
            );
        }
    }
    if changes && !same_origin(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Origin: state changes are accepted only from this server's own pages",
        );
    }
    let Some(needed) = required(&method, &path) else {
        return next.run(request).await;
    };
    if s.auth.open {
        return next.run(request).await;
    }
    let role = if let Some(value) = header(headers, AUTHORIZATION) {
        let Some(token) = value.strip_prefix("Bearer ") else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "Authorization: expected `Bearer <token>`",
            );
        };
        let token = token.trim().to_owned();
        match blocking(&s.app, move |app| app.authenticate(&token)).await {
            Ok(Some(info)) => info.role,
            Ok(None) => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "Authorization: not a valid API token",
                );
            }
            Err(e) => return e.into_response(),
        }
    } else if cookie(headers, SESSION_COOKIE).is_some() {
        let session = match session(&s, headers).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "session: not logged in (the session is unknown or expired); log in again",
                );
            }
            Err(e) => return e.into_response(),
        };
        if changes {
            let sent = header(headers, CSRF_HEADER).unwrap_or("");
            if !bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes())) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "X-CSRF-Token: missing or wrong for this session",
                );
            }
        }
        session.role
    } else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this server needs an API token (Authorization: Bearer) or a session; see `sluice tokens create`",
        );
    };
    if role < needed {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("this needs the {needed} role; the token's role is {role}"),
        );
    }
    next.run(request).await
}

/// Logging in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// An API token.
    token: String,
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// The role.
    pub role: Role,
    /// Whether this server needs tokens (false on loopback).
    pub auth_required: bool,
    /// What state changes made with the session cookie carry in `X-CSRF-Token`.
    pub csrf_token: Option<String>,
}

/// Who the caller is: on loopback, an admin; elsewhere, the logged-in session's role.
#[utoipa::path(get, path = "/api/session", tag = "session",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
pub async fn whoami(
    State(s): State<Server>,
    headers: HeaderMap,
) -> Result<Json<SessionInfo>, ApiError> {
    if s.auth.open {
        return Ok(Json(SessionInfo {
            role: Role::Admin,
            auth_required: false,
            csrf_token: None,
        }));
    }
    let session = session(&s, &headers)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "session: not logged in"))?;
    Ok(Json(SessionInfo {
        role: session.role,
        auth_required: true,
        csrf_token: Some(session.csrf),
    }))
}

/// Logs in with an API token: sets the session cookie (HttpOnly,
/// SameSite=Strict) and returns the session's CSRF token.
#[utoipa::path(post, path = "/api/session", tag = "session", request_body = Login,
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
pub async fn login(
    State(s): State<Server>,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(login) = body?;
    let token = login.token.trim().to_owned();
    let info = blocking(&s.app, move |app| app.authenticate(&token))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "token: not a valid API token"))?;
    let new = blocking(&s.app, move |app| app.start_session(&info, SESSION_TTL)).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        new.cookie,
        SESSION_TTL.as_secs()
    );
    let mut response = Json(SessionInfo {
        role: new.session.role,
        auth_required: !s.auth.open,
        csrf_token: Some(new.session.csrf),
    })
    .into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("session cookie: {e}"),
        )
    })?;
    response.headers_mut().insert(SET_COOKIE, value);
    Ok(response)
}

/// Logs out: ends the session and clears its cookie.
#[utoipa::path(delete, path = "/api/session", tag = "session",
    responses((status = 204, description = "logged out"), (status = 500, body = ErrorBody)))]
pub async fn logout(State(s): State<Server>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(id) = cookie(&headers, SESSION_COOKIE).map(str::to_owned) {
        blocking(&s.app, move |app| app.end_session(&id)).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(
            SET_COOKIE,
            format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_method_and_area() {
        assert_eq!(required(&Method::GET, "/"), None);
        assert_eq!(required(&Method::POST, "/api/session"), None);
        assert_eq!(required(&Method::GET, "/api/runs"), Some(Role::Viewer));
        assert_eq!(
            required(&Method::POST, "/api/dags/x/runs"),
            Some(Role::Operator)
        );
        assert_eq!(
            required(&Method::GET, "/api/connections"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn hosts_origins_and_cookies_are_read_exactly() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("evil.example"), "evil.example");
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; sluice_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
