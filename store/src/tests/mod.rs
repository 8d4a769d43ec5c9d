//! The store contract suite: one async fn per behaviour, written once against `&dyn Store`.
//! Each backend runs all of them through [`store_test_suite!`](crate::store_test_suite).

use uuid::Uuid;

use crate::{
    conversation_lease_key, Conversation, ConversationId, ConversationSort, Lease, Message,
    MessageRole, MessageStatus, Page, PruningRecord, Role, Session, SortOrder, Store, StoreError,
    Timestamp, User, UserId,
};

/// Generates one `#[tokio::test]` per contract behaviour. `$factory` is an async expression
/// yielding `(store, guard)`; the guard (a temp dir, a keyspace) lives as long as the test.
#[macro_export]
macro_rules! store_test_suite {
    ($factory:expr) => {
        $crate::store_test_suite!(@tests $factory;
            user_roundtrip, duplicate_email_conflicts, update_user_changes_fields,
            update_to_taken_email_conflicts, update_unknown_user_is_not_found, list_users_pages,
            session_roundtrip, touch_missing_session_reports_gone,
            delete_user_sessions_returns_hashes, expired_sessions_are_collected,
            lease_is_exclusive_until_expiry, lease_reacquire_by_holder_keeps_epoch,
            stale_epoch_cannot_renew_or_release, released_lease_never_reuses_epoch,
            concurrent_acquires_elect_one_owner, conversation_roundtrip_with_messages,
            conversation_writes_need_current_lease, create_twice_conflicts_and_update_needs_record,
            message_retry_is_idempotent_and_seq_clash_conflicts, list_conversations_sorts_and_pages,
            delete_conversation_removes_messages_and_blocks_late_writes);
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $factory.await;
                $crate::tests::$name(&store).await;
            }
        )*
    };
}

/// A user record for tests.
pub fn sample_user(email: &str) -> User {
    User {
        id: Uuid::new_v4(),
        email: email.to_owned(),
        name: "Sample".to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        role: Role::User,
        active: true,
        created_at: Timestamp(1_000),
        updated_at: Timestamp(1_000),
    }
}

fn sample_session(user: &User, token_hash: &str, expires_at: i64) -> Session {
    Session {
        id: Uuid::new_v4(),
        token_hash: token_hash.to_owned(),
        user_id: user.id,
        created_at: Timestamp(1_000),
        expires_at: Timestamp(expires_at),
        last_seen_at: Timestamp(1_000),
    }
}

/// A conversation record for tests, without messages yet.
fn sample_conversation(user_id: UserId, id: ConversationId) -> Conversation {
    Conversation {
        id,
        user_id,
        title: "Sample".to_owned(),
        created_at: Timestamp(1_000),
        updated_at: Timestamp(1_000),
        model: "model-a".to_owned(),
        message_count: 0,
        last_message: String::new(),
        summary: None,
        pruned_through: 0,
        last_pruning: None,
    }
}

/// Message `seq` of `conversation`, with a fresh id.
fn sample_message(conversation: ConversationId, seq: u64, role: MessageRole) -> Message {
    Message {
        conversation_id: conversation,
        seq,
        id: Uuid::new_v4(),
        role,
        content: format!("message {seq}"),
        model: (role == MessageRole::Assistant).then(|| "model-a".to_owned()),
        status: MessageStatus::Complete,
        created_at: Timestamp(1_000 + seq as i64),
    }
}

/// Takes the conversation's lease for "node-a" (from time 0, for 10 s).
async fn lease_for_node_a(store: &dyn Store, conversation: &Conversation) -> Lease {
    store
        .acquire_lease(
            &conversation_lease_key(conversation.id),
            "node-a",
            10_000,
            Timestamp(0),
        )
        .await
        .unwrap()
}

/// Takes the conversation's lease for "node-a" and creates it with `messages`.
async fn create_conversation(
    store: &dyn Store,
    conversation: &Conversation,
    messages: &[Message],
) -> Lease {
    let lease = lease_for_node_a(store, conversation).await;
    store
        .save_conversation(&lease, conversation, messages, true)
        .await
        .unwrap();
    lease
}

