//! The Kubernetes executor's options, and the arguments of a worker in a pod.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use sluice::events::TaskKey;
use sluice::executor::kubernetes::pod_worker::PodTry;
use sluice::executor::kubernetes::{AccessMode, EndpointSecurity, ImageRef, KubeSettings};

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
    /// How workers reach the endpoint (default: `https://` + the listen
    /// address; `http://` with `--endpoint-plain-http`).
    #[arg(long, global = true, env = "SLUICE_ENDPOINT_URL")]
    endpoint_url: Option<url::Url>,
    /// The endpoint's TLS certificate chain (PEM; e.g. `tls.crt` of a
    /// mounted `kubernetes.io/tls` Secret), read again when it changes.
    #[arg(long, global = true, env = "SLUICE_ENDPOINT_TLS_CERT")]
    endpoint_tls_cert: Option<PathBuf>,
    /// The endpoint's TLS private key (PEM; e.g. `tls.key` of that Secret).
    #[arg(long, global = true, env = "SLUICE_ENDPOINT_TLS_KEY")]
    endpoint_tls_key: Option<PathBuf>,
    /// The ConfigMap (in the namespace) whose `ca.crt` workers trust for the
    /// endpoint; it is mounted into their pods.
    #[arg(
        long = "endpoint-ca-configmap",
        global = true,
        env = "SLUICE_ENDPOINT_CA_CONFIGMAP",
        default_value = "sluice-endpoint-ca"
    )]
    endpoint_ca_config_map: String,
    /// Serve the worker endpoint over plain HTTP instead of TLS: workers'
    /// tokens and their connections' secrets then cross the network in clear.
    #[arg(long, global = true)]
    endpoint_plain_http: bool,
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
        let security = match (
            &self.endpoint_tls_cert,
            &self.endpoint_tls_key,
            self.endpoint_plain_http,
        ) {
            (Some(cert), Some(key), false) => EndpointSecurity::Tls {
                cert: cert.clone(),
                key: key.clone(),
                ca_config_map: self.endpoint_ca_config_map.clone(),
            },
            (None, None, true) => EndpointSecurity::PlainHttp,
            (Some(_), Some(_), true) => bail!(
                "--endpoint-plain-http and --endpoint-tls-cert/--endpoint-tls-key contradict each other: choose one"
            ),
            (None, None, false) => bail!(
                "--executor kubernetes needs the worker endpoint's TLS certificate and key (--endpoint-tls-cert and --endpoint-tls-key; workers trust the CA in ConfigMap --endpoint-ca-configmap), or --endpoint-plain-http to send tokens and connection secrets in clear"
            ),
            _ => bail!("--endpoint-tls-cert and --endpoint-tls-key go together"),
        };
        let mut settings = KubeSettings::new(namespace.clone(), ImageRef::parse(image)?, security);
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
    /// The CA certificates (PEM) to trust for an https endpoint (only these).
    #[arg(long)]
    endpoint_ca: Option<PathBuf>,
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
    /// Set by the process executor when the try's task imports `sql`.
    #[arg(long = sluice::executor::WORKER_SQL_OPTION, hide = true)]
    open_database_ahead: bool,
}

impl WorkerArgs {
    /// Whether the host asked for the try's database to be opened ahead.
    pub fn open_database_ahead(&self) -> bool {
        self.open_database_ahead
    }

    /// The pod's try, when started with `--endpoint`.
    pub fn pod_try(self) -> Result<Option<PodTry>> {
        let Some(endpoint) = self.endpoint else {
            return Ok(None);
        };
        let missing = |what: &str| format!("sluice worker --endpoint needs --{what}");
        Ok(Some(PodTry {
            endpoint,
            endpoint_ca: self.endpoint_ca,
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
