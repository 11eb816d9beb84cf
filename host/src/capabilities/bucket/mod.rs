//! The `bucket` capability, for S3-compatible object stores: the host holds
//! the keys (through `object_store`) and moves files between the run's staging
//! directory and the bucket. Staging paths are confined twice: no `..`, and the
//! resolved file (symlinks followed) must lie inside staging; and the file is
//! opened on a thread the kernel confines to staging ([`crate::confine`]), so a
//! path swapped for a link between the check and the open gets nothing.
//!
//! Its guest handles are entries of the try's resource table; its calls are
//! served from a [`ConnectionView`]: `open-bucket` by [`open`] (dispatched by
//! the `connections` module), the `bucket` resource's methods by
//! [`HostBucket`] here.

pub mod kind;

pub use kind::{S3Config, S3Type, StoreConfigError, test_connection};

use kind::store_for;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;
use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::sluice::task::connections::{Bucket, ConnectionError, HostBucket};
use crate::confine::Sandbox;

use super::failure::Failure;
use super::handles;
use super::limits::Deadline;
use super::view::ConnectionView;

/// Uploads larger than this go multipart, in parts of this size.
const PART_SIZE: usize = 8 << 20;
/// Most keys `list-keys` returns.
const MAX_KEYS: usize = 10_000;
/// Most bytes of keys `list-keys` builds in the host. S3 keys are at most
/// 1,024 bytes, so [`MAX_KEYS`] of them fit; a store that returns longer keys
/// gets an error instead of growing host memory.
const MAX_KEYS_BYTES: usize = 16 << 20;

/// The host's entry behind the guest's handle to an open bucket.
struct BucketHandle {
    id: String,
    store: Arc<dyn ObjectStore>,
}

/// Resolves a guest path to a file inside `staging` (canonical). For reading,
/// the file must exist and resolve inside; for writing, its directory must
/// resolve inside and the file must not be a symlink. A path these rules
/// refuse is a permanent failure; an I/O error on the way is retryable.
pub(crate) fn confine(staging: &Path, arg: &str, write: bool) -> Result<PathBuf, Failure> {
    let given = Path::new(arg);
    if given
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(Failure::permanent(format!(
            "`{arg}`: `..` is not allowed in staging paths"
        )));
    }
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        staging.join(given)
    };
    if !joined.starts_with(staging) {
        return Err(Failure::permanent(format!(
            "`{arg}` is outside the run's staging directory"
        )));
    }
    let outside = || {
        Failure::permanent(format!(
            "`{arg}` resolves outside the run's staging directory"
        ))
    };
    let io = |e: std::io::Error| Failure::retryable(format!("`{arg}`: {e}"));
    if !write {
        let resolved = joined.canonicalize().map_err(io)?;
        return if !resolved.starts_with(staging) {
            Err(outside())
        } else if !resolved.is_file() {
            Err(Failure::permanent(format!("`{arg}` is not a file")))
        } else {
            Ok(resolved)
        };
    }
    let name = joined
        .file_name()
        .ok_or_else(|| Failure::permanent(format!("`{arg}` is not a file path")))?
        .to_owned();
    let parent = joined.parent().ok_or_else(outside)?;
    // Check the deepest directory that exists before creating any below it: a
    // guest-made symlink to a directory outside must not get directories made there.
    let existing = parent
        .ancestors()
        .find(|a| std::fs::symlink_metadata(a).is_ok())
        .ok_or_else(outside)?;
    let existing = existing.canonicalize().map_err(io)?;
    if !existing.starts_with(staging) {
        return Err(outside());
    }
    std::fs::create_dir_all(parent).map_err(io)?;
    let parent = parent.canonicalize().map_err(io)?;
    if !parent.starts_with(staging) {
        return Err(outside());
    }
    let target = parent.join(name);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Failure::permanent(format!(
            "`{arg}` is a symlink; staging files are written in place only"
        )));
    }
    Ok(target)
}

/// Opens a staging file for a transfer (created or truncated when `write`),
/// checked by [`confine`] and opened on a thread the kernel confines to staging.
pub(crate) fn open_staging(
    sandbox: &Sandbox,
    staging: &Path,
    arg: &str,
    write: bool,
) -> Result<std::fs::File, Failure> {
    let opened = sandbox.run_confined(staging, || {
        let file = confine(staging, arg, write)?;
        let opened = if write {
            std::fs::File::create(&file)
        } else {
            std::fs::File::open(&file)
        };
        opened.map_err(|e| Failure::retryable(format!("`{arg}`: {e}")))
    });
    opened.map_err(|e| Failure::retryable(e.to_string()))?
}

/// The object key of the guest's `arg`; an invalid one is a permanent failure.
pub(crate) fn key(arg: &str) -> Result<Key, Failure> {
    Key::parse(arg).map_err(|e| Failure::permanent(format!("invalid key `{arg}`: {e}")))
}

