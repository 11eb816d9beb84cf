//! Case 10: the Kubernetes executor against the e2e suite's fake API server
//! (in this process), whose kubelet runs the real `sluice worker` for every
//! pod: `sluice run` of a DAG of independent no-op tasks (testkit `echo`)
//! through `--executor kubernetes`, over TLS. Printed: the API requests per
//! try (by kind), the host-side time per try from its Job's creation to its
//! outcome stored in the metadatabase, and the run's wall and host CPU time.
//!
//! What the fake cannot show (BENCHMARKS.md): real scheduling, image pulls,
//! pod start latency, volume attachment; its "pods" are local processes.

// The fake's fault injection and inspection serve the e2e tests only.
#[allow(dead_code)]
#[path = "../tests/e2e/kubernetes/fake_api.rs"]
mod fake_api;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::Sluice;
use sluice::executor::kubernetes::objects::job_name;

use crate::cases::{BenchOptions, BenchResult, measure_child, secs};

const NAMESPACE: &str = "pipelines";
const CA_CONFIG_MAP: &str = "sluice-endpoint-ca";

/// A CA and a certificate for 127.0.0.1 signed by it, with `openssl`.
fn certificates(dir: &Path) -> BenchResult<()> {
    let openssl = |args: &[&str]| -> BenchResult<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        if !out.status.success() {
            return Err(
                format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=sluice bench CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("tls.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "2",
        "-extfile", "tls.ext", "-out", "tls.crt",
    ])
}

/// The value at `share` (0..=1) of sorted `values`.
fn quantile(values: &[Duration], share: f64) -> Duration {
    let index = ((values.len() - 1) as f64 * share).round() as usize;
    values[index]
}

/// Case 10.
pub fn kube(options: &BenchOptions, work: &Path) -> BenchResult<()> {
    let tries = if options.smoke { 3 } else { options.kube_tries };
    let max_pods = 8;
    println!();
    println!(
        "10. Kubernetes executor, fake API server: {tries} no-op tries (testkit echo), each a Job whose pod is a real `sluice worker` process, TLS endpoint, --max-pods {max_pods}"
    );
    let dir = work.join("kube");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    certificates(&tls)?;
    let cluster = fake_api::FakeCluster::start(&dir.join("cluster"), &options.sluice_exe, None);
    let kubeconfig = dir.join("kubeconfig");
    cluster.kubeconfig(&kubeconfig, NAMESPACE);
    let ca = std::fs::read_to_string(tls.join("ca.crt"))?;
    cluster.create_config_map(NAMESPACE, CA_CONFIG_MAP, &[("ca.crt", &ca)]);

    let mut body = format!(
        "[dag]\nid = \"kube_noop\"\nplugin_dir = \"{}\"\nmax_active_tasks = {max_pods}\n",
        options.repo.join("plugins/dist").display()
    );
    for i in 0..tries {
        body.push_str(&format!(
            "[tasks.t{i}]\nplugin = \"testkit\"\nparams = {{ mode = \"echo\" }}\n"
        ));
    }
    let manifest = dir.join("dag.toml");
    std::fs::write(&manifest, body)?;
    let home = dir.join("home");
    let image = format!("registry.example/sluice:bench@sha256:{}", "c".repeat(64));
    let cost = measure_child(
        Command::new(&options.sluice_exe)
            .arg("--home")
            .arg(&home)
            .args(["--executor", "kubernetes", "--namespace", NAMESPACE])
            .args(["--image", &image, "--endpoint-listen", "127.0.0.1:0"])
            .arg("--endpoint-tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--endpoint-tls-key")
            .arg(tls.join("tls.key"))
            .args(["--endpoint-ca-configmap", CA_CONFIG_MAP])
            .args(["--max-pods", &max_pods.to_string()])
            .arg("run")
            .arg(&manifest)
            .arg("--no-progress")
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("SLUICE_HOME"),
    )?;

    let sluice = Sluice::open(&home)?;
    let run = sluice
        .store
        .runs(Some("kube_noop"), 1)?
        .pop()
        .ok_or("no run of kube_noop")?;
    if run.state.as_str() != "success" {
        return Err(format!("run {} ended {}", run.run_id, run.state.as_str()).into());
    }
    let created: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
        cluster.job_creations().into_iter().collect();
    let mut per_try = Vec::with_capacity(tries);
    for i in 0..tries {
        let task = format!("t{i}");
        for record in sluice.store.tries(&run.run_id, &task)? {
            let job = job_name(&run.run_id, &task, record.try_number);
            let start = created
                .get(&job)
                .ok_or(format!("no Job {job} was created"))?;
            let end = record.ended_at.ok_or(format!("try {job} has no end"))?;
            per_try.push((end - *start).to_std()?);
        }
    }
    per_try.sort();
    let count = per_try.len();
    let requests = cluster.requests();
    let total: u64 = requests.values().sum();
    println!(
        "    {count} tries in {} (wall), host (scheduler + endpoint) CPU {}: {:.1} ms of host CPU per try",
        secs(cost.wall),
        secs(cost.cpu),
        cost.cpu.as_secs_f64() * 1e3 / count as f64
    );
    println!(
        "    Job created -> outcome stored, per try: median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        quantile(&per_try, 0.5).as_secs_f64() * 1e3,
        quantile(&per_try, 0.9).as_secs_f64() * 1e3,
        quantile(&per_try, 1.0).as_secs_f64() * 1e3,
    );
    println!(
        "    API requests: {total} ({:.2} per try)",
        total as f64 / count as f64
    );
    for (kind, n) in &requests {
        println!(
            "      {kind:<36} {n:>6}  ({:.2} per try)",
            *n as f64 / count as f64
        );
    }
    println!("    most pods running at once: {}", cluster.most_running());
    Ok(())
}
