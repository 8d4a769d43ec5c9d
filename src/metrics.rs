//! What the node measures about itself: Prometheus metrics (`prometheus-client`, the
//! Prometheus project's own Rust client: typed, no global registry), the request statistics
//! behind `/api/system/metrics`, and host usage (`sysinfo`) sampled in the background.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    category: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PasskeyLabels {
    /// `registration` or `authentication`.
    ceremony: &'static str,
    /// `success` or `refused`.
    outcome: &'static str,
}

/// What a scrape reports about the node's current state.
pub struct NodeSnapshot {
    pub active_sessions: u64,
    pub active_conversations: u64,
    pub uptime: Duration,
    pub store_up: bool,
    /// The store driver's counters, for a networked store (ScyllaDB).
    pub store_client: Option<sting_store::ClientStats>,
    pub models: Vec<ModelSample>,
    pub cluster: ClusterSample,
}

/// The node's view of its cluster and its cluster traffic (totals since start).
pub struct ClusterSample {
    /// Members by state (`up`, `draining`, `leaving`, `down`), this node included.
    pub members: Vec<(&'static str, u64)>,
    pub active_shards: u64,
    pub heartbeats_sent: u64,
    pub nodes_declared_down: u64,
    pub remote_calls: u64,
    pub remote_call_failures: u64,
    pub remote_casts: u64,
}

/// One model's counters (totals since the node started).
pub struct ModelSample {
    pub name: String,
    pub loaded: bool,
    pub inferences: u64,
    pub tokens_generated: u64,
}

/// Request statistics since start, for the JSON metrics endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RequestStats {
    pub total: u64,
    pub total_today: u64,
    /// Seconds.
    pub average_response_time: f64,
    /// Fraction of responses with a 5xx status.
    pub error_rate: f64,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<CategoryLabels, Histogram>,
    active_sessions: Gauge,
    active_conversations: Gauge,
    websockets: Gauge,
    uptime_seconds: Gauge,
    store_up: Gauge,
    store_client: Option<StoreClientMetrics>,
    model_loaded: Family<ModelLabels, Gauge>,
    model_inferences: Family<ModelLabels, Counter>,
    model_tokens: Family<ModelLabels, Counter>,
    cluster_members: Family<StateLabels, Gauge>,
    passkey_ceremonies: Family<PasskeyLabels, Counter>,
    active_shards: Gauge,
    heartbeats_sent: Counter,
    nodes_declared_down: Counter,
    remote_calls: Counter,
    remote_call_failures: Counter,
    remote_casts: Counter,
    total: AtomicU64,
    server_errors: AtomicU64,
    duration_micros: AtomicU64,
    /// (day number since the Unix epoch, requests that day).
    today: Mutex<(i64, u64)>,
}

/// The ScyllaDB driver's counters, mirrored at each scrape.
struct StoreClientMetrics {
    requests: Counter,
    errors: Counter,
    retries: Counter,
    request_timeouts: Counter,
    connection_timeouts: Counter,
    connections: Gauge,
    latency_mean_ms: Gauge,
    latency_p99_ms: Gauge,
}

impl StoreClientMetrics {
    fn register(registry: &mut Registry) -> StoreClientMetrics {
        let metrics = StoreClientMetrics {
            requests: Counter::default(),
            errors: Counter::default(),
            retries: Counter::default(),
            request_timeouts: Counter::default(),
            connection_timeouts: Counter::default(),
            connections: Gauge::default(),
            latency_mean_ms: Gauge::default(),
            latency_p99_ms: Gauge::default(),
        };
        let store = registry.sub_registry_with_prefix("store");
        store.register(
            "requests",
            "Requests the store's driver sent (each page of a paged read counts)",
            metrics.requests.clone(),
        );
        store.register(
            "request_errors",
            "Store requests that failed once the retry policy gave up",
            metrics.errors.clone(),
        );
        store.register(
            "retries",
            "Store requests retried (idempotent ones only)",
            metrics.retries.clone(),
        );
        store.register(
            "request_timeouts",
            "Store requests that timed out",
            metrics.request_timeouts.clone(),
        );
        store.register(
            "connection_timeouts",
            "Connections to store nodes that timed out",
            metrics.connection_timeouts.clone(),
        );
        store.register(
            "connections",
            "Open connections to the store's nodes (one per shard per node)",
            metrics.connections.clone(),
        );
        store.register(
            "latency_mean_milliseconds",
            "Mean store request latency",
            metrics.latency_mean_ms.clone(),
        );
        store.register(
            "latency_p99_milliseconds",
            "99th percentile of store request latency",
            metrics.latency_p99_ms.clone(),
        );
        metrics
    }

