//! The fake API server's wire format against an independent client: the
//! official Python `kubernetes` client (pinned in `.ci/run`, in a virtual
//! environment under `~/.cache/sluice`) makes every kind of call the
//! executor makes (`python_client.py`: server-side apply, create with a 409,
//! get, list with a label selector and its resourceVersion, watch from it and
//! a 410 Gone, pod logs, TokenReview, Lease replace with a stale
//! resourceVersion refused, deletes cascading through ownerReferences) and
//! deserializes every answer into its own models, which check required
//! fields and types. A format mistake the fake shares with kube and
//! k8s-openapi fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::NAMESPACE;
use super::fake_api::FakeCluster;
use crate::support::{CHILD_DEADLINE, output_within, text};

/// The version `.ci/run` installs.
const CLIENT_VERSION: &str = "37.0.2";

/// The Python with the pinned client: `$SLUICE_KUBERNETES_PY`, else the
/// virtual environment `.ci/run` makes.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SLUICE_KUBERNETES_PY") {
        return PathBuf::from(python);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    Path::new(&home)
        .join(".cache/sluice")
        .join(format!("kubernetes-py-{CLIENT_VERSION}"))
        .join("bin/python")
}

#[test]
fn the_python_kubernetes_client_reads_every_answer_of_the_fake() {
    let dir = tempfile::tempdir().expect("dir");
    let cluster = FakeCluster::start(
        dir.path(),
        Path::new(env!("CARGO_BIN_EXE_sluice")),
        Some(super::deploy_files::granted()),
    );
    cluster.add_token("pycheck-token", "pycheck-pod", "uid-pycheck", true);
    // The script's first watch (it has a timeout, so the client does not
    // retry it) is answered 410 Gone.
    cluster.expire_watches(1);
    let python = python();
    assert!(
        python.is_file(),
        "the Python kubernetes client {CLIENT_VERSION} is not installed at {} (.ci/run installs it; or set SLUICE_KUBERNETES_PY)",
        python.display()
    );
    let script = crate::support::repo_root().join("tests/e2e/kubernetes/python_client.py");
    let out = output_within(
        Command::new(&python).arg(&script).args([
            cluster.url.as_str(),
            NAMESPACE,
            "pycheck-token",
            "pycheck-pod",
        ]),
        CHILD_DEADLINE,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("ok: kubernetes {CLIENT_VERSION}")),
        "{stdout}\n{stderr}"
    );
    assert_eq!(cluster.watches_to_expire(), 0, "the 410 was served");
}
