//! The single-scheduler lease: one process per Sluice instance drives the
//! instance's Jobs, so two hosts never follow (or clean up) the same tries.
//!
//! A `coordination.k8s.io/v1` Lease in the namespace names its holder
//! (`<host>/<pid>/<process start>`) and when it last renewed. A process takes
//! a lease that is free, its own, past its duration without renewal (the
//! holder stopped), or held by a process of this host that no longer exists
//! (a scheduler restarted on the same machine or in the same pod takes over
//! at once); otherwise it refuses, naming the holder. The holder renews it
//! every third of its duration, with optimistic concurrency (the server
//! refuses a write based on a stale `resourceVersion`), and stops the process
//! if another holder took it. On SIGTERM or SIGINT it gives the lease back
//! (no holder) and ends the process, so a successor on another node (a
//! rolling restart) takes over at once; the tries' Jobs go on, and the
//! successor adopts them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// How long a lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How long giving the lease back may take before the process ends anyway.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// Why the lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live process holds it.
    #[error(
        "another Sluice scheduler holds the lease {namespace}/{name} of this instance: {holder} (renewed {renewed}, valid for {duration}s); stop it first, or wait until its lease expires, or give this one another --instance"
    )]
    Held {
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Its holder.
        holder: String,
        /// When it last renewed.
        renewed: String,
        /// Its duration in seconds.
        duration: i32,
    },
    /// Other processes kept writing it while this one tried to take it.
    #[error("the lease {namespace}/{name} kept changing while this scheduler tried to take it")]
    Contended {
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
    /// The API server failed.
    #[error("the lease {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Why.
        source: kube::Error,
    },
}

/// This process, as a lease holder: `<host>/<pid>/<start time in ticks>`.
pub fn identity() -> String {
    let pid = std::process::id();
    // Without /proc a process cannot be told from a later one of its pid.
    let ticks = start_ticks(pid).unwrap_or_else(|| "unknown".into());
    let host = hostname().unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{pid}/{ticks}")
}

/// This host's name, if `/proc` says it.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
}

