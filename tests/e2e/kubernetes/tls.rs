//! TLS on the worker endpoint: workers trust only the CA of the ConfigMap
//! mounted into their pods, the endpoint speaks nothing but TLS and serves a
//! renewed certificate without a restart, and the scheduler does not start
//! without a certificate unless told to serve plain HTTP.

use std::io::{Read, Write};
use std::process::Command;

use super::{Kube, NAMESPACE, image};
use crate::support::{CHILD_DEADLINE, output_within, text};

#[test]
fn a_worker_that_does_not_trust_the_endpoint_certificate_sends_it_nothing() {
    // The workers' ConfigMap holds a CA that did not sign the endpoint's certificate.
    let other = tempfile::tempdir().expect("dir");
    let wrong_ca = crate::pg::certificates_for_localhost(other.path());
    let kube = Kube::trusting(Some(&wrong_ca));
    let manifest = kube.home.manifest(
        "kwrongca",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(!out.status.success(), "{:?}", text(&out));
    let run = kube.last_run("kwrongca");
    let tries = kube.tries(&run.run_id, "t");
    assert_eq!(tries.len(), 1, "{tries:?}");
    let error = tries[0].error.clone().unwrap_or_default();
    assert!(error.contains("without reporting"), "{error}");
    // The worker says why in its pod's log: its CA did not sign the
    // certificate (the two test CAs share a name, so rustls finds the
    // issuer by name and its signature does not verify).
    let logs = kube.cluster.logs().join("\n");
    assert!(
        logs.contains("fetching the try") && logs.contains("invalid peer certificate"),
        "{logs}"
    );
    // And stopped at once: asking again cannot change the certificate.
    assert!(!logs.contains("trying again"), "{logs}");
    // It never sent its token: the scheduler reviewed none.
    let requests = kube.cluster.requests();
    assert_eq!(
        requests.get("POST tokenreviews"),
        None,
        "a token reached the endpoint: {requests:?}"
    );
}

#[test]
fn the_endpoint_speaks_only_tls_and_workers_are_told_its_ca() {
    let kube = Kube::new();
    let manifest = kube.home.manifest(
        "ktls",
        "[tasks.t]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
    );
    let out = kube.cli(&["run", &manifest.display().to_string(), "--no-progress"]);
    assert!(out.status.success(), "{:?}", text(&out));
    // Over TLS the worker fetched its try and reported (its token reviewed).
    let requests = kube.cluster.requests();
    assert!(
        requests.get("POST tokenreviews").is_some_and(|n| *n >= 2),
        "{requests:?}"
    );
    let job = kube.stored("Job").pop().expect("a Job");
    let pod = &job["spec"]["template"]["spec"];
    let args: Vec<String> =
        serde_json::from_value(pod["containers"][0]["args"].clone()).expect("args");
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert!(
        after("--endpoint").starts_with("https://127.0.0.1:"),
        "{args:?}"
    );
    assert_eq!(after("--endpoint-ca"), "/var/run/sluice-endpoint-ca/ca.crt");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "endpoint-ca")
        .expect("the CA volume");
    assert_eq!(volume["configMap"]["name"], super::CA_CONFIG_MAP);
    assert_eq!(volume["configMap"]["items"][0]["key"], "ca.crt");

    // A scheduler listening on a known port: plain HTTP gets no HTTP answer.
    let port = super::restart::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = kube.command(&listen, &["scheduler"]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let scheduler = crate::support::Spawned::new(&mut command);
    let answer = crate::support::wait_for("the endpoint to listen", CHILD_DEADLINE, || {
        let mut stream = std::net::TcpStream::connect(&listen).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        write!(stream, "GET /v1/try HTTP/1.0\r\nHost: {listen}\r\n\r\n").ok()?;
        let mut answer = Vec::new();
        // A TLS alert, or the connection closed; either way no HTTP.
        let _ = stream.read_to_end(&mut answer);
        Some(answer)
    });
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    let (code, body) =
        kube.endpoint_request(&format!("https://{listen}"), "GET", "/v1/try", None, None);
    assert_eq!(code, 401, "over TLS the endpoint answers: {body}");

    // The certificate is renewed in place (as the kubelet updates a mounted
    // Secret), by one from another CA: the next connection gets the new one.
    let renewed = tempfile::tempdir().expect("dir");
    let new_ca = crate::pg::certificates_for_localhost(renewed.path());
    for file in ["server.key", "server.crt"] {
        std::fs::copy(renewed.path().join(file), kube.ca.with_file_name(file)).expect("renew");
    }
    let base = format!("https://{listen}");
    let (code, body) = super::https_request(&new_ca, &base, "GET", "/v1/try", None, None)
        .expect("the renewed certificate is served");
    assert_eq!(code, 401, "{body}");
    let old = super::https_request(&kube.ca, &base, "GET", "/v1/try", None, None)
        .expect_err("the old certificate is no longer served");
    assert!(old.contains("invalid peer certificate"), "{old}");
    scheduler.kill();
}

#[test]
fn the_scheduler_needs_a_certificate_or_an_explicit_plain_http() {
    let kube = Kube::new();
    let sluice = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args([
                "--executor",
                "kubernetes",
                "--namespace",
                NAMESPACE,
                "--image",
                &image(),
                "--endpoint-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .args(["gc", "--dry-run"])
            .env("SLUICE_HOME", kube.home.home_path())
            .env("KUBECONFIG", kube.home.dir.path().join("kubeconfig"));
        output_within(&mut command, CHILD_DEADLINE)
    };
    let out = sluice(&[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--endpoint-tls-cert") && stderr.contains("--endpoint-plain-http"),
        "{stderr}"
    );
    let cert = kube.ca.with_file_name("server.crt");
    let key = kube.ca.with_file_name("server.key");
    let (cert, key) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    // TLS, but workers told to reach it over http://.
    let out = sluice(&[
        "--endpoint-tls-cert",
        cert,
        "--endpoint-tls-key",
        key,
        "--endpoint-url",
        "http://127.0.0.1:7443",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
    // A key that is not the certificate's: named at start.
    let out = sluice(&["--endpoint-tls-cert", cert, "--endpoint-tls-key", cert]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");
    // The operator's explicit choice of plain HTTP starts.
    let out = sluice(&["--endpoint-plain-http"]);
    assert!(out.status.success(), "{:?}", text(&out));
}
