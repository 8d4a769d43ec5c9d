//! The node's shared context: configuration, store, services and measurements, built once at
//! start and handed to the edge. Also the background housekeeping tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sting_actors::conversation::ConversationRegistry;
use sting_actors::ingestion::blobs::{BlobStore, MasterKey};
use sting_actors::ingestion::pipeline::{self, IngestionHandle};
use sting_actors::jar_shard::ShardRegistry;
use sting_actors::model::pool::ModelPoolHandle;
use sting_actors::session::SessionRegistry;
use sting_cluster::NodeId;
use sting_store::{SqliteStore, Store, Timestamp};

use crate::config::Config;
use crate::edge::rate_limit::RateLimits;
use crate::identity::IdentityService;
use crate::knowledge::KnowledgeService;
use crate::metrics::{HostSampler, Metrics};

/// Everything a request handler may need.
pub struct AppContext {
    pub config: Config,
    pub node: NodeId,
    pub store: Arc<dyn Store>,
    pub identity: IdentityService,
    pub models: ModelPoolHandle,
    pub chat: ConversationRegistry,
    pub knowledge: Arc<KnowledgeService>,
    pub rate_limits: RateLimits,
    pub metrics: Metrics,
    pub host: Arc<HostSampler>,
    /// Becomes `true` when the node shuts down (WebSockets, which graceful shutdown does not
    /// track, close themselves on it).
    pub closing: tokio::sync::watch::Sender<bool>,
    pub started_at: Instant,
    pub started_at_utc: chrono::DateTime<chrono::Utc>,
}

/// Tasks that live as long as the node.
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// How often expired sessions are deleted from the store.
const SESSION_GC_INTERVAL: Duration = Duration::from_secs(600);
/// How often idle callers are dropped from the rate limiters.
const RATE_LIMIT_GC_INTERVAL: Duration = Duration::from_secs(60);

impl AppContext {
    /// Opens the store, starts the session supervisor and housekeeping, and creates the
    /// bootstrap admin when configured.
    pub async fn start(config: Config) -> anyhow::Result<(Arc<AppContext>, Background)> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let db_path = config.database_path();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&db_path)
                .await
                .with_context(|| format!("opening store {}", db_path.display()))?,
        );
        let (sessions, _) = SessionRegistry::start(store.clone(), config.auth.session_policy())
            .await
            .context("starting session supervisor")?;
        let identity = IdentityService::new(store.clone(), sessions, &config.auth)
            .context("configuring password hashing")?;

        let models = ModelPoolHandle::start(config.pool_config())
            .await
            .context("starting the model pool")?;

        let master_key = MasterKey::load_or_create(&config.data_dir.join("keys/master.key"))
            .context("loading the node's master key")?;
        let blobs = BlobStore::new(config.data_dir.join("blobs"));
        let shards = ShardRegistry::start(store.clone(), config.shard_config())
            .await
            .context("starting the jar shard supervisor")?;
        let ingestion = IngestionHandle::start(pipeline::Context {
            store: store.clone(),
            pool: models.clone(),
            blobs: blobs.clone(),
            master_key: master_key.clone(),
            config: config.ingestion_config(),
            counters: Default::default(),
            shards: shards.clone(),
        })
        .await
        .context("starting the ingestion pipeline")?;
        let resumed = ingestion
            .resume_interrupted(store.as_ref())
            .await
            .context("resuming interrupted ingestion")?;
        if resumed > 0 {
            tracing::info!(
                documents = resumed,
                "resuming documents interrupted by a restart"
            );
        }
        let knowledge = Arc::new(KnowledgeService::new(
            store.clone(),
            blobs,
            master_key,
            ingestion,
            shards,
            models.clone(),
            &config,
        ));

        // Chat turns that name honey jars retrieve through the knowledge service.
        let retriever: Arc<dyn sting_actors::conversation::Retriever> = knowledge.clone();
        let chat = ConversationRegistry::start(
            store.clone(),
            models.clone(),
            config.chat_policy(),
            Some(retriever),
        )
        .await
        .context("starting the conversation supervisor")?;

        let bootstrap = &config.bootstrap;
        if !bootstrap.admin_email.is_empty() {
            let created = identity
                .ensure_admin(
                    &bootstrap.admin_email,
                    &bootstrap.admin_password,
                    &bootstrap.admin_name,
                )
                .await
                .context("creating the bootstrap admin")?;
            if created {
                tracing::info!(email = %bootstrap.admin_email, "bootstrap admin created");
            }
        }

        let host = Arc::new(HostSampler::new(&config.data_dir));
        let ctx = Arc::new(AppContext {
            node: NodeId::new(config.node_name()),
            rate_limits: RateLimits::new(&config.rate_limits),
            metrics: Metrics::new(),
            host: host.clone(),
            closing: tokio::sync::watch::Sender::new(false),
            started_at: Instant::now(),
            started_at_utc: chrono::Utc::now(),
            config,
            store,
            identity,
            models,
            chat,
            knowledge,
        });
        let tasks = vec![
            host.spawn(),
            every(SESSION_GC_INTERVAL, {
                let ctx = ctx.clone();
                move || {
                    let ctx = ctx.clone();
                    async move {
                        match ctx.store.delete_expired_sessions(Timestamp::now()).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, "expired sessions removed"),
                            Err(err) => tracing::warn!(error = %err, "session cleanup failed"),
                        }
                    }
                }
            }),
            every(RATE_LIMIT_GC_INTERVAL, {
                let ctx = ctx.clone();
                move || {
                    ctx.rate_limits.forget_idle();
                    std::future::ready(())
                }
            }),
        ];
        Ok((ctx, Background { tasks }))
    }

    /// Stops the node's services and makes the store durable.
    pub async fn shutdown(&self, background: Background) {
        background.stop();
        // Conversation actors release their leases, so another node can take over at once.
        self.chat.shutdown().await;
        self.knowledge.ingestion().shutdown().await;
        self.knowledge.shards().shutdown().await;
        self.identity.sessions().shutdown().await;
        match self.store.flush().await {
            Ok(()) => tracing::info!("store flushed"),
            Err(err) => tracing::error!(error = %err, "store flush failed"),
        }
    }
}

fn every<F, Fut>(period: Duration, mut job: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            job().await;
        }
    })
}
