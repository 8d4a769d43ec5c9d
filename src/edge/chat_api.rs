//! `/api/chat/message` and `/api/chat/conversations*`: chatting with Bee over REST, the
//! caller's conversations, their token usage and pruning. Every conversation route answers 404
//! for a conversation the caller does not own, exactly as for one that does not exist.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sting_actors::conversation::{
    ChatError, TurnEvent, TurnOutcome, TurnRequest, TurnStream, UsageReport,
};
use sting_actors::session::Identity;
use sting_store::{
    Conversation, ConversationQuery, ConversationSort, Message, PruningRecord, SortOrder,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, ErrorEnvelope};
use super::json::json_body;
use super::{authenticated, page, reject, rfc3339, with_ctx};
use crate::app::AppContext;

/// Largest page of a listing or a history.
const MAX_PAGE: u32 = 1000;
const MAX_SEARCH_CHARS: usize = 200;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let chat = warp::path("api").and(warp::path("chat"));
    let message = chat
        .and(warp::path("message"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<MessageRequest>(limit))
        .and_then(send_message);
    let conversations = chat.and(warp::path("conversations"));
    let list = conversations
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::query::<ListQuery>())
        .and_then(list_conversations);
    let one = conversations.and(warp::path::param::<Uuid>());
    let get = one
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::query::<HistoryQuery>())
        .and_then(get_conversation);
    let delete = one
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(delete_conversation);
    let usage = one
        .and(warp::path("token-usage"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(token_usage);
    let prune = one
        .and(warp::path("prune"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authenticated())
        .and_then(prune_conversation);
    message
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(usage)
        .unify()
        .or(prune)
        .unify()
        .boxed()
}

/// A message to Bee.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// At most `chat.max_message_chars` characters.
    #[schema(min_length = 1, pattern = r"\S")]
    pub message: String,
    /// Continue this conversation; omitted: start a new one.
    pub conversation_id: Option<Uuid>,
    #[serde(default)]
    pub context: MessageContext,
    /// Client-chosen id of this turn, echoed in every WebSocket frame of the turn (at most
    /// 64 characters; the server picks one when omitted). It also makes the turn idempotent:
    /// the same request id with the same message in the same conversation is stored once,
    /// and once answered, a retry gets the stored answer.
    pub request_id: Option<String>,
}

/// Options of one turn.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageContext {
    /// Model to answer with (default: the conversation's, else `models.default_chat_model`).
    pub model: Option<String>,
    /// 0–2 (default `chat.default_temperature`).
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Longest answer in tokens (default `chat.default_max_tokens`; capped by the context).
    #[schema(minimum = 1, maximum = 32768)]
    #[serde(default, deserialize_with = "super::json::optional_whole_number")]
    pub max_tokens: Option<usize>,
    /// Honey jars to answer from (retrieved passages are added to Bee's prompt).
    #[serde(default)]
    pub honey_jar_ids: Vec<Uuid>,
}

impl MessageRequest {
    /// The turn for the actor; the caller comes from the session, never from the body.
    pub fn into_turn(self, who: &Identity) -> Result<TurnRequest, ApiError> {
        let context = self.context;
        if let Some(t) = context.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::validation(
                    "context.temperature",
                    "must be between 0 and 2",
                ));
            }
        }
        if context.max_tokens == Some(0) {
            return Err(ApiError::validation(
                "context.max_tokens",
                "must be positive",
            ));
        }
        let request_id = match &self.request_id {
            Some(id) => idempotency_key(who.user_id, id, self.conversation_id, &self.message),
            None => Uuid::new_v4(),
        };
        Ok(TurnRequest {
            request_id,
            user_id: who.user_id,
            conversation_id: self.conversation_id,
            message: self.message,
            model: context.model,
            temperature: context.temperature,
            max_tokens: context.max_tokens,
            honey_jar_ids: context.honey_jar_ids,
        })
    }
}

