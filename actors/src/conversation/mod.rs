//! Conversations with Bee: one [`actor::ConversationActor`] per active conversation, the single
//! writer of its record and messages.
//!
//! The actor holds the conversation's lease from the store and every write carries the lease's
//! epoch, so a node that lost ownership cannot write. It is activated by the first request,
//! rebuilt from the store (the record and the messages not yet pruned), and passivated after
//! `idle_timeout`. For a turn it persists the user's message, prunes older messages into a
//! summary when the prompt would exceed the token budget, streams the model's answer to the
//! caller, persists the answer (marked cancelled when the caller stopped it) and only then
//! reports the turn done.
//!
//! Reads (history, listings) go straight to the store, after checking that the caller owns the
//! conversation: another user's conversation is "not found", never its content.
//!
//! Supervision: [`ConversationRegistry`] (a handle) ── `ChildSupervisor<ConversationActor>` ──
//! `ConversationActor` (one per active conversation, linked; a failed one is logged and
//! rebuilt from the store by the next request).

mod actor;
mod prompt;
mod pruning;
pub(crate) mod remote;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use sting_cluster::Cluster;
use sting_store::{
    conversation_lease_key, Conversation, ConversationId, ConversationQuery, Message,
    MessageStatus, PruningRecord, Store, StoreError, UserId,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::model::pool::ModelPoolHandle;
use crate::model::tokens::TokenCounters;
use crate::model::ModelError;
use crate::ownership::{self, Owned};
use crate::remote::Request;
use crate::supervision::{ChildSupervisor, SupervisorMsg};
use actor::{ConversationActor, ConversationMsg};
use remote::WireError;

pub use actor::shorten;
pub use prompt::{fit_passages, system_text, Passage, TokenUsage};

/// How long a quick call to a conversation actor (usage) may wait; longer for pruning, which
/// runs the model.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const PRUNE_TIMEOUT: Duration = Duration::from_secs(600);
/// Tries to reach a live conversation actor (one may be passivating) before giving up.
const ACTIVATION_ATTEMPTS: usize = 5;
/// Most messages an actor loads when it is rebuilt (the ones not yet pruned).
const MAX_ACTIVE_MESSAGES: u32 = 10_000;

/// The rules of conversations on this node.
#[derive(Debug, Clone)]
pub struct ChatPolicy {
    /// Bee's system prompt, first in every prompt.
    pub system_prompt: String,
    /// The model used when a turn names none and the conversation has none yet.
    pub default_model: String,
    /// The share of a model's context a conversation may fill (the rest is left for answers);
    /// older messages are pruned beyond it.
    pub budget_ratio: f64,
    /// Messages kept verbatim when pruning.
    pub keep_recent_messages: usize,
    /// Longest summary of pruned messages, in tokens (at most a quarter of the context).
    pub summary_max_tokens: usize,
    /// Answer length when a turn names none.
    pub default_max_tokens: usize,
    pub default_temperature: f32,
    /// Longest accepted user message, in characters.
    pub max_message_chars: usize,
    /// How long a conversation lease lasts without renewal.
    pub lease_ttl: Duration,
    /// An actor is passivated after this long without requests.
    pub idle_timeout: Duration,
}

impl ChatPolicy {
    /// The token budget of a conversation on a model with `context_length` tokens.
    pub fn budget(&self, context_length: usize) -> u64 {
        (context_length as f64 * self.budget_ratio).floor() as u64
    }
}

/// Retrieves passages from honey jars for a turn that names them. The knowledge layer
/// implements it; it must only return passages the user may read.
pub trait Retriever: Send + Sync + 'static {
    fn retrieve<'a>(
        &'a self,
        user_id: UserId,
        honey_jar_ids: &'a [Uuid],
        query: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Passage>, ChatError>> + Send + 'a>>;
}

/// Failures of chat operations.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Unknown, deleted, or someone else's conversation (indistinguishable on purpose).
    #[error("conversation not found")]
    NotFound,
    #[error("the message needs {tokens} tokens with the system prompt; model {model} allows {budget} per conversation")]
    MessageTooLong {
        tokens: u64,
        budget: u64,
        model: String,
    },
    /// A request field with a bad value.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("conversation unavailable: {0}")]
    Unavailable(String),
}

