//! The opt-in suite against a real cluster: with `SLUICE_TEST_KUBECONFIG`
//! set, the seed ETL runs there through the Kubernetes executor; without it
//! the suite is skipped (said on stderr), unless `SLUICE_REQUIRE_KUBE=1`, in
//! which case it fails. No cluster exists here: the skip and the failure are
//! checked by running this very test in a child test process.
//!
//! A real cluster needs (besides `SLUICE_TEST_KUBECONFIG`):
//! `SLUICE_TEST_KUBE_IMAGE` (the Sluice image, pinned by digest, built from
//! this tree), `SLUICE_TEST_KUBE_ENDPOINT_URL` (how the cluster's pods reach
//! this machine's worker endpoint, `https://`), `SLUICE_TEST_KUBE_TLS_CERT` and
//! `SLUICE_TEST_KUBE_TLS_KEY` (the endpoint's certificate for that name, whose
//! CA is in ConfigMap `SLUICE_TEST_KUBE_CA_CONFIGMAP`, default
//! `sluice-endpoint-ca`), `SLUICE_TEST_KUBE_PG_URI` (a PostgreSQL the pods
//! reach, whose user may create tables); optionally `SLUICE_TEST_KUBE_NAMESPACE`
//! (default `sluice-test`, with `deploy/kubernetes/` applied to it) and
//! `SLUICE_TEST_KUBE_ENDPOINT_LISTEN` (default `127.0.0.1:7443`, for a tunnel).

use std::collections::HashMap;
use std::process::Command;

use crate::support::{CHILD_DEADLINE, TestHome, output_within, text};

/// What a run against a real cluster needs, from the environment.
#[derive(Debug)]
struct RealCluster {
    kubeconfig: String,
    namespace: String,
    image: String,
    endpoint_url: String,
    endpoint_listen: String,
    tls_cert: String,
    tls_key: String,
    ca_config_map: String,
    pg_uri: String,
}

/// The real cluster `var` describes: none (skip) without
/// `SLUICE_TEST_KUBECONFIG`, an error when `SLUICE_REQUIRE_KUBE=1` asks for
/// one anyway or a variable it needs is missing.
fn real_cluster(var: impl Fn(&str) -> Option<String>) -> Result<Option<RealCluster>, String> {
    let required = var("SLUICE_REQUIRE_KUBE").as_deref() == Some("1");
    let Some(kubeconfig) = var("SLUICE_TEST_KUBECONFIG") else {
        return if required {
            Err("SLUICE_REQUIRE_KUBE=1 but SLUICE_TEST_KUBECONFIG is not set: there is no cluster to run the Kubernetes suite against".into())
        } else {
            Ok(None)
        };
    };
    let mut missing = Vec::new();
    let mut need = |name: &str| {
        var(name).unwrap_or_else(|| {
            missing.push(name.to_owned());
            String::new()
        })
    };
    let cluster = RealCluster {
        kubeconfig,
        image: need("SLUICE_TEST_KUBE_IMAGE"),
        endpoint_url: need("SLUICE_TEST_KUBE_ENDPOINT_URL"),
        tls_cert: need("SLUICE_TEST_KUBE_TLS_CERT"),
        tls_key: need("SLUICE_TEST_KUBE_TLS_KEY"),
        pg_uri: need("SLUICE_TEST_KUBE_PG_URI"),
        namespace: var("SLUICE_TEST_KUBE_NAMESPACE").unwrap_or_else(|| "sluice-test".into()),
        endpoint_listen: var("SLUICE_TEST_KUBE_ENDPOINT_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:7443".into()),
        ca_config_map: var("SLUICE_TEST_KUBE_CA_CONFIGMAP")
            .unwrap_or_else(|| "sluice-endpoint-ca".into()),
    };
    if missing.is_empty() {
        Ok(Some(cluster))
    } else {
        Err(format!(
            "SLUICE_TEST_KUBECONFIG is set, but the real-cluster suite also needs {} (see tests/e2e/kubernetes/real_cluster.rs)",
            missing.join(", ")
        ))
    }
}