pub async fn user_roundtrip(store: &dyn Store) {
    let user = sample_user("a@example.com");
    store.create_user(&user).await.unwrap();
    assert_eq!(store.user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store.user_by_email("a@example.com").await.unwrap(),
        Some(user)
    );
    assert_eq!(store.user(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(store.user_by_email("b@example.com").await.unwrap(), None);
}

pub async fn duplicate_email_conflicts(store: &dyn Store) {
    store
        .create_user(&sample_user("dup@example.com"))
        .await
        .unwrap();
    let second = store.create_user(&sample_user("dup@example.com")).await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    let (_, total) = store
        .list_users(Page {
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(total, 1, "the refused user must leave nothing behind");
}

pub async fn update_user_changes_fields(store: &dyn Store) {
    let mut user = sample_user("u@example.com");
    store.create_user(&user).await.unwrap();
    user.email = "new@example.com".to_owned();
    user.name = "Renamed".to_owned();
    user.role = Role::Admin;
    user.active = false;
    user.updated_at = Timestamp(2_000);
    store.update_user(&user).await.unwrap();
    assert_eq!(store.user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(store.user_by_email("u@example.com").await.unwrap(), None);
    assert_eq!(
        store.user_by_email("new@example.com").await.unwrap(),
        Some(user)
    );
}

pub async fn update_to_taken_email_conflicts(store: &dyn Store) {
    let first = sample_user("first@example.com");
    let mut second = sample_user("second@example.com");
    store.create_user(&first).await.unwrap();
    store.create_user(&second).await.unwrap();
    second.email = first.email.clone();
    let result = store.update_user(&second).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(
        store.user(second.id).await.unwrap().unwrap().email,
        "second@example.com"
    );
}

pub async fn update_unknown_user_is_not_found(store: &dyn Store) {
    let result = store.update_user(&sample_user("ghost@example.com")).await;
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "{result:?}"
    );
}

pub async fn list_users_pages(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut user = sample_user(&format!("p{i}@example.com"));
        user.created_at = Timestamp(1_000 + i);
        ids.push(user.id);
        store.create_user(&user).await.unwrap();
    }
    let (page, total) = store
        .list_users(Page {
            limit: 2,
            offset: 1,
        })
        .await
        .unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        page.iter().map(|u| u.id).collect::<Vec<_>>(),
        ids[1..3].to_vec()
    );
    let (past_end, _) = store
        .list_users(Page {
            limit: 2,
            offset: 9,
        })
        .await
        .unwrap();
    assert!(past_end.is_empty());
}

pub async fn session_roundtrip(store: &dyn Store) {
    let user = sample_user("s@example.com");
    store.create_user(&user).await.unwrap();
    let session = sample_session(&user, "hash-1", 5_000);
    store.create_session(&session).await.unwrap();
    assert_eq!(
        store.session("hash-1").await.unwrap(),
        Some(session.clone())
    );

    assert!(store
        .touch_session("hash-1", Timestamp(9_000), Timestamp(4_000))
        .await
        .unwrap());
    let touched = store.session("hash-1").await.unwrap().unwrap();
    assert_eq!(
        (touched.expires_at, touched.last_seen_at),
        (Timestamp(9_000), Timestamp(4_000))
    );

    store.delete_session("hash-1").await.unwrap();
    assert_eq!(store.session("hash-1").await.unwrap(), None);
    store.delete_session("hash-1").await.unwrap();
}

pub async fn touch_missing_session_reports_gone(store: &dyn Store) {
    let touched = store
        .touch_session("nope", Timestamp(9_000), Timestamp(4_000))
        .await
        .unwrap();
    assert!(!touched);
    assert_eq!(store.session("nope").await.unwrap(), None);
}

pub async fn delete_user_sessions_returns_hashes(store: &dyn Store) {
    let alice = sample_user("alice@example.com");
    let bob = sample_user("bob@example.com");
    store.create_user(&alice).await.unwrap();
    store.create_user(&bob).await.unwrap();
    for hash in ["a1", "a2"] {
        store
            .create_session(&sample_session(&alice, hash, 5_000))
            .await
            .unwrap();
    }
    store
        .create_session(&sample_session(&bob, "b1", 5_000))
        .await
        .unwrap();

    let mut deleted = store.delete_user_sessions(alice.id).await.unwrap();
    deleted.sort();
    assert_eq!(deleted, vec!["a1".to_owned(), "a2".to_owned()]);
    assert_eq!(store.session("a1").await.unwrap(), None);
    assert!(store.session("b1").await.unwrap().is_some());
}

pub async fn expired_sessions_are_collected(store: &dyn Store) {
    let user = sample_user("e@example.com");
    store.create_user(&user).await.unwrap();
    store
        .create_session(&sample_session(&user, "old", 2_000))
        .await
        .unwrap();
    store
        .create_session(&sample_session(&user, "fresh", 8_000))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_expired_sessions(Timestamp(5_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.session("old").await.unwrap(), None);
    assert!(store.session("fresh").await.unwrap().is_some());
}

pub async fn lease_is_exclusive_until_expiry(store: &dyn Store) {
    let a = store
        .acquire_lease("conv:x", "node-a", 1_000, Timestamp(10_000))
        .await
        .unwrap();
    assert_eq!((a.owner.as_str(), a.epoch), ("node-a", 1));
    assert_eq!(a.expires_at, Timestamp(11_000));

    let held = store
        .acquire_lease("conv:x", "node-b", 1_000, Timestamp(10_500))
        .await;
    match held {
        Err(StoreError::LeaseHeld { owner, .. }) => assert_eq!(owner, "node-a"),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }

    let b = store
        .acquire_lease("conv:x", "node-b", 1_000, Timestamp(11_000))
        .await
        .unwrap();
    assert_eq!((b.owner.as_str(), b.epoch), ("node-b", 2));
    assert_eq!(store.lease("conv:x").await.unwrap(), Some(b));
    assert_eq!(store.lease("conv:none").await.unwrap(), None);
}

pub async fn lease_reacquire_by_holder_keeps_epoch(store: &dyn Store) {
    let first = store
        .acquire_lease("shard:1", "node-a", 1_000, Timestamp(0))
        .await
        .unwrap();
    let again = store
        .acquire_lease("shard:1", "node-a", 1_000, Timestamp(500))
        .await
        .unwrap();
    assert_eq!(again.epoch, first.epoch);
    assert_eq!(again.expires_at, Timestamp(1_500));

    let renewed = store
        .renew_lease(&again, 1_000, Timestamp(1_000))
        .await
        .unwrap();
    assert_eq!(
        (renewed.epoch, renewed.expires_at),
        (first.epoch, Timestamp(2_000))
    );
}

pub async fn stale_epoch_cannot_renew_or_release(store: &dyn Store) {
    let old = store
        .acquire_lease("conv:y", "node-a", 1_000, Timestamp(0))
        .await
        .unwrap();
    // node-a stalls past its expiry; node-b takes over.
    let new = store
        .acquire_lease("conv:y", "node-b", 1_000, Timestamp(2_000))
        .await
        .unwrap();
    assert!(new.epoch > old.epoch);

    let renew = store.renew_lease(&old, 1_000, Timestamp(2_100)).await;
    assert!(
        matches!(renew, Err(StoreError::StaleLease { epoch: 1, .. })),
        "{renew:?}"
    );
    let release = store.release_lease(&old).await;
    assert!(
        matches!(release, Err(StoreError::StaleLease { .. })),
        "{release:?}"
    );
    // Same owner name but an old epoch is just as stale.
    let forged = Lease {
        owner: "node-b".to_owned(),
        ..old.clone()
    };
    assert!(store
        .renew_lease(&forged, 1_000, Timestamp(2_100))
        .await
        .is_err());

    assert_eq!(store.lease("conv:y").await.unwrap(), Some(new));
}

pub async fn released_lease_never_reuses_epoch(store: &dyn Store) {
    let a = store
        .acquire_lease("conv:z", "node-a", 10_000, Timestamp(0))
        .await
        .unwrap();
    store.release_lease(&a).await.unwrap();
    let b = store
        .acquire_lease("conv:z", "node-b", 10_000, Timestamp(1))
        .await
        .unwrap();
    assert_eq!(b.epoch, a.epoch + 1, "a released lease is free at once");
    assert!(store.renew_lease(&a, 10_000, Timestamp(2)).await.is_err());
    let a_again = store
        .acquire_lease("conv:z", "node-a", 10_000, Timestamp(3))
        .await;
    assert!(matches!(a_again, Err(StoreError::LeaseHeld { .. })));
}

pub async fn concurrent_acquires_elect_one_owner(store: &dyn Store) {
    let attempts = (0..8).map(|i| {
        let owner = format!("node-{i}");
        async move {
            store
                .acquire_lease("conv:race", &owner, 10_000, Timestamp(0))
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].epoch, 1);
}

pub async fn conversation_roundtrip_with_messages(store: &dyn Store) {
    let mut conversation = sample_conversation(Uuid::new_v4(), Uuid::new_v4());
    let messages = vec![
        sample_message(conversation.id, 1, MessageRole::User),
        Message {
            status: MessageStatus::Cancelled,
            ..sample_message(conversation.id, 2, MessageRole::Assistant)
        },
    ];
    conversation.message_count = 2;
    conversation.last_message = "message 2".to_owned();
    conversation.summary = Some("earlier on".to_owned());
    conversation.pruned_through = 1;
    conversation.last_pruning = Some(PruningRecord {
        timestamp: Timestamp(1_500),
        messages_pruned: 1,
        tokens_before: 900,
        tokens_after: 300,
        automatic: true,
    });
    create_conversation(store, &conversation, &messages).await;

    assert_eq!(
        store.conversation(conversation.id).await.unwrap(),
        Some(conversation.clone())
    );
    assert_eq!(
        store.messages(conversation.id, 1, 100).await.unwrap(),
        messages
    );
    assert_eq!(
        store.messages(conversation.id, 0, 1).await.unwrap(),
        messages[..1]
    );
    assert_eq!(
        store.messages(conversation.id, 2, 100).await.unwrap(),
        messages[1..]
    );
    assert!(store
        .messages(conversation.id, 3, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.conversation(Uuid::new_v4()).await.unwrap(), None);
    assert!(store
        .messages(Uuid::new_v4(), 1, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn conversation_writes_need_current_lease(store: &dyn Store) {
    let conversation = sample_conversation(Uuid::new_v4(), Uuid::new_v4());
    let key = conversation_lease_key(conversation.id);
    let messages = [sample_message(conversation.id, 1, MessageRole::User)];
    let old = store
        .acquire_lease(&key, "node-a", 1_000, Timestamp(0))
        .await
        .unwrap();
    // node-a stalls past its expiry; node-b takes over.
    let current = store
        .acquire_lease(&key, "node-b", 1_000, Timestamp(2_000))
        .await
        .unwrap();

    let stale = store
        .save_conversation(&old, &conversation, &messages, true)
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease { epoch: 1, .. })),
        "{stale:?}"
    );
    assert_eq!(store.conversation(conversation.id).await.unwrap(), None);
    assert!(store
        .messages(conversation.id, 1, 100)
        .await
        .unwrap()
        .is_empty());

    // A current lease on another key does not fence this conversation.
    let other = store
        .acquire_lease(
            &conversation_lease_key(Uuid::new_v4()),
            "node-b",
            1_000,
            Timestamp(2_000),
        )
        .await
        .unwrap();
    let wrong_key = store
        .save_conversation(&other, &conversation, &messages, true)
        .await;
    assert!(
        matches!(wrong_key, Err(StoreError::StaleLease { .. })),
        "{wrong_key:?}"
    );
    assert_eq!(store.conversation(conversation.id).await.unwrap(), None);

    store
        .save_conversation(&current, &conversation, &messages, true)
        .await
        .unwrap();
    assert_eq!(
        store.conversation(conversation.id).await.unwrap(),
        Some(conversation)
    );
}

pub async fn create_twice_conflicts_and_update_needs_record(store: &dyn Store) {
    let conversation = sample_conversation(Uuid::new_v4(), Uuid::new_v4());
    let lease = lease_for_node_a(store, &conversation).await;
    let update = store
        .save_conversation(&lease, &conversation, &[], false)
        .await;
    assert!(
        matches!(update, Err(StoreError::NotFound { .. })),
        "{update:?}"
    );
    assert_eq!(store.conversation(conversation.id).await.unwrap(), None);

    store
        .save_conversation(&lease, &conversation, &[], true)
        .await
        .unwrap();
    let renamed = Conversation {
        title: "Renamed".to_owned(),
        ..conversation.clone()
    };
    let again = store.save_conversation(&lease, &renamed, &[], true).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        store.conversation(conversation.id).await.unwrap(),
        Some(conversation)
    );
}

pub async fn message_retry_is_idempotent_and_seq_clash_conflicts(store: &dyn Store) {
    let mut conversation = sample_conversation(Uuid::new_v4(), Uuid::new_v4());
    let messages = vec![
        sample_message(conversation.id, 1, MessageRole::User),
        sample_message(conversation.id, 2, MessageRole::Assistant),
    ];
    conversation.message_count = 2;
    let lease = create_conversation(store, &conversation, &messages).await;

    // A retry of the last write (its acknowledgement was lost) changes nothing.
    conversation.updated_at = Timestamp(2_000);
    store
        .save_conversation(&lease, &conversation, &messages[1..], false)
        .await
        .unwrap();
    assert_eq!(
        store.messages(conversation.id, 1, 100).await.unwrap(),
        messages
    );
    assert_eq!(
        store.conversation(conversation.id).await.unwrap(),
        Some(conversation.clone())
    );

    // A different message at a taken seq: the whole write is refused, record included.
    let clash = Conversation {
        title: "Renamed".to_owned(),
        message_count: 4,
        updated_at: Timestamp(3_000),
        ..conversation.clone()
    };
    let new_messages = [
        sample_message(conversation.id, 3, MessageRole::User),
        sample_message(conversation.id, 2, MessageRole::Assistant),
    ];
    let result = store
        .save_conversation(&lease, &clash, &new_messages, false)
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(
        store.conversation(conversation.id).await.unwrap(),
        Some(conversation.clone())
    );
    assert_eq!(
        store.messages(conversation.id, 1, 100).await.unwrap(),
        messages
    );
}

pub async fn list_conversations_sorts_and_pages(store: &dyn Store) {
    let user = Uuid::new_v4();
    // (created_at, updated_at): creation order c0, c1, c2; update order c1, c2, c0.
    let mut ids = Vec::new();
    for (created, updated) in [(1_000, 5_000), (2_000, 3_000), (3_000, 4_000)] {
        let conversation = Conversation {
            created_at: Timestamp(created),
            updated_at: Timestamp(updated),
            ..sample_conversation(user, Uuid::new_v4())
        };
        ids.push(conversation.id);
        create_conversation(store, &conversation, &[]).await;
    }
    let stranger = Conversation {
        created_at: Timestamp(2_500),
        updated_at: Timestamp(3_500),
        ..sample_conversation(Uuid::new_v4(), Uuid::new_v4())
    };
    create_conversation(store, &stranger, &[]).await;

    let all = Page {
        limit: 10,
        offset: 0,
    };
    let cases = [
        (ConversationSort::CreatedAt, SortOrder::Asc, [0, 1, 2]),
        (ConversationSort::CreatedAt, SortOrder::Desc, [2, 1, 0]),
        (ConversationSort::UpdatedAt, SortOrder::Asc, [1, 2, 0]),
        (ConversationSort::UpdatedAt, SortOrder::Desc, [0, 2, 1]),
    ];
    for (sort, order, expected) in cases {
        let (page, total) = store
            .list_conversations(user, sort, order, all)
            .await
            .unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|c| c.id).collect::<Vec<_>>(),
            expected.map(|i| ids[i]).to_vec(),
            "{sort:?} {order:?}"
        );
    }

    let (page, total) = store
        .list_conversations(
            user,
            ConversationSort::UpdatedAt,
            SortOrder::Desc,
            Page {
                limit: 1,
                offset: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);

    let (past_end, total) = store
        .list_conversations(
            user,
            ConversationSort::CreatedAt,
            SortOrder::Asc,
            Page {
                limit: 2,
                offset: 3,
            },
        )
        .await
        .unwrap();
    assert!(past_end.is_empty());
    assert_eq!(total, 3);

    let (theirs, total) = store
        .list_conversations(
            stranger.user_id,
            ConversationSort::CreatedAt,
            SortOrder::Asc,
            all,
        )
        .await
        .unwrap();
    assert_eq!((theirs, total), (vec![stranger], 1));
}

pub async fn delete_conversation_removes_messages_and_blocks_late_writes(store: &dyn Store) {
    let mut conversation = sample_conversation(Uuid::new_v4(), Uuid::new_v4());
    let messages = [
        sample_message(conversation.id, 1, MessageRole::User),
        sample_message(conversation.id, 2, MessageRole::Assistant),
    ];
    conversation.message_count = 2;
    let lease = create_conversation(store, &conversation, &messages).await;
    let kept = sample_conversation(conversation.user_id, Uuid::new_v4());
    let kept_messages = [sample_message(kept.id, 1, MessageRole::User)];
    create_conversation(store, &kept, &kept_messages).await;

    assert!(store.delete_conversation(conversation.id).await.unwrap());
    assert_eq!(store.conversation(conversation.id).await.unwrap(), None);
    assert!(store
        .messages(conversation.id, 1, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(!store.delete_conversation(conversation.id).await.unwrap());

    // The owner, unaware of the deletion, writes its next answer: refused, nothing revived.
    conversation.message_count = 3;
    let late = store
        .save_conversation(
            &lease,
            &conversation,
            &[sample_message(conversation.id, 3, MessageRole::Assistant)],
            false,
        )
        .await;
    assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");
    assert_eq!(store.conversation(conversation.id).await.unwrap(), None);
    assert!(store
        .messages(conversation.id, 1, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.lease(&lease.key).await.unwrap(),
        Some(lease),
        "deleting does not touch the lease"
    );

    assert_eq!(
        store.conversation(kept.id).await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(
        store.messages(kept.id, 1, 100).await.unwrap(),
        kept_messages
    );
}
