//! Placement by rendezvous (highest-random-weight) hashing.
//!
//! Every node computes the owner of a key from the same member list and gets the same answer,
//! with no coordination. When a member leaves, only the keys it owned move; when one joins, it
//! takes about `1/n` of the keys, from every other member evenly.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::NodeId;

/// The member that owns `key`, or `None` when there are no members.
///
/// Stable across processes and versions: the weight is xxh3 of the key seeded by the hash of
/// the member's name (never `std`'s randomly keyed hasher).
pub fn owner<'a>(key: &[u8], members: &'a [NodeId]) -> Option<&'a NodeId> {
    members
        .iter()
        .max_by_key(|member| (weight(key, member), member.as_str()))
}

fn weight(key: &[u8], member: &NodeId) -> u64 {
    xxh3_64_with_seed(key, stable_hash(member.as_str().as_bytes()))
}

/// A hash of `bytes` that is the same in every process and version (xxh3, seed 0), for
/// anything nodes must agree on without talking (placement, shard assignment).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|name| NodeId::new(*name)).collect()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..3_000).map(|i| format!("conversation-{i}"))
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner(b"k", &[]), None);
    }

    #[test]
    fn owner_does_not_depend_on_member_order() {
        let forward = nodes(&["a", "b", "c", "d"]);
        let mut backward = forward.clone();
        backward.reverse();
        for key in keys() {
            assert_eq!(
                owner(key.as_bytes(), &forward),
                owner(key.as_bytes(), &backward)
            );
        }
    }

    #[test]
    fn only_the_leavers_keys_move() {
        let before = nodes(&["a", "b", "c", "d"]);
        let after = nodes(&["a", "b", "d"]);
        for key in keys() {
            let old = owner(key.as_bytes(), &before).unwrap();
            let new = owner(key.as_bytes(), &after).unwrap();
            if old.as_str() != "c" {
                assert_eq!(old, new, "{key} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let members = nodes(&["a", "b", "c"]);
        let mut counts = std::collections::HashMap::new();
        for key in keys() {
            *counts
                .entry(owner(key.as_bytes(), &members).unwrap())
                .or_insert(0) += 1;
        }
        for (member, count) in counts {
            assert!(
                (800..=1_200).contains(&count),
                "{member} owns {count} of 3000"
            );
        }
    }
}