/// When process `pid` started (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`), if it exists.
fn start_ticks(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether `holder` is a process of this host that has ended (so its lease
/// can be taken at once). A holder of another host is never known dead, nor
/// is any when `/proc` cannot tell.
fn ended_here(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, '/');
    let (Some(ticks), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if hostname().as_deref() != Some(host) || ticks == "unknown" {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_ticks(pid).as_deref() != Some(ticks)
}

/// The lease a process holds.
pub struct Held {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    /// Set once the lease was given back: no renewal after that.
    released: tokio::sync::Mutex<bool>,
}

fn spec(identity: &str, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Whether `spec`, as read, leaves the lease to `identity`.
fn free_for(spec: &LeaseSpec, identity: &str) -> bool {
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return true;
    };
    if holder == identity || ended_here(holder) {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or_default());
    match &spec.renew_time {
        Some(renewed) => {
            let expires = renewed.0.as_second().saturating_add(duration);
            Timestamp::now().as_second() > expires
        }
        None => true,
    }
}

impl Held {
    /// Takes the lease `name` in `namespace` for this process, or refuses.
    pub async fn acquire(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, LeaseError> {
        let held = Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity(),
            released: tokio::sync::Mutex::new(false),
        };
        // A conflict means another process wrote the lease between our read
        // and our write: read it again (a few times) and decide anew.
        for _ in 0..3 {
            let current = held
                .api
                .get_opt(name)
                .await
                .map_err(|e| held.api_error(e))?;
            let written = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.to_owned()),
                            namespace: Some(namespace.to_owned()),
                            labels: Some(
                                [(
                                    "app.kubernetes.io/managed-by".to_owned(),
                                    super::objects::MANAGED_BY.to_owned(),
                                )]
                                .into(),
                            ),
                            ..ObjectMeta::default()
                        },
                        spec: Some(spec(&held.identity, None, 0)),
                    };
                    held.api.create(&PostParams::default(), &lease).await
                }
                Some(mut lease) => {
                    let old = lease.spec.clone().unwrap_or_default();
                    if !free_for(&old, &held.identity) {
                        return Err(LeaseError::Held {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            holder: old.holder_identity.unwrap_or_default(),
                            renewed: old
                                .renew_time
                                .map_or_else(|| "never".into(), |t| t.0.to_string()),
                            duration: old.lease_duration_seconds.unwrap_or_default(),
                        });
                    }
                    if let Some(previous) = old.holder_identity.as_deref() {
                        tracing::info!("taking over the lease {namespace}/{name} from {previous}");
                    }
                    let transitions = old.lease_transitions.unwrap_or_default() + 1;
                    lease.spec = Some(spec(&held.identity, None, transitions));
                    held.api.replace(name, &PostParams::default(), &lease).await
                }
            };
            match written {
                Ok(_) => return Ok(held),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(held.api_error(e)),
            }
        }
        Err(LeaseError::Contended {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Renews the lease every third of its duration for as long as the
    /// process lives; if another process took it, the process stops (it no
    /// longer owns the instance's Jobs). On SIGTERM or SIGINT, gives it back
    /// and ends the process (exit code 128 + the signal's number).
    pub fn keep(self) {
        let held = Arc::new(self);
        let renewing = held.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_DURATION / 3).await;
                match renewing.renew().await {
                    Ok(()) => {}
                    Err(e @ LeaseError::Held { .. }) => {
                        tracing::error!("{e}");
                        eprintln!("error: lost the scheduler lease: {e}");
                        std::process::exit(3);
                    }
                    Err(e) => tracing::warn!("cannot renew the scheduler lease: {e}"),
                }
            }
        });
        tokio::spawn(async move {
            let (signal, number) = termination().await;
            eprintln!(
                "stopping on {signal}: giving back the scheduler lease {}/{}; the running tries' Jobs go on, and the next scheduler adopts them",
                held.namespace, held.name
            );
            match tokio::time::timeout(RELEASE_WITHIN, held.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("error: cannot give back the scheduler lease: {e}"),
                Err(_) => eprintln!(
                    "error: giving back the scheduler lease took over {}s; it expires by itself",
                    RELEASE_WITHIN.as_secs()
                ),
            }
            std::process::exit(128 + number);
        });
    }

    /// Gives the lease back: no holder, so any process takes it at once (a
    /// lease another process holds by now is left alone).
    async fn release(&self) -> Result<(), LeaseError> {
        let mut released = self.released.lock().await;
        let mut lease = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let old = lease.spec.clone().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: old.lease_transitions,
            ..LeaseSpec::default()
        });
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.api_error(e))?;
        *released = true;
        Ok(())
    }

    async fn renew(&self) -> Result<(), LeaseError> {
        let released = self.released.lock().await;
        if *released {
            return Ok(());
        }
        let mut lease = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let old = lease.spec.clone().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Err(LeaseError::Held {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                holder: old.holder_identity.unwrap_or_default(),
                renewed: old
                    .renew_time
                    .map_or_else(|| "never".into(), |t| t.0.to_string()),
                duration: old.lease_duration_seconds.unwrap_or_default(),
            });
        }
        lease.spec = Some(spec(
            &self.identity,
            old.acquire_time,
            old.lease_transitions.unwrap_or_default(),
        ));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(|e| self.api_error(e))
    }
}

/// Waits for SIGTERM or SIGINT: its name and number (forever if neither can
/// be listened for, which is said).
async fn termination() -> (&'static str, i32) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut interrupt)) => tokio::select! {
            _ = term.recv() => ("SIGTERM", libc::SIGTERM),
            _ = interrupt.recv() => ("SIGINT", libc::SIGINT),
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                "cannot listen for SIGTERM and SIGINT (the lease will not be given back at exit): {e}"
            );
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_dead_only_when_it_is_a_process_of_this_host_that_ended() {
        let me = identity();
        assert!(!ended_here(&me), "{me}");
        // This process exists, but did not start at that tick.
        let pid = std::process::id();
        let host = hostname().expect("/proc gives the host name");
        assert!(ended_here(&format!("{host}/{pid}/999999999999")));
        assert!(!ended_here(&format!("{host}/{pid}/unknown")));
        assert!(!ended_here("another-host/1/1"));
        assert!(!ended_here("garbage"));
    }

    #[test]
    fn a_lease_is_free_when_unheld_own_or_expired() {
        let fresh = spec("another-host/7/7", None, 0);
        assert!(!free_for(&fresh, &identity()));
        assert!(free_for(&fresh, "another-host/7/7"));
        let stale = LeaseSpec {
            renew_time: Some(MicroTime(
                Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60),
            )),
            ..fresh.clone()
        };
        assert!(free_for(&stale, &identity()));
        assert!(free_for(&LeaseSpec::default(), &identity()));
    }
}
