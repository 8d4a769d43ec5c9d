//! Session actors: one [`SessionActor`] per active login session.
//!
//! The actor is the node's cached view of a session and its user: the edge asks it to
//! authenticate each request instead of reading the store. It owns the session's sliding
//! expiry (written back to the store at most once per `renew_interval`), re-reads the store
//! every `revalidate_interval` so that a revocation or deactivation made elsewhere takes effect,
//! and passivates (stops) after `idle_timeout` without requests. The store stays the source of
//! truth: a session actor can die at any time and is rebuilt on the next request.
//!
//! Supervision: a single `ChildSupervisor<SessionActor>` spawns every session actor linked to itself and
//! registered under a name derived from the token hash. A failed session actor is logged and
//! forgotten; nothing else is restarted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};
use sting_store::{Role, Session, Store, StoreError, Timestamp, User, UserId};

use crate::remote::user_changed_on_peers;
use crate::supervision::{ChildSupervisor, SupervisorMsg};
use sting_cluster::Cluster;
use uuid::Uuid;

/// How long an edge request waits for a session actor before failing.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an account change waits for each other node to confirm it (a frozen node must not
/// hold a logout up for long).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries to reach a live session actor before giving up (see `authenticate`).
const ACTIVATION_ATTEMPTS: usize = 5;

/// Timing rules of sessions.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// A session expires this long after its last use (sliding expiry).
    pub idle_ttl: Duration,
    /// ... and never later than this long after login.
    pub absolute_ttl: Duration,
    /// The sliding expiry is written to the store at most this often.
    pub renew_interval: Duration,
    /// A live session actor re-reads its session and user from the store this often.
    pub revalidate_interval: Duration,
    /// A session actor stops after this long without a request.
    pub idle_timeout: Duration,
}

impl SessionPolicy {
    /// When a session created at `created_at` and used at `now` expires.
    pub fn expiry(&self, created_at: Timestamp, now: Timestamp) -> Timestamp {
        let sliding = now.plus_ms(millis(self.idle_ttl));
        let absolute = created_at.plus_ms(millis(self.absolute_ttl));
        sliding.min(absolute)
    }
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// Who a request comes from, as established from its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub session_id: Uuid,
    /// Hash of the bearer token (to revoke this session); never the token itself.
    pub token_hash: String,
    /// When this session's credentials were checked (its login).
    pub authenticated_at: Timestamp,
}

impl Identity {
    fn of(user: &User, session: &Session) -> Identity {
        Identity {
            user_id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role,
            session_id: session.id,
            token_hash: session.token_hash.clone(),
            authenticated_at: session.created_at,
        }
    }

    /// Whether this identity may use admin endpoints.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Failures of session handling (the session being invalid is not one: that is `None`).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("session actor unavailable: {0}")]
    Unavailable(String),
}

/// The hex SHA-256 of a bearer token: the only form in which tokens are stored or named.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn actor_name(token_hash: &str) -> String {
    format!("session:{token_hash}")
}

/// The node's entry point to sessions: a cheap, cloneable handle to the supervisor.
#[derive(Clone)]
pub struct SessionRegistry {
    supervisor: ActorRef<SupervisorMsg<SessionActor>>,
    store: Arc<dyn Store>,
    policy: Arc<SessionPolicy>,
    active: Arc<AtomicU64>,
    /// The other nodes to tell of account changes (none for a one-off command).
    cluster: Option<Cluster>,
}

impl SessionRegistry {
    /// Starts the session supervisor.
    pub async fn start(
        store: Arc<dyn Store>,
        policy: SessionPolicy,
    ) -> Result<(SessionRegistry, tokio::task::JoinHandle<()>), SessionError> {
        let active = Arc::new(AtomicU64::new(0));
        let (supervisor, handle) = ChildSupervisor::start("session", active.clone())
            .await
            .map_err(|err| SessionError::Unavailable(err.to_string()))?;
        let registry = SessionRegistry {
            supervisor,
            store,
            policy: Arc::new(policy),
            active,
            cluster: None,
        };
        Ok((registry, handle))
    }

    /// The registry that also tells `cluster`'s other members of account changes.
    pub fn in_cluster(self, cluster: Cluster) -> SessionRegistry {
        SessionRegistry {
            cluster: Some(cluster),
            ..self
        }
    }

