//! API tokens of `sluice serve` (`api_tokens`): only a hash of each token is
//! stored, with its role; the token itself is shown once when created.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Fields, Result, Store, query_all, ts};

/// Schema version 4.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id    TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"#;

/// A stored API token (its hash, never the token).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The token's public id (also its first characters).
    pub token_id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// What the operator called it.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "token_id, role, name, created_at";

fn decode(r: &rusqlite::Row<'_>) -> Result<TokenRecord> {
    let f = Fields::new(r, "api_tokens", &[0])?;
    Ok(TokenRecord {
        token_id: f.get(0)?,
        role: f.get(1)?,
        name: f.get(2)?,
        created_at: f.ts(3)?,
    })
}

impl Store {
    /// Stores a token by the hash `hash` of its secret.
    pub fn add_token(&self, token: &TokenRecord, hash: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_tokens (token_id, hash, role, name, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.token_id,
                    hash,
                    token.role,
                    token.name,
                    ts(token.created_at)
                ],
            )?;
            Ok(())
        })
    }

    /// The token whose secret hashes to `hash`, if any.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.with(|c| {
            query_all(
                c,
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = ?1"),
                params![hash],
                decode,
            )
        })
        .map(|rows| rows.into_iter().next())
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.with(|c| {
            query_all(
                c,
                &format!("SELECT {COLUMNS} FROM api_tokens ORDER BY created_at, token_id"),
                params![],
                decode,
            )
        })
    }

    /// Deletes token `token_id`; whether it existed.
    pub fn delete_token(&self, token_id: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM api_tokens WHERE token_id = ?1",
                params![token_id],
            )? == 1)
        })
    }
}
