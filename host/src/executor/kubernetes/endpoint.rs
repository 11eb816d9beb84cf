//! The host endpoint Kubernetes workers talk to (HTTP/1.1 and JSON, over TLS
//! unless the operator chose plain HTTP: see [`super::tls`] and README
//! "Running on Kubernetes").
//!
//! A worker proves who it is with its projected service-account token
//! (audience `sluice`): the host asks the API server to review it
//! (TokenReview), reads the pod name and uid the server vouches for, and
//! binds them to the live try whose Job made that pod. It then gets that
//! try's request, component (and a Python task's runtime) and granted
//! connections (secrets travel only here, into the worker's memory), and
//! sends its log lines, progress and outcome back. A token the server does
//! not accept, one of a pod that is not the bound pod of a live try, or one
//! for a try that has ended is refused, with one exception: a worker whose
//! acknowledgement was lost may repeat the outcome it reported, and that
//! identical report is acknowledged again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::objects::{TOKEN_AUDIENCE, TRY_LABEL};
use crate::connections::{Connection, ConnectionConfig};
use crate::events::RunEvent;
use crate::executor::{LocalExecutor, TryOutcome, TryRequest, WorkerMessage};
use crate::home::Home;
use crate::python_package::{self, PythonPackage};

/// The TokenReview `extra` keys naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// A connection granted to a try, as sent to its worker.
#[derive(Serialize, Deserialize)]
pub struct GrantedConnection {
    /// Connection id.
    pub id: String,
    /// Public part.
    pub config: ConnectionConfig,
    /// The secret (only ever in this response and the worker's memory).
    pub secret: String,
    /// Whether the task may open it although its role is privileged.
    pub allow_privileged: bool,
}

impl From<GrantedConnection> for Connection {
    fn from(granted: GrantedConnection) -> Self {
        Self {
            id: granted.id,
            config: granted.config,
            secret: granted.secret,
            allow_privileged: granted.allow_privileged,
        }
    }
}

/// What a worker is given: its try and that try's connections.
#[derive(Serialize, Deserialize)]
pub struct Assignment {
    /// The try.
    pub request: TryRequest,
    /// Its granted connections.
    pub connections: Vec<GrantedConnection>,
    /// For a Python task: the runtime component the host runs for the
    /// package's runtime key (`/v1/python-runtime` serves it).
    pub python_runtime: Option<String>,
}

/// The pod a live try is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundPod {
    name: String,
    uid: String,
}

/// How long the outcome of an ended try is remembered, so a repeated report
/// (its acknowledgement was lost) is acknowledged again.
const ENDED_KEPT: Duration = Duration::from_secs(600);

/// A live try, by its Job's name.
struct Slot {
    request: TryRequest,
    events: UnboundedSender<RunEvent>,
    outcome: Option<oneshot::Sender<TryOutcome>>,
    pod: Option<BoundPod>,
    /// What its worker reported.
    reported: Option<TryOutcome>,
}

/// An ended try whose worker reported: who reported what, and when it ended.
struct Ended {
    pod: BoundPod,
    outcome: TryOutcome,
    at: Instant,
}

/// The endpoint's state: the live tries and how to check tokens.
pub struct Endpoint {
    client: kube::Client,
    namespace: String,
    home: Home,
    local: Arc<LocalExecutor>,
    live: Mutex<HashMap<String, Slot>>,
    ended: Mutex<HashMap<String, Ended>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a worker's call was refused.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn forbidden(why: impl Into<String>) -> Refusal {
    Refusal(StatusCode::FORBIDDEN, why.into())
}

impl Endpoint {
    /// An endpoint checking tokens through `client`, serving components from
    /// `home` and connections resolved by `local`.
    pub fn new(
        client: kube::Client,
        namespace: String,
        home: Home,
        local: Arc<LocalExecutor>,
    ) -> Self {
        Self {
            client,
            namespace,
            home,
            local,
            live: Mutex::default(),
            ended: Mutex::default(),
        }
    }

