//! `GET /api/chat/ws`: chat with Bee over a WebSocket, with streamed answers and model status
//! events. The protocol (documented in docs/websocket.md):
//!
//! client → server: `auth` {token} · `message` {data: {message, conversation_id?, context?,
//! request_id?}} · `cancel` {request_id?} · `subscribe` / `unsubscribe` {channel:
//! "model_status"} · `ping`.
//!
//! server → client: `authenticated` · `message_received` (the user's message is stored) ·
//! `response_chunk` {chunk} · `response_restart` (the conversation's node went down mid-answer;
//! discard the chunks so far, the answer starts again) · `response_complete` (the answer is
//! stored; same fields as the REST answer) · `model_loaded` / `model_unloaded` · `subscribed` / `unsubscribed` · `pong` ·
//! `error` {error: envelope}. A bad frame gets an `error` frame; the socket stays open.
//!
//! The socket authenticates with the upgrade request's cookie or bearer header, or with a first
//! `auth` frame. The session is re-checked for every message, so a logout ends the socket's
//! rights too. Each `message` frame counts against the chat rate limit, like a REST message,
//! and each `auth` frame against the credential-attempt limit of the client's address.
//! The server pings every `chat.ws_ping_interval_secs` and closes a socket silent for
//! `chat.ws_idle_timeout_secs`; at shutdown it closes sockets with 1001 (going away).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use sting_actors::conversation::TurnEvent;
use sting_actors::model::pool::ModelEvent;
use sting_actors::session::Identity;
use tokio::sync::{broadcast, mpsc, oneshot};
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::chat_api::{MessageRequest, MessageResponse};
use super::error::{current_request_id, ApiError, REQUEST_ID};
use super::json::parse_json;
use super::rate_limit::{Caller, Category};
use super::{client_ip, optional_identity, session_token, with_ctx, SessionToken};
use crate::app::AppContext;

/// A socket without a session must authenticate this soon.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Turns one socket may run at once.
const MAX_TURNS_PER_SOCKET: usize = 4;
/// Frames waiting to be written to one socket (senders wait beyond it: backpressure).
const OUTBOUND_QUEUE: usize = 256;
const MAX_REQUEST_ID_CHARS: usize = 64;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path("api")
        .and(warp::path("chat"))
        .and(warp::path("ws"))
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::ws())
        .and(with_ctx(ctx))
        .and(optional_identity())
        .and(client_ip())
        .and(warp::header::headers_cloned())
        .map(
            |ws: Ws,
             ctx: Arc<AppContext>,
             identity: Option<Identity>,
             client_ip: IpAddr,
             headers: HeaderMap| {
                let chat = &ctx.config.chat;
                let token = identity
                    .as_ref()
                    .and_then(|_| session_token(&headers, &ctx.config.auth.cookie_name))
                    .map(SessionToken::into_inner);
                let upgrade_id = current_request_id();
                ws.max_frame_size(chat.ws_max_frame_bytes)
                    .max_message_size(chat.ws_max_frame_bytes)
                    .on_upgrade(move |socket| {
                        REQUEST_ID.scope(upgrade_id, run_socket(socket, ctx, token, client_ip))
                    })
                    .into_response()
            },
        )
        .boxed()
}

/// A frame from the client, by its `type`.
enum ClientFrame {
    Auth(AuthFrame),
    Message(MessageFrame),
    Cancel(CancelFrame),
    Subscribe(ChannelFrame),
    Unsubscribe(ChannelFrame),
    Ping,
}

// One struct per frame type (rather than one internally tagged enum) so that a bad field is
// named with its full path, e.g. `data.message`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    data: MessageRequest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
}

#[derive(Debug, Deserialize)]
struct FrameType {
    #[serde(rename = "type")]
    kind: String,
}

