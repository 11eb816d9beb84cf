//! The secret redactor: every message that leaves the host for a task, a log
//! or a user has the granted connections' secrets replaced by `***`.

use crate::connections::Connection;

/// Replaces every secret of the granted connections with `***`.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for the secrets of `connections` (and their URL-encoded forms).
    pub fn for_connections(connections: &[Connection]) -> Self {
        let mut secrets: Vec<String> = Vec::new();
        for c in connections.iter().filter(|c| !c.secret.is_empty()) {
            secrets.push(c.secret.clone());
            let encoded: String =
                url::form_urlencoded::byte_serialize(c.secret.as_bytes()).collect();
            if encoded != c.secret {
                secrets.push(encoded);
            }
        }
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    /// `error` (its whole chain, as its message shows it) with every secret
    /// replaced. The error itself is not kept: its text may hold a secret.
    pub fn redacted(&self, error: &dyn std::fmt::Display) -> Redacted {
        Redacted {
            message: self.redact(&error.to_string()),
        }
    }
}

/// An error whose message had its secrets replaced. It carries no source on
/// purpose: the cause's own text is what held the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Redacted {
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::ConnectionConfig;

    #[test]
    fn redaction_covers_plain_and_url_encoded_secrets() {
        let c = Connection {
            id: "pg".into(),
            config: ConnectionConfig::new(
                "postgres",
                &serde_json::json!({"host": "h", "port": 5432, "database": "d", "user": "u", "extras": {}}),
            )
            .expect("an object"),
            secret: "p@ss word".into(),
            allow_privileged: false,
        };
        let r = Redactor::for_connections(&[c]);
        assert_eq!(
            r.redact("pw=p@ss word uri=postgres://u:p%40ss+word@h"),
            "pw=*** uri=postgres://u:***@h"
        );
        assert_eq!(
            r.redacted(&"cannot connect as u:p@ss word").to_string(),
            "cannot connect as u:***"
        );
    }
}
