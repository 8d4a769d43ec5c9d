//! `sting-cluster`: what a Sting node knows about the cluster it belongs to.
//!
//! Today a node runs as a cluster of one: this crate names the node ([`NodeId`]) and decides
//! placement ([`placement`]), a pure function from live members and a key to the owning node.
//! The ractor_cluster transport, membership and routing build on these.

pub mod placement;

use std::fmt;

/// The stable name of a node: the owner recorded in leases and shown in status pages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
