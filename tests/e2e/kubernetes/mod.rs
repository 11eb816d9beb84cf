//! The Kubernetes executor against the in-test fake API server
//! ([`fake_api`]), whose kubelet really runs `sluice worker` for each Job:
//! the seed ETL loads into the test PostgreSQL with the password in no object
//! and no log; a flaky task is retried as a new Job; the worker endpoint
//! refuses tokens that are not a live try's pod's (and acknowledges a
//! repeated identical outcome report); pod statuses decide tries whose worker
//! could not report. [`restart`]: the lease, adoption after the scheduler is
//! killed, a lost pod. [`limits`]: quota refusals, the volumes' sweep.
//! [`tls`]: the endpoint speaks TLS only, and a worker that does not trust
//! its certificate sends it nothing. [`real_cluster`]: the opt-in suite.
//! [`python_client`]: the fake's answers read by the Python `kubernetes`
//! client.
//! [`deploy_files`]: `deploy/kubernetes/` parses and its Role grants what the
//! executor calls (the fake refuses the scheduler whatever it does not).

mod deploy_files;
mod fake_api;
mod limits;
mod python_client;
mod real_cluster;
mod restart;
mod tls;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::pg::{self, PASSWORD, TASK_ROLE};
use crate::support::{CHILD_DEADLINE, Spawned, TestHome, output_within, text, wait_for};
use fake_api::{FakeCluster, Fault};

const NAMESPACE: &str = "pipelines";

fn image() -> String {
    format!("registry.example/sluice:test@sha256:{}", "c".repeat(64))
}

/// The ConfigMap holding the CA workers trust for the endpoint (the
/// operator's, made by the test; not an object of the executor's).
const CA_CONFIG_MAP: &str = "sluice-endpoint-ca";

/// A home, a fake cluster and a kubeconfig for it, and the worker
/// endpoint's TLS certificate (for 127.0.0.1) whose CA is in the
/// [`CA_CONFIG_MAP`] workers mount.
struct Kube {
    home: TestHome,
    cluster: FakeCluster,
    /// The endpoint's CA (PEM file).
    ca: std::path::PathBuf,
}

impl Kube {
    fn new() -> Self {
        Self::trusting(None)
    }

    /// A fake cluster whose workers trust `worker_ca` (a PEM file) instead
    /// of the CA of the endpoint's certificate.
    fn trusting(worker_ca: Option<&Path>) -> Self {
        let home = TestHome::new();
        let cluster = FakeCluster::start(
            &home.dir.path().join("cluster"),
            Path::new(env!("CARGO_BIN_EXE_sluice")),
            Some(deploy_files::granted()),
        );
        cluster.kubeconfig(&home.dir.path().join("kubeconfig"), NAMESPACE);
        let tls = home.dir.path().join("endpoint-tls");
        std::fs::create_dir_all(&tls).expect("tls dir");
        let ca = crate::pg::certificates_for_localhost(&tls);
        let trusted = std::fs::read_to_string(worker_ca.unwrap_or(&ca)).expect("CA");
        cluster.create_config_map(NAMESPACE, CA_CONFIG_MAP, &[("ca.crt", &trusted)]);
        Self { home, cluster, ca }
    }

    /// The `sluice` CLI with `--executor kubernetes` against the fake.
    fn cli(&self, args: &[&str]) -> Output {
        output_within(&mut self.command("127.0.0.1:0", args), CHILD_DEADLINE)
    }

    /// A `sluice` command with `--executor kubernetes` against the fake, its
    /// worker endpoint listening on `listen`.
    fn command(&self, listen: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args([
                "--executor",
                "kubernetes",
                "--namespace",
                NAMESPACE,
                "--image",
                &image(),
            ])
            .args(["--endpoint-listen", listen])
            .arg("--endpoint-tls-cert")
            .arg(self.ca.with_file_name("server.crt"))
            .arg("--endpoint-tls-key")
            .arg(self.ca.with_file_name("server.key"))
            .args(["--endpoint-ca-configmap", CA_CONFIG_MAP])
            .args(args)
            .env("SLUICE_HOME", self.home.home_path())
            .env("KUBECONFIG", self.home.dir.path().join("kubeconfig"))
            .current_dir(crate::support::repo_root());
        command
    }

