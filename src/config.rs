//! Configuration: the documented defaults in `config/sting.toml` (compiled in), an optional
//! file, `STING_*` environment variables and command-line flags, layered in that order and
//! parsed once at start into typed sections.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The shipped defaults, documented key by key.
pub const DEFAULT_CONFIG: &str = include_str!("../config/sting.toml");
/// The top-level keys of [`Config`]; environment variables must start with one of them.
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "node",
    "store",
    "cluster",
    "server",
    "limits",
    "auth",
    "webauthn",
    "rate_limits",
    "models",
    "chat",
    "knowledge",
    "logging",
    "bootstrap",
];
/// Read when present and no `--config` is given.
const DEFAULT_CONFIG_PATH: &str = "config/sting.toml";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub cluster: ClusterSection,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub webauthn: WebauthnConfig,
    pub rate_limits: RateLimitsConfig,
    pub models: ModelsConfig,
    pub chat: ChatConfig,
    pub knowledge: KnowledgeConfig,
    pub logging: LoggingConfig,
    pub bootstrap: BootstrapConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub dir: String,
    pub scylla: sting_store::ScyllaConfig,
}

/// Where the records live: one machine's SQLite file, or a ScyllaDB cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Scylla,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub enabled: bool,
    pub host: IpAddr,
    pub port: u16,
    pub advertise: String,
    pub cookie: String,
    pub seeds: Vec<String>,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub join_wait_ms: u64,
    pub tls_cert_path: String,
    pub tls_key_path: String,
    pub tls_ca_path: String,
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("enabled", &self.enabled)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("advertise", &self.advertise)
            .field("cookie", &"<redacted>")
            .field("seeds", &self.seeds)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("down_after_ms", &self.down_after_ms)
            .field("join_wait_ms", &self.join_wait_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    pub tls: bool,
    pub tls_cert_path: String,
    pub tls_key_path: String,
    pub max_connections: usize,
    pub shutdown_grace_secs: u64,
    pub trusted_proxies: Vec<String>,
    pub max_connections_per_address: usize,
    pub body_read_timeout_secs: u64,
    pub body_idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    pub max_import_bytes: u64,
    pub max_import_unpacked_bytes: u64,
    pub max_concurrent_imports: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub allow_registration: bool,
    pub reauth_window_secs: u64,
    pub min_password_length: usize,
    pub session_idle_ttl_secs: u64,
    pub session_absolute_ttl_secs: u64,
    pub session_renew_interval_secs: u64,
    pub session_revalidate_secs: u64,
    pub session_actor_idle_secs: u64,
    pub cookie_name: String,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
}

/// Passkeys: the relying party and its ceremonies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebauthnConfig {
    pub rp_id: String,
    pub rp_name: String,
    pub origins: Vec<String>,
    pub challenge_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    pub auth: RateRule,
    pub auth_account: RateRule,
    pub chat: RateRule,
    pub search: RateRule,
    pub upload: RateRule,
    pub general: RateRule,
}

/// `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    pub requests: u32,
    pub window_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub dir: String,
    pub onnxruntime_library: String,
    pub auto_prepare: bool,
    pub python: String,
    pub default_chat_model: String,
    pub default_embedding_model: String,
    pub max_loaded: usize,
    pub intra_threads: usize,
    pub queue_depth: usize,
    pub max_batch: usize,
    pub embedding_max_inputs: usize,
    pub embedding_max_input_chars: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub system_prompt: String,
    pub context_budget_ratio: f64,
    pub keep_recent_messages: usize,
    pub summary_max_tokens: usize,
    pub default_max_tokens: usize,
    pub default_temperature: f32,
    pub max_message_chars: usize,
    pub lease_ttl_secs: u64,
    pub actor_idle_secs: u64,
    pub ws_ping_interval_secs: u64,
    pub ws_idle_timeout_secs: u64,
    pub ws_max_frame_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeConfig {
    pub max_upload_bytes: u64,
    pub embedding_model: String,
    pub chunk_max_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub ingestion_concurrency: usize,
    pub ingestion_queue_depth: usize,
    pub embed_batch: usize,
    pub extract_max_output_ratio: u64,
    pub extract_min_output_bytes: u64,
    pub extract_max_output_bytes: u64,
    pub extract_timeout_secs: u64,
    pub max_processing_attempts: u32,
    pub shards_per_jar: u32,
    pub shard_lease_ttl_secs: u64,
    pub shard_idle_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    pub admin_email: String,
    pub admin_password: String,
    pub admin_name: String,
}

