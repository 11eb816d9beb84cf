//! `sluice serve`: the JSON API, its OpenAPI document and the web UI, over
//! the application layer ([`crate::app`]). Every handler parses the request,
//! calls one `App` method (on the blocking pool when it touches the
//! metadatabase, which is blocking SQLite) and serializes what it returns;
//! no handler holds logic of its own.
//!
//! - [`api`]: the JSON endpoints, one module per area;
//! - [`live`]: server-sent events from the run loop's broadcast;
//! - [`auth`]: tokens, sessions, roles and CSRF checks;
//! - [`assets`]: the UI, embedded in the binary;
//! - [`openapi`]: the OpenAPI document, generated from the handlers;
//! - [`ids`]: ids in paths and queries, checked;
//! - [`error`]: errors as JSON.

pub mod api;
pub mod assets;
pub mod auth;
pub mod error;
pub mod ids;
pub mod live;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::app::{App, AppError};
use auth::Auth;
use error::ApiError;

/// The largest request body accepted (trigger params, clear options).
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct Server {
    /// The application.
    pub app: App,
    /// Who may do what.
    pub auth: Arc<Auth>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Tokens are required (a non-loopback address, or asked for) and none exists.
    #[error(
        "serving {0} requires API tokens (it is not a loopback address, or --require-tokens was given) and there are none; create one with `sluice tokens create --role admin`"
    )]
    NeedsTokens(SocketAddr),
    /// The application refused.
    #[error(transparent)]
    App(#[from] AppError),
}

/// The router of the whole API and UI over `server`.
pub fn router(server: Server) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(live::routes())
        .merge(openapi::routes())
        .merge(auth::routes())
        .merge(assets::routes())
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            auth::guard,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(server)
}

/// Serves `app` on `addr` until `shutdown` resolves. A loopback address is
/// open to every local user without a token unless `require_tokens`; any
/// other address requires one (and there must be at least one).
/// `on_listen` is told the bound address (port 0 picks a free one).
pub async fn serve(
    app: App,
    addr: SocketAddr,
    require_tokens: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let open = addr.ip().is_loopback() && !require_tokens;
    let auth = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || Auth::load(&app, open))
            .await
            .map_err(|e| ServeError::Serve {
                addr,
                source: std::io::Error::other(e),
            })??
    };
    if !open && !auth.has_tokens() {
        return Err(ServeError::NeedsTokens(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    on_listen(bound);
    let server = Server {
        app,
        auth: Arc::new(auth),
    };
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Serve {
            addr: bound,
            source,
        })
}

/// Runs `f` on the blocking pool (it reads or writes the metadatabase) and
/// turns its error into a response.
pub async fn blocking<T, F>(app: &App, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&App) -> Result<T, AppError> + Send + 'static,
{
    let app = app.clone();
    match tokio::task::spawn_blocking(move || f(&app)).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's worker thread failed: {e}"),
        )),
    }
}

/// Runs the async `App` call `f` on the blocking pool (it reads or writes
/// the metadatabase before or after awaiting) and turns its error into a
/// response.
pub async fn blocking_async<T, F, Fut>(app: &App, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(App) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AppError>>,
{
    let app = app.clone();
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(f(app))).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's worker thread failed: {e}"),
        )),
    }
}
