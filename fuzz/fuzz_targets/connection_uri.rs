//! The connection parsers and redaction. A URI is built from fuzzed parts with
//! the password percent-encoded as a user would: when it parses, the secret is
//! exactly that password, and what `connections list` shows (or stores in the
//! clear) never holds it, unless the same text shows up without the password
//! too (a password equal to the host, the default region, ...). Raw text
//! through the URI and Airflow JSON parsers never panics, and a message with
//! the secret embedded anywhere comes out of redaction without it.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sluice::capabilities::Redactor;
use sluice::connections::{Connection, from_airflow_json, from_uri};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    s3: bool,
    user: &'a str,
    password: &'a str,
    host: &'a str,
    query: &'a str,
    raw: &'a str,
    message: &'a str,
}

fn uri(input: &Input<'_>, password: &str) -> String {
    let scheme = if input.s3 { "s3" } else { "postgresql" };
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!(
        "{scheme}://{}:{}@{}/db?{}",
        encode(input.user),
        encode(password),
        input.host,
        input.query
    )
}

fn check_redaction(connection: &Connection, message: &str) {
    let secret = connection.secret.as_str();
    // `***` itself cannot be redacted away; a secret of asterisks is not a finding.
    if secret.is_empty() || secret.contains('*') {
        return;
    }
    let redactor = Redactor::for_connections(std::slice::from_ref(connection));
    let redacted = redactor.redact(&format!("{message}{secret}{message}"));
    assert!(!redacted.contains(secret), "{redacted:?} holds {secret:?}");
}

fuzz_target!(|input: Input<'_>| {
    // A host name as a user would write one; other characters change where the
    // URI's parts begin and end, which is the URL syntax, not our parser.
    let plain_host = !input.host.is_empty()
        && input
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let parsed = if plain_host {
        from_uri("fuzz", &uri(&input, input.password)).ok()
    } else {
        None
    };
    if let Some(connection) = parsed {
        if !input.password.is_empty() {
            assert_eq!(connection.secret, input.password, "{input:?}");
        }
        let shown = [
            connection.config.describe(),
            serde_json::to_string(&connection.config).unwrap_or_default(),
        ];
        let without = from_uri("fuzz", &uri(&input, "p")).ok();
        let shown_without = without
            .map(|c| {
                [
                    c.config.describe(),
                    serde_json::to_string(&c.config).unwrap_or_default(),
                ]
            })
            .unwrap_or_default();
        let secret = connection.secret.as_str();
        if secret.len() >= 4 && !shown_without.iter().any(|s| s.contains(secret)) {
            for s in &shown {
                assert!(!s.contains(secret), "{s} shows {secret:?}");
            }
        }
        check_redaction(&connection, input.message);
    }
    for parsed in [
        from_uri("fuzz", input.raw),
        from_airflow_json("fuzz", input.raw),
    ] {
        if let Ok(connection) = parsed {
            check_redaction(&connection, input.message);
        }
    }
});
