//! What the operator tells the Kubernetes executor: namespace, image, where
//! the host endpoint listens and how workers reach it, volume and memory
//! figures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A container image pinned by digest (`name[:tag]@sha256:<64 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

/// Why an image reference is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "--image {0}: the image must be pinned by digest (`<registry>/<name>:<tag>@sha256:<64 hex digits>`) so every try runs the same bytes"
)]
pub struct ImageError(String);

impl ImageRef {
    /// Checks that `text` names an image by its sha256 digest.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let pinned = text.split_once("@sha256:").is_some_and(|(name, digest)| {
            !name.is_empty()
                && digest.len() == 64
                && digest
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
        if pinned {
            Ok(Self(text.to_owned()))
        } else {
            Err(ImageError(text.to_owned()))
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a run's volume may be mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// By one node at a time: the run's pods land on the node holding it.
    ReadWriteOnce,
    /// By many nodes: parallel tasks of a run may run anywhere.
    ReadWriteMany,
}

/// How the worker endpoint is secured (see [`super::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSecurity {
    /// TLS with the operator's certificate chain and key (PEM files, read
    /// again when they change); workers trust the CA certificates under key
    /// `ca.crt` of ConfigMap `ca_config_map`, mounted into their pods.
    Tls {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// Its private key (PEM).
        key: PathBuf,
        /// The ConfigMap, in the namespace, holding the CA workers trust.
        ca_config_map: String,
    },
    /// Plain HTTP: the operator's explicit choice (`--endpoint-plain-http`);
    /// tokens and the granted connections cross the network in clear.
    PlainHttp,
}

/// The Kubernetes executor's settings.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of every object.
    pub namespace: String,
    /// The worker image, pinned by digest.
    pub image: ImageRef,
    /// Names this Sluice instance in labels (one scheduler per instance).
    pub instance: String,
    /// Service account the workers' pods run as (none: the namespace default).
    pub service_account: Option<String>,
    /// Where the host endpoint listens.
    pub endpoint_listen: SocketAddr,
    /// How workers reach the endpoint (e.g. the Service's URL; none:
    /// `https://` (or `http://`) and the address it listens on).
    pub endpoint_url: Option<url::Url>,
    /// TLS on the endpoint, or plain HTTP.
    pub endpoint_security: EndpointSecurity,
    /// Size requested for each run's volume.
    pub volume_size: bytesize::ByteSize,
    /// Storage class of the volumes (none: the cluster default).
    pub storage_class: Option<String>,
    /// How the volumes are mounted.
    pub access_mode: AccessMode,
    /// Memory a worker needs beyond its task's `memory` and `duckdb_memory`.
    pub memory_headroom: u64,
    /// Time a try's pod may take to start (image pull, scheduling), added to
    /// the task's timeout for the Job's `activeDeadlineSeconds`.
    pub start_allowance: Duration,
    /// The workers run without kernel confinement (the operator's opt-out).
    pub allow_unconfined: bool,
    /// Pods in flight at once across every run (besides each DAG's
    /// `max_active_tasks`); a try beyond it waits for a slot.
    pub max_pods: usize,
}

impl KubeSettings {
    /// Defaults around a namespace, an image and the endpoint's security.
    pub fn new(namespace: String, image: ImageRef, endpoint_security: EndpointSecurity) -> Self {
        Self {
            namespace,
            image,
            instance: "sluice".into(),
            service_account: Some("sluice-worker".into()),
            endpoint_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            endpoint_url: None,
            endpoint_security,
            volume_size: bytesize::ByteSize::gib(10),
            storage_class: None,
            access_mode: AccessMode::ReadWriteOnce,
            memory_headroom: 256 << 20,
            start_allowance: Duration::from_secs(300),
            allow_unconfined: false,
            max_pods: 64,
        }
    }

    /// The URL workers reach the endpoint at, once it listens on `bound`:
    /// `endpoint_url`, whose scheme must be the endpoint's (`https` with TLS,
    /// `http` without), else that scheme and `bound`.
    pub fn worker_url(&self, bound: SocketAddr) -> Result<url::Url, String> {
        let scheme = match self.endpoint_security {
            EndpointSecurity::Tls { .. } => "https",
            EndpointSecurity::PlainHttp => "http",
        };
        match &self.endpoint_url {
            Some(url) if url.scheme() == scheme => Ok(url.clone()),
            Some(url) => Err(format!(
                "--endpoint-url {url}: the worker endpoint serves {scheme}, so workers must reach it at an {scheme}:// URL"
            )),
            None => format!("{scheme}://{bound}")
                .parse()
                .map_err(|e| format!("the worker endpoint's URL for {bound}: {e}")),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let image = ImageRef(format!("sluice@sha256:{}", "0".repeat(64)));
        Self::new("default".into(), image, EndpointSecurity::PlainHttp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_pinned_by_digest_are_accepted() {
        let digest = "0123456789abcdef".repeat(4);
        assert!(ImageRef::parse(&format!("r.example/sluice:1@sha256:{digest}")).is_ok());
        for bad in [
            "r.example/sluice:1".to_owned(),
            format!("@sha256:{digest}"),
            "sluice@sha256:abc".to_owned(),
            format!("sluice@sha256:{}", digest.to_uppercase()),
        ] {
            let error = ImageRef::parse(&bad).expect_err(&bad).to_string();
            assert!(error.contains("pinned by digest"), "{error}");
        }
    }

    #[test]
    fn the_worker_url_has_the_endpoint_scheme() {
        let bound = SocketAddr::from(([10, 0, 0, 1], 7443));
        let mut settings = KubeSettings::for_tests();
        assert_eq!(
            settings.worker_url(bound).expect("url").as_str(),
            "http://10.0.0.1:7443/"
        );
        settings.endpoint_security = EndpointSecurity::Tls {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
            ca_config_map: "sluice-endpoint-ca".into(),
        };
        assert_eq!(
            settings.worker_url(bound).expect("url").as_str(),
            "https://10.0.0.1:7443/"
        );
        settings.endpoint_url = Some("http://sluice.pipelines.svc:7443".parse().expect("url"));
        let error = settings.worker_url(bound).expect_err("http with TLS");
        assert!(error.contains("https://"), "{error}");
        settings.endpoint_url = Some("https://sluice.pipelines.svc:7443".parse().expect("url"));
        assert_eq!(
            settings.worker_url(bound).expect("url").host_str(),
            Some("sluice.pipelines.svc")
        );
    }
}
