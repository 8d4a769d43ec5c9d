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
use sting_actors::remote::{NodeCommand, NodeHandler};
use sting_actors::session::SessionRegistry;
use sting_cluster::{Cluster, MemberState, NodeId, NodeReport};
use sting_store::{ScyllaStore, SqliteStore, Store, Timestamp};

use crate::config::{Config, StoreBackend};
use crate::edge::rate_limit::{RateLimits, TrustedProxies};
use crate::identity::IdentityService;
use crate::knowledge::KnowledgeService;
use crate::marketplace::{InvoiceProvider, MarketplaceService};
use crate::metrics::{HostSampler, Metrics};
use crate::passkeys::PasskeyService;

/// Everything a request handler may need.
pub struct AppContext {
    pub config: Config,
    pub node: NodeId,
    pub cluster: Cluster,
    pub store: Arc<dyn Store>,
    pub identity: IdentityService,
    pub models: ModelPoolHandle,
    pub chat: ConversationRegistry,
    pub knowledge: Arc<KnowledgeService>,
    pub marketplace: MarketplaceService,
    pub passkeys: PasskeyService,
    pub rate_limits: RateLimits,
    /// Whose `X-Forwarded-For` names the client (checked when the config was loaded).
    pub trusted_proxies: TrustedProxies,
    pub metrics: Metrics,
    pub host: Arc<HostSampler>,
    /// Becomes `true` when the node shuts down (WebSockets, which graceful shutdown does not
    /// track, close themselves on it).
    pub closing: tokio::sync::watch::Sender<bool>,
    pub started_at: Instant,
    pub started_at_utc: chrono::DateTime<chrono::Utc>,
    /// Where the HTTP edge listens, once bound (reported to the cluster).
    pub http_address: std::sync::OnceLock<String>,
    /// Asks the node to stop (`sting cluster leave`): the serve loop shuts down gracefully.
    pub leave: tokio::sync::watch::Sender<bool>,
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
/// How long `sting cluster leave` waits for this node's actors to hand over before stopping.
const LEAVE_HANDOVER: Duration = Duration::from_secs(30);
/// How often idle callers are dropped from the rate limiters.
const RATE_LIMIT_GC_INTERVAL: Duration = Duration::from_secs(60);

/// The store `[store]` configures: the SQLite file in the store directory, or the ScyllaDB
/// cluster (its schema created or migrated on the way).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.store.backend {
        StoreBackend::Sqlite => {
            let path = config.database_path();
            Arc::new(
                SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("opening store {}", path.display()))?,
            )
        }
        StoreBackend::Scylla => {
            let scylla = &config.store.scylla;
            tracing::info!(nodes = ?scylla.nodes, keyspace = %scylla.keyspace, "connecting to ScyllaDB");
            Arc::new(
                ScyllaStore::connect(scylla)
                    .await
                    .with_context(|| format!("opening the ScyllaDB store {:?}", scylla.nodes))?,
            )
        }
    })
}

/// Creates `dir` (and its parents) if missing, and makes it its owner's alone (0700): it holds
/// the database, the keys and the originals. A directory made beforehand (by an installer, say)
/// is tightened too.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        tracing::info!(dir = %dir.display(), was = format!("{mode:o}"), "made the directory private (0700)");
    }
    Ok(())
}