#[test]
fn the_seed_etl_runs_on_a_real_cluster() {
    let cluster = match real_cluster(|name| std::env::var(name).ok()) {
        Ok(Some(cluster)) => cluster,
        Ok(None) => {
            eprintln!(
                "skipped: no real cluster (set SLUICE_TEST_KUBECONFIG; SLUICE_REQUIRE_KUBE=1 makes this a failure)"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let home = TestHome::new();
    let add = home.cli(&["connections", "add", "etl_target", "--uri", &cluster.pg_uri]);
    assert!(add.status.success(), "{:?}", text(&add));
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "--executor",
                "kubernetes",
                "--namespace",
                &cluster.namespace,
            ])
            .args(["--image", &cluster.image])
            .args(["--endpoint-listen", &cluster.endpoint_listen])
            .args(["--endpoint-url", &cluster.endpoint_url])
            .args(["--endpoint-tls-cert", &cluster.tls_cert])
            .args(["--endpoint-tls-key", &cluster.tls_key])
            .args(["--endpoint-ca-configmap", &cluster.ca_config_map])
            .args(["run", "examples/etl_duckdb", "--param", "rows=100000"])
            .arg("--no-progress")
            .env("SLUICE_HOME", home.home_path())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .current_dir(crate::support::repo_root()),
        // Image pulls and pod starts on a real cluster.
        CHILD_DEADLINE * 4,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let runs = home.sluice.store.runs(Some("etl_duckdb"), 1).expect("runs");
    let run = runs.first().expect("a run");
    assert_eq!(run.state.as_str(), "success");
    let load = home.log_text(&run.run_id, "load");
    assert!(load.contains("loaded 50 rows"), "{load}");
    let password = url::Url::parse(&cluster.pg_uri)
        .ok()
        .and_then(|u| u.password().map(str::to_owned));
    if let Some(password) = password {
        for task in ["extract", "transform", "load"] {
            assert!(!home.log_text(&run.run_id, task).contains(&password));
        }
    }
}

/// This module's real-cluster test, run in a child test process with `env`.
fn run_real_cluster_test(env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "kubernetes::real_cluster::the_seed_etl_runs_on_a_real_cluster",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env_remove("SLUICE_TEST_KUBECONFIG")
        .env_remove("SLUICE_REQUIRE_KUBE")
        .envs(env.iter().copied());
    let out = output_within(&mut command, CHILD_DEADLINE);
    let (stdout, stderr) = text(&out);
    (out.status.success(), format!("{stdout}\n{stderr}"))
}

#[test]
fn without_a_cluster_the_suite_skips_unless_one_is_required() {
    let (passed, said) = run_real_cluster_test(&[]);
    assert!(passed, "{said}");
    assert!(said.contains("skipped: no real cluster"), "{said}");
    assert!(said.contains("1 passed"), "the test ran: {said}");

    let (passed, said) = run_real_cluster_test(&[("SLUICE_REQUIRE_KUBE", "1")]);
    assert!(!passed, "{said}");
    assert!(
        said.contains("SLUICE_REQUIRE_KUBE=1 but SLUICE_TEST_KUBECONFIG is not set"),
        "{said}"
    );

    // A kubeconfig alone is not enough: the failure names what else it needs.
    let (passed, said) =
        run_real_cluster_test(&[("SLUICE_TEST_KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert!(!passed, "{said}");
    assert!(
        said.contains("SLUICE_TEST_KUBE_IMAGE") && said.contains("SLUICE_TEST_KUBE_PG_URI"),
        "{said}"
    );
}

#[test]
fn the_real_cluster_settings_come_from_the_environment() {
    let env = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        real_cluster(move |name| map.get(name).cloned())
    };
    assert!(env(&[]).expect("no cluster").is_none());
    assert!(
        env(&[("SLUICE_REQUIRE_KUBE", "0")])
            .expect("no cluster")
            .is_none()
    );
    let cluster = env(&[
        ("SLUICE_TEST_KUBECONFIG", "/k"),
        ("SLUICE_TEST_KUBE_IMAGE", "r/sluice@sha256:00"),
        ("SLUICE_TEST_KUBE_ENDPOINT_URL", "https://host.example:7443"),
        ("SLUICE_TEST_KUBE_TLS_CERT", "/c"),
        ("SLUICE_TEST_KUBE_TLS_KEY", "/k"),
        ("SLUICE_TEST_KUBE_PG_URI", "postgres://u:p@db/x"),
    ])
    .expect("complete")
    .expect("a cluster");
    assert_eq!(cluster.namespace, "sluice-test");
    assert_eq!(cluster.endpoint_listen, "127.0.0.1:7443");
    assert_eq!(cluster.ca_config_map, "sluice-endpoint-ca");
}