/// The id a turn's user message gets from a client's request id: the same for a retry (same
/// caller, request id, conversation and text), different when a client reuses a request id for
/// another message.
fn idempotency_key(
    user: Uuid,
    request_id: &str,
    conversation: Option<Uuid>,
    message: &str,
) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(user.as_bytes());
    hash.update(conversation.unwrap_or_default().as_bytes());
    hash.update((request_id.len() as u64).to_le_bytes());
    hash.update(request_id.as_bytes());
    hash.update(message.trim().as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Bee's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub response: String,
    pub conversation_id: Uuid,
    /// Id of the answer.
    pub message_id: Uuid,
    pub model_used: String,
    /// Seconds from receiving the message to storing the answer.
    pub response_time: f64,
    pub metadata: TurnMetadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TurnMetadata {
    /// Prompt plus answer tokens of this turn.
    pub tokens_used: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Seconds spent loading the model for this turn (0 when it was loaded).
    pub model_load_time: f64,
    /// Seconds to the first token of the answer.
    pub time_to_first_token: f64,
    pub user_message_id: Uuid,
    /// "complete", or "cancelled" when the answer was stopped (it holds the partial text).
    pub status: String,
    /// Set when the conversation was pruned before this turn.
    pub pruning: Option<PruningView>,
}

impl MessageResponse {
    pub fn of(outcome: &TurnOutcome, user_message_id: Uuid) -> MessageResponse {
        MessageResponse {
            response: outcome.content.clone(),
            conversation_id: outcome.conversation_id,
            message_id: outcome.message_id,
            model_used: outcome.model.clone(),
            response_time: outcome.response_time.as_secs_f64(),
            metadata: TurnMetadata {
                tokens_used: outcome.prompt_tokens + outcome.completion_tokens,
                prompt_tokens: outcome.prompt_tokens,
                completion_tokens: outcome.completion_tokens,
                model_load_time: outcome.model_load_time.map_or(0.0, |d| d.as_secs_f64()),
                time_to_first_token: outcome.time_to_first_token.as_secs_f64(),
                user_message_id,
                status: outcome.status.as_str().to_owned(),
                pruning: outcome.pruning.as_ref().map(PruningView::of),
            },
        }
    }
}

/// What a pruning did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PruningView {
    pub timestamp: String,
    pub messages_pruned: u64,
    pub tokens_saved: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// True when it happened before a request that would have exceeded the budget.
    pub automatic: bool,
}

impl PruningView {
    fn of(record: &PruningRecord) -> PruningView {
        PruningView {
            timestamp: rfc3339(record.timestamp),
            messages_pruned: record.messages_pruned,
            tokens_saved: record.tokens_before.saturating_sub(record.tokens_after),
            tokens_before: record.tokens_before,
            tokens_after: record.tokens_after,
            automatic: record.automatic,
        }
    }
}

/// Waits for a turn to finish; `Err` for a failed turn.
pub async fn finish_turn(mut turn: TurnStream) -> Result<(TurnOutcome, Uuid), ChatError> {
    let mut user_message_id = Uuid::nil();
    while let Some(event) = turn.next().await {
        match event {
            TurnEvent::Accepted {
                user_message_id: id,
                ..
            } => user_message_id = id,
            TurnEvent::Chunk(_) | TurnEvent::Restarted => {}
            TurnEvent::Done(outcome) => return Ok((*outcome, user_message_id)),
            TurnEvent::Failed(err) => return Err(err),
        }
    }
    Err(ChatError::Unavailable("the turn ended unexpectedly".into()))
}

/// Send a message to Bee and get the whole answer. The message and the answer are stored
/// before this returns; a client that disconnects stops the answer (stored as cancelled).
#[utoipa::path(post, path = "/api/chat/message", tag = "chat", request_body = MessageRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = MessageResponse),
        (status = 401, body = ErrorEnvelope),
        (status = 404, description = "conversation or model not found", body = ErrorEnvelope),
        (status = 422, description = "bad field, or message too long for the model", body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
        (status = 503, description = "model busy or unavailable", body = ErrorEnvelope),
    ))]
