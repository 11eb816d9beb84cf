//! Connections (`connections`: public configuration, sealed secret) and the
//! vault's key check value (`vault`).

use chrono::Utc;
use rusqlite::{OptionalExtension, params};

use super::{Fields, Result, Store, query_all, ts};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS connections (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    config      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    secret      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vault (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    nonce       BLOB NOT NULL,
    check_value BLOB NOT NULL
);
"#;

/// An encrypted value as stored: nonce and ciphertext (the vault seals and opens it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// 24-byte XChaCha20 nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the Poly1305 tag.
    pub ciphertext: Vec<u8>,
}

/// A connection as stored: public configuration as JSON, secret sealed.
#[derive(Debug, Clone)]
pub struct StoredConnection {
    /// Connection id.
    pub id: String,
    /// `postgres` or `s3`.
    pub kind: String,
    /// Public configuration (JSON).
    pub config: String,
    /// The sealed secret.
    pub secret: Sealed,
}

const CONNECTION_COLUMNS: &str = "id, kind, config, nonce, secret";

fn decode_connection(r: &rusqlite::Row<'_>) -> Result<StoredConnection> {
    let f = Fields::new(r, "connections", &[0])?;
    Ok(StoredConnection {
        id: f.get(0)?,
        kind: f.get(1)?,
        config: f.get(2)?,
        secret: Sealed {
            nonce: f.get(3)?,
            ciphertext: f.get(4)?,
        },
    })
}

impl Store {
    /// The vault's key check value, once the vault has been used.
    pub fn vault_check(&self) -> Result<Option<Sealed>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT nonce, check_value FROM vault WHERE id = 1",
                params![],
                |r| {
                    Ok(Sealed {
                        nonce: r.get(0)?,
                        ciphertext: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Stores the vault's key check value.
    pub fn set_vault_check(&self, check: &Sealed) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO vault (id, nonce, check_value) VALUES (1, ?1, ?2)",
                params![check.nonce, check.ciphertext],
            )?;
            Ok(())
        })
    }

    /// Adds (or, with `replace`, replaces) a connection; false if it exists and `replace` is off.
    pub fn put_connection(
        &self,
        id: &str,
        kind: &str,
        config: &str,
        secret: &Sealed,
        replace: bool,
    ) -> Result<bool> {
        let now = ts(Utc::now());
        self.with(|c| {
            let changed = if replace {
                c.execute(
                    "INSERT INTO connections (id, kind, config, nonce, secret, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                     ON CONFLICT (id) DO UPDATE SET kind = ?2, config = ?3, nonce = ?4, secret = ?5, updated_at = ?6",
                    params![id, kind, config, secret.nonce, secret.ciphertext, now],
                )?
            } else {
                c.execute(
                    "INSERT OR IGNORE INTO connections (id, kind, config, nonce, secret, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id, kind, config, secret.nonce, secret.ciphertext, now],
                )?
            };
            Ok(changed == 1)
        })
    }

    /// Every stored connection (secrets still sealed), by id.
    pub fn connections(&self) -> Result<Vec<StoredConnection>> {
        self.with(|c| {
            query_all(
                c,
                &format!("SELECT {CONNECTION_COLUMNS} FROM connections ORDER BY id"),
                params![],
                decode_connection,
            )
        })
    }

    /// Connection `id` (secret still sealed), if stored.
    pub fn connection(&self, id: &str) -> Result<Option<StoredConnection>> {
        Ok(self
            .with(|c| {
                query_all(
                    c,
                    &format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1"),
                    params![id],
                    decode_connection,
                )
            })?
            .into_iter()
            .next())
    }

    /// Deletes a connection; false if there was none.
    pub fn delete_connection(&self, id: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM connections WHERE id = ?1", [id])? == 1))
    }

    /// Every connection's sealed secret, for key rotation.
    pub fn sealed_secrets(&self) -> Result<Vec<(String, Sealed)>> {
        Ok(self
            .connections()?
            .into_iter()
            .map(|c| (c.id, c.secret))
            .collect())
    }

    /// Replaces every sealed secret and the check value in one transaction.
    pub fn replace_sealed(&self, secrets: &[(String, Sealed)], check: &Sealed) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE connections SET nonce = ?2, secret = ?3 WHERE id = ?1",
                )?;
                for (id, sealed) in secrets {
                    update.execute(params![id, sealed.nonce, sealed.ciphertext])?;
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO vault (id, nonce, check_value) VALUES (1, ?1, ?2)",
                params![check.nonce, check.ciphertext],
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}
