//! An in-test fake Kubernetes API server (axum on 127.0.0.1) implementing what
//! the Kubernetes executor uses and nothing more: create (409 on conflict),
//! get, list with equality label selectors, server-side apply, replace with a
//! `resourceVersion` check (409 on a stale one; Leases), delete with
//! propagation through ownerReferences, pod logs, TokenReview, a quota
//! refusal on Job creation (injected), watch as streamed events from a
//! `resourceVersion` (with an injectable 410 Gone); a small Job
//! controller (Job → Pod, conditions, `activeDeadlineSeconds`, a replacement
//! pod for a disrupted one); and a kubelet that really runs the pod's command
//! (the real `sluice worker`) with the claim mapped to a local directory, the
//! projected token and ConfigMap volumes written, and its output as the pod
//! log. A pod deleted
//! while it runs (its node lost) is killed, and its Job fails.
//!
//! The scheduler's requests (those with the kubeconfig's token) are refused
//! (403) unless the rules it is started with (the tests give it those of
//! `deploy/kubernetes/rbac.yaml`) grant them, a server-side apply that
//! creates its object needing `create` too, as upstream.
//!
//! Also compiled into `sluice-bench` (its Kubernetes case), so it uses only
//! the `sluice` package's own dependencies.
//!
//! Every object ever written is also kept in an audit trail
//! (`GET /fake/audit`) so a test can read, through a plain HTTP client of its
//! own, what the executor stored even after it deleted it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::process::Command;

/// What the kubelet does with the next pod instead of running it.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The image cannot be pulled (the pod waits in ImagePullBackOff).
    ImagePull,
    /// The container is OOMKilled (exit 137) before reporting.
    OomKilled,
    /// The pod is evicted; the Job replaces it (pod failure policy Ignore).
    Evicted,
}

