//! `/api/auth/webauthn/*`: passkey registration and passwordless login, and the caller's
//! passkeys. The options and answers are WebAuthn's own JSON (what the browser's
//! `PublicKeyCredential.parseCreationOptionsFromJSON` takes and `credential.toJSON()` gives).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sting_actors::session::Identity;
use sting_store::Passkey;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::auth_api::{session_reply, set_cookie};
use super::error::{ApiError, ErrorEnvelope};
use super::json::json_body;
use super::{authenticated, recently_authenticated, reject, rfc3339, with_ctx};
use crate::app::AppContext;

/// The cookie that carries a login ceremony's id from `login/init` to `login/complete`.
const CEREMONY_COOKIE: &str = "sting_webauthn";
const CEREMONY_COOKIE_PATH: &str = "/api/auth/webauthn/login";

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let fresh = Duration::from_secs(ctx.config.auth.reauth_window_secs);
    let register_init = warp::path!("api" / "auth" / "webauthn" / "register" / "init")
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(recently_authenticated(fresh))
        .and_then(register_init);
    let register_complete = warp::path!("api" / "auth" / "webauthn" / "register" / "complete")
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(recently_authenticated(fresh))
        .and(json_body::<RegisterCompleteRequest>(limit))
        .and_then(register_complete);
    let login_init = warp::path!("api" / "auth" / "webauthn" / "login" / "init")
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(json_body::<LoginInitRequest>(limit))
        .and_then(login_init);
    let login_complete = warp::path!("api" / "auth" / "webauthn" / "login" / "complete")
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(warp::cookie::optional::<String>(CEREMONY_COOKIE))
        .and(json_body::<LoginCompleteRequest>(limit))
        .and_then(login_complete);
    let list = warp::path!("api" / "auth" / "webauthn" / "passkeys")
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(list_passkeys);
    let delete = warp::path!("api" / "auth" / "webauthn" / "passkeys" / String)
        .and(warp::delete())
        .and(with_ctx(ctx))
        .and(recently_authenticated(fresh))
        .and_then(delete_passkey);
    register_init
        .or(register_complete)
        .unify()
        .or(login_init)
        .unify()
        .or(login_complete)
        .unify()
        .or(list)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

/// The options to pass to `navigator.credentials.create()`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationChallenge {
    /// `{"publicKey": PublicKeyCredentialCreationOptions}` in WebAuthn's JSON form.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub options: webauthn_rs::prelude::CreationChallengeResponse,
    /// RFC 3339: the challenge is refused after this.
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterCompleteRequest {
    /// The new credential as the browser gives it (`credential.toJSON()`).
    #[schema(value_type = Object)]
    pub credential: RegisterPublicKeyCredential,
    /// A label for it ("laptop"); defaults to "Passkey N".
    pub name: Option<String>,
}

/// A registered passkey as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyView {
    /// The credential id (base64url); the `{id}` of `DELETE …/passkeys/{id}`.
    pub id: String,
    pub name: String,
    /// Transports the authenticator reported ("internal", "usb", "hybrid", ...).
    pub transports: Vec<String>,
    /// The highest signature counter seen (0 for authenticators that keep none).
    pub sign_count: u32,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl PasskeyView {
    fn of(passkey: &Passkey) -> PasskeyView {
        PasskeyView {
            id: passkey.credential_id.clone(),
            name: passkey.name.clone(),
            transports: passkey.transports.clone(),
            sign_count: passkey.sign_count,
            created_at: rfc3339(passkey.created_at),
            last_used_at: passkey.last_used_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyRegistered {
    pub success: bool,
    pub passkey: PasskeyView,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginInitRequest {
    /// The account to log in to.
    pub email: String,
}

/// The options to pass to `navigator.credentials.get()`, and the ceremony to answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginChallenge {
    /// Send back with the assertion (also set as the `sting_webauthn` cookie).
    pub ceremony_id: String,
    /// `{"publicKey": PublicKeyCredentialRequestOptions}` in WebAuthn's JSON form.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub options: webauthn_rs::prelude::RequestChallengeResponse,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginCompleteRequest {
    /// The assertion as the browser gives it (`credential.toJSON()`).
    #[schema(value_type = Object)]
    pub assertion: PublicKeyCredential,
    /// From `login/init`; may be left out when the `sting_webauthn` cookie carries it.
    pub ceremony_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyList {
    pub passkeys: Vec<PasskeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyDeleted {
    pub success: bool,
}

/// Start adding a passkey to the caller's account.
#[utoipa::path(post, path = "/api/auth/webauthn/register/init", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Creation options; answer within webauthn.challenge_ttl_secs from this session", body = RegistrationChallenge),
        (status = 401, description = "Not logged in", body = ErrorEnvelope),
        (status = 403, description = "REAUTHENTICATION_REQUIRED: logged in longer ago than auth.reauth_window_secs", body = ErrorEnvelope),
        (status = 422, description = "The account has the most passkeys allowed", body = ErrorEnvelope),
    ))]
pub async fn register_init(ctx: Arc<AppContext>, caller: Identity) -> Result<Response, Rejection> {
    let challenge = ctx
        .passkeys
        .start_registration(&caller)
        .await
        .map_err(reject)?;
    Ok(no_store(warp::reply::json(&RegistrationChallenge {
        options: challenge.options,
        expires_at: rfc3339(challenge.expires_at),
    })))
}

/// Finish adding a passkey: verify the new credential and register it.
#[utoipa::path(post, path = "/api/auth/webauthn/register/complete", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    request_body = RegisterCompleteRequest,
    responses(
        (status = 201, description = "Passkey registered", body = PasskeyRegistered),
        (status = 400, description = "CHALLENGE_EXPIRED (unknown, used, expired or started by another session) or PASSKEY_REJECTED (wrong origin, challenge, signature or user verification)", body = ErrorEnvelope),
        (status = 401, description = "Not logged in", body = ErrorEnvelope),
        (status = 403, description = "REAUTHENTICATION_REQUIRED: logged in longer ago than auth.reauth_window_secs", body = ErrorEnvelope),
        (status = 409, description = "The credential is registered already", body = ErrorEnvelope),
    ))]