impl std::fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("admin_email", &self.admin_email)
            .field("admin_password", &"<redacted>")
            .field("admin_name", &self.admin_name)
            .finish()
    }
}

/// Overrides from command-line flags (only those given).
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "ServerFlags::is_empty")]
    pub server: ServerFlags,
}

#[derive(Debug, Default, Serialize)]
pub struct ServerFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

impl ServerFlags {
    fn is_empty(&self) -> bool {
        self.host.is_none() && self.port.is_none() && self.tls.is_none()
    }
}

/// Configuration errors are reported at start, before anything is opened.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layered configuration. `file` is `--config`; env vars come from the process.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_PATH))
            }
            None => {}
        }
        // Only variables naming a known section or key are configuration: others (STING_CONFIG,
        // read by the CLI; test switches like STING_REQUIRE_ORT) are not ours to refuse.
        let env = Env::prefixed("STING_").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            let first = key.split("__").next().unwrap_or_default();
            TOP_LEVEL_KEYS.contains(&first)
        });
        figment = figment
            .merge(env.split("__"))
            .merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        let limits = &self.limits;
        if limits.max_body_bytes == 0
            || limits.max_import_bytes == 0
            || limits.max_import_unpacked_bytes == 0
            || limits.max_concurrent_imports == 0
        {
            return invalid("limits must be positive");
        }
        if let Err(reason) =
            crate::edge::rate_limit::TrustedProxies::parse(&self.server.trusted_proxies)
        {
            return Err(ConfigError::Invalid(format!(
                "server.trusted_proxies: {reason}"
            )));
        }
        if self.server.max_connections == 0
            || self.server.max_connections_per_address == 0
            || self.server.body_read_timeout_secs == 0
            || self.server.body_idle_timeout_secs == 0
        {
            return invalid(
                "server.max_connections, max_connections_per_address and body_*_timeout_secs must be positive",
            );
        }
        if self.auth.min_password_length < 8 {
            return invalid("auth.min_password_length must be at least 8");
        }
        if self.auth.cookie_name.is_empty()
            || !self
                .auth
                .cookie_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return invalid("auth.cookie_name must be non-empty [A-Za-z0-9_-]");
        }
        if self.auth.session_idle_ttl_secs == 0 || self.auth.session_absolute_ttl_secs == 0 {
            return invalid("auth session ttls must be positive");
        }
        let webauthn = &self.webauthn;
        if webauthn.rp_id.is_empty() || webauthn.challenge_ttl_secs == 0 {
            return invalid("webauthn.rp_id must be set and webauthn.challenge_ttl_secs positive");
        }
        if webauthn.origins.is_empty() && webauthn.rp_id != "localhost" {
            return invalid(
                "webauthn.origins must list the site's origins unless rp_id is localhost",
            );
        }
        let rules = [
            ("auth", self.rate_limits.auth),
            ("auth_account", self.rate_limits.auth_account),
            ("chat", self.rate_limits.chat),
            ("search", self.rate_limits.search),
            ("upload", self.rate_limits.upload),
            ("general", self.rate_limits.general),
        ];
        for (name, rule) in rules {
            if rule.requests == 0 || rule.window_secs == 0 {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.{name} needs positive requests and window_secs"
                )));
            }
        }
        let models = &self.models;
        if models.max_loaded == 0
            || models.max_batch == 0
            || models.intra_threads == 0
            || models.embedding_max_inputs == 0
            || models.embedding_max_input_chars == 0
        {
            return invalid(
                "models.max_loaded, max_batch, intra_threads and embedding_max_* must be positive",
            );
        }
        let chat = &self.chat;
        if !(chat.context_budget_ratio > 0.0 && chat.context_budget_ratio <= 1.0) {
            return invalid("chat.context_budget_ratio must be in (0, 1]");
        }
        if chat.keep_recent_messages == 0
            || chat.summary_max_tokens == 0
            || chat.default_max_tokens == 0
            || chat.max_message_chars == 0
            || chat.lease_ttl_secs == 0
            || chat.actor_idle_secs == 0
            || chat.ws_ping_interval_secs == 0
            || chat.ws_idle_timeout_secs == 0
            || chat.ws_max_frame_bytes == 0
        {
            return invalid("chat limits, counts and intervals must be positive");
        }
        if !(0.0..=2.0).contains(&chat.default_temperature) {
            return invalid("chat.default_temperature must be within 0..=2");
        }
        let knowledge = &self.knowledge;
        if knowledge.max_upload_bytes == 0
            || knowledge.ingestion_concurrency == 0
            || knowledge.embed_batch == 0
            || knowledge.extract_max_output_ratio == 0
            || knowledge.extract_max_output_bytes == 0
            || knowledge.extract_timeout_secs == 0
            || knowledge.max_processing_attempts == 0
            || knowledge.shards_per_jar == 0
            || knowledge.shard_lease_ttl_secs == 0
            || knowledge.shard_idle_secs == 0
            || knowledge.chunk_max_tokens < 16
        {
            return invalid("knowledge limits must be positive (chunk_max_tokens at least 16)");
        }
        if knowledge.chunk_overlap_tokens >= knowledge.chunk_max_tokens / 2 {
            return invalid(
                "knowledge.chunk_overlap_tokens must be under half of chunk_max_tokens",
            );
        }
        let cluster = &self.cluster;
        if cluster.heartbeat_interval_ms == 0
            || cluster.down_after_ms < 2 * cluster.heartbeat_interval_ms
        {
            return invalid(
                "cluster.heartbeat_interval_ms must be positive and cluster.down_after_ms at least twice it",
            );
        }
        let tls_files = [
            &cluster.tls_cert_path,
            &cluster.tls_key_path,
            &cluster.tls_ca_path,
        ];
        if tls_files.iter().any(|f| f.is_empty()) && tls_files.iter().any(|f| !f.is_empty()) {
            return invalid("cluster.tls_cert_path, tls_key_path and tls_ca_path go together");
        }
        if cluster.enabled {
            sting_cluster::node::validate_cookie(&cluster.cookie)
                .map_err(|err| ConfigError::Invalid(err.to_string()))?;
        }
        if self.server.tls_cert_path.is_empty() != self.server.tls_key_path.is_empty() {
            return invalid("server.tls_cert_path and server.tls_key_path go together");
        }
        let bootstrap = &self.bootstrap;
        if bootstrap.admin_email.is_empty() != bootstrap.admin_password.is_empty() {
            return invalid("bootstrap.admin_email and bootstrap.admin_password go together");
        }
        Ok(())
    }

    /// The node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        if !self.node.name.is_empty() {
            return self.node.name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "sting-node".to_owned())
    }

    /// Where model directories live.
    pub fn models_dir(&self) -> PathBuf {
        match self.models.dir.as_str() {
            "" => self.data_dir.join("models"),
            dir => PathBuf::from(dir),
        }
    }

    /// The ONNX Runtime shared library to load.
    pub fn onnxruntime_library(&self) -> PathBuf {
        if !self.models.onnxruntime_library.is_empty() {
            return PathBuf::from(&self.models.onnxruntime_library);
        }
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => self
                .data_dir
                .join("runtime")
                .join(crate::models::ONNXRUNTIME_LIBRARY),
        }
    }

    pub fn pool_config(&self) -> sting_actors::model::pool::PoolConfig {
        sting_actors::model::pool::PoolConfig {
            models_dir: self.models_dir(),
            runtime_library: self.onnxruntime_library(),
            intra_threads: self.models.intra_threads,
            max_loaded: self.models.max_loaded,
            queue_depth: self.models.queue_depth,
            max_batch: self.models.max_batch,
        }
    }

    /// Where the state every node of a cluster shares lives: the SQLite database, the master
    /// key and the uploaded documents.
    pub fn store_dir(&self) -> PathBuf {
        match self.store.dir.as_str() {
            "" => self.data_dir.clone(),
            dir => PathBuf::from(dir),
        }
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.store_dir().join("sting.db")
    }

    /// How this node joins its cluster (a cluster of one when `cluster.enabled` is false).
    pub fn cluster_config(&self) -> sting_cluster::ClusterConfig {
        let cluster = &self.cluster;
        let network = cluster.enabled.then(|| {
            let listen = std::net::SocketAddr::new(cluster.host, cluster.port);
            let tls = (!cluster.tls_cert_path.is_empty()).then(|| sting_cluster::TlsFiles {
                cert: cluster.tls_cert_path.clone().into(),
                key: cluster.tls_key_path.clone().into(),
                ca: cluster.tls_ca_path.clone().into(),
            });
            sting_cluster::NetworkConfig {
                listen,
                advertise: match cluster.advertise.as_str() {
                    "" => listen.to_string(),
                    advertise => advertise.to_owned(),
                },
                cookie: cluster.cookie.clone(),
                seeds: cluster.seeds.clone(),
                tls,
            }
        });
        sting_cluster::ClusterConfig {
            node: sting_cluster::NodeId::new(self.node_name()),
            network,
            heartbeat_interval: Duration::from_millis(cluster.heartbeat_interval_ms),
            down_after: Duration::from_millis(cluster.down_after_ms),
        }
    }
}

