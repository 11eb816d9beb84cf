//! The web UI: plain HTML, CSS and JavaScript embedded in the binary at
//! build time (`include_str!`), so it needs no Node toolchain and works
//! offline. One page (`index.html`) routes by its URL fragment; `app.js`
//! draws the task graph and the Gantt chart as hand-written SVG.

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Server;
use super::error::ApiError;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// What every page and asset is sent with: no framing, no sniffing, only
/// this server's own scripts and styles.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The UI's routes, and a JSON 404 for any other path.
pub fn routes() -> Router<Server> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
        })
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
}
