//! Models: ONNX Runtime inference for chat (decoder with KV cache, continuous batching) and
//! embeddings (sentence encoders), one [`worker::ModelWorker`] actor per loaded model, and the
//! node's [`pool::ModelPool`] that loads, unloads (least recently used first) and hands out
//! workers.
//!
//! Supervision: `ModelPool` ── `ModelWorker` (one per loaded model). A worker owns one ONNX
//! Runtime session on a dedicated thread; its actor admits work into a bounded queue.

mod decoder;
mod encoder;
pub mod generation;
pub mod manifest;
pub mod pool;
pub mod runtime;
pub mod sampling;
pub mod tokens;
pub mod worker;

use std::path::PathBuf;

pub use encoder::Embedding;
pub use generation::{FinishReason, GenerationEvent, GenerationSummary};
pub use manifest::{ChatMessage, Manifest, ModelDir, ModelKind, Role};
pub use sampling::SamplingParams;

/// Failures of model operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("model {0} not found")]
    NotFound(String),
    #[error("ONNX Runtime library not found at {0}; run `sting models prepare`")]
    RuntimeMissing(PathBuf),
    #[error("onnx runtime: {0}")]
    Runtime(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid model at {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("model {0} is at capacity; retry shortly")]
    Busy(String),
    #[error("the prompt has {tokens} tokens; the model's context is {limit}")]
    ContextOverflow { tokens: usize, limit: usize },
    #[error("model {name} cannot {operation}")]
    WrongKind {
        name: String,
        operation: &'static str,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model worker stopped")]
    Stopped,
}
