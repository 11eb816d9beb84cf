//! The connection parsers (Airflow URI and JSON forms) on arbitrary text: they
//! never panic; what `connections list` shows never holds a secret that the
//! input held only once; and redaction removes the secret wherever it appears.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::capabilities::Redactor;
use sluice::connections::{from_airflow_json, from_uri};

fuzz_target!(|input: (&str, &str)| {
    let (text, message) = input;
    for parsed in [from_uri("fuzz", text), from_airflow_json("fuzz", text)] {
        let Ok(connection) = parsed else { continue };
        let secret = connection.secret.as_str();
        if secret.len() >= 4 && text.matches(secret).count() == 1 {
            let shown = connection.config.describe();
            assert!(!shown.contains(secret), "{shown} shows {secret:?}");
        }
        // `***` itself cannot be redacted away; a secret of asterisks is not a finding.
        if !secret.is_empty() && !secret.contains('*') {
            let redactor = Redactor::for_connections(std::slice::from_ref(&connection));
            let leaked = format!("{message}{secret}{message}");
            let redacted = redactor.redact(&leaked);
            assert!(!redacted.contains(secret), "{redacted:?} holds {secret:?}");
        }
    }
});