impl Config {
    /// The rules of conversations on this node.
    pub fn chat_policy(&self) -> sting_actors::conversation::ChatPolicy {
        let chat = &self.chat;
        sting_actors::conversation::ChatPolicy {
            system_prompt: chat.system_prompt.clone(),
            default_model: self.models.default_chat_model.clone(),
            budget_ratio: chat.context_budget_ratio,
            keep_recent_messages: chat.keep_recent_messages,
            summary_max_tokens: chat.summary_max_tokens,
            default_max_tokens: chat.default_max_tokens,
            default_temperature: chat.default_temperature,
            max_message_chars: chat.max_message_chars,
            lease_ttl: Duration::from_secs(chat.lease_ttl_secs),
            idle_timeout: Duration::from_secs(chat.actor_idle_secs),
        }
    }
}

impl Config {
    /// How documents are processed on this node.
    pub fn ingestion_config(&self) -> sting_actors::ingestion::pipeline::IngestionConfig {
        let knowledge = &self.knowledge;
        sting_actors::ingestion::pipeline::IngestionConfig {
            embedding_model: self.embedding_model(),
            chunking: sting_actors::ingestion::chunk::ChunkingConfig {
                max_tokens: knowledge.chunk_max_tokens,
                overlap_tokens: knowledge.chunk_overlap_tokens,
            },
            concurrency: knowledge.ingestion_concurrency,
            queue_depth: knowledge.ingestion_queue_depth,
            embed_batch: knowledge.embed_batch,
            extract_limits: sting_actors::ingestion::extract::ExtractLimits {
                max_output_ratio: knowledge.extract_max_output_ratio,
                min_output_bytes: knowledge.extract_min_output_bytes,
                max_output_bytes: knowledge.extract_max_output_bytes,
                timeout: Duration::from_secs(knowledge.extract_timeout_secs),
            },
            max_attempts: knowledge.max_processing_attempts,
        }
    }

