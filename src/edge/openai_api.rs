//! The OpenAI-compatible API under `/v1`: `GET /v1/models`, `POST /v1/embeddings` and
//! `POST /v1/chat/completions` (whole or streamed as server-sent events), authenticated with
//! the same bearer tokens as the rest of the API, and answering errors in OpenAI's shape so
//! that OpenAI client libraries work unchanged.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sting_actors::model::worker::GenerateRequest;
use sting_actors::model::{
    ChatMessage, FinishReason, GenerationEvent, ModelKind, Role, SamplingParams,
};
use sting_actors::session::Identity;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{rejection_to_error, ApiError};
use super::json::json_body;
use super::{authenticated, reject, with_ctx};
use crate::app::AppContext;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let models = warp::path("models")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(list_models);
    let embeddings = warp::path("embeddings")
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<EmbeddingsRequest>(limit))
        .and_then(embeddings);
    let completions = warp::path("chat")
        .and(warp::path("completions"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authenticated())
        .and(json_body::<CompletionRequest>(limit))
        .and_then(chat_completions);
    let v1 = models
        .or(embeddings)
        .unify()
        .or(completions)
        .unify()
        .recover(recover)
        .unify();
    warp::path("v1").and(v1).boxed()
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn openai_error(err: &ApiError) -> Response {
    let kind = match err.status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({
        "error": {
            "message": err.message,
            "type": kind,
            "param": err.details.get("field"),
            "code": err.code.to_ascii_lowercase(),
        }
    });
    let mut response =
        warp::reply::with_status(warp::reply::json(&body), err.status).into_response();
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(warp::http::header::RETRY_AFTER, secs.into());
    }
    response
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(openai_error(&rejection_to_error(&rejection)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObjectList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// `input`: one string or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// One text or 1–`models.embedding_max_inputs` (default 256) texts, each of at most
    /// `models.embedding_max_input_chars` (default 16,384) characters.
    #[schema(schema_with = super::openapi::embedding_input_schema)]
    pub input: EmbeddingInput,
    /// Default: `models.default_embedding_model`.
    pub model: Option<String>,
    /// "float" (default) or "base64" (little-endian f32).
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub messages: Vec<CompletionMessage>,
    /// Default: `models.default_chat_model`.
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default, deserialize_with = "super::json::optional_whole_number")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    pub stop: Option<StopInput>,
    #[serde(default, deserialize_with = "super::json::optional_whole_number")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
}

/// Models this node serves, OpenAI-style.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    security(("bearer" = [])),
    responses((status = 200, body = ModelObjectList)))]
pub async fn list_models(ctx: Arc<AppContext>, _who: Identity) -> Result<Response, Rejection> {
    let models = ctx.models.list().await.map_err(reject)?;
    let data = models
        .iter()
        .map(|info| ModelObject {
            id: info.model.manifest.name.clone(),
            object: "model",
            created: ctx.started_at_utc.timestamp(),
            owned_by: "sting",
        })
        .collect();
    Ok(warp::reply::json(&ModelObjectList {
        object: "list",
        data,
    })
    .into_response())
}

/// Embeddings, OpenAI-style (unit vectors).
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingsRequest, security(("bearer" = [])),
    responses((status = 200, description = "`{object: list, data: [{object: embedding, index, embedding}], model, usage}`")))]
pub async fn embeddings(
    ctx: Arc<AppContext>,
    _who: Identity,
    body: EmbeddingsRequest,
) -> Result<Response, Rejection> {
    // The official clients ask for base64 (little-endian f32) by default.
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(reject(ApiError::validation(
                "encoding_format",
                "must be float or base64",
            )))
        }
    };
    let texts = match body.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    let models = &ctx.config.models;
    if texts.is_empty() || texts.len() > models.embedding_max_inputs {
        return Err(reject(ApiError::validation(
            "input",
            format!("must hold 1 to {} inputs", models.embedding_max_inputs),
        )));
    }
    if let Some(index) = texts
        .iter()
        .position(|text| text.chars().count() > models.embedding_max_input_chars)
    {
        return Err(reject(ApiError::validation(
            &format!("input[{index}]"),
            format!(
                "must have at most {} characters",
                models.embedding_max_input_chars
            ),
        )));
    }
    let model = body
        .model
        .unwrap_or_else(|| ctx.config.models.default_embedding_model.clone());
    let embedded = ctx.models.embed(&model, texts).await.map_err(reject)?;
    let tokens: usize = embedded.iter().map(|e| e.tokens).sum();
    let data: Vec<_> = embedded
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(warp::reply::json(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

/// Chat completion, OpenAI-style; `stream: true` answers with server-sent events
/// (`chat.completion.chunk` objects, then `data: [DONE]`). Closing the stream cancels.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = CompletionRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "`chat.completion`, or an event stream of `chat.completion.chunk`"),
        (status = 503, description = "model unavailable or at capacity"),
    ))]