#[derive(Default)]
struct State {
    /// By (resource, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    audit: Vec<Value>,
    /// Token → (pod name, pod uid, namespace, service account, valid).
    tokens: HashMap<String, (String, String, String, String, bool)>,
    logs: HashMap<String, String>,
    faults: VecDeque<Fault>,
    counter: u64,
    /// Requests served, by method and resource (for the figures printed).
    requests: BTreeMap<String, u64>,
    /// Pod uid → its kill switch.
    kills: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    /// Job creations still to refuse with 403 "exceeded quota".
    quota_refusals: u32,
    /// Every Job created: its name and when (the host-side clock).
    job_creations: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    /// Pods whose command runs now, and the most there ever were at once.
    running: u32,
    most_running: u32,
    /// Every change, for watches: (resourceVersion, resource, namespace,
    /// event type, the object as changed).
    changes: Vec<(u64, String, String, &'static str, Value)>,
    /// Watch requests still to answer with 410 Gone.
    gone: u32,
    /// Resources whose watch got a 410 and that were not listed since.
    expired: BTreeSet<String>,
    /// Lists of the whole instance that followed a 410 (the relist).
    relists: u32,
}

struct Shared {
    state: Mutex<State>,
    dir: PathBuf,
    sluice: PathBuf,
    /// (API group, resource, verb) the scheduler's Role and ClusterRole
    /// grant (none: the scheduler's requests are not checked).
    granted: Option<BTreeSet<(String, String, String)>>,
    /// Woken at every change, for watches.
    changed: tokio::sync::Notify,
}

/// Gives `object` the next resourceVersion and records the change for watches.
fn record(
    shared: &Shared,
    state: &mut State,
    resource: &str,
    ns: &str,
    kind: &'static str,
    object: &mut Value,
) {
    state.counter += 1;
    object["metadata"]["resourceVersion"] = json!(state.counter.to_string());
    let change = (
        state.counter,
        resource.to_owned(),
        ns.to_owned(),
        kind,
        object.clone(),
    );
    state.changes.push(change);
    shared.changed.notify_waiters();
}

/// A watch: the changes after `from` to the objects of `resource` in `ns`
/// matching `selector`, one JSON event per line, until `seconds` pass.
fn watch(
    shared: Arc<Shared>,
    resource: String,
    ns: String,
    selector: String,
    from: u64,
    seconds: u64,
) -> Response {
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let events = futures_util::stream::unfold(from, move |mut seen| {
        let (shared, resource, ns, selector) = (
            shared.clone(),
            resource.clone(),
            ns.clone(),
            selector.clone(),
        );
        async move {
            loop {
                let notified = shared.changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let next = lock(&shared)
                    .changes
                    .iter()
                    .find(|(version, r, n, _, o)| {
                        *version > seen && *r == resource && *n == ns && matches(o, &selector)
                    })
                    .cloned();
                if let Some((version, _, _, kind, object)) = next {
                    seen = version;
                    let line = format!("{}\n", json!({"type": kind, "object": object}));
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), seen));
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(until) => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(events))
        .unwrap_or_else(|e| status(500, "InternalError", &e.to_string()))
}

/// The token the kubeconfig gives the scheduler (whose requests the Role
/// governs); a request without it is the test's own (an administrator's).
const SCHEDULER_TOKEN: &str = "scheduler-token";

/// The (API group, resource, verb)s a request needs, as RBAC sees it (a
/// server-side apply that creates its object needs `create` besides
/// `patch`, as on the Kubernetes API server).
fn rbac_request(shared: &Shared, method: &Method, uri: &Uri) -> Vec<(String, String, String)> {
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Vec::new(),
    };
    let (resource, named) = match rest {
        ["namespaces", _, resource] | [resource] => ((*resource).to_owned(), false),
        ["namespaces", _, resource, _] | [resource, _] => ((*resource).to_owned(), true),
        ["namespaces", _, resource, _, sub] => (format!("{resource}/{sub}"), true),
        _ => return Vec::new(),
    };
    let verb = match *method {
        Method::GET if named => "get",
        Method::GET if query(uri, "watch").as_deref() == Some("true") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => return Vec::new(),
    };
    let mut needed = vec![(group.to_owned(), resource.clone(), verb.to_owned())];
    if let ("patch", ["namespaces", ns, _, name]) = (verb, rest) {
        let key = (resource.clone(), (*ns).to_owned(), (*name).to_owned());
        if !lock(shared).objects.contains_key(&key) {
            needed.push((group.to_owned(), resource, "create".to_owned()));
        }
    }
    needed
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake cluster.
pub struct FakeCluster {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeCluster {
    /// Starts the server; claims and tokens live under `dir`; pods run
    /// `sluice`; the scheduler is refused what `granted` (the Role's rules,
    /// as (API group, resource, verb)) does not grant.
    pub fn start(
        dir: &Path,
        sluice: &Path,
        granted: Option<BTreeSet<(String, String, String)>>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            dir: dir.to_owned(),
            sluice: sluice.to_owned(),
            granted,
            changed: tokio::sync::Notify::new(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = {
            let shared = shared.clone();
            axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let shared = shared.clone();
                    async move {
                        let scheduler = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v == format!("Bearer {SCHEDULER_TOKEN}"));
                        let refused = shared.granted.as_ref().and_then(|granted| {
                            rbac_request(&shared, &method, &uri)
                                .into_iter()
                                .find(|asked| !granted.contains(asked))
                        });
                        if scheduler && let Some((group, resource, verb)) = refused {
                            return status(
                                403,
                                "Forbidden",
                                &format!("the Role in deploy/kubernetes/rbac.yaml does not grant: cannot {verb} resource \"{resource}\" in API group \"{group}\""),
                            );
                        }
                        handle(shared, method, uri, body).await
                    }
                },
            )
        };
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("fake API server");
        });
        Self {
            url,
            shared,
            _runtime: runtime,
        }
    }

    /// Writes a kubeconfig pointing at this server into `path`.
    pub fn kubeconfig(&self, path: &Path, namespace: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: {SCHEDULER_TOKEN}\n",
            self.url
        );
        std::fs::write(path, text).expect("kubeconfig");
    }

    /// Creates ConfigMap `name` in `ns` with `data`, as an administrator
    /// (not the scheduler) would.
    pub fn create_config_map(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let object = json!({"metadata": {"name": name}, "data": data});
        let response = create(&self.shared, "configmaps", ns, name, object);
        assert_eq!(response.status(), StatusCode::CREATED, "ConfigMap {name}");
    }

    /// The local directory a claim maps to.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        self.shared.dir.join("claims").join(claim)
    }

    /// Makes the kubelet apply `fault` to the next pod it is given.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared).faults.push_back(fault);
    }

    /// Makes the next `count` Job creations fail as a ResourceQuota would.
    pub fn refuse_jobs_for_quota(&self, count: u32) {
        lock(&self.shared).quota_refusals = count;
    }

    /// Makes the next `count` watch requests end at once with 410 Gone (as
    /// when their resourceVersion is older than the server keeps).
    pub fn expire_watches(&self, count: u32) {
        lock(&self.shared).gone = count;
    }

    /// How many times a 410 Gone was followed by a list of the resource.
    pub fn relists(&self) -> u32 {
        lock(&self.shared).relists
    }

    /// Watch requests still to be answered with 410 Gone.
    pub fn watches_to_expire(&self) -> u32 {
        lock(&self.shared).gone
    }

    /// The most pods whose command ran at the same time.
    pub fn most_running(&self) -> u32 {
        lock(&self.shared).most_running
    }

    /// Registers a token for a pod that is no try's (or marks it invalid).
    pub fn add_token(&self, token: &str, pod: &str, uid: &str, valid: bool) {
        lock(&self.shared).tokens.insert(
            token.to_owned(),
            (
                pod.to_owned(),
                uid.to_owned(),
                "pipelines".into(),
                "sluice-worker".into(),
                valid,
            ),
        );
    }

    /// The tokens issued to pods, by pod name.
    pub fn pod_tokens(&self) -> HashMap<String, String> {
        lock(&self.shared)
            .tokens
            .iter()
            .map(|(token, (pod, ..))| (pod.clone(), token.clone()))
            .collect()
    }

    /// Requests served so far, by method and resource.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        lock(&self.shared).requests.clone()
    }

    /// Every Job created, with when (microseconds; a Job's
    /// `creationTimestamp` has whole seconds, as upstream).
    pub fn job_creations(&self) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        lock(&self.shared).job_creations.clone()
    }

    /// Every pod log.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.shared).logs.values().cloned().collect()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "jobs" => "Job",
        "pods" => "Pod",
        "configmaps" => "ConfigMap",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "leases" => "Lease",
        _ => "Unknown",
    }
}

