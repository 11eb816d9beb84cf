//! Signed deployments: with the policy on, only versions signed by a trusted
//! key run; unsigned, untrusted and tampered signatures are refused.

use crate::support::{TestHome, text};

fn public_key(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("public key printed")
        .trim()
        .to_owned()
}

fn refused(home: &TestHome, what: &str) {
    let before = home
        .sluice
        .store
        .runs(Some("signed"), 100)
        .expect("runs")
        .len();
    let out = home.cli(&["run", "signed", "--no-progress"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{what}: ran anyway\n{stdout}");
    assert!(
        stderr.contains("is not signed by a trusted key"),
        "{what}: {stderr}"
    );
    assert_eq!(
        home.sluice
            .store
            .runs(Some("signed"), 100)
            .expect("runs")
            .len(),
        before,
        "{what}: a run was recorded"
    );
}

#[test]
fn only_versions_signed_by_a_trusted_key_run_when_the_policy_requires_it() {
    let home = TestHome::new();
    let path = home.manifest(
        "signed",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\" }\n",
    );
    let path = path.to_str().expect("utf-8");
    assert!(home.cli(&["deploy", path]).status.success());
    assert!(
        home.cli(&["run", "signed", "--no-progress"])
            .status
            .success(),
        "policy off: unsigned runs"
    );

    assert!(home.cli(&["trust", "require", "on"]).status.success());
    refused(&home, "unsigned");

    let (generated, _) = text(&home.cli(&["keys", "generate", "release"]));
    let release = public_key(&generated);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = sluice::trust::key_path(&home.home_path(), "release");
        assert_eq!(
            std::fs::metadata(key).expect("key").permissions().mode() & 0o777,
            0o600
        );
    }
    let out = home.cli(&["deploy", path, "--sign", "release"]);
    assert!(out.status.success(), "{:?}", text(&out));
    refused(&home, "signed by a key nobody trusts");

    assert!(
        home.cli(&["trust", "add", &release, "--name", "release"])
            .status
            .success()
    );
    let out = home.cli(&["run", "signed", "--no-progress"]);
    assert!(out.status.success(), "trusted signature: {:?}", text(&out));

    // One byte of the stored signature changed: refused.
    let version = home
        .sluice
        .store
        .current_version("signed")
        .expect("version")
        .digest;
    let (key, signature) = home
        .sluice
        .store
        .signatures("signed", &version)
        .expect("signatures")
        .remove(0);
    let mut bytes = hex::decode(&signature).expect("hex");
    bytes[10] ^= 0x01;
    home.sluice
        .store
        .add_signature("signed", &version, &key, &hex::encode(&bytes))
        .expect("tamper");
    refused(&home, "tampered signature");

    // Re-signing restores it; another version signed by an untrusted key is refused.
    assert!(
        home.cli(&["deploy", path, "--sign", "release"])
            .status
            .success()
    );
    assert!(
        home.cli(&["run", "signed", "--no-progress"])
            .status
            .success()
    );
    let (other, _) = text(&home.cli(&["keys", "generate", "intruder"]));
    assert!(!public_key(&other).is_empty());
    let changed = home.manifest(
        "signed",
        "[tasks.a]\nplugin = \"testkit\"\nparams = { mode = \"echo\", v = 2 }\n",
    );
    assert!(
        home.cli(&[
            "deploy",
            changed.to_str().expect("utf-8"),
            "--sign",
            "intruder"
        ])
        .status
        .success()
    );
    refused(&home, "new version signed by an untrusted key");
}
