//! The sweep of the runs' volumes: a run's claim (with its anchor, which owns
//! it) follows the run's staging record. The sweep of local staging runs
//! first and records `ttl_expired`; this one then deletes the anchors of runs
//! whose staging is recorded deleted, and the anchors no run record claims
//! (`orphaned`, recorded) once they are older than the TTL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams};

use super::objects;
use super::settings::KubeSettings;
use crate::staging::{Reclaimed, reason};
use crate::state::VolumeState;
use crate::store::{Store, StoreError};

/// How a run's volume is named in `staging_volumes`.
pub fn volume_path(namespace: &str, claim: &str) -> String {
    format!("kubernetes:{namespace}/persistentvolumeclaims/{claim}")
}

/// The reason constant matching a recorded one.
fn recorded_reason(recorded: Option<&str>) -> &'static str {
    [reason::RUN_SUCCEEDED, reason::ORPHANED]
        .into_iter()
        .find(|r| Some(*r) == recorded)
        .unwrap_or(reason::TTL_EXPIRED)
}

/// Reclaims the instance's run volumes as of `now` (see the module); with
/// `dry_run`, only says which.
pub async fn sweep(
    client: &kube::Client,
    store: &Store,
    settings: &KubeSettings,
    ttl: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Reclaimed>, String> {
    let namespace = &settings.namespace;
    let anchors = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let listed = anchors
        .list(&ListParams::default().labels(&objects::instance_selector(settings)))
        .await
        .map_err(|e| format!("cannot list the run anchors in {namespace}: {e}"))?;
    let cutoff = chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_sub_signed(ttl));
    let store_error = |e: StoreError| format!("the sweep of the runs' volumes: {e}");
    let mut reclaimed = Vec::new();
    for anchor in listed.items {
        let Some(name) = anchor.metadata.name.clone() else {
            continue;
        };
        let Some(run_id) = anchor
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(objects::RUN_ID_ANNOTATION))
            .cloned()
        else {
            tracing::warn!(
                "volume sweep: skipping ConfigMap {namespace}/{name}: it names no run ({} annotation)",
                objects::RUN_ID_ANNOTATION
            );
            continue;
        };
        let path = volume_path(namespace, &name);
        let found = match store.volume(&run_id).map_err(store_error)? {
            Some(v) if v.state == VolumeState::Deleted => Reclaimed {
                run_id,
                path,
                reason: recorded_reason(v.delete_reason.as_deref()),
            },
            // Active, or kept for its TTL.
            Some(_) => continue,
            None => {
                match store.run(&run_id) {
                    Ok(_) => continue,
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(store_error(e)),
                }
                if !crate::run_id::is_run_id(&run_id) {
                    tracing::warn!(
                        "volume sweep: skipping ConfigMap {namespace}/{name}: `{run_id}` is not a run id"
                    );
                    continue;
                }
                let created = anchor
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second());
                let old = match (created, cutoff) {
                    (Some(created), Some(cutoff)) => created <= cutoff.timestamp(),
                    _ => false,
                };
                if !old {
                    continue;
                }
                Reclaimed {
                    run_id,
                    path,
                    reason: reason::ORPHANED,
                }
            }
        };
        if !dry_run {
            match anchors.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => {
                    return Err(format!(
                        "cannot delete the anchor {namespace}/{name} of run {} (and its volume): {e}",
                        found.run_id
                    ));
                }
            }
            if found.reason == reason::ORPHANED {
                store
                    .delete_volume(&found.run_id, &found.path, now, found.reason)
                    .map_err(store_error)?;
            }
        }
        reclaimed.push(found);
    }
    Ok(reclaimed)
}
