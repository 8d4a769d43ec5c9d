//! Conversation actors on a real SQLite store and the fixture chat model: passivation and
//! rebuild, and lease fencing (an actor whose lease moved to another node writes nothing).
//!
//! Needs the ONNX Runtime library (`ORT_DYLIB_PATH`), like `models.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sting_actors::conversation::{
    ChatError, ChatPolicy, ConversationRegistry, TurnEvent, TurnOutcome, TurnRequest,
};
use sting_actors::model::pool::{ModelPoolHandle, PoolConfig};
use sting_store::{conversation_lease_key, SqliteStore, Store, StoreError, Timestamp};
use uuid::Uuid;

mod common;
use common::ort_library;

struct Node {
    store: Arc<dyn Store>,
    pool: ModelPoolHandle,
    chat: ConversationRegistry,
    _dir: tempfile::TempDir,
}

async fn node(library: PathBuf, idle_timeout: Duration) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("sting.db"))
            .await
            .unwrap(),
    );
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    let pool = ModelPoolHandle::start(PoolConfig {
        models_dir: models,
        runtime_library: library,
        intra_threads: 1,
        max_loaded: 2,
        queue_depth: 8,
        max_batch: 4,
    })
    .await
    .unwrap();
    let policy = ChatPolicy {
        system_prompt: "You are Bee.".into(),
        default_model: "fixture-chat".into(),
        budget_ratio: 0.8,
        keep_recent_messages: 2,
        summary_max_tokens: 32,
        default_max_tokens: 6,
        default_temperature: 0.0,
        max_message_chars: 1000,
        lease_ttl: Duration::from_secs(30),
        idle_timeout,
    };
    let cluster = sting_cluster::Cluster::single(sting_cluster::NodeId::new("node-a"))
        .await
        .unwrap();
    let chat = ConversationRegistry::start(store.clone(), pool.clone(), policy, None, cluster)
        .await
        .unwrap();
    Node {
        store,
        pool,
        chat,
        _dir: dir,
    }
}

fn turn(user: Uuid, conversation: Option<Uuid>, text: &str) -> TurnRequest {
    TurnRequest {
        request_id: Uuid::new_v4(),
        user_id: user,
        conversation_id: conversation,
        message: text.into(),
        model: None,
        temperature: None,
        max_tokens: None,
        honey_jar_ids: Vec::new(),
    }
}

async fn run(chat: &ConversationRegistry, request: TurnRequest) -> Result<TurnOutcome, ChatError> {
    let mut stream = chat.send(request).await?;
    while let Some(event) = stream.next().await {
        match event {
            TurnEvent::Done(outcome) => return Ok(*outcome),
            TurnEvent::Failed(err) => return Err(err),
            TurnEvent::Accepted { .. } | TurnEvent::Chunk(_) => {}
            TurnEvent::Restarted => panic!("a cluster of one never restarts a turn"),
        }
    }
    panic!("the turn ended without an outcome");
}

