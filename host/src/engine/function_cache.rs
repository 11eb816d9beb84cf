//! Cranelift's incremental compilation cache on disk: machine code per
//! function, keyed by a hash of the function's IR and the compiler's settings,
//! so a function compiled for one component is reused by every later one.
//! Every Python task carries the same interpreter (several MB of code), so
//! only the first one pays for compiling it.
//!
//! Entries are machine code the host will run: each file holds an HMAC-SHA256
//! tag under the host's [`CacheKey`] over Cranelift's key and the value, and a
//! file whose tag does not verify is ignored (with a warning) and compiled
//! again, as for whole-component entries in `engine`.

use std::borrow::Cow;
use std::path::PathBuf;

use wasmtime::CacheStore;

use super::{CacheKey, TAG_LEN};

/// What an entry's tag covers first: entries of no other cache verify here.
const DOMAIN: &[u8] = b"sluice-function-cache-v1\0";

/// The function cache of a Sluice home (`cache/functions/`).
#[derive(Debug)]
pub struct FunctionCache {
    dir: PathBuf,
    key: CacheKey,
}

impl FunctionCache {
    /// A cache in `dir` (which exists), authenticated under `key`.
    pub fn new(dir: PathBuf, key: CacheKey) -> Self {
        Self { dir, key }
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(crate::digest::sha256_hex(key))
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let path = self.path(key);
        let mut entry = match std::fs::read(&path) {
            Ok(entry) => entry,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "function cache entry {}: cannot read it ({e})",
                    path.display()
                );
                return None;
            }
        };
        let verified = entry.len() >= TAG_LEN && {
            let (tag, value) = entry.split_at(TAG_LEN);
            tag == self.key.tag(DOMAIN, &[key, value])
        };
        if !verified {
            tracing::warn!(
                "function cache entry {} is not used: its integrity tag does not verify under the host's cache key",
                path.display()
            );
            return None;
        }
        entry.drain(..TAG_LEN);
        Some(Cow::Owned(entry))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let mut entry = Vec::with_capacity(TAG_LEN + value.len());
        entry.extend_from_slice(&self.key.tag(DOMAIN, &[key, &value]));
        entry.extend_from_slice(&value);
        // A unique temporary file per insert: two threads may insert the same
        // function (identical bodies) at once.
        let written = tempfile::NamedTempFile::new_in(&self.dir).and_then(|mut tmp| {
            std::io::Write::write_all(&mut tmp, &entry)?;
            tmp.persist(&path).map(|_| ()).map_err(|e| e.error)
        });
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "function cache entry {}: cannot write it ({e})",
                    path.display()
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_tampered_one_is_not_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = CacheKey::load_or_create(&dir.path().join("cache.key")).expect("key");
        let functions = dir.path().join("functions");
        std::fs::create_dir_all(&functions).expect("dir");
        let cache = FunctionCache::new(functions.clone(), key);
        assert!(cache.get(b"f").is_none());
        assert!(cache.insert(b"f", b"machine code".to_vec()));
        assert_eq!(cache.get(b"f").as_deref(), Some(&b"machine code"[..]));

        // Another function's valid entry under this key's name does not verify.
        assert!(cache.insert(b"g", b"other code".to_vec()));
        std::fs::copy(cache.path(b"g"), cache.path(b"f")).expect("copy");
        assert!(cache.get(b"f").is_none());
        // Nor does a flipped byte, nor a truncated file.
        let mut bytes = std::fs::read(cache.path(b"g")).expect("read");
        *bytes.last_mut().expect("value") ^= 1;
        std::fs::write(cache.path(b"g"), &bytes).expect("write");
        assert!(cache.get(b"g").is_none());
        std::fs::write(cache.path(b"g"), &bytes[..5]).expect("write");
        assert!(cache.get(b"g").is_none());
    }
}