fn api_version_of(resource: &str) -> &'static str {
    match resource {
        "jobs" => "batch/v1",
        "leases" => "coordination.k8s.io/v1",
        _ => "v1",
    }
}

fn matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((key, value)) = term.split_once('=') else {
            return false;
        };
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn handle(shared: Arc<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    if !path.starts_with("/fake/") {
        let resource = path
            .rsplit('/')
            .find(|p| {
                matches!(
                    *p,
                    "jobs"
                        | "pods"
                        | "configmaps"
                        | "persistentvolumeclaims"
                        | "tokenreviews"
                        | "leases"
                        | "log"
                )
            })
            .unwrap_or("other");
        let verb = if query(&uri, "watch").as_deref() == Some("true") {
            "WATCH".to_owned()
        } else {
            method.to_string()
        };
        *lock(&shared)
            .requests
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
    }
    if path == "/fake/audit" {
        return axum::Json(Value::Array(lock(&shared).audit.clone())).into_response();
    }
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" && method == Method::POST {
        return token_review(&shared, &body);
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "batch", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "coordination.k8s.io", "v1", "namespaces", rest @ ..] => rest,
        _ => return status(404, "NotFound", &format!("the fake does not serve {path}")),
    };
    match (rest, method.clone()) {
        ([ns, resource], Method::GET) if query(&uri, "watch").as_deref() == Some("true") => {
            let selector = query(&uri, "labelSelector").unwrap_or_default();
            let from = query(&uri, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let seconds = query(&uri, "timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            {
                let mut state = lock(&shared);
                if state.gone > 0 {
                    state.gone -= 1;
                    state.expired.insert((*resource).to_owned());
                    let expired = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                        "message": format!("too old resource version: {from} ({})", state.counter)}});
                    return format!("{expired}\n").into_response();
                }
            }
            watch(
                shared.clone(),
                (*resource).to_owned(),
                (*ns).to_owned(),
                selector,
                from,
                seconds,
            )
        }
        ([ns, resource], Method::GET) => {
            let selector = query(&uri, "labelSelector").unwrap_or_default();
            let mut state = lock(&shared);
            // A list of the whole instance (not of one try's pods) after a 410.
            if !selector.contains("sluice.dev/try=") && state.expired.remove(*resource) {
                state.relists += 1;
            }
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((r, n, _), o)| r == resource && n == ns && matches(o, &selector))
                .map(|(_, o)| o.clone())
                .collect();
            axum::Json(json!({"apiVersion": api_version_of(resource), "kind": format!("{}List", kind_of(resource)),
                "metadata": {"resourceVersion": state.counter.to_string()}, "items": items}))
            .into_response()
        }
        ([ns, resource], Method::POST) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "not JSON");
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            create(&shared, resource, ns, &name, object)
        }
        ([ns, resource, name], Method::GET) => {
            match lock(&shared)
                .objects
                .get(&((*resource).into(), (*ns).into(), (*name).into()))
            {
                Some(object) => axum::Json(object.clone()).into_response(),
                None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
            }
        }
        ([ns, resource, name], Method::PATCH) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "not JSON");
            };
            let key = ((*resource).to_owned(), (*ns).to_owned(), (*name).to_owned());
            let existing = lock(&shared).objects.get(&key).cloned();
            match existing {
                None => create(&shared, resource, ns, name, object),
                Some(mut current) => {
                    // Server-side apply of Sluice's own fields: replace them.
                    for field in ["spec", "data"] {
                        if !object[field].is_null() {
                            current[field] = object[field].clone();
                        }
                    }
                    for field in ["labels", "annotations", "ownerReferences"] {
                        if !object["metadata"][field].is_null() {
                            current["metadata"][field] = object["metadata"][field].clone();
                        }
                    }
                    let mut state = lock(&shared);
                    record(&shared, &mut state, resource, ns, "MODIFIED", &mut current);
                    state.audit.push(current.clone());
                    state.objects.insert(key, current.clone());
                    axum::Json(current).into_response()
                }
            }
        }
        ([ns, resource, name], Method::PUT) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "not JSON");
            };
            let key = ((*resource).to_owned(), (*ns).to_owned(), (*name).to_owned());
            let mut state = lock(&shared);
            let Some(current) = state.objects.get(&key).cloned() else {
                return status(404, "NotFound", &format!("{resource} \"{name}\" not found"));
            };
            if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            object["apiVersion"] = current["apiVersion"].clone();
            object["kind"] = current["kind"].clone();
            object["metadata"]["uid"] = current["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] =
                current["metadata"]["creationTimestamp"].clone();
            record(&shared, &mut state, resource, ns, "MODIFIED", &mut object);
            state.audit.push(object.clone());
            state.objects.insert(key, object.clone());
            axum::Json(object).into_response()
        }
        ([ns, resource, name], Method::DELETE) => {
            let key = ((*resource).to_owned(), (*ns).to_owned(), (*name).to_owned());
            let removed = delete_cascading(&shared, &key);
            match removed {
                Some(object) => axum::Json(object).into_response(),
                None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
            }
        }
        ([_, "pods", name, "log"], Method::GET) => match lock(&shared).logs.get(*name) {
            Some(log) => log.clone().into_response(),
            None => status(404, "NotFound", &format!("pod \"{name}\" has no log")),
        },
        _ => status(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
}

