//! What nodes ask each other, and how a node answers.
//!
//! Every request is one [`Request`] value (bincode over the cluster transport). Calls answer
//! with the `Result` the local operation returned, its error in wire form. Casts (turn events,
//! hand-over requests, index refreshes) are one-way and may be lost with a connection; each
//! has a caller that copes (timeouts, membership changes, the store as the source of truth).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sting_cluster::transport::{decode, encode};
use sting_cluster::{Cluster, Handler, NodeId};
use sting_store::{ConversationId, DocumentId, JarId, UserId};
use uuid::Uuid;

use crate::conversation::{self, ConversationRegistry, TurnEvent};
use crate::jar_shard::{ShardQuery, ShardRegistry};
use crate::ownership;
use crate::session::SessionRegistry;

/// Node-wide operations an operator asks of a node through any other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCommand {
    /// Hand every conversation and shard over, then keep serving as a router.
    Drain,
    /// Drain, then stop the process.
    Leave,
}

/// What one node asks of another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Call: run a turn on the conversation's owner; the answer is its first event, the rest
    /// follow as [`Request::TurnEvent`] casts to `reply_to`.
    Turn(conversation::remote::TurnStart),
    /// Cast, owner → edge: the next event of a turn.
    TurnEvent { request_id: Uuid, event: TurnEvent },
    /// Cast, edge → owner: the client stopped the turn.
    TurnCancel(Uuid),
    /// Call: a conversation's token usage.
    Usage {
        user: UserId,
        conversation: ConversationId,
    },
    /// Call: prune a conversation now.
    Prune {
        user: UserId,
        conversation: ConversationId,
    },
    /// Cast: the sender claims this lease; let go if placement agrees.
    Passivate {
        lease_key: String,
        actor_name: String,
    },
    /// Call: search one shard of a jar.
    Search {
        jar: JarId,
        shard: u32,
        query: ShardQuery,
    },
    /// Cast: a document's chunks changed in the store.
    DocumentChanged { jar: JarId, document: DocumentId },
    /// Cast: a jar was deleted; drop its shards and their files.
    JarDeleted(JarId),
    /// Call: a user's account or sessions changed; forget the sessions held of them.
    UserChanged(UserId),
    /// Call: an operator command for this node.
    Command(NodeCommand),
}

/// Runs `command` on `node`, another member; its failure as text.
pub async fn send_command(
    cluster: &Cluster,
    node: &NodeId,
    command: NodeCommand,
    timeout: Duration,
) -> Result<(), String> {
    cluster
        .call::<_, Result<(), String>>(node, &Request::Command(command), timeout)
        .await
        .map_err(|err| err.to_string())?
}

/// Casts `request` to every other live member (best effort: a member that misses it catches up
/// by its own means, e.g. sessions revalidating, shards checking the store).
pub(crate) fn cast_to_peers(cluster: &Cluster, request: &Request) {
    for member in cluster.members() {
        if member.local || !member.live {
            continue;
        }
        if let Err(err) = cluster.cast(&member.heartbeat.node, request) {
            tracing::debug!(node = %member.heartbeat.node, ?request, error = %err, "cast not delivered");
        }
    }
}

/// Asks every other live member to forget what it holds of `user`'s sessions, and waits (at
/// most `timeout`) until each has: so that a revocation made through one node holds on the next
/// request through any other. A member that does not answer in time is logged; it catches up
/// when its sessions revalidate.
pub(crate) async fn user_changed_on_peers(cluster: &Cluster, user: UserId, timeout: Duration) {
    let request = Request::UserChanged(user);
    let calls = cluster
        .members()
        .into_iter()
        .filter(|member| !member.local && member.live)
        .map(|member| {
            let request = &request;
            async move {
                let node = member.heartbeat.node;
                let answer = cluster
                    .call::<_, Result<(), String>>(&node, request, timeout)
                    .await;
                if !matches!(answer, Ok(Ok(()))) {
                    tracing::warn!(%node, %user, ?answer, "a member did not confirm an account change");
                }
            }
        });
    futures_util::future::join_all(calls).await;
}

/// Runs operator commands on this node (the binary decides what draining and leaving mean).
pub type CommandRunner = Arc<dyn Fn(NodeCommand) -> Result<(), String> + Send + Sync>;

/// Answers other nodes' requests with this node's registries.
pub struct NodeHandler {
    pub conversations: ConversationRegistry,
    pub shards: ShardRegistry,
    pub sessions: SessionRegistry,
    pub commands: CommandRunner,
}

impl Handler for NodeHandler {
    fn cast(&self, payload: Vec<u8>) {
        let request = match decode::<Request>(&payload) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(error = %err, "undecodable cluster request dropped");
                return;
            }
        };
        match request {
            Request::TurnEvent { request_id, event } => {
                self.conversations.deliver(request_id, event)
            }
            Request::TurnCancel(request_id) => self.conversations.cancel_served(request_id),
            Request::Passivate {
                lease_key,
                actor_name,
            } => ownership::passivate(self.conversations.cluster(), &lease_key, &actor_name),
            Request::DocumentChanged { jar, document } => self.shards.refresh_local(jar, document),
            Request::JarDeleted(jar) => self.shards.destroy_local(jar),
            other => tracing::warn!(request = ?other, "a call arrived as a cast; dropped"),
        }
    }

    fn call(&self, payload: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
        let conversations = self.conversations.clone();
        let shards = self.shards.clone();
        let commands = self.commands.clone();
        let sessions = self.sessions.clone();
        Box::pin(async move {
            let request = match decode::<Request>(&payload) {
                Ok(request) => request,
                Err(err) => return encode(&Err::<(), _>(err.to_string())),
            };
            match request {
                Request::Turn(start) => encode(&conversations.serve_turn(start).await),
                Request::Usage { user, conversation } => encode(
                    &conversations
                        .usage_local(user, conversation)
                        .await
                        .map_err(conversation::remote::WireError::from),
                ),
                Request::Prune { user, conversation } => encode(
                    &conversations
                        .prune_local(user, conversation)
                        .await
                        .map_err(conversation::remote::WireError::from),
                ),
                Request::Search { jar, shard, query } => encode(
                    &shards
                        .search_local(jar, shard, query)
                        .await
                        .map_err(|err| err.to_string()),
                ),
                Request::Command(command) => encode(&commands(command)),
                Request::UserChanged(user) => {
                    sessions.user_changed_local(user).await;
                    encode(&Ok::<(), String>(()))
                }
                other => {
                    tracing::warn!(request = ?other, "a cast arrived as a call");
                    encode(&Err::<(), _>("not a call".to_owned()))
                }
            }
        })
    }
}