    /// The number of live objects of `resource` (its collection path),
    /// but for the operator's [`CA_CONFIG_MAP`].
    fn live(&self, collection: &str) -> usize {
        self.raw_get(collection)["items"]
            .as_array()
            .map_or(0, |items| items.iter().filter(|o| !operators(o)).count())
    }

    /// `GET path` through a plain HTTP/1.0 client of the test's own (not the
    /// executor's client), as JSON.
    fn raw_get(&self, path: &str) -> Value {
        let (code, body) = raw_http(&self.cluster.url, path, None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// `method path` at the worker endpoint `base` over TLS trusting the
    /// endpoint's CA only, with an optional bearer token and JSON body: the
    /// status code and the body.
    fn endpoint_request(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        https_request(&self.ca, base, method, path, token, body)
            .unwrap_or_else(|e| panic!("the endpoint at {base} does not answer: {e}"))
    }

    /// The newest run of DAG `dag`.
    fn last_run(&self, dag: &str) -> sluice_core::store::RunRecord {
        let mut runs = self.home.sluice.store.runs(Some(dag), 1).expect("runs");
        assert_eq!(runs.len(), 1, "no run of {dag}");
        runs.remove(0)
    }

    /// The tries of task `task` of run `run_id`, first first.
    fn tries(&self, run_id: &str, task: &str) -> Vec<sluice_core::store::TryRecord> {
        self.home.sluice.store.tries(run_id, task).expect("tries")
    }

    /// The objects of `kind` ever stored, but for the operator's
    /// [`CA_CONFIG_MAP`].
    fn stored(&self, kind: &str) -> Vec<Value> {
        self.raw_get("/fake/audit")
            .as_array()
            .expect("audit")
            .iter()
            .filter(|o| o["kind"] == kind && !operators(o))
            .cloned()
            .collect()
    }
}

/// Whether `object` is the operator's CA ConfigMap the test made.
fn operators(object: &Value) -> bool {
    object["kind"] == "ConfigMap" && object["metadata"]["name"] == CA_CONFIG_MAP
}

/// `method path` at `base` (an `https://` URL) trusting only the CA
/// certificate in `ca`, with an optional bearer token and JSON body: the
/// status code and the body, or the error (a refused certificate among them).
fn https_request(
    ca: &Path,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let pem = std::fs::read(ca).expect("CA");
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA certificate")])
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    })?;
    let code = response.status().as_u16();
    Ok((code, response.text().expect("body")))
}

/// `GET path` at `base` (an `http://` URL) over a bare TCP stream, with an
/// optional bearer token: the status code and the body.
fn raw_http(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    raw_request(base, "GET", path, token, None)
}

/// `method path` at `base` over a bare TCP stream, with an optional bearer
/// token and JSON body: the status code and the body.
fn raw_request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let content = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{auth}{content}\r\n{}",
        body.unwrap_or_default()
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

