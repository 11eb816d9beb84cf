//! The Kubernetes executor: each try runs as a Job whose pod runs `sluice
//! worker`; each run has an anchor and a volume claim (its staging volume).
//!
//! - [`objects`]: the objects, built from names and settings (pure).
//! - [`endpoint`]: the host endpoint workers fetch their try from and report
//!   to, authenticated by projected service-account tokens.
//! - [`tls`]: TLS on that endpoint (the operator's certificate; the workers'
//!   CA from a ConfigMap).
//! - [`status`]: how a try ended when its worker could not report.
//! - [`pod_worker`]: the worker's side (inside the pod).
//! - [`lease`]: the single-scheduler lease.
//! - [`volumes`]: the sweep of the runs' volumes (TTL, orphans).
//!
//! The worker's own report wins; the executor watches the instance's Jobs
//! and pods ([`watcher`]) to learn of a try whose worker could not report. Jobs are deleted when the
//! run ends ([`Executor::release`]), after every outcome and log line has been
//! stored, or at once when a try failed for good (image pull, host timeout).
//!
//! Restart: the scheduler records a try before its Job is created. A process
//! starting with this executor takes the instance's lease, deletes the Jobs no
//! live try claims, and adopts the Jobs of tries a stopped host left running
//! ([`Executor::adopt`]): status following resumes and the worker's pending
//! report (repeated until acknowledged) arrives; a try whose Job is gone fails
//! as a retryable "pod lost".

pub mod endpoint;
pub mod lease;
pub mod objects;
pub mod pod_worker;
pub mod settings;
pub mod status;
pub mod tls;
pub mod volumes;
pub mod watcher;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{OnceCell, Semaphore, oneshot};

use super::{
    Executor, ExecutorError, HostFuture, LocalExecutor, TryFuture, TryOutcome, TryRequest,
};
use crate::events::RunEvent;
use crate::home::Home;
use crate::state::TaskState;
use crate::store::Store;
use endpoint::Endpoint;
use objects::Anchor;
pub use settings::{AccessMode, EndpointSecurity, ImageRef, KubeSettings};
use status::{MemoryBudget, Verdict};

/// How often a try's status is looked at even if the watch said nothing
/// changed (a safety net; the watch wakes a try at every change).
const RECHECK: Duration = Duration::from_secs(30);

/// How long after its Job ended a worker's report may still arrive.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// How long past its Job's deadline the host waits before it gives up on a try.
const HOST_GRACE: Duration = Duration::from_secs(30);

/// The first wait after a quota refusal; doubled up to [`QUOTA_BACKOFF_MAX`].
const QUOTA_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two attempts to create a Job the quota refused.
const QUOTA_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The field manager of Sluice's server-side applies.
const FIELD_MANAGER: &str = "sluice";

/// Runs each try as a Kubernetes Job.
pub struct KubernetesExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<LocalExecutor>,
    home: Home,
    store: Arc<Store>,
    settings: KubeSettings,
    started: OnceCell<Started>,
    /// The runs whose anchor and claim this process applied; held across
    /// the apply, so tries of a run starting together apply them once (and
    /// runs starting together apply theirs one after the other).
    anchors: tokio::sync::Mutex<HashMap<String, Anchor>>,
    /// One permit per pod in flight (`max_pods`).
    pods: Arc<Semaphore>,
}

/// The client, the endpoint once it listens, and the watch on Jobs and pods.
struct Started {
    client: kube::Client,
    endpoint: Arc<Endpoint>,
    url: url::Url,
    watcher: watcher::Watcher,
}

fn failed(error: String) -> TryOutcome {
    TryOutcome::Failed {
        error,
        retryable: true,
    }
}

impl KubernetesExecutor {
    /// An executor with `settings`; `local` resolves connections and checks
    /// components on the host, `home` holds the components workers fetch,
    /// `store` says which tries are live. Nothing is contacted before
    /// [`Executor::start`] or the first try.
    pub fn new(
        local: Arc<LocalExecutor>,
        home: Home,
        store: Arc<Store>,
        settings: KubeSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                home,
                store,
                pods: Arc::new(Semaphore::new(settings.max_pods.max(1))),
                settings,
                started: OnceCell::new(),
                anchors: tokio::sync::Mutex::default(),
            }),
        }
    }
}