impl AppContext {
    /// Opens the store, starts the session supervisor and housekeeping, and creates the
    /// bootstrap admin when configured.
    pub async fn start(config: Config) -> anyhow::Result<(Arc<AppContext>, Background)> {
        for dir in [config.data_dir.clone(), config.store_dir()] {
            create_private_dir(&dir)?;
        }
        let cluster = Cluster::start(config.cluster_config())
            .await
            .context("starting the cluster node")?;
        let store = open_store(&config).await?;
        let (sessions, _) = SessionRegistry::start(store.clone(), config.auth.session_policy())
            .await
            .context("starting session supervisor")?;
        let sessions = sessions.in_cluster(cluster.clone());
        let identity = IdentityService::new(store.clone(), sessions, &config.auth)
            .context("configuring password hashing")?;
        let passkeys = PasskeyService::new(&config.webauthn, store.clone(), identity.clone())
            .map_err(|err| anyhow::anyhow!(err))
            .context("configuring passkeys")?;

        let models = ModelPoolHandle::start(config.pool_config())
            .await
            .context("starting the model pool")?;

        let master_key = MasterKey::load_or_create(&config.store_dir().join("keys/master.key"))
            .context("loading the master key")?;
        let blobs = BlobStore::new(config.store_dir().join("blobs"));
        let shards = ShardRegistry::start(store.clone(), config.shard_config(), cluster.clone())
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
            cluster.clone(),
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

        let marketplace =
            MarketplaceService::new(store.clone(), knowledge.clone(), Arc::new(InvoiceProvider));
        let host = Arc::new(HostSampler::new(&config.data_dir));
        let join_wait = Duration::from_millis(config.cluster.join_wait_ms);
        let ctx = Arc::new(AppContext {
            node: cluster.local().clone(),
            cluster: cluster.clone(),
            rate_limits: RateLimits::new(&config.rate_limits),
            trusted_proxies: TrustedProxies::parse(&config.server.trusted_proxies)
                .unwrap_or_default(),
            metrics: Metrics::new(store.client_stats().is_some()),
            host: host.clone(),
            closing: tokio::sync::watch::Sender::new(false),
            started_at: Instant::now(),
            started_at_utc: chrono::Utc::now(),
            http_address: Default::default(),
            leave: tokio::sync::watch::Sender::new(false),
            config,
            store,
            identity,
            models,
            chat,
            marketplace,
            passkeys,
            knowledge,
        });
        cluster.set_handler(Arc::new(NodeHandler {
            conversations: ctx.chat.clone(),
            shards: ctx.knowledge.shards().clone(),
            sessions: ctx.identity.sessions().clone(),
            commands: {
                let ctx = Arc::downgrade(&ctx);
                Arc::new(move |command| match ctx.upgrade() {
                    Some(ctx) => {
                        ctx.run_command(command);
                        Ok(())
                    }
                    None => Err("the node is stopping".into()),
                })
            },
        }));
        cluster.set_reporter({
            let ctx = Arc::downgrade(&ctx);
            move || {
                let ctx = ctx.upgrade();
                async move {
                    match ctx {
                        Some(ctx) => ctx.report().await,
                        None => NodeReport::default(),
                    }
                }
            }
        });
        cluster.await_peers(join_wait).await;
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

    /// What this node tells the cluster about itself.
    async fn report(&self) -> NodeReport {
        let models = self.models.list().await.unwrap_or_default();
        NodeReport {
            http_address: self.http_address.get().cloned().unwrap_or_default(),
            conversations: self.chat.active_count(),
            shards: self.knowledge.shards().active_count(),
            models: models
                .into_iter()
                .filter(|model| model.loaded.is_some())
                .map(|model| model.model.manifest.name)
                .collect(),
            cpu_percent: self.host.latest().cpu_percent as f32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Runs an operator command on this node: draining stops placing conversations and shards
    /// here (live ones move to their new owners as their next requests arrive, or at their next
    /// tick); leaving drains, then stops the process once nothing is owned here any more.
    pub fn run_command(self: &Arc<Self>, command: NodeCommand) {
        match command {
            NodeCommand::Drain => self.cluster.set_state(MemberState::Draining),
            NodeCommand::Leave => {
                self.cluster.set_state(MemberState::Leaving);
                let ctx = self.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + LEAVE_HANDOVER;
                    while Instant::now() < deadline
                        && ctx.chat.active_count() + ctx.knowledge.shards().active_count() > 0
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tracing::info!("left the cluster; stopping");
                    ctx.leave.send_replace(true);
                });
            }
        }
    }

    /// Stops the node's services and makes the store durable.
    pub async fn shutdown(&self, background: Background) {
        background.stop();
        // Conversation actors release their leases, so another node can take over at once.
        self.chat.shutdown().await;
        self.knowledge.ingestion().shutdown().await;
        self.knowledge.shards().shutdown().await;
        self.identity.sessions().shutdown().await;
        self.cluster.shutdown().await;
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