    /// How honey-jar shards are laid out and kept on this node.
    pub fn shard_config(&self) -> sting_actors::jar_shard::ShardConfig {
        let knowledge = &self.knowledge;
        sting_actors::jar_shard::ShardConfig {
            dir: self.data_dir.join("shards"),
            shards_per_jar: knowledge.shards_per_jar,
            lease_ttl: Duration::from_secs(knowledge.shard_lease_ttl_secs),
            idle_timeout: Duration::from_secs(knowledge.shard_idle_secs),
        }
    }

    /// The model that embeds honey-jar chunks.
    pub fn embedding_model(&self) -> String {
        match self.knowledge.embedding_model.as_str() {
            "" => self.models.default_embedding_model.clone(),
            name => name.to_owned(),
        }
    }
}

impl AuthConfig {
    pub fn session_policy(&self) -> sting_actors::session::SessionPolicy {
        sting_actors::session::SessionPolicy {
            idle_ttl: Duration::from_secs(self.session_idle_ttl_secs),
            absolute_ttl: Duration::from_secs(self.session_absolute_ttl_secs),
            renew_interval: Duration::from_secs(self.session_renew_interval_secs),
            revalidate_interval: Duration::from_secs(self.session_revalidate_secs),
            idle_timeout: Duration::from_secs(self.session_actor_idle_secs),
        }
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_parse_and_validate() {
        let config: Config = Figment::from(Toml::string(DEFAULT_CONFIG))
            .extract()
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.server.port, 5050);
        assert!(config.server.tls);
        assert_eq!(config.rate_limits.auth.requests, 5);
        assert_eq!(config.rate_limits.general.window_secs, 3600);
        assert_eq!(config.limits.max_concurrent_imports, 2);
    }

