//! Passkeys: passwordless login with WebAuthn credentials.
//!
//! The ceremonies are `webauthn-rs`'s (kanidm's library: the most used and reviewed WebAuthn
//! implementation in Rust, pure RustCrypto since 0.6), so no signature, attestation or
//! origin check is ours. What is ours is where the state lives and who may answer it:
//! - a challenge is kept in the store (so any node can take the answer) until it is answered
//!   once or expires: [`Store::take_ceremony`] hands it to one caller only;
//! - a registration is bound to the session that started it, a login to its ceremony id;
//! - a login must use a passkey of the account it was started for;
//! - the signature counter only moves up ([`Store::record_passkey_use`] is a compare-and-set),
//!   so a cloned authenticator or a replay racing the real one is refused.
//!
//! Login is username-first: the email picks the account and its passkeys are offered to the
//! authenticator (`allowCredentials`). That tells whoever asks whether an email has passkeys,
//! as every username-first WebAuthn login does; registering already tells whether it exists.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sting_actors::session::Identity;
use sting_store::{Ceremony, CeremonyKind, Passkey, Store, StoreError, Timestamp, UserId};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Credential, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Webauthn,
    WebauthnBuilder,
};

use crate::config::WebauthnConfig;
use crate::identity::{normalize_email, random_token, IdentityError, IdentityService, NewSession};

/// How many passkeys one account may register.
pub const MAX_PASSKEYS_PER_USER: usize = 20;
const MAX_NAME_CHARS: usize = 64;

/// Why a passkey operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("this passkey challenge is unknown, already answered or expired; start again")]
    ChallengeExpired,
    #[error("the passkey was not accepted: {0}")]
    Rejected(String),
    #[error("invalid passkey")]
    InvalidCredentials,
    #[error("this passkey is registered already")]
    AlreadyRegistered,
    #[error("an account may have at most {MAX_PASSKEYS_PER_USER} passkeys")]
    TooMany,
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("passkey not found")]
    NotFound,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("passkey state could not be kept: {0}")]
    State(String),
}

/// A challenge for the client to answer, and where its answer must be sent back.
pub struct Challenge<T> {
    pub options: T,
    pub ceremony_id: String,
    pub expires_at: Timestamp,
}

/// The WebAuthn relying party of this deployment.
#[derive(Clone)]
pub struct PasskeyService {
    webauthn: Arc<Webauthn>,
    store: Arc<dyn Store>,
    identity: IdentityService,
    ttl: Duration,
}

impl PasskeyService {
    /// Builds the relying party from config; an invalid rp id or origin is an error here,
    /// at start, rather than at the first login.
    pub fn new(
        config: &WebauthnConfig,
        store: Arc<dyn Store>,
        identity: IdentityService,
    ) -> Result<PasskeyService, String> {
        let ttl = Duration::from_secs(config.challenge_ttl_secs);
        let parse = |origin: &str| {
            Url::parse(origin).map_err(|err| format!("webauthn origin {origin:?}: {err}"))
        };
        let origins = if config.origins.is_empty() {
            // Development: any port of localhost, over HTTP or HTTPS.
            vec![parse("http://localhost")?, parse("https://localhost")?]
        } else {
            config
                .origins
                .iter()
                .map(|origin| parse(origin))
                .collect::<Result<_, _>>()?
        };
        let mut builder = WebauthnBuilder::new(&config.rp_id, &origins[0])
            .map_err(|err| format!("webauthn rp_id {:?}: {err}", config.rp_id))?
            .rp_name(&config.rp_name)
            .timeout(ttl)
            .allow_any_port(config.origins.is_empty());
        for origin in &origins[1..] {
            builder = builder.append_allowed_origin(origin);
        }
        let webauthn = builder
            .build()
            .map_err(|err| format!("webauthn relying party: {err}"))?;
        Ok(PasskeyService {
            webauthn: Arc::new(webauthn),
            store,
            identity,
            ttl,
        })
    }

