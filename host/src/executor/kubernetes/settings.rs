//! What the operator tells the Kubernetes executor: namespace, image, where
//! the host endpoint listens and how workers reach it, volume and memory
//! figures.

use std::net::SocketAddr;
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
    /// `http://` and the address it listens on).
    pub endpoint_url: Option<url::Url>,
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
    /// Defaults around a namespace and an image.
    pub fn new(namespace: String, image: ImageRef) -> Self {
        Self {
            namespace,
            image,
            instance: "sluice".into(),
            service_account: Some("sluice-worker".into()),
            endpoint_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            endpoint_url: None,
            volume_size: bytesize::ByteSize::gib(10),
            storage_class: None,
            access_mode: AccessMode::ReadWriteOnce,
            memory_headroom: 256 << 20,
            start_allowance: Duration::from_secs(300),
            allow_unconfined: false,
            max_pods: 64,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let image = ImageRef(format!("sluice@sha256:{}", "0".repeat(64)));
        Self::new("default".into(), image)
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
}