async fn wait_until_passivated(chat: &ConversationRegistry) {
    for _ in 0..200 {
        if chat.active_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the conversation actor was not passivated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversations_passivate_release_their_lease_and_rebuild() {
    let Some(library) = ort_library("idle_conversations_passivate_release_their_lease_and_rebuild")
    else {
        return;
    };
    let node = node(library, Duration::from_millis(300)).await;
    let user = Uuid::new_v4();
    let first = run(&node.chat, turn(user, None, "Hello")).await.unwrap();
    let id = first.conversation_id;
    let key = conversation_lease_key(id);
    let lease = node.store.lease(&key).await.unwrap().unwrap();
    assert_eq!(lease.owner, "node-a");
    assert!(lease.expires_at > Timestamp::now());
    assert_eq!(node.chat.active_count(), 1);

    wait_until_passivated(&node.chat).await;
    let released = node.store.lease(&key).await.unwrap().unwrap();
    assert!(
        released.expires_at <= Timestamp::now(),
        "released on passivation"
    );

    let second = run(&node.chat, turn(user, Some(id), "Again"))
        .await
        .unwrap();
    assert_eq!(second.conversation_id, id);
    let lease = node.store.lease(&key).await.unwrap().unwrap();
    assert_eq!(lease.epoch, released.epoch + 1, "a new tenure");
    let (record, messages) = node.chat.history(user, id, 1, 100).await.unwrap();
    assert_eq!(record.message_count, 4);
    assert_eq!(messages[1].content, first.content);
    assert_eq!(messages[3].content, second.content);
    // Someone else's id is not found, whatever the actor's state.
    let stranger = run(&node.chat, turn(Uuid::new_v4(), Some(id), "Hi")).await;
    assert!(matches!(stranger, Err(ChatError::NotFound)), "{stranger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_that_lost_its_lease_writes_nothing() {
    let Some(library) = ort_library("an_actor_that_lost_its_lease_writes_nothing") else {
        return;
    };
    let node = node(library, Duration::from_secs(60)).await;
    let user = Uuid::new_v4();
    let first = run(&node.chat, turn(user, None, "Hello")).await.unwrap();
    let id = first.conversation_id;
    let key = conversation_lease_key(id);

    // Another node takes the lease over (as after this node was paused past its expiry).
    let later = Timestamp::now().plus_ms(3_600_000);
    let theirs = node
        .store
        .acquire_lease(&key, "node-b", 3_600_000, later)
        .await
        .unwrap();
    let refused = run(&node.chat, turn(user, Some(id), "Are you still there?")).await;
    assert!(
        matches!(
            refused,
            Err(ChatError::Store(StoreError::StaleLease { .. }))
        ),
        "{refused:?}"
    );
    let (record, _) = node.chat.history(user, id, 1, 100).await.unwrap();
    assert_eq!(record.message_count, 2, "the fenced-off write left nothing");
    wait_until_passivated(&node.chat).await;

    // While node-b holds the lease, this node cannot activate the conversation at all.
    let held = run(&node.chat, turn(user, Some(id), "And now?")).await;
    assert!(matches!(held, Err(ChatError::Unavailable(_))), "{held:?}");
    assert_eq!(node.store.lease(&key).await.unwrap(), Some(theirs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_stored_once_and_answered_from_the_store() {
    let Some(library) = ort_library("a_retried_request_is_stored_once_and_answered_from_the_store")
    else {
        return;
    };
    let node = node(library, Duration::from_secs(60)).await;
    let user = Uuid::new_v4();
    let first = run(&node.chat, turn(user, None, "Hello")).await.unwrap();
    let id = first.conversation_id;

    let request = turn(user, Some(id), "Once only");
    let answered = run(&node.chat, request.clone()).await.unwrap();
    // The retry (e.g. after a timeout the client could not tell from a failure) finds the
    // message and its answer stored: nothing new is written, the stored answer comes back.
    let retried = run(&node.chat, request.clone()).await.unwrap();
    assert_eq!(retried.message_id, answered.message_id);
    assert_eq!(retried.content, answered.content);
    let (record, messages) = node.chat.history(user, id, 1, 100).await.unwrap();
    assert_eq!(record.message_count, 4);
    assert_eq!(
        messages[2].id, request.request_id,
        "the request id names the message"
    );

    // A retry whose first attempt stored the message but died before answering gets an answer
    // without a second copy of the message: as a new owner would after a crash.
    let unanswered = turn(user, Some(id), "Stored, then the node died");
    let lease = node
        .store
        .lease(&conversation_lease_key(id))
        .await
        .unwrap()
        .unwrap();
    let mut record = record;
    let message = sting_store::Message {
        conversation_id: id,
        seq: 5,
        id: unanswered.request_id,
        role: sting_store::MessageRole::User,
        content: unanswered.message.clone(),
        model: None,
        status: sting_store::MessageStatus::Complete,
        created_at: Timestamp::now(),
    };
    record.message_count = 5;
    node.chat.shutdown().await;
    let lease = node
        .store
        .acquire_lease(&lease.key, "node-a", 30_000, Timestamp::now())
        .await
        .unwrap();
    node.store
        .save_conversation(&lease, &record, &[message], false)
        .await
        .unwrap();
    node.store.release_lease(&lease).await.unwrap();
    let restarted = ConversationRegistry::start(
        node.store.clone(),
        node.pool.clone(),
        node.chat.policy().clone(),
        None,
        sting_cluster::Cluster::single(sting_cluster::NodeId::new("node-a"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    run(&restarted, unanswered).await.unwrap();
    let (record, messages) = restarted.history(user, id, 1, 100).await.unwrap();
    assert_eq!(record.message_count, 6);
    let users = messages
        .iter()
        .filter(|m| m.role == sting_store::MessageRole::User)
        .count();
    assert_eq!(users, 3, "the unanswered message was not stored again");
}