impl ClientFrame {
    fn parse(text: &str) -> Result<ClientFrame, ApiError> {
        let bytes = text.as_bytes();
        let FrameType { kind } = parse_json(bytes)?;
        Ok(match kind.as_str() {
            "auth" => ClientFrame::Auth(parse_json(bytes)?),
            "message" => ClientFrame::Message(parse_json(bytes)?),
            "cancel" => ClientFrame::Cancel(parse_json(bytes)?),
            "subscribe" => ClientFrame::Subscribe(parse_json(bytes)?),
            "unsubscribe" => ClientFrame::Unsubscribe(parse_json(bytes)?),
            "ping" => ClientFrame::Ping,
            _ => {
                return Err(ApiError::validation(
                    "type",
                    "must be auth, message, cancel, subscribe, unsubscribe or ping",
                ))
            }
        })
    }
}

const MODEL_STATUS: &str = "model_status";

/// The state of one socket.
struct Socket {
    ctx: Arc<AppContext>,
    /// The session token once authenticated (re-checked for every message).
    token: Option<String>,
    /// Who `auth` frames are counted against.
    client_ip: IpAddr,
    out: mpsc::Sender<Message>,
    /// Running turns by request id: dropping or firing the sender stops the turn.
    turns: HashMap<String, oneshot::Sender<()>>,
    finished: mpsc::UnboundedSender<String>,
    model_events: Option<broadcast::Receiver<ModelEvent>>,
}

async fn run_socket(
    socket: WebSocket,
    ctx: Arc<AppContext>,
    token: Option<String>,
    client_ip: IpAddr,
) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbound) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            let closing = frame.is_close();
            if sink.send(frame).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (finished, mut finished_turns) = mpsc::unbounded_channel();
    let mut socket = Socket {
        ctx: ctx.clone(),
        token,
        client_ip,
        out,
        turns: HashMap::new(),
        finished,
        model_events: None,
    };
    ctx.metrics.websocket_opened();
    let chat = &ctx.config.chat;
    let idle_timeout = Duration::from_secs(chat.ws_idle_timeout_secs);
    let mut ping = tokio::time::interval(Duration::from_secs(chat.ws_ping_interval_secs));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = ctx.closing.subscribe();
    let opened = Instant::now();
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                if frame.is_close() {
                    break;
                }
                if frame.is_text() {
                    let text = frame.to_str().unwrap_or_default().to_owned();
                    if !socket.on_text(&text).await {
                        break;
                    }
                } else if frame.is_binary() {
                    socket.error(None, ApiError::bad_request("frames must be JSON text")).await;
                }
                // Pings are answered by the WebSocket layer; pongs only count as activity.
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    socket.close(1001, "idle timeout").await;
                    break;
                }
                if socket.token.is_none() && opened.elapsed() >= AUTH_TIMEOUT {
                    socket.close(1008, "authentication required").await;
                    break;
                }
                let _ = socket.out.send(Message::ping(Vec::new())).await;
            }
            event = next_model_event(&mut socket.model_events) => {
                let frame = match event {
                    ModelEvent::Loaded { name, load_time } => json!({
                        "type": "model_loaded", "model": name, "load_time": load_time.as_secs_f64(),
                    }),
                    ModelEvent::Unloaded { name } => json!({"type": "model_unloaded", "model": name}),
                };
                socket.send(frame).await;
            }
            Some(id) = finished_turns.recv() => {
                socket.turns.remove(&id);
            }
            _ = closing.changed() => {
                socket.close(1001, "server shutting down").await;
                break;
            }
        }
    }
    // Dropping the turn handles stops their generations (answers stored as cancelled).
    socket.turns.clear();
    drop(socket);
    let _ = writer.await;
    ctx.metrics.websocket_closed();
}

