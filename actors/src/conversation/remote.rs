//! Turns whose conversation another node owns.
//!
//! The edge node (the one holding the client's socket) asks the owner to run the turn
//! ([`TurnStart`], a call answered with the turn's first event), registers the turn's request
//! id in its inbox, and relays the events the owner casts back into the caller's
//! [`TurnStream`]. An `ActorRef` cannot travel to the owner, so the reply path is the edge's
//! node endpoint plus the request id.
//!
//! When the owner goes down before or during the turn, the edge runs it again on the new owner
//! with the same request id: the user's message is stored once (its id is the request id, and
//! the owner skips a message it already has), and a stream that had begun reports
//! [`TurnEvent::Restarted`] before the new answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sting_cluster::{ClusterError, NodeId};
use sting_store::{ConversationId, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{ChatError, ConversationRegistry, TurnEvent, TurnRequest, TurnStream};
use crate::model::ModelError;
use crate::remote::Request;

/// How long the edge waits for an owner to accept a turn (it stores the message first).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A turn whose owner sent nothing for this long is abandoned.
const EVENT_SILENCE: Duration = Duration::from_secs(300);
/// Attempts on successive owners before giving up.
const MAX_OWNERS: usize = 4;

/// Asks the owner to run a turn.
#[derive(Debug, Serialize, Deserialize)]
pub struct TurnStart {
    pub conversation_id: ConversationId,
    /// The conversation is new (its id was chosen by the edge).
    pub create: bool,
    pub request: TurnRequest,
    /// The edge node, where the events go.
    pub reply_to: NodeId,
}

/// Turn events on their way from owners to this node's callers, by request id.
#[derive(Default)]
pub(crate) struct Inbox(Mutex<HashMap<Uuid, mpsc::UnboundedSender<TurnEvent>>>);

impl Inbox {
    fn open(&self, request_id: Uuid) -> mpsc::UnboundedReceiver<TurnEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(request_id, tx);
        rx
    }

    fn close(&self, request_id: Uuid) {
        self.lock().remove(&request_id);
    }

    pub(crate) fn deliver(&self, request_id: Uuid, event: TurnEvent) {
        let mut turns = self.lock();
        if let Some(tx) = turns.get(&request_id) {
            if tx.send(event).is_err() {
                turns.remove(&request_id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, mpsc::UnboundedSender<TurnEvent>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Cancellation of turns this node runs for other nodes' callers, by request id.
#[derive(Default)]
pub(crate) struct Served(Mutex<HashMap<Uuid, oneshot::Sender<()>>>);

impl Served {
    fn insert(&self, request_id: Uuid) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(request_id, tx);
        rx
    }

    fn remove(&self, request_id: Uuid) {
        self.lock().remove(&request_id);
    }

    pub(crate) fn cancel(&self, request_id: Uuid) {
        if let Some(cancel) = self.lock().remove(&request_id) {
            let _ = cancel.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<()>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts a turn on whichever node owns the conversation now, following the owner when it
/// goes down.
pub(super) async fn send(
    registry: &ConversationRegistry,
    conversation_id: ConversationId,
    create: bool,
    request: TurnRequest,
) -> Result<TurnStream, ChatError> {
    let mut relay = Relay {
        registry: registry.clone(),
        conversation_id,
        create,
        request,
        owners_tried: 0,
    };
    let (leg, first) = relay.start().await?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let (cancel, cancelled) = oneshot::channel();
    let finished = matches!(first, TurnEvent::Failed(_) | TurnEvent::Done(_));
    if !finished {
        tokio::spawn(relay.run(leg, events_tx, cancelled));
    }
    Ok(TurnStream {
        first: Some(first),
        events,
        cancel: Some(cancel),
    })
}

/// Where a turn's events come from: a local actor, or an owner elsewhere.
enum Leg {
    Local(TurnStream),
    Remote {
        owner: NodeId,
        events: mpsc::UnboundedReceiver<TurnEvent>,
    },
}

struct Relay {
    registry: ConversationRegistry,
    conversation_id: ConversationId,
    create: bool,
    request: TurnRequest,
    owners_tried: usize,
}

impl Relay {
    fn request_id(&self) -> Uuid {
        self.request.request_id
    }

    /// Runs the turn on the current owner until it is accepted (or refused), moving on when
    /// an owner turns out to be down.
    async fn start(&mut self) -> Result<(Leg, TurnEvent), ChatError> {
        let cluster = self.registry.cluster().clone();
        let key = super::lease_key(self.conversation_id);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.owners_tried += 1;
            let owner = cluster.owner(key.as_bytes());
            if owner == *cluster.local() {
                let mut stream = self
                    .registry
                    .send_local(self.conversation_id, self.create, self.request.clone())
                    .await?;
                let first = stream.next().await.ok_or_else(|| {
                    ChatError::Unavailable("the conversation actor stopped".into())
                })?;
                return Ok((Leg::Local(stream), first));
            }
            let events = self.registry.shared.inbox.open(self.request_id());
            let start = Request::Turn(TurnStart {
                conversation_id: self.conversation_id,
                create: self.create,
                request: self.request.clone(),
                reply_to: cluster.local().clone(),
            });
            let remaining = deadline.saturating_duration_since(Instant::now());
            match cluster
                .call::<_, Result<TurnEvent, WireError>>(&owner, &start, remaining)
                .await
            {
                Ok(Ok(first)) => return Ok((Leg::Remote { owner, events }, first)),
                Ok(Err(err)) => {
                    self.registry.shared.inbox.close(self.request_id());
                    return Err(err.into());
                }
                Err(err) => {
                    self.registry.shared.inbox.close(self.request_id());
                    tracing::warn!(conversation = %self.conversation_id, %owner, error = %err, "conversation owner did not take the turn");
                    if self.owners_tried >= MAX_OWNERS || Instant::now() >= deadline {
                        return Err(unavailable(err));
                    }
                    // Retry once the cluster names another owner, or the same one is back.
                    self.await_owner_change(&owner, deadline).await;
                }
            }
        }
    }

    /// Relays the turn's events to the caller until it ends; restarts it on a new owner when
    /// the current one goes down.
    async fn run(
        mut self,
        mut leg: Leg,
        events_tx: mpsc::UnboundedSender<TurnEvent>,
        mut cancelled: oneshot::Receiver<()>,
    ) {
        let cluster = self.registry.cluster().clone();
        let mut view = cluster.subscribe();
        let mut cancel_requested = false;
        loop {
            let next = tokio::select! {
                event = next_event(&mut leg) => Some(event),
                _ = &mut cancelled, if !cancel_requested => {
                    cancel_requested = true;
                    self.cancel(&mut leg);
                    continue;
                }
                _ = events_tx.closed(), if !cancel_requested => {
                    cancel_requested = true;
                    self.cancel(&mut leg);
                    continue;
                }
                changed = view.changed() => {
                    if changed.is_err() { break; }
                    None
                }
            };
            match next {
                Some(Some(event)) => {
                    let last = matches!(event, TurnEvent::Done(_) | TurnEvent::Failed(_));
                    let _ = events_tx.send(event);
                    if last {
                        break;
                    }
                }
                Some(None) => {
                    // The owner fell silent or the local stream ended without an outcome.
                    let _ = events_tx.send(TurnEvent::Failed(ChatError::Unavailable(
                        "the conversation's owner stopped answering".into(),
                    )));
                    break;
                }
                None => {
                    let Leg::Remote { owner, .. } = &leg else {
                        continue;
                    };
                    if cluster.is_live(owner) || cancel_requested {
                        continue;
                    }
                    tracing::warn!(conversation = %self.conversation_id, %owner, "conversation owner went down mid-turn; restarting the turn on its new owner");
                    self.registry.shared.inbox.close(self.request_id());
                    // The message may be stored already: never create twice.
                    self.create = false;
                    match self.start().await {
                        Ok((new_leg, first)) => {
                            let _ = events_tx.send(TurnEvent::Restarted);
                            let last = matches!(first, TurnEvent::Done(_) | TurnEvent::Failed(_));
                            let _ = events_tx.send(first);
                            if last {
                                break;
                            }
                            leg = new_leg;
                        }
                        Err(err) => {
                            let _ = events_tx.send(TurnEvent::Failed(err));
                            break;
                        }
                    }
                }
            }
        }
        self.registry.shared.inbox.close(self.request_id());
    }

    fn cancel(&self, leg: &mut Leg) {
        match leg {
            Leg::Local(stream) => stream.cancel(),
            Leg::Remote { owner, .. } => {
                let cancel = Request::TurnCancel(self.request_id());
                if let Err(err) = self.registry.cluster().cast(owner, &cancel) {
                    tracing::debug!(%owner, error = %err, "could not forward a turn cancel");
                }
            }
        }
    }

    /// Waits until placement names an owner other than `owner` or `owner` is live again.
    async fn await_owner_change(&self, owner: &NodeId, deadline: Instant) {
        let cluster = self.registry.cluster();
        let key = super::lease_key(self.conversation_id);
        let mut view = cluster.subscribe();
        let wait = async {
            // A short pause first: the call may have failed on a connection that is back.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while cluster.owner(key.as_bytes()) == *owner && !cluster.is_live(owner) {
                if view.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), wait).await;
    }
}

/// The next event of a leg; `None` when it ended or fell silent.
async fn next_event(leg: &mut Leg) -> Option<TurnEvent> {
    match leg {
        Leg::Local(stream) => stream.next().await,
        Leg::Remote { events, .. } => tokio::time::timeout(EVENT_SILENCE, events.recv())
            .await
            .ok()
            .flatten(),
    }
}

fn unavailable(err: ClusterError) -> ChatError {
    ChatError::Unavailable(format!("conversation owner unreachable: {err}"))
}

impl ConversationRegistry {
    /// Runs a turn another node's caller asked for; answers with its first event and casts
    /// the rest to the caller's node.
    pub(crate) async fn serve_turn(&self, start: TurnStart) -> Result<TurnEvent, WireError> {
        let TurnStart {
            conversation_id,
            create,
            request,
            reply_to,
        } = start;
        let request_id = request.request_id;
        let mut stream = self.send_local(conversation_id, create, request).await?;
        let first = stream
            .next()
            .await
            .ok_or_else(|| WireError::Unavailable("the conversation actor stopped".into()))?;
        if matches!(first, TurnEvent::Done(_) | TurnEvent::Failed(_)) {
            return Ok(first);
        }
        let mut cancelled = self.shared.served.insert(request_id);
        let registry = self.clone();
        tokio::spawn(async move {
            let cluster = registry.cluster().clone();
            let mut cancel_requested = false;
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = &mut cancelled, if !cancel_requested => {
                        cancel_requested = true;
                        stream.cancel();
                        continue;
                    }
                };
                let Some(event) = event else { break };
                let last = matches!(event, TurnEvent::Done(_) | TurnEvent::Failed(_));
                let sent = cluster.cast(&reply_to, &Request::TurnEvent { request_id, event });
                if sent.is_err() {
                    // The caller's node is gone: stop generating (the partial answer is kept).
                    stream.cancel();
                }
                if last {
                    break;
                }
            }
            registry.shared.served.remove(request_id);
        });
        Ok(first)
    }
}

/// [`ChatError`] as it crosses the wire: the same variants where they carry data, the error's
/// text otherwise.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    NotFound,
    MessageTooLong {
        tokens: u64,
        budget: u64,
        model: String,
    },
    Invalid {
        field: String,
        reason: String,
    },
    ModelNotFound(String),
    ModelBusy(String),
    ModelContextOverflow {
        tokens: usize,
        limit: usize,
    },
    ModelRequest(String),
    ModelFailed(String),
    Conflict(String),
    Unavailable(String),
    Internal(String),
}

/// The request fields a remote validation error may name (anything else reads "request").
const FIELDS: [&str; 3] = ["message", "context.honey_jar_ids", "context.model"];

impl From<ChatError> for WireError {
    fn from(err: ChatError) -> WireError {
        WireError::from_ref(&err)
    }
}

impl From<WireError> for ChatError {
    fn from(err: WireError) -> ChatError {
        match err {
            WireError::NotFound => ChatError::NotFound,
            WireError::MessageTooLong {
                tokens,
                budget,
                model,
            } => ChatError::MessageTooLong {
                tokens,
                budget,
                model,
            },
            WireError::Invalid { field, reason } => ChatError::Invalid {
                field: FIELDS
                    .into_iter()
                    .find(|known| *known == field)
                    .unwrap_or("request"),
                reason,
            },
            WireError::ModelNotFound(name) => ModelError::NotFound(name).into(),
            WireError::ModelBusy(name) => ModelError::Busy(name).into(),
            WireError::ModelContextOverflow { tokens, limit } => {
                ModelError::ContextOverflow { tokens, limit }.into()
            }
            WireError::ModelRequest(message) => ModelError::InvalidRequest(message).into(),
            WireError::ModelFailed(message) => ModelError::Runtime(message).into(),
            WireError::Conflict(message) => StoreError::Conflict(message).into(),
            WireError::Internal(message) => StoreError::Internal(message).into(),
            WireError::Unavailable(message) => ChatError::Unavailable(message),
        }
    }
}

/// Serde for the error inside [`TurnEvent::Failed`], through [`WireError`].
pub(super) mod chat_error_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ChatError, WireError};

    pub fn serialize<S: Serializer>(err: &ChatError, serializer: S) -> Result<S::Ok, S::Error> {
        WireError::from_ref(err).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ChatError, D::Error> {
        WireError::deserialize(deserializer).map(ChatError::from)
    }
}

impl WireError {
    /// The wire form of `err` (ChatError is not `Clone`).
    fn from_ref(err: &ChatError) -> WireError {
        match err {
            ChatError::NotFound => WireError::NotFound,
            ChatError::MessageTooLong {
                tokens,
                budget,
                model,
            } => WireError::MessageTooLong {
                tokens: *tokens,
                budget: *budget,
                model: model.clone(),
            },
            ChatError::Invalid { field, reason } => WireError::Invalid {
                field: (*field).to_owned(),
                reason: reason.clone(),
            },
            ChatError::Model(ModelError::NotFound(name)) => WireError::ModelNotFound(name.clone()),
            ChatError::Model(ModelError::Busy(name)) => WireError::ModelBusy(name.clone()),
            ChatError::Model(ModelError::ContextOverflow { tokens, limit }) => {
                WireError::ModelContextOverflow {
                    tokens: *tokens,
                    limit: *limit,
                }
            }
            ChatError::Model(
                err @ (ModelError::WrongKind { .. } | ModelError::InvalidRequest(_)),
            ) => WireError::ModelRequest(err.to_string()),
            ChatError::Model(err) => WireError::ModelFailed(err.to_string()),
            ChatError::Store(StoreError::NotFound { .. }) => WireError::NotFound,
            ChatError::Store(StoreError::Conflict(message)) => WireError::Conflict(message.clone()),
            ChatError::Store(err @ StoreError::Internal(_)) => WireError::Internal(err.to_string()),
            ChatError::Store(err) => WireError::Unavailable(err.to_string()),
            ChatError::Unavailable(message) => WireError::Unavailable(message.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sting_cluster::transport::{decode, encode};

    /// Failures keep their meaning (and so their HTTP status) across the wire.
    #[test]
    fn turn_failures_cross_the_wire_intact() {
        let failures = [
            ChatError::NotFound,
            ChatError::MessageTooLong {
                tokens: 900,
                budget: 800,
                model: "m".into(),
            },
            ChatError::Invalid {
                field: "context.honey_jar_ids",
                reason: "too many".into(),
            },
            ModelError::Busy("m".into()).into(),
            ModelError::ContextOverflow {
                tokens: 5,
                limit: 4,
            }
            .into(),
            StoreError::Conflict("seq".into()).into(),
            ChatError::Unavailable("owner down".into()),
        ];
        for failure in failures {
            let expected = format!("{failure:?}");
            let event: TurnEvent = decode(&encode(&TurnEvent::Failed(failure))).unwrap();
            let TurnEvent::Failed(back) = event else {
                panic!("not a failure")
            };
            assert_eq!(format!("{back:?}"), expected);
        }
        let unknown = WireError::Invalid {
            field: "something.new".into(),
            reason: "r".into(),
        };
        assert!(matches!(
            ChatError::from(unknown),
            ChatError::Invalid {
                field: "request",
                ..
            }
        ));
    }
}
