//! Exact token counts: a local model is counted with its own `tokenizer.json` (the same
//! encoding its worker uses, special tokens recognised, none added), an OpenAI-family model name
//! with tiktoken's encoding for that family (cl100k, o200k, ...).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{ModelDir, ModelError};

/// Counts tokens the way one model sees them.
pub enum TokenCounter {
    Model(Box<tokenizers::Tokenizer>),
    Tiktoken(&'static tiktoken_rs::CoreBPE),
}

impl TokenCounter {
    /// The counter for a model: its own tokenizer when it is installed here, else tiktoken's
    /// encoding when the name is an OpenAI model's.
    pub fn for_model(name: &str, local: Option<&ModelDir>) -> Result<TokenCounter, ModelError> {
        if let Some(dir) = local {
            let mut tokenizer = tokenizers::Tokenizer::from_file(dir.tokenizer_path())
                .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
            // Counting needs the whole text: a tokenizer.json may carry truncation or padding
            // settings (MiniLM's truncates at 128), which would under- or over-count.
            tokenizer
                .with_truncation(None)
                .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
            tokenizer.with_padding(None);
            return Ok(TokenCounter::Model(Box::new(tokenizer)));
        }
        use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
        let bpe = match get_tokenizer(name) {
            Some(Tokenizer::O200kBase) => tiktoken_rs::o200k_base_singleton(),
            Some(Tokenizer::O200kHarmony) => tiktoken_rs::o200k_harmony_singleton(),
            Some(Tokenizer::Cl100kBase) => tiktoken_rs::cl100k_base_singleton(),
            Some(Tokenizer::P50kBase) => tiktoken_rs::p50k_base_singleton(),
            Some(Tokenizer::P50kEdit) => tiktoken_rs::p50k_edit_singleton(),
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => tiktoken_rs::r50k_base_singleton(),
            None => return Err(ModelError::NotFound(name.to_owned())),
        };
        Ok(TokenCounter::Tiktoken(bpe))
    }

    /// Tokens in `text`, special tokens (`<|im_start|>`, ...) counted as the model reads them.
    pub fn count(&self, text: &str) -> Result<usize, ModelError> {
        match self {
            TokenCounter::Model(tokenizer) => tokenizer
                .encode(text, false)
                .map(|encoding| encoding.len())
                .map_err(|err| ModelError::Tokenizer(err.to_string())),
            TokenCounter::Tiktoken(bpe) => Ok(bpe.encode_with_special_tokens(text).len()),
        }
    }

    /// The longest prefix of `text` (cut at a char boundary) with at most `max_tokens` tokens.
    pub fn truncate(&self, text: &str, max_tokens: usize) -> Result<String, ModelError> {
        let mut end = text.len();
        loop {
            let prefix = &text[..end];
            let tokens = self.count(prefix)?;
            if tokens <= max_tokens || end == 0 {
                return Ok(prefix.to_owned());
            }
            // Shrink in proportion (at least one char), so this ends in a few rounds.
            let target = (end as u128 * max_tokens as u128 / tokens as u128) as usize;
            end = floor_char_boundary(text, target.min(end - 1));
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Token counters by model name, loaded once per node.
#[derive(Default)]
pub struct TokenCounters {
    loaded: Mutex<HashMap<String, Arc<TokenCounter>>>,
}

impl TokenCounters {
    /// The counter of `name` (see [`TokenCounter::for_model`]).
    pub fn get(
        &self,
        name: &str,
        local: Option<&ModelDir>,
    ) -> Result<Arc<TokenCounter>, ModelError> {
        if let Some(counter) = self.lock().get(name) {
            return Ok(counter.clone());
        }
        let counter = Arc::new(TokenCounter::for_model(name, local)?);
        self.lock().insert(name.to_owned(), counter.clone());
        Ok(counter)
    }

    /// Forgets a model's counter (its files changed or it was removed).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TokenCounter>>> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_names_count_with_their_tiktoken_encoding() {
        let gpt4 = TokenCounter::for_model("gpt-4", None).unwrap();
        // "hello world" is [15339, 1917] in cl100k_base.
        assert_eq!(gpt4.count("hello world").unwrap(), 2);
        let gpt4o = TokenCounter::for_model("gpt-4o", None).unwrap();
        assert_eq!(gpt4o.count("<|endoftext|>").unwrap(), 1);
        assert!(matches!(
            TokenCounter::for_model("no-such-model", None),
            Err(ModelError::NotFound(_))
        ));
    }

    #[test]
    fn truncation_keeps_a_prefix_within_the_limit() {
        let counter = TokenCounter::for_model("gpt-4", None).unwrap();
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let cut = counter.truncate(&text, 17).unwrap();
        assert!(text.starts_with(&cut));
        assert!(counter.count(&cut).unwrap() <= 17);
        assert!(counter.count(&cut).unwrap() >= 12, "cut too much: {cut:?}");
        assert_eq!(counter.truncate("héllo", 100).unwrap(), "héllo");
    }
}
