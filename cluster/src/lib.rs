//! `sting-cluster`: how a Sting node takes part in a cluster.
//!
//! - [`NodeId`] names a node; [`placement`] decides which live member owns a key (rendezvous
//!   hashing, a pure function every node computes alike).
//! - [`node::Cluster`] runs the node's ractor_cluster `NodeServer`, its heartbeats and failure
//!   detection ([`membership`]), and sends requests to other nodes ([`transport`]). A node
//!   without cluster networking is a cluster of one with the same handle.

pub mod membership;
pub mod node;
pub mod placement;
mod tls;
pub mod transport;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use membership::{Member, MemberState, NodeReport};
pub use node::{Cluster, ClusterConfig, NetworkConfig, TlsFiles, View};
pub use transport::Handler;

/// The stable name of a node: the owner recorded in leases and shown in status pages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(String);

impl NodeId {
    /// Wraps a node name. Names are compared byte-wise; pick them unique within a cluster.
    pub fn new(name: impl Into<String>) -> NodeId {
        NodeId(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Failures of cluster operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("cluster node could not start: {0}")]
    Start(String),
    /// No connection to the node (down, not yet joined, or left).
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    /// The other node failed to handle the request.
    #[error("remote node: {0}")]
    Remote(String),
    #[error("undecodable cluster message: {0}")]
    Decode(String),
}