    /// The session rules in force.
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// How many session actors are live on this node.
    pub fn active_count(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the supervisor is running (for health checks).
    pub fn is_running(&self) -> bool {
        self.supervisor.get_status() == ractor::ActorStatus::Running
    }

    /// Resolves a bearer token to the identity of its live session, or `None` when the token
    /// is unknown, expired, revoked, or its user deactivated.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>, SessionError> {
        let hash = token_hash(token);
        // An actor that is stopping (passivation, eviction) no longer answers, and its name is
        // released once it has stopped: a few attempts reach a live (or new) one.
        for _ in 0..ACTIVATION_ATTEMPTS {
            let actor = match ActorRef::<SessionMsg>::where_is(actor_name(&hash)) {
                Some(actor) => actor,
                None => match self.activate(&hash).await? {
                    Some(actor) => actor,
                    None => return Ok(None),
                },
            };
            if let Some(answer) = ask_authenticate(&actor).await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(SessionError::Unavailable(
            "session actor kept stopping".into(),
        ))
    }

    /// Loads a session and its user and has the supervisor start (or find) its actor;
    /// `None` when the session is not valid.
    async fn activate(&self, hash: &str) -> Result<Option<ActorRef<SessionMsg>>, SessionError> {
        let now = Timestamp::now();
        let Some(session) = self.store.session(hash).await? else {
            return Ok(None);
        };
        if session.expires_at <= now {
            self.store.delete_session(hash).await?;
            return Ok(None);
        }
        let Some(user) = self.store.user(session.user_id).await? else {
            return Ok(None);
        };
        if !user.active {
            return Ok(None);
        }
        let args = SessionArgs {
            store: self.store.clone(),
            policy: self.policy.clone(),
            session,
            user,
        };
        let name = actor_name(&args.session.token_hash);
        let actor = ChildSupervisor::activate(&self.supervisor, name, args, CALL_TIMEOUT)
            .await
            .map_err(SessionError::Unavailable)?;
        Ok(Some(actor))
    }

    /// Makes every node forget the sessions it holds of `user` (after the store changed them
    /// or the account): a revocation, a new password, a role change or a deactivation then
    /// applies to the next request on any node, each session being read again from the store.
    /// A node that misses the message (partitioned) catches up within
    /// `session_revalidate_secs`.
    pub async fn user_changed(&self, user: UserId) {
        // Before the caller answers, so that its next request anywhere sees the change.
        match &self.cluster {
            Some(cluster) => {
                let peers = user_changed_on_peers(cluster, user, PEER_TIMEOUT);
                tokio::join!(peers, self.user_changed_local(user));
            }
            None => self.user_changed_local(user).await,
        }
    }

    /// Stops this node's actors of `user`'s sessions; returns once each has the message queued
    /// (so that this node's next request for them already sees the change).
    pub(crate) async fn user_changed_local(&self, user: UserId) {
        ChildSupervisor::broadcast_queued(
            &self.supervisor,
            move || SessionMsg::UserChanged(user),
            CALL_TIMEOUT,
        )
        .await;
    }

    /// Stops the supervisor and every session actor, and waits for them.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("node shutdown".into()), Some(CALL_TIMEOUT))
            .await;
    }
}

