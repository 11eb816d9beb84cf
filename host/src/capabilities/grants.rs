//! The grants of a try: which connections its task may open (secrets
//! included, host memory only), the runtime their clients run on, the
//! redactor of their secrets and the confinement of the threads that open
//! staging files. Every connection capability asks here before it opens.

use std::sync::Arc;

use crate::bindings::sluice::task::connections::ConnectionError;
use crate::bindings::sluice::task::types::ErrorKind;
use crate::confine::Sandbox;
use crate::connections::Connection;

use super::failure::Failure;
use super::redact::Redactor;

/// The connections a try may open, the runtime their clients run on, and
/// how the threads that open staging files for transfers are confined.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Granted connections, secrets included (host memory only).
    pub connections: Vec<Connection>,
    /// The async runtime driving the clients.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Redacts the secrets of `connections`.
    pub redactor: Arc<Redactor>,
    /// Confines the threads that open staging files for transfers.
    pub sandbox: Sandbox,
}

/// Why a task may not open a connection at all. Permanent: the grants of a
/// task are fixed for its run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The manifest does not list the connection for the task.
    #[error(
        "connection `{id}` is not granted to task `{task_id}`: list it in the task's `connections` in the manifest"
    )]
    NotGranted {
        /// The connection asked for.
        id: String,
        /// The task that asked.
        task_id: String,
    },
    /// The host runs no client runtime (it grants no connections).
    #[error("connections are not available in this context")]
    NoRuntime,
}

impl From<GrantError> for ConnectionError {
    fn from(e: GrantError) -> Self {
        ConnectionError {
            kind: ErrorKind::Permanent,
            message: e.to_string(),
        }
    }
}

impl Grants {
    /// Grants `connections`, with clients driven by `runtime`.
    pub fn new(
        connections: Vec<Connection>,
        runtime: tokio::runtime::Handle,
        sandbox: Sandbox,
    ) -> Self {
        let redactor = Arc::new(Redactor::for_connections(&connections));
        Self {
            connections,
            runtime: Some(runtime),
            redactor,
            sandbox,
        }
    }

    /// No connections at all.
    pub fn none(sandbox: Sandbox) -> Self {
        Self {
            connections: Vec::new(),
            runtime: None,
            redactor: Arc::default(),
            sandbox,
        }
    }

    /// The grant check: connection `id` if it is granted to `task_id`.
    pub fn connection(&self, id: &str, task_id: &str) -> Result<&Connection, GrantError> {
        self.connections
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| GrantError::NotGranted {
                id: id.to_owned(),
                task_id: task_id.to_owned(),
            })
    }

    /// The runtime driving the clients.
    pub fn runtime(&self) -> Result<tokio::runtime::Handle, GrantError> {
        self.runtime.clone().ok_or(GrantError::NoRuntime)
    }

    /// The guest's error for `failure` on connection `id`: its kind kept, its
    /// message redacted and naming the connection.
    pub fn guest_error(&self, id: &str, failure: Failure) -> ConnectionError {
        ConnectionError {
            kind: failure.kind,
            message: format!(
                "connection `{id}`: {}",
                self.redactor.redact(&failure.message)
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::connections::ConnectionConfig;

    /// A Postgres connection `id` with `secret`, privileged roles opted in or not.
    pub(crate) fn postgres(id: &str, secret: &str, allow_privileged: bool) -> Connection {
        Connection {
            id: id.into(),
            config: ConnectionConfig::new(
                "postgres",
                &serde_json::json!({"host": "db.example", "port": 5432, "database": "d", "user": "u", "extras": {}}),
            )
            .expect("an object"),
            secret: secret.into(),
            allow_privileged,
        }
    }

    fn unconfined() -> Sandbox {
        Sandbox::Unconfined {
            reason: "a unit test".into(),
        }
    }

    #[test]
    fn an_ungranted_connection_is_refused_for_good() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let grants = Grants::new(
            vec![postgres("warehouse", "pw", false)],
            runtime.handle().clone(),
            unconfined(),
        );
        assert_eq!(
            grants
                .connection("warehouse", "load")
                .map(|c| c.id.as_str()),
            Ok("warehouse")
        );
        let refused = grants.connection("other", "load").expect_err("not granted");
        assert_eq!(
            refused,
            GrantError::NotGranted {
                id: "other".into(),
                task_id: "load".into()
            }
        );
        let guest = ConnectionError::from(refused);
        assert_eq!(guest.kind, ErrorKind::Permanent);
        assert_eq!(
            guest.message,
            "connection `other` is not granted to task `load`: list it in the task's `connections` in the manifest"
        );
    }

    #[test]
    fn no_connection_opens_without_grants() {
        let grants = Grants::none(unconfined());
        assert!(matches!(
            grants.connection("warehouse", "load"),
            Err(GrantError::NotGranted { .. })
        ));
        assert_eq!(grants.runtime().err(), Some(GrantError::NoRuntime));
        assert_eq!(
            ConnectionError::from(GrantError::NoRuntime).kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn guest_errors_keep_their_kind_and_lose_the_secrets() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let grants = Grants::new(
            vec![postgres("warehouse", "s3cret", false)],
            runtime.handle().clone(),
            unconfined(),
        );
        let error = grants.guest_error("warehouse", Failure::retryable("password s3cret rejected"));
        assert_eq!(error.kind, ErrorKind::Retryable);
        assert_eq!(
            error.message,
            "connection `warehouse`: password *** rejected"
        );
    }
}
