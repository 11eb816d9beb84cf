//! Content digests: what names a component blob and a DAG version.

use sha2::{Digest, Sha256};

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
