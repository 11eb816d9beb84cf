//! API tokens for `sluice serve`: created with a role, stored as a SHA-256
//! hash (a token is 32 random bytes, so a fast hash suffices: there is
//! nothing to guess), shown once, checked on each request; and the web UI's
//! sessions opened with one, stored the same way by their cookie.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{App, AppError};
use crate::store::{SessionRecord, TokenRecord};

/// What a token (or a session made with it) may do; each role may do what
/// the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything but secrets.
    Viewer,
    /// Also trigger and clear runs.
    Operator,
    /// Also manage connections.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenInfo {
    /// Its public id (the token starts with `sluice_<id>_`).
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// What it was called.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    /// The token as listed.
    pub info: TokenInfo,
    /// The token to give to clients.
    pub token: String,
}

/// A logged-in browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The role of the token it was opened with.
    pub role: Role,
    /// What its state changes carry in `X-CSRF-Token`.
    pub csrf: String,
}

/// A session just opened: the only time its cookie is known.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value.
    pub cookie: String,
    /// The session.
    pub session: Session,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, AppError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AppError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

impl TryFrom<TokenRecord> for TokenInfo {
    type Error = AppError;

    fn try_from(t: TokenRecord) -> Result<Self, AppError> {
        let role = Role::parse(&t.role).ok_or_else(|| {
            AppError::Store(crate::store::StoreError::Corrupt {
                table: "api_tokens",
                row: format!("`{}`", t.token_id),
                detail: format!("column `role`: `{}` is not a role", t.role),
            })
        })?;
        Ok(Self {
            token_id: t.token_id,
            role,
            name: t.name,
            created_at: t.created_at,
        })
    }
}

impl App {
    /// Creates a token with `role`, called `name`.
    pub fn create_token(&self, role: Role, name: &str) -> Result<CreatedToken, AppError> {
        let token_id = random_hex(4)?;
        let token = format!("sluice_{token_id}_{}", random_hex(32)?);
        let record = TokenRecord {
            token_id,
            role: role.as_str().to_owned(),
            name: name.to_owned(),
            created_at: Utc::now(),
        };
        self.sluice.store.add_token(&record, &hash(&token))?;
        Ok(CreatedToken {
            info: record.try_into()?,
            token,
        })
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, AppError> {
        self.sluice
            .store
            .tokens()?
            .into_iter()
            .map(TokenInfo::try_from)
            .collect()
    }

    /// Revokes token `token_id`.
    pub fn revoke_token(&self, token_id: &str) -> Result<(), AppError> {
        if self.sluice.store.delete_token(token_id)? {
            Ok(())
        } else {
            Err(AppError::NoSuchToken(token_id.to_owned()))
        }
    }

    /// Opens a session for `token` (already authenticated) lasting `ttl`:
    /// its cookie and CSRF token, shown only here (only a hash of the
    /// cookie is stored).
    pub fn start_session(&self, token: &TokenInfo, ttl: Duration) -> Result<NewSession, AppError> {
        let now = Utc::now();
        let expires_at = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .ok_or_else(|| AppError::InvalidInput {
                field: "session TTL".into(),
                reason: format!("{ttl:?} reaches past the dates this host can represent"),
            })?;
        let (cookie, csrf) = (random_hex(32)?, random_hex(32)?);
        let record = SessionRecord {
            token_id: token.token_id.clone(),
            role: token.role.as_str().to_owned(),
            csrf: csrf.clone(),
            expires_at,
        };
        self.sluice
            .store
            .add_session(&hash(&cookie), &record, now)?;
        Ok(NewSession {
            cookie,
            session: Session {
                role: token.role,
                csrf,
            },
        })
    }

    /// The live session whose cookie is `cookie`, if there is one (unknown,
    /// ended, or its token revoked: none).
    pub fn session(&self, cookie: &str) -> Result<Option<Session>, AppError> {
        let Some(record) = self
            .sluice
            .store
            .session_by_hash(&hash(cookie), Utc::now())?
        else {
            return Ok(None);
        };
        let role = Role::parse(&record.role).ok_or_else(|| {
            AppError::Store(crate::store::StoreError::Corrupt {
                table: "api_sessions",
                row: format!("of token `{}`", record.token_id),
                detail: format!("column `role`: `{}` is not a role", record.role),
            })
        })?;
        Ok(Some(Session {
            role,
            csrf: record.csrf,
        }))
    }

    /// Ends the session whose cookie is `cookie` (unknown: nothing to do).
    pub fn end_session(&self, cookie: &str) -> Result<(), AppError> {
        Ok(self.sluice.store.delete_session(&hash(cookie))?)
    }

    /// The token `token` is, if it is one.
    pub fn authenticate(&self, token: &str) -> Result<Option<TokenInfo>, AppError> {
        self.sluice
            .store
            .token_by_hash(&hash(token))?
            .map(TokenInfo::try_from)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppConfig;

    #[test]
    fn a_token_authenticates_with_its_role_and_only_its_hash_is_stored() {
        let home = tempfile::tempdir().expect("tempdir");
        let app = App::open(&AppConfig {
            home: home.path().to_owned(),
            staging_ttl: std::time::Duration::from_secs(60),
            allow_unconfined: false,
            workers: None,
            worker: false,
            kubernetes: None,
        })
        .expect("open");
        let created = app.create_token(Role::Operator, "ci").expect("create");
        assert!(
            created
                .token
                .starts_with(&format!("sluice_{}_", created.info.token_id))
        );
        let found = app
            .authenticate(&created.token)
            .expect("lookup")
            .expect("known");
        assert_eq!(found.role, Role::Operator);
        assert!(app.authenticate("sluice_0000_x").expect("lookup").is_none());
        let db = std::fs::read(home.path().join("sluice.db")).unwrap_or_default();
        let secret = created.token.rsplit('_').next().expect("secret");
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is not stored"
        );
        app.revoke_token(&created.info.token_id).expect("revoke");
        assert!(app.authenticate(&created.token).expect("lookup").is_none());
        assert!(matches!(
            app.revoke_token(&created.info.token_id),
            Err(AppError::NoSuchToken(_))
        ));
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