    fn update(&self, stats: &sting_store::ClientStats) {
        catch_up(&self.requests, stats.requests);
        catch_up(&self.errors, stats.errors);
        catch_up(&self.retries, stats.retries);
        catch_up(&self.request_timeouts, stats.request_timeouts);
        catch_up(&self.connection_timeouts, stats.connection_timeouts);
        self.connections.set(stats.connections as i64);
        self.latency_mean_ms.set(stats.latency_mean_ms as i64);
        self.latency_p99_ms.set(stats.latency_p99_ms as i64);
    }
}

impl Metrics {
    /// `networked_store`: the store has a driver of its own whose counters are exported
    /// (`sting_store_*`); an embedded store has none.
    pub fn new(networked_store: bool) -> Metrics {
        let mut registry = Registry::with_prefix("sting");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<CategoryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let active_sessions = Gauge::default();
        let active_conversations = Gauge::default();
        let websockets = Gauge::default();
        let uptime_seconds = Gauge::default();
        let store_up = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by method, rate-limit category and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by rate-limit category",
            durations.clone(),
        );
        registry.register(
            "active_session_actors",
            "Login sessions with a live actor on this node",
            active_sessions.clone(),
        );
        registry.register(
            "active_conversation_actors",
            "Conversations with a live actor (owned) on this node",
            active_conversations.clone(),
        );
        registry.register(
            "websocket_connections",
            "Open chat WebSockets",
            websockets.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since the node started",
            uptime_seconds.clone(),
        );
        registry.register(
            "store_up",
            "1 when the store answered its last ping",
            store_up.clone(),
        );
        let model_loaded = Family::<ModelLabels, Gauge>::default();
        let model_inferences = Family::<ModelLabels, Counter>::default();
        let model_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "model_loaded",
            "1 while a model is loaded",
            model_loaded.clone(),
        );
        registry.register(
            "model_inferences",
            "Generations and embedding requests served, by model",
            model_inferences.clone(),
        );
        registry.register(
            "model_generated_tokens",
            "Tokens generated, by model",
            model_tokens.clone(),
        );
        let cluster_members = Family::<StateLabels, Gauge>::default();
        let active_shards = Gauge::default();
        let [heartbeats_sent, nodes_declared_down, remote_calls, remote_call_failures, remote_casts] =
            std::array::from_fn(|_| Counter::default());
        registry.register(
            "cluster_members",
            "Cluster members as this node sees them, by state (up, draining, leaving, down)",
            cluster_members.clone(),
        );
        registry.register(
            "active_shard_actors",
            "Honey-jar shards with a live actor (owned) on this node",
            active_shards.clone(),
        );
        registry.register(
            "cluster_heartbeats_sent",
            "Heartbeats sent to other nodes",
            heartbeats_sent.clone(),
        );
        registry.register(
            "cluster_nodes_declared_down",
            "Times this node declared another node down",
            nodes_declared_down.clone(),
        );
        registry.register(
            "cluster_remote_calls",
            "Requests sent to other nodes that expect an answer",
            remote_calls.clone(),
        );
        registry.register(
            "cluster_remote_call_failures",
            "Requests to other nodes that failed (unreachable, timed out, or refused)",
            remote_call_failures.clone(),
        );
        registry.register(
            "cluster_remote_casts",
            "One-way messages sent to other nodes (turn events, hand-overs, index refreshes)",
            remote_casts.clone(),
        );
        let passkey_ceremonies = Family::<PasskeyLabels, Counter>::default();
        registry.register(
            "passkey_ceremonies",
            "Passkey registrations and logins completed, by outcome (refused: a bad, replayed, \
             expired or foreign answer)",
            passkey_ceremonies.clone(),
        );
        let store_client = networked_store.then(|| StoreClientMetrics::register(&mut registry));
        Metrics {
            registry,
            store_client,
            cluster_members,
            passkey_ceremonies,
            active_shards,
            heartbeats_sent,
            nodes_declared_down,
            remote_calls,
            remote_call_failures,
            remote_casts,
            requests,
            durations,
            active_sessions,
            active_conversations,
            websockets,
            uptime_seconds,
            store_up,
            model_loaded,
            model_inferences,
            model_tokens,
            total: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            duration_micros: AtomicU64::new(0),
            today: Mutex::new((0, 0)),
        }
    }

    /// Counts a completed passkey ceremony (`registration` or `authentication`).
    pub fn record_passkey(&self, ceremony: &'static str, accepted: bool) {
        let outcome = if accepted { "success" } else { "refused" };
        self.passkey_ceremonies
            .get_or_create(&PasskeyLabels { ceremony, outcome })
            .inc();
    }

    pub fn websocket_opened(&self) {
        self.websockets.inc();
    }

    pub fn websocket_closed(&self) {
        self.websockets.dec();
    }

    /// Records one served request.
    pub fn record_request(&self, method: &str, category: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                category: category.to_owned(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&CategoryLabels {
                category: category.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        self.total.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let day = chrono::Utc::now().timestamp().div_euclid(86_400);
        let mut today = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if today.0 != day {
            *today = (day, 0);
        }
        today.1 += 1;
    }

    pub fn request_stats(&self) -> RequestStats {
        let total = self.total.load(Ordering::Relaxed);
        let day = chrono::Utc::now().timestamp().div_euclid(86_400);
        let today = *self.today.lock().unwrap_or_else(|p| p.into_inner());
        let ratio = |part: u64| {
            if total == 0 {
                0.0
            } else {
                part as f64 / total as f64
            }
        };
        RequestStats {
            total,
            total_today: if today.0 == day { today.1 } else { 0 },
            average_response_time: ratio(self.duration_micros.load(Ordering::Relaxed)) / 1e6,
            error_rate: ratio(self.server_errors.load(Ordering::Relaxed)),
        }
    }

    /// The Prometheus text exposition, brought up to date with `snapshot`.
    pub fn encode(&self, snapshot: &NodeSnapshot) -> String {
        self.active_sessions.set(snapshot.active_sessions as i64);
        self.active_conversations
            .set(snapshot.active_conversations as i64);
        self.uptime_seconds.set(snapshot.uptime.as_secs() as i64);
        self.store_up.set(i64::from(snapshot.store_up));
        if let (Some(metrics), Some(stats)) = (&self.store_client, &snapshot.store_client) {
            metrics.update(stats);
        }
        for model in &snapshot.models {
            let labels = ModelLabels {
                model: model.name.clone(),
            };
            self.model_loaded
                .get_or_create(&labels)
                .set(i64::from(model.loaded));
            catch_up(
                &self.model_inferences.get_or_create(&labels),
                model.inferences,
            );
            catch_up(
                &self.model_tokens.get_or_create(&labels),
                model.tokens_generated,
            );
        }
        let cluster = &snapshot.cluster;
        for (state, count) in &cluster.members {
            let labels = StateLabels {
                state: (*state).to_owned(),
            };
            self.cluster_members
                .get_or_create(&labels)
                .set(*count as i64);
        }
        self.active_shards.set(cluster.active_shards as i64);
        catch_up(&self.heartbeats_sent, cluster.heartbeats_sent);
        catch_up(&self.nodes_declared_down, cluster.nodes_declared_down);
        catch_up(&self.remote_calls, cluster.remote_calls);
        catch_up(&self.remote_call_failures, cluster.remote_call_failures);
        catch_up(&self.remote_casts, cluster.remote_casts);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Advances a counter mirroring a total kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Host usage in percent.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostUsage {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Of the file system holding the data dir.
    pub disk_percent: f64,
}

/// Samples host usage every few seconds on a blocking thread (CPU usage needs two readings
/// apart in time, so it cannot be measured inside a request).
pub struct HostSampler {
    latest: RwLock<HostUsage>,
    data_dir: PathBuf,
}

impl HostSampler {
    pub fn new(data_dir: &Path) -> HostSampler {
        HostSampler {
            latest: RwLock::new(HostUsage::default()),
            data_dir: data_dir
                .canonicalize()
                .unwrap_or_else(|_| data_dir.to_path_buf()),
        }
    }

    pub fn latest(&self) -> HostUsage {
        *self.latest.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until the returned task is aborted.
    pub fn spawn(self: std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut system = sysinfo::System::new();
            let mut disks = sysinfo::Disks::new_with_refreshed_list();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let usage;
                (system, disks, usage) = tokio::task::spawn_blocking({
                    let data_dir = self.data_dir.clone();
                    move || {
                        let usage = sample(&mut system, &mut disks, &data_dir);
                        (system, disks, usage)
                    }
                })
                .await
                .expect("host sampling does not panic");
                *self.latest.write().unwrap_or_else(|p| p.into_inner()) = usage;
            }
        })
    }
}

fn sample(system: &mut sysinfo::System, disks: &mut sysinfo::Disks, data_dir: &Path) -> HostUsage {
    system.refresh_cpu_usage();
    system.refresh_memory();
    disks.refresh(true);
    let percent = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        }
    };
    // The disk whose mount point is the longest prefix of the data dir holds it.
    let disk = disks
        .list()
        .iter()
        .filter(|disk| data_dir.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len());
    HostUsage {
        cpu_percent: f64::from(system.global_cpu_usage()),
        memory_percent: percent(system.used_memory(), system.total_memory()),
        disk_percent: disk
            .map(|d| percent(d.total_space() - d.available_space(), d.total_space()))
            .unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_average_and_error_rate() {
        let metrics = Metrics::new(true);
        metrics.record_request("GET", "general", 200, Duration::from_millis(10));
        metrics.record_request("GET", "general", 503, Duration::from_millis(30));
        let stats = metrics.request_stats();
        assert_eq!((stats.total, stats.total_today), (2, 2));
        assert!((stats.average_response_time - 0.020).abs() < 1e-9);
        assert!((stats.error_rate - 0.5).abs() < 1e-9);
        let text = metrics.encode(&NodeSnapshot {
            active_sessions: 3,
            active_conversations: 2,
            uptime: Duration::from_secs(9),
            store_up: true,
            store_client: Some(sting_store::ClientStats {
                requests: 12,
                retries: 2,
                connections: 6,
                latency_p99_ms: 8,
                ..Default::default()
            }),
            models: vec![ModelSample {
                name: "m".into(),
                loaded: true,
                inferences: 4,
                tokens_generated: 40,
            }],
            cluster: ClusterSample {
                members: vec![("up", 2), ("down", 1)],
                active_shards: 1,
                heartbeats_sent: 7,
                nodes_declared_down: 1,
                remote_calls: 5,
                remote_call_failures: 1,
                remote_casts: 9,
            },
        });
        assert!(
            text.contains("sting_model_inferences_total{model=\"m\"} 4"),
            "{text}"
        );
        assert!(text.contains("sting_model_loaded{model=\"m\"} 1"));
        assert!(text.contains(
            "sting_http_requests_total{method=\"GET\",category=\"general\",status=\"503\"} 1"
        ));
        assert!(text.contains("sting_active_session_actors 3"));
        assert!(
            text.contains("sting_cluster_members{state=\"down\"} 1"),
            "{text}"
        );
        assert!(text.contains("sting_cluster_remote_calls_total 5"));
        assert!(text.contains("sting_store_requests_total 12"), "{text}");
        assert!(text.contains("sting_store_retries_total 2"));
        assert!(text.contains("sting_store_connections 6"));
        assert!(text.contains("sting_store_latency_p99_milliseconds 8"));
        let embedded = Metrics::new(false).encode(&NodeSnapshot {
            active_sessions: 0,
            active_conversations: 0,
            uptime: Duration::ZERO,
            store_up: true,
            store_client: None,
            models: Vec::new(),
            cluster: ClusterSample {
                members: Vec::new(),
                active_shards: 0,
                heartbeats_sent: 0,
                nodes_declared_down: 0,
                remote_calls: 0,
                remote_call_failures: 0,
                remote_casts: 0,
            },
        });
        assert!(!embedded.contains("sting_store_requests"), "{embedded}");
    }
}
