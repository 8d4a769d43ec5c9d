//! Membership: which nodes are in the cluster and which of them may own actors.
//!
//! Every node sends a [`Heartbeat`] to every peer it is connected to once per heartbeat
//! interval. A peer is *live* while its heartbeats keep arriving; it is declared down when none
//! arrived for `down_after`, or at once when its connection closes (a `kill -9` is seen that
//! way). A frozen or partitioned peer keeps its connection but stops sending, so it is caught by
//! the timeout. Every node computes the same view from the same heartbeats, so views agree once
//! heartbeats have flowed for one interval.
//!
//! The members that own actors (the *placement set*) are the live ones in state
//! [`MemberState::Up`]: a draining node is still a member (it serves and routes requests) but
//! owns nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A node's own account of its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Serving and owning actors.
    Up,
    /// Serving, handing its actors over, owning nothing new (`sting cluster drain`).
    Draining,
    /// Drained and about to stop (`sting cluster leave`).
    Leaving,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Draining => "draining",
            MemberState::Leaving => "leaving",
        }
    }
}

/// What a node reports about its load, for operators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Where the node's HTTP API listens (as configured).
    pub http_address: String,
    /// Conversation actors live on the node.
    pub conversations: u64,
    /// Jar shard actors live on the node.
    pub shards: u64,
    /// Models loaded in the node's pool.
    pub models: Vec<String>,
    /// CPU use of the machine, in percent.
    pub cpu_percent: f32,
    pub version: String,
}

/// What a node says about itself once per heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    /// The cluster address peers reach it on (`host:port`).
    pub address: String,
    /// Milliseconds since the epoch when the process started: a restarted node is a new
    /// incarnation.
    pub incarnation: u64,
    pub state: MemberState,
    pub report: NodeReport,
    /// The addresses of the peers it hears from: how a node learns of members it has no
    /// connection to yet, and dials them itself (with its own TLS, never in the clear).
    pub peers: Vec<String>,
}

/// One member as this node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub heartbeat: Heartbeat,
    /// This node itself.
    pub local: bool,
    /// Heard from within `down_after` and connected.
    pub live: bool,
    /// When its last heartbeat arrived (for the local node: now).
    pub last_heard: Instant,
}

/// The membership state machine of one node: fed heartbeats, disconnections and the clock.
#[derive(Debug)]
pub struct Membership {
    local: Heartbeat,
    peers: BTreeMap<NodeId, Member>,
    down_after: Duration,
}

/// What changed when the membership was updated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joined: Vec<NodeId>,
    pub down: Vec<NodeId>,
    /// The placement set changed (a member joined, went down, or changed state).
    pub placement: bool,
}

impl Membership {
    pub fn new(local: Heartbeat, down_after: Duration) -> Membership {
        Membership {
            local,
            peers: BTreeMap::new(),
            down_after,
        }
    }

    pub fn local(&self) -> &Heartbeat {
        &self.local
    }

    /// Changes this node's state or report (sent with the next heartbeat).
    pub fn update_local(&mut self, update: impl FnOnce(&mut Heartbeat)) -> Changes {
        let before = self.placement_set();
        update(&mut self.local);
        Changes {
            placement: before != self.placement_set(),
            ..Changes::default()
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heard(&mut self, heartbeat: Heartbeat, now: Instant) -> Changes {
        if heartbeat.node == self.local.node {
            return Changes::default();
        }
        let before = self.placement_set();
        let mut changes = Changes::default();
        let node = heartbeat.node.clone();
        match self.peers.get_mut(&node) {
            Some(member) => {
                if !member.live || member.heartbeat.incarnation != heartbeat.incarnation {
                    changes.joined.push(node);
                }
                member.heartbeat = heartbeat;
                member.live = true;
                member.last_heard = now;
            }
            None => {
                changes.joined.push(node.clone());
                self.peers.insert(
                    node,
                    Member {
                        heartbeat,
                        local: false,
                        live: true,
                        last_heard: now,
                    },
                );
            }
        }
        changes.placement = before != self.placement_set();
        changes
    }

    /// The connection to `node` closed: it is down until it is heard from again.
    pub fn disconnected(&mut self, node: &NodeId) -> Changes {
        let before = self.placement_set();
        let mut changes = Changes::default();
        if let Some(member) = self.peers.get_mut(node) {
            if member.live {
                member.live = false;
                changes.down.push(node.clone());
            }
        }
        changes.placement = before != self.placement_set();
        changes
    }

    /// Declares down every peer not heard from for `down_after` before `now`.
    pub fn expire(&mut self, now: Instant) -> Changes {
        let before = self.placement_set();
        let mut changes = Changes::default();
        for (node, member) in &mut self.peers {
            if member.live && now.duration_since(member.last_heard) >= self.down_after {
                member.live = false;
                changes.down.push(node.clone());
            }
        }
        changes.placement = before != self.placement_set();
        changes
    }

    /// Whether `node` is this node or a live peer.
    pub fn is_live(&self, node: &NodeId) -> bool {
        *node == self.local.node || self.peers.get(node).is_some_and(|m| m.live)
    }

    /// Whether `node` is a peer that was heard from and is not live now.
    pub fn is_down(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|m| !m.live)
    }

    /// The members that own actors: live and up, sorted. When no member is up (every node is
    /// draining), this node alone, so that requests are still served.
    pub fn placement_set(&self) -> Vec<NodeId> {
        let mut set: Vec<NodeId> = self
            .peers
            .values()
            .filter(|m| m.live && m.heartbeat.state == MemberState::Up)
            .map(|m| m.heartbeat.node.clone())
            .collect();
        if self.local.state == MemberState::Up {
            set.push(self.local.node.clone());
        }
        if set.is_empty() {
            set.push(self.local.node.clone());
        }
        set.sort();
        set
    }

    /// Every member ever heard from, this node first, then peers by name.
    pub fn members(&self, now: Instant) -> Vec<Member> {
        let local = Member {
            heartbeat: self.local.clone(),
            local: true,
            live: true,
            last_heard: now,
        };
        std::iter::once(local)
            .chain(self.peers.values().cloned())
            .collect()
    }

    /// Cluster addresses of peers that are not live (to reconnect to).
    pub fn unreachable_addresses(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|m| !m.live)
            .map(|m| m.heartbeat.address.clone())
            .collect()
    }

