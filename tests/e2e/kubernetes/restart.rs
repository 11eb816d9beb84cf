//! Restart and adoption against the fake cluster: the single-scheduler lease
//! refuses a second scheduler (naming the holder) and is taken over when
//! stale; a scheduler killed with SIGKILL while a task's Job runs is
//! restarted and adopts that Job (finished tasks are not run again), or,
//! when that Job was lost meanwhile, fails the try as a retryable "pod lost"
//! and deletes the Jobs no try claims; a pod
//! lost with its node fails its try as retryable, and the retry succeeds; a
//! watch the server expires (410 Gone) is replaced by a new list, and the
//! status it then shows still decides a try whose worker could not report.
//! A scheduler stopped with SIGTERM gives its lease back and leaves its
//! Jobs to the next one.

use std::process::Stdio;

use serde_json::Value;

use super::{Kube, NAMESPACE, raw_request};
use crate::support::{CHILD_DEADLINE, Spawned, output_within, text, wait_for};

/// A port free on 127.0.0.1 now, so a restarted host listens where its
/// predecessor's workers call (as a Service address would stay the same).
pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn the_lease(kube: &Kube) -> Value {
    let leases = kube.raw_get(&format!(
        "/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
    ));
    let items = leases["items"].as_array().expect("leases");
    assert_eq!(items.len(), 1, "{leases}");
    items[0].clone()
}

#[test]
fn a_killed_scheduler_is_restarted_and_adopts_the_running_job() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kadopt",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n\n\
         [tasks.b]\nplugin = \"testkit\"\nafter = [\"a\"]\nparams = { mode = \"sleep\", ms = 3000 }\n",
    );
    // Task b's pod runs, so a's try has ended and its outcome is stored.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = run_until_b_runs(&kube, &manifest, &listen);
    let pid = first.id();

    // A second scheduler is refused while the first holds the lease.
    let second = output_within(
        &mut kube.command("127.0.0.1:0", &["scheduler", "--once"]),
        CHILD_DEADLINE,
    );
    let (_, stderr) = text(&second);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds the lease") && stderr.contains(&format!("/{pid}/")),
        "the refusal names the holder: {stderr}"
    );

    first.kill();
    let run = kube.last_run("kadopt");
    assert_eq!(run.state.as_str(), "running", "left running by the kill");

    // Restarted on the same host: the holder is gone, so the lease is taken
    // over at once; b's Job is adopted and its worker's report accepted.
    let restarted = output_within(
        &mut kube.command(&listen, &["scheduler", "--once"]),
        CHILD_DEADLINE,
    );
    assert!(restarted.status.success(), "{:?}", text(&restarted));
    let store = &kube.home.sluice.store;
    let after = store.run(&run.run_id).expect("run");
    assert_eq!(
        after.state.as_str(),
        "success",
        "run: {after:?}\na: {:?}\nb: {:?}\nrestarted: {:?}\npod logs: {:?}",
        kube.tries(&run.run_id, "a"),
        kube.tries(&run.run_id, "b"),
        text(&restarted),
        kube.cluster.logs()
    );
    assert_eq!(store.tries(&run.run_id, "a").expect("tries").len(), 1);
    let b = store.tries(&run.run_id, "b").expect("tries");
    assert_eq!(b.len(), 1, "b's try was adopted, not run again: {b:?}");
    assert_eq!(b[0].state.as_str(), "success");
    assert!(kube.home.task(&run.run_id, "b").output.is_some());
    assert_eq!(kube.stored("Job").len(), 2, "no Job was made again");
    assert_eq!(
        kube.live(&format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs")),
        0,
        "the run's Jobs are deleted once it ended"
    );
    let lease = the_lease(&kube);
    let holder = lease["spec"]["holderIdentity"].as_str().expect("holder");
    assert!(!holder.contains(&format!("/{pid}/")), "{holder}");
    assert!(lease["spec"]["leaseTransitions"].as_i64() >= Some(1));
}