pub async fn send_message(
    ctx: Arc<AppContext>,
    who: Identity,
    body: MessageRequest,
) -> Result<Response, Rejection> {
    let turn = body.into_turn(&who).map_err(reject)?;
    let stream = ctx.chat.send(turn).await.map_err(reject)?;
    let (outcome, user_message_id) = finish_turn(stream).await.map_err(reject)?;
    Ok(warp::reply::json(&MessageResponse::of(&outcome, user_message_id)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Conversations to skip (default 0).
    pub offset: Option<u64>,
    /// `created_at` or `updated_at` (default).
    #[param(pattern = "^(created_at|updated_at)$")]
    pub sort: Option<String>,
    /// `asc` or `desc` (default).
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// Only conversations whose title contains this (case-insensitive), at most 200 characters.
    pub search: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationSummary {
    pub id: Uuid,
    /// From the first message.
    pub title: String,
    /// Preview of the latest message.
    pub last_message: String,
    pub created_at: String,
    pub updated_at: String,
    pub message_count: u64,
    pub model: String,
}

impl ConversationSummary {
    fn of(c: &Conversation) -> ConversationSummary {
        ConversationSummary {
            id: c.id,
            title: c.title.clone(),
            last_message: c.last_message.clone(),
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
            message_count: c.message_count,
            model: c.model.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The caller's conversations.
#[utoipa::path(get, path = "/api/chat/conversations", tag = "chat", params(ListQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ConversationList),
        (status = 401, body = ErrorEnvelope),
        (status = 422, description = "bad limit, sort, order or search", body = ErrorEnvelope),
    ))]
pub async fn list_conversations(
    ctx: Arc<AppContext>,
    who: Identity,
    query: ListQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let sort = match query.sort.as_deref().unwrap_or("updated_at") {
        "updated_at" => ConversationSort::UpdatedAt,
        "created_at" => ConversationSort::CreatedAt,
        _ => {
            return Err(reject(ApiError::validation(
                "sort",
                "must be created_at or updated_at",
            )))
        }
    };
    let order = match query.order.as_deref().unwrap_or("desc") {
        "desc" => SortOrder::Desc,
        "asc" => SortOrder::Asc,
        _ => return Err(reject(ApiError::validation("order", "must be asc or desc"))),
    };
    let search = query
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > MAX_SEARCH_CHARS) {
        return Err(reject(ApiError::validation(
            "search",
            format!("at most {MAX_SEARCH_CHARS} characters"),
        )));
    }
    let query = ConversationQuery {
        sort,
        order,
        search: search.map(str::to_owned),
        page,
    };
    let (conversations, total) = ctx.chat.list(who.user_id, &query).await.map_err(reject)?;
    Ok(warp::reply::json(&ConversationList {
        conversations: conversations.iter().map(ConversationSummary::of).collect(),
        total,
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages per page, 1–1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Messages to skip from the start (default 0).
    pub offset: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    /// "user" or "assistant".
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    pub timestamp: String,
    /// The model that wrote an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// "complete", or "cancelled" for an answer that was stopped.
    pub status: String,
    /// Summarised into the conversation's summary and no longer sent to the model.
    pub pruned: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationHistory {
    pub conversation_id: Uuid,
    pub title: String,
    pub created_at: String,
    pub updated_at: String,
    pub model: String,
    pub message_count: u64,
    /// Running summary of the pruned messages.
    pub summary: Option<String>,
    pub messages: Vec<MessageView>,
    pub limit: u32,
    pub offset: u64,
}

fn message_view(message: &Message, pruned_through: u64) -> MessageView {
    MessageView {
        id: message.id,
        kind: message.role.as_str().to_owned(),
        content: message.content.clone(),
        timestamp: rfc3339(message.created_at),
        model: message.model.clone(),
        status: message.status.as_str().to_owned(),
        pruned: message.seq <= pruned_through,
    }
}

/// A conversation with its messages, oldest first (pruned ones included, marked).
#[utoipa::path(get, path = "/api/chat/conversations/{conversation_id}", tag = "chat",
    params(("conversation_id" = Uuid, Path, description = "Conversation id"), HistoryQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ConversationHistory),
        (status = 401, body = ErrorEnvelope),
        (status = 404, description = "no such conversation of the caller", body = ErrorEnvelope),
    ))]
pub async fn get_conversation(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    query: HistoryQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, MAX_PAGE, MAX_PAGE)?;
    let from_seq = page.offset.saturating_add(1);
    let (conversation, messages) = ctx
        .chat
        .history(who.user_id, id, from_seq, page.limit)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&ConversationHistory {
        conversation_id: conversation.id,
        title: conversation.title.clone(),
        created_at: rfc3339(conversation.created_at),
        updated_at: rfc3339(conversation.updated_at),
        model: conversation.model.clone(),
        message_count: conversation.message_count,
        summary: conversation.summary.clone(),
        messages: messages
            .iter()
            .map(|m| message_view(m, conversation.pruned_through))
            .collect(),
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    pub success: bool,
    pub conversation_id: Uuid,
}

/// Delete a conversation with its messages and summary.
#[utoipa::path(delete, path = "/api/chat/conversations/{conversation_id}", tag = "chat",
    params(("conversation_id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn delete_conversation(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    ctx.chat.delete(who.user_id, id).await.map_err(reject)?;
    Ok(warp::reply::json(&DeleteResponse {
        success: true,
        conversation_id: id,
    })
    .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ByRole {
    pub system: u64,
    pub user: u64,
    pub assistant: u64,
}

/// What the conversation costs the model now: the system message (Bee's prompt and the
/// summary) and every message not yet pruned, each counted with its chat template.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenUsageResponse {
    pub total: u64,
    pub by_role: ByRole,
    pub context_limit: u64,
    pub max_allowed_tokens: u64,
    pub utilization_percent: f64,
    pub model: String,
    pub last_pruning: Option<PruningView>,
}

impl TokenUsageResponse {
    fn of(report: &UsageReport) -> TokenUsageResponse {
        let total = report.usage.total();
        let utilization = if report.max_allowed_tokens == 0 {
            0.0
        } else {
            (total as f64 * 1000.0 / report.max_allowed_tokens as f64).round() / 10.0
        };
        TokenUsageResponse {
            total,
            by_role: ByRole {
                system: report.usage.system,
                user: report.usage.user,
                assistant: report.usage.assistant,
            },
            context_limit: report.context_limit,
            max_allowed_tokens: report.max_allowed_tokens,
            utilization_percent: utilization,
            model: report.model.clone(),
            last_pruning: report.last_pruning.as_ref().map(PruningView::of),
        }
    }
}

/// Token usage of a conversation, counted exactly with its model's tokenizer.
#[utoipa::path(get, path = "/api/chat/conversations/{conversation_id}/token-usage", tag = "chat",
    params(("conversation_id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = TokenUsageResponse),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn token_usage(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    let report = ctx.chat.usage(who.user_id, id).await.map_err(reject)?;
    Ok(warp::reply::json(&TokenUsageResponse::of(&report)).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PruneResponse {
    pub success: bool,
    pub pruning_result: PruningResult,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PruningResult {
    pub messages_pruned: u64,
    pub messages_kept: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// The running summary now injected into the prompt.
    pub summary: Option<String>,
}

/// Summarise all but the most recent messages now (`chat.keep_recent_messages` are kept).
/// The pruned messages stay in the history, marked pruned.
#[utoipa::path(post, path = "/api/chat/conversations/{conversation_id}/prune", tag = "chat",
    params(("conversation_id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = PruneResponse),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 503, description = "model busy or unavailable", body = ErrorEnvelope),
    ))]
pub async fn prune_conversation(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    let report = ctx.chat.prune(who.user_id, id).await.map_err(reject)?;
    Ok(warp::reply::json(&PruneResponse {
        success: true,
        pruning_result: PruningResult {
            messages_pruned: report.messages_pruned,
            messages_kept: report.messages_kept,
            tokens_before: report.tokens_before,
            tokens_after: report.tokens_after,
            summary: report.summary,
        },
    })
    .into_response())
}