fn uid(state: &mut State) -> String {
    state.counter += 1;
    format!("uid-{:08}", state.counter)
}

fn create(
    shared: &Arc<Shared>,
    resource: &str,
    ns: &str,
    name: &str,
    mut object: Value,
) -> Response {
    let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
    let mut state = lock(shared);
    if resource == "jobs" && state.quota_refusals > 0 {
        state.quota_refusals -= 1;
        return status(
            403,
            "Forbidden",
            &format!(
                "jobs \"{name}\" is forbidden: exceeded quota: compute, requested: count/pods=1, used: count/pods=4, limited: count/pods=4"
            ),
        );
    }
    if state.objects.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            &format!("{resource} \"{name}\" already exists"),
        );
    }
    let uid = uid(&mut state);
    object["apiVersion"] = json!(api_version_of(resource));
    object["kind"] = json!(kind_of(resource));
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["namespace"] = json!(ns);
    object["metadata"]["creationTimestamp"] =
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    record(shared, &mut state, resource, ns, "ADDED", &mut object);
    state.audit.push(object.clone());
    state.objects.insert(key, object.clone());
    if resource == "jobs" {
        state
            .job_creations
            .push((name.to_owned(), chrono::Utc::now()));
    }
    drop(state);
    if resource == "jobs" {
        start_pod(shared.clone(), ns.to_owned(), object.clone());
    }
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