#[test]
fn sigterm_gives_the_lease_back_and_leaves_the_job_to_the_next_scheduler() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kterm",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n\n\
         [tasks.b]\nplugin = \"testkit\"\nafter = [\"a\"]\nparams = { mode = \"sleep\", ms = 3000 }\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = Spawned::new(
        kube.command(
            &listen,
            &["run", &manifest.display().to_string(), "--no-progress"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    wait_for("task b's pod to run", CHILD_DEADLINE, || {
        if let Some(status) = first.exited() {
            panic!("sluice exited before its SIGTERM: {status}");
        }
        (kube.cluster.pod_tokens().len() == 2).then_some(())
    });
    let pid = first.id();
    let holder = the_lease(&kube)["spec"]["holderIdentity"].clone();
    assert!(
        holder
            .as_str()
            .is_some_and(|h| h.contains(&format!("/{pid}/"))),
        "{holder}"
    );
    // As the kubelet stops a pod (a rolling restart, a drain).
    let pid = libc::pid_t::try_from(pid).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = first.output_within(CHILD_DEADLINE);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("giving back the scheduler lease"),
        "{stderr}"
    );
    // Given back: no holder, so a scheduler on any node takes it at once.
    let lease = the_lease(&kube);
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1, "{lease}");
    // b's Job went on; the next scheduler adopts it and the run succeeds.
    let jobs = format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs");
    assert_eq!(kube.live(&jobs), 2, "the Jobs were left running");
    let next = output_within(
        &mut kube.command(&listen, &["scheduler", "--once"]),
        CHILD_DEADLINE,
    );
    assert!(next.status.success(), "{:?}", text(&next));
    let run = kube.last_run("kterm");
    assert_eq!(
        run.state.as_str(),
        "success",
        "{:?}\npod logs: {:?}",
        text(&next),
        kube.cluster.logs()
    );
    assert_eq!(kube.tries(&run.run_id, "b").len(), 1, "b was adopted");
}

#[test]
fn a_restarted_scheduler_fails_a_try_whose_job_is_gone_and_deletes_strays() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kgone_job",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n\n\
         [tasks.b]\nplugin = \"testkit\"\nafter = [\"a\"]\nparams = { mode = \"sleep-first\", ms = 60000 }\n\
         retries = 1\nretry_delay = \"100ms\"\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let first = run_until_b_runs(&kube, &manifest, &listen);
    first.kill();
    // While no scheduler runs, b's Job is lost, and a Job of this instance
    // that no try claims appears.
    let jobs = format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs");
    let b_job = kube
        .stored("Job")
        .into_iter()
        .find(|j| j["metadata"]["labels"]["sluice.dev/task"] == "b")
        .expect("b's Job");
    let b_job = b_job["metadata"]["name"].as_str().expect("name").to_owned();
    let (code, body) = raw_request(
        &kube.cluster.url,
        "DELETE",
        &format!("{jobs}/{b_job}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let stray = serde_json::json!({"metadata": {"name": "sluice-stray",
        "labels": {"app.kubernetes.io/managed-by": "sluice", "app.kubernetes.io/instance": "sluice"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "worker", "args": ["--version"]}]}}}});
    let (code, body) = raw_request(
        &kube.cluster.url,
        "POST",
        &jobs,
        None,
        Some(&stray.to_string()),
    );
    assert_eq!(code, 201, "{body}");

    let restarted = output_within(
        &mut kube.command(&listen, &["scheduler", "--once"]),
        CHILD_DEADLINE,
    );
    assert!(restarted.status.success(), "{:?}", text(&restarted));
    let run = kube.last_run("kgone_job");
    let store = &kube.home.sluice.store;
    assert_eq!(
        store.run(&run.run_id).expect("run").state.as_str(),
        "success"
    );
    assert_eq!(store.tries(&run.run_id, "a").expect("tries").len(), 1);
    let b = store.tries(&run.run_id, "b").expect("tries");
    assert_eq!(b.len(), 2, "{b:?}");
    let error = b[0].error.clone().unwrap_or_default();
    assert!(error.contains("pod lost"), "{error}");
    let (code, body) = raw_request(
        &kube.cluster.url,
        "GET",
        &format!("{jobs}/sluice-stray"),
        None,
        None,
    );
    assert_eq!(code, 404, "the stray Job was deleted: {body}");
}