impl Inner {
    /// Connects to the cluster (in-cluster configuration, else the
    /// kubeconfig), takes the instance's lease, starts the endpoint and
    /// deletes the Jobs no live try claims, once.
    async fn start(&self) -> Result<&Started, String> {
        self.started
            .get_or_try_init(|| async {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
                let lease = lease::Held::acquire(
                    client.clone(),
                    &self.settings.namespace,
                    &objects::lease_name(&self.settings),
                )
                .await
                .map_err(|e| e.to_string())?;
                lease.keep();
                let listen = self.settings.endpoint_listen;
                // Before anything listens: a certificate that does not load
                // stops the scheduler here, naming the file.
                let tls = match &self.settings.endpoint_security {
                    EndpointSecurity::Tls { cert, key, .. } => Some(
                        tls::server_config(cert, key)
                            .map_err(|e| format!("the worker endpoint's TLS: {e}"))?,
                    ),
                    EndpointSecurity::PlainHttp => None,
                };
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("the worker endpoint cannot listen on {listen}: {e}"))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| format!("the worker endpoint on {listen}: {e}"))?;
                let url = self.settings.worker_url(bound)?;
                let endpoint = Arc::new(Endpoint::new(
                    client.clone(),
                    self.settings.namespace.clone(),
                    self.home.clone(),
                    self.local.clone(),
                ));
                let router = endpoint.clone().router();
                match tls {
                    Some(config) => {
                        let listener = tls::TlsListener::new(listener, config)
                            .map_err(|e| format!("the worker endpoint on {listen}: {e}"))?;
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(listener, router).await {
                                tracing::error!("the worker endpoint stopped: {e}");
                            }
                        });
                    }
                    None => {
                        tracing::warn!(
                            "the worker endpoint on {bound} serves plain HTTP (--endpoint-plain-http): tokens and connection secrets cross the network in clear"
                        );
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(listener, router).await {
                                tracing::error!("the worker endpoint stopped: {e}");
                            }
                        });
                    }
                }
                self.delete_strays(&client).await;
                let watcher = watcher::Watcher::start(
                    &client,
                    &self.settings.namespace,
                    &objects::instance_selector(&self.settings),
                );
                Ok(Started {
                    client,
                    endpoint,
                    url,
                    watcher,
                })
            })
            .await
    }

    /// Deletes the instance's Jobs that no try the store has running claims
    /// (a stopped host's leftovers whose outcome is stored, or Jobs of tries
    /// that were never recorded).
    async fn delete_strays(&self, client: &kube::Client) {
        let namespace = &self.settings.namespace;
        let jobs = Api::<Job>::namespaced(client.clone(), namespace);
        let listed = jobs
            .list(&ListParams::default().labels(&objects::instance_selector(&self.settings)))
            .await;
        let list = match listed {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("cannot list the Jobs of this instance to clean up: {e}");
                return;
            }
        };
        for job in list.items {
            let Some(name) = job.metadata.name.clone() else {
                continue;
            };
            if !self.claimed(&job) {
                tracing::info!("deleting Job {namespace}/{name}: no live try claims it");
                self.delete_job_with(client, &name).await;
            }
        }
    }

    /// Whether the try a Job was made for is running in the store.
    fn claimed(&self, job: &Job) -> bool {
        let annotations = job.metadata.annotations.clone().unwrap_or_default();
        let (Some(run_id), Some(task_id), Some(try_number)) = (
            annotations.get(objects::RUN_ID_ANNOTATION),
            annotations.get(objects::TASK_ID_ANNOTATION),
            annotations
                .get(objects::TRY_NUMBER_ANNOTATION)
                .and_then(|n| n.parse::<u32>().ok()),
        ) else {
            return false;
        };
        match self.store.tasks(run_id) {
            Ok(tasks) => tasks.iter().any(|t| {
                t.task_id == *task_id && t.try_number == try_number && t.state == TaskState::Running
            }),
            Err(e) => {
                // Kept: a store that cannot be read is no proof it is a stray.
                tracing::warn!("cannot read the tries of run {run_id} (Job kept): {e}");
                true
            }
        }
    }

    /// Applies the run's anchor and volume claim (once per run and process).
    async fn run_objects(
        &self,
        client: &kube::Client,
        request: &TryRequest,
    ) -> Result<Anchor, String> {
        let run_id = &request.key.run_id;
        let mut anchors = self.anchors.lock().await;
        if let Some(anchor) = anchors.get(run_id) {
            return Ok(anchor.clone());
        }
        let namespace = &self.settings.namespace;
        let name = objects::run_object_name(run_id);
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let anchor_object = objects::anchor(&self.settings, &request.dag_id, run_id);
        let applied = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .patch(&name, &apply, &Patch::Apply(&anchor_object))
            .await
            .map_err(|e| {
                format!("cannot apply the run's anchor ConfigMap {namespace}/{name}: {e}")
            })?;
        let uid = applied
            .metadata
            .uid
            .ok_or_else(|| format!("the API server gave ConfigMap {namespace}/{name} no uid"))?;
        let anchor = Anchor {
            name: name.clone(),
            uid,
        };
        let claim = objects::volume_claim(&self.settings, &request.dag_id, run_id, &anchor);
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
            .patch(&name, &apply, &Patch::Apply(&claim))
            .await
            .map_err(|e| format!("cannot apply the run's volume claim {namespace}/{name}: {e}"))?;
        anchors.insert(run_id.clone(), anchor.clone());
        Ok(anchor)
    }

    async fn run_try(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryOutcome {
        let started = match self.start().await {
            Ok(started) => started,
            Err(e) => return failed(e),
        };
        let anchor = match self.run_objects(&started.client, &request).await {
            Ok(anchor) => anchor,
            Err(e) => return failed(e),
        };
        let job = objects::job(&request, &self.settings, &anchor, &started.url);
        let name = objects::job_name(
            &request.key.run_id,
            &request.key.task_id,
            request.key.try_number,
        );
        let Ok(permit) = self.pods.clone().acquire_owned().await else {
            return failed("the executor's pod limit was closed".into());
        };
        // The try is recorded (the scheduler did, before calling us) and
        // its slot opened before the Job exists, so its worker finds both.
        let report = started
            .endpoint
            .open(&name, request.clone(), events.clone());
        let created = self
            .create_job(started, &name, &job, &request, &events)
            .await;
        let outcome = match created {
            Ok(()) => self.watch(started, &name, &request, report).await,
            Err(outcome) => outcome,
        };
        started.endpoint.close(&name);
        self.release_when_stopped(started, &name, Some(permit));
        outcome
    }

    /// Gives the pod slot back once the try's pod has stopped (its worker
    /// exits once its report is acknowledged), so `max_pods` counts pods,
    /// not tries; at the latest after [`REPORT_GRACE`].
    fn release_when_stopped(
        &self,
        started: &Started,
        name: &str,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let Some(permit) = permit else {
            return;
        };
        let jobs = Api::<Job>::namespaced(started.client.clone(), &self.settings.namespace);
        let name = name.to_owned();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + REPORT_GRACE;
            while tokio::time::Instant::now() < until {
                let stopped = match jobs.get_opt(&name).await {
                    Ok(None) => true,
                    Ok(Some(job)) => job.status.is_some_and(|s| {
                        s.active.unwrap_or_default() == 0
                            && (s.succeeded.unwrap_or_default() > 0
                                || s.failed.unwrap_or_default() > 0)
                    }),
                    Err(e) => {
                        tracing::warn!("reading whether Job {name}'s pod stopped: {e}");
                        false
                    }
                };
                if stopped {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            drop(permit);
        });
    }

    /// Creates the try's Job; a quota refusal (403 "exceeded quota") is
    /// waited out with backoff, within the try's deadline; a Job of this try
    /// that exists already (made by a host before this one) is adopted.
    async fn create_job(
        &self,
        started: &Started,
        name: &str,
        job: &Job,
        request: &TryRequest,
        events: &UnboundedSender<RunEvent>,
    ) -> Result<(), TryOutcome> {
        let namespace = &self.settings.namespace;
        let jobs = Api::<Job>::namespaced(started.client.clone(), namespace);
        let give_up =
            tokio::time::Instant::now() + objects::active_deadline(request, &self.settings);
        let mut delay = QUOTA_BACKOFF;
        loop {
            match jobs.create(&PostParams::default(), job).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    tracing::info!("adopting the existing Job {name} of {:?}", request.key);
                    return Ok(());
                }
                Err(kube::Error::Api(status))
                    if status.code == 403 && status.message.contains("exceeded quota") =>
                {
                    if tokio::time::Instant::now() + delay >= give_up {
                        return Err(failed(format!(
                            "the namespace's quota kept refusing the try's Job {namespace}/{name} until its deadline: {}",
                            status.message
                        )));
                    }
                    // Said in the try's log, so a user sees why it waits.
                    let _ = events.send(RunEvent::Log {
                        key: request.key.clone(),
                        ts: chrono::Utc::now(),
                        level: "warn",
                        message: format!(
                            "waiting {} for quota: the API server refused the try's Job {namespace}/{name}: {}",
                            humantime::format_duration(delay),
                            status.message
                        ),
                    });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(QUOTA_BACKOFF_MAX);
                }
                Err(e) => {
                    return Err(failed(format!(
                        "cannot create the try's Job {namespace}/{name}: {e}"
                    )));
                }
            }
        }
    }

    /// Follows the Job of a try a stopped host started: a Job that is gone
    /// means the pod was lost (retryable).
    async fn adopt_try(
        &self,
        request: TryRequest,
        events: UnboundedSender<RunEvent>,
    ) -> TryOutcome {
        let started = match self.start().await {
            Ok(started) => started,
            Err(e) => return failed(e),
        };
        let namespace = &self.settings.namespace;
        let name = objects::job_name(
            &request.key.run_id,
            &request.key.task_id,
            request.key.try_number,
        );
        let jobs = Api::<Job>::namespaced(started.client.clone(), namespace);
        match jobs.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return failed(format!(
                    "pod lost: the try's Job {namespace}/{name} is gone (deleted, or lost with its node, while no host followed it); an infrastructure failure"
                ));
            }
            Err(e) => {
                return failed(format!(
                    "cannot read the try's Job {namespace}/{name} to adopt it: {e}"
                ));
            }
        }
        // Its pod exists already: it counts against `max_pods` if a slot is
        // free, and is followed at once either way.
        let permit = self.pods.clone().try_acquire_owned().ok();
        tracing::info!("adopted Job {namespace}/{name} of {:?}", request.key);
        let report = started.endpoint.open(&name, request.clone(), events);
        let outcome = self.watch(started, &name, &request, report).await;
        started.endpoint.close(&name);
        self.release_when_stopped(started, &name, permit);
        outcome
    }

    /// Waits for the worker's report, reading the Job's and pods' status
    /// meanwhile for a try whose worker cannot report.
    async fn watch(
        &self,
        started: &Started,
        name: &str,
        request: &TryRequest,
        mut report: oneshot::Receiver<TryOutcome>,
    ) -> TryOutcome {
        let deadline = tokio::time::Instant::now()
            + objects::active_deadline(request, &self.settings)
            + HOST_GRACE;
        let budget = MemoryBudget {
            memory: request.policy.memory,
            duckdb_memory: request.policy.duckdb_memory,
            headroom: self.settings.memory_headroom,
        };
        let mut ended: Option<(tokio::time::Instant, TryOutcome)> = None;
        let mut changes = started.watcher.subscribe();
        let mut recheck = tokio::time::interval(RECHECK);
        loop {
            let grace_over = ended.as_ref().map(|(since, _)| *since + REPORT_GRACE);
            tokio::select! {
                reported = &mut report => {
                    return reported.unwrap_or_else(|_| failed("the worker endpoint dropped the try".into()));
                }
                () = sleep_until_some(grace_over) => {
                    if let Some((_, outcome)) = ended {
                        return outcome;
                    }
                }
                changed = changes.changed(), if ended.is_none() => {
                    if changed.is_err() {
                        return failed("the watch on Jobs and pods stopped".into());
                    }
                    if let Some(outcome) = self.look(started, name, budget, &mut ended).await {
                        return outcome;
                    }
                }
                _ = recheck.tick(), if ended.is_none() => {
                    if let Some(outcome) = self.look(started, name, budget, &mut ended).await {
                        return outcome;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.delete_job(started, name).await;
                    return failed(format!(
                        "timed out after {}: the try's Job {name} did not report within its deadline and was deleted",
                        humantime::format_duration(request.policy.timeout)
                    ));
                }
            }
        }
    }

    /// Classifies the try from the watch's cache; a verdict other than
    /// "running" is confirmed with direct reads (the cache may lag). Returns
    /// the outcome of a try that failed for good (its Job deleted); records
    /// in `ended` one whose worker may still report.
    async fn look(
        &self,
        started: &Started,
        name: &str,
        budget: MemoryBudget,
        ended: &mut Option<(tokio::time::Instant, TryOutcome)>,
    ) -> Option<TryOutcome> {
        let cached = status::classify(
            name,
            started.watcher.job(name).as_ref(),
            &started.watcher.pods_of(name),
            &self.settings.image.to_string(),
            budget,
        );
        if cached == Verdict::Running {
            return None;
        }
        match self.observe(started, name, budget).await {
            Ok(Verdict::Running) => None,
            Ok(Verdict::Failed(outcome)) => {
                self.delete_job(started, name).await;
                Some(outcome)
            }
            Ok(Verdict::Ended(outcome)) => {
                *ended = Some((tokio::time::Instant::now(), outcome));
                None
            }
            Err(e) => {
                tracing::warn!("reading the status of Job {name}: {e}");
                None
            }
        }
    }

    async fn observe(
        &self,
        started: &Started,
        name: &str,
        budget: MemoryBudget,
    ) -> Result<Verdict, kube::Error> {
        let namespace = &self.settings.namespace;
        let job = Api::<Job>::namespaced(started.client.clone(), namespace)
            .get_opt(name)
            .await?;
        let mut pods = Api::<Pod>::namespaced(started.client.clone(), namespace)
            .list(&ListParams::default().labels(&format!("{}={name}", objects::TRY_LABEL)))
            .await?
            .items;
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        Ok(status::classify(
            name,
            job.as_ref(),
            &pods,
            &self.settings.image.to_string(),
            budget,
        ))
    }

    async fn delete_job(&self, started: &Started, name: &str) {
        self.delete_job_with(&started.client, name).await;
    }

    async fn delete_job_with(&self, client: &kube::Client, name: &str) {
        let jobs = Api::<Job>::namespaced(client.clone(), &self.settings.namespace);
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => tracing::warn!("cannot delete Job {name}: {e}"),
        }
    }

    /// Deletes a succeeded run's anchor, and with it (ownerReferences) its
    /// volume claim.
    async fn delete_run_objects(&self, run_id: &str) {
        let Some(started) = self.started.get() else {
            return;
        };
        let name = objects::run_object_name(run_id);
        let anchors =
            Api::<ConfigMap>::namespaced(started.client.clone(), &self.settings.namespace);
        match anchors.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => tracing::warn!(
                "cannot delete the anchor {name} of run {run_id} (and its volume): {e}"
            ),
        }
    }

    /// Deletes the Jobs of a run that has ended.
    async fn delete_run_jobs(&self, run_id: &str) {
        let Some(started) = self.started.get() else {
            return;
        };
        let jobs = Api::<Job>::namespaced(started.client.clone(), &self.settings.namespace);
        let selector = objects::run_selector(&self.settings, run_id);
        match jobs.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => {
                for job in list.items {
                    if let Some(name) = job.metadata.name {
                        self.delete_job(started, &name).await;
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the Jobs of run {run_id}: {e}"),
        }
        self.anchors.lock().await.remove(run_id);
    }
}

impl Executor for KubernetesExecutor {
    fn sandbox_label(&self) -> String {
        format!("kubernetes:{}", self.inner.settings.namespace)
    }

    fn prepare(&self, components: &[(String, String)]) -> Result<(), ExecutorError> {
        self.inner.local.prepare(components)
    }

    fn run(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run_try(request, events).await })
    }

    fn release(&self, run_id: &str) {
        let inner = self.inner.clone();
        let run_id = run_id.to_owned();
        block_on_cleanup(async move { inner.delete_run_jobs(&run_id).await });
    }

    fn discard_staging(&self, run_id: &str) {
        let inner = self.inner.clone();
        let run_id = run_id.to_owned();
        block_on_cleanup(async move { inner.delete_run_objects(&run_id).await });
    }

    fn start(&self) -> HostFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.start().await.map(drop) })
    }

    fn adopts(&self) -> bool {
        true
    }

    fn adopt(&self, request: TryRequest, events: UnboundedSender<RunEvent>) -> TryFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.adopt_try(request, events).await })
    }

    fn sweep_volumes(
        &self,
        ttl: Duration,
        dry_run: bool,
    ) -> HostFuture<Vec<crate::staging::Reclaimed>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let started = inner.start().await?;
            volumes::sweep(
                &started.client,
                &inner.store,
                &inner.settings,
                ttl,
                chrono::Utc::now(),
                dry_run,
            )
            .await
        })
    }
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Runs a cleanup from the run loop's synchronous end of run: to its end on a
/// multi-threaded runtime, in the background on a single-threaded one.
fn block_on_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime to delete a run's Kubernetes objects with");
        return;
    };
    match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            runtime.spawn(cleanup);
        }
        _ => tokio::task::block_in_place(|| runtime.block_on(cleanup)),
    }
}
