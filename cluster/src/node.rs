//! The node's place in the cluster: the ractor_cluster `NodeServer`, the heartbeat loop that
//! keeps the membership current, reconnection to seeds and lost peers, and the handle the rest
//! of the node uses ([`Cluster`]) to ask who owns a key and to talk to other nodes.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{pg, Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::membership::{Changes, Heartbeat, Member, MemberState, Membership, NodeReport};
use crate::transport::{self, Endpoint, EndpointMsg, EndpointShared, Handler, NODES_GROUP};
use crate::{placement, tls, ClusterError, NodeId};

/// Cookies that ship in examples and must never guard a real cluster.
const DEFAULT_COOKIES: [&str; 4] = ["", "sting", "changeme", "secret"];
const MIN_COOKIE_CHARS: usize = 16;

/// How this node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node: NodeId,
    /// `None`: a cluster of one, with no listener (the same code paths, one member).
    pub network: Option<NetworkConfig>,
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is declared down.
    pub down_after: Duration,
}

/// The cluster's network settings of a node.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where the node listens for peers.
    pub listen: SocketAddr,
    /// `host:port` peers use to reach it.
    pub advertise: String,
    /// Shared secret of the cluster's nodes.
    pub cookie: String,
    /// `host:port` of nodes to join through; the rest are discovered from them.
    pub seeds: Vec<String>,
    pub tls: Option<TlsFiles>,
}

/// PEM files for mutually authenticated TLS between nodes: every node presents `cert` (signed by
/// `ca`, naming its advertised host) and accepts only peers whose certificates `ca` signed.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Refuses cookies that are empty, shipped in examples, or short enough to guess.
pub fn validate_cookie(cookie: &str) -> Result<(), ClusterError> {
    if DEFAULT_COOKIES.contains(&cookie) || cookie.chars().count() < MIN_COOKIE_CHARS {
        return Err(ClusterError::Config(format!(
            "cluster.cookie must be a secret of at least {MIN_COOKIE_CHARS} characters, the same on \
             every node (e.g. `openssl rand -hex 24`); it is empty or a default"
        )));
    }
    Ok(())
}

/// The placement set as of the latest membership change (a member joined, went down, or
/// changed state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Members that own actors, sorted.
    pub placement: Vec<NodeId>,
}

/// Counters of the node's cluster traffic, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub heartbeats_sent: AtomicU64,
    pub nodes_declared_down: Arc<AtomicU64>,
    pub remote_calls: AtomicU64,
    pub remote_call_failures: AtomicU64,
    pub remote_casts: AtomicU64,
}

type Reporter = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = NodeReport> + Send>> + Send + Sync>;