pub async fn register_complete(
    ctx: Arc<AppContext>,
    caller: Identity,
    body: RegisterCompleteRequest,
) -> Result<Response, Rejection> {
    let finished = ctx
        .passkeys
        .finish_registration(&caller, &body.credential, body.name.as_deref())
        .await;
    ctx.metrics.record_passkey("registration", finished.is_ok());
    let passkey = finished.map_err(reject)?;
    tracing::info!(user = %caller.user_id, passkey = %passkey.credential_id, "passkey registered");
    let body = PasskeyRegistered {
        success: true,
        passkey: PasskeyView::of(&passkey),
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response())
}

/// Start a passwordless login for an account.
#[utoipa::path(post, path = "/api/auth/webauthn/login/init", tag = "auth",
    request_body = LoginInitRequest,
    responses(
        (status = 200, description = "Request options for the account's passkeys", body = LoginChallenge),
        (status = 401, description = "INVALID_CREDENTIALS: no active account with passkeys has this email", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts", body = ErrorEnvelope),
    ))]
pub async fn login_init(
    ctx: Arc<AppContext>,
    body: LoginInitRequest,
) -> Result<Response, Rejection> {
    let challenge = ctx
        .passkeys
        .start_login(&body.email)
        .await
        .map_err(reject)?;
    let mut response = warp::reply::json(&LoginChallenge {
        ceremony_id: challenge.ceremony_id.clone(),
        options: challenge.options,
        expires_at: rfc3339(challenge.expires_at),
    })
    .into_response();
    set_cookie(
        &mut response,
        CEREMONY_COOKIE,
        &challenge.ceremony_id,
        CEREMONY_COOKIE_PATH,
        ctx.config.webauthn.challenge_ttl_secs,
    );
    Ok(response)
}

/// Finish a passwordless login: verify the assertion and open a session, as password login
/// does.
#[utoipa::path(post, path = "/api/auth/webauthn/login/complete", tag = "auth",
    request_body = LoginCompleteRequest,
    responses(
        (status = 200, description = "Logged in", body = super::auth_api::LoginResponse),
        (status = 400, description = "CHALLENGE_EXPIRED: the ceremony is unknown, answered already or expired", body = ErrorEnvelope),
        (status = 401, description = "INVALID_CREDENTIALS: not a passkey of this account, a bad signature or origin, or a signature counter that went back", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts", body = ErrorEnvelope),
    ))]
pub async fn login_complete(
    ctx: Arc<AppContext>,
    cookie: Option<String>,
    body: LoginCompleteRequest,
) -> Result<Response, Rejection> {
    let ceremony_id = body.ceremony_id.or(cookie).ok_or_else(|| {
        reject(ApiError::validation(
            "ceremony_id",
            "missing: send the ceremony_id login/init returned",
        ))
    })?;
    let finished = ctx
        .passkeys
        .finish_login(&ceremony_id, &body.assertion)
        .await;
    ctx.metrics
        .record_passkey("authentication", finished.is_ok());
    let new = finished.map_err(reject)?;
    tracing::info!(user = %new.user.id, "logged in with a passkey");
    let mut response = session_reply(&ctx, new, StatusCode::OK);
    set_cookie(&mut response, CEREMONY_COOKIE, "", CEREMONY_COOKIE_PATH, 0);
    Ok(response)
}

/// The caller's passkeys, oldest first.
#[utoipa::path(get, path = "/api/auth/webauthn/passkeys", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller's passkeys", body = PasskeyList),
        (status = 401, description = "Not logged in", body = ErrorEnvelope),
    ))]
pub async fn list_passkeys(ctx: Arc<AppContext>, caller: Identity) -> Result<Response, Rejection> {
    let passkeys = ctx.passkeys.list(caller.user_id).await.map_err(reject)?;
    Ok(warp::reply::json(&PasskeyList {
        passkeys: passkeys.iter().map(PasskeyView::of).collect(),
    })
    .into_response())
}

/// Delete one of the caller's passkeys (it can no longer log in).
#[utoipa::path(delete, path = "/api/auth/webauthn/passkeys/{id}", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, description = "The passkey's id (its credential id)")),
    responses(
        (status = 200, description = "Deleted", body = PasskeyDeleted),
        (status = 401, description = "Not logged in", body = ErrorEnvelope),
        (status = 403, description = "REAUTHENTICATION_REQUIRED: logged in longer ago than auth.reauth_window_secs", body = ErrorEnvelope),
        (status = 404, description = "The caller has no passkey with this id", body = ErrorEnvelope),
    ))]
pub async fn delete_passkey(
    id: String,
    ctx: Arc<AppContext>,
    caller: Identity,
) -> Result<Response, Rejection> {
    ctx.passkeys
        .delete(caller.user_id, &id)
        .await
        .map_err(reject)?;
    tracing::info!(user = %caller.user_id, passkey = %id, "passkey deleted");
    Ok(warp::reply::json(&PasskeyDeleted { success: true }).into_response())
}

fn no_store(reply: impl Reply) -> Response {
    warp::reply::with_header(reply, "cache-control", "no-store").into_response()
}
