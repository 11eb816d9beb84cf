//! Signed deployments: an ed25519 signature over a DAG version digest (which
//! covers the canonical spec and every component's sha256), trusted public
//! keys, and a policy that refuses to run a version no trusted key signed.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::store::{Store, StoreError};

/// What is signed: a domain tag and the version digest.
fn message(version: &str) -> Vec<u8> {
    format!("sluice:dag-version:{version}").into_bytes()
}

/// A trust error. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file or key text is not a key.
    #[error("{0}")]
    BadKey(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The policy requires a trusted signature and there is none.
    #[error(
        "DAG `{dag}` version {version} is not signed by a trusted key, and the policy requires it: \
         sign it with `sluice deploy --sign <key>` and trust the key with `sluice trust add <public-key>`"
    )]
    Untrusted {
        /// DAG id.
        dag: String,
        /// Version digest (short).
        version: String,
    },
}

/// Where the signing key `name` lives.
pub fn key_path(home: &Path, name: &str) -> PathBuf {
    home.join("keys").join(format!("{name}.key"))
}

/// Creates signing key `name` (0600) and returns its public key as hex.
pub fn generate(home: &Path, name: &str) -> Result<String, TrustError> {
    if !crate::dag::is_valid_id(name) {
        return Err(TrustError::BadKey(format!("invalid key name `{name}`")));
    }
    let path = key_path(home, name);
    let io = |source| TrustError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        return Err(TrustError::BadKey(format!(
            "key `{name}` exists at {}",
            path.display()
        )));
    }
    std::fs::create_dir_all(path.parent().unwrap_or(home)).map_err(io)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let key = SigningKey::from_bytes(&secret);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io)?;
        file.write_all(hex::encode(secret).as_bytes()).map_err(io)?;
    }
    Ok(hex::encode(key.verifying_key().as_bytes()))
}

fn load(home: &Path, name: &str) -> Result<SigningKey, TrustError> {
    let path = key_path(home, name);
    let text = std::fs::read_to_string(&path).map_err(|source| TrustError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            TrustError::BadKey(format!("{} is not an ed25519 signing key", path.display()))
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public(text: &str) -> Result<VerifyingKey, TrustError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            TrustError::BadKey(format!("`{text}` is not a public key (64 hex digits)"))
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| TrustError::BadKey(format!("`{text}`: {e}")))
}

/// Signs version `version` of `dag_id` with key `name` and stores the signature.
/// Returns the public key (hex).
pub fn sign(
    store: &Store,
    home: &Path,
    name: &str,
    dag_id: &str,
    version: &str,
) -> Result<String, TrustError> {
    let key = load(home, name)?;
    let signature = key.sign(&message(version));
    let public = hex::encode(key.verifying_key().as_bytes());
    store.add_signature(dag_id, version, &public, &hex::encode(signature.to_bytes()))?;
    Ok(public)
}

/// The public keys (hex) of trusted keys that validly signed `version`.
pub fn trusted_signers(
    store: &Store,
    dag_id: &str,
    version: &str,
) -> Result<Vec<String>, TrustError> {
    let trusted = store.trusted_keys()?;
    let mut signers = Vec::new();
    for (public, signature) in store.signatures(dag_id, version)? {
        if !trusted.iter().any(|(k, _)| *k == public) {
            continue;
        }
        let valid = parse_public(&public).ok().zip(
            hex::decode(&signature)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| Signature::from_bytes(&b)),
        );
        if let Some((key, sig)) = valid
            && key.verify(&message(version), &sig).is_ok()
        {
            signers.push(public);
        }
    }
    Ok(signers)
}

/// Refuses `version` if the policy requires signatures and no trusted key signed it.
pub fn check(store: &Store, dag_id: &str, version: &str) -> Result<(), TrustError> {
    if !store.require_signatures()? || !trusted_signers(store, dag_id, version)?.is_empty() {
        return Ok(());
    }
    Err(TrustError::Untrusted {
        dag: dag_id.to_owned(),
        version: version.get(..12).unwrap_or(version).to_owned(),
    })
}