struct Inner {
    config: ClusterConfig,
    membership: Arc<Mutex<Membership>>,
    view: Arc<watch::Sender<Arc<View>>>,
    endpoint: ActorRef<EndpointMsg>,
    shared: Arc<EndpointShared>,
    server: Option<ActorRef<NodeServerMessage>>,
    connector: Option<tls::Connector>,
    reporter: Mutex<Option<Reporter>>,
    stats: ClusterStats,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Starts the node's endpoint and, when networked, its `NodeServer` and heartbeats.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.node.as_str().is_empty() || config.node.as_str().contains(['@', ' ']) {
            return Err(ClusterError::Config(format!(
                "node name {:?} must be non-empty, without spaces or '@'",
                config.node.as_str()
            )));
        }
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let local = Heartbeat {
            node: config.node.clone(),
            address: config
                .network
                .as_ref()
                .map_or_else(String::new, |n| n.advertise.clone()),
            incarnation,
            state: MemberState::Up,
            report: NodeReport::default(),
            peers: Vec::new(),
        };
        let membership = Arc::new(Mutex::new(Membership::new(local, config.down_after)));
        let first = View {
            placement: vec![config.node.clone()],
        };
        let view = Arc::new(watch::Sender::new(Arc::new(first)));
        let stats = ClusterStats::default();
        let shared = Arc::new(EndpointShared {
            membership: membership.clone(),
            handler: Default::default(),
            on_change: Box::new(publisher(
                membership.clone(),
                view.clone(),
                stats.nodes_declared_down.clone(),
            )),
        });
        let (endpoint, _) = Actor::spawn(None, Endpoint, shared.clone())
            .await
            .map_err(|err| ClusterError::Start(err.to_string()))?;
        pg::join(
            transport::node_group(&config.node),
            vec![endpoint.get_cell()],
        );
        pg::join(NODES_GROUP.to_owned(), vec![endpoint.get_cell()]);

        let (server, connector) = match &config.network {
            Some(network) => {
                validate_cookie(&network.cookie)?;
                let (server, connector) = start_server(&config.node, network).await?;
                (Some(server), connector)
            }
            None => (None, None),
        };
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config,
                membership,
                view,
                endpoint,
                shared,
                server,
                connector,
                reporter: Mutex::new(None),
                stats,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        if let Some(server) = &cluster.inner.server {
            let (disconnects, events) = mpsc::unbounded_channel();
            server
                .cast(NodeServerMessage::SubscribeToEvents {
                    id: "sting.membership".into(),
                    subscription: Box::new(Disconnects(disconnects)),
                })
                .map_err(|err| ClusterError::Start(err.to_string()))?;
            let task = tokio::spawn(cluster.clone().heartbeats(events));
            cluster.lock_tasks().push(task);
        }
        Ok(cluster)
    }

    /// A cluster of one named `node`, without networking (tests, benches, tools).
    pub async fn single(node: NodeId) -> Result<Cluster, ClusterError> {
        Cluster::start(ClusterConfig {
            node,
            network: None,
            heartbeat_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(3),
        })
        .await
    }

    /// This node.
    pub fn local(&self) -> &NodeId {
        &self.inner.config.node
    }

    /// Whether the node talks to peers (false: a cluster of one).
    pub fn is_networked(&self) -> bool {
        self.inner.server.is_some()
    }

    /// The member that owns `key` now (rendezvous hashing over the placement set).
    pub fn owner(&self, key: &[u8]) -> NodeId {
        let view = self.inner.view.borrow();
        placement::owner(key, &view.placement)
            .cloned()
            .unwrap_or_else(|| self.local().clone())
    }

    /// Whether `node` is this node or a peer heard from recently.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.membership().is_live(node)
    }

    /// Whether `node` is a peer this node has heard from and then declared down.
    pub fn is_down(&self, node: &NodeId) -> bool {
        self.membership().is_down(node)
    }

    /// The placement set, now and at every membership change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.inner.view.subscribe()
    }

    /// Every member ever heard from, this node first.
    pub fn members(&self) -> Vec<Member> {
        self.membership().members(Instant::now())
    }

    /// This node's state.
    pub fn state(&self) -> MemberState {
        self.membership().local().state
    }

    /// Changes this node's state; peers learn it with the next heartbeat, sent at once.
    pub fn set_state(&self, state: MemberState) {
        let changes = self.membership().update_local(|local| local.state = state);
        (self.inner.shared.on_change)(changes);
        tracing::info!(state = state.as_str(), "node state changed");
        self.send_heartbeats();
    }

    /// Installs the handler of requests from other nodes (once).
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        let _ = self.inner.shared.handler.set(handler);
    }

    /// Installs what the node reports about its load with each heartbeat.
    pub fn set_reporter<F>(&self, reporter: impl Fn() -> F + Send + Sync + 'static)
    where
        F: Future<Output = NodeReport> + Send + 'static,
    {
        *self
            .inner
            .reporter
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(move || Box::pin(reporter())));
    }

    /// Waits until this node has heard from another member, then one more heartbeat round
    /// (for the peers those know), or at most `timeout`. A node with no seeds returns at once.
    pub async fn await_peers(&self, timeout: Duration) {
        let seeded = self
            .inner
            .config
            .network
            .as_ref()
            .is_some_and(|n| !n.seeds.is_empty());
        if !seeded {
            return;
        }
        let started = Instant::now();
        let mut view = self.subscribe();
        let heard = tokio::time::timeout(timeout, async {
            while self.members().len() < 2 {
                if view.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if heard.is_ok() {
            let settle = 2 * self.inner.config.heartbeat_interval;
            tokio::time::sleep(settle.min(timeout.saturating_sub(started.elapsed()))).await;
        } else {
            tracing::warn!(
                ?timeout,
                "no cluster member answered; serving as the only member for now"
            );
        }
        tracing::info!(members = self.members().len(), "joined the cluster");
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.inner.stats
    }

    /// Sends `request` to `node` and waits at most `timeout` for its answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: &NodeId,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClusterError> {
        self.inner
            .stats
            .remote_calls
            .fetch_add(1, Ordering::Relaxed);
        let result = self
            .call_bytes(node, transport::encode(request), timeout)
            .await;
        if result.is_err() {
            self.inner
                .stats
                .remote_call_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        transport::decode(&result?)
    }

    /// Sends `message` to `node` without waiting; it may be lost if the connection drops.
    pub fn cast<Msg: Serialize>(&self, node: &NodeId, message: &Msg) -> Result<(), ClusterError> {
        self.inner
            .stats
            .remote_casts
            .fetch_add(1, Ordering::Relaxed);
        self.endpoint_of(node)?
            .cast(EndpointMsg::Cast(transport::encode(message)))
            .map_err(|_| ClusterError::Unreachable(node.clone()))
    }

    /// Stops heartbeats and leaves the process groups (peers see the node go at once).
    pub async fn shutdown(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        self.inner.endpoint.stop(Some("node shutdown".into()));
        if let Some(server) = &self.inner.server {
            server.stop(Some("node shutdown".into()));
        }
    }

    async fn call_bytes(
        &self,
        node: &NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClusterError> {
        let endpoint = self.endpoint_of(node)?;
        // A node declared down (e.g. frozen) never answers: stop waiting at once.
        let mut view = self.subscribe();
        let down = async {
            loop {
                if view.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if !self.is_live(node) {
                    return;
                }
            }
        };
        let call = endpoint.call(|reply| EndpointMsg::Call(payload, reply), Some(timeout));
        let answer = tokio::select! {
            answer = call => answer.map_err(|_| ClusterError::Unreachable(node.clone()))?,
            () = down => return Err(ClusterError::Unreachable(node.clone())),
        };
        let bytes = match answer {
            ractor::rpc::CallResult::Success(bytes) => bytes,
            ractor::rpc::CallResult::Timeout => return Err(ClusterError::Timeout(node.clone())),
            ractor::rpc::CallResult::SenderError => {
                return Err(ClusterError::Unreachable(node.clone()))
            }
        };
        transport::decode::<Result<Vec<u8>, String>>(&bytes)?.map_err(ClusterError::Remote)
    }

    fn endpoint_of(&self, node: &NodeId) -> Result<ActorRef<EndpointMsg>, ClusterError> {
        pg::get_members(&transport::node_group(node))
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
            .map(ActorRef::from)
            .ok_or_else(|| ClusterError::Unreachable(node.clone()))
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.inner
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn refresh_report(&self) {
        let reporter = self
            .inner
            .reporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(reporter) = reporter {
            let report = reporter().await;
            self.membership()
                .update_local(|local| local.report = report);
        }
    }

    /// Sends this node's heartbeat to every connected peer.
    fn send_heartbeats(&self) {
        let heartbeat = {
            let membership = self.membership();
            let mut heartbeat = membership.local().clone();
            heartbeat.peers = membership.live_addresses();
            transport::encode(&heartbeat)
        };
        for cell in pg::get_members(&NODES_GROUP.to_owned()) {
            if cell.get_id().is_local() {
                continue;
            }
            let endpoint: ActorRef<EndpointMsg> = cell.into();
            if endpoint
                .cast(EndpointMsg::Heartbeat(heartbeat.clone()))
                .is_ok()
            {
                self.inner
                    .stats
                    .heartbeats_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The membership loop: heartbeats out, silent peers declared down, closed connections
    /// noted at once, seeds and lost peers redialled.
    async fn heartbeats(self, mut disconnects: mpsc::UnboundedReceiver<NodeId>) {
        let interval = self.inner.config.heartbeat_interval;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_dial: std::collections::HashMap<String, Instant> = Default::default();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.refresh_report().await;
                    self.send_heartbeats();
                    let changes = self.membership().expire(Instant::now());
                    (self.inner.shared.on_change)(changes);
                    self.redial(&mut last_dial).await;
                }
                Some(node) = disconnects.recv() => {
                    let changes = self.membership().disconnected(&node);
                    (self.inner.shared.on_change)(changes);
                }
            }
        }
    }

    /// Dials seeds, lost peers and members heard of through peers that no open connection
    /// reaches, each at most once per
    /// `down_after` (ractor_cluster does not reconnect by itself).
    async fn redial(&self, last_dial: &mut std::collections::HashMap<String, Instant>) {
        let (Some(server), Some(network)) = (&self.inner.server, &self.inner.config.network) else {
            return;
        };
        let connected: HashSet<String> = match server
            .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(sessions)) => sessions
                .values()
                .filter_map(|s| s.peer_name.as_ref())
                .map(|name| name.connection_string.clone())
                .chain(sessions.values().map(|s| s.peer_addr.clone()))
                .collect(),
            _ => return,
        };
        let candidates: Vec<String> = {
            let membership = self.membership();
            network
                .seeds
                .iter()
                .filter(|seed| !membership.has_live_address(seed))
                .cloned()
                .chain(membership.unreachable_addresses())
                .chain(membership.gossiped_addresses())
                .collect()
        };
        let now = Instant::now();
        for address in candidates {
            if address == network.advertise || connected.contains(&address) {
                continue;
            }
            if last_dial
                .get(&address)
                .is_some_and(|at| now.duration_since(*at) < self.inner.config.down_after)
            {
                continue;
            }
            last_dial.insert(address.clone(), now);
            let server = server.clone();
            let connector = self.inner.connector.clone();
            tokio::spawn(async move {
                let dialled = match connector {
                    Some(connector) => connector.dial(&server, &address).await,
                    None => ractor_cluster::client_connect(&server, address.as_str())
                        .await
                        .map_err(|err| err.to_string()),
                };
                match dialled {
                    Ok(()) => tracing::debug!(%address, "dialled cluster peer"),
                    Err(err) => tracing::debug!(%address, error = %err, "cluster peer unreachable"),
                }
            });
        }
    }
}

/// Publishes a new view when `changes` touched the placement set, and logs joins and losses.
fn publisher(
    membership: Arc<Mutex<Membership>>,
    view: Arc<watch::Sender<Arc<View>>>,
    declared_down: Arc<AtomicU64>,
) -> impl Fn(Changes) + Send + Sync {
    move |changes: Changes| {
        for node in &changes.joined {
            tracing::info!(%node, "cluster node joined");
        }
        for node in &changes.down {
            tracing::warn!(%node, "cluster node declared down");
            declared_down.fetch_add(1, Ordering::Relaxed);
        }
        if changes.placement || !changes.joined.is_empty() || !changes.down.is_empty() {
            let placement = membership
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .placement_set();
            // Sent even when the set is unchanged: subscribers re-check liveness on every change.
            view.send_replace(Arc::new(View { placement }));
        }
    }
}

/// Starts the `NodeServer`; returns it and, with TLS, the connector for outgoing dials.
async fn start_server(
    node: &NodeId,
    network: &NetworkConfig,
) -> Result<(ActorRef<NodeServerMessage>, Option<tls::Connector>), ClusterError> {
    let (incoming, connector) = match &network.tls {
        Some(files) => {
            let (acceptor, connector) = tls::load(files)?;
            (Some(IncomingEncryptionMode::Tls(acceptor)), Some(connector))
        }
        None => (None, None),
    };
    let host = network
        .advertise
        .rsplit_once(':')
        .map_or(network.advertise.as_str(), |(host, _)| host)
        .to_owned();
    let server = NodeServer::new(
        network.listen.port(),
        network.cookie.clone(),
        node.as_str().to_owned(),
        host,
        incoming,
        // Not ractor's transitive mode: it dials the peers it hears of in the clear whatever
        // the node's TLS. Members learn of each other from heartbeats and dial one another
        // with their own connector (`redial`).
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(network.listen.ip());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|err| ClusterError::Start(err.to_string()))?;
    tracing::info!(listen = %network.listen, advertise = %network.advertise, tls = network.tls.is_some(), "cluster node listening");
    Ok((server, connector))
}

/// Forwards closed node connections to the membership loop.
struct Disconnects(mpsc::UnboundedSender<NodeId>);

impl NodeEventSubscription for Disconnects {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        if let Some(name) = session.peer_name {
            let node = name.name.split('@').next().unwrap_or_default();
            let _ = self.0.send(NodeId::new(node));
        }
    }

    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
}
