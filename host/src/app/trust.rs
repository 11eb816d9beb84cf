//! Signing keys, signatures of DAG versions, the trusted keys and the policy
//! that requires a trusted signature for every run.

use std::path::PathBuf;

use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};

/// A signing key just created.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedKey {
    /// Key name.
    pub name: String,
    /// Where the private key is (mode 0600).
    pub path: PathBuf,
    /// The public key (hex).
    pub public_key: String,
}

/// A trusted public key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrustedKey {
    /// The public key (hex).
    pub public_key: String,
    /// The name given when it was trusted.
    pub name: String,
}

/// The signature policy and the keys it trusts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrustPolicy {
    /// Whether every run needs a version signed by a trusted key.
    pub require_signatures: bool,
    /// The trusted keys.
    pub keys: Vec<TrustedKey>,
}

impl App {
    /// Creates the ed25519 signing key `name` in the home.
    pub fn generate_key(&self, name: &str) -> Result<GeneratedKey, AppError> {
        let home = self.sluice.home.root();
        let public_key = crate::trust::generate(home, name)?;
        Ok(GeneratedKey {
            name: name.to_owned(),
            path: crate::trust::key_path(home, name),
            public_key,
        })
    }

    /// Signs version `version` of `dag_id` with the key `key`; returns its public key.
    pub fn sign_version(&self, key: &str, dag_id: &str, version: &str) -> Result<String, AppError> {
        let s = &self.sluice;
        Ok(crate::trust::sign(
            &s.store,
            s.home.root(),
            key,
            dag_id,
            version,
        )?)
    }

    /// Trusts `public_key` (64 hex digits; surrounding blanks ignored) under
    /// `name`; returns the key as stored.
    pub fn trust_key(&self, public_key: &str, name: &str) -> Result<String, AppError> {
        crate::trust::parse_public(public_key)?;
        let key = public_key.trim();
        self.sluice.store.trust_key(key, name)?;
        Ok(key.to_owned())
    }

    /// Stops trusting `public_key`; returns the key as stored.
    pub fn distrust_key(&self, public_key: &str) -> Result<String, AppError> {
        let key = public_key.trim();
        if !self.sluice.store.distrust_key(key)? {
            return Err(AppError::NotTrusted(key.to_owned()));
        }
        Ok(key.to_owned())
    }

    /// The policy and the trusted keys.
    pub fn trust_policy(&self) -> Result<TrustPolicy, AppError> {
        let store = &self.sluice.store;
        Ok(TrustPolicy {
            require_signatures: store.require_signatures()?,
            keys: store
                .trusted_keys()?
                .into_iter()
                .map(|(public_key, name)| TrustedKey { public_key, name })
                .collect(),
        })
    }

    /// Requires (or not) a trusted signature for every run.
    pub fn require_signatures(&self, on: bool) -> Result<(), AppError> {
        Ok(self.sluice.store.set_require_signatures(on)?)
    }
}
