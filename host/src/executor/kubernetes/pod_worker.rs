//! The worker's side of the [endpoint](super::endpoint), inside a try's pod:
//! fetch the try and its connections, fetch the component (and a Python
//! task's runtime) and check its sha256 before compiling it, run the try
//! with the in-process executor (same sandbox, limits and DuckDB lockdown
//! as on one machine), stream log lines and progress, and report the
//! outcome until the host acknowledges it. A worker that starts while the
//! host restarts asks again for its try until the new host has adopted it;
//! one whose CA refuses the endpoint's certificate stops at once, having
//! sent nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::endpoint::Assignment;
use crate::connections::Connection;
use crate::events::TaskKey;
use crate::executor::{Executor, LocalExecutor, TryOutcome, WorkerMessage};
use crate::home::Home;
use crate::python_package::PythonPackage;

/// How often buffered log lines and progress are sent.
const FLUSH: Duration = Duration::from_millis(200);

/// How long past the try's timeout the worker keeps offering its outcome.
const REPORT_WINDOW: Duration = Duration::from_secs(60);

/// How long a starting worker keeps asking for its try and component while
/// the host cannot be reached or does not know the try yet (it is
/// restarting, and adopts the try once up).
const START_WINDOW: Duration = Duration::from_secs(120);

/// Log lines and progress kept while the host cannot be reached (it is
/// restarting); older ones are dropped beyond it (the pod log keeps them).
const MAX_PENDING: usize = 20_000;

/// The try a pod serves, from its arguments.
#[derive(Debug, Clone)]
pub struct PodTry {
    /// The host endpoint.
    pub endpoint: url::Url,
    /// The CA certificates (PEM) trusted for an `https` endpoint, and no
    /// other.
    pub endpoint_ca: Option<PathBuf>,
    /// The projected token (read again for each call: the kubelet rotates it).
    pub token_file: PathBuf,
    /// The run's staging directory on the run's volume.
    pub staging: PathBuf,
    /// The try's ids, checked against what the host assigns.
    pub key: TaskKey,
}

/// Why a pod's worker could not serve its try.
#[derive(Debug, thiserror::Error)]
pub enum PodWorkerError {
    /// The token file cannot be read.
    #[error("worker: cannot read the token at {path}: {source}")]
    Token {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A call to the host failed.
    #[error("worker: {what} at {url}: {detail}")]
    Call {
        /// Which call.
        what: &'static str,
        /// Where.
        url: String,
        /// Why (status and body, or the transport error).
        detail: String,
    },
    /// The host assigned a different try than the pod's arguments name.
    #[error("worker: the host assigned try {assigned:?}, the pod was started for {expected:?}")]
    WrongTry {
        /// From the host.
        assigned: TaskKey,
        /// From the arguments.
        expected: TaskKey,
    },
    /// The component's bytes do not match its digest.
    #[error("worker: component {expected} arrived with sha256 {actual}; refusing to compile it")]
    Digest {
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// A local file could not be written.
    #[error("worker: {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint's TLS cannot be set up as asked.
    #[error("worker: the endpoint {endpoint}: {detail}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The host never acknowledged the outcome.
    #[error("worker: the host did not acknowledge the outcome before the deadline: {0}")]
    Unacknowledged(String),
}

struct Host {
    http: reqwest::Client,
    /// Set once TLS refused the endpoint's certificate.
    refused: Arc<AtomicBool>,
    pod: PodTry,
}

impl Host {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.pod.endpoint.as_str().trim_end_matches('/'))
    }

    fn token(&self) -> Result<String, PodWorkerError> {
        std::fs::read_to_string(&self.pod.token_file)
            .map(|t| t.trim().to_owned())
            .map_err(|source| PodWorkerError::Token {
                path: self.pod.token_file.display().to_string(),
                source,
            })
    }