/// One user message to answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnRequest {
    /// Identifies the request across retries: it becomes the user message's id, so a retried
    /// turn (by the client, or by the edge after the owner went down) stores the message once.
    pub request_id: Uuid,
    /// The caller (from the session, never from the client).
    pub user_id: UserId,
    /// `None` starts a new conversation.
    pub conversation_id: Option<ConversationId>,
    pub message: String,
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<usize>,
    /// Honey jars to answer from (retrieval through the [`Retriever`]).
    pub honey_jar_ids: Vec<Uuid>,
}

/// What a turn reports, in order: `Accepted` once the user's message is stored, `Chunk`s of the
/// answer, then `Done` once the answer is stored (or `Failed`).
#[derive(Debug, Serialize, Deserialize)]
pub enum TurnEvent {
    Accepted {
        conversation_id: ConversationId,
        user_message_id: Uuid,
        model: String,
    },
    Chunk(String),
    /// The conversation's owner went down mid-answer: the chunks so far are void and the
    /// answer starts again (on the new owner; the user's message is not stored twice).
    Restarted,
    Done(Box<TurnOutcome>),
    Failed(#[serde(with = "remote::chat_error_serde")] ChatError),
}

/// A finished (or cancelled) turn, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnOutcome {
    pub conversation_id: ConversationId,
    pub message_id: Uuid,
    pub model: String,
    pub content: String,
    pub status: MessageStatus,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From the request reaching the actor to the answer being stored.
    pub response_time: Duration,
    pub time_to_first_token: Duration,
    /// Set when this turn had to load the model.
    pub model_load_time: Option<Duration>,
    /// Set when this turn pruned the conversation first.
    pub pruning: Option<PruningRecord>,
}

/// A turn in progress: its events, and the way to stop it. Dropping it also stops the turn
/// (the partial answer is stored, marked cancelled).
pub struct TurnStream {
    first: Option<TurnEvent>,
    events: mpsc::UnboundedReceiver<TurnEvent>,
    cancel: Option<oneshot::Sender<()>>,
}

impl TurnStream {
    /// The next event; `None` after `Done` or `Failed`.
    pub async fn next(&mut self) -> Option<TurnEvent> {
        match self.first.take() {
            Some(event) => Some(event),
            None => self.events.recv().await,
        }
    }

    /// Stops the generation; the stream still ends with `Done` (status cancelled).
    pub fn cancel(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

/// A conversation's token accounting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageReport {
    pub usage: TokenUsage,
    pub context_limit: u64,
    pub max_allowed_tokens: u64,
    pub model: String,
    pub last_pruning: Option<PruningRecord>,
}

/// What a manual prune did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    pub messages_pruned: u64,
    pub messages_kept: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    pub summary: Option<String>,
}

/// What every conversation actor of the node shares.
pub struct Shared {
    store: Arc<dyn Store>,
    pool: ModelPoolHandle,
    policy: ChatPolicy,
    counters: TokenCounters,
    retriever: Option<Arc<dyn Retriever>>,
    active: Arc<AtomicU64>,
    cluster: Cluster,
    /// Events of turns run elsewhere for callers on this node.
    inbox: remote::Inbox,
    /// Turns run here for callers on other nodes.
    served: remote::Served,
}

fn actor_name(id: ConversationId) -> String {
    format!("conversation:{id}")
}

fn lease_key(id: ConversationId) -> String {
    conversation_lease_key(id)
}

/// The node's entry point to conversations: a cheap, cloneable handle.
#[derive(Clone)]
pub struct ConversationRegistry {
    supervisor: ActorRef<SupervisorMsg<ConversationActor>>,
    shared: Arc<Shared>,
}

impl ConversationRegistry {
    /// Starts the conversation supervisor. Conversations are placed on the members of
    /// `cluster`; when its membership changes, every live actor checks that it is still the
    /// owner and passivates if not.
    pub async fn start(
        store: Arc<dyn Store>,
        pool: ModelPoolHandle,
        policy: ChatPolicy,
        retriever: Option<Arc<dyn Retriever>>,
        cluster: Cluster,
    ) -> Result<ConversationRegistry, ChatError> {
        let shared = Arc::new(Shared {
            store,
            pool,
            policy,
            counters: TokenCounters::default(),
            retriever,
            active: Arc::new(AtomicU64::new(0)),
            cluster,
            inbox: Default::default(),
            served: Default::default(),
        });
        let (supervisor, _) = ChildSupervisor::start("conversation", shared.active.clone())
            .await
            .map_err(|err| ChatError::Unavailable(err.to_string()))?;
        let mut view = shared.cluster.subscribe();
        let watched = supervisor.clone();
        tokio::spawn(async move {
            while view.changed().await.is_ok() {
                ChildSupervisor::broadcast(&watched, || ConversationMsg::Tick);
            }
        });
        Ok(ConversationRegistry { supervisor, shared })
    }