#[test]
fn the_seed_etl_runs_as_jobs_and_no_secret_enters_the_cluster() {
    let kube = Kube::new();
    let server = pg::server();
    // A database of this test's own: the example's table name is fixed.
    let database = format!("kube_etl_{}", std::process::id());
    server.psql(&format!("CREATE DATABASE {database} OWNER {TASK_ROLE}"));
    let uri = server.uri().replace("/postgres", &format!("/{database}"));
    let add = kube
        .home
        .cli(&["connections", "add", "etl_target", "--uri", &uri]);
    assert!(add.status.success(), "{:?}", text(&add));

    let out = kube.cli(&[
        "run",
        "examples/etl_duckdb",
        "--param",
        "rows=100000",
        "--no-progress",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run = kube.last_run("etl_duckdb");
    assert_eq!(run.state.as_str(), "success");

    // The aggregate in Postgres equals DuckDB's over the raw rows the extract
    // task wrote on the run's volume (the fake maps the claim to a directory).
    let claims = kube.stored("PersistentVolumeClaim");
    assert_eq!(claims.len(), 1, "one volume for the run");
    let claim = claims[0]["metadata"]["name"].as_str().expect("claim name");
    let raw = kube
        .cluster
        .claim_dir(claim)
        .join("staging")
        .join("raw.parquet");
    let expected: String = duckdb::Connection::open_in_memory()
        .expect("duckdb")
        .query_row(
            &format!(
                "SELECT sum(amount)::VARCHAR FROM read_parquet('{}')",
                raw.display()
            ),
            [],
            |r| r.get(0),
        )
        .expect("total");
    let in_pg = |sql: &str| {
        let out = output_within(
            Command::new(pg::bin_dir().join("psql")).args([
                "-At",
                "-d",
                &uri.replace("postgresql://", "postgres://"),
                "-c",
                sql,
            ]),
            CHILD_DEADLINE,
        );
        text(&out).0.trim().to_owned()
    };
    assert_eq!(
        in_pg("SELECT count(*), sum(n) FROM category_revenue"),
        "50|100000"
    );
    assert_eq!(in_pg("SELECT sum(revenue) FROM category_revenue"), expected);

    // What the executor stored, read back through the test's own client.
    let audit = kube.raw_get("/fake/audit");
    let all = audit.to_string();
    assert!(
        !all.contains(PASSWORD),
        "the password is in an object the cluster stored"
    );
    assert!(
        !all.to_lowercase().contains("password"),
        "a password field in a stored object"
    );
    for token in kube.cluster.pod_tokens().values() {
        assert!(
            !all.contains(token.as_str()),
            "a pod's token is in a stored object"
        );
    }
    assert!(kube.stored("Secret").is_empty(), "no Secret object");
    for pod in kube.stored("Pod") {
        for container in pod["spec"]["containers"].as_array().expect("containers") {
            assert!(
                container["env"].is_null() && container["envFrom"].is_null(),
                "{container}"
            );
        }
    }
    for log in kube.cluster.logs() {
        assert!(!log.contains(PASSWORD), "the password is in a pod log");
    }
    assert!(!kube.home.log_text(&run.run_id, "load").contains(PASSWORD));

    // A figure for BENCHMARKS.md, printed, not asserted.
    let requests = kube.cluster.requests();
    let total: u64 = requests.values().sum();
    eprintln!(
        "API requests for 3 tries: {total} ({:.1} per try): {requests:?}",
        total as f64 / 3.0
    );

    let anchors = kube.stored("ConfigMap");
    assert_eq!(anchors.len(), 1);
    let anchor_uid = anchors[0]["metadata"]["uid"].as_str().expect("uid");
    assert!(anchors[0]["data"].is_null(), "the anchor holds nothing");
    assert_eq!(
        claims[0]["metadata"]["ownerReferences"][0]["uid"],
        anchor_uid
    );
    let jobs = kube.stored("Job");
    assert_eq!(jobs.len(), 3, "a Job per try");
    assert_eq!(kube.cluster.job_creations().len(), 3, "each created once");
    let headroom = 256u64 << 20;
    let memory = (256u64 << 20) + (4u64 << 30) + headroom;
    for job in &jobs {
        let labels = &job["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice");
        assert_eq!(labels["sluice.dev/dag"], "etl_duckdb");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], anchor_uid);
        let spec = &job["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 30 * 60 + 300);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let container = &pod["containers"][0];
        assert_eq!(container["image"], image().as_str());
        assert!(container["env"].is_null());
        assert_eq!(
            container["resources"]["requests"]["memory"],
            memory.to_string()
        );
        assert_eq!(
            container["resources"]["limits"]["memory"],
            memory.to_string()
        );
        let args = container["args"].to_string();
        assert!(args.contains(&run.run_id), "{args}");
    }
    // The run has ended: its Jobs are gone (their outcomes and logs stored),
    // and, since it succeeded, its anchor and volume.
    for resource in [
        "/apis/batch/v1/namespaces/pipelines/jobs",
        "/api/v1/namespaces/pipelines/persistentvolumeclaims",
        "/api/v1/namespaces/pipelines/configmaps",
    ] {
        assert_eq!(kube.live(resource), 0, "{}", kube.raw_get(resource));
    }
    assert!(
        kube.home
            .log_text(&run.run_id, "load")
            .contains("loaded 50 rows")
    );
}

#[test]
fn a_flaky_task_is_retried_as_a_new_job_and_succeeds() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kflaky",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"flaky\", succeed_on = 2 }\nretries = 2\nretry_delay = \"100ms\"\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("kflaky");
    let tries = kube.tries(&run.run_id, "t");
    assert_eq!(tries.len(), 2);
    assert_eq!(kube.stored("Job").len(), 2, "one Job per try");
}