    async fn call(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PodWorkerError> {
        self.attempt(what, request)
            .await
            .map_err(|(error, _)| error)
    }

    /// One call; a failure says whether it is worth repeating while the
    /// host may be restarting (unreachable, 5xx, or 403 as it does not know
    /// the try yet), not when the endpoint's certificate was refused.
    async fn attempt(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, (PodWorkerError, bool)> {
        let url = || self.pod.endpoint.to_string();
        let response = match request
            .bearer_auth(self.token().map_err(|e| (e, false))?)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let error = PodWorkerError::Call {
                    what,
                    url: url(),
                    detail: with_causes(&e),
                };
                return Err((error, !self.refused.load(Ordering::Relaxed)));
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let again = status == reqwest::StatusCode::FORBIDDEN || status.is_server_error();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| format!("(unreadable body: {e})"));
        Err((
            PodWorkerError::Call {
                what,
                url: url(),
                detail: format!("{status}: {body}"),
            },
            again,
        ))
    }

    /// `GET path`, asked again with backoff for [`START_WINDOW`] while the
    /// host is unreachable or does not know the try yet.
    async fn get_once_up(
        &self,
        what: &'static str,
        path: &str,
    ) -> Result<reqwest::Response, PodWorkerError> {
        let until = tokio::time::Instant::now() + START_WINDOW;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.attempt(what, self.http.get(self.url(path))).await {
                Ok(response) => return Ok(response),
                Err((error, true)) if tokio::time::Instant::now() + delay < until => {
                    eprintln!(
                        "{error}; trying again in {}",
                        humantime::format_duration(delay)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        what: &'static str,
        path: &str,
        body: &T,
    ) -> Result<(), PodWorkerError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PodWorkerError::Call {
            what,
            url: self.url(path),
            detail: format!("cannot encode: {e}"),
        })?;
        self.call(
            what,
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(bytes),
        )
        .await
        .map(drop)
    }
}

/// Serves the try of this pod with `local` (an in-process executor on a home
/// kept on the run's volume, whose blob store receives the component).
pub async fn serve(local: &LocalExecutor, home: &Home, pod: PodTry) -> Result<(), PodWorkerError> {
    let refused = Arc::new(AtomicBool::new(false));
    let host = Host {
        http: http_client(&pod, refused.clone())?,
        refused,
        pod,
    };
    let response = host.get_once_up("fetching the try", "/v1/try").await?;
    let bytes = response.bytes().await.map_err(|e| PodWorkerError::Call {
        what: "fetching the try",
        url: host.url("/v1/try"),
        detail: e.to_string(),
    })?;
    let Assignment {
        mut request,
        connections,
        python_runtime,
    } = serde_json::from_slice(&bytes).map_err(|e| PodWorkerError::Call {
        what: "reading the try",
        url: host.url("/v1/try"),
        detail: e.to_string(),
    })?;
    if request.key != host.pod.key {
        return Err(PodWorkerError::WrongTry {
            assigned: request.key,
            expected: host.pod.key.clone(),
        });
    }
    fetch_component(&host, home, &request.component, python_runtime.as_deref()).await?;
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| PodWorkerError::Io { path, source }
    };
    std::fs::create_dir_all(&host.pod.staging).map_err(io(&host.pod.staging))?;
    request.staging_dir = host
        .pod
        .staging
        .canonicalize()
        .map_err(io(&host.pod.staging))?;
    let connections: Vec<Connection> = connections.into_iter().map(Connection::from).collect();
    let run_id = request.key.run_id.clone();
    let report_until = tokio::time::Instant::now() + request.policy.timeout + REPORT_WINDOW;
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let try_run = local.run_granted(request, connections, events);
    let relay = async {
        let mut ticker = tokio::time::interval(FLUSH);
        let mut open = true;
        // What the host has not acknowledged yet (it may be restarting).
        let mut pending: Vec<WorkerMessage> = Vec::new();
        while open {
            ticker.tick().await;
            loop {
                match received.try_recv() {
                    Ok(event) => pending.extend(WorkerMessage::from_event(event)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if pending.len() > MAX_PENDING {
                let dropped = pending.len() - MAX_PENDING;
                pending.drain(..dropped);
                eprintln!(
                    "worker: the host has not taken log lines for a while; dropped the {dropped} oldest"
                );
            }
            if !pending.is_empty() {
                match host
                    .post_json("sending log lines", "/v1/events", &pending)
                    .await
                {
                    Ok(()) => pending.clear(),
                    // Kept for the next attempt; said where the pod's log keeps it.
                    Err(e) => eprintln!("{e}"),
                }
            }
        }
        pending
    };
    let (outcome, pending) = tokio::join!(try_run, relay);
    let reported = report(&host, pending, &outcome, report_until).await;
    local.release(&run_id);
    reported
}

/// `error` and its causes (a TLS refusal is a cause of reqwest's error).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The client for the endpoint: over TLS trusting only `endpoint_ca` for an
/// `https` endpoint (a CA that does not vouch for it: no call, so the token is
/// never sent, and `refused` is set), plain for `http`.
fn http_client(pod: &PodTry, refused: Arc<AtomicBool>) -> Result<reqwest::Client, PodWorkerError> {
    let error = |detail: String| PodWorkerError::Tls {
        endpoint: pod.endpoint.to_string(),
        detail,
    };
    let builder = reqwest::Client::builder();
    let builder = match (pod.endpoint.scheme(), &pod.endpoint_ca) {
        ("https", Some(ca)) => {
            let config =
                super::tls::client_config(ca, refused).map_err(|e| error(e.to_string()))?;
            builder.use_preconfigured_tls(config)
        }
        ("https", None) => {
            return Err(error(
                "an https endpoint needs --endpoint-ca (the CA certificates to trust for it)"
                    .into(),
            ));
        }
        ("http", None) => builder,
        ("http", Some(ca)) => {
            return Err(error(format!(
                "--endpoint-ca {} is given but the endpoint is plain http://",
                ca.display()
            )));
        }
        (scheme, _) => return Err(error(format!("unsupported scheme `{scheme}`"))),
    };
    builder
        .build()
        .map_err(|e| error(format!("cannot build the HTTP client: {e}")))
}

/// Puts the try's component `digest` in the home's blob store, and, when it
/// is a Python task, the runtime component the host assigned for it
/// (`python_runtime`), recorded for the package's runtime key.
async fn fetch_component(
    host: &Host,
    home: &Home,
    digest: &str,
    python_runtime: Option<&str>,
) -> Result<(), PodWorkerError> {
    let bytes = fetch_blob(host, home, digest, "/v1/component").await?;
    if !PythonPackage::is_package(&bytes) {
        return Ok(());
    }
    let wrong = |detail: String| PodWorkerError::Call {
        what: "reading the Python task",
        url: host.url("/v1/try"),
        detail,
    };
    let package = PythonPackage::parse(&bytes).map_err(|e| wrong(e.to_string()))?;
    let runtime = python_runtime
        .ok_or_else(|| wrong("the host assigned no runtime component for it".into()))?;
    if !crate::digest::is_sha256_hex(runtime) {
        return Err(wrong(format!(
            "the runtime component {runtime:?} is not a digest"
        )));
    }
    fetch_blob(host, home, runtime, "/v1/python-runtime").await?;
    let key = &package.runtime_key;
    let recorded =
        home.record_python_runtime(key, runtime)
            .map_err(|source| PodWorkerError::Io {
                path: format!("the record of Python runtime {key}"),
                source,
            })?;
    if recorded != runtime {
        return Err(wrong(format!(
            "this home runs component {recorded} for Python runtime {key}, the host {runtime}"
        )));
    }
    Ok(())
}

/// The bytes of blob `digest`: from the home when they are there and match
/// it, else fetched from the endpoint's `route`, checked and stored.
async fn fetch_blob(
    host: &Host,
    home: &Home,
    digest: &str,
    route: &str,
) -> Result<Vec<u8>, PodWorkerError> {
    let path = home.blob(digest);
    if path.is_file() {
        let bytes = std::fs::read(&path).map_err(|source| PodWorkerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if hex::encode(Sha256::digest(&bytes)) == digest {
            return Ok(bytes);
        }
    }
    let response = host.get_once_up("fetching the component", route).await?;
    let bytes = response.bytes().await.map_err(|e| PodWorkerError::Call {
        what: "fetching the component",
        url: host.url(route),
        detail: e.to_string(),
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != digest {
        return Err(PodWorkerError::Digest {
            expected: digest.to_owned(),
            actual,
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PodWorkerError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    crate::home::write_atomically(&path, &bytes).map_err(|source| PodWorkerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(bytes.to_vec())
}

/// Offers the log lines the host has not taken yet, then the outcome, until
/// the host acknowledges both or `until` (a restarted host adopts the try and
/// takes them).
async fn report(
    host: &Host,
    mut pending: Vec<WorkerMessage>,
    outcome: &TryOutcome,
    until: tokio::time::Instant,
) -> Result<(), PodWorkerError> {
    let mut delay = Duration::from_millis(100);
    loop {
        if !pending.is_empty() {
            // Before the outcome, so the host stores them first; a host that
            // refuses them (the try ended) does not hold the outcome back.
            match host
                .post_json("sending log lines", "/v1/events", &pending)
                .await
            {
                Ok(()) => pending.clear(),
                Err(e) => eprintln!("{e}"),
            }
        }
        match host
            .post_json("reporting the outcome", "/v1/outcome", outcome)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                if tokio::time::Instant::now() + delay >= until {
                    return Err(PodWorkerError::Unacknowledged(e.to_string()));
                }
                eprintln!("{e}; trying again in {}", humantime::format_duration(delay));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