/// An object store error as a failure: what the store refuses for the
/// request itself (credentials, permission, an operation or path it does not
/// support) is permanent; the rest (the network, the service, a missing
/// key that may yet appear) retryable.
fn store_failure(e: object_store::Error) -> Failure {
    use object_store::Error as E;
    let permanent = matches!(
        e,
        E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. }
    );
    let message = e.to_string();
    if permanent {
        Failure::permanent(message)
    } else {
        Failure::retryable(message)
    }
}

/// `open-bucket`: opens object-store connection `id` if it is granted.
pub fn open(
    view: &mut ConnectionView<'_>,
    id: String,
) -> wasmtime::Result<Result<Resource<Bucket>, ConnectionError>> {
    view.deadline.check()?;
    let connection = match view.grants.connection(&id, &view.task.task_id) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.into())),
    };
    // The connection's stored configuration is wrong: the same at every try.
    match store_for(connection) {
        Ok(store) => Ok(Ok(handles::push(view.table, BucketHandle { id, store })?)),
        Err(e) => {
            let failure = Failure::permanent(e.to_string());
            Ok(Err(view.grants.guest_error(&id, failure)))
        }
    }
}

impl HostBucket for ConnectionView<'_> {
    /// `bucket.put`: uploads `staging_file` as `key_arg`.
    fn put(
        &mut self,
        bucket: Resource<Bucket>,
        staging_file: String,
        key_arg: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.call(&bucket, |view, store, runtime| {
            let key = key(&key_arg)?;
            let source = view.staging_file(&staging_file, false)?;
            until(view.deadline, runtime, async move {
                let mut source = tokio::fs::File::from_std(source);
                let mut writer = BufWriter::with_capacity(store, key, PART_SIZE);
                let sent = tokio::io::copy(&mut source, &mut writer)
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                writer
                    .shutdown()
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                Ok(sent)
            })
        })
    }

    /// `bucket.get`: downloads `key_arg` into `staging_file`.
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key_arg: String,
        staging_file: String,
    ) -> wasmtime::Result<Result<u64, ConnectionError>> {
        self.call(&bucket, |view, store, runtime| {
            let key = key(&key_arg)?;
            let target = view.staging_file(&staging_file, true)?;
            until(view.deadline, runtime, async move {
                let mut stream = store.get(&key).await.map_err(store_failure)?.into_stream();
                let mut target = tokio::fs::File::from_std(target);
                let mut received = 0u64;
                let io = |e: std::io::Error| Failure::retryable(e.to_string());
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(store_failure)?;
                    received += chunk.len() as u64;
                    target.write_all(&chunk).await.map_err(io)?;
                }
                target.flush().await.map_err(io)?;
                Ok(received)
            })
        })
    }

    /// `bucket.list-keys`: the keys under `prefix`, sorted, at most [`MAX_KEYS`].
    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, ConnectionError>> {
        self.call(&bucket, |view, store, runtime| {
            let prefix = if prefix.is_empty() {
                None
            } else {
                Some(key(&prefix)?)
            };
            until(view.deadline, runtime, async move {
                let mut listing = store.list(prefix.as_ref());
                let (mut keys, mut bytes) = (Vec::new(), 0usize);
                while let Some(meta) = listing.next().await {
                    let key = meta.map_err(store_failure)?.location.to_string();
                    bytes += key.len();
                    if bytes > MAX_KEYS_BYTES {
                        return Err(Failure::permanent(format!(
                            "the listing is over {MAX_KEYS_BYTES} bytes of keys; list a narrower prefix"
                        )));
                    }
                    keys.push(key);
                    if keys.len() >= MAX_KEYS {
                        break;
                    }
                }
                keys.sort();
                Ok(keys)
            })
        })
    }

    /// The guest dropped its handle.
    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        handles::delete::<BucketHandle, _>(self.table, bucket)?;
        Ok(())
    }
}

impl ConnectionView<'_> {
    /// The frame of every `bucket` method: the deadline checked before and
    /// after, the store behind `bucket`, the grants' runtime, and `op`'s
    /// failure given to the guest as an error of the bucket's connection.
    fn call<T>(
        &mut self,
        bucket: &Resource<Bucket>,
        op: impl FnOnce(&Self, Arc<dyn ObjectStore>, &tokio::runtime::Handle) -> Result<T, Failure>,
    ) -> wasmtime::Result<Result<T, ConnectionError>> {
        self.deadline.check()?;
        let (id, store) = bucket_of(self.table, bucket)?;
        let runtime = match self.grants.runtime() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let result = op(self, store, &runtime);
        self.deadline.check()?;
        Ok(result.map_err(|f| self.grants.guest_error(&id, f)))
    }

    /// The staging file `arg` of this try, opened for writing or reading
    /// (see [`open_staging`]).
    fn staging_file(&self, arg: &str, write: bool) -> Result<std::fs::File, Failure> {
        open_staging(
            &self.grants.sandbox,
            Path::new(&self.task.staging_dir),
            arg,
            write,
        )
    }
}

