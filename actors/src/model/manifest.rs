//! A model directory: `model.onnx`, `tokenizer.json` and `manifest.json`, the description the
//! converter writes (and a user writes by hand for a drop-in ONNX export).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
}

/// `manifest.json`. Fields not relevant to a kind may be absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub kind: ModelKind,
    pub family: String,
    /// Human-readable parameter count, e.g. "135M".
    pub parameters: String,
    /// Longest sequence (prompt + generated, or embedded input) the model handles, in tokens.
    pub context_length: usize,
    // Decoder shape (chat models): needed to build the empty first KV cache.
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub num_kv_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Tokens that end a generation.
    #[serde(default)]
    pub eos_tokens: Vec<String>,
    #[serde(default)]
    pub chat_template: Option<ChatTemplate>,
    // Embedding models.
    #[serde(default)]
    pub embedding_dimension: Option<usize>,
}

/// How a conversation becomes a prompt: one pattern per role, `{content}` replaced by the
/// message, concatenated, followed by `generation_prompt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatTemplate {
    pub system: String,
    pub user: String,
    pub assistant: String,
    pub generation_prompt: String,
    /// System prompt used when the conversation has none.
    #[serde(default)]
    pub default_system: Option<String>,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatTemplate {
    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut prompt = String::new();
        let has_system = messages.iter().any(|m| m.role == Role::System);
        if let (false, Some(system)) = (has_system, &self.default_system) {
            prompt.push_str(&self.system.replace("{content}", system));
        }
        for message in messages {
            prompt.push_str(&self.segment(message.role, &message.content));
        }
        prompt.push_str(&self.generation_prompt);
        prompt
    }

    /// The rendered text of one message (what it adds to a prompt).
    pub fn segment(&self, role: Role, content: &str) -> String {
        let pattern = match role {
            Role::System => &self.system,
            Role::User => &self.user,
            Role::Assistant => &self.assistant,
        };
        pattern.replace("{content}", content)
    }
}

/// A model found on disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Bytes of `model.onnx` (plus external data beside it).
    pub size_bytes: u64,
}

impl ModelDir {
    pub fn model_path(&self) -> PathBuf {
        self.path.join("model.onnx")
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// Reads and checks a model directory.
    pub fn load(path: &Path) -> Result<ModelDir, ModelError> {
        let invalid = |reason: String| ModelError::InvalidModel {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path.join("manifest.json"))
            .map_err(|err| invalid(format!("manifest.json: {err}")))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|err| invalid(format!("manifest.json: {err}")))?;
        for file in ["model.onnx", "tokenizer.json"] {
            if !path.join(file).is_file() {
                return Err(invalid(format!("{file} is missing")));
            }
        }
        match manifest.kind {
            ModelKind::Chat => {
                if manifest.num_layers.is_none()
                    || manifest.num_kv_heads.is_none()
                    || manifest.head_dim.is_none()
                {
                    return Err(invalid(
                        "chat models need num_layers, num_kv_heads and head_dim".into(),
                    ));
                }
                if manifest.chat_template.is_none() {
                    return Err(invalid("chat models need a chat_template".into()));
                }
            }
            ModelKind::Embedding => {
                if manifest.embedding_dimension.is_none() {
                    return Err(invalid("embedding models need embedding_dimension".into()));
                }
            }
        }
        let size_bytes = std::fs::read_dir(path)
            .map_err(|err| invalid(err.to_string()))?
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("model.onnx")
            })
            .filter_map(|entry| entry.metadata().ok())
            .map(|meta| meta.len())
            .sum();
        Ok(ModelDir {
            path: path.to_path_buf(),
            manifest,
            size_bytes,
        })
    }

    /// Every valid model directory directly under `root` (invalid ones are logged and skipped).
    pub fn scan(root: &Path) -> Vec<ModelDir> {
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut models: Vec<ModelDir> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("manifest.json").is_file())
            .filter_map(|entry| match ModelDir::load(&entry.path()) {
                Ok(model) => Some(model),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping model directory");
                    None
                }
            })
            .collect();
        models.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> ChatTemplate {
        ChatTemplate {
            system: "<s>{content}</s>".into(),
            user: "<u>{content}</u>".into(),
            assistant: "<a>{content}</a>".into(),
            generation_prompt: "<a>".into(),
            default_system: Some("Be brief.".into()),
        }
    }

    #[test]
    fn template_adds_default_system_only_when_absent() {
        let user = ChatMessage {
            role: Role::User,
            content: "hi".into(),
        };
        assert_eq!(
            template().render(std::slice::from_ref(&user)),
            "<s>Be brief.</s><u>hi</u><a>"
        );
        let system = ChatMessage {
            role: Role::System,
            content: "Be Bee.".into(),
        };
        assert_eq!(
            template().render(&[system, user]),
            "<s>Be Bee.</s><u>hi</u><a>"
        );
    }
}