    /// The cluster conversations are placed on.
    pub fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    pub fn policy(&self) -> &ChatPolicy {
        &self.shared.policy
    }

    /// Conversation actors live on this node.
    pub fn active_count(&self) -> u64 {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Whether the supervisor runs (for health checks).
    pub fn is_running(&self) -> bool {
        self.supervisor.get_status() == ractor::ActorStatus::Running
    }

    /// Starts a turn. Returns once the conversation's actor took the request: the stream's
    /// first event is `Accepted` (the message is stored) or `Failed`.
    pub async fn send(&self, request: TurnRequest) -> Result<TurnStream, ChatError> {
        let message = request.message.trim();
        if message.is_empty() {
            return Err(ChatError::Invalid {
                field: "message",
                reason: "must not be empty".into(),
            });
        }
        let chars = message.chars().count();
        let max = self.shared.policy.max_message_chars;
        if chars > max {
            return Err(ChatError::Invalid {
                field: "message",
                reason: format!("has {chars} characters; at most {max} are accepted"),
            });
        }
        let (id, create) = match request.conversation_id {
            Some(id) => {
                self.owned(request.user_id, id).await?;
                (id, false)
            }
            None => (Uuid::new_v4(), true),
        };
        if ownership::is_owner(self.cluster(), &lease_key(id)) {
            self.send_local(id, create, request).await
        } else {
            remote::send(self, id, create, request).await
        }
    }

    /// Starts a turn on this node's actor of the conversation.
    async fn send_local(
        &self,
        id: ConversationId,
        create: bool,
        request: TurnRequest,
    ) -> Result<TurnStream, ChatError> {
        for _ in 0..ACTIVATION_ATTEMPTS {
            let actor = self.actor(id).await?;
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let (cancel, cancelled) = oneshot::channel();
            let turn = Box::new(actor::Turn {
                request: request.clone(),
                create,
                events: events_tx,
                cancelled,
            });
            if actor.cast(ConversationMsg::Turn(turn)).is_err() {
                continue;
            }
            // A turn dropped unread (the actor stopped first) has no first event: retry it,
            // nothing was written.
            if let Some(first) = events.recv().await {
                return Ok(TurnStream {
                    first: Some(first),
                    events,
                    cancel: Some(cancel),
                });
            }
        }
        Err(ChatError::Unavailable(
            "conversation actor kept stopping".into(),
        ))
    }

    /// A conversation's token usage.
    pub async fn usage(
        &self,
        user_id: UserId,
        id: ConversationId,
    ) -> Result<UsageReport, ChatError> {
        self.owned(user_id, id).await?;
        let request = Request::Usage {
            user: user_id,
            conversation: id,
        };
        match self.remote_owner(id) {
            Some(owner) => self.call_owner(&owner, &request, CALL_TIMEOUT).await,
            None => self.usage_local(user_id, id).await,
        }
    }

    /// Summarises all but the most recent messages now.
    pub async fn prune(
        &self,
        user_id: UserId,
        id: ConversationId,
    ) -> Result<PruneReport, ChatError> {
        self.owned(user_id, id).await?;
        let request = Request::Prune {
            user: user_id,
            conversation: id,
        };
        match self.remote_owner(id) {
            Some(owner) => self.call_owner(&owner, &request, PRUNE_TIMEOUT).await,
            None => self.prune_local(user_id, id).await,
        }
    }

    pub(crate) async fn usage_local(
        &self,
        user_id: UserId,
        id: ConversationId,
    ) -> Result<UsageReport, ChatError> {
        self.ask(id, CALL_TIMEOUT, |reply| {
            ConversationMsg::Usage(user_id, reply)
        })
        .await
    }

    pub(crate) async fn prune_local(
        &self,
        user_id: UserId,
        id: ConversationId,
    ) -> Result<PruneReport, ChatError> {
        self.ask(id, PRUNE_TIMEOUT, |reply| {
            ConversationMsg::Prune(user_id, reply)
        })
        .await
    }

    /// Hands an event of a turn run elsewhere to its caller here.
    pub(crate) fn deliver(&self, request_id: Uuid, event: TurnEvent) {
        self.shared.inbox.deliver(request_id, event);
    }

    /// Stops a turn run here for a caller on another node.
    pub(crate) fn cancel_served(&self, request_id: Uuid) {
        self.shared.served.cancel(request_id);
    }

    /// The conversation's owner when it is another node.
    fn remote_owner(&self, id: ConversationId) -> Option<sting_cluster::NodeId> {
        let owner = self.cluster().owner(lease_key(id).as_bytes());
        (owner != *self.cluster().local()).then_some(owner)
    }

    async fn call_owner<T: serde::de::DeserializeOwned>(
        &self,
        owner: &sting_cluster::NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<T, ChatError> {
        self.cluster()
            .call::<_, Result<T, WireError>>(owner, request, timeout)
            .await
            .map_err(|err| ChatError::Unavailable(err.to_string()))?
            .map_err(ChatError::from)
    }

    /// Deletes a conversation with its messages and summary.
    pub async fn delete(&self, user_id: UserId, id: ConversationId) -> Result<(), ChatError> {
        self.owned(user_id, id).await?;
        if let Some(actor) = ActorRef::<ConversationMsg>::where_is(actor_name(id)) {
            actor.stop(Some("deleted".into()));
        }
        // An owner elsewhere (or a turn still finishing here) fails its next write: the
        // record is gone.
        if self.shared.store.delete_conversation(id).await? {
            Ok(())
        } else {
            Err(ChatError::NotFound)
        }
    }

    /// A conversation's record and a window of its messages (from `from_seq`, in order).
    pub async fn history(
        &self,
        user_id: UserId,
        id: ConversationId,
        from_seq: u64,
        limit: u32,
    ) -> Result<(Conversation, Vec<Message>), ChatError> {
        let conversation = self.owned(user_id, id).await?;
        let messages = self.shared.store.messages(id, from_seq, limit).await?;
        Ok((conversation, messages))
    }

    /// One page of the caller's conversations, and how many they have.
    pub async fn list(
        &self,
        user_id: UserId,
        query: &ConversationQuery,
    ) -> Result<(Vec<Conversation>, u64), ChatError> {
        Ok(self.shared.store.list_conversations(user_id, query).await?)
    }

    /// Stops every conversation actor (releasing their leases) and waits for them.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("node shutdown".into()), Some(CALL_TIMEOUT))
            .await;
    }

    /// The conversation's record when `user_id` owns it; `NotFound` otherwise.
    async fn owned(&self, user_id: UserId, id: ConversationId) -> Result<Conversation, ChatError> {
        match self.shared.store.conversation(id).await? {
            Some(conversation) if conversation.user_id == user_id => Ok(conversation),
            _ => Err(ChatError::NotFound),
        }
    }

    /// The live actor of a conversation, activating it if needed (after claiming its lease,
    /// which may take a hand-over from the previous owner).
    async fn actor(&self, id: ConversationId) -> Result<ActorRef<ConversationMsg>, ChatError> {
        if let Some(live) = ActorRef::<ConversationMsg>::where_is(actor_name(id)) {
            return Ok(live);
        }
        let owned = Owned {
            lease_key: &lease_key(id),
            actor_name: &actor_name(id),
        };
        ownership::claim(
            self.shared.store.as_ref(),
            self.cluster(),
            owned,
            self.shared.policy.lease_ttl,
        )
        .await
        .map_err(|err| ChatError::Unavailable(err.to_string()))?;
        let args = (id, self.shared.clone());
        ChildSupervisor::activate(&self.supervisor, actor_name(id), args, CALL_TIMEOUT)
            .await
            .map_err(ChatError::Unavailable)
    }

    async fn ask<T: Send + 'static>(
        &self,
        id: ConversationId,
        timeout: Duration,
        message: impl Fn(ractor::RpcReplyPort<Result<T, ChatError>>) -> ConversationMsg,
    ) -> Result<T, ChatError> {
        for _ in 0..ACTIVATION_ATTEMPTS {
            let actor = self.actor(id).await?;
            match actor.call(&message, Some(timeout)).await {
                Ok(ractor::rpc::CallResult::Success(answer)) => return answer,
                Ok(ractor::rpc::CallResult::Timeout) => {
                    return Err(ChatError::Unavailable(
                        "conversation actor timed out".into(),
                    ))
                }
                // Stopping (passivation) before it answered: ask its successor.
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
            }
        }
        Err(ChatError::Unavailable(
            "conversation actor kept stopping".into(),
        ))
    }
}
