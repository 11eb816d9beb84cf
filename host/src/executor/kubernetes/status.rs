//! How a try ended when its worker could not say: read from its Job's and
//! pods' status. Image pull errors fail at once with the image named;
//! OOMKilled names the limit to raise; eviction, disruption or a lost node is
//! a retryable infrastructure failure; a Job that is gone means the pod was
//! lost (retryable).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use crate::executor::TryOutcome;

/// Waiting reasons that mean the image cannot be had.
const IMAGE_ERRORS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// What a Job and its pods say about a try.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Still starting or running.
    Running,
    /// Ended this way for sure (no report can change it).
    Failed(TryOutcome),
    /// The Job ended; this is how, unless the worker's report arrives soon.
    Ended(TryOutcome),
}

/// What a pod limit is made of, to name in an out-of-memory failure.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBudget {
    /// The task's `memory`.
    pub memory: u64,
    /// The task's `duckdb_memory`.
    pub duckdb_memory: u64,
    /// The executor's headroom.
    pub headroom: u64,
}

fn failed(error: String, retryable: bool) -> TryOutcome {
    TryOutcome::Failed { error, retryable }
}

fn condition(job: &Job, kind: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Why a pod was disrupted by the cluster, if it was.
fn disruption(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.reason.as_deref() == Some("Evicted") {
        return Some(format!(
            "evicted ({})",
            status.message.as_deref().unwrap_or("no message")
        ));
    }
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| {
            format!(
                "disrupted: {} ({})",
                c.reason.as_deref().unwrap_or("no reason"),
                c.message.as_deref().unwrap_or("no message")
            )
        })
}

/// Classifies a try from its Job (none: it is gone) and the Job's pods.
pub fn classify(
    job_name: &str,
    job: Option<&Job>,
    pods: &[Pod],
    image: &str,
    budget: MemoryBudget,
) -> Verdict {
    let Some(job) = job else {
        return Verdict::Failed(failed(
            format!(
                "pod lost: the try's Job {job_name} is gone (deleted outside Sluice, or its node and objects were lost); an infrastructure failure"
            ),
            true,
        ));
    };
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for container in statuses.into_iter().flatten() {
            let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(waiting) = waiting {
                let reason = waiting.reason.as_deref().unwrap_or_default();
                if IMAGE_ERRORS.contains(&reason) {
                    return Verdict::Failed(failed(
                        format!(
                            "cannot pull the worker image {image}: {reason}: {}",
                            waiting.message.as_deref().unwrap_or("no message")
                        ),
                        false,
                    ));
                }
            }
        }
    }
    if let Some((reason, message)) = condition(job, "Failed") {
        if reason == "DeadlineExceeded" {
            return Verdict::Ended(failed(
                format!(
                    "timed out: the try's Job {job_name} passed its activeDeadlineSeconds ({message})"
                ),
                true,
            ));
        }
        let Some(last) = pods.last() else {
            return Verdict::Ended(failed(
                format!(
                    "pod lost: the pod of the try's Job {job_name} vanished before its worker reported (deleted, or lost with its node; the Job says {reason}: {message}); an infrastructure failure"
                ),
                true,
            ));
        };
        let last = Some(last);
        if let Some(why) = last.and_then(disruption) {
            return Verdict::Ended(failed(
                format!("infrastructure failure: the try's pod was {why}"),
                true,
            ));
        }
        let terminated = last
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        return Verdict::Ended(match terminated {
            Some(t) if t.reason.as_deref() == Some("OOMKilled") => failed(
                format!(
                    "out of memory: the worker was killed at its pod's memory limit of {} (task memory {} + duckdb_memory {} + headroom {}); raise the task's duckdb_memory (or memory) or lower what the task holds at once",
                    bytesize::ByteSize::b(budget.memory + budget.duckdb_memory + budget.headroom),
                    bytesize::ByteSize::b(budget.memory),
                    bytesize::ByteSize::b(budget.duckdb_memory),
                    bytesize::ByteSize::b(budget.headroom),
                ),
                true,
            ),
            Some(t) => failed(
                format!(
                    "the worker exited with code {} ({}) without reporting how the try ended",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("no reason")
                ),
                true,
            ),
            None => failed(
                format!("the try's Job {job_name} failed: {reason}: {message}"),
                true,
            ),
        });
    }
    if condition(job, "Complete").is_some() {
        return Verdict::Ended(failed(
            "the worker exited without reporting how the try ended".into(),
            true,
        ));
    }
    if let Some(why) = pods.iter().rev().find_map(disruption)
        && job
            .status
            .as_ref()
            .and_then(|s| s.active)
            .unwrap_or_default()
            == 0
        && pods.len() == 1
    {
        // Nothing replaced the disrupted pod (a controller that does not
        // honour the pod failure policy): retry as a new try.
        return Verdict::Ended(failed(
            format!("infrastructure failure: the try's pod was {why}"),
            true,
        ));
    }
    Verdict::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BUDGET: MemoryBudget = MemoryBudget {
        memory: 256 << 20,
        duckdb_memory: 1 << 30,
        headroom: 256 << 20,
    };

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
        )
        .expect("job")
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    fn failure_of(verdict: Verdict) -> (String, bool) {
        match verdict {
            Verdict::Failed(TryOutcome::Failed { error, retryable })
            | Verdict::Ended(TryOutcome::Failed { error, retryable }) => (error, retryable),
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn image_pull_errors_fail_fast_naming_the_image() {
        let waiting = pod(
            json!({"containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}),
        );
        let verdict = classify(
            "j",
            Some(&job(json!([]))),
            &[waiting],
            "reg/sluice@sha256:ab",
            BUDGET,
        );
        assert!(matches!(verdict, Verdict::Failed(_)));
        let (error, retryable) = failure_of(verdict);
        assert!(
            error.contains("reg/sluice@sha256:ab") && error.contains("ImagePullBackOff"),
            "{error}"
        );
        assert!(!retryable);
    }

    #[test]
    fn oom_names_the_limit_to_raise() {
        let killed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        let failed_job =
            job(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]));
        let (error, _) = failure_of(classify("j", Some(&failed_job), &[killed], "i", BUDGET));
        assert!(
            error.contains("1.5 GiB") && error.contains("duckdb_memory"),
            "{error}"
        );
    }

    #[test]
    fn eviction_and_a_lost_job_are_retryable_infrastructure_failures() {
        let evicted =
            pod(json!({"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}));
        let failed_job =
            job(json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]));
        let (error, retryable) =
            failure_of(classify("j", Some(&failed_job), &[evicted], "i", BUDGET));
        assert!(
            error.contains("infrastructure") && error.contains("evicted"),
            "{error}"
        );
        assert!(retryable);
        let (error, retryable) = failure_of(classify("j", None, &[], "i", BUDGET));
        assert!(error.contains("pod lost"), "{error}");
        assert!(retryable);
        // A failed Job whose pod was deleted (its node lost).
        let (error, retryable) = failure_of(classify("j", Some(&failed_job), &[], "i", BUDGET));
        assert!(error.contains("pod lost"), "{error}");
        assert!(retryable);
    }

    #[test]
    fn a_running_job_is_running() {
        let running = pod(json!({"phase": "Running"}));
        assert_eq!(
            classify("j", Some(&job(json!([]))), &[running], "i", BUDGET),
            Verdict::Running
        );
    }
}