#[test]
fn pod_statuses_decide_tries_whose_worker_could_not_report() {
    let kube = Kube::new();
    let manifest = |name: &str, retries: u32| {
        kube.home
            .manifest(name, &format!("[tasks.t]\nplugin = \"testkit\"\nparams = {{ mode = \"echo\" }}\nretries = {retries}\nretry_delay = \"100ms\"\n"))
            .display()
            .to_string()
    };
    let error_of = |dag: &str| {
        let run = kube.last_run(dag);
        let tries = kube.tries(&run.run_id, "t");
        (run.state.as_str().to_owned(), tries)
    };

    // An image that cannot be pulled fails at once, naming it, with no retry spent.
    kube.cluster.inject(Fault::ImagePull);
    let out = kube.cli(&["run", &manifest("kpull", 2), "--no-progress"]);
    assert!(!out.status.success());
    let (state, tries) = error_of("kpull");
    assert_eq!(state, "failed");
    assert_eq!(
        tries.len(),
        1,
        "no retry for an image that cannot be pulled"
    );
    let error = tries[0].error.clone().unwrap_or_default();
    assert!(
        error.contains(&image()) && error.contains("ImagePullBackOff"),
        "{error}"
    );
    // A failed run keeps its volume (for `clear`); its Job is gone.
    let claims = kube.raw_get(&format!(
        "/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"
    ));
    assert_eq!(
        claims["items"].as_array().map(Vec::len),
        Some(1),
        "{claims}"
    );
    let jobs = kube.raw_get(&format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs"));
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(0), "{jobs}");

    // OOMKilled names the limit to raise.
    kube.cluster.inject(Fault::OomKilled);
    let out = kube.cli(&["run", &manifest("koom", 0), "--no-progress"]);
    assert!(!out.status.success());
    let (_, tries) = error_of("koom");
    let error = tries[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("out of memory") && error.contains("duckdb_memory"),
        "{error}"
    );

    // An evicted pod is replaced by the Job and the try succeeds on the new pod.
    kube.cluster.inject(Fault::Evicted);
    let out = kube.cli(&["run", &manifest("kevict", 0), "--no-progress"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (state, tries) = error_of("kevict");
    assert_eq!((state.as_str(), tries.len()), ("success", 1));
}

#[test]
fn the_worker_endpoint_serves_only_the_bound_pod_of_a_live_try() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "ksleep",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n\n\
         [tasks.b]\nplugin = \"testkit\"\nafter = [\"a\"]\nparams = { mode = \"sleep\", ms = 4000 }\n",
    );
    let manifest = manifest.display().to_string();
    let mut command = kube.command("127.0.0.1:0", &["run", &manifest, "--no-progress"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let running = Spawned::new(&mut command);
    // Task b's pod is running (so a's try has ended).
    let tokens = wait_for("task b's pod to run", CHILD_DEADLINE, || {
        let tokens = kube.cluster.pod_tokens();
        (tokens.len() == 2).then_some(tokens)
    });
    let pod_of = |task: &str| {
        tokens
            .iter()
            .find(|(pod, _)| pod.starts_with(&format!("sluice-{task}-")))
            .map(|(pod, token)| (pod.clone(), token.clone()))
            .expect("a pod of the task")
    };
    let (pod, token) = pod_of("b");
    let (_, ended_token) = pod_of("a");
    let job = kube
        .stored("Job")
        .into_iter()
        .find(|j| j["metadata"]["labels"]["sluice.dev/task"] == "b")
        .expect("b's Job");

    let args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .expect("args");
    let endpoint = args
        .iter()
        .position(|a| a == "--endpoint")
        .and_then(|i| args.get(i + 1))
        .expect("--endpoint")
        .clone();
    let live_uid = kube.raw_get(&format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}"))["metadata"]
        ["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    // Its own token is served.
    let (code, body) = kube.endpoint_request(&endpoint, "GET", "/v1/try", Some(&token), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"task_id\":\"b\""), "{body}");
    // The token of task a's pod: its try has ended.
    let (code, body) = kube.endpoint_request(&endpoint, "GET", "/v1/try", Some(&ended_token), None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("has ended"), "{body}");
    // No token, an unknown one, an expired one, and one of an earlier pod of the same name.
    let (code, _) = kube.endpoint_request(&endpoint, "GET", "/v1/try", None, None);
    assert_eq!(code, 401);
    let (code, body) =
        kube.endpoint_request(&endpoint, "GET", "/v1/try", Some("not-a-token"), None);
    assert_eq!(code, 403, "{body}");
    kube.cluster.add_token("expired", &pod, &live_uid, false);
    let (code, body) = kube.endpoint_request(&endpoint, "GET", "/v1/try", Some("expired"), None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("expired"), "{body}");
    kube.cluster
        .add_token("earlier", &pod, "uid-of-an-earlier-pod", true);
    let (code, body) =
        kube.endpoint_request(&endpoint, "GET", "/v1/component", Some("earlier"), None);
    assert_eq!(code, 403, "{body}");
    // Another pod's token: a pod that runs no try of this scheduler.
    kube.cluster
        .add_token("stranger", "some-other-pod", "uid-0", true);
    let (code, body) = kube.endpoint_request(&endpoint, "GET", "/v1/try", Some("stranger"), None);
    assert_eq!(code, 403, "{body}");

    // Task a's worker repeats the outcome it reported (as it would had the
    // acknowledgement been lost): acknowledged again. Another outcome is not.
    let run = kube.last_run("ksleep");
    let output = kube.home.task(&run.run_id, "a").output.expect("a's output");
    let same = serde_json::json!({"Success": {"output": output}}).to_string();
    let (code, body) = kube.endpoint_request(
        &endpoint,
        "POST",
        "/v1/outcome",
        Some(&ended_token),
        Some(&same),
    );
    assert_eq!(code, 204, "{body}");
    let other = serde_json::json!({"Failed": {"error": "forged", "retryable": true}}).to_string();
    let (code, body) = kube.endpoint_request(
        &endpoint,
        "POST",
        "/v1/outcome",
        Some(&ended_token),
        Some(&other),
    );
    assert_eq!(code, 409, "{body}");
    // A pod of no try may not report at all.
    let (code, body) = kube.endpoint_request(
        &endpoint,
        "POST",
        "/v1/outcome",
        Some("stranger"),
        Some(&same),
    );
    assert_eq!(code, 403, "{body}");

    let out = running.output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn a_python_task_runs_in_a_pod_on_the_runtime_it_fetches() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "kpython",
        "[tasks.extract]\nplugin = \"etl-extract-py\"\nparams = { rows = 1000 }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("kpython");
    assert_eq!(run.state.as_str(), "success");
    assert_eq!(
        kube.home.output(&run.run_id, "extract"),
        serde_json::json!({ "rows": 1000, "file": "raw.parquet" })
    );
    // The pod's home received the task's package and the runtime the host
    // runs for its key (fetched from the endpoint, each checked against its
    // digest), and records that runtime for the key.
    let version = kube
        .home
        .sluice
        .store
        .version("kpython", &run.version)
        .expect("version");
    let package = &version.spec.tasks[0].component;
    let bytes = std::fs::read(kube.home.sluice.home.blob(package)).expect("package");
    let key = sluice::python_package::PythonPackage::parse(&bytes)
        .expect("a Python task")
        .runtime_key;
    let runtime = kube
        .home
        .sluice
        .home
        .python_runtime(&key)
        .expect("record")
        .expect("a runtime recorded for the key");
    let claims = kube.stored("PersistentVolumeClaim");
    let claim = claims[0]["metadata"]["name"].as_str().expect("claim name");
    let worker_home = kube.cluster.claim_dir(claim).join("worker-home");
    let blobs = worker_home.join("blobs/sha256");
    for digest in [package, &runtime] {
        assert!(blobs.join(digest).is_file(), "{digest} not in {blobs:?}");
    }
    let worker_home = sluice::home::Home::open(&worker_home).expect("the pod's home");
    assert_eq!(
        worker_home.python_runtime(&key).expect("record"),
        Some(runtime)
    );
}
