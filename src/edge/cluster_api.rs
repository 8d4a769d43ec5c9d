//! `/api/system/cluster*`: the cluster as this node sees it, and the operator's drain and leave
//! commands (admins only). A command for another node is forwarded to it over the cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sting_actors::remote::NodeCommand;
use sting_actors::session::Identity;
use sting_cluster::NodeId;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, ErrorEnvelope};
use super::json::json_body;
use super::{admin, reject, with_ctx};
use crate::app::AppContext;

/// How long a forwarded command may take to reach its node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let cluster = warp::path("api")
        .and(warp::path("system"))
        .and(warp::path("cluster"));
    let status = cluster
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .map(cluster_status);
    let drain = cluster
        .and(warp::path("drain"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and(json_body::<NodeRequest>(limit))
        .and_then(drain_node);
    let leave = cluster
        .and(warp::path("leave"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(admin())
        .and(json_body::<NodeRequest>(limit))
        .and_then(leave_cluster);
    status.or(drain).unify().or(leave).unify().boxed()
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMember {
    pub node: String,
    /// The address other nodes reach it on ("" for a node without cluster networking).
    pub address: String,
    /// The address of its HTTP API.
    pub http_address: String,
    /// `up`, `draining`, `leaving`, or `down` (not heard from within `cluster.down_after_ms`).
    pub state: String,
    /// The node answering this request.
    pub local: bool,
    /// Milliseconds since its last heartbeat arrived.
    pub last_heard_ms: u64,
    /// Conversation and jar shard actors it runs.
    pub conversations: u64,
    pub shards: u64,
    pub loaded_models: Vec<String>,
    pub cpu_percent: f32,
    pub version: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    /// The node answering.
    pub node: String,
    /// Whether cluster networking is on (false: a cluster of one).
    pub networked: bool,
    /// Members that own conversations and shards now (live and up), sorted.
    pub placement: Vec<String>,
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// The node to act on (default: the node answering).
    pub node: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResponse {
    pub success: bool,
    pub node: String,
    /// `draining` or `leaving`.
    pub state: String,
}

/// Members, their state and load, and the placement set.
#[utoipa::path(get, path = "/api/system/cluster", tag = "system",
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ClusterStatus),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub fn cluster_status(ctx: Arc<AppContext>, _admin: Identity) -> Response {
    let cluster = &ctx.cluster;
    let now = Instant::now();
    let members = cluster
        .members()
        .into_iter()
        .map(|member| {
            let beat = member.heartbeat;
            ClusterMember {
                node: beat.node.to_string(),
                address: beat.address,
                http_address: beat.report.http_address,
                state: if member.live {
                    beat.state.as_str().to_owned()
                } else {
                    "down".to_owned()
                },
                local: member.local,
                last_heard_ms: now.duration_since(member.last_heard).as_millis() as u64,
                conversations: beat.report.conversations,
                shards: beat.report.shards,
                loaded_models: beat.report.models,
                cpu_percent: beat.report.cpu_percent,
                version: beat.report.version,
            }
        })
        .collect();
    let placement = cluster.subscribe().borrow().placement.clone();
    warp::reply::json(&ClusterStatus {
        node: cluster.local().to_string(),
        networked: cluster.is_networked(),
        placement: placement.iter().map(ToString::to_string).collect(),
        members,
    })
    .into_response()
}

/// Hand a node's conversations and shards over to the others; it keeps serving requests (as a
/// router) but owns nothing until restarted.
#[utoipa::path(post, path = "/api/system/cluster/drain", tag = "system",
    request_body = NodeRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = CommandResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, description = "no such live member", body = ErrorEnvelope),
        (status = 503, description = "the node did not answer", body = ErrorEnvelope),
    ))]
pub async fn drain_node(
    ctx: Arc<AppContext>,
    _admin: Identity,
    body: NodeRequest,
) -> Result<Response, Rejection> {
    command(&ctx, body, NodeCommand::Drain).await
}

/// Drain a node, then stop it once its actors have moved (at most 30 s).
#[utoipa::path(post, path = "/api/system/cluster/leave", tag = "system",
    request_body = NodeRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = CommandResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, description = "no such live member", body = ErrorEnvelope),
        (status = 503, description = "the node did not answer", body = ErrorEnvelope),
    ))]
pub async fn leave_cluster(
    ctx: Arc<AppContext>,
    _admin: Identity,
    body: NodeRequest,
) -> Result<Response, Rejection> {
    command(&ctx, body, NodeCommand::Leave).await
}

async fn command(
    ctx: &Arc<AppContext>,
    body: NodeRequest,
    command: NodeCommand,
) -> Result<Response, Rejection> {
    let cluster = &ctx.cluster;
    let node = body
        .node
        .map(NodeId::new)
        .unwrap_or_else(|| cluster.local().clone());
    if node == *cluster.local() {
        ctx.run_command(command);
    } else {
        if !cluster.is_live(&node) {
            return Err(reject(ApiError::not_found("cluster member")));
        }
        sting_actors::remote::send_command(cluster, &node, command, COMMAND_TIMEOUT)
            .await
            .map_err(|err| reject(ApiError::unavailable(err)))?;
    }
    let state = match command {
        NodeCommand::Drain => "draining",
        NodeCommand::Leave => "leaving",
    };
    tracing::info!(%node, state, "cluster command");
    Ok(warp::reply::json(&CommandResponse {
        success: true,
        node: node.to_string(),
        state: state.to_owned(),
    })
    .into_response())
}
