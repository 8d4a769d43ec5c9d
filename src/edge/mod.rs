//! The HTTP edge: every request passes [`handle`] (request id, size precheck, session lookup,
//! rate limit, metrics, access log) and then the warp routes, one module per API area.

pub mod admin_api;
pub mod auth_api;
pub mod chat_api;
pub mod cluster_api;
pub mod error;
pub mod json;
pub mod knowledge_api;
pub mod marketplace_api;
pub mod models_api;
pub mod openai_api;
pub mod openapi;
pub mod rate_limit;
pub mod system_api;
pub mod web;
pub mod webauthn_api;
pub mod ws;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use sting_actors::session::Identity;
use tower_service::Service;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Method, Request};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::app::AppContext;
use error::{ApiError, REQUEST_ID};
use rate_limit::{Caller, Category};

/// What the edge established about a request before routing it; in the request extensions.
#[derive(Clone)]
pub struct RequestContext {
    /// `None` when no valid session came with the request.
    pub identity: Option<Identity>,
    /// The client's address (behind a trusted proxy, the one it forwarded for).
    pub client_ip: IpAddr,
}

/// All routes, with every rejection turned into the error envelope.
pub fn routes(ctx: Arc<AppContext>) -> BoxedFilter<(Response,)> {
    auth_api::routes(ctx.clone())
        .or(webauthn_api::routes(ctx.clone()))
        .unify()
        .or(system_api::routes(ctx.clone()))
        .unify()
        .or(cluster_api::routes(ctx.clone()))
        .unify()
        .or(admin_api::routes(ctx.clone()))
        .unify()
        .or(models_api::routes(ctx.clone()))
        .unify()
        .or(chat_api::routes(ctx.clone()))
        .unify()
        .or(ws::routes(ctx.clone()))
        .unify()
        .or(knowledge_api::routes(ctx.clone()))
        .unify()
        .or(marketplace_api::routes(ctx.clone()))
        .unify()
        .or(openai_api::routes(ctx))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(web::routes())
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

/// The routes as built by [`routes`] (cheap to clone).
pub type Routes = BoxedFilter<(Response,)>;

/// Serves one request through the edge pipeline and the routes.
pub async fn handle<B>(
    ctx: Arc<AppContext>,
    routes: Routes,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response, Infallible>
where
    B: http_body::Body + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request_id = format!("req_{}", Uuid::new_v4().simple());
    REQUEST_ID
        .scope(request_id.clone(), async move {
            let started = Instant::now();
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let category = Category::of(&method, &path);
            let client_ip = ctx.trusted_proxies.client_ip(peer.ip(), request.headers());
            let (mut response, user_id) =
                admit_and_route(&ctx, routes, request, client_ip, category).await;

            let status = response.status().as_u16();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert("x-request-id", value);
            }
            if status == 405 {
                if let Some(allow) = openapi::allowed_methods(&path)
                    .and_then(|allow| HeaderValue::from_str(&allow).ok())
                {
                    headers.insert(warp::http::header::ALLOW, allow);
                }
            }
            let elapsed = started.elapsed();
            let category_name = category.map_or("none", Category::as_str);
            ctx.metrics
                .record_request(method.as_str(), category_name, status, elapsed);
            // Path only: query strings may carry things that do not belong in logs.
            tracing::info!(
                request_id = %request_id,
                method = %method,
                path = %path,
                status,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                user_id = user_id.map(|id| id.to_string()),
                client_ip = %client_ip,
                "request"
            );
            Ok(response)
        })
        .await
}

