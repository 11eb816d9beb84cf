//! The vault: connection secrets encrypted at rest with XChaCha20-Poly1305
//! under a master key that never leaves the host. The key comes from
//! `SLUICE_MASTER_KEY` (64 hex digits) or from `master.key` in the Sluice home
//! (created with mode 0600 on first use). A check value encrypted under the key
//! is stored with the data, so a wrong key is refused before anything changes.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::store::{Store, StoreError};

/// The environment variable that can hold the master key.
pub const KEY_ENV: &str = "SLUICE_MASTER_KEY";
/// The key file in the Sluice home.
pub const KEY_FILE: &str = "master.key";
const CHECK_PLAINTEXT: &[u8] = b"sluice vault check v1";
const CHECK_AAD: &[u8] = b"sluice:vault-check";

/// Why the vault cannot be used. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Encryption failed (the cipher refused the input), so nothing was stored.
    #[error("cannot encrypt the secret of `{0}`; nothing was stored")]
    Unsealable(String),
    /// The metadatabase failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key file or environment variable is not a key.
    #[error("master key from {source_name} is malformed: expected 64 hex digits")]
    Malformed {
        /// `SLUICE_MASTER_KEY` or the key file path.
        source_name: String,
    },
    /// The key does not decrypt what is stored.
    #[error(
        "the master key from {source_name} is not the key the stored connections were encrypted with; \
         nothing was changed (set {KEY_ENV} or restore {KEY_FILE})"
    )]
    WrongKey {
        /// `SLUICE_MASTER_KEY` or the key file path.
        source_name: String,
    },
    /// Connections exist but no key is available.
    #[error(
        "no master key: connections are stored but neither {KEY_ENV} nor {path} holds a key; nothing was changed"
    )]
    Missing {
        /// Where the key file was expected.
        path: String,
    },
    /// A stored secret does not decrypt (tampered with, or another key).
    #[error(
        "connection `{0}`: its secret does not decrypt with the master key (was the database edited?)"
    )]
    Undecryptable(String),
    /// Reading or writing the key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

pub use crate::store::Sealed;

/// The master key, checked against the store.
pub struct Vault {
    cipher: XChaCha20Poly1305,
    source_name: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("source", &self.source_name)
            .finish_non_exhaustive()
    }
}

fn parse_key(text: &str, source_name: &str) -> Result<Key, VaultError> {
    let bytes = crate::home::decode_key(text).ok_or_else(|| VaultError::Malformed {
        source_name: source_name.into(),
    })?;
    Ok(Key::from(bytes))
}

fn write_key_file(path: &Path, key: &Key) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

impl Vault {
    /// Opens the vault of `store` with the key from the environment or `home_dir`.
    /// A first use with no key creates the key file.
    pub fn open(store: &Store, home_dir: &Path) -> Result<Self, VaultError> {
        let file = home_dir.join(KEY_FILE);
        let pending = home_dir.join(format!("{KEY_FILE}.new"));
        let check = store.vault_check()?;
        if let Ok(text) = std::env::var(KEY_ENV) {
            let vault = Self::with_key(parse_key(&text, KEY_ENV)?, KEY_ENV);
            return vault
                .verified(check.as_ref())
                .and_then(|v| v.initialized(store, check.is_none()));
        }
        if !file.exists() {
            if check.is_some() {
                return Err(VaultError::Missing {
                    path: file.display().to_string(),
                });
            }
            let key = XChaCha20Poly1305::generate_key(&mut OsRng);
            write_key_file(&file, &key)?;
            return Self::with_key(key, &file.display().to_string()).initialized(store, true);
        }
        let text = std::fs::read_to_string(&file).map_err(|source| VaultError::Io {
            path: file.display().to_string(),
            source,
        })?;
        let vault = Self::with_key(
            parse_key(&text, &file.display().to_string())?,
            &file.display().to_string(),
        );
        match vault.verified(check.as_ref()) {
            Ok(vault) => vault.initialized(store, check.is_none()),
            // A rotation that committed but did not rename its new key yet: finish it.
            Err(VaultError::WrongKey { .. }) if pending.exists() => {
                let text = std::fs::read_to_string(&pending).map_err(|source| VaultError::Io {
                    path: pending.display().to_string(),
                    source,
                })?;
                let vault = Self::with_key(
                    parse_key(&text, &pending.display().to_string())?,
                    &file.display().to_string(),
                )
                .verified(check.as_ref())?;
                std::fs::rename(&pending, &file).map_err(|source| VaultError::Io {
                    path: file.display().to_string(),
                    source,
                })?;
                Ok(vault)
            }
            Err(e) => Err(e),
        }
    }

    fn with_key(key: Key, source_name: &str) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key),
            source_name: source_name.to_owned(),
        }
    }

    fn verified(self, check: Option<&Sealed>) -> Result<Self, VaultError> {
        match check {
            Some(sealed)
                if self.open_sealed(sealed, CHECK_AAD).as_deref() != Some(CHECK_PLAINTEXT) =>
            {
                Err(VaultError::WrongKey {
                    source_name: self.source_name,
                })
            }
            _ => Ok(self),
        }
    }

    fn initialized(self, store: &Store, first_use: bool) -> Result<Self, VaultError> {
        if first_use {
            store.set_vault_check(&self.seal(CHECK_PLAINTEXT, CHECK_AAD)?)?;
        }
        Ok(self)
    }

    /// Encrypts `plaintext`, bound to `aad` (the connection id), with a fresh nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, VaultError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Unsealable(String::from_utf8_lossy(aad).into_owned()))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    fn open_sealed(&self, sealed: &Sealed, aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.nonce.len() != 24 {
            return None;
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .ok()
    }

    /// Decrypts the secret of connection `id`.
    pub fn unseal(&self, sealed: &Sealed, id: &str) -> Result<String, VaultError> {
        self.open_sealed(sealed, id.as_bytes())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| VaultError::Undecryptable(id.to_owned()))
    }

    /// Re-encrypts every secret under a new key in one transaction, then makes
    /// the new key the key file (or prints it, when the key came from the
    /// environment). Returns the new key as hex.
    pub fn rotate(self, store: &Store, home_dir: &Path) -> Result<String, VaultError> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let next = Self::with_key(key, &self.source_name);
        let mut resealed = Vec::new();
        for (id, sealed) in store.sealed_secrets()? {
            let plain = self.unseal(&sealed, &id)?;
            resealed.push((id.clone(), next.seal(plain.as_bytes(), id.as_bytes())?));
        }
        let from_env = self.source_name == KEY_ENV;
        let file: PathBuf = home_dir.join(KEY_FILE);
        let pending = home_dir.join(format!("{KEY_FILE}.new"));
        if !from_env {
            // Written first: if the process dies after the commit, `open` finds it.
            write_key_file(&pending, &key)?;
        }
        store.replace_sealed(&resealed, &next.seal(CHECK_PLAINTEXT, CHECK_AAD)?)?;
        if !from_env {
            std::fs::rename(&pending, &file).map_err(|source| VaultError::Io {
                path: file.display().to_string(),
                source,
            })?;
        }
        Ok(hex::encode(key))
    }
}
