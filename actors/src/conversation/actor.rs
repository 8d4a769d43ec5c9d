//! The conversation actor and its supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sting_store::{
    conversation_lease_key, Conversation, ConversationId, Lease, Message, MessageRole,
    MessageStatus, PruningRecord, StoreError, Timestamp, UserId,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::prompt::{self, PromptCounter};
use super::pruning::Summariser;
use super::{
    ChatError, PruneReport, Shared, TurnEvent, TurnOutcome, TurnRequest, UsageReport,
    MAX_ACTIVE_MESSAGES,
};
use crate::model::manifest::ChatTemplate;
use crate::model::tokens::TokenCounter;
use crate::model::worker::GenerateRequest;
use crate::model::{GenerationEvent, ModelError, ModelKind, Role, SamplingParams};
use crate::supervision;

/// Characters of a title (from the first message) and of the latest-message preview.
const TITLE_CHARS: usize = 80;
const PREVIEW_CHARS: usize = 200;

// ---------------------------------------------------------------------------------------
// ConversationActor

/// The single writer of one conversation.
#[derive(Default)]
pub struct ConversationActor;

pub struct ConversationState {
    id: ConversationId,
    shared: Arc<Shared>,
    lease: Lease,
    /// `None` until the first turn of a new conversation is stored.
    conversation: Option<Conversation>,
    /// The messages not yet pruned, in order.
    active: Vec<Message>,
    last_request: Instant,
}

/// A turn handed to the actor.
pub struct Turn {
    pub request: TurnRequest,
    /// The conversation is new: its record is created by this turn.
    pub create: bool,
    pub events: mpsc::UnboundedSender<TurnEvent>,
    /// Resolves when the caller stops the turn (or drops its stream).
    pub cancelled: oneshot::Receiver<()>,
}

pub enum ConversationMsg {
    Turn(Box<Turn>),
    Usage(UserId, RpcReplyPort<Result<UsageReport, ChatError>>),
    Prune(UserId, RpcReplyPort<Result<PruneReport, ChatError>>),
    /// Lease renewal and passivation.
    Tick,
}

