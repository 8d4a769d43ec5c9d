//! Node-to-node messages over ractor_cluster.
//!
//! Every node runs one [`Endpoint`] actor, joined to the process group `sting.node.<name>` (so
//! peers find it by node name) and to `sting.nodes` (so heartbeats reach every peer). Its
//! messages carry opaque bytes: heartbeats are decoded here, everything else is handed to the
//! node's [`Handler`] (the actors layer decides what requests exist). Payloads are bincode;
//! a payload that does not decode is logged and dropped, never a panic.
//!
//! ractor_cluster is a best-effort transport: a cast may be lost when a connection drops, and a
//! call may time out. Callers use timeouts and idempotent requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::membership::{Heartbeat, Membership};
use crate::{ClusterError, NodeId};

/// Most bytes one decoded message may claim (ractor_cluster caps frames at 16 MiB too).
const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// The process group every node's endpoint joins.
pub(crate) const NODES_GROUP: &str = "sting.nodes";

/// The process group of one node's endpoint.
pub(crate) fn node_group(node: &NodeId) -> String {
    format!("sting.node.{node}")
}

/// What the application does with requests from other nodes.
pub trait Handler: Send + Sync + 'static {
    /// A one-way message. Must not block: spawn what takes time.
    fn cast(&self, payload: Vec<u8>);
    /// A request; its answer goes back to the caller.
    fn call(&self, payload: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;
}

/// Messages between endpoints. Only byte vectors cross the wire.
#[derive(RactorClusterMessage)]
pub enum EndpointMsg {
    Heartbeat(Vec<u8>),
    Cast(Vec<u8>),
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// What the endpoint shares with the node's cluster handle.
pub(crate) struct EndpointShared {
    pub membership: Arc<Mutex<Membership>>,
    pub handler: OnceLock<Arc<dyn Handler>>,
    /// Called when a heartbeat changed the membership (publishes the new view).
    pub on_change: Box<dyn Fn(crate::membership::Changes) + Send + Sync>,
}

pub(crate) struct Endpoint;

impl Actor for Endpoint {
    type Msg = EndpointMsg;
    type State = Arc<EndpointShared>;
    type Arguments = Arc<EndpointShared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<EndpointMsg>,
        shared: Arc<EndpointShared>,
    ) -> Result<Arc<EndpointShared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<EndpointMsg>,
        message: EndpointMsg,
        shared: &mut Arc<EndpointShared>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EndpointMsg::Heartbeat(bytes) => match decode::<Heartbeat>(&bytes) {
                Ok(heartbeat) => {
                    let changes = shared
                        .membership
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .heard(heartbeat, std::time::Instant::now());
                    (shared.on_change)(changes);
                }
                Err(err) => tracing::warn!(error = %err, "undecodable heartbeat dropped"),
            },
            EndpointMsg::Cast(bytes) => match shared.handler.get() {
                Some(handler) => handler.cast(bytes),
                None => tracing::debug!("cluster message before the node was ready: dropped"),
            },
            EndpointMsg::Call(bytes, reply) => {
                let handler = shared.handler.get().cloned();
                tokio::spawn(async move {
                    let answer: Result<Vec<u8>, String> = match handler {
                        Some(handler) => Ok(handler.call(bytes).await),
                        None => Err("the node is starting".into()),
                    };
                    let _ = reply.send(encode(&answer));
                });
            }
        }
        Ok(())
    }
}

/// Encodes a wire value (bincode, standard configuration).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("in-memory bincode encoding of plain data cannot fail")
}

/// Decodes a wire value; bad bytes are an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClusterError> {
    bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard().with_limit::<MAX_DECODED_BYTES>(),
    )
    .map(|(value, _)| value)
    .map_err(|err| ClusterError::Decode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberState, NodeReport};

    #[test]
    fn heartbeats_round_trip_and_bad_bytes_are_errors() {
        let beat = Heartbeat {
            node: NodeId::new("a"),
            address: "127.0.0.1:5051".into(),
            incarnation: 42,
            state: MemberState::Draining,
            report: NodeReport {
                models: vec!["fixture-chat".into()],
                conversations: 3,
                ..NodeReport::default()
            },
            peers: vec!["127.0.0.1:5052".into()],
        };
        assert_eq!(decode::<Heartbeat>(&encode(&beat)).unwrap(), beat);
        assert!(decode::<Heartbeat>(&[0xff; 3]).is_err());
        // A length prefix claiming more than the cap is refused before allocating.
        let mut huge = vec![0xfc];
        huge.extend_from_slice(&(u32::MAX).to_le_bytes());
        assert!(decode::<Vec<u8>>(&huge).is_err());
    }
}
