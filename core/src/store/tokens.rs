//! API tokens of `sluice serve` (`api_tokens`): only a hash of each token is
//! stored, with its role; the token itself is shown once when created. The
//! web UI's sessions (`api_sessions`) are kept the same way, by a hash of
//! their cookie, so they outlive a restart of the server.

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

/// Schema version 5: sessions of the web UI, each by a SHA-256 of its
/// cookie (32 random bytes), ended with the token that opened it.
pub(super) const SESSIONS: &str = r#"
CREATE TABLE IF NOT EXISTS api_sessions (
    hash        TEXT PRIMARY KEY,
    token_id    TEXT NOT NULL REFERENCES api_tokens (token_id) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_sessions_by_expiry ON api_sessions (expires_at);
"#;

/// A stored session (by the hash of its cookie, never the cookie).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The token it was opened with.
    pub token_id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// What its state changes carry in `X-CSRF-Token`.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

fn decode_session(r: &rusqlite::Row<'_>) -> Result<SessionRecord> {
    let f = Fields::new(r, "api_sessions", &[0])?;
    Ok(SessionRecord {
        token_id: f.get(0)?,
        role: f.get(1)?,
        csrf: f.get(2)?,
        expires_at: f.ts(3)?,
    })
}

impl Store {
    /// Stores a session by the hash `hash` of its cookie, and forgets the
    /// sessions that had ended by `now`.
    pub fn add_session(
        &self,
        hash: &str,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM api_sessions WHERE expires_at <= ?1",
                params![ts(now)],
            )?;
            tx.execute(
                "INSERT INTO api_sessions (hash, token_id, role, csrf, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    hash,
                    session.token_id,
                    session.role,
                    session.csrf,
                    ts(session.expires_at)
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The session whose cookie hashes to `hash`, if it exists and has not
    /// ended by `now`.
    pub fn session_by_hash(&self, hash: &str, now: DateTime<Utc>) -> Result<Option<SessionRecord>> {
        self.with(|c| {
            query_all(
                c,
                "SELECT token_id, role, csrf, expires_at FROM api_sessions
                 WHERE hash = ?1 AND expires_at > ?2",
                params![hash, ts(now)],
                decode_session,
            )
        })
        .map(|rows| rows.into_iter().next())
    }

    /// Ends the session whose cookie hashes to `hash` (none: nothing to do).
    pub fn delete_session(&self, hash: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM api_sessions WHERE hash = ?1", params![hash])?;
            Ok(())
        })
    }
}
