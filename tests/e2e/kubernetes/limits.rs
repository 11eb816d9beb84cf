//! Limits and the volumes' lifecycle against the fake cluster: a Job the
//! namespace's quota refuses is created again with backoff (the try waits, no
//! retry is spent); `--max-pods` caps the pods in flight across runs; `sluice gc` reclaims a failed run's volume once its TTL
//! has passed (`ttl_expired`) and a volume no run claims (`orphaned`), both
//! recorded in `staging_volumes`.

use super::{Kube, NAMESPACE, raw_request};
use crate::support::text;

#[test]
fn a_quota_refusal_is_waited_out_without_spending_a_retry() {
    let kube = Kube::new();
    kube.cluster.refuse_jobs_for_quota(2);
    let manifest = kube.home.manifest(
        "kquota",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("kquota");
    let tries = kube.tries(&run.run_id, "t");
    assert_eq!(tries.len(), 1, "{tries:?}");
    assert_eq!(tries[0].state.as_str(), "success");
    let log = kube.home.log_text(&run.run_id, "t");
    assert_eq!(
        log.matches("waiting").count(),
        2,
        "each refusal is said in the try's log: {log}"
    );
    assert!(log.contains("exceeded quota"), "{log}");
    assert_eq!(kube.cluster.requests().get("POST jobs"), Some(&3));
}

#[test]
fn max_pods_caps_the_pods_in_flight() {
    let kube = Kube::new();
    let task = |id: &str| {
        format!(
            "[tasks.{id}]\nplugin = \"testkit\"\nparams = {{ mode = \"sleep\", ms = 1500 }}\n\n"
        )
    };
    let manifest = kube
        .home
        .manifest("kcap", &(task("a") + &task("b") + &task("c")));
    let out = kube.cli(&[
        "--max-pods",
        "1",
        "run",
        &manifest.display().to_string(),
        "--no-progress",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(kube.stored("Job").len(), 3);
    assert_eq!(
        kube.cluster.most_running(),
        1,
        "three independent tasks, one pod at a time"
    );
    // The three tries start together; the run's anchor and claim are applied once.
    let requests = kube.cluster.requests();
    for apply in ["PATCH configmaps", "PATCH persistentvolumeclaims"] {
        assert_eq!(requests.get(apply), Some(&1), "{apply}: {requests:?}");
    }
}

#[test]
fn gc_reclaims_expired_and_orphaned_volumes_and_records_why() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kfail",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"fail\", permanent = true }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(!out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("kfail");
    let claims = format!("/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims");
    let anchors = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
    assert_eq!(kube.live(&claims), 1, "a failed run keeps its volume");

    // A volume no run record claims (its home was lost), with its anchor.
    let orphan_run = "manual__20000101T000000_0000aa";
    let anchor = serde_json::json!({"metadata": {"name": "sluice-run-orphan",
        "labels": {"app.kubernetes.io/managed-by": "sluice", "app.kubernetes.io/instance": "sluice"},
        "annotations": {"sluice.dev/run-id": orphan_run}}});
    let (code, body) = raw_request(
        &kube.cluster.url,
        "POST",
        &anchors,
        None,
        Some(&anchor.to_string()),
    );
    assert_eq!(code, 201, "{body}");
    let uid =
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["metadata"]["uid"].clone();
    let claim = serde_json::json!({"metadata": {"name": "sluice-run-orphan",
        "labels": {"app.kubernetes.io/managed-by": "sluice", "app.kubernetes.io/instance": "sluice"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "sluice-run-orphan", "uid": uid}]},
        "spec": {"accessModes": ["ReadWriteOnce"]}});
    let (code, body) = raw_request(
        &kube.cluster.url,
        "POST",
        &claims,
        None,
        Some(&claim.to_string()),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(kube.live(&claims), 2);

    // Within the TTL nothing is reclaimed.
    let out = kube.cli(&["gc"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(kube.live(&claims), 2);

    // Past it: the failed run's volume expired, the other is an orphan.
    let out = kube.cli(&["--staging-ttl", "0s", "gc"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(kube.live(&claims), 0, "{stdout}");
    assert_eq!(kube.live(&anchors), 0, "{stdout}");
    let volumes = kube.home.sluice.store.volumes().expect("volumes");
    let reason_of = |run_id: &str| {
        volumes
            .iter()
            .find(|v| v.run_id == run_id)
            .map(|v| (v.state.as_str(), v.delete_reason.clone(), v.path.clone()))
    };
    let (state, reason, _) = reason_of(&run.run_id).expect("the run's volume");
    assert_eq!((state, reason.as_deref()), ("deleted", Some("ttl_expired")));
    let (state, reason, path) = reason_of(orphan_run).expect("the orphan's record");
    assert_eq!((state, reason.as_deref()), ("deleted", Some("orphaned")));
    assert_eq!(
        path,
        format!("kubernetes:{NAMESPACE}/persistentvolumeclaims/sluice-run-orphan")
    );
    assert!(
        stdout.contains("ttl_expired") && stdout.contains("orphaned"),
        "{stdout}"
    );
}
