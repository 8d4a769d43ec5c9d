//! What the node's supervisors and their lease-holding children share: the set of live
//! children, counted into a gauge, and the renewal of a child's lease.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorRef, SpawnErr, SupervisionEvent};
use sting_store::{Lease, Store, StoreError, Timestamp};

/// The live children of one supervisor; `live` is read by health checks and metrics.
pub(crate) struct Children {
    ids: HashSet<ActorId>,
    live: Arc<AtomicU64>,
}

impl Children {
    pub(crate) fn new(live: Arc<AtomicU64>) -> Children {
        Children {
            ids: HashSet::new(),
            live,
        }
    }

    /// The live child registered as `name`, or a new one spawned linked to `supervisor`
    /// (another request may have activated it meanwhile: names are unique per node).
    pub(crate) async fn activate<A: Actor>(
        &mut self,
        name: String,
        actor: A,
        args: A::Arguments,
        supervisor: ActorCell,
    ) -> Result<ActorRef<A::Msg>, SpawnErr> {
        if let Some(existing) = ActorRef::<A::Msg>::where_is(name.clone()) {
            return Ok(existing);
        }
        let (child, _) = Actor::spawn_linked(Some(name), actor, args, supervisor).await?;
        self.ids.insert(child.get_id());
        self.publish();
        Ok(child)
    }

    /// Forgets the child that `event` reports terminated or failed (failures are logged as
    /// failures of a `kind` actor); other events change nothing.
    pub(crate) fn on_event(&mut self, event: &SupervisionEvent, kind: &str) {
        let gone = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => cell.get_id(),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(actor = %cell.get_id(), error = %err, "{kind} actor failed");
                cell.get_id()
            }
            _ => return,
        };
        if self.ids.remove(&gone) {
            self.publish();
        }
    }

    fn publish(&self) {
        self.live.store(self.ids.len() as u64, Ordering::Relaxed);
    }
}

/// Renews `lease` for `ttl` once less than two thirds of it is left (so a holder that ticks every
/// third of the ttl never lets it lapse); a lease that moved to another holder is an error.
pub(crate) async fn renew_if_due(
    store: &dyn Store,
    lease: &mut Lease,
    ttl: Duration,
) -> Result<(), StoreError> {
    let ttl = ttl.as_millis().min(i64::MAX as u128) as i64;
    let now = Timestamp::now();
    if lease.expires_at.0 - now.0 > ttl * 2 / 3 {
        return Ok(());
    }
    *lease = store.renew_lease(lease, ttl, now).await?;
    Ok(())
}