    /// Starts adding a passkey to the caller's account. A new start replaces the session's
    /// unanswered one.
    pub async fn start_registration(
        &self,
        caller: &Identity,
    ) -> Result<Challenge<CreationChallengeResponse>, PasskeyError> {
        let user = self.identity.user(caller.user_id).await?;
        let existing = self.store.passkeys_of(user.id).await?;
        if existing.len() >= MAX_PASSKEYS_PER_USER {
            return Err(PasskeyError::TooMany);
        }
        // The authenticator refuses to make a second credential for the same account.
        let exclude = existing
            .iter()
            .filter_map(|passkey| URL_SAFE_NO_PAD.decode(&passkey.credential_id).ok())
            .collect();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user.id, &user.email, &user.name, Some(exclude))
            .map_err(|err| PasskeyError::Rejected(err.to_string()))?;
        let ceremony = Ceremony {
            id: registration_id(&caller.token_hash),
            kind: CeremonyKind::Registration,
            user_id: user.id,
            binding: caller.token_hash.clone(),
            state: to_json(&state)?,
            expires_at: self.expiry(),
        };
        self.keep(ceremony, options).await
    }

    /// Verifies the authenticator's new credential against the session's challenge and
    /// registers it.
    pub async fn finish_registration(
        &self,
        caller: &Identity,
        credential: &RegisterPublicKeyCredential,
        name: Option<&str>,
    ) -> Result<Passkey, PasskeyError> {
        let name = name.map(validate_name).transpose()?;
        let ceremony = self
            .take(
                &registration_id(&caller.token_hash),
                CeremonyKind::Registration,
            )
            .await?;
        if ceremony.user_id != caller.user_id || ceremony.binding != caller.token_hash {
            return Err(PasskeyError::ChallengeExpired);
        }
        let state: PasskeyRegistration = from_json(&ceremony.state)?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(credential, &state)
            .map_err(|err| PasskeyError::Rejected(err.to_string()))?;
        let internals = Credential::from(passkey.clone());
        let count = self.store.passkeys_of(caller.user_id).await?.len();
        let record = Passkey {
            credential_id: URL_SAFE_NO_PAD.encode(passkey.cred_id()),
            user_id: caller.user_id,
            user_handle: URL_SAFE_NO_PAD.encode(caller.user_id.as_bytes()),
            name: name.unwrap_or_else(|| format!("Passkey {}", count + 1)),
            public_key: to_json(passkey.get_public_key())?,
            sign_count: internals.counter,
            transports: internals
                .transports
                .unwrap_or_default()
                .iter()
                .filter_map(|transport| match serde_json::to_value(transport) {
                    Ok(serde_json::Value::String(name)) if name != "unknown" => Some(name),
                    _ => None,
                })
                .collect(),
            credential: to_json(&passkey)?,
            created_at: Timestamp::now(),
            last_used_at: None,
        };
        match self.store.create_passkey(&record).await {
            Err(StoreError::Conflict(_)) => Err(PasskeyError::AlreadyRegistered),
            other => other.map(|()| record).map_err(Into::into),
        }
    }

    /// Starts a passwordless login for the account with this email.
    pub async fn start_login(
        &self,
        email: &str,
    ) -> Result<Challenge<RequestChallengeResponse>, PasskeyError> {
        let email = normalize_email(email).map_err(|_| PasskeyError::InvalidCredentials)?;
        let user = match self.store.user_by_email(&email).await? {
            Some(user) if user.active => user,
            _ => return Err(PasskeyError::InvalidCredentials),
        };
        let passkeys = self
            .store
            .passkeys_of(user.id)
            .await?
            .iter()
            .map(|passkey| from_json(&passkey.credential))
            .collect::<Result<Vec<webauthn_rs::prelude::Passkey>, _>>()?;
        if passkeys.is_empty() {
            return Err(PasskeyError::InvalidCredentials);
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|err| PasskeyError::Rejected(err.to_string()))?;
        let ceremony = Ceremony {
            id: format!("authentication:{}", random_token()),
            kind: CeremonyKind::Authentication,
            user_id: user.id,
            binding: String::new(),
            state: to_json(&state)?,
            expires_at: self.expiry(),
        };
        self.keep(ceremony, options).await
    }

    /// Verifies the authenticator's assertion against the ceremony's challenge and opens a
    /// session for the account the login was started for.
    pub async fn finish_login(
        &self,
        ceremony_id: &str,
        assertion: &PublicKeyCredential,
    ) -> Result<NewSession, PasskeyError> {
        let ceremony = self.take(ceremony_id, CeremonyKind::Authentication).await?;
        let credential_id = URL_SAFE_NO_PAD.encode(assertion.get_credential_id());
        let stored = match self.store.passkey(&credential_id).await? {
            Some(stored) if stored.user_id == ceremony.user_id => stored,
            _ => return Err(PasskeyError::InvalidCredentials),
        };
        let state: PasskeyAuthentication = from_json(&ceremony.state)?;
        let result = self
            .webauthn
            .finish_passkey_authentication(assertion, &state)
            .map_err(|err| {
                tracing::info!(user = %ceremony.user_id, error = %err, "passkey assertion refused");
                PasskeyError::InvalidCredentials
            })?;
        let mut passkey: webauthn_rs::prelude::Passkey = from_json(&stored.credential)?;
        passkey.update_credential(&result);
        let used = self
            .store
            .record_passkey_use(
                &credential_id,
                result.counter(),
                &to_json(&passkey)?,
                Timestamp::now(),
            )
            .await;
        if let Err(err) = used {
            if let StoreError::Conflict(reason) = &err {
                tracing::warn!(user = %ceremony.user_id, %reason,
                    "passkey signature counter went back: a cloned authenticator or a replay");
            }
            return Err(match err {
                StoreError::Conflict(_) | StoreError::NotFound { .. } => {
                    PasskeyError::InvalidCredentials
                }
                other => other.into(),
            });
        }
        let user = self.identity.user(ceremony.user_id).await?;
        if !user.active {
            return Err(PasskeyError::InvalidCredentials);
        }
        Ok(self.identity.open_session(user).await?)
    }

    /// The caller's passkeys, oldest first.
    pub async fn list(&self, user_id: UserId) -> Result<Vec<Passkey>, PasskeyError> {
        Ok(self.store.passkeys_of(user_id).await?)
    }

    /// Deletes one of the caller's passkeys.
    pub async fn delete(&self, user_id: UserId, credential_id: &str) -> Result<(), PasskeyError> {
        match self.store.delete_passkey(user_id, credential_id).await? {
            true => Ok(()),
            false => Err(PasskeyError::NotFound),
        }
    }

    /// Stores a ceremony until it is answered, and hands out its challenge.
    async fn keep<T>(&self, ceremony: Ceremony, options: T) -> Result<Challenge<T>, PasskeyError> {
        self.store.put_ceremony(&ceremony, Timestamp::now()).await?;
        Ok(Challenge {
            options,
            ceremony_id: ceremony.id,
            expires_at: ceremony.expires_at,
        })
    }

    async fn take(&self, id: &str, kind: CeremonyKind) -> Result<Ceremony, PasskeyError> {
        match self.store.take_ceremony(id, Timestamp::now()).await? {
            Some(ceremony) if ceremony.kind == kind => Ok(ceremony),
            _ => Err(PasskeyError::ChallengeExpired),
        }
    }

    fn expiry(&self) -> Timestamp {
        Timestamp(Timestamp::now().0 + self.ttl.as_millis() as i64)
    }
}

/// A session has at most one registration in flight, keyed by its token hash.
fn registration_id(token_hash: &str) -> String {
    format!("registration:{token_hash}")
}

fn validate_name(name: &str) -> Result<String, PasskeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(PasskeyError::InvalidName(format!(
            "1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(PasskeyError::InvalidName("no control characters".into()));
    }
    Ok(name.to_owned())
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, PasskeyError> {
    serde_json::to_string(value).map_err(|err| PasskeyError::State(err.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PasskeyError> {
    serde_json::from_str(text).map_err(|err| PasskeyError::State(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  laptop ").unwrap(), "laptop");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"k".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(validate_name("bad\u{7}").is_err());
    }
}
