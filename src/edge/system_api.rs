//! `/api/system/*` (health, status, metrics) and the Prometheus exposition at `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sting_actors::session::Identity;
use utoipa::ToSchema;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::ErrorEnvelope;
use super::{admin, reject, with_ctx};
use crate::app::AppContext;
use crate::metrics::{ClusterSample, ModelSample, NodeSnapshot};

/// A health check slower than this counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let system = warp::path("api").and(warp::path("system"));
    let health = system
        .and(warp::path("health"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .then(health);
    let status = system
        .and(warp::path("status"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .then(status);
    let metrics = system
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and_then(metrics);
    let prometheus = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx))
        .then(prometheus);
    health
        .or(status)
        .unify()
        .or(metrics)
        .unify()
        .or(prometheus)
        .unify()
        .boxed()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: Health,
    pub timestamp: String,
    /// Each service this node runs, by name.
    pub services: BTreeMap<&'static str, Health>,
    pub version: &'static str,
    /// Seconds since the node started.
    pub uptime: u64,
    pub node: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    pub status: Health,
    /// Free-form facts about the service.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub status: Health,
    pub node: String,
    pub version: &'static str,
    pub started_at: String,
    pub uptime: u64,
    pub services: BTreeMap<&'static str, ServiceStatus>,
    pub server: ServerStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerStatus {
    pub tls: bool,
    pub port: u16,
    pub rate_limits_enabled: bool,
    pub max_body_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsResponse {
    pub performance: PerformanceMetrics,
    pub requests: RequestMetrics,
    pub models: ModelMetrics,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetrics {
    /// Generations and embedding requests served since start, all models.
    pub total_inferences: u64,
    /// Seconds per inference, mean over all models.
    pub average_inference_time: f64,
    /// Models loaded now.
    pub active_models: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PerformanceMetrics {
    /// Percent of all CPUs, sampled every 5 s.
    pub cpu_usage: f64,
    /// Percent of physical memory in use.
    pub memory_usage: f64,
    /// Percent of the data dir's file system in use.
    pub disk_usage: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestMetrics {
    /// Requests served since UTC midnight.
    pub total_today: u64,
    pub total_since_start: u64,
    /// Seconds, mean since start.
    pub average_response_time: f64,
    /// Fraction of responses since start with a 5xx status.
    pub error_rate: f64,
}

struct Checks {
    database: ServiceStatus,
    authentication: ServiceStatus,
    llm_service: ServiceStatus,
    chat: ServiceStatus,
}

impl Checks {
    async fn run(ctx: &AppContext) -> Checks {
        let started = Instant::now();
        let ping = tokio::time::timeout(CHECK_TIMEOUT, ctx.store.ping()).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let (db_health, error) = match ping {
            Ok(Ok(())) => (Health::Healthy, None),
            Ok(Err(err)) => (Health::Unhealthy, Some(err.to_string())),
            Err(_) => (Health::Unhealthy, Some("ping timed out".to_owned())),
        };
        let sessions = ctx.identity.sessions();
        let llm_service = llm_check(ctx).await;
        Checks {
            llm_service,
            chat: ServiceStatus {
                status: if ctx.chat.is_running() {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                details: serde_json::json!({ "active_conversation_actors": ctx.chat.active_count() }),
            },
            database: ServiceStatus {
                status: db_health,
                details: serde_json::json!({
                    "backend": ctx.store.backend_name(),
                    "latency_ms": latency_ms,
                    "error": error,
                }),
            },
            authentication: ServiceStatus {
                status: if sessions.is_running() {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                details: serde_json::json!({ "active_session_actors": sessions.active_count() }),
            },
        }
    }

    /// Without the database nothing works; without sessions, models or chat, some routes still do.
    fn overall(&self) -> Health {
        match (
            self.database.status,
            self.authentication.status,
            self.llm_service.status,
            self.chat.status,
        ) {
            (Health::Healthy, Health::Healthy, Health::Healthy, Health::Healthy) => Health::Healthy,
            (Health::Healthy, _, _, _) => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }

    fn into_map(self) -> BTreeMap<&'static str, ServiceStatus> {
        BTreeMap::from([
            ("database", self.database),
            ("authentication", self.authentication),
            ("llm_service", self.llm_service),
            ("chat", self.chat),
        ])
    }
}

/// Healthy when the pool runs, the runtime library is there and a chat model is available;
/// degraded otherwise (the node serves everything but generation).
async fn llm_check(ctx: &AppContext) -> ServiceStatus {
    let library = ctx.config.onnxruntime_library();
    let models = tokio::time::timeout(CHECK_TIMEOUT, ctx.models.list()).await;
    let (status, details) = match models {
        Ok(Ok(models)) => {
            let chat_models: Vec<&str> = models
                .iter()
                .filter(|m| m.model.manifest.kind == sting_actors::model::ModelKind::Chat)
                .map(|m| m.model.manifest.name.as_str())
                .collect();
            let loaded: Vec<&str> = models
                .iter()
                .filter(|m| m.loaded.is_some())
                .map(|m| m.model.manifest.name.as_str())
                .collect();
            let ready = library.is_file() && !chat_models.is_empty();
            let status = if ready {
                Health::Healthy
            } else {
                Health::Degraded
            };
            let details = serde_json::json!({
                "runtime_library": library.display().to_string(),
                "runtime_present": library.is_file(),
                "chat_models": chat_models,
                "loaded_models": loaded,
            });
            (status, details)
        }
        _ => (
            Health::Unhealthy,
            serde_json::json!({ "error": "model pool not answering" }),
        ),
    };
    ServiceStatus { status, details }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The cluster part of a Prometheus scrape.
fn cluster_sample(ctx: &AppContext) -> ClusterSample {
    use std::sync::atomic::Ordering::Relaxed;
    let mut members = BTreeMap::from([("up", 0), ("draining", 0), ("leaving", 0), ("down", 0)]);
    for member in ctx.cluster.members() {
        let state = match member.live {
            true => member.heartbeat.state.as_str(),
            false => "down",
        };
        *members.entry(state).or_default() += 1;
    }
    let stats = ctx.cluster.stats();
    ClusterSample {
        members: members.into_iter().collect(),
        active_shards: ctx.knowledge.shards().active_count(),
        heartbeats_sent: stats.heartbeats_sent.load(Relaxed),
        nodes_declared_down: stats.nodes_declared_down.load(Relaxed),
        remote_calls: stats.remote_calls.load(Relaxed),
        remote_call_failures: stats.remote_call_failures.load(Relaxed),
        remote_casts: stats.remote_casts.load(Relaxed),
    }
}

/// Liveness and readiness of this node. 503 when unhealthy, so load balancers can act on it.
#[utoipa::path(get, path = "/api/system/health", tag = "system",
    responses(
        (status = 200, description = "Healthy or degraded", body = HealthResponse),
        (status = 503, description = "Unhealthy", body = HealthResponse),
    ))]
pub async fn health(ctx: Arc<AppContext>) -> Response {
    let checks = Checks::run(&ctx).await;
    let status = checks.overall();
    let body = HealthResponse {
        status,
        timestamp: now_rfc3339(),
        services: checks
            .into_map()
            .into_iter()
            .map(|(name, service)| (name, service.status))
            .collect(),
        version: env!("CARGO_PKG_VERSION"),
        uptime: ctx.started_at.elapsed().as_secs(),
        node: ctx.node.to_string(),
    };
    let code = if status == Health::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    warp::reply::with_status(warp::reply::json(&body), code).into_response()
}

/// Detailed status of this node and its services (admin).
#[utoipa::path(get, path = "/api/system/status", tag = "system",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Node status", body = StatusResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub async fn status(ctx: Arc<AppContext>, _admin: Identity) -> Response {
    let checks = Checks::run(&ctx).await;
    let body = StatusResponse {
        status: checks.overall(),
        node: ctx.node.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: ctx
            .started_at_utc
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        uptime: ctx.started_at.elapsed().as_secs(),
        services: checks.into_map(),
        server: ServerStatus {
            tls: ctx.config.server.tls,
            port: ctx.config.server.port,
            rate_limits_enabled: ctx.config.rate_limits.enabled,
            max_body_bytes: ctx.config.limits.max_body_bytes,
        },
    };
    warp::reply::json(&body).into_response()
}

/// Host usage and request statistics (admin).
#[utoipa::path(get, path = "/api/system/metrics", tag = "system",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Metrics", body = MetricsResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub async fn metrics(ctx: Arc<AppContext>, _admin: Identity) -> Result<Response, Rejection> {
    let models = ctx.models.list().await.map_err(reject)?;
    let total_inferences: u64 = models.iter().map(|m| m.inference_count).sum();
    let inference_seconds: f64 = models
        .iter()
        .map(|m| m.avg_response_time * m.inference_count as f64)
        .sum();
    let host = ctx.host.latest();
    let stats = ctx.metrics.request_stats();
    let body = MetricsResponse {
        performance: PerformanceMetrics {
            cpu_usage: host.cpu_percent,
            memory_usage: host.memory_percent,
            disk_usage: host.disk_percent,
        },
        requests: RequestMetrics {
            total_today: stats.total_today,
            total_since_start: stats.total,
            average_response_time: stats.average_response_time,
            error_rate: stats.error_rate,
        },
        models: ModelMetrics {
            total_inferences,
            average_inference_time: if total_inferences == 0 {
                0.0
            } else {
                inference_seconds / total_inferences as f64
            },
            active_models: models
                .iter()
                .filter(|m| m.loaded.is_some())
                .map(|m| m.model.manifest.name.clone())
                .collect(),
        },
    };
    Ok(warp::reply::json(&body).into_response())
}

/// Prometheus text exposition (not rate-limited, for scrapers).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "application/openmetrics-text; version=1.0.0")))]
pub async fn prometheus(ctx: Arc<AppContext>) -> Response {
    let store_up = matches!(
        tokio::time::timeout(CHECK_TIMEOUT, ctx.store.ping()).await,
        Ok(Ok(()))
    );
    let models = ctx
        .models
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| ModelSample {
            loaded: m.loaded.is_some(),
            inferences: m.inference_count,
            tokens_generated: m.tokens_generated,
            name: m.model.manifest.name,
        })
        .collect();
    let text = ctx.metrics.encode(&NodeSnapshot {
        active_sessions: ctx.identity.sessions().active_count(),
        active_conversations: ctx.chat.active_count(),
        uptime: ctx.started_at.elapsed(),
        store_up,
        store_client: ctx.store.client_stats(),
        models,
        cluster: cluster_sample(&ctx),
    });
    warp::reply::with_header(
        text,
        header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .into_response()
}