    /// The addresses of live peers (what this node's heartbeat tells its peers).
    pub fn live_addresses(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|m| m.live)
            .map(|m| m.heartbeat.address.clone())
            .collect()
    }

    /// Addresses live peers hear from that this node does not: members to dial.
    pub fn gossiped_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .peers
            .values()
            .filter(|m| m.live)
            .flat_map(|m| m.heartbeat.peers.iter())
            .filter(|address| **address != self.local.address && !self.has_live_address(address))
            .cloned()
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Whether a live peer advertises `address`.
    pub fn has_live_address(&self, address: &str) -> bool {
        self.peers
            .values()
            .any(|m| m.live && m.heartbeat.address == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, state: MemberState) -> Heartbeat {
        Heartbeat {
            node: NodeId::new(node),
            address: format!("{node}:4000"),
            incarnation: 1,
            state,
            report: NodeReport::default(),
            peers: Vec::new(),
        }
    }

    #[test]
    fn members_heard_of_through_peers_are_to_be_dialled() {
        let now = Instant::now();
        let mut membership = Membership::new(beat("a", MemberState::Up), Duration::from_secs(5));
        let mut b = beat("b", MemberState::Up);
        b.peers = vec!["a:4000".into(), "c:4000".into()];
        membership.heard(b, now);
        assert_eq!(membership.gossiped_addresses(), ["c:4000"]);
        membership.heard(beat("c", MemberState::Up), now);
        assert!(membership.gossiped_addresses().is_empty());
        assert_eq!(membership.live_addresses().len(), 2);
    }

    fn names(set: &[NodeId]) -> Vec<&str> {
        set.iter().map(NodeId::as_str).collect()
    }

    #[test]
    fn peers_join_on_heartbeat_and_go_down_after_silence() {
        let start = Instant::now();
        let mut m = Membership::new(beat("a", MemberState::Up), Duration::from_secs(5));
        let joined = m.heard(beat("b", MemberState::Up), start);
        assert_eq!(joined.joined, vec![NodeId::new("b")]);
        assert!(joined.placement);
        assert_eq!(names(&m.placement_set()), ["a", "b"]);

        assert_eq!(m.expire(start + Duration::from_secs(4)), Changes::default());
        let down = m.expire(start + Duration::from_secs(5));
        assert_eq!(down.down, vec![NodeId::new("b")]);
        assert!(down.placement);
        assert_eq!(names(&m.placement_set()), ["a"]);
        assert_eq!(m.unreachable_addresses(), ["b:4000"]);

        // Heard again (a resumed process): back in.
        let back = m.heard(beat("b", MemberState::Up), start + Duration::from_secs(9));
        assert_eq!(back.joined, vec![NodeId::new("b")]);
        assert!(m.is_live(&NodeId::new("b")));
    }

    #[test]
    fn a_closed_connection_is_down_at_once() {
        let now = Instant::now();
        let mut m = Membership::new(beat("a", MemberState::Up), Duration::from_secs(5));
        m.heard(beat("b", MemberState::Up), now);
        let changes = m.disconnected(&NodeId::new("b"));
        assert_eq!(changes.down, vec![NodeId::new("b")]);
        assert!(!m.is_live(&NodeId::new("b")));
        assert!(m.is_down(&NodeId::new("b")));
        assert!(!m.is_down(&NodeId::new("never-heard-of")));
        assert!(m.disconnected(&NodeId::new("b")).down.is_empty());
    }

    #[test]
    fn draining_members_own_nothing_but_stay_members() {
        let now = Instant::now();
        let mut m = Membership::new(beat("a", MemberState::Up), Duration::from_secs(5));
        m.heard(beat("b", MemberState::Up), now);
        let changes = m.heard(beat("b", MemberState::Draining), now);
        assert!(changes.placement);
        assert!(changes.joined.is_empty());
        assert_eq!(names(&m.placement_set()), ["a"]);
        assert!(m.is_live(&NodeId::new("b")));

        let changes = m.update_local(|local| local.state = MemberState::Draining);
        // Nobody is up: the node still serves alone, so placement is unchanged.
        assert!(!changes.placement);
        assert_eq!(names(&m.placement_set()), ["a"]);
        assert_eq!(m.members(now).len(), 2);
    }

    #[test]
    fn own_heartbeat_is_ignored() {
        let mut m = Membership::new(beat("a", MemberState::Up), Duration::from_secs(5));
        assert_eq!(
            m.heard(beat("a", MemberState::Draining), Instant::now()),
            Changes::default()
        );
        assert_eq!(m.members(Instant::now()).len(), 1);
    }
}