#[test]
fn a_lease_held_on_another_host_refuses_until_it_is_stale() {
    let kube = Kube::new();
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
    let now = chrono::Utc::now();
    // Named as the executor names it: read from a first start, which takes it.
    let out = kube.cli(&["gc"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let name = the_lease(&kube)["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"holderIdentity": "another-host/42/4242", "leaseDurationSeconds": 15,
            "renewTime": now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
    });
    let (code, body) = raw_request(
        &kube.cluster.url,
        "DELETE",
        &format!("{path}/{name}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw_request(
        &kube.cluster.url,
        "POST",
        &path,
        None,
        Some(&lease.to_string()),
    );
    assert_eq!(code, 201, "{body}");

    let refused = kube.cli(&["gc"]);
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("another-host/42/4242"), "{stderr}");

    // The holder stopped renewing long ago: its lease is taken over.
    let mut stale = kube.raw_get(&format!("{path}/{name}"));
    let long_ago = now - chrono::Duration::minutes(5);
    stale["spec"]["renewTime"] = Value::from(long_ago.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    let (code, body) = raw_request(
        &kube.cluster.url,
        "PUT",
        &format!("{path}/{name}"),
        None,
        Some(&stale.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let taken = kube.cli(&["gc"]);
    assert!(taken.status.success(), "{:?}", text(&taken));
    let holder = the_lease(&kube)["spec"]["holderIdentity"]
        .as_str()
        .expect("holder")
        .to_owned();
    assert!(!holder.starts_with("another-host/"), "{holder}");
}

#[test]
fn a_pod_lost_with_its_node_fails_the_try_as_retryable_and_the_retry_succeeds() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "klost",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"sleep-first\", ms = 60000 }\nretries = 1\nretry_delay = \"100ms\"\n",
    );
    let manifest = manifest.display().to_string();
    let running = Spawned::new(
        kube.command("127.0.0.1:0", &["run", &manifest, "--no-progress"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let pod = wait_for("the try's pod to run", CHILD_DEADLINE, || {
        kube.cluster.pod_tokens().into_keys().next()
    });
    // The node is lost: its pods are deleted (the pod GC's doing).
    let (code, body) = raw_request(
        &kube.cluster.url,
        "DELETE",
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let out = running.output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("klost");
    let tries = kube.tries(&run.run_id, "t");
    assert_eq!(tries.len(), 2, "{tries:?}");
    let error = tries[0].error.clone().unwrap_or_default();
    assert!(error.contains("pod lost"), "{error}");
    assert_eq!(tries[1].state.as_str(), "success");
}

#[test]
fn a_watch_expired_with_410_lists_again_and_still_sees_the_pod_fail() {
    let kube = Kube::new();
    // The first two watch requests (on Jobs and pods) are answered 410 Gone.
    kube.cluster.expire_watches(2);
    kube.cluster.inject(super::fake_api::Fault::OomKilled);
    let manifest = kube.home.manifest(
        "kgone",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(!out.status.success(), "{:?}", text(&out));
    assert_eq!(kube.cluster.watches_to_expire(), 0, "both 410s were served");
    assert_eq!(kube.cluster.relists(), 2, "each 410 was followed by a list");
    let run = kube.last_run("kgone");
    let tries = kube.tries(&run.run_id, "t");
    let error = tries[0].error.clone().unwrap_or_default();
    assert!(error.contains("out of memory"), "{error}");
}

/// Starts `sluice run` of `manifest` (tasks a, then b) listening on `listen`,
/// and returns once task b's pod runs (a's outcome is stored by then).
fn run_until_b_runs(kube: &Kube, manifest: &std::path::Path, listen: &str) -> Spawned {
    let manifest = manifest.display().to_string();
    let mut first = Spawned::new(
        kube.command(listen, &["run", &manifest, "--no-progress"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("task b's pod to run", CHILD_DEADLINE, || {
        if let Some(status) = first.exited() {
            panic!("sluice exited before it could be killed: {status}");
        }
        (kube.cluster.pod_tokens().len() == 2).then_some(())
    });
    first
}