/// `None` when the actor is gone or stopping; otherwise its answer.
async fn ask_authenticate(
    actor: &ActorRef<SessionMsg>,
) -> Option<Result<Option<Identity>, SessionError>> {
    match actor
        .call(SessionMsg::Authenticate, Some(CALL_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(answer)) => Some(answer.map_err(SessionError::from)),
        Ok(ractor::rpc::CallResult::Timeout) => Some(Err(SessionError::Unavailable(
            "session actor timed out".into(),
        ))),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------
// SessionActor

/// The live state of one login session.
#[derive(Default)]
pub struct SessionActor;

pub struct SessionArgs {
    store: Arc<dyn Store>,
    policy: Arc<SessionPolicy>,
    session: Session,
    user: User,
}

pub struct SessionState {
    store: Arc<dyn Store>,
    policy: Arc<SessionPolicy>,
    session: Session,
    user: User,
    /// When the store last confirmed the session and user.
    validated_at: Timestamp,
    /// When the expiry was last written to the store.
    persisted_at: Timestamp,
    last_request_at: Timestamp,
}

pub enum SessionMsg {
    /// Authenticates one request: the identity, or `None` when the session ended.
    Authenticate(RpcReplyPort<Result<Option<Identity>, StoreError>>),
    /// Periodic check for passivation.
    IdleTick,
    /// The user's account or sessions changed: an actor of theirs stops, and the next request
    /// rebuilds it from the store.
    UserChanged(UserId),
}

// Local only: never sent to another node.
impl ractor::Message for SessionMsg {}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let tick = (args.policy.idle_timeout / 4).max(Duration::from_millis(50));
        myself.send_interval(tick, || SessionMsg::IdleTick);
        let now = Timestamp::now();
        Ok(SessionState {
            persisted_at: args.session.last_seen_at,
            store: args.store,
            policy: args.policy,
            session: args.session,
            user: args.user,
            validated_at: now,
            last_request_at: now,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Authenticate(reply) => {
                let answer = authenticate(state).await;
                let ended = matches!(answer, Ok(None));
                let _ = reply.send(answer);
                if ended {
                    myself.stop(Some("session ended".into()));
                }
            }
            SessionMsg::UserChanged(user) => {
                if state.user.id == user {
                    myself.stop(Some("account changed".into()));
                }
            }
            SessionMsg::IdleTick => {
                let idle_ms = Timestamp::now().0 - state.last_request_at.0;
                if idle_ms >= millis(state.policy.idle_timeout) {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

async fn authenticate(state: &mut SessionState) -> Result<Option<Identity>, StoreError> {
    let now = Timestamp::now();
    state.last_request_at = now;
    if state.session.expires_at <= now {
        state
            .store
            .delete_session(&state.session.token_hash)
            .await?;
        return Ok(None);
    }
    let policy = state.policy.clone();
    if now.0 - state.validated_at.0 >= millis(policy.revalidate_interval) {
        let session = state.store.session(&state.session.token_hash).await?;
        let user = state.store.user(state.session.user_id).await?;
        match (session, user) {
            (Some(session), Some(user)) if user.active => {
                // Keep the expiry this actor slid forward; the store's may lag behind it.
                let expires_at = state.session.expires_at.max(session.expires_at);
                state.session = Session {
                    expires_at,
                    ..session
                };
                state.user = user;
                state.validated_at = now;
            }
            _ => return Ok(None),
        }
    }
    state.session.expires_at = policy.expiry(state.session.created_at, now);
    state.session.last_seen_at = now;
    if now.0 - state.persisted_at.0 >= millis(policy.renew_interval) {
        let still_there = state
            .store
            .touch_session(&state.session.token_hash, state.session.expires_at, now)
            .await?;
        if !still_there {
            return Ok(None);
        }
        state.persisted_at = now;
    }
    Ok(Some(Identity::of(&state.user, &state.session)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sting_store::SqliteStore;

    fn policy() -> SessionPolicy {
        SessionPolicy {
            idle_ttl: Duration::from_secs(3600),
            absolute_ttl: Duration::from_secs(86_400),
            renew_interval: Duration::ZERO,
            revalidate_interval: Duration::ZERO,
            idle_timeout: Duration::from_secs(60),
        }
    }

    async fn fixture(
        policy: SessionPolicy,
    ) -> (SessionRegistry, Arc<dyn Store>, User, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("s.db")).await.unwrap());
        let now = Timestamp::now();
        let user = User {
            id: Uuid::new_v4(),
            email: "a@example.com".into(),
            name: "A".into(),
            password_hash: "x".into(),
            role: Role::User,
            active: true,
            created_at: now,
            updated_at: now,
        };
        store.create_user(&user).await.unwrap();
        let (registry, _) = SessionRegistry::start(store.clone(), policy).await.unwrap();
        (registry, store, user, dir)
    }

    /// Stores a session for `user` and returns its (unique) token: actor names are
    /// process-global, so tests running in parallel must not share tokens.
    async fn login(store: &dyn Store, user: &User, expires_at: Timestamp) -> String {
        let token = Uuid::new_v4().to_string();
        let now = Timestamp::now();
        store
            .create_session(&Session {
                id: Uuid::new_v4(),
                token_hash: token_hash(&token),
                user_id: user.id,
                created_at: now,
                expires_at,
                last_seen_at: now,
            })
            .await
            .unwrap();
        token
    }

    #[test]
    fn expiry_slides_but_never_past_absolute_limit() {
        let policy = policy();
        assert_eq!(
            policy.expiry(Timestamp(0), Timestamp(1_000)),
            Timestamp(3_601_000)
        );
        assert_eq!(
            policy.expiry(Timestamp(0), Timestamp(86_000_000)),
            Timestamp(86_400_000)
        );
    }

    #[tokio::test]
    async fn valid_token_authenticates_and_slides_expiry_in_store() {
        let (registry, store, user, _dir) = fixture(policy()).await;
        let soon = Timestamp::now().plus_ms(1_000);
        let tok = login(store.as_ref(), &user, soon).await;

        let identity = registry.authenticate(&tok).await.unwrap().unwrap();
        assert_eq!(identity.user_id, user.id);
        assert_eq!(registry.active_count(), 1);
        let stored = store.session(&token_hash(&tok)).await.unwrap().unwrap();
        assert!(
            stored.expires_at > soon,
            "renew_interval 0 persists the slide"
        );

        // Served by the live actor the second time.
        assert!(registry.authenticate(&tok).await.unwrap().is_some());
        assert!(registry.authenticate("other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revocation_in_store_is_seen_by_a_live_actor() {
        let (registry, store, user, _dir) = fixture(policy()).await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        assert!(registry.authenticate(&tok).await.unwrap().is_some());

        // Another node deletes the session: revalidation (interval 0) notices.
        store.delete_session(&token_hash(&tok)).await.unwrap();
        assert!(registry.authenticate(&tok).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn deactivated_user_is_refused() {
        let (registry, store, mut user, _dir) = fixture(policy()).await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        assert!(registry.authenticate(&tok).await.unwrap().is_some());
        user.active = false;
        store.update_user(&user).await.unwrap();
        assert!(registry.authenticate(&tok).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_session_is_refused_and_deleted() {
        let (registry, store, user, _dir) = fixture(policy()).await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(-1)).await;
        assert!(registry.authenticate(&tok).await.unwrap().is_none());
        assert!(store.session(&token_hash(&tok)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn idle_actor_passivates_and_is_rebuilt_from_the_store() {
        let (registry, store, user, _dir) = fixture(SessionPolicy {
            idle_timeout: Duration::from_millis(100),
            ..policy()
        })
        .await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        assert!(registry.authenticate(&tok).await.unwrap().is_some());
        let actor = ActorRef::<SessionMsg>::where_is(actor_name(&token_hash(&tok))).unwrap();
        // Observe the stop rather than guess a sleep: wait on the actor's own termination.
        tokio::time::timeout(Duration::from_secs(5), async {
            while actor.get_status() != ractor::ActorStatus::Stopped {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("actor passivated");
        assert!(registry.authenticate(&tok).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_request_racing_a_stopping_actor_gets_a_new_one() {
        let (registry, store, user, _dir) = fixture(policy()).await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        for _ in 0..20 {
            registry.authenticate(&tok).await.unwrap().unwrap();
            // Stop without revoking (as passivation does), then ask at once.
            registry.user_changed(user.id).await;
            let identity = registry.authenticate(&tok).await.unwrap();
            assert_eq!(identity.map(|i| i.user_id), Some(user.id));
        }
    }

    #[tokio::test]
    async fn a_changed_user_is_read_again_at_once() {
        let (registry, store, user, _dir) = fixture(policy()).await;
        let tok = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        let other = login(store.as_ref(), &user, Timestamp::now().plus_ms(60_000)).await;
        registry.authenticate(&tok).await.unwrap();
        registry.authenticate(&other).await.unwrap();
        // A role change: every session of the user shows it on the next request.
        let mut admin = user.clone();
        admin.role = Role::Admin;
        store.update_user(&admin).await.unwrap();
        registry.user_changed(user.id).await;
        for token in [&tok, &other] {
            let identity = registry.authenticate(token).await.unwrap().unwrap();
            assert_eq!(identity.role, Role::Admin);
        }
        // Revocation: gone at once.
        store.delete_user_sessions(user.id).await.unwrap();
        registry.user_changed(user.id).await;
        assert!(registry.authenticate(&tok).await.unwrap().is_none());
        assert!(registry.authenticate(&other).await.unwrap().is_none());
    }
}
