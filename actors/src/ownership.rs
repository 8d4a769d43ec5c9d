//! Single ownership across the cluster.
//!
//! A conversation or shard is owned by the member that placement names, and the owner's actor
//! holds the key's lease in the store. Before activating an actor, a node *claims* the lease:
//! free or expired leases are taken; a lease held by a member the cluster declared down is taken
//! over at once (the next epoch fences the old holder's writes, so this is safe even when the
//! old holder is only frozen); a lease held by a live member is handed over — the holder is
//! asked to passivate its actor, which releases the lease; a lease held by a node the cluster
//! never heard of is left to expire.

use std::time::{Duration, Instant};

use sting_cluster::{Cluster, NodeId};
use sting_store::{Store, StoreError, Timestamp};

use crate::remote::Request;

/// How long a claim waits for a live holder to let go.
const HANDOVER_WAIT: Duration = Duration::from_secs(15);
/// How often the holder is asked again, and the store polled.
const ASK_AGAIN: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(25);

/// What an actor's lease is and what its actor is called (on every node alike).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owned<'a> {
    pub lease_key: &'a str,
    pub actor_name: &'a str,
}

/// Makes sure this node holds the lease of `owned`, waiting for a live holder to hand it over.
pub(crate) async fn claim(
    store: &dyn Store,
    cluster: &Cluster,
    owned: Owned<'_>,
    ttl: Duration,
) -> Result<(), StoreError> {
    let node = cluster.local().as_str();
    let ttl = ttl.as_millis().min(i64::MAX as u128) as i64;
    let deadline = Instant::now() + HANDOVER_WAIT;
    let mut asked: Option<Instant> = None;
    loop {
        let err = match store
            .acquire_lease(owned.lease_key, node, ttl, Timestamp::now())
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let StoreError::LeaseHeld { owner, .. } = &err else {
            return Err(err);
        };
        let holder = NodeId::new(owner.clone());
        if cluster.is_down(&holder) {
            if let Some(observed) = store.lease(owned.lease_key).await? {
                if observed.owner == holder.as_str() {
                    match store
                        .take_over_lease(&observed, node, ttl, Timestamp::now())
                        .await
                    {
                        Ok(lease) => {
                            tracing::info!(key = owned.lease_key, from = %holder, epoch = lease.epoch, "took over the lease of a node declared down");
                            return Ok(());
                        }
                        Err(StoreError::StaleLease { .. }) => {}
                        Err(other) => return Err(other),
                    }
                }
            }
            continue;
        }
        // A holder the cluster has never heard of (a standalone process on the same store,
        // or a node from before a full restart) keeps its lease until it expires.
        if !cluster.is_live(&holder) || Instant::now() >= deadline {
            return Err(err);
        }
        if asked.is_none_or(|at| at.elapsed() >= ASK_AGAIN) {
            let request = Request::Passivate {
                lease_key: owned.lease_key.to_owned(),
                actor_name: owned.actor_name.to_owned(),
            };
            if let Err(err) = cluster.cast(&holder, &request) {
                tracing::debug!(%holder, error = %err, "could not ask the lease holder to hand over");
            }
            asked = Some(Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether placement still names this node the owner of `lease_key`.
pub(crate) fn is_owner(cluster: &Cluster, lease_key: &str) -> bool {
    cluster.owner(lease_key.as_bytes()) == *cluster.local()
}

/// Stops the local actor named `actor_name` when this node no longer owns `lease_key` (its
/// `post_stop` releases the lease). A node that still owns it by its own view keeps it: views
/// converge within a heartbeat, and the asking node retries.
pub(crate) fn passivate(cluster: &Cluster, lease_key: &str, actor_name: &str) {
    if is_owner(cluster, lease_key) {
        tracing::debug!(
            key = lease_key,
            "asked to hand over a lease placement still gives this node"
        );
        return;
    }
    if let Some(actor) = ractor::registry::where_is(actor_name) {
        tracing::debug!(key = lease_key, "handing over to the new owner");
        actor.stop(Some("ownership moved".into()));
    }
}