    #[test]
    fn cluster_examples_load_and_a_clustered_node_needs_a_real_cookie() {
        for node in ["a", "b", "c"] {
            let path = PathBuf::from(format!(
                "{}/config/cluster-node-{node}.toml",
                env!("CARGO_MANIFEST_DIR")
            ));
            figment::Jail::expect_with(|jail| {
                let refused =
                    Config::load(Some(&path), &FlagOverrides::default()).expect_err("no cookie");
                assert!(refused.to_string().contains("cluster.cookie"), "{refused}");
                jail.set_env("STING_CLUSTER__COOKIE", "changeme");
                assert!(Config::load(Some(&path), &FlagOverrides::default()).is_err());
                jail.set_env("STING_CLUSTER__COOKIE", "a-long-enough-shared-secret");
                let config = Config::load(Some(&path), &FlagOverrides::default())
                    .map_err(|e| e.to_string())?;
                let cluster = config.cluster_config();
                assert_eq!(cluster.node.as_str(), node);
                let network = cluster.network.expect("networked");
                assert_eq!(network.seeds.is_empty(), node == "a");
                assert_eq!(
                    config.database_path(),
                    PathBuf::from("./shared-store/sting.db")
                );
                Ok(())
            });
        }
    }

    #[test]
    fn scylla_examples_and_the_compose_environment_select_scylla() {
        for node in ["a", "b", "c"] {
            let path = PathBuf::from(format!(
                "{}/config/scylla-node-{node}.toml",
                env!("CARGO_MANIFEST_DIR")
            ));
            figment::Jail::expect_with(|jail| {
                jail.set_env("STING_CLUSTER__COOKIE", "a-long-enough-shared-secret");
                jail.set_env("STING_STORE__SCYLLA__PASSWORD", "from-the-environment");
                let config = Config::load(Some(&path), &FlagOverrides::default())
                    .map_err(|e| e.to_string())?;
                assert_eq!(config.store.backend, StoreBackend::Scylla);
                let scylla = &config.store.scylla;
                assert_eq!(scylla.nodes.len(), 3);
                assert_eq!(scylla.password, "from-the-environment");
                assert_eq!(
                    scylla.replication.class,
                    sting_store::ReplicationClass::NetworkTopologyStrategy
                );
                assert_eq!(scylla.replication.datacenters["datacenter1"], 3);
                assert!(!format!("{config:?}").contains("from-the-environment"));
                Ok(())
            });
        }
        // What deploy/compose.scylla.yaml sets.
        figment::Jail::expect_with(|jail| {
            jail.set_env("STING_STORE__BACKEND", "scylla");
            jail.set_env(
                "STING_STORE__SCYLLA__NODES",
                r#"["scylla-1:9042","scylla-2:9042","scylla-3:9042"]"#,
            );
            jail.set_env("STING_STORE__SCYLLA__REPLICATION__REPLICATION_FACTOR", "3");
            let config =
                Config::load(None, &FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.store.backend, StoreBackend::Scylla);
            assert_eq!(config.store.scylla.nodes[2], "scylla-3:9042");
            assert_eq!(config.store.scylla.replication.replication_factor, 3);
            Ok(())
        });
    }

    #[test]
    fn env_and_flags_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STING_SERVER__PORT", "7000");
            jail.set_env("STING_RATE_LIMITS__AUTH__REQUESTS", "50");
            jail.set_env("STING_DATA_DIR", "/tmp/from-env");
            let flags = FlagOverrides {
                data_dir: Some("/tmp/from-flag".into()),
                ..Default::default()
            };
            let config = Config::load(None, &flags).map_err(|e| e.to_string())?;
            assert_eq!(config.server.port, 7000);
            assert_eq!(config.rate_limits.auth.requests, 50);
            assert_eq!(config.data_dir, PathBuf::from("/tmp/from-flag"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STING_SERVER__PROT", "7000");
            assert!(Config::load(None, &FlagOverrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn other_sting_variables_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STING_CONFIG", "elsewhere.toml");
            jail.set_env("STING_REQUIRE_ORT", "1");
            Config::load(None, &FlagOverrides::default()).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        let defaults: Config = Figment::from(Toml::string(DEFAULT_CONFIG))
            .extract()
            .unwrap();
        let value = serde_json::to_value(&defaults).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = TOP_LEVEL_KEYS.to_vec();
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let bootstrap = BootstrapConfig {
            admin_email: "a@b.c".into(),
            admin_password: "hunter2hunter2".into(),
            admin_name: "A".into(),
        };
        assert!(!format!("{bootstrap:?}").contains("hunter2"));
    }
}