/// Runs `transfer` on `runtime` until `deadline`, then gives up on it.
fn until<T>(
    deadline: &Deadline,
    runtime: &tokio::runtime::Handle,
    transfer: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    runtime.block_on(async {
        tokio::time::timeout_at(deadline.at().into(), transfer)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::retryable(
                    "the task's timeout passed during the transfer",
                ))
            })
    })
}

/// The connection id and store behind the guest's `handle`.
fn bucket_of(
    table: &ResourceTable,
    handle: &Resource<Bucket>,
) -> wasmtime::Result<(String, Arc<dyn ObjectStore>)> {
    let h: &BucketHandle = handles::get(table, handle)?;
    Ok((h.id.clone(), h.store.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::sluice::task::types::ErrorKind;

    #[test]
    fn staging_paths_are_confined() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
        let staging = dir.path().join("run").canonicalize().expect("canonical");
        std::fs::write(staging.join("ok.txt"), "x").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "x").expect("write");
        assert!(confine(&staging, "ok.txt", false).is_ok());
        assert!(
            confine(
                &staging,
                &staging.join("ok.txt").display().to_string(),
                false
            )
            .is_ok()
        );
        assert!(
            confine(&staging, "../secret.txt", false)
                .expect_err("refused")
                .message
                .contains("`..`")
        );
        assert!(
            confine(&staging, "/etc/passwd", false)
                .expect_err("refused")
                .message
                .contains("outside")
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), staging.join("link"))
                .expect("symlink");
            assert!(
                confine(&staging, "link", false)
                    .expect_err("refused")
                    .message
                    .contains("resolves outside")
            );
            assert!(
                confine(&staging, "link", true)
                    .expect_err("refused")
                    .message
                    .contains("symlink")
            );
            std::os::unix::fs::symlink(dir.path(), staging.join("dirlink")).expect("symlink");
            assert!(
                confine(&staging, "dirlink/new.txt", true)
                    .expect_err("refused")
                    .message
                    .contains("resolves outside")
            );
            // Refused before anything is created through the link.
            assert!(
                confine(&staging, "dirlink/made/here/new.txt", true)
                    .expect_err("refused")
                    .message
                    .contains("resolves outside")
            );
            assert!(
                !dir.path().join("made").exists(),
                "a directory made outside"
            );
        }
        // The rules' refusals are permanent; a file that is not there (yet) is I/O.
        assert_eq!(
            confine(&staging, "../secret.txt", false)
                .expect_err("refused")
                .kind,
            ErrorKind::Permanent
        );
        assert_eq!(
            confine(&staging, "missing.txt", false)
                .expect_err("no such file")
                .kind,
            ErrorKind::Retryable
        );
        assert!(confine(&staging, "sub/new.txt", true).is_ok());
        // Found by the host_call_args fuzz target: "" and "." named staging itself.
        for dir in ["", ".", "sub"] {
            assert!(
                confine(&staging, dir, false)
                    .expect_err("refused")
                    .message
                    .contains("not a file"),
                "{dir:?}"
            );
        }
    }

    /// A transfer's file swapped for a link between the path check and the
    /// open, in both directions (get writes, put reads): the kernel refuses
    /// the open through the link, so nothing outside is read or written.
    #[test]
    fn a_path_swapped_for_a_link_mid_transfer_gets_nothing_outside() {
        let sandbox = crate::confine::Sandbox::detect();
        assert!(
            matches!(sandbox, crate::confine::Sandbox::Landlock { .. }),
            "needs Landlock: {sandbox:?}"
        );
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("canonical");
        let staging = root.join("run");
        std::fs::create_dir(&staging).expect("mkdir");
        std::fs::write(root.join("secret.txt"), "secret").expect("secret");
        let stop = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let swapper = {
            let staging = staging.clone();
            std::thread::spawn(move || {
                let (file, link) = (staging.join(".file"), staging.join(".link"));
                while std::time::Instant::now() < stop {
                    let _ = std::fs::write(&file, "inside");
                    let _ = std::fs::rename(&file, staging.join("victim"));
                    let _ = std::os::unix::fs::symlink("../secret.txt", &link);
                    let _ = std::fs::rename(&link, staging.join("victim"));
                }
            })
        };
        let (mut reads, mut writes) = (0u32, 0u32);
        while std::time::Instant::now() < stop {
            if let Ok(mut file) = open_staging(&sandbox, &staging, "victim", false) {
                let mut text = String::new();
                if std::io::Read::read_to_string(&mut file, &mut text).is_ok() {
                    assert_ne!(text, "secret", "read outside through a swapped link");
                    reads += 1;
                }
            }
            if let Ok(mut file) = open_staging(&sandbox, &staging, "victim", true) {
                std::io::Write::write_all(&mut file, b"pwned").expect("write");
                writes += 1;
            }
        }
        swapper.join().expect("swapper");
        assert_eq!(
            std::fs::read_to_string(root.join("secret.txt")).expect("secret"),
            "secret",
            "written outside through a swapped link"
        );
        assert!(reads > 0 && writes > 0, "reads {reads}, writes {writes}");
    }
}
