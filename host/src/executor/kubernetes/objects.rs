//! The Kubernetes objects of a run and of its tries, built from names and
//! settings only (pure functions: nothing here talks to a server).
//!
//! Per run: an anchor (an empty ConfigMap that owns the run's other objects,
//! so deleting it reclaims them) and a PersistentVolumeClaim, the run's
//! staging volume. Per try: a Job running `sluice worker` with ids in its
//! arguments and nothing secret anywhere: the worker fetches its component and
//! its connections from the host endpoint with a projected service-account
//! token (see [`super::endpoint`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use super::settings::{AccessMode, EndpointSecurity, KubeSettings};
use super::tls::{CA_KEY, CA_MOUNT};
use crate::executor::TryRequest;

/// `app.kubernetes.io/managed-by` value of every object Sluice creates.
pub const MANAGED_BY: &str = "sluice";
/// Label naming the Sluice instance (one scheduler and its home).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label of the run (label-safe form of the run id).
pub const RUN_LABEL: &str = "sluice.dev/run";
/// Label of the DAG (label-safe form).
pub const DAG_LABEL: &str = "sluice.dev/dag";
/// Label of the task (label-safe form).
pub const TASK_LABEL: &str = "sluice.dev/task";
/// Label naming the try's Job on its pods (the Job name is unique per try).
pub const TRY_LABEL: &str = "sluice.dev/try";
/// Annotations with the exact ids (labels may have had to be shortened).
pub const RUN_ID_ANNOTATION: &str = "sluice.dev/run-id";
/// The exact task id.
pub const TASK_ID_ANNOTATION: &str = "sluice.dev/task-id";
/// The try number.
pub const TRY_NUMBER_ANNOTATION: &str = "sluice.dev/try-number";
/// Audience of the projected token a worker presents to the host.
pub const TOKEN_AUDIENCE: &str = "sluice";
/// Where a worker's pod mounts the run's volume.
pub const VOLUME_MOUNT: &str = "/sluice/run";
/// Where a worker's pod mounts its projected token.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/sluice";
/// How long a projected token is valid (the kubelet refreshes it before).
pub const TOKEN_EXPIRY_SECONDS: i64 = 600;
/// The worker container's name.
pub const CONTAINER: &str = "worker";

/// The label selector of everything one Sluice instance manages.
pub fn instance_selector(settings: &KubeSettings) -> String {
    format!(
        "app.kubernetes.io/managed-by={MANAGED_BY},{INSTANCE_LABEL}={}",
        label_value(&settings.instance)
    )
}

/// The label selector of a run's objects.
pub fn run_selector(settings: &KubeSettings, run_id: &str) -> String {
    format!(
        "{},{RUN_LABEL}={}",
        instance_selector(settings),
        label_value(run_id)
    )
}

/// `text` as a label value: itself when it is one (at most 63 characters of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends), else a cleaned prefix plus a
/// hash of the whole, so distinct ids stay distinct.
pub fn label_value(text: &str) -> String {
    let valid = text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && text
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        return text.to_owned();
    }
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(text);
    if cleaned.is_empty() {
        hash
    } else {
        format!("{cleaned}-{hash}")
    }
}

/// 12 hex digits of the sha256 of `text`.
fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// A DNS-1123 label prefix made of `text` (lowercase alphanumerics and `-`).
fn dns_prefix(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    cleaned.trim_matches('-').to_owned()
}

/// Name of the instance's single-scheduler lease.
pub fn lease_name(settings: &KubeSettings) -> String {
    let instance = dns_prefix(&settings.instance, 30);
    format!(
        "sluice-scheduler-{instance}-{}",
        short_hash(&settings.instance)
    )
}

/// Name of a run's anchor (and of its volume claim).
pub fn run_object_name(run_id: &str) -> String {
    format!("sluice-run-{}", short_hash(run_id))
}

/// Name of a try's Job: readable (task, try) and unique (hash of run, task, try).
pub fn job_name(run_id: &str, task_id: &str, try_number: u32) -> String {
    let hash = short_hash(&format!("{run_id}\u{0}{task_id}\u{0}{try_number}"));
    let task = dns_prefix(task_id, 30);
    if task.is_empty() {
        format!("sluice-{hash}-{try_number}")
    } else {
        format!("sluice-{task}-{hash}-{try_number}")
    }
}