// Local only: never sent to another node.
impl ractor::Message for ConversationMsg {}

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = (ConversationId, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (id, shared): (ConversationId, Arc<Shared>),
    ) -> Result<ConversationState, ActorProcessingErr> {
        let policy = &shared.policy;
        let lease = shared
            .store
            .acquire_lease(
                &conversation_lease_key(id),
                shared.cluster.local().as_str(),
                millis(policy.lease_ttl),
                Timestamp::now(),
            )
            .await?;
        let conversation = shared.store.conversation(id).await?;
        let active = match &conversation {
            Some(c) => {
                shared
                    .store
                    .messages(id, c.pruned_through + 1, MAX_ACTIVE_MESSAGES)
                    .await?
            }
            None => Vec::new(),
        };
        let tick = (policy.lease_ttl / 3).min(policy.idle_timeout / 2);
        myself.send_interval(tick.max(Duration::from_millis(50)), || {
            ConversationMsg::Tick
        });
        tracing::debug!(conversation = %id, epoch = lease.epoch, messages = active.len(), "conversation activated");
        Ok(ConversationState {
            id,
            shared,
            lease,
            conversation,
            active,
            last_request: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        // Let the next owner take over at once; a stale lease is somebody else's already.
        let _ = state.shared.store.release_lease(&state.lease).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ConversationMsg,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = match message {
            ConversationMsg::Turn(turn) => {
                state.last_request = Instant::now();
                let events = turn.events.clone();
                let result = run_turn(state, *turn).await;
                let lost = matches!(&result, Err(err) if ends_tenure(err));
                if let Err(err) = result {
                    if lost {
                        tracing::warn!(conversation = %state.id, error = %err, "turn refused: this node no longer holds the conversation");
                    }
                    let _ = events.send(TurnEvent::Failed(err));
                }
                lost
            }
            ConversationMsg::Usage(user_id, reply) => {
                state.last_request = Instant::now();
                let result = usage(state, user_id).await;
                let lost = matches!(&result, Err(err) if ends_tenure(err));
                let _ = reply.send(result);
                lost
            }
            ConversationMsg::Prune(user_id, reply) => {
                state.last_request = Instant::now();
                let result = prune_manually(state, user_id).await;
                let lost = matches!(&result, Err(err) if ends_tenure(err));
                let _ = reply.send(result);
                lost
            }
            ConversationMsg::Tick => tick(state).await,
        };
        if outcome {
            myself.stop(Some("lease lost, deleted or idle".into()));
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// Errors after which this actor must not go on: its lease is gone or so is the record.
fn ends_tenure(err: &ChatError) -> bool {
    matches!(
        err,
        ChatError::Store(StoreError::StaleLease { .. } | StoreError::NotFound { .. })
    ) || matches!(err, ChatError::NotFound)
}

/// Renews the lease when a third of it is left; returns whether the actor should stop (idle,
/// lease lost, or placement moved the conversation to another node).
async fn tick(state: &mut ConversationState) -> bool {
    let policy = &state.shared.policy;
    if state.last_request.elapsed() >= policy.idle_timeout {
        return true;
    }
    if !crate::ownership::is_owner(&state.shared.cluster, &state.lease.key) {
        tracing::debug!(conversation = %state.id, "conversation moves to its new owner");
        return true;
    }
    match renew_if_due(state).await {
        Ok(()) => false,
        Err(err) => {
            tracing::warn!(conversation = %state.id, error = %err, "conversation lease lost");
            matches!(err, StoreError::StaleLease { .. })
        }
    }
}

async fn renew_if_due(state: &mut ConversationState) -> Result<(), StoreError> {
    let ttl = state.shared.policy.lease_ttl;
    supervision::renew_if_due(state.shared.store.as_ref(), &mut state.lease, ttl).await
}

/// Writes the record and new messages under the lease; the in-memory state follows only
/// once the store accepted them.
async fn save(
    state: &mut ConversationState,
    conversation: Conversation,
    new_messages: Vec<Message>,
    create: bool,
) -> Result<(), ChatError> {
    renew_if_due(state).await?;
    state
        .shared
        .store
        .save_conversation(&state.lease, &conversation, &new_messages, create)
        .await?;
    state.conversation = Some(conversation);
    state.active.extend(new_messages);
    Ok(())
}

/// What a turn needs to know about its model.
struct ModelContext {
    name: String,
    counter: Arc<TokenCounter>,
    template: ChatTemplate,
    context_length: usize,
}

impl ModelContext {
    fn prompt(&self) -> PromptCounter<'_> {
        PromptCounter {
            counter: &self.counter,
            template: &self.template,
        }
    }
}

/// Resolves an installed chat model.
async fn chat_model(shared: &Shared, name: &str) -> Result<ModelContext, ChatError> {
    let info = shared.pool.info(name).await?;
    let manifest = &info.model.manifest;
    let template = match (manifest.kind, &manifest.chat_template) {
        (ModelKind::Chat, Some(template)) => template.clone(),
        _ => {
            return Err(ModelError::WrongKind {
                name: name.to_owned(),
                operation: "chat",
            }
            .into())
        }
    };
    Ok(ModelContext {
        name: name.to_owned(),
        counter: shared.counters.get(name, Some(&info.model))?,
        template,
        context_length: manifest.context_length,
    })
}

async fn run_turn(state: &mut ConversationState, turn: Turn) -> Result<(), ChatError> {
    let started = Instant::now();
    let Turn {
        request,
        create,
        events,
        mut cancelled,
    } = turn;
    // A retried creation finds the record its first attempt stored: then it is an update.
    let create = match &state.conversation {
        Some(c) if c.user_id == request.user_id => false,
        None if create => true,
        _ => return Err(ChatError::NotFound),
    };
    let shared = state.shared.clone();
    let policy = &shared.policy;
    let model_name = request
        .model
        .clone()
        .or_else(|| state.conversation.as_ref().map(|c| c.model.clone()))
        .unwrap_or_else(|| policy.default_model.clone());
    let model = chat_model(&shared, &model_name).await?;
    let budget = policy.budget(model.context_length);
    let text = request.message.trim().to_owned();

    let passages = match (&shared.retriever, request.honey_jar_ids.is_empty()) {
        (_, true) => Vec::new(),
        (Some(retriever), false) => {
            retriever
                .retrieve(request.user_id, &request.honey_jar_ids, &text)
                .await?
        }
        (None, false) => {
            return Err(ChatError::Invalid {
                field: "context.honey_jar_ids",
                reason: "honey jars are not available on this node".into(),
            })
        }
    };

    // Retrieved sources take what room the budget leaves the message: the weakest go first.
    let prompt = model.prompt();
    let mut passages = passages;
    let room =
        budget.saturating_sub(prompt.message(Role::User, &text)? + prompt.generation_prompt()?);
    let summary = state.conversation.as_ref().and_then(|c| c.summary.clone());
    prompt::fit_passages(
        &model.counter,
        &model.template,
        &policy.system_prompt,
        summary.as_deref(),
        &mut passages,
        room,
    )?;
    // Refuse, before writing anything, a message that cannot fit even alone.
    let bare_system = prompt::system_text(&policy.system_prompt, None, &passages);
    let alone = prompt.message(Role::System, &state.system_text(&passages))?
        + prompt.message(Role::User, &text)?
        + prompt.generation_prompt()?;
    if alone > budget {
        return Err(ChatError::MessageTooLong {
            tokens: alone,
            budget,
            model: model.name.clone(),
        });
    }

    // 1. The user's message is stored before anything else happens, once per request id: a
    //    retried request finds it stored (and, when answered, gets the stored answer).
    match state.retried(request.request_id) {
        Some(Retried::Answered(answer)) => {
            replay(state.id, request.request_id, &answer, &events, started);
            return Ok(());
        }
        Some(Retried::Unanswered) => {}
        None => {
            let now = Timestamp::now();
            let user_message = Message {
                conversation_id: state.id,
                seq: state.next_seq(),
                id: request.request_id,
                role: MessageRole::User,
                content: text.clone(),
                model: None,
                status: MessageStatus::Complete,
                created_at: now,
            };
            let record = state.next_record(&user_message, request.user_id, &model.name, now);
            save(state, record, vec![user_message], create).await?;
        }
    }
    let _ = events.send(TurnEvent::Accepted {
        conversation_id: state.id,
        user_message_id: request.request_id,
        model: model.name.clone(),
    });

    // 2. Over budget: fold older messages into the summary, keeping as many recent ones as
    //    fit beside a summary of the largest allowed size.
    let mut pruning = None;
    if state.context_tokens(&prompt, &passages)? > budget {
        let reserve = summary_tokens(policy, &model) as u64;
        let fixed =
            prompt.message(Role::System, &bare_system)? + reserve + prompt.generation_prompt()?;
        let mut keep = policy.keep_recent_messages.clamp(1, state.active.len());
        while keep > 1 && fixed + tail_tokens(&prompt, &state.active, keep)? > budget {
            keep -= 1;
        }
        prune(state, &model, keep, true, &passages).await?;
        pruning = state
            .conversation
            .as_ref()
            .and_then(|c| c.last_pruning.clone());
        let tokens = state.context_tokens(&prompt, &passages)?;
        if tokens > budget {
            return Err(ChatError::MessageTooLong {
                tokens,
                budget,
                model: model.name.clone(),
            });
        }
    }

    // 3. Generate, streaming to the caller, until done or stopped.
    let system = state.system_text(&passages);
    let generate = GenerateRequest {
        messages: prompt::chat_messages(&system, &state.active),
        params: SamplingParams {
            temperature: request.temperature.unwrap_or(policy.default_temperature),
            max_tokens: request
                .max_tokens
                .unwrap_or(policy.default_max_tokens)
                .max(1),
            ..SamplingParams::default()
        },
    };
    let (mut generation, load_time) = shared.pool.generate(&model.name, generate).await?;
    let mut content = String::new();
    // A long answer must not outlive the lease: it is renewed while the answer streams.
    let mut renewal = tokio::time::interval(policy.lease_ttl / 3);
    let summary = loop {
        tokio::select! {
            _ = renewal.tick() => renew_if_due(state).await?,
            event = generation.recv() => match event {
                Some(GenerationEvent::Text(piece)) => {
                    content.push_str(&piece);
                    let _ = events.send(TurnEvent::Chunk(piece));
                }
                Some(GenerationEvent::Done(summary)) => break Some(summary),
                Some(GenerationEvent::Failed(err)) => return Err(err.into()),
                None => return Err(ModelError::Stopped.into()),
            },
            _ = &mut cancelled => break None,
            _ = events.closed() => break None,
        }
    };
    // Dropping the receiver stops the worker's sequence.
    drop(generation);

    // 4. The answer (partial when stopped) is stored; only then is the turn done.
    let status = match summary {
        Some(_) => MessageStatus::Complete,
        None => MessageStatus::Cancelled,
    };
    let now = Timestamp::now();
    let answer = Message {
        conversation_id: state.id,
        seq: state.next_seq(),
        id: Uuid::new_v4(),
        role: MessageRole::Assistant,
        content,
        model: Some(model.name.clone()),
        status,
        created_at: now,
    };
    let record = state.next_record(&answer, request.user_id, &model.name, now);
    save(state, record, vec![answer.clone()], false).await?;
    let (prompt_tokens, completion_tokens, first_token) = match &summary {
        Some(s) => (s.prompt_tokens, s.completion_tokens, s.time_to_first_token),
        None => (0, 0, Duration::ZERO),
    };
    let _ = events.send(TurnEvent::Done(Box::new(TurnOutcome {
        conversation_id: state.id,
        message_id: answer.id,
        model: model.name.clone(),
        content: answer.content,
        status,
        prompt_tokens,
        completion_tokens,
        response_time: started.elapsed(),
        time_to_first_token: first_token,
        model_load_time: load_time,
        pruning,
    })));
    Ok(())
}

/// What a retried request finds.
enum Retried {
    /// Its message and the answer after it are stored.
    Answered(Message),
    /// Its message is stored, without an answer (the previous owner died generating it).
    Unanswered,
}

/// Reports a stored answer as the outcome of a retried turn.
fn replay(
    conversation_id: ConversationId,
    request_id: Uuid,
    answer: &Message,
    events: &mpsc::UnboundedSender<TurnEvent>,
    started: Instant,
) {
    let model = answer.model.clone().unwrap_or_default();
    let _ = events.send(TurnEvent::Accepted {
        conversation_id,
        user_message_id: request_id,
        model: model.clone(),
    });
    let _ = events.send(TurnEvent::Chunk(answer.content.clone()));
    let _ = events.send(TurnEvent::Done(Box::new(TurnOutcome {
        conversation_id,
        message_id: answer.id,
        model,
        content: answer.content.clone(),
        status: answer.status,
        prompt_tokens: 0,
        completion_tokens: 0,
        response_time: started.elapsed(),
        time_to_first_token: Duration::ZERO,
        model_load_time: None,
        pruning: None,
    })));
}

impl ConversationState {
    /// Whether the request `request_id` already stored its message as the latest turn.
    fn retried(&self, request_id: Uuid) -> Option<Retried> {
        let position = self
            .active
            .iter()
            .rposition(|m| m.id == request_id && m.role == MessageRole::User)?;
        match self.active.get(position + 1) {
            Some(answer) if answer.role == MessageRole::Assistant => {
                Some(Retried::Answered(answer.clone()))
            }
            _ => Some(Retried::Unanswered),
        }
    }

    fn next_seq(&self) -> u64 {
        self.conversation.as_ref().map_or(0, |c| c.message_count) + 1
    }

    /// The record after appending `message`.
    fn next_record(
        &self,
        message: &Message,
        user_id: UserId,
        model: &str,
        now: Timestamp,
    ) -> Conversation {
        let preview = shorten(&message.content, PREVIEW_CHARS);
        match &self.conversation {
            Some(c) => Conversation {
                updated_at: now,
                model: model.to_owned(),
                message_count: message.seq,
                last_message: preview,
                ..c.clone()
            },
            None => Conversation {
                id: self.id,
                user_id,
                title: shorten(
                    message.content.lines().next().unwrap_or_default(),
                    TITLE_CHARS,
                ),
                created_at: now,
                updated_at: now,
                model: model.to_owned(),
                message_count: message.seq,
                last_message: preview,
                summary: None,
                pruned_through: 0,
                last_pruning: None,
            },
        }
    }

    /// Tokens of the prompt as it stands (without an answer).
    fn context_tokens(
        &self,
        prompt: &PromptCounter<'_>,
        passages: &[prompt::Passage],
    ) -> Result<u64, ChatError> {
        let system = self.system_text(passages);
        Ok(prompt.usage(&system, &self.active)?.total() + prompt.generation_prompt()?)
    }

    fn system_text(&self, passages: &[prompt::Passage]) -> String {
        let summary = self
            .conversation
            .as_ref()
            .and_then(|c| c.summary.as_deref());
        prompt::system_text(&self.shared.policy.system_prompt, summary, passages)
    }
}

/// Tokens of the last `keep` messages.
fn tail_tokens(
    prompt: &PromptCounter<'_>,
    active: &[Message],
    keep: usize,
) -> Result<u64, ChatError> {
    let tail = &active[active.len() - keep..];
    let usage = prompt.usage("", tail)?;
    Ok(usage.user + usage.assistant)
}

/// Longest summary for `model`, in tokens.
fn summary_tokens(policy: &super::ChatPolicy, model: &ModelContext) -> usize {
    policy
        .summary_max_tokens
        .min(model.context_length / 4)
        .max(1)
}

/// `text` on one line, cut to `max` characters with an ellipsis (titles, previews, snippets).
pub fn shorten(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

async fn usage(state: &mut ConversationState, user_id: UserId) -> Result<UsageReport, ChatError> {
    let conversation = owned(state, user_id)?.clone();
    let shared = state.shared.clone();
    let model = chat_model(&shared, &conversation.model).await?;
    let system = state.system_text(&[]);
    let usage = model.prompt().usage(&system, &state.active)?;
    Ok(UsageReport {
        usage,
        context_limit: model.context_length as u64,
        max_allowed_tokens: shared.policy.budget(model.context_length),
        model: model.name,
        last_pruning: conversation.last_pruning,
    })
}

fn owned(state: &ConversationState, user_id: UserId) -> Result<&Conversation, ChatError> {
    match &state.conversation {
        Some(c) if c.user_id == user_id => Ok(c),
        _ => Err(ChatError::NotFound),
    }
}

async fn prune_manually(
    state: &mut ConversationState,
    user_id: UserId,
) -> Result<PruneReport, ChatError> {
    let model_name = owned(state, user_id)?.model.clone();
    let shared = state.shared.clone();
    let model = chat_model(&shared, &model_name).await?;
    prune(
        state,
        &model,
        shared.policy.keep_recent_messages,
        false,
        &[],
    )
    .await
}

/// Folds all but the last `keep` active messages into the summary and stores the result.
async fn prune(
    state: &mut ConversationState,
    model: &ModelContext,
    keep: usize,
    automatic: bool,
    passages: &[prompt::Passage],
) -> Result<PruneReport, ChatError> {
    let prompt = model.prompt();
    let tokens_before = prompt
        .usage(&state.system_text(passages), &state.active)?
        .total();
    let current = state.conversation.clone().ok_or(ChatError::NotFound)?;
    let split = state.active.len().saturating_sub(keep);
    if split == 0 {
        return Ok(PruneReport {
            messages_pruned: 0,
            messages_kept: state.active.len() as u64,
            tokens_before,
            tokens_after: tokens_before,
            summary: current.summary,
        });
    }
    let policy = &state.shared.policy;
    let summariser = Summariser {
        pool: &state.shared.pool,
        model: &model.name,
        prompt: model.prompt(),
        context_length: model.context_length,
        max_summary_tokens: summary_tokens(policy, model),
    };
    let pruned = &state.active[..split];
    let summary = summariser
        .summarise(current.summary.as_deref(), pruned)
        .await?;
    let kept = &state.active[split..];
    let system_after = prompt::system_text(&policy.system_prompt, Some(&summary), passages);
    let tokens_after = prompt.usage(&system_after, kept)?.total();
    let record = PruningRecord {
        timestamp: Timestamp::now(),
        messages_pruned: split as u64,
        tokens_before,
        tokens_after,
        automatic,
    };
    let pruned_through = pruned[pruned.len() - 1].seq;
    let next = Conversation {
        summary: Some(summary.clone()),
        pruned_through,
        last_pruning: Some(record),
        ..current
    };
    save(state, next, Vec::new(), false).await?;
    state.active.drain(..split);
    tracing::info!(conversation = %state.id, pruned = split, tokens_before, tokens_after, automatic, "conversation pruned");
    Ok(PruneReport {
        messages_pruned: split as u64,
        messages_kept: state.active.len() as u64,
        tokens_before,
        tokens_after,
        summary: Some(summary),
    })
}