fn delete_cascading(shared: &Arc<Shared>, key: &(String, String, String)) -> Option<Value> {
    let mut state = lock(shared);
    let mut removed = state.objects.remove(key)?;
    record(shared, &mut state, &key.0, &key.1, "DELETED", &mut removed);
    let mut doomed = vec![
        removed["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    while let Some(owner) = doomed.pop() {
        if let Some(kill) = state.kills.remove(&owner) {
            let _ = kill.send(());
        }
        let owned: Vec<_> = state
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in owned {
            if let Some(mut o) = state.objects.remove(&k) {
                record(shared, &mut state, &k.0, &k.1, "DELETED", &mut o);
                doomed.push(o["metadata"]["uid"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Some(removed)
}

fn token_review(shared: &Arc<Shared>, body: &Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "not JSON");
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let audiences = review["spec"]["audiences"].clone();
    let found = lock(shared).tokens.get(token).cloned();
    let status_body = match found {
        Some((pod, uid, ns, sa, true)) if audiences == json!(["sluice"]) => json!({
            "authenticated": true,
            "audiences": ["sluice"],
            "user": {"username": format!("system:serviceaccount:{ns}:{sa}"),
                "extra": {"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": [uid]}}
        }),
        Some(..) => json!({"authenticated": false, "error": "token has expired"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    axum::Json(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "metadata": {}, "spec": review["spec"], "status": status_body}),
    )
    .into_response()
}

/// Job controller: makes the Job's pod and hands it to the kubelet.
fn start_pod(shared: Arc<Shared>, ns: String, job: Value) {
    let job_name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let job_uid = job["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let template = job["spec"]["template"].clone();
    let mut state = lock(&shared);
    let pod_uid = uid(&mut state);
    let pod_name = format!("{job_name}-{}", &pod_uid[pod_uid.len() - 5..]);
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": ns, "uid": pod_uid,
            "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"],
            "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid, "controller": true}]},
        "spec": template["spec"], "status": {"phase": "Pending"}});
    pod["metadata"]["labels"]["job-name"] = json!(job_name);
    record(&shared, &mut state, "pods", &ns, "ADDED", &mut pod);
    state.audit.push(pod.clone());
    state
        .objects
        .insert(("pods".into(), ns.clone(), pod_name.clone()), pod.clone());
    set_job_status(&shared, &mut state, &ns, &job_name, json!({"active": 1}));
    let fault = state.faults.pop_front();
    drop(state);
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .unwrap_or(3600);
    tokio::spawn(kubelet(
        shared,
        ns,
        job_name,
        pod,
        fault,
        Duration::from_secs(deadline),
    ));
}

fn set_status(
    shared: &Shared,
    state: &mut State,
    resource: &str,
    ns: &str,
    name: &str,
    status: Value,
) {
    let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
    if let Some(mut object) = state.objects.get(&key).cloned() {
        object["status"] = status;
        record(shared, state, resource, ns, "MODIFIED", &mut object);
        state.objects.insert(key, object);
    }
}

fn set_job_status(shared: &Shared, state: &mut State, ns: &str, job: &str, status: Value) {
    set_status(shared, state, "jobs", ns, job, status);
}

fn set_pod_status(shared: &Shared, ns: &str, pod: &str, status: Value) {
    let mut state = lock(shared);
    set_status(shared, &mut state, "pods", ns, pod, status);
}

fn job_failed(shared: &Shared, ns: &str, job: &str, reason: &str) {
    let mut state = lock(shared);
    set_job_status(
        shared,
        &mut state,
        ns,
        job,
        json!({"active": 0, "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": reason}]}),
    );
}

fn container_status(state: Value) -> Value {
    json!([{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": state}])
}

/// The kubelet: runs the pod's command with its volumes mapped locally.
async fn kubelet(
    shared: Arc<Shared>,
    ns: String,
    job: String,
    pod: Value,
    fault: Option<Fault>,
    deadline: Duration,
) {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match fault {
        Some(Fault::ImagePull) => {
            set_pod_status(
                &shared,
                &ns,
                &name,
                json!({"phase": "Pending", "containerStatuses": container_status(
                json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image: not found"}}))}),
            );
            return;
        }
        Some(Fault::OomKilled) => {
            set_pod_status(
                &shared,
                &ns,
                &name,
                json!({"phase": "Failed", "containerStatuses": container_status(
                json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}))}),
            );
            job_failed(&shared, &ns, &job, "BackoffLimitExceeded");
            return;
        }
        Some(Fault::Evicted) => {
            set_pod_status(
                &shared,
                &ns,
                &name,
                json!({"phase": "Failed", "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]}),
            );
            // The pod failure policy ignores a disruption: the Job makes a new pod.
            let object = lock(&shared)
                .objects
                .get(&("jobs".into(), ns.clone(), job.clone()))
                .cloned();
            if let Some(object) = object {
                start_pod(shared.clone(), ns, object);
            }
            return;
        }
        None => {}
    }
    // Volumes: the claim to a local directory, the projected token to a file.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let container = containers.first().cloned().unwrap_or(Value::Null);
    for mount in container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .cloned()
            .unwrap_or(Value::Null);
        let local = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            shared.dir.join("claims").join(claim)
        } else if volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "sluice" {
            let dir = shared.dir.join("tokens").join(&uid);
            std::fs::create_dir_all(&dir).expect("token dir");
            let token = {
                let mut state = lock(&shared);
                state.counter += 1;
                format!("token-{}-{}", state.counter, std::process::id())
            };
            std::fs::write(dir.join("token"), &token).expect("token");
            let sa = pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            lock(&shared)
                .tokens
                .insert(token, (name.clone(), uid.clone(), ns.clone(), sa, true));
            dir
        } else if let Some(config_map) = volume["configMap"]["name"].as_str() {
            // The ConfigMap's keys (or its `items`) as files; a missing one
            // holds the pod in ContainerCreating, as a kubelet does.
            let object = lock(&shared)
                .objects
                .get(&("configmaps".into(), ns.clone(), config_map.to_owned()))
                .cloned();
            let Some(object) = object else {
                set_pod_status(
                    &shared,
                    &ns,
                    &name,
                    json!({"phase": "Pending", "containerStatuses": container_status(
                    json!({"waiting": {"reason": "ContainerCreating"}}))}),
                );
                return;
            };
            let dir = shared
                .dir
                .join("configmaps")
                .join(&uid)
                .join(volume["name"].as_str().unwrap_or_default());
            std::fs::create_dir_all(&dir).expect("configmap dir");
            let items: Vec<(String, String)> = match volume["configMap"]["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap_or_default().to_owned();
                        (key, i["path"].as_str().unwrap_or_default().to_owned())
                    })
                    .collect(),
                None => object["data"]
                    .as_object()
                    .map(|d| d.keys().map(|k| (k.clone(), k.clone())).collect())
                    .unwrap_or_default(),
            };
            for (key, path) in items {
                let value = object["data"][&key].as_str().unwrap_or_default();
                std::fs::write(dir.join(path), value).expect("configmap file");
            }
            dir
        } else {
            continue;
        };
        std::fs::create_dir_all(&local).expect("volume dir");
        mounts.push((
            mount["mountPath"].as_str().unwrap_or_default().to_owned(),
            local,
        ));
    }
    let map = |arg: &str| {
        for (path, local) in &mounts {
            if let Some(rest) = arg.strip_prefix(path.as_str()) {
                return format!("{}{rest}", local.display());
            }
        }
        arg.to_owned()
    };
    let args: Vec<String> = container["args"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str().map(map))
        .collect();
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    set_pod_status(
        &shared,
        &ns,
        &name,
        json!({"phase": "Running", "containerStatuses": container_status(json!({"running": {}}))}),
    );
    let (kill, killed) = tokio::sync::oneshot::channel();
    {
        let mut state = lock(&shared);
        state.kills.insert(uid.clone(), kill);
        state.running += 1;
        state.most_running = state.most_running.max(state.running);
    }
    let child = Command::new(&shared.sluice)
        .args(&args)
        .envs(env)
        .env_remove("SLUICE_HOME")
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let ended = tokio::select! {
        out = child => match out {
            Ok(out) => {
                let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
                log.push_str(&String::from_utf8_lossy(&out.stderr));
                lock(&shared).logs.insert(name.clone(), log);
                let code = out.status.code().unwrap_or(128);
                Some((if code == 0 { "Succeeded" } else { "Failed" }, code, if code == 0 { "Completed" } else { "Error" }))
            }
            Err(e) => {
                lock(&shared).logs.insert(name.clone(), format!("cannot start: {e}"));
                Some(("Failed", 128, "StartError"))
            }
        },
        // Deleted while running (its node lost, or `kubectl delete pod`): the
        // Job counts the pod as failed (no disruption condition: not ignored).
        _ = killed => {
            job_failed(&shared, &ns, &job, "BackoffLimitExceeded");
            None
        }
        () = tokio::time::sleep(deadline) => {
            job_failed(&shared, &ns, &job, "DeadlineExceeded");
            None
        }
    };
    lock(&shared).running -= 1;
    let Some((phase, exit, reason)) = ended else {
        return;
    };
    lock(&shared).kills.remove(&uid);
    set_pod_status(
        &shared,
        &ns,
        &name,
        json!({"phase": phase, "containerStatuses": container_status(
        json!({"terminated": {"reason": reason, "exitCode": exit}}))}),
    );
    if phase == "Succeeded" {
        let mut state = lock(&shared);
        set_job_status(
            &shared,
            &mut state,
            &ns,
            &job,
            json!({"active": 0, "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}),
        );
    } else {
        job_failed(&shared, &ns, &job, "BackoffLimitExceeded");
    }
}
