//! `/api/auth/*`: registration, login, logout and the session check.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sting_actors::session::Identity;
use sting_store::{Role, User};
use utoipa::ToSchema;
use uuid::Uuid;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, ErrorEnvelope};
use super::json::json_body;
use super::rate_limit::{Caller, Category};
use super::{authenticated, optional_identity, reject, rfc3339, with_ctx};
use crate::app::AppContext;
use crate::identity::NewSession;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let auth = warp::path("api").and(warp::path("auth"));
    let register = auth
        .and(warp::path("register"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(json_body::<RegisterRequest>(limit))
        .and_then(register);
    let login = auth
        .and(warp::path("login"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(json_body::<LoginRequest>(limit))
        .and_then(login);
    let logout = auth
        .and(warp::path("logout"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(logout);
    let logout_everywhere = auth
        .and(warp::path("logout-everywhere"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(logout_everywhere);
    let change_password = auth
        .and(warp::path("password"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<ChangePasswordRequest>(limit))
        .and_then(change_password);
    let session = auth
        .and(warp::path("session"))
        .and(warp::path::end())
        .and(warp::get())
        .and(optional_identity())
        .map(session);
    register
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(logout_everywhere)
        .unify()
        .or(change_password)
        .unify()
        .or(session)
        .unify()
        .boxed()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(format = "email")]
    pub email: String,
    /// At least `auth.min_password_length` characters (default 8).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    #[serde(default)]
    pub traits: Option<TraitsInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TraitsInput {
    /// Display name; defaults to the local part of the email.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Traits {
    pub name: String,
}

/// A user as shown to themself.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSummary {
    pub id: Uuid,
    pub email: String,
    pub traits: Traits,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
}

impl UserSummary {
    fn of(user: &User) -> UserSummary {
        UserSummary {
            id: user.id,
            email: user.email.clone(),
            traits: Traits {
                name: user.name.clone(),
            },
            role: user.role,
        }
    }
}

/// A new session. The token is also set as an HttpOnly cookie.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub success: bool,
    /// Send as `Authorization: Bearer <token>`; shown only once.
    pub session_token: String,
    pub session_id: Uuid,
    /// RFC 3339; slides forward with use.
    pub expires_at: String,
    pub user: UserSummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    pub authenticated: bool,
    pub user: Option<UserSummary>,
    pub session_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogoutResponse {
    pub success: bool,
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// Sessions ended by a password change or a sign-out everywhere.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsRevoked {
    pub success: bool,
    pub sessions_revoked: usize,
}

/// Create an account and log in.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created; logged in", body = LoginResponse),
        (status = 403, description = "Registration disabled", body = ErrorEnvelope),
        (status = 409, description = "Email already registered", body = ErrorEnvelope),
        (status = 422, description = "Invalid email, password or name", body = ErrorEnvelope),
    ))]
pub async fn register(ctx: Arc<AppContext>, body: RegisterRequest) -> Result<Response, Rejection> {
    let name = body.traits.as_ref().and_then(|t| t.name.as_deref());
    let new = ctx
        .identity
        .register(&body.email, &body.password, name)
        .await
        .map_err(reject)?;
    Ok(session_reply(&ctx, new, StatusCode::CREATED))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "INVALID_CREDENTIALS, whether or not the email exists", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts", body = ErrorEnvelope),
    ))]
pub async fn login(ctx: Arc<AppContext>, body: LoginRequest) -> Result<Response, Rejection> {
    // Beside the per-address bucket the edge checked: guesses at one account from many
    // addresses.
    let account = Caller::Account(body.email.trim().to_lowercase());
    if let Some(decision) = ctx
        .rate_limits
        .check(Category::AuthAccount, &account)
        .filter(|decision| !decision.allowed)
    {
        return Err(reject(ApiError::rate_limited(
            decision.limit,
            decision.retry_after,
        )));
    }
    let new = ctx
        .identity
        .login(&body.email, &body.password)
        .await
        .map_err(reject)?;
    Ok(session_reply(&ctx, new, StatusCode::OK))
}

/// Revoke the current session.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Session revoked; cookie cleared", body = LogoutResponse),
        (status = 401, description = "No valid session", body = ErrorEnvelope),
    ))]