/// The checks before routing. Returns the response and the authenticated user, if any.
async fn admit_and_route<B>(
    ctx: &AppContext,
    routes: Routes,
    mut request: Request<B>,
    client_ip: IpAddr,
    category: Option<Category>,
) -> (Response, Option<sting_store::UserId>)
where
    B: http_body::Body + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Errors raised here (before routing) answer in the shape of the API the path belongs to.
    let openai = request.uri().path().starts_with("/v1/");
    let error_response = |err: ApiError| {
        if openai {
            openai_api::openai_error(&err)
        } else {
            err.into_response()
        }
    };
    // Uploads and imports have their own, larger limits (checked again, exactly, while the file
    // streams in).
    let limit = match category {
        Some(Category::Upload) => knowledge_api::multipart_limit(ctx, request.uri().path()),
        _ => ctx.config.limits.max_body_bytes,
    };
    if content_length(request.headers()).is_some_and(|len| len > limit) {
        return (error_response(ApiError::payload_too_large(limit)), None);
    }

    let token = session_token(request.headers(), &ctx.config.auth.cookie_name);
    if let Some(SessionToken::Cookie(_)) = &token {
        if !same_origin_or_safe(request.method(), request.headers()) {
            return (error_response(ApiError::cross_site()), None);
        }
    }
    let identity = match token.map(SessionToken::into_inner) {
        Some(token) => match ctx.identity.sessions().authenticate(&token).await {
            Ok(identity) => identity,
            Err(err) => return (error_response(ApiError::from(err)), None),
        },
        None => None,
    };
    let user_id = identity.as_ref().map(|identity| identity.user_id);

    let decision = category.and_then(|category| {
        ctx.rate_limits
            .check(category, &Caller::of(category, user_id, client_ip))
    });
    let mut response = match decision {
        Some(decision) if !decision.allowed => {
            error_response(ApiError::rate_limited(decision.limit, decision.retry_after))
        }
        _ => {
            request.extensions_mut().insert(RequestContext {
                identity,
                client_ip,
            });
            match warp::service(routes).call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    };
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    (response, user_id)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(warp::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Where the request's session token came from.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionToken {
    Bearer(String),
    /// The browser sent it by itself, so the request may have been forged by another site.
    Cookie(String),
}

impl SessionToken {
    pub fn into_inner(self) -> String {
        match self {
            SessionToken::Bearer(token) | SessionToken::Cookie(token) => token,
        }
    }
}

/// CSRF protection for cookie-authenticated requests (OWASP's "verify the origin with standard
/// headers"): a request that changes state, or opens a WebSocket, must come from a page of
/// this origin. Browsers say where a request comes from in `Sec-Fetch-Site` (or, older ones,
/// `Origin`); a client that sends neither is not a browser, and cannot be made to send a
/// victim's cookie. The session cookie is SameSite=Strict as well.
fn same_origin_or_safe(method: &Method, headers: &HeaderMap) -> bool {
    let websocket = headers
        .get(warp::http::header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !websocket {
        return true;
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The session token: `Authorization: Bearer …` first, else the session cookie.
pub fn session_token(headers: &HeaderMap, cookie_name: &str) -> Option<SessionToken> {
    let bearer = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    if let Some(token) = bearer {
        return Some(SessionToken::Bearer(token.to_owned()));
    }
    headers
        .get_all(warp::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == cookie_name && !value.is_empty())
        .map(|(_, value)| SessionToken::Cookie(value.to_owned()))
}

/// The context the edge attached to the request.
fn request_context() -> impl Filter<Extract = (RequestContext,), Error = Rejection> + Clone {
    warp::ext::get::<RequestContext>()
}

/// Requires a valid session: the caller's identity, or 401 `AUTHENTICATION_REQUIRED`.
pub fn authenticated() -> impl Filter<Extract = (Identity,), Error = Rejection> + Clone {
    request_context().and_then(|rc: RequestContext| async move {
        rc.identity
            .ok_or_else(|| warp::reject::custom(ApiError::authentication_required()))
    })
}

/// Requires a session whose login is at most `window` old: for changes to how the account
/// logs in (its passkeys), so that a stolen or forgotten session cannot add its own way in.
/// 403 `REAUTHENTICATION_REQUIRED` for an older one: log in again, then retry.
pub fn recently_authenticated(
    window: std::time::Duration,
) -> impl Filter<Extract = (Identity,), Error = Rejection> + Clone {
    authenticated().and_then(move |identity: Identity| async move {
        let age_ms = sting_store::Timestamp::now().0 - identity.authenticated_at.0;
        if age_ms <= window.as_millis() as i64 {
            Ok(identity)
        } else {
            Err(warp::reject::custom(ApiError::reauthentication_required(
                window,
            )))
        }
    })
}

/// Requires an admin session: 401 without a session, 403 `PERMISSION_DENIED` for others.
pub fn admin() -> impl Filter<Extract = (Identity,), Error = Rejection> + Clone {
    authenticated().and_then(|identity: Identity| async move {
        if identity.is_admin() {
            Ok(identity)
        } else {
            Err(warp::reject::custom(ApiError::permission_denied(
                "this endpoint is for admins",
            )))
        }
    })
}

/// The caller's identity if a valid session came with the request.
pub fn optional_identity() -> impl Filter<Extract = (Option<Identity>,), Error = Rejection> + Clone
{
    request_context().map(|rc: RequestContext| rc.identity)
}

/// The client's address, as the edge resolved it.
pub fn client_ip() -> impl Filter<Extract = (IpAddr,), Error = Rejection> + Clone {
    request_context().map(|rc: RequestContext| rc.client_ip)
}

/// Hands the shared context to a handler.
pub fn with_ctx(
    ctx: Arc<AppContext>,
) -> impl Filter<Extract = (Arc<AppContext>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// Shorthand for handlers: any API error as a rejection.
pub fn reject(err: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(err.into())
}

/// A page window from query parameters: `limit` (default `default`, 1..=`max`, else 422) and
/// `offset` (default 0).
pub fn page(
    limit: Option<u32>,
    offset: Option<u64>,
    default: u32,
    max: u32,
) -> Result<sting_store::Page, Rejection> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(reject(ApiError::validation(
            "limit",
            format!("must be between 1 and {max}"),
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return Err(reject(ApiError::validation(
            "offset",
            format!("must be at most {}", i64::MAX),
        )));
    }
    Ok(sting_store::Page { limit, offset })
}

/// An RFC 3339 UTC rendering of a store timestamp.
pub fn rfc3339(ts: sting_store::Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(ts.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "sting_session=xyz"),
        ]);
        assert_eq!(
            session_token(&h, "sting_session"),
            Some(SessionToken::Bearer("abc".into()))
        );
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "theme=dark; sting_session=xyz; other=1")]);
        assert_eq!(
            session_token(&h, "sting_session"),
            Some(SessionToken::Cookie("xyz".into()))
        );
        assert_eq!(session_token(&h, "missing"), None);
        let basic = headers(&[("authorization", "Basic Zm9v")]);
        assert_eq!(session_token(&basic, "sting_session"), None);
    }

    #[test]
    fn cookie_requests_that_change_state_must_come_from_this_origin() {
        let safe = |method: Method, pairs: &[(&'static str, &str)]| {
            same_origin_or_safe(&method, &headers(pairs))
        };
        assert!(safe(Method::GET, &[("sec-fetch-site", "cross-site")]));
        assert!(safe(Method::POST, &[("sec-fetch-site", "same-origin")]));
        assert!(safe(Method::POST, &[("sec-fetch-site", "none")]));
        assert!(!safe(Method::POST, &[("sec-fetch-site", "same-site")]));
        assert!(!safe(Method::DELETE, &[("sec-fetch-site", "cross-site")]));
        let same = [
            ("origin", "https://sting.example:5050"),
            ("host", "sting.example:5050"),
        ];
        assert!(safe(Method::PUT, &same));
        let other = [
            ("origin", "https://evil.example"),
            ("host", "sting.example:5050"),
        ];
        assert!(!safe(Method::PUT, &other));
        assert!(safe(Method::POST, &[]), "not a browser");
        let websocket = [
            ("upgrade", "websocket"),
            ("origin", "https://evil.example"),
            ("host", "sting.example"),
        ];
        assert!(
            !safe(Method::GET, &websocket),
            "cross-site WebSocket hijacking"
        );
    }
}
