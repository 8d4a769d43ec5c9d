//! The node's supervisors and what their lease-holding children share. Sessions,
//! conversations and jar shards are each supervised by one [`ChildSupervisor`]: it spawns a
//! child under its unique name on first need (or hands out the live one), links it to itself and
//! counts the live ones into a gauge. Children renew their leases with [`renew_if_due`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use sting_store::{Lease, Store, StoreError, Timestamp};

/// Supervisor of the children of kind `A` (a unit actor type such as the session actor).
pub(crate) struct ChildSupervisor<A> {
    /// Names the kind in logs ("session", "conversation", ...).
    kind: &'static str,
    child: PhantomData<fn() -> A>,
}

/// What a [`ChildSupervisor`] is asked.
pub(crate) enum SupervisorMsg<A: Actor> {
    /// The live child named `name`, spawned with `args` if none.
    Activate {
        name: String,
        args: A::Arguments,
        reply: RpcReplyPort<Result<ActorRef<A::Msg>, SpawnErr>>,
    },
    /// Sends the message `make` builds to every live child (e.g. "check your ownership"), then
    /// answers `sent`, if given.
    Broadcast(Box<dyn Fn() -> A::Msg + Send>, Option<RpcReplyPort<()>>),
}

impl<A: Actor> ractor::Message for SupervisorMsg<A> {}

impl<A: Actor + Default> ChildSupervisor<A> {
    /// Starts the supervisor; `live` is the gauge of its live children.
    pub(crate) async fn start(
        kind: &'static str,
        live: Arc<AtomicU64>,
    ) -> Result<(ActorRef<SupervisorMsg<A>>, tokio::task::JoinHandle<()>), SpawnErr> {
        let supervisor = ChildSupervisor {
            kind,
            child: PhantomData,
        };
        Actor::spawn(None, supervisor, live).await
    }

    /// Sends the message `make` builds to every live child.
    pub(crate) fn broadcast(
        supervisor: &ActorRef<SupervisorMsg<A>>,
        make: impl Fn() -> A::Msg + Send + 'static,
    ) {
        let _ = supervisor.cast(SupervisorMsg::Broadcast(Box::new(make), None));
    }

    /// Sends the message `make` builds to every live child, and returns once each has it
    /// queued: whatever is asked of a child afterwards, it handles after that message.
    pub(crate) async fn broadcast_queued(
        supervisor: &ActorRef<SupervisorMsg<A>>,
        make: impl Fn() -> A::Msg + Send + 'static,
        timeout: Duration,
    ) {
        let make = Box::new(make);
        let _ = supervisor
            .call(
                |sent| SupervisorMsg::Broadcast(make, Some(sent)),
                Some(timeout),
            )
            .await;
    }

    /// The live child named `name`, or a new one started with `args`; failures as text.
    pub(crate) async fn activate(
        supervisor: &ActorRef<SupervisorMsg<A>>,
        name: String,
        args: A::Arguments,
        timeout: Duration,
    ) -> Result<ActorRef<A::Msg>, String> {
        if let Some(live) = ActorRef::<A::Msg>::where_is(name.clone()) {
            return Ok(live);
        }
        supervisor
            .call(
                |reply| SupervisorMsg::Activate { name, args, reply },
                Some(timeout),
            )
            .await
            .map_err(|err| err.to_string())?
            .success_or("supervisor timed out".to_string())?
            .map_err(|err| err.to_string())
    }
}

impl<A: Actor + Default> Actor for ChildSupervisor<A> {
    type Msg = SupervisorMsg<A>;
    type State = Children;
    type Arguments = Arc<AtomicU64>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        live: Arc<AtomicU64>,
    ) -> Result<Children, ActorProcessingErr> {
        Ok(Children::new(live))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg<A>,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Activate { name, args, reply } => {
                let child = children
                    .activate(name, A::default(), args, myself.get_cell())
                    .await;
                let _ = reply.send(child);
            }
            SupervisorMsg::Broadcast(make, sent) => {
                for child in children.cells.values() {
                    let _ = ActorRef::<A::Msg>::from(child.clone()).cast(make());
                }
                if let Some(sent) = sent {
                    let _ = sent.send(());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        children.on_event(&event, self.kind);
        Ok(())
    }
}

/// The live children of one supervisor; `live` is read by health checks and metrics.
pub(crate) struct Children {
    cells: HashMap<ActorId, ActorCell>,
    live: Arc<AtomicU64>,
}

impl Children {
    fn new(live: Arc<AtomicU64>) -> Children {
        Children {
            cells: HashMap::new(),
            live,
        }
    }

    /// The live child registered as `name`, or a new one spawned linked to `supervisor`
    /// (another request may have activated it meanwhile: names are unique per node).
    async fn activate<A: Actor>(
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
        self.cells.insert(child.get_id(), child.get_cell());
        self.publish();
        Ok(child)
    }

    /// Forgets the child that `event` reports terminated or failed (failures are logged as
    /// failures of a `kind` actor); other events change nothing.
    fn on_event(&mut self, event: &SupervisionEvent, kind: &str) {
        let gone = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => cell.get_id(),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(actor = %cell.get_id(), error = %err, "{kind} actor failed");
                cell.get_id()
            }
            _ => return,
        };
        if self.cells.remove(&gone).is_some() {
            self.publish();
        }
    }

    fn publish(&self) {
        self.live.store(self.cells.len() as u64, Ordering::Relaxed);
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