    /// Opens the try run by Job `job`; its outcome arrives on the receiver.
    pub fn open(
        &self,
        job: &str,
        request: TryRequest,
        events: UnboundedSender<RunEvent>,
    ) -> oneshot::Receiver<TryOutcome> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.live).insert(
            job.to_owned(),
            Slot {
                request,
                events,
                outcome: Some(sender),
                pod: None,
                reported: None,
            },
        );
        receiver
    }

    /// Ends the try run by Job `job`: its worker's calls are refused from
    /// now on, but for a repeat of the outcome it reported.
    pub fn close(&self, job: &str) {
        let slot = lock(&self.live).remove(job);
        let mut ended = lock(&self.ended);
        ended.retain(|_, e| e.at.elapsed() < ENDED_KEPT);
        if let Some(Slot {
            pod: Some(pod),
            reported: Some(outcome),
            ..
        }) = slot
        {
            ended.insert(
                job.to_owned(),
                Ended {
                    pod,
                    outcome,
                    at: Instant::now(),
                },
            );
        }
    }

    /// The name of the pod a live try is bound to, if any.
    pub fn bound_pod(&self, job: &str) -> Option<String> {
        lock(&self.live)
            .get(job)
            .and_then(|slot| slot.pod.as_ref().map(|p| p.name.clone()))
    }

    /// The routes workers call.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/v1/try", get(assignment))
            .route("/v1/component", get(component))
            .route("/v1/python-runtime", get(python_runtime))
            .route("/v1/events", post(events))
            .route("/v1/outcome", post(outcome))
            .with_state(self)
    }

    /// The Job name of the live try whose bound pod presented these headers.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let (job, candidate) = self.identify(headers).await?;
        self.admit(&job, candidate).await?;
        Ok(job)
    }

    /// The pod the cluster vouches presented these headers, and the Job
    /// (the try) that pod runs.
    async fn identify(&self, headers: &HeaderMap) -> Result<(String, BoundPod), Refusal> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Refusal(
                    StatusCode::UNAUTHORIZED,
                    "no bearer token in the Authorization header".into(),
                )
            })?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot review the token: {e}"),
                )
            })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(forbidden(format!(
                "the token was not accepted by the cluster: {}",
                status.error.as_deref().unwrap_or("not authenticated")
            )));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE))
        {
            return Err(forbidden(format!(
                "the token is not for the audience `{TOKEN_AUDIENCE}`"
            )));
        }
        let user = status.user.unwrap_or_default();
        let prefix = format!("system:serviceaccount:{}:", self.namespace);
        if !user
            .username
            .as_deref()
            .is_some_and(|u| u.starts_with(&prefix))
        {
            return Err(forbidden(format!(
                "the token is not a service account's of namespace {}",
                self.namespace
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (one(POD_NAME_EXTRA), one(POD_UID_EXTRA)) else {
            return Err(forbidden("the token is not bound to a pod"));
        };
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace);
        let pod = pods.get_opt(&pod_name).await.map_err(|e| {
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read pod {pod_name}: {e}"),
            )
        })?;
        let pod = pod.ok_or_else(|| forbidden(format!("pod {pod_name} does not exist")))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(forbidden(format!(
                "the token is for an earlier pod named {pod_name}"
            )));
        }
        let job = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TRY_LABEL))
            .cloned()
            .ok_or_else(|| forbidden(format!("pod {pod_name} does not run a Sluice try")))?;
        Ok((
            job,
            BoundPod {
                name: pod_name,
                uid: pod_uid,
            },
        ))
    }

    /// Admits `candidate` to the live try of `job`: the pod bound to it, or
    /// the first pod to call (bound from then on), or a replacement of a
    /// bound pod that is gone or failed.
    async fn admit(&self, job: &str, candidate: BoundPod) -> Result<(), Refusal> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace);
        let bound = lock(&self.live)
            .get(job)
            .ok_or_else(|| forbidden(format!("the try of pod {} has ended", candidate.name)))?
            .pod
            .clone();
        match bound {
            Some(pod) if pod == candidate => {}
            Some(pod) => {
                // Another pod of the Job: allowed only once the bound one is
                // gone or has failed (the Job replaced a disrupted pod).
                let earlier = pods.get_opt(&pod.name).await.map_err(|e| {
                    Refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot read pod {}: {e}", pod.name),
                    )
                })?;
                let replaced = earlier.is_none_or(|p| {
                    p.metadata.uid.as_deref() != Some(pod.uid.as_str())
                        || p.status.and_then(|s| s.phase).as_deref() == Some("Failed")
                });
                if !replaced {
                    return Err(forbidden(format!(
                        "the try is bound to pod {}, not {}",
                        pod.name, candidate.name
                    )));
                }
                self.bind(job, candidate)?;
            }
            None => self.bind(job, candidate)?,
        }
        Ok(())
    }

    fn bind(&self, job: &str, pod: BoundPod) -> Result<(), Refusal> {
        let mut live = lock(&self.live);
        let slot = live
            .get_mut(job)
            .ok_or_else(|| forbidden(format!("the try of pod {} has ended", pod.name)))?;
        slot.pod = Some(pod);
        Ok(())
    }

    fn with_slot<T>(&self, job: &str, f: impl FnOnce(&mut Slot) -> T) -> Result<T, Refusal> {
        let mut live = lock(&self.live);
        let slot = live
            .get_mut(job)
            .ok_or_else(|| forbidden("the try has ended"))?;
        Ok(f(slot))
    }
}