pub async fn logout(ctx: Arc<AppContext>, identity: Identity) -> Result<Response, Rejection> {
    ctx.identity.logout(&identity).await.map_err(reject)?;
    let mut response = warp::reply::json(&LogoutResponse {
        success: true,
        message: "Successfully logged out".into(),
    })
    .into_response();
    set_cookie(&mut response, &ctx.config.auth.cookie_name, "", "/", 0);
    Ok(response)
}

/// Revoke every session of the caller, on every device and node, this one included.
#[utoipa::path(post, path = "/api/auth/logout-everywhere", tag = "auth",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Every session revoked; cookie cleared", body = SessionsRevoked),
        (status = 401, description = "No valid session", body = ErrorEnvelope),
    ))]
pub async fn logout_everywhere(
    ctx: Arc<AppContext>,
    identity: Identity,
) -> Result<Response, Rejection> {
    let revoked = ctx
        .identity
        .logout_everywhere(&identity)
        .await
        .map_err(reject)?;
    let mut response = warp::reply::json(&SessionsRevoked {
        success: true,
        sessions_revoked: revoked,
    })
    .into_response();
    set_cookie(&mut response, &ctx.config.auth.cookie_name, "", "/", 0);
    Ok(response)
}

/// Change one's password (the current one is required); every other session of the caller is
/// revoked, this one stays. Counted as a credential attempt.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth",
    request_body = ChangePasswordRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Password changed; other sessions revoked", body = SessionsRevoked),
        (status = 401, description = "No valid session", body = ErrorEnvelope),
        (status = 415, description = "Body not sent as application/json", body = ErrorEnvelope),
        (status = 422, description = "Wrong current password, or a weak new one", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts", body = ErrorEnvelope),
    ))]
pub async fn change_password(
    ctx: Arc<AppContext>,
    identity: Identity,
    body: ChangePasswordRequest,
) -> Result<Response, Rejection> {
    let revoked = ctx
        .identity
        .change_password(&identity, &body.current_password, &body.new_password)
        .await
        .map_err(|err| match err {
            crate::identity::IdentityError::InvalidCredentials => reject(ApiError::validation(
                "current_password",
                "is not the account's current password",
            )),
            err => reject(err),
        })?;
    Ok(warp::reply::json(&SessionsRevoked {
        success: true,
        sessions_revoked: revoked,
    })
    .into_response())
}

/// Whether the request carries a valid session, and whose.
#[utoipa::path(get, path = "/api/auth/session", tag = "auth",
    responses((status = 200, description = "Authentication status", body = SessionResponse)))]
pub fn session(identity: Option<Identity>) -> Response {
    let body = match identity {
        Some(identity) => SessionResponse {
            authenticated: true,
            user: Some(UserSummary {
                id: identity.user_id,
                email: identity.email,
                traits: Traits {
                    name: identity.name,
                },
                role: identity.role,
            }),
            session_id: Some(identity.session_id),
        },
        None => SessionResponse {
            authenticated: false,
            user: None,
            session_id: None,
        },
    };
    warp::reply::json(&body).into_response()
}

/// A new session's answer: the token in the body and in the session cookie.
pub(super) fn session_reply(ctx: &AppContext, new: NewSession, status: StatusCode) -> Response {
    let body = LoginResponse {
        success: true,
        session_token: new.token.clone(),
        session_id: new.session.id,
        expires_at: rfc3339(new.session.expires_at),
        user: UserSummary::of(&new.user),
    };
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    let max_age = ctx.config.auth.session_absolute_ttl_secs;
    set_cookie(
        &mut response,
        &ctx.config.auth.cookie_name,
        &new.token,
        "/",
        max_age,
    );
    response
}

/// Sets a cookie that is HttpOnly (no script access), Secure (HTTPS only; browsers treat
/// http://localhost as secure too) and SameSite=Strict (not sent on cross-site requests).
/// The session cookie's lifetime is the absolute one: the server enforces the sliding expiry.
pub(super) fn set_cookie(
    response: &mut Response,
    name: &str,
    token: &str,
    path: &str,
    max_age: u64,
) {
    let cookie = format!(
        "{name}={token}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