/// The next model event of a subscription; pending forever without one.
async fn next_model_event(events: &mut Option<broadcast::Receiver<ModelEvent>>) -> ModelEvent {
    let Some(receiver) = events else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(event) => return event,
            // A slow socket misses events rather than holding memory for them.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

impl Socket {
    async fn send(&self, frame: Value) {
        let _ = self.out.send(Message::text(frame.to_string())).await;
    }

    async fn error(&self, request_id: Option<&str>, err: ApiError) {
        send_error(&self.out, request_id, &err).await;
    }

    async fn close(&self, code: u16, reason: &str) {
        let _ = self
            .out
            .send(Message::close_with(code, reason.to_owned()))
            .await;
    }

    /// Handles one text frame; `false` when the socket must close.
    async fn on_text(&mut self, text: &str) -> bool {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(err) => {
                self.error(None, err).await;
                return true;
            }
        };
        match frame {
            ClientFrame::Ping => self.send(json!({"type": "pong"})).await,
            ClientFrame::Auth(AuthFrame { token, .. }) => self.authenticate(token).await,
            _ if self.token.is_none() => {
                self.error(None, ApiError::authentication_required()).await
            }
            ClientFrame::Message(MessageFrame { data, .. }) => return self.start_turn(data).await,
            ClientFrame::Cancel(CancelFrame { request_id, .. }) => self.cancel(request_id).await,
            ClientFrame::Subscribe(ChannelFrame { channel, .. }) => {
                if self.check_channel(&channel).await {
                    self.model_events = Some(self.ctx.models.subscribe());
                    self.send(json!({"type": "subscribed", "channel": channel}))
                        .await;
                }
            }
            ClientFrame::Unsubscribe(ChannelFrame { channel, .. }) => {
                if self.check_channel(&channel).await {
                    self.model_events = None;
                    self.send(json!({"type": "unsubscribed", "channel": channel}))
                        .await;
                }
            }
        }
        true
    }

    async fn check_channel(&self, channel: &str) -> bool {
        if channel == MODEL_STATUS {
            return true;
        }
        self.error(
            None,
            ApiError::validation("channel", format!("unknown channel; use {MODEL_STATUS}")),
        )
        .await;
        false
    }

    async fn authenticate(&mut self, token: String) {
        let decision = self
            .ctx
            .rate_limits
            .check(Category::Auth, &Caller::address(self.client_ip));
        if let Some(decision) = decision.filter(|d| !d.allowed) {
            let err = ApiError::rate_limited(decision.limit, decision.retry_after);
            return self.error(None, err).await;
        }
        match self.ctx.identity.sessions().authenticate(&token).await {
            Ok(Some(identity)) => {
                self.token = Some(token);
                self.send(json!({"type": "authenticated", "user_id": identity.user_id}))
                    .await;
            }
            Ok(None) => self.error(None, ApiError::authentication_required()).await,
            Err(err) => self.error(None, err.into()).await,
        }
    }

    /// The socket's identity, re-checked with the session (`None` once it ended).
    async fn identity(&self) -> Result<Option<Identity>, ApiError> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        Ok(self.ctx.identity.sessions().authenticate(token).await?)
    }

    async fn start_turn(&mut self, data: MessageRequest) -> bool {
        let request_id = data
            .request_id
            .clone()
            .unwrap_or_else(|| format!("turn_{}", uuid::Uuid::new_v4().simple()));
        let rid = Some(request_id.as_str());
        if request_id.chars().count() > MAX_REQUEST_ID_CHARS {
            let err = ApiError::validation("data.request_id", "at most 64 characters");
            self.error(None, err).await;
            return true;
        }
        let who = match self.identity().await {
            Ok(Some(who)) => who,
            Ok(None) => {
                self.error(rid, ApiError::authentication_required()).await;
                self.close(1008, "session ended").await;
                return false;
            }
            Err(err) => {
                self.error(rid, err).await;
                return true;
            }
        };
        let decision = self
            .ctx
            .rate_limits
            .check(Category::Chat, &Caller::User(who.user_id));
        if let Some(decision) = decision.filter(|d| !d.allowed) {
            let err = ApiError::rate_limited(decision.limit, decision.retry_after);
            self.error(rid, err).await;
            return true;
        }
        if self.turns.contains_key(&request_id) {
            let err = ApiError::validation("data.request_id", "a turn with this id is running");
            self.error(rid, err).await;
            return true;
        }
        if self.turns.len() >= MAX_TURNS_PER_SOCKET {
            let mut err = ApiError::rate_limited(MAX_TURNS_PER_SOCKET as u32, 1);
            err.message = format!("at most {MAX_TURNS_PER_SOCKET} turns run at once per socket");
            self.error(rid, err).await;
            return true;
        }
        let turn = match data.into_turn(&who) {
            Ok(turn) => turn,
            Err(err) => {
                self.error(rid, err).await;
                return true;
            }
        };
        let (cancel, cancelled) = oneshot::channel();
        self.turns.insert(request_id.clone(), cancel);
        let (ctx, out, finished) = (self.ctx.clone(), self.out.clone(), self.finished.clone());
        let scope = current_request_id();
        tokio::spawn(REQUEST_ID.scope(scope, async move {
            stream_turn(&ctx, &out, &request_id, turn, cancelled).await;
            let _ = finished.send(request_id);
        }));
        true
    }

    async fn cancel(&mut self, request_id: Option<String>) {
        match request_id {
            Some(id) => match self.turns.remove(&id) {
                Some(cancel) => {
                    let _ = cancel.send(());
                }
                None => {
                    let err = ApiError::not_found("running turn");
                    self.error(Some(&id), err).await;
                }
            },
            None => {
                for (_, cancel) in self.turns.drain() {
                    let _ = cancel.send(());
                }
            }
        }
    }
}

