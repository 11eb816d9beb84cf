//! A watch on the instance's Jobs and Pods: one list, then a stream of
//! changes from its `resourceVersion`, kept in a cache that tells every
//! waiting try when something changed. A watch the server ends (its timeout)
//! is resumed from the last version seen; one the server says is too old
//! (410 Gone) is replaced by a new list; an error waits a second and lists
//! again. The cache only says *when* to look: a try's verdict other than
//! "running" is confirmed with direct reads (see `KubernetesExecutor`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::objects::TRY_LABEL;

/// How long one watch request lasts before it is renewed (the server may end it sooner).
const WATCH_SECONDS: u32 = 290;

/// How long to wait after a failed list or watch before listing again.
const RETRY: Duration = Duration::from_secs(1);

type Cache<K> = Arc<Mutex<BTreeMap<String, K>>>;

/// The instance's Jobs and Pods as last seen, and a counter bumped on every change.
pub struct Watcher {
    jobs: Cache<Job>,
    pods: Cache<Pod>,
    changes: Arc<watch::Sender<u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watcher {
    /// Starts watching the Jobs and Pods matching `selector` in `namespace`.
    pub fn start(client: &kube::Client, namespace: &str, selector: &str) -> Self {
        let watcher = Self {
            jobs: Cache::default(),
            pods: Cache::default(),
            changes: Arc::new(watch::channel(0).0),
        };
        tokio::spawn(follow(
            Api::<Job>::namespaced(client.clone(), namespace),
            selector.to_owned(),
            watcher.jobs.clone(),
            watcher.changes.clone(),
        ));
        tokio::spawn(follow(
            Api::<Pod>::namespaced(client.clone(), namespace),
            selector.to_owned(),
            watcher.pods.clone(),
            watcher.changes.clone(),
        ));
        watcher
    }

    /// A receiver told of every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The Job named `name`, as last seen.
    pub fn job(&self, name: &str) -> Option<Job> {
        lock(&self.jobs).get(name).cloned()
    }

    /// The pods of the try run by Job `job`, oldest first, as last seen.
    pub fn pods_of(&self, job: &str) -> Vec<Pod> {
        let mut pods: Vec<Pod> = lock(&self.pods)
            .values()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(TRY_LABEL))
                    .is_some_and(|j| j == job)
            })
            .cloned()
            .collect();
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        pods
    }
}

fn name_of<K: Resource>(object: &K) -> Option<String> {
    object.meta().name.clone()
}

/// Keeps `cache` equal to the objects of `api` matching `selector`, for as
/// long as the process lives.
async fn follow<K>(api: Api<K>, selector: String, cache: Cache<K>, changes: Arc<watch::Sender<u64>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    loop {
        let list = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("cannot list the {kind}s to watch: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        {
            let mut cache = lock(&cache);
            cache.clear();
            for object in list.items {
                if let Some(name) = name_of(&object) {
                    cache.insert(name, object);
                }
            }
        }
        changes.send_modify(|n| *n += 1);
        // Watch from `version` until the server says it is too old or fails.
        'watch: loop {
            let params = WatchParams::default()
                .labels(&selector)
                .timeout(WATCH_SECONDS);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("cannot watch the {kind}s: {e}");
                    tokio::time::sleep(RETRY).await;
                    break 'watch;
                }
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let changed = match event {
                    Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                        version = object.meta().resource_version.clone().unwrap_or(version);
                        name_of(&object).map(|name| lock(&cache).insert(name, object))
                    }
                    Ok(WatchEvent::Deleted(object)) => {
                        version = object.meta().resource_version.clone().unwrap_or(version);
                        name_of(&object).map(|name| lock(&cache).remove(&name))
                    }
                    Ok(WatchEvent::Bookmark(bookmark)) => {
                        version = bookmark.metadata.resource_version;
                        None
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => {
                        tracing::info!(
                            "the watch on {kind}s expired ({}): listing again",
                            status.message
                        );
                        break 'watch;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        tracing::warn!("the watch on {kind}s failed: {}", status.message);
                        tokio::time::sleep(RETRY).await;
                        break 'watch;
                    }
                    Err(e) => {
                        tracing::warn!("the watch on {kind}s broke: {e}");
                        tokio::time::sleep(RETRY).await;
                        break 'watch;
                    }
                };
                if changed.is_some() {
                    changes.send_modify(|n| *n += 1);
                }
            }
            // The server ended the watch (its timeout): go on from `version`.
        }
    }
}