fn run_labels(settings: &KubeSettings, dag_id: &str, run_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), label_value(&settings.instance)),
        (DAG_LABEL.to_owned(), label_value(dag_id)),
        (RUN_LABEL.to_owned(), label_value(run_id)),
    ])
}

/// What identifies a run's anchor to the objects it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Its name.
    pub name: String,
    /// Its uid, as the server gave it.
    pub uid: String,
}

impl Anchor {
    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            block_owner_deletion: Some(true),
            controller: Some(true),
        }
    }
}

/// A run's anchor: an empty ConfigMap labelled for the run.
pub fn anchor(settings: &KubeSettings, dag_id: &str, run_id: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(run_object_name(run_id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(run_labels(settings, dag_id, run_id)),
            annotations: Some(BTreeMap::from([(
                RUN_ID_ANNOTATION.to_owned(),
                run_id.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

/// A run's staging volume, owned by its anchor.
pub fn volume_claim(
    settings: &KubeSettings,
    dag_id: &str,
    run_id: &str,
    anchor: &Anchor,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(run_object_name(run_id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(run_labels(settings, dag_id, run_id)),
            annotations: Some(BTreeMap::from([(
                RUN_ID_ANNOTATION.to_owned(),
                run_id.to_owned(),
            )])),
            owner_references: Some(vec![anchor.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![settings.access_mode.as_str().to_owned()]),
            storage_class_name: settings.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(settings.volume_size.as_u64().to_string()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The memory a try's pod requests and is limited to: the task's WebAssembly
/// memory, its DuckDB memory, and the settings' headroom for the worker
/// process itself (wasmtime, the runtime, DuckDB's overshoot of its limit).
pub fn pod_memory(request: &TryRequest, settings: &KubeSettings) -> u64 {
    request
        .policy
        .memory
        .saturating_add(request.policy.duckdb_memory)
        .saturating_add(settings.memory_headroom)
}

/// How long a try's Job may be active: the task's timeout plus the time its
/// pod may take to start, rounded up to whole seconds.
pub fn active_deadline(request: &TryRequest, settings: &KubeSettings) -> Duration {
    let total = request.policy.timeout + settings.start_allowance;
    Duration::from_secs(total.as_secs() + u64::from(total.subsec_nanos() > 0))
}

/// The arguments of a try's worker: where the host is (and, with TLS, the
/// CA it trusts for it), where the volume and the token are mounted, and the
/// try's ids. Nothing secret.
pub fn worker_args(
    request: &TryRequest,
    settings: &KubeSettings,
    endpoint: &url::Url,
) -> Vec<String> {
    let mut args = vec!["--home".to_owned(), format!("{VOLUME_MOUNT}/worker-home")];
    if settings.allow_unconfined {
        args.push("--allow-unconfined".to_owned());
    }
    args.extend([
        "worker".to_owned(),
        "--endpoint".to_owned(),
        endpoint.to_string(),
    ]);
    if let EndpointSecurity::Tls { .. } = settings.endpoint_security {
        args.extend(["--endpoint-ca".to_owned(), format!("{CA_MOUNT}/{CA_KEY}")]);
    }
    args.extend([
        "--token-file".to_owned(),
        format!("{TOKEN_MOUNT}/token"),
        "--staging".to_owned(),
        format!("{VOLUME_MOUNT}/staging"),
        "--run".to_owned(),
        request.key.run_id.clone(),
        "--task".to_owned(),
        request.key.task_id.clone(),
        "--try".to_owned(),
        request.key.try_number.to_string(),
    ]);
    args
}

/// A try's Job: one pod (`backoffLimit: 0`, Sluice owns retries), never
/// restarted, ended by `activeDeadlineSeconds`; a pod disrupted by the
/// cluster (eviction, preemption, node drain) is replaced without counting
/// as a failure.
pub fn job(
    request: &TryRequest,
    settings: &KubeSettings,
    anchor: &Anchor,
    endpoint: &url::Url,
) -> Job {
    let key = &request.key;
    let name = job_name(&key.run_id, &key.task_id, key.try_number);
    let mut labels = run_labels(settings, &request.dag_id, &key.run_id);
    labels.insert(TASK_LABEL.to_owned(), label_value(&key.task_id));
    labels.insert(TRY_LABEL.to_owned(), name.clone());
    let annotations = BTreeMap::from([
        (RUN_ID_ANNOTATION.to_owned(), key.run_id.clone()),
        (TASK_ID_ANNOTATION.to_owned(), key.task_id.clone()),
        (TRY_NUMBER_ANNOTATION.to_owned(), key.try_number.to_string()),
    ]);
    let memory = Quantity(pod_memory(request, settings).to_string());
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("memory".to_owned(), memory.clone()),
            (
                "cpu".to_owned(),
                Quantity(request.policy.threads.max(1).to_string()),
            ),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), memory)])),
        ..ResourceRequirements::default()
    };
    let mut volume_mounts = vec![
        VolumeMount {
            name: "run".into(),
            mount_path: VOLUME_MOUNT.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "token".into(),
            mount_path: TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "run".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: run_object_name(&key.run_id),
                read_only: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: "token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_EXPIRY_SECONDS),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let EndpointSecurity::Tls { ca_config_map, .. } = &settings.endpoint_security {
        // The CA the worker trusts for the endpoint (public: a ConfigMap).
        volume_mounts.push(VolumeMount {
            name: "endpoint-ca".into(),
            mount_path: CA_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "endpoint-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ca_config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: CA_KEY.into(),
                    path: CA_KEY.into(),
                    mode: None,
                }]),
                optional: Some(false),
                default_mode: None,
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sluice".into()]),
        args: Some(worker_args(request, settings, endpoint)),
        resources: Some(resources),
        volume_mounts: Some(volume_mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let deadline = i64::try_from(active_deadline(request, settings).as_secs()).unwrap_or(i64::MAX);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            owner_references: Some(vec![anchor.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: settings.service_account.clone(),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

impl AccessMode {
    /// The access mode as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskKey;
    use crate::executor::kubernetes::settings::ImageRef;

    fn settings() -> KubeSettings {
        KubeSettings {
            namespace: "pipelines".into(),
            image: ImageRef::parse(&format!(
                "registry.example/sluice:1@sha256:{}",
                "a".repeat(64)
            ))
            .expect("image"),
            ..KubeSettings::for_tests()
        }
    }

    fn request() -> TryRequest {
        let policy = sluice_core::dag::TaskPolicy {
            memory: 256 << 20,
            duckdb_memory: 1 << 30,
            timeout: Duration::from_millis(90_500),
            threads: 2,
            ..Default::default()
        };
        TryRequest {
            key: TaskKey {
                run_id: "manual__2026-01-01T00:00:00+00:00".into(),
                task_id: "load_orders".into(),
                try_number: 2,
            },
            dag_id: "etl".into(),
            staging_dir: "/tmp/x".into(),
            policy,
            connections: vec!["warehouse".into()],
            ..TryRequest::for_tests("", "", &"b".repeat(64))
        }
    }

    fn anchor_ref() -> Anchor {
        Anchor {
            name: "sluice-run-x".into(),
            uid: "uid-1".into(),
        }
    }

    #[test]
    fn label_values_are_valid_and_distinct() {
        assert_eq!(label_value("etl"), "etl");
        let a = label_value("manual__2026-01-01T00:00:00+00:00");
        let b = label_value("manual__2026-01-01T00:00:00+01:00");
        assert_ne!(a, b);
        for value in [&a, &b, &label_value(&"x".repeat(100)), &label_value("+++")] {
            assert!(value.len() <= 63, "{value}");
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "{value}"
            );
            assert!(
                value.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{value}"
            );
        }
    }

    #[test]
    fn job_names_are_dns_labels_unique_per_try() {
        let a = job_name("r", "Load_Orders", 1);
        assert!(a.starts_with("sluice-load-orders-"), "{a}");
        assert_ne!(a, job_name("r", "Load_Orders", 2));
        assert_ne!(a, job_name("r2", "Load_Orders", 1));
        let long = job_name(&"r".repeat(300), &"t".repeat(300), 99);
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn the_job_runs_one_pod_once_with_ids_only() {
        let settings = settings();
        let request = request();
        let endpoint: url::Url = "http://127.0.0.1:7443".parse().expect("url");
        let job = job(&request, &settings, &anchor_ref(), &endpoint);
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        // 90.5 s timeout + 300 s to start, rounded up.
        assert_eq!(spec.active_deadline_seconds, Some(391));
        let rule = &spec.pod_failure_policy.as_ref().expect("policy").rules[0];
        assert_eq!(rule.action, "Ignore");
        let pod = spec.template.spec.as_ref().expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(format!("registry.example/sluice:1@sha256:{}", "a".repeat(64)).as_str())
        );
        assert!(container.env.is_none());
        let args = container.args.clone().expect("args");
        assert!(args.contains(&"manual__2026-01-01T00:00:00+00:00".to_owned()));
        assert!(args.contains(&"load_orders".to_owned()));
        // Requests = limits = memory + duckdb_memory + headroom.
        let resources = container.resources.as_ref().expect("resources");
        let expected = (256u64 << 20) + (1 << 30) + settings.memory_headroom;
        for map in [&resources.requests, &resources.limits] {
            let memory = map.as_ref().and_then(|m| m.get("memory")).expect("memory");
            assert_eq!(memory.0, expected.to_string());
        }
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ConfigMap", "uid-1")
        );
        let labels = job.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice");
        assert_eq!(labels[TRY_LABEL], job.metadata.name.clone().expect("name"));
        let token = pod.volumes.as_ref().expect("volumes")[1]
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s[0].service_account_token.as_ref())
            .expect("token");
        assert_eq!(token.audience.as_deref(), Some(TOKEN_AUDIENCE));
    }

    #[test]
    fn with_tls_the_worker_pod_mounts_the_ca_configmap_and_no_key() {
        let request = request();
        let endpoint: url::Url = "https://sluice.pipelines.svc:7443".parse().expect("url");
        let plain = job(&request, &settings(), &anchor_ref(), &endpoint);
        let tls_settings = KubeSettings {
            endpoint_security: EndpointSecurity::Tls {
                cert: "/secret/tls.crt".into(),
                key: "/secret/tls.key".into(),
                ca_config_map: "endpoint-ca".into(),
            },
            ..settings()
        };
        let tls = job(&request, &tls_settings, &anchor_ref(), &endpoint);
        let pod = |job: &Job| job.spec.clone().expect("spec").template.spec.expect("pod");
        let (plain, tls) = (pod(&plain), pod(&tls));
        let args = tls.containers[0].args.clone().expect("args");
        let ca = args
            .iter()
            .position(|a| a == "--endpoint-ca")
            .and_then(|i| args.get(i + 1))
            .expect("--endpoint-ca");
        assert_eq!(ca, &format!("{CA_MOUNT}/{CA_KEY}"));
        // Neither the certificate's nor the key's path reaches the pod.
        assert!(!format!("{tls:?}").contains("/secret/"), "{args:?}");
        let volumes = tls.volumes.expect("volumes");
        assert_eq!(volumes.len(), plain.volumes.expect("volumes").len() + 1);
        let source = volumes
            .iter()
            .find_map(|v| v.config_map.clone())
            .expect("the CA volume");
        assert_eq!(source.name, "endpoint-ca");
        assert_eq!(source.items.expect("items")[0].key, CA_KEY);
        let mount = tls.containers[0]
            .volume_mounts
            .clone()
            .expect("mounts")
            .into_iter()
            .find(|m| m.mount_path == CA_MOUNT)
            .expect("the CA mount");
        assert_eq!(mount.read_only, Some(true));
        let plain_args = plain.containers[0].args.clone().expect("args");
        assert!(!plain_args.contains(&"--endpoint-ca".to_owned()));
    }

    #[test]
    fn the_claim_and_anchor_belong_to_the_run() {
        let settings = settings();
        let anchor_object = anchor(&settings, "etl", "run 1");
        assert_eq!(anchor_object.data, None);
        let claim = volume_claim(&settings, "etl", "run 1", &anchor_ref());
        assert_eq!(claim.metadata.name, anchor_object.metadata.name);
        let spec = claim.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(
            claim.metadata.labels.expect("labels")[RUN_LABEL],
            label_value("run 1")
        );
    }
}