async fn assignment(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
) -> Result<Json<Assignment>, Refusal> {
    let job = endpoint.authenticate(&headers).await?;
    let request = endpoint.with_slot(&job, |slot| slot.request.clone())?;
    let connections = endpoint
        .local
        .resolve_connections(&request)
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .into_iter()
        .map(|c| GrantedConnection {
            id: c.id,
            config: c.config,
            secret: c.secret,
            allow_privileged: c.allow_privileged,
        })
        .collect();
    let python_runtime = match python_package(&endpoint, &request.component).await? {
        Some(package) => Some(runtime_component(&endpoint, &package)?),
        None => None,
    };
    Ok(Json(Assignment {
        request,
        connections,
        python_runtime,
    }))
}

/// Component `digest` of the home, if it is a Python task package (a
/// component is read no further than its start).
async fn python_package(
    endpoint: &Endpoint,
    digest: &str,
) -> Result<Option<PythonPackage>, Refusal> {
    let blob = endpoint.home.blob(digest);
    let refused = |detail: String| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("component {digest} ({}): {detail}", blob.display()),
        )
    };
    let (path, wanted) = (blob.clone(), digest.to_owned());
    tokio::task::spawn_blocking(move || python_package::read_stored(&path, &wanted))
        .await
        .map_err(|e| refused(e.to_string()))?
        .map_err(|e| refused(e.to_string()))
}

/// The digest of the runtime component the home runs for `package`.
fn runtime_component(endpoint: &Endpoint, package: &PythonPackage) -> Result<String, Refusal> {
    let key = &package.runtime_key;
    let refused = |detail: String| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Python runtime {key}: {detail}"),
        )
    };
    endpoint
        .home
        .python_runtime(key)
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| refused("none recorded in the host's home".into()))
}

async fn read_blob(endpoint: &Endpoint, digest: &str) -> Result<Vec<u8>, Refusal> {
    let path = endpoint.home.blob(digest);
    tokio::fs::read(&path).await.map_err(|e| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read component {digest} ({}): {e}", path.display()),
        )
    })
}

async fn component(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
) -> Result<Vec<u8>, Refusal> {
    let job = endpoint.authenticate(&headers).await?;
    let digest = endpoint.with_slot(&job, |slot| slot.request.component.clone())?;
    read_blob(&endpoint, &digest).await
}

/// The runtime component of the try's Python task: the only other blob a
/// worker is served.
async fn python_runtime(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
) -> Result<Vec<u8>, Refusal> {
    let job = endpoint.authenticate(&headers).await?;
    let digest = endpoint.with_slot(&job, |slot| slot.request.component.clone())?;
    let package = python_package(&endpoint, &digest).await?.ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            "the try's component is not a Python task".into(),
        )
    })?;
    let runtime = runtime_component(&endpoint, &package)?;
    read_blob(&endpoint, &runtime).await
}

async fn events(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    Json(messages): Json<Vec<WorkerMessage>>,
) -> Result<StatusCode, Refusal> {
    let job = endpoint.authenticate(&headers).await?;
    endpoint.with_slot(&job, |slot| {
        for message in messages {
            match message.into_event(&slot.request.key) {
                // A watcher that went away does not stop the try.
                Ok(event) => {
                    let _ = slot.events.send(event);
                }
                Err(outcome) => deliver(slot, outcome),
            }
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hands a try's first reported outcome to the executor (later ones of a
/// live try are acknowledged and dropped: the first one counts).
fn deliver(slot: &mut Slot, outcome: TryOutcome) {
    if let Some(sender) = slot.outcome.take() {
        slot.reported = Some(outcome.clone());
        // An executor that stopped waiting has ended the try already.
        let _ = sender.send(outcome);
    }
}

async fn outcome(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    Json(outcome): Json<TryOutcome>,
) -> Result<StatusCode, Refusal> {
    let (job, pod) = endpoint.identify(&headers).await?;
    let live = lock(&endpoint.live).contains_key(&job);
    if !live {
        // The try ended: its worker may repeat the report it made (the
        // acknowledgement was lost), nothing else.
        let ended = lock(&endpoint.ended);
        return match ended.get(&job) {
            Some(e) if e.pod == pod && e.outcome == outcome => Ok(StatusCode::NO_CONTENT),
            Some(e) if e.pod == pod => Err(Refusal(
                StatusCode::CONFLICT,
                format!(
                    "the try of pod {} has ended with another outcome than this report",
                    pod.name
                ),
            )),
            _ => Err(forbidden(format!("the try of pod {} has ended", pod.name))),
        };
    }
    endpoint.admit(&job, pod).await?;
    endpoint.with_slot(&job, |slot| deliver(slot, outcome))?;
    Ok(StatusCode::NO_CONTENT)
}
