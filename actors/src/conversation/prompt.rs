//! What the model is sent for a turn, and what that costs in tokens.
//!
//! The prompt is: one system message (Bee's configured prompt, then the running summary of
//! pruned messages, then retrieved passages when the turn names honey jars), the messages not
//! yet pruned, and the template's generation prompt. Token usage counts each rendered message
//! with the model's tokenizer, so `total` is exactly what the conversation costs the model.

use serde::Serialize;
use sting_store::{Message, MessageRole};

use crate::model::manifest::ChatTemplate;
use crate::model::tokens::TokenCounter;
use crate::model::{ChatMessage, ModelError, Role};

/// A passage retrieved from a honey jar for a turn (see [`super::Retriever`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub title: String,
    /// Page of the source, for paged documents.
    pub page: Option<u32>,
    pub content: String,
}

/// The system message of a turn.
pub fn system_text(system_prompt: &str, summary: Option<&str>, passages: &[Passage]) -> String {
    let mut text = system_prompt.trim().to_owned();
    if let Some(summary) = summary.filter(|s| !s.trim().is_empty()) {
        text.push_str("\n\nSummary of the earlier conversation:\n");
        text.push_str(summary.trim());
    }
    if !passages.is_empty() {
        text.push_str("\n\nAnswer from these sources when they are relevant and cite them as [n]:");
        for (n, passage) in passages.iter().enumerate() {
            let page = passage
                .page
                .map(|p| format!(", page {p}"))
                .unwrap_or_default();
            text.push_str(&format!(
                "\n[{}] {}{page}: {}",
                n + 1,
                passage.title,
                passage.content
            ));
        }
    }
    text
}

/// Shrinks `passages` until the system message they make (with `system_prompt` and `summary`)
/// takes at most `room` tokens: the last (weakest) passage is cut to fit, or dropped when
/// little of it would be left.
pub fn fit_passages(
    counter: &TokenCounter,
    template: &ChatTemplate,
    system_prompt: &str,
    summary: Option<&str>,
    passages: &mut Vec<Passage>,
    room: u64,
) -> Result<(), ModelError> {
    /// Fewer tokens than this left of a passage are not worth keeping.
    const MIN_PASSAGE_TOKENS: u64 = 16;
    loop {
        let system = system_text(system_prompt, summary, passages);
        let tokens = counter.count(&template.segment(Role::System, &system))? as u64;
        let Some(last) = passages.last_mut() else {
            return Ok(());
        };
        if tokens <= room {
            return Ok(());
        }
        let excess = tokens - room;
        let own = counter.count(&last.content)? as u64;
        if own >= excess + MIN_PASSAGE_TOKENS {
            // A little more than the excess: token counts of a cut text are not additive.
            last.content = counter.truncate(&last.content, (own - excess - 4) as usize)?;
        } else {
            passages.pop();
        }
    }
}

/// The chat messages for the model: the system message, then the conversation.
pub fn chat_messages(system: &str, messages: &[Message]) -> Vec<ChatMessage> {
    std::iter::once(ChatMessage {
        role: Role::System,
        content: system.to_owned(),
    })
    .chain(messages.iter().map(|message| ChatMessage {
        role: role_of(message.role),
        content: message.content.clone(),
    }))
    .collect()
}

fn role_of(role: MessageRole) -> Role {
    match role {
        MessageRole::User => Role::User,
        MessageRole::Assistant => Role::Assistant,
    }
}

/// Tokens of a conversation's context by who wrote them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TokenUsage {
    pub system: u64,
    pub user: u64,
    pub assistant: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.system + self.user + self.assistant
    }
}

/// Counts rendered messages with one model's tokenizer and template.
pub struct PromptCounter<'a> {
    pub counter: &'a TokenCounter,
    pub template: &'a ChatTemplate,
}

impl PromptCounter<'_> {
    /// Tokens that one message adds to the prompt (its content and the template around it).
    pub fn message(&self, role: Role, content: &str) -> Result<u64, ModelError> {
        let tokens = self.counter.count(&self.template.segment(role, content))?;
        Ok(tokens as u64)
    }

    /// Tokens of the system message and of each message.
    pub fn usage(&self, system: &str, messages: &[Message]) -> Result<TokenUsage, ModelError> {
        let mut usage = TokenUsage {
            system: self.message(Role::System, system)?,
            ..TokenUsage::default()
        };
        for message in messages {
            let tokens = self.message(role_of(message.role), &message.content)?;
            match message.role {
                MessageRole::User => usage.user += tokens,
                MessageRole::Assistant => usage.assistant += tokens,
            }
        }
        Ok(usage)
    }

    /// Tokens of the generation prompt that ends every request.
    pub fn generation_prompt(&self) -> Result<u64, ModelError> {
        Ok(self.counter.count(&self.template.generation_prompt)? as u64)
    }
}