pub async fn chat_completions(
    ctx: Arc<AppContext>,
    _who: Identity,
    body: CompletionRequest,
) -> Result<Response, Rejection> {
    let model = body
        .model
        .clone()
        .unwrap_or_else(|| ctx.config.models.default_chat_model.clone());
    let info = ctx.models.info(&model).await.map_err(reject)?;
    if info.model.manifest.kind != ModelKind::Chat {
        return Err(reject(ApiError::validation("model", "not a chat model")));
    }
    let request = completion_request(&body)?;
    let (mut events, _) = ctx.models.generate(&model, request).await.map_err(reject)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    if body.stream {
        return Ok(stream_reply(events, id, created, model));
    }
    let mut content = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Text(piece) => content.push_str(&piece),
            GenerationEvent::Failed(err) => return Err(reject(err)),
            GenerationEvent::Done(summary) => {
                let body = json!({
                    "id": id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish_reason(summary.finish_reason),
                    }],
                    "usage": {
                        "prompt_tokens": summary.prompt_tokens,
                        "completion_tokens": summary.completion_tokens,
                        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
                    },
                });
                return Ok(warp::reply::json(&body).into_response());
            }
        }
    }
    Err(reject(ApiError::unavailable(
        "the generation ended unexpectedly",
    )))
}

fn completion_request(body: &CompletionRequest) -> Result<GenerateRequest, Rejection> {
    if body.messages.is_empty() {
        return Err(reject(ApiError::validation(
            "messages",
            "must not be empty",
        )));
    }
    let messages = body
        .messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(reject(ApiError::validation(
                        &format!("messages[{i}].role"),
                        format!("unknown role {other:?}"),
                    )))
                }
            };
            Ok(ChatMessage {
                role,
                content: message.content.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = SamplingParams::default();
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(reject(ApiError::validation(
            "temperature",
            "must be between 0 and 2",
        )));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(reject(ApiError::validation("top_p", "must be in (0, 1]")));
    }
    let stop = match &body.stop {
        None => Vec::new(),
        Some(StopInput::One(stop)) => vec![stop.clone()],
        Some(StopInput::Many(stops)) => stops.clone(),
    };
    Ok(GenerateRequest {
        messages,
        params: SamplingParams {
            temperature,
            top_p,
            // OpenAI has no top-k: consider every token.
            top_k: 0,
            seed: body.seed,
            max_tokens: body.max_tokens.unwrap_or(defaults.max_tokens).max(1),
            stop,
        },
    })
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// The generation as server-sent `chat.completion.chunk` events, then `[DONE]`.
fn stream_reply(
    events: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
    id: String,
    created: i64,
    model: String,
) -> Response {
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let events = futures_util::stream::unfold(events, |mut events| async move {
        events.recv().await.map(|event| (event, events))
    });
    let body = futures_util::stream::once(async move { first })
        .chain(events.map(move |event| match event {
            GenerationEvent::Text(piece) => chunk(json!({"content": piece}), None),
            GenerationEvent::Done(summary) => {
                chunk(json!({}), Some(finish_reason(summary.finish_reason)))
            }
            GenerationEvent::Failed(err) => {
                json!({"error": {"message": err.to_string(), "type": "server_error"}}).to_string()
            }
        }))
        .chain(futures_util::stream::once(async { "[DONE]".to_owned() }))
        .map(|data| Ok::<_, Infallible>(warp::sse::Event::default().data(data)));
    let mut response = warp::sse::reply(body).into_response();
    *response.status_mut() = StatusCode::OK;
    response
}
