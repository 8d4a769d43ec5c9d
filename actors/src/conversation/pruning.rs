//! Summaries of pruned messages: the model folds older messages into a running summary, in as
//! many rounds as its context needs (each round takes the summary so far and as many messages
//! as fit). The messages themselves stay in the store, marked pruned.

use sting_store::{Message, MessageRole};

use super::prompt::PromptCounter;
use crate::model::pool::ModelPoolHandle;
use crate::model::worker::GenerateRequest;
use crate::model::{ChatMessage, GenerationEvent, ModelError, Role, SamplingParams};

const INSTRUCTION: &str = "You summarise conversations between a user and the assistant Bee. \
Write a short factual summary of what the user asked and what Bee answered, keeping names, \
numbers and decisions. Reply with the summary only.";

/// Tokens kept free in each round for the template around the request.
const ROUND_SLACK_TOKENS: u64 = 8;

/// What the summariser needs to know about the model.
pub struct Summariser<'a> {
    pub pool: &'a ModelPoolHandle,
    pub model: &'a str,
    pub prompt: PromptCounter<'a>,
    pub context_length: usize,
    pub max_summary_tokens: usize,
}

impl Summariser<'_> {
    /// The summary of `previous` (if any) followed by `messages`.
    pub async fn summarise(
        &self,
        previous: Option<&str>,
        messages: &[Message],
    ) -> Result<String, ModelError> {
        let mut summary = previous.unwrap_or_default().trim().to_owned();
        let mut rest = messages;
        while !rest.is_empty() {
            let (request, taken) = self.round_input(&summary, rest)?;
            let answer = self.generate(request).await?;
            summary = if answer.trim().is_empty() {
                // A model that answers nothing must not lose what was said: keep an
                // extractive summary (the user's words) instead.
                extractive(&summary, &rest[..taken])
            } else {
                answer.trim().to_owned()
            };
            rest = &rest[taken..];
        }
        Ok(summary)
    }

    /// The request text of one round and how many messages it covers (at least one; a message
    /// too long for a round is cut).
    fn round_input(
        &self,
        summary: &str,
        messages: &[Message],
    ) -> Result<(String, usize), ModelError> {
        let fixed = self.prompt.message(Role::System, INSTRUCTION)?
            + self.prompt.message(Role::User, "")?
            + self.prompt.generation_prompt()?
            + self.max_summary_tokens as u64
            + ROUND_SLACK_TOKENS;
        let budget = (self.context_length as u64).saturating_sub(fixed);
        let mut text = String::new();
        if !summary.is_empty() {
            text.push_str("Summary so far:\n");
            text.push_str(summary);
            text.push_str("\n\n");
        }
        text.push_str("New messages:\n");
        let counter = self.prompt.counter;
        let mut taken = 0;
        for message in messages {
            let speaker = match message.role {
                MessageRole::User => "User",
                MessageRole::Assistant => "Bee",
            };
            let line = format!("{speaker}: {}\n", message.content.trim());
            let candidate = format!("{text}{line}");
            if counter.count(&candidate)? as u64 <= budget {
                text = candidate;
                taken += 1;
            } else if taken == 0 {
                text = counter.truncate(&candidate, budget as usize)?;
                taken = 1;
                break;
            } else {
                break;
            }
        }
        Ok((text, taken))
    }

    async fn generate(&self, request_text: String) -> Result<String, ModelError> {
        let request = GenerateRequest {
            messages: vec![
                ChatMessage {
                    role: Role::System,
                    content: INSTRUCTION.to_owned(),
                },
                ChatMessage {
                    role: Role::User,
                    content: request_text,
                },
            ],
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: self.max_summary_tokens.max(1),
                ..SamplingParams::default()
            },
        };
        let (mut events, _) = self.pool.generate(self.model, request).await?;
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::Text(piece) => text.push_str(&piece),
                GenerationEvent::Done(_) => return Ok(text),
                GenerationEvent::Failed(err) => return Err(err),
            }
        }
        Err(ModelError::Stopped)
    }
}

fn extractive(previous: &str, messages: &[Message]) -> String {
    let asked = messages
        .iter()
        .filter(|m| m.role == MessageRole::User)
        .map(|m| m.content.trim())
        .collect::<Vec<_>>()
        .join(" / ");
    match (previous.is_empty(), asked.is_empty()) {
        (true, _) => format!("The user said: {asked}"),
        (false, true) => previous.to_owned(),
        (false, false) => format!("{previous} The user then said: {asked}"),
    }
}
