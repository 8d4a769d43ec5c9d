//! Identity: accounts, passwords and login sessions.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate, RustCrypto: pure Rust, audited
//! primitives, PHC strings so the cost can be raised later without breaking old hashes).
//! Session tokens are 256 random bits from the OS, handed to the client once and stored only
//! as their SHA-256. Hashing runs on the blocking pool: it is deliberately slow.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use sting_actors::session::{token_hash, Identity, SessionPolicy, SessionRegistry};
use sting_store::{Page, Role, Session, Store, StoreError, Timestamp, User, UserId};
use uuid::Uuid;

use crate::config::AuthConfig;

/// Why an identity operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid email address")]
    InvalidEmail,
    #[error("{0}")]
    WeakPassword(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("registration is disabled on this server")]
    RegistrationClosed,
    #[error("user not found")]
    UserNotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// A new login session: the token goes to the client once, and is never stored.
pub struct NewSession {
    pub token: String,
    pub session: Session,
    pub user: User,
}

/// Changes an admin may make to a user.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<Role>,
}

/// Accounts and sessions, on top of the store and the node's session actors.
#[derive(Clone)]
pub struct IdentityService {
    store: Arc<dyn Store>,
    sessions: SessionRegistry,
    hasher: Arc<Argon2<'static>>,
    config: Arc<AuthConfig>,
    /// A real hash to verify against when the email is unknown, so that a login takes as long
    /// whether or not the account exists.
    decoy_hash: Arc<String>,
}

const MAX_NAME_CHARS: usize = 200;
const MAX_PASSWORD_BYTES: usize = 1024;

