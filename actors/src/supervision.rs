//! What the node's supervisors share: the set of their live children, counted into a gauge.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorRef, SpawnErr, SupervisionEvent};

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
