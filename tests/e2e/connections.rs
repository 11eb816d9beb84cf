//! The connection vault: secrets encrypted at rest, never printed, rotation,
//! and clear refusals for a wrong or missing master key that change nothing.

use crate::support::{CHILD_DEADLINE, TestHome, output_within, text};

const SECRET: &str = "Pw-7f3c91d2e8-Unique";

fn cli_env(home: &TestHome, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .env("SLUICE_HOME", home.home_path())
        .env_remove("SLUICE_MASTER_KEY");
    for (k, v) in env {
        command.env(k, v);
    }
    output_within(&mut command, CHILD_DEADLINE)
}

fn all_text(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    format!("{stdout}{stderr}")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn connection_rows(home: &TestHome) -> Vec<(String, Vec<u8>)> {
    home.sluice
        .store
        .connections()
        .expect("rows")
        .into_iter()
        .map(|c| (c.id, c.secret.ciphertext))
        .collect()
}

#[test]
fn secrets_are_encrypted_at_rest_and_never_printed() {
    let home = TestHome::new();
    let uri = format!("postgresql://etl:{SECRET}@127.0.0.1:5432/warehouse?sslmode=disable");
    let mut outputs = vec![cli_env(
        &home,
        &["connections", "add", "etl_target", "--uri", &uri],
        &[],
    )];
    assert!(outputs[0].status.success(), "{}", all_text(&outputs[0]));
    outputs.push(cli_env(&home, &["connections", "list"], &[]));
    outputs.push(cli_env(&home, &["connections", "show", "etl_target"], &[]));
    let shown = all_text(&outputs[2]);
    assert!(
        shown.contains("host     127.0.0.1") && shown.contains("password ***"),
        "{shown}"
    );
    assert!(shown.contains("extra    sslmode=disable"), "{shown}");
    for out in &outputs {
        assert!(
            !all_text(out).contains(SECRET),
            "printed the secret: {}",
            all_text(out)
        );
    }
    assert!(
        !contains(&home.stored_bytes(), SECRET),
        "the secret is stored in the clear somewhere in the home"
    );

    // The host can still read it back.
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    let connection =
        sluice::connections::get(&home.sluice.store, &vault, "etl_target").expect("get");
    assert_eq!(connection.secret, SECRET);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.home_path().join("master.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Adding the same id again is refused; --replace overwrites.
    let again = cli_env(
        &home,
        &["connections", "add", "etl_target", "--uri", &uri],
        &[],
    );
    assert!(
        !again.status.success() && all_text(&again).contains("pass --replace"),
        "{}",
        all_text(&again)
    );
    let deleted = cli_env(&home, &["connections", "delete", "etl_target"], &[]);
    assert!(deleted.status.success());
    assert!(connection_rows(&home).is_empty());
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_changes_nothing() {
    let home = TestHome::new();
    let uri = format!("postgres://u:{SECRET}@h/db");
    assert!(
        cli_env(&home, &["connections", "add", "a", "--uri", &uri], &[])
            .status
            .success()
    );
    let before = connection_rows(&home);

    let other_key = "11".repeat(32);
    for args in [
        vec!["connections", "show", "a"],
        vec!["connections", "add", "b", "--uri", "postgres://u:p@h/db"],
    ] {
        let out = cli_env(&home, &args, &[("SLUICE_MASTER_KEY", &other_key)]);
        assert!(!out.status.success());
        assert!(
            all_text(&out).contains("is not the key the stored connections were encrypted with"),
            "{}",
            all_text(&out)
        );
    }
    let malformed = cli_env(
        &home,
        &["connections", "show", "a"],
        &[("SLUICE_MASTER_KEY", "not-hex")],
    );
    assert!(
        all_text(&malformed).contains("malformed"),
        "{}",
        all_text(&malformed)
    );
    assert_eq!(connection_rows(&home), before);

    let key_file = home.home_path().join("master.key");
    std::fs::rename(&key_file, home.home_path().join("elsewhere")).expect("move key away");
    let out = cli_env(
        &home,
        &["connections", "add", "c", "--uri", "postgres://u:p@h/db"],
        &[],
    );
    assert!(
        !out.status.success() && all_text(&out).contains("no master key"),
        "{}",
        all_text(&out)
    );
    assert!(
        !key_file.exists(),
        "no new key was made while connections exist"
    );
    assert_eq!(connection_rows(&home), before);
}

#[test]
fn rotation_re_encrypts_everything_under_a_new_key() {
    let home = TestHome::new();
    for id in ["one", "two"] {
        let out = cli_env(
            &home,
            &[
                "connections",
                "add",
                id,
                "--uri",
                &format!("postgres://u:{SECRET}{id}@h/db"),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", all_text(&out));
    }
    let old_key = std::fs::read_to_string(home.home_path().join("master.key")).expect("key");
    let before = connection_rows(&home);

    let out = cli_env(&home, &["connections", "rotate-key"], &[]);
    assert!(out.status.success(), "{}", all_text(&out));
    assert!(!all_text(&out).contains(SECRET));
    let new_key = std::fs::read_to_string(home.home_path().join("master.key")).expect("key");
    assert_ne!(old_key, new_key);
    let after = connection_rows(&home);
    assert_eq!(before.len(), after.len());
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(b, a)| b.0 == a.0 && b.1 != a.1),
        "every secret re-encrypted"
    );

    let stale = cli_env(
        &home,
        &["connections", "show", "one"],
        &[("SLUICE_MASTER_KEY", old_key.trim())],
    );
    assert!(
        !stale.status.success(),
        "the old key no longer opens the vault"
    );
    let vault =
        sluice::vault::Vault::open(&home.sluice.store, home.sluice.home.root()).expect("vault");
    for id in ["one", "two"] {
        assert_eq!(
            sluice::connections::get(&home.sluice.store, &vault, id)
                .expect("get")
                .secret,
            format!("{SECRET}{id}")
        );
    }
}

#[test]
fn airflow_connections_are_imported_from_the_environment() {
    let home = TestHome::new();
    let json = format!(
        r#"{{"conn_type": "postgres", "host": "db", "login": "etl", "password": "{SECRET}", "schema": "dw", "port": 5433}}"#
    );
    let out = cli_env(
        &home,
        &["connections", "import-airflow"],
        &[
            (
                "AIRFLOW_CONN_ETL_TARGET",
                &format!("postgresql://etl:{SECRET}@db:5432/dw?sslmode=require"),
            ),
            ("AIRFLOW_CONN_SNAPSHOT_SRC", &json),
            (
                "AIRFLOW_CONN_LAKE",
                "s3://AKID:lake-secret@lake?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000&path_style=true",
            ),
        ],
    );
    let printed = all_text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        !printed.contains(SECRET) && !printed.contains("lake-secret"),
        "{printed}"
    );
    let ids: Vec<String> = connection_rows(&home)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["etl_target", "lake", "snapshot_src"]);
    let shown = all_text(&cli_env(
        &home,
        &["connections", "show", "snapshot_src"],
        &[],
    ));
    assert!(
        shown.contains("port     5433") && shown.contains("database dw"),
        "{shown}"
    );
}
