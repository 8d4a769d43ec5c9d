//! The API's error envelope, and the one place where every internal error and every warp
//! rejection gets its HTTP status and error code.

use std::convert::Infallible;

use serde::Serialize;
use serde_json::{json, Value};
use sting_actors::conversation::ChatError;
use sting_actors::model::ModelError;
use sting_actors::session::SessionError;
use sting_store::StoreError;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::identity::IdentityError;
use crate::knowledge::hjx::HjxError;
use crate::knowledge::KnowledgeError;
use crate::marketplace::MarketError;
use crate::passkeys::PasskeyError;
use sting_actors::jar_shard::ShardError;

tokio::task_local! {
    /// The id of the request being served, set by the edge around each request.
    pub static REQUEST_ID: String;
}

/// The current request's id ("" outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// `{"error": {...}}`: the body of every failed response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `AUTHENTICATION_REQUIRED`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context, e.g. `{"field": "email", "reason": "..."}`.
    #[schema(value_type = Object)]
    pub details: Value,
    /// RFC 3339 UTC time of the error.
    pub timestamp: String,
    /// Same as the response's `X-Request-Id` header.
    pub request_id: String,
}

/// An API failure: status, code, message and details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds, for 429 and 503 answers.
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    /// 422 for a field that is missing or has a bad value.
    pub fn validation(field: &str, reason: impl Into<String>) -> ApiError {
        let reason = reason.into();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            format!("invalid field {field}: {reason}"),
        )
        .with_details(json!({ "field": field, "reason": reason }))
    }

    pub fn authentication_required() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_REQUIRED",
            "a valid session is required",
        )
    }

    /// A cookie-authenticated request that did not come from a page of this origin.
    pub fn cross_site() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "CSRF_REJECTED",
            "cross-site request refused: send it from this site's pages, or authenticate \
             with an Authorization header",
        )
    }

    /// A session too old for what it asks (see `edge::recently_authenticated`).
    pub fn reauthentication_required(window: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "REAUTHENTICATION_REQUIRED",
            format!(
                "log in again to change how this account logs in (allowed within {} minutes of \
                 logging in)",
                window.as_secs() / 60
            ),
        )
        .with_details(json!({ "window_secs": window.as_secs() }))
    }

    pub fn permission_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn payload_too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }))
    }

    /// 408 for a request body that did not arrive in time.
    pub fn request_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body was not received in time",
        )
    }

    /// 415 for a body that is not of the `expected` media type.
    pub fn unsupported_media_type(expected: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            format!("the request body must be sent as Content-Type: {expected}"),
        )
        .with_details(json!({ "expected": expected }))
    }

    pub fn rate_limited(limit: u32, retry_after: u64) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMIT_EXCEEDED",
            "too many requests; retry later",
        )
        .with_details(json!({ "limit": limit, "retry_after_secs": retry_after }));
        err.retry_after = Some(retry_after);
        err
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            message,
        );
        err.retry_after = Some(1);
        err
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; see the server log for this request id",
        )
    }

    /// The envelope for this error, stamped with the current request id.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: self.message.clone(),
                details: self.details.clone(),
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                request_id: current_request_id(),
            },
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.envelope()), self.status)
                .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound { entity } => ApiError::not_found(entity),
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
            }
            StoreError::Unavailable(message) | StoreError::LeaseHeld { key: message, .. } => {
                tracing::warn!(error = %message, "store unavailable");
                ApiError::unavailable("storage is busy; retry shortly")
            }
            StoreError::StaleLease { key, epoch } => {
                tracing::warn!(%key, epoch, "write with a stale lease");
                ApiError::unavailable("ownership moved; retry shortly")
            }
            StoreError::Internal(message) => {
                tracing::error!(error = %message, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "STORAGE_ERROR",
                    "storage operation failed",
                )
            }
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> ApiError {
        match err {
            SessionError::Store(err) => err.into(),
            SessionError::Unavailable(message) => {
                tracing::warn!(error = %message, "session service unavailable");
                ApiError::unavailable("session service unavailable")
            }
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> ApiError {
        match err {
            IdentityError::InvalidEmail => ApiError::validation("email", "invalid email format"),
            IdentityError::WeakPassword(reason) => ApiError::validation("password", reason),
            IdentityError::InvalidName(reason) => ApiError::validation("traits.name", reason),
            IdentityError::EmailTaken => ApiError::new(
                StatusCode::CONFLICT,
                "EMAIL_TAKEN",
                "an account with this email already exists",
            )
            .with_details(json!({ "field": "email" })),
            IdentityError::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
                "invalid email or password",
            ),
            IdentityError::RegistrationClosed => {
                ApiError::permission_denied("registration is disabled on this server")
            }
            IdentityError::UserNotFound => ApiError::not_found("user"),
            IdentityError::Forbidden(message) => ApiError::permission_denied(message),
            IdentityError::Store(err) => err.into(),
            IdentityError::Hashing(message) => {
                tracing::error!(error = %message, "password hashing failed");
                ApiError::internal()
            }
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(err: ModelError) -> ApiError {
        let unavailable = |message: String| {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "MODEL_UNAVAILABLE",
                message,
            );
            err.retry_after = Some(1);
            err
        };
        match err {
            ModelError::NotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                format!("model {name} not found"),
            ),
            ModelError::Busy(name) => {
                unavailable(format!("model {name} is at capacity; retry shortly"))
            }
            ModelError::RuntimeMissing(_) | ModelError::Stopped => unavailable(err.to_string()),
            ModelError::Runtime(_) | ModelError::Tokenizer(_) | ModelError::InvalidModel { .. } => {
                tracing::error!(error = %err, "model failure");
                let mut api =
                    unavailable("the model failed; see the server log for this request id".into());
                api.retry_after = None;
                api
            }
            ModelError::ContextOverflow { tokens, limit } => ApiError::validation(
                "message",
                format!("the prompt has {tokens} tokens; the model's context is {limit}"),
            ),
            ModelError::WrongKind { .. } | ModelError::InvalidRequest(_) => {
                ApiError::bad_request(err.to_string())
            }
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(err: ChatError) -> ApiError {
        match err {
            ChatError::NotFound => ApiError::not_found("conversation"),
            ChatError::MessageTooLong {
                tokens,
                budget,
                ref model,
            } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "MESSAGE_TOO_LONG",
                err.to_string(),
            )
            .with_details(json!({
                "field": "message",
                "tokens": tokens,
                "max_allowed_tokens": budget,
                "model": model,
            })),
            ChatError::Invalid { field, reason } => ApiError::validation(field, reason),
            ChatError::Model(err) => err.into(),
            ChatError::Store(err) => err.into(),
            ChatError::Unavailable(message) => {
                tracing::warn!(error = %message, "conversation service unavailable");
                ApiError::unavailable("conversation busy; retry shortly")
            }
        }
    }
}

impl From<KnowledgeError> for ApiError {
    fn from(err: KnowledgeError) -> ApiError {
        use sting_actors::ingestion::pipeline::IngestionError;
        match err {
            KnowledgeError::NotFound(what) => ApiError::not_found(what),
            KnowledgeError::Forbidden(message) => ApiError::permission_denied(message),
            KnowledgeError::Invalid { field, reason } => ApiError::validation(field, reason),
            KnowledgeError::TooLarge { limit } => ApiError::payload_too_large(limit),
            KnowledgeError::Ingestion(IngestionError::Busy) => {
                ApiError::unavailable("the ingestion queue is full; retry shortly")
            }
            KnowledgeError::Ingestion(IngestionError::Store(err)) | KnowledgeError::Store(err) => {
                err.into()
            }
            KnowledgeError::Ingestion(IngestionError::Unavailable(message)) => {
                tracing::error!(error = %message, "ingestion pipeline unavailable");
                ApiError::unavailable("document processing is unavailable")
            }
            KnowledgeError::Model(err) => err.into(),
            KnowledgeError::Shard(ShardError::Store(err)) => err.into(),
            KnowledgeError::Shard(err) => {
                tracing::error!(error = %err, "search failed");
                ApiError::unavailable("search is unavailable; retry shortly")
            }
            KnowledgeError::Archive(HjxError::Malformed(reason)) => {
                ApiError::bad_request(format!("file: not a readable gzip'd tar archive: {reason}"))
                    .with_details(json!({ "field": "file", "reason": reason }))
            }
            KnowledgeError::Busy(message) => ApiError::unavailable(message),
            KnowledgeError::Archive(HjxError::Io(err)) => {
                tracing::error!(error = %err, "unpacking an archive failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "STORAGE_ERROR",
                    "file storage operation failed",
                )
            }
            KnowledgeError::Archive(HjxError::Invalid { entry, reason }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_ERROR",
                format!("invalid archive entry {entry}: {reason}"),
            )
            .with_details(json!({ "field": "file", "entry": entry, "reason": reason })),
            KnowledgeError::Internal(message) => {
                tracing::error!(error = %message, "knowledge operation failed");
                ApiError::internal()
            }
            KnowledgeError::Blob(err) => {
                tracing::error!(error = %err, "document storage failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "STORAGE_ERROR",
                    "file storage operation failed",
                )
            }
        }
    }
}

impl From<MarketError> for ApiError {
    fn from(err: MarketError) -> ApiError {
        match err {
            MarketError::NotFound(what) => ApiError::not_found(what),
            MarketError::Forbidden(message) => ApiError::permission_denied(message),
            MarketError::Invalid { field, reason } => ApiError::validation(field, reason),
            MarketError::Conflict { message, order } => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
                    .with_details(json!({ "order_id": order }))
            }
            MarketError::Store(err) => err.into(),
            MarketError::Knowledge(err) => err.into(),
        }
    }
}

