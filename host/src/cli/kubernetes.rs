//! The Kubernetes executor's options, and the arguments of a worker in a pod.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use sluice::events::TaskKey;
use sluice::executor::kubernetes::pod_worker::PodTry;
use sluice::executor::kubernetes::{AccessMode, ImageRef, KubeSettings};

/// Options of `--executor kubernetes` (the cluster itself comes from the
/// in-cluster configuration, else the kubeconfig).
#[derive(clap::Args)]
pub struct KubeArgs {
    /// Namespace of the runs' Jobs and volumes.
    #[arg(long, global = true, env = "SLUICE_KUBE_NAMESPACE")]
    namespace: Option<String>,
    /// The worker image, pinned by digest (`<registry>/sluice:<tag>@sha256:<digest>`).
    #[arg(long, global = true, env = "SLUICE_KUBE_IMAGE")]
    image: Option<String>,
    /// Names this Sluice instance in the objects' labels.
    #[arg(
        long,
        global = true,
        env = "SLUICE_KUBE_INSTANCE",
        default_value = "sluice"
    )]
    instance: String,
    /// Service account of the workers' pods.
    #[arg(long, global = true, default_value = "sluice-worker")]
    service_account: String,
    /// Where the worker endpoint listens.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ENDPOINT_LISTEN",
        default_value = "0.0.0.0:7443"
    )]
    endpoint_listen: SocketAddr,
    /// How workers reach the endpoint (default: `http://` + the listen address).
    #[arg(long, global = true, env = "SLUICE_ENDPOINT_URL")]
    endpoint_url: Option<url::Url>,
    /// Size of each run's volume.
    #[arg(long, global = true, default_value = "10GiB")]
    volume_size: bytesize::ByteSize,
    /// Storage class of the runs' volumes (default: the cluster's).
    #[arg(long, global = true)]
    storage_class: Option<String>,
    /// Mount run volumes ReadWriteMany, so parallel tasks may run on any node.
    #[arg(long, global = true)]
    read_write_many: bool,
    /// Pods in flight at once across every run; further tries wait.
    #[arg(
        long,
        global = true,
        env = "SLUICE_KUBE_MAX_PODS",
        default_value_t = 64
    )]
    max_pods: usize,
}

impl KubeArgs {
    /// The executor's settings; fails on a missing namespace or an image not
    /// pinned by digest.
    pub fn settings(&self) -> Result<KubeSettings> {
        let Some(namespace) = &self.namespace else {
            bail!("--executor kubernetes needs --namespace");
        };
        let Some(image) = &self.image else {
            bail!("--executor kubernetes needs --image <registry>/sluice:<tag>@sha256:<digest>");
        };
        let mut settings = KubeSettings::new(namespace.clone(), ImageRef::parse(image)?);
        settings.instance = self.instance.clone();
        settings.service_account = Some(self.service_account.clone());
        settings.endpoint_listen = self.endpoint_listen;
        settings.endpoint_url = self.endpoint_url.clone();
        settings.volume_size = self.volume_size;
        settings.storage_class = self.storage_class.clone();
        if self.max_pods == 0 {
            bail!("--max-pods must be at least 1");
        }
        settings.max_pods = self.max_pods;
        if self.read_write_many {
            settings.access_mode = AccessMode::ReadWriteMany;
        }
        Ok(settings)
    }
}

/// Arguments of `sluice worker` in a Kubernetes pod (none: the process
/// executor's worker, which reads its try on stdin).
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The host endpoint to fetch the try from.
    #[arg(long)]
    endpoint: Option<url::Url>,
    /// The projected service-account token file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The run's staging directory on its volume.
    #[arg(long)]
    staging: Option<PathBuf>,
    /// Run id.
    #[arg(long)]
    run: Option<String>,
    /// Task id.
    #[arg(long)]
    task: Option<String>,
    /// Try number.
    #[arg(long = "try")]
    try_number: Option<u32>,
}

impl WorkerArgs {
    /// The pod's try, when started with `--endpoint`.
    pub fn pod_try(self) -> Result<Option<PodTry>> {
        let Some(endpoint) = self.endpoint else {
            return Ok(None);
        };
        let missing = |what: &str| format!("sluice worker --endpoint needs --{what}");
        Ok(Some(PodTry {
            endpoint,
            token_file: self.token_file.with_context(|| missing("token-file"))?,
            staging: self.staging.with_context(|| missing("staging"))?,
            key: TaskKey {
                run_id: self.run.with_context(|| missing("run"))?,
                task_id: self.task.with_context(|| missing("task"))?,
                try_number: self.try_number.with_context(|| missing("try"))?,
            },
        }))
    }
}