impl IdentityService {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: SessionRegistry,
        config: &AuthConfig,
    ) -> Result<IdentityService, IdentityError> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|err| IdentityError::Hashing(err.to_string()))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy_hash = hash_with(&hasher, &random_token())?;
        Ok(IdentityService {
            store,
            sessions,
            hasher: Arc::new(hasher),
            config: Arc::new(config.clone()),
            decoy_hash: Arc::new(decoy_hash),
        })
    }

    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Creates an account (self-service registration or an admin action).
    pub async fn create_user(
        &self,
        email: &str,
        password: &str,
        name: Option<&str>,
        role: Role,
    ) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        self.check_password(password, &email)?;
        let name = match name {
            Some(name) => validate_name(name)?,
            None => email.split('@').next().unwrap_or_default().to_owned(),
        };
        let password_hash = self.hash_password(password).await?;
        let now = Timestamp::now();
        let user = User {
            id: Uuid::new_v4(),
            email,
            name,
            password_hash,
            role,
            active: true,
            created_at: now,
            updated_at: now,
        };
        self.store
            .create_user(&user)
            .await
            .map_err(|err| match err {
                StoreError::Conflict(_) => IdentityError::EmailTaken,
                other => other.into(),
            })?;
        tracing::info!(user_id = %user.id, role = role.as_str(), "user created");
        Ok(user)
    }

    /// Self-service registration: a `user`, logged in at once.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: Option<&str>,
    ) -> Result<NewSession, IdentityError> {
        if !self.config.allow_registration {
            return Err(IdentityError::RegistrationClosed);
        }
        let user = self.create_user(email, password, name, Role::User).await?;
        self.open_session(user).await
    }

    /// Checks credentials and opens a session. Unknown email, wrong password and deactivated
    /// account are indistinguishable to the caller.
    pub async fn login(&self, email: &str, password: &str) -> Result<NewSession, IdentityError> {
        let user = match normalize_email(email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = user
            .as_ref()
            .map(|user| user.password_hash.clone())
            .unwrap_or_else(|| self.decoy_hash.to_string());
        let password_ok = self.verify_password(password, hash).await?;
        match user {
            Some(user) if password_ok && user.active => self.open_session(user).await,
            _ => Err(IdentityError::InvalidCredentials),
        }
    }

    /// Opens a session for a user whose credentials were checked (a password, a passkey).
    pub(crate) async fn open_session(&self, user: User) -> Result<NewSession, IdentityError> {
        let token = random_token();
        let now = Timestamp::now();
        let policy: &SessionPolicy = self.sessions.policy();
        let session = Session {
            id: Uuid::new_v4(),
            token_hash: token_hash(&token),
            user_id: user.id,
            created_at: now,
            expires_at: policy.expiry(now, now),
            last_seen_at: now,
        };
        self.store.create_session(&session).await?;
        Ok(NewSession {
            token,
            session,
            user,
        })
    }

    /// Revokes one session (on every node at once).
    pub async fn logout(&self, who: &Identity) -> Result<(), IdentityError> {
        self.store.delete_session(&who.token_hash).await?;
        self.sessions.user_changed(who.user_id).await;
        Ok(())
    }

    /// Revokes every session of the caller, this one included; returns how many.
    pub async fn logout_everywhere(&self, who: &Identity) -> Result<usize, IdentityError> {
        let revoked = self.store.delete_user_sessions(who.user_id).await?.len();
        self.sessions.user_changed(who.user_id).await;
        tracing::info!(user_id = %who.user_id, sessions_revoked = revoked, "signed out everywhere");
        Ok(revoked)
    }

    /// Replaces the caller's password after checking the current one, and revokes every other
    /// session of theirs (whoever learnt the old password is signed out). Returns how many
    /// sessions were revoked.
    pub async fn change_password(
        &self,
        who: &Identity,
        current: &str,
        new: &str,
    ) -> Result<usize, IdentityError> {
        let mut user = self.user(who.user_id).await?;
        if !self
            .verify_password(current, user.password_hash.clone())
            .await?
        {
            return Err(IdentityError::InvalidCredentials);
        }
        self.check_password(new, &user.email)?;
        user.password_hash = self.hash_password(new).await?;
        user.updated_at = Timestamp::now();
        self.store.update_user(&user).await?;
        // Every session goes, then the caller's own comes back: it proved the password just now.
        let current = self.store.session(&who.token_hash).await?;
        let revoked = self.store.delete_user_sessions(user.id).await?.len();
        let kept = match current {
            Some(current) => {
                self.store.create_session(&current).await?;
                1
            }
            None => 0,
        };
        self.sessions.user_changed(user.id).await;
        tracing::info!(user_id = %user.id, sessions_revoked = revoked - kept, "password changed");
        Ok(revoked - kept)
    }

    pub async fn user(&self, id: UserId) -> Result<User, IdentityError> {
        self.store
            .user(id)
            .await?
            .ok_or(IdentityError::UserNotFound)
    }

    pub async fn list_users(&self, page: Page) -> Result<(Vec<User>, u64), IdentityError> {
        Ok(self.store.list_users(page).await?)
    }

    /// Applies an admin's changes. `actor` may not demote themself (no accidental lock-out).
    pub async fn update_user(
        &self,
        actor: UserId,
        id: UserId,
        changes: UserChanges,
    ) -> Result<User, IdentityError> {
        let mut user = self.user(id).await?;
        if let Some(email) = changes.email {
            user.email = normalize_email(&email)?;
        }
        if let Some(name) = changes.name {
            user.name = validate_name(&name)?;
        }
        if let Some(role) = changes.role {
            if actor == id && role != Role::Admin {
                return Err(IdentityError::Forbidden(
                    "admins cannot remove their own admin role".into(),
                ));
            }
            user.role = role;
        }
        user.updated_at = Timestamp::now();
        self.store
            .update_user(&user)
            .await
            .map_err(|err| match err {
                StoreError::Conflict(_) => IdentityError::EmailTaken,
                StoreError::NotFound { .. } => IdentityError::UserNotFound,
                other => other.into(),
            })?;
        // A new role or email applies to the user's next request on every node.
        self.sessions.user_changed(user.id).await;
        Ok(user)
    }

    /// Deactivates (or reactivates) a user. Deactivation revokes every session of the user;
    /// returns the user and how many sessions were revoked.
    pub async fn set_active(
        &self,
        actor: UserId,
        id: UserId,
        active: bool,
    ) -> Result<(User, usize), IdentityError> {
        if actor == id && !active {
            return Err(IdentityError::Forbidden(
                "admins cannot deactivate themselves".into(),
            ));
        }
        let mut user = self.user(id).await?;
        user.active = active;
        user.updated_at = Timestamp::now();
        self.store.update_user(&user).await?;
        let mut revoked = 0;
        if !active {
            revoked = self.store.delete_user_sessions(id).await?.len();
            tracing::info!(user_id = %id, sessions_revoked = revoked, "user deactivated");
        }
        self.sessions.user_changed(id).await;
        Ok((user, revoked))
    }

    /// Creates the configured bootstrap admin unless that email already has an account.
    pub async fn ensure_admin(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<bool, IdentityError> {
        let normalized = normalize_email(email)?;
        if self.store.user_by_email(&normalized).await?.is_some() {
            return Ok(false);
        }
        match self
            .create_user(&normalized, password, Some(name), Role::Admin)
            .await
        {
            Ok(_) => Ok(true),
            // Another node created it meanwhile.
            Err(IdentityError::EmailTaken) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn check_password(&self, password: &str, email: &str) -> Result<(), IdentityError> {
        let min = self.config.min_password_length;
        if password.chars().count() < min {
            return Err(IdentityError::WeakPassword(format!(
                "password must be at least {min} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(IdentityError::WeakPassword(format!(
                "password must be at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        if password.trim().to_lowercase() == email {
            return Err(IdentityError::WeakPassword(
                "password must not be the email address".into(),
            ));
        }
        Ok(())
    }

    async fn hash_password(&self, password: &str) -> Result<String, IdentityError> {
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_with(&hasher, &password))
            .await
            .map_err(|err| IdentityError::Hashing(err.to_string()))?
    }

    async fn verify_password(&self, password: &str, hash: String) -> Result<bool, IdentityError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|err| IdentityError::Hashing(err.to_string()))?;
            Ok(hasher.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|err| IdentityError::Hashing(err.to_string()))?
    }
}

fn hash_with(hasher: &Argon2<'_>, password: &str) -> Result<String, IdentityError> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|err| IdentityError::Hashing(err.to_string()))?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|err| IdentityError::Hashing(err.to_string()))?;
    hasher
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| IdentityError::Hashing(err.to_string()))
}

/// 256 bits from the OS, URL-safe base64 without padding (43 characters).
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Trims and lowercases an email and checks it is a plausible address.
pub fn normalize_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim().to_lowercase();
    let plausible = email.len() <= 254
        && email_address::EmailAddress::is_valid(&email)
        // Delivery-level checks are out of scope; refuse only the obviously wrong.
        && email.rsplit('@').next().is_some_and(|domain| !domain.is_empty());
    if plausible {
        Ok(email)
    } else {
        Err(IdentityError::InvalidEmail)
    }
}

fn validate_name(name: &str) -> Result<String, IdentityError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(IdentityError::InvalidName("must not be empty".into()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(IdentityError::InvalidName(format!(
            "must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(IdentityError::InvalidName(
            "must not contain control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in ["", "alice", "alice@", "@example.com", "a b@example.com"] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  Bee  ").unwrap(), "Bee");
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(validate_name(&"x".repeat(201)).is_err());
    }
}