impl From<PasskeyError> for ApiError {
    fn from(err: PasskeyError) -> ApiError {
        let message = err.to_string();
        match err {
            PasskeyError::ChallengeExpired => {
                ApiError::new(StatusCode::BAD_REQUEST, "CHALLENGE_EXPIRED", message)
            }
            PasskeyError::Rejected(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "PASSKEY_REJECTED", message)
            }
            PasskeyError::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS", message)
            }
            PasskeyError::AlreadyRegistered => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
            }
            PasskeyError::TooMany => ApiError::validation("credential", message),
            PasskeyError::InvalidName(reason) => ApiError::validation("name", reason),
            PasskeyError::NotFound => ApiError::not_found("passkey"),
            PasskeyError::Identity(err) => err.into(),
            PasskeyError::Store(err) => err.into(),
            PasskeyError::State(reason) => {
                tracing::error!(%reason, "passkey state could not be serialised");
                ApiError::internal()
            }
        }
    }
}

/// Turns every rejection into the envelope. Registered once, over all routes.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_to_error(&rejection).into_response())
}

/// The API error a rejection stands for.
pub fn rejection_to_error(rejection: &Rejection) -> ApiError {
    if let Some(err) = rejection.find::<ApiError>() {
        return err.clone();
    }
    if rejection.is_not_found() {
        return ApiError::new(StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND", "no such route");
    }
    if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed on this route",
        );
    }
    if let Some(err) = rejection.find::<warp::reject::InvalidQuery>() {
        return ApiError::bad_request(format!("invalid query string: {err}"));
    }
    if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request body too large",
        );
    }
    if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "unsupported content type",
        );
    }
    if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        return ApiError::bad_request(format!("invalid header {}", err.name()));
    }
    if let Some(err) = rejection.find::<warp::reject::MissingHeader>() {
        return ApiError::bad_request(format!("missing header {}", err.name()));
    }
    tracing::error!(?rejection, "unhandled rejection");
    ApiError::internal()
}