async fn send_error(out: &mpsc::Sender<Message>, request_id: Option<&str>, err: &ApiError) {
    let envelope = err.envelope();
    let frame = json!({"type": "error", "request_id": request_id, "error": envelope.error});
    let _ = out.send(Message::text(frame.to_string())).await;
}

/// Runs one turn, writing its frames; a fired or dropped `cancelled` stops the answer.
async fn stream_turn(
    ctx: &AppContext,
    out: &mpsc::Sender<Message>,
    request_id: &str,
    turn: sting_actors::conversation::TurnRequest,
    mut cancelled: oneshot::Receiver<()>,
) {
    let frame = |value: Value| Message::text(value.to_string());
    let mut stream = match ctx.chat.send(turn).await {
        Ok(stream) => stream,
        Err(err) => return send_error(out, Some(request_id), &err.into()).await,
    };
    let mut user_message_id = uuid::Uuid::nil();
    let mut stopping = false;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut cancelled, if !stopping => {
                stopping = true;
                stream.cancel();
                continue;
            }
        };
        let Some(event) = event else {
            let err = ApiError::unavailable("the turn ended unexpectedly");
            return send_error(out, Some(request_id), &err).await;
        };
        match event {
            TurnEvent::Accepted {
                conversation_id,
                user_message_id: id,
                model,
            } => {
                user_message_id = id;
                let value = json!({
                    "type": "message_received", "request_id": request_id,
                    "conversation_id": conversation_id, "message_id": id, "model": model,
                });
                let _ = out.send(frame(value)).await;
            }
            TurnEvent::Chunk(chunk) => {
                let value =
                    json!({"type": "response_chunk", "request_id": request_id, "chunk": chunk});
                let _ = out.send(frame(value)).await;
            }
            TurnEvent::Restarted => {
                let value = json!({"type": "response_restart", "request_id": request_id});
                let _ = out.send(frame(value)).await;
            }
            TurnEvent::Done(outcome) => {
                let mut value =
                    serde_json::to_value(MessageResponse::of(&outcome, user_message_id))
                        .unwrap_or_default();
                value["type"] = json!("response_complete");
                value["request_id"] = json!(request_id);
                let _ = out.send(frame(value)).await;
                return;
            }
            TurnEvent::Failed(err) => return send_error(out, Some(request_id), &err.into()).await,
        }
    }
}
