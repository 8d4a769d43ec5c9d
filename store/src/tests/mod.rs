//! The store contract suite: one async fn per behaviour, written once against `&dyn Store`.
//! Each backend runs all of them through [`store_test_suite!`](crate::store_test_suite).

use uuid::Uuid;

use crate::prelude::*;

use crate::{
    conversation_lease_key, Ceremony, CeremonyKind, Chunk, Conversation, ConversationId,
    ConversationQuery, ConversationSort, Document, DocumentId, DocumentStatus, HoneyJar, JarId,
    JarQuery, JarSettings, Lease, LeaseStore, LicenseType, Listing, ListingId, ListingQuery,
    ListingSort, ListingStatus, Message, MessageRole, MessageStatus, Order, OrderStatus, Page,
    Passkey, PruningRecord, Role, Session, SortOrder, SqliteStore, Store, StoreError, Timestamp,
    User, UserId, Visibility,
};

/// Generates one `#[tokio::test]` per contract behaviour. `$factory` is a function of the
/// test's name returning a future of a [`Fixture`]: `(store, guard)`, where the guard (a temp
/// dir, a keyspace) lives as long as the test, or `None` to end the test at once. Attributes
/// after the factory go on every test: `#[ignore = "…"]` for a backend that needs a server,
/// whose tests are then reported as ignored where there is none, never as passed.
#[macro_export]
macro_rules! store_test_suite {
    (@tests $attributes:tt $factory:expr; $($name:ident),* $(,)?) => {
        $(
            $crate::store_test_suite!(@test $attributes $factory; $name);
        )*
    };
    (@test { $(#[$attribute:meta])* } $factory:expr; $name:ident) => {
        $(#[$attribute])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let fixture = ($factory)(stringify!($name)).await;
            let Some((store, _guard)) = $crate::tests::Fixture::into_fixture(fixture) else {
                return;
            };
            $crate::tests::$name(&store).await;
        }
    };
    ($factory:expr $(, #[$attribute:meta])* $(,)?) => {
        $crate::store_test_suite!(@tests { $(#[$attribute])* } $factory;
            user_roundtrip, duplicate_email_conflicts, update_user_changes_fields,
            update_to_taken_email_conflicts, update_unknown_user_is_not_found, list_users_pages,
            session_roundtrip, touch_missing_session_reports_gone,
            delete_user_sessions_returns_hashes, expired_sessions_are_collected,
            lease_is_exclusive_until_expiry, lease_reacquire_by_holder_keeps_epoch,
            stale_epoch_cannot_renew_or_release, released_lease_never_reuses_epoch,
            concurrent_acquires_elect_one_owner, take_over_fences_the_old_holder,
            conversation_roundtrip_with_messages,
            conversation_writes_need_current_lease, create_twice_conflicts_and_update_needs_record,
            message_retry_is_idempotent_and_seq_clash_conflicts, list_conversations_sorts_and_pages,
            delete_conversation_removes_messages_and_blocks_late_writes,
            jar_roundtrip_and_update, jar_counts_follow_saved_chunks,
            deleting_a_document_takes_it_off_its_jar_counts,
            list_jars_filters_by_reader_visibility_owner_tag_search_and_pages,
            readable_jars_follow_visibility, document_lifecycle,
            save_chunks_replaces_and_refuses_deleted_documents, jar_chunks_pages_with_a_cursor,
            delete_jar_cascades, listings_filter_sort_and_page, orders_are_idempotent_per_key,
            ratings_replace_and_move_the_mean, deleting_a_jar_withdraws_its_listings,
            passkeys_belong_to_one_account, passkey_counter_only_moves_up,
            ceremonies_are_single_use_and_expire, copy_moves_everything_and_resumes,
            large_records_and_many_index_entries_are_written);
    };
}

/// What a backend's test factory yields.
pub trait Fixture {
    type Store;
    type Guard;
    fn into_fixture(self) -> Option<(Self::Store, Self::Guard)>;
}

impl<S, G> Fixture for (S, G) {
    type Store = S;
    type Guard = G;
    fn into_fixture(self) -> Option<(S, G)> {
        Some(self)
    }
}

impl<S, G> Fixture for Option<(S, G)> {
    type Store = S;
    type Guard = G;
    fn into_fixture(self) -> Option<(S, G)> {
        self
    }
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

pub async fn lease_is_exclusive_until_expiry(store: &dyn LeaseStore) {
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

pub async fn lease_reacquire_by_holder_keeps_epoch(store: &dyn LeaseStore) {
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

pub async fn stale_epoch_cannot_renew_or_release(store: &dyn LeaseStore) {
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

pub async fn released_lease_never_reuses_epoch(store: &dyn LeaseStore) {
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

pub async fn take_over_fences_the_old_holder(store: &dyn LeaseStore) {
    let a = store
        .acquire_lease("conv:t", "node-a", 60_000, Timestamp(0))
        .await
        .unwrap();
    // node-a is declared down long before its lease would expire.
    let b = store
        .take_over_lease(&a, "node-b", 60_000, Timestamp(1_000))
        .await
        .unwrap();
    assert_eq!((b.owner.as_str(), b.epoch), ("node-b", a.epoch + 1));
    assert_eq!(b.expires_at, Timestamp(61_000));
    assert!(matches!(
        store.renew_lease(&a, 60_000, Timestamp(2_000)).await,
        Err(StoreError::StaleLease { .. })
    ));
    // A second taker that observed the same old lease loses the race.
    let c = store
        .take_over_lease(&a, "node-c", 60_000, Timestamp(2_000))
        .await;
    assert!(matches!(c, Err(StoreError::StaleLease { .. })), "{c:?}");
    assert_eq!(store.lease("conv:t").await.unwrap(), Some(b));
}

pub async fn concurrent_acquires_elect_one_owner(store: &dyn LeaseStore) {
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

fn conversation_query(
    sort: ConversationSort,
    order: SortOrder,
    limit: u32,
    offset: u64,
) -> ConversationQuery {
    ConversationQuery {
        sort,
        order,
        search: None,
        page: Page { limit, offset },
    }
}

pub async fn list_conversations_sorts_and_pages(store: &dyn Store) {
    let user = Uuid::new_v4();
    // (created_at, updated_at): creation order c0, c1, c2; update order c1, c2, c0.
    let mut ids = Vec::new();
    let titles = ["Hive plans", "Winter HIVE check", "Lavender 100%_done"];
    for (i, (created, updated)) in [(1_000, 5_000), (2_000, 3_000), (3_000, 4_000)]
        .into_iter()
        .enumerate()
    {
        let conversation = Conversation {
            title: titles[i].to_owned(),
            created_at: Timestamp(created),
            updated_at: Timestamp(updated),
            ..sample_conversation(user, Uuid::new_v4())
        };
        ids.push(conversation.id);
        create_conversation(store, &conversation, &[]).await;
    }
    let stranger = Conversation {
        title: "Hive plans".to_owned(),
        created_at: Timestamp(2_500),
        updated_at: Timestamp(3_500),
        ..sample_conversation(Uuid::new_v4(), Uuid::new_v4())
    };
    create_conversation(store, &stranger, &[]).await;

    let cases = [
        (ConversationSort::CreatedAt, SortOrder::Asc, [0, 1, 2]),
        (ConversationSort::CreatedAt, SortOrder::Desc, [2, 1, 0]),
        (ConversationSort::UpdatedAt, SortOrder::Asc, [1, 2, 0]),
        (ConversationSort::UpdatedAt, SortOrder::Desc, [0, 2, 1]),
    ];
    for (sort, order, expected) in cases {
        let (page, total) = store
            .list_conversations(user, &conversation_query(sort, order, 10, 0))
            .await
            .unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|c| c.id).collect::<Vec<_>>(),
            expected.map(|i| ids[i]).to_vec(),
            "{sort:?} {order:?}"
        );
    }

    let second = conversation_query(ConversationSort::UpdatedAt, SortOrder::Desc, 1, 1);
    let (page, total) = store.list_conversations(user, &second).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);

    let past_end = conversation_query(ConversationSort::CreatedAt, SortOrder::Asc, 2, 3);
    let (page, total) = store.list_conversations(user, &past_end).await.unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 3);

    // Title search: any case, wildcards taken literally, the user's own conversations only.
    for (search, expected) in [("hive", vec![0, 1]), ("%_", vec![2]), ("nothing", vec![])] {
        let query = ConversationQuery {
            search: Some(search.to_owned()),
            ..conversation_query(ConversationSort::CreatedAt, SortOrder::Asc, 10, 0)
        };
        let (page, total) = store.list_conversations(user, &query).await.unwrap();
        let found: Vec<_> = page.iter().map(|c| c.id).collect();
        let expected: Vec<_> = expected.iter().map(|&i| ids[i]).collect();
        assert_eq!(
            (found, total),
            (expected.clone(), expected.len() as u64),
            "{search}"
        );
    }

    let all = conversation_query(ConversationSort::CreatedAt, SortOrder::Asc, 10, 0);
    let (theirs, total) = store
        .list_conversations(stranger.user_id, &all)
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

/// A private jar of `owner` for tests, with no documents yet.
pub(crate) fn sample_jar(owner: UserId) -> HoneyJar {
    HoneyJar {
        id: Uuid::new_v4(),
        owner_id: owner,
        name: "Sample jar".to_owned(),
        description: "A jar for tests".to_owned(),
        visibility: Visibility::Private,
        tags: Vec::new(),
        settings: JarSettings {
            allow_search: true,
            allow_export: false,
            encryption_enabled: false,
        },
        shared_with: Vec::new(),
        wrapped_key: None,
        document_count: 0,
        embedding_count: 0,
        created_at: Timestamp(1_000),
        updated_at: Timestamp(1_000),
    }
}

/// A freshly uploaded (processing) document in `jar`, uploaded by its owner.
fn sample_document(jar: &HoneyJar) -> Document {
    Document {
        id: Uuid::new_v4(),
        jar_id: jar.id,
        uploader_id: jar.owner_id,
        filename: "handbook.pdf".to_owned(),
        title: "Handbook".to_owned(),
        description: "The staff handbook".to_owned(),
        tags: vec!["hr".to_owned()],
        size: 12_345,
        mime_type: "application/pdf".to_owned(),
        kind: "pdf".to_owned(),
        sha256: "ab".repeat(32),
        status: DocumentStatus::Processing,
        progress: 0,
        error: None,
        chunk_count: 0,
        embedding_count: 0,
        processing_ms: None,
        processing_attempts: 0,
        pages: None,
        word_count: 0,
        language: None,
        uploaded_at: Timestamp(1_000),
        updated_at: Timestamp(1_000),
    }
}

/// Chunk `seq` of document `document` in `jar`, with an embedding whose bits are awkward
/// (a negative zero, a subnormal) so that a lossy encoding shows.
fn sample_chunk(document: DocumentId, jar: JarId, seq: u32) -> Chunk {
    Chunk {
        document_id: document,
        jar_id: jar,
        seq,
        text: format!("chunk {seq} of {document}"),
        page: seq.is_multiple_of(2).then_some(seq / 2 + 1),
        section: seq.is_multiple_of(3).then(|| format!("Section {seq}")),
        token_count: 100 + seq,
        embedding: vec![seq as f32 / 3.0, -0.0, f32::MIN_POSITIVE / 2.0, -1.0],
    }
}

/// The embeddings' exact bits (`f32`'s `==` does not tell -0.0 from 0.0).
fn embedding_bits(chunks: &[Chunk]) -> Vec<Vec<u32>> {
    chunks
        .iter()
        .map(|c| c.embedding.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn jar_ids(jars: &[HoneyJar]) -> Vec<JarId> {
    jars.iter().map(|j| j.id).collect()
}

pub async fn jar_roundtrip_and_update(store: &dyn Store) {
    let (reader_b, reader_c) = (Uuid::new_v4(), Uuid::new_v4());
    let jar = HoneyJar {
        visibility: Visibility::Shared,
        tags: vec!["policies".to_owned(), "hr".to_owned()],
        settings: JarSettings {
            allow_search: false,
            allow_export: true,
            encryption_enabled: true,
        },
        shared_with: vec![reader_c, reader_b],
        wrapped_key: Some(vec![0, 1, 2, 255]),
        document_count: 2,
        embedding_count: 7,
        ..sample_jar(Uuid::new_v4())
    };
    store.create_jar(&jar).await.unwrap();
    assert_eq!(store.jar(jar.id).await.unwrap(), Some(jar.clone()));
    assert_eq!(store.jar(Uuid::new_v4()).await.unwrap(), None);

    let again = store
        .create_jar(&HoneyJar {
            name: "Usurper".to_owned(),
            ..jar.clone()
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.jar(jar.id).await.unwrap(), Some(jar.clone()));

    // Everything mutable changes; the owner, counts and creation time are not the caller's.
    let update = HoneyJar {
        owner_id: Uuid::new_v4(),
        name: "Renamed".to_owned(),
        description: "New description".to_owned(),
        visibility: Visibility::Public,
        tags: vec!["legal".to_owned()],
        settings: JarSettings {
            allow_search: true,
            allow_export: false,
            encryption_enabled: false,
        },
        shared_with: vec![reader_b],
        wrapped_key: None,
        document_count: 99,
        embedding_count: 99,
        created_at: Timestamp(5),
        updated_at: Timestamp(2_000),
        ..jar.clone()
    };
    store.update_jar(&update).await.unwrap();
    let expected = HoneyJar {
        owner_id: jar.owner_id,
        document_count: jar.document_count,
        embedding_count: jar.embedding_count,
        created_at: jar.created_at,
        ..update.clone()
    };
    assert_eq!(store.jar(jar.id).await.unwrap(), Some(expected));

    let unknown = store.update_jar(&sample_jar(Uuid::new_v4())).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound { .. })),
        "{unknown:?}"
    );
}

/// A jar's (document_count, embedding_count).
async fn jar_counts(store: &dyn Store, id: JarId) -> (u64, u64) {
    let jar = store.jar(id).await.unwrap().expect("jar exists");
    (jar.document_count, jar.embedding_count)
}

/// `document` as the pipeline saves it once processed into `count` chunks.
async fn save_processed(store: &dyn Store, document: &Document, count: u32) -> Document {
    let record = Document {
        status: DocumentStatus::Processed,
        progress: 100,
        chunk_count: count as u64,
        embedding_count: count as u64,
        ..document.clone()
    };
    let chunks: Vec<Chunk> = (0..count)
        .map(|seq| sample_chunk(document.id, document.jar_id, seq))
        .collect();
    store.save_chunks(&record, &chunks).await.unwrap();
    record
}

pub async fn jar_counts_follow_saved_chunks(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    let other = sample_jar(jar.owner_id);
    store.create_jar(&jar).await.unwrap();
    store.create_jar(&other).await.unwrap();
    let (a, b, elsewhere) = (
        sample_document(&jar),
        sample_document(&jar),
        sample_document(&other),
    );
    for doc in [&a, &b, &elsewhere] {
        store.create_document(doc).await.unwrap();
    }
    assert_eq!(
        jar_counts(store, jar.id).await,
        (0, 0),
        "uploads count nothing"
    );

    save_processed(store, &a, 3).await;
    assert_eq!(jar_counts(store, jar.id).await, (1, 3));
    // A retry of the same save counts nothing twice.
    save_processed(store, &a, 3).await;
    assert_eq!(jar_counts(store, jar.id).await, (1, 3), "after a re-save");

    save_processed(store, &b, 2).await;
    save_processed(store, &elsewhere, 4).await;
    assert_eq!(jar_counts(store, jar.id).await, (2, 5));
    assert_eq!(jar_counts(store, other.id).await, (1, 4));

    // Re-processed into fewer chunks: the counts move by the difference.
    save_processed(store, &a, 1).await;
    assert_eq!(
        jar_counts(store, jar.id).await,
        (2, 3),
        "after a shorter re-run"
    );
    // A re-run's progress writes its record back to processing; the chunks still count once.
    store.update_document(&a).await.unwrap();
    assert_eq!(jar_counts(store, jar.id).await, (2, 3), "record rewritten");
    save_processed(store, &a, 5).await;
    assert_eq!(
        jar_counts(store, jar.id).await,
        (2, 7),
        "after a longer re-run"
    );
    assert_eq!(
        jar_counts(store, other.id).await,
        (1, 4),
        "another jar is untouched"
    );
}

pub async fn deleting_a_document_takes_it_off_its_jar_counts(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let (kept, deleted, unprocessed) = (
        sample_document(&jar),
        sample_document(&jar),
        sample_document(&jar),
    );
    for doc in [&kept, &deleted, &unprocessed] {
        store.create_document(doc).await.unwrap();
    }
    save_processed(store, &kept, 2).await;
    let record = save_processed(store, &deleted, 3).await;
    assert_eq!(jar_counts(store, jar.id).await, (2, 5));

    store.delete_document(unprocessed.id).await.unwrap();
    assert_eq!(
        jar_counts(store, jar.id).await,
        (2, 5),
        "nothing to take off"
    );
    assert_eq!(
        store.delete_document(deleted.id).await.unwrap(),
        Some(record)
    );
    assert_eq!(jar_counts(store, jar.id).await, (1, 2));
    assert_eq!(store.delete_document(deleted.id).await.unwrap(), None);
    assert_eq!(jar_counts(store, jar.id).await, (1, 2), "deleted twice");
    // The pipeline's late save of the deleted document is refused and counts nothing.
    let late = store.save_chunks(&deleted, &[]).await;
    assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");
    assert_eq!(jar_counts(store, jar.id).await, (1, 2), "late save");

    store.delete_document(kept.id).await.unwrap();
    assert_eq!(jar_counts(store, jar.id).await, (0, 0));
}

pub async fn list_jars_filters_by_reader_visibility_owner_tag_search_and_pages(store: &dyn Store) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let tags = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let jar =
        |owner, visibility, shared_with: Vec<UserId>, created, name: &str, desc: &str| HoneyJar {
            visibility,
            shared_with,
            created_at: Timestamp(created),
            name: name.to_owned(),
            description: desc.to_owned(),
            ..sample_jar(owner)
        };
    let jars = [
        // Private: the share list is ignored.
        HoneyJar {
            tags: tags(&["hr"]),
            ..jar(
                a,
                Visibility::Private,
                vec![b],
                1_000,
                "Alpha notes",
                "first",
            )
        },
        HoneyJar {
            tags: tags(&["hr", "legal"]),
            ..jar(
                a,
                Visibility::Shared,
                vec![b],
                2_000,
                "Beta: 100% sure",
                "second",
            )
        },
        HoneyJar {
            tags: tags(&["legal"]),
            ..jar(
                a,
                Visibility::Public,
                vec![],
                3_000,
                "Gamma",
                "The HANDBOOK",
            )
        },
        HoneyJar {
            tags: tags(&["hr"]),
            ..jar(
                c,
                Visibility::Private,
                vec![],
                4_000,
                "Delta",
                "100 percent",
            )
        },
        // Shared, but not with b.
        jar(
            c,
            Visibility::Shared,
            vec![a],
            5_000,
            "Epsilon",
            "handbook draft",
        ),
    ];
    for jar in &jars {
        store.create_jar(jar).await.unwrap();
    }
    let all = Page {
        limit: 10,
        offset: 0,
    };
    let everything = JarQuery {
        reader: None,
        visibility: None,
        owner: None,
        tag: None,
        search: None,
        page: all,
    };

    // Complete records, newest first.
    let (listed, total) = store.list_jars(&everything).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(listed, jars.iter().rev().cloned().collect::<Vec<_>>());

    let search = |s: &str| Some(s.to_owned());
    let cases: Vec<(&str, JarQuery, Vec<usize>)> = vec![
        (
            "reader b: shared with b, public",
            JarQuery {
                reader: Some(b),
                ..everything.clone()
            },
            vec![2, 1],
        ),
        (
            "reader a: own, and shared with a",
            JarQuery {
                reader: Some(a),
                ..everything.clone()
            },
            vec![4, 2, 1, 0],
        ),
        (
            "reader c",
            JarQuery {
                reader: Some(c),
                ..everything.clone()
            },
            vec![4, 3, 2],
        ),
        (
            "a stranger: public only",
            JarQuery {
                reader: Some(Uuid::new_v4()),
                ..everything.clone()
            },
            vec![2],
        ),
        (
            "visibility shared",
            JarQuery {
                visibility: Some(Visibility::Shared),
                ..everything.clone()
            },
            vec![4, 1],
        ),
        (
            "owner a",
            JarQuery {
                owner: Some(a),
                ..everything.clone()
            },
            vec![2, 1, 0],
        ),
        (
            "owner c as read by a",
            JarQuery {
                reader: Some(a),
                owner: Some(c),
                ..everything.clone()
            },
            vec![4],
        ),
        (
            "tag hr",
            JarQuery {
                tag: search("hr"),
                ..everything.clone()
            },
            vec![3, 1, 0],
        ),
        (
            "tag hr as read by b",
            JarQuery {
                reader: Some(b),
                tag: search("hr"),
                ..everything.clone()
            },
            vec![1],
        ),
        (
            "unknown tag",
            JarQuery {
                tag: search("nope"),
                ..everything.clone()
            },
            vec![],
        ),
        (
            "search ignores case, in name or description",
            JarQuery {
                search: search("handbook"),
                ..everything.clone()
            },
            vec![4, 2],
        ),
        (
            "search by name",
            JarQuery {
                search: search("ALPHA"),
                ..everything.clone()
            },
            vec![0],
        ),
        (
            "search with a literal %",
            JarQuery {
                search: search("100%"),
                ..everything.clone()
            },
            vec![1],
        ),
        (
            "search with a literal _",
            JarQuery {
                search: search("a_"),
                ..everything.clone()
            },
            vec![],
        ),
        (
            "all filters at once",
            JarQuery {
                reader: Some(b),
                visibility: Some(Visibility::Shared),
                owner: Some(a),
                tag: search("legal"),
                search: search("beta"),
                page: all,
            },
            vec![1],
        ),
    ];
    for (name, query, expected) in cases {
        let (listed, total) = store.list_jars(&query).await.unwrap();
        let expected: Vec<JarId> = expected.iter().map(|&i| jars[i].id).collect();
        assert_eq!(jar_ids(&listed), expected, "{name}");
        assert_eq!(total, expected.len() as u64, "{name}");
    }

    let (page, total) = store
        .list_jars(&JarQuery {
            page: Page {
                limit: 2,
                offset: 1,
            },
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!((jar_ids(&page), total), (vec![jars[3].id, jars[2].id], 5));
    let (past_end, total) = store
        .list_jars(&JarQuery {
            page: Page {
                limit: 2,
                offset: 5,
            },
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!((past_end, total), (vec![], 5));
    let (page, total) = store
        .list_jars(&JarQuery {
            reader: Some(a),
            page: Page {
                limit: 1,
                offset: 1,
            },
            ..everything
        })
        .await
        .unwrap();
    assert_eq!((jar_ids(&page), total), (vec![jars[2].id], 4));
}

pub async fn readable_jars_follow_visibility(store: &dyn Store) {
    let (owner, reader) = (Uuid::new_v4(), Uuid::new_v4());
    let private = HoneyJar {
        created_at: Timestamp(1_000),
        ..sample_jar(owner)
    };
    let shared = HoneyJar {
        visibility: Visibility::Shared,
        shared_with: vec![Uuid::new_v4(), reader],
        created_at: Timestamp(2_000),
        ..sample_jar(owner)
    };
    let public = HoneyJar {
        visibility: Visibility::Public,
        created_at: Timestamp(3_000),
        ..sample_jar(owner)
    };
    let own = HoneyJar {
        created_at: Timestamp(4_000),
        ..sample_jar(reader)
    };
    for jar in [&private, &shared, &public, &own] {
        store.create_jar(jar).await.unwrap();
    }

    // Oldest first, complete records.
    assert_eq!(
        store.readable_jars(reader).await.unwrap(),
        vec![shared.clone(), public.clone(), own.clone()]
    );
    assert_eq!(
        jar_ids(&store.readable_jars(owner).await.unwrap()),
        vec![private.id, shared.id, public.id]
    );
    assert_eq!(
        jar_ids(&store.readable_jars(Uuid::new_v4()).await.unwrap()),
        vec![public.id]
    );

    // Unsharing takes the jar away; sharing a private one hands it over.
    store
        .update_jar(&HoneyJar {
            visibility: Visibility::Private,
            ..shared.clone()
        })
        .await
        .unwrap();
    store
        .update_jar(&HoneyJar {
            visibility: Visibility::Shared,
            shared_with: vec![reader],
            ..private.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        jar_ids(&store.readable_jars(reader).await.unwrap()),
        vec![private.id, public.id, own.id]
    );
}

pub async fn document_lifecycle(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();

    let orphan = sample_document(&sample_jar(jar.owner_id));
    let refused = store.create_document(&orphan).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::NotFound {
                entity: "honey jar"
            })
        ),
        "{refused:?}"
    );
    assert_eq!(store.document(orphan.id).await.unwrap(), None);

    let docs: Vec<Document> = (0..3)
        .map(|i| Document {
            uploaded_at: Timestamp(1_000 * (i + 1)),
            updated_at: Timestamp(1_000 * (i + 1)),
            filename: format!("doc-{i}.md"),
            tags: vec![format!("t{i}"), "all".to_owned()],
            ..sample_document(&jar)
        })
        .collect();
    for doc in &docs {
        store.create_document(doc).await.unwrap();
    }
    let other_jar = sample_jar(jar.owner_id);
    store.create_jar(&other_jar).await.unwrap();
    let elsewhere = sample_document(&other_jar);
    store.create_document(&elsewhere).await.unwrap();
    assert_eq!(
        store.document(docs[0].id).await.unwrap(),
        Some(docs[0].clone())
    );
    assert_eq!(store.document(Uuid::new_v4()).await.unwrap(), None);

    let again = store
        .create_document(&Document {
            title: "Usurper".to_owned(),
            ..docs[0].clone()
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        store.document(docs[0].id).await.unwrap(),
        Some(docs[0].clone())
    );

    let processed = Document {
        title: "Processed".to_owned(),
        description: "Now with text".to_owned(),
        tags: vec!["done".to_owned()],
        status: DocumentStatus::Processed,
        progress: 100,
        chunk_count: 4,
        embedding_count: 4,
        processing_ms: Some(1_234),
        processing_attempts: 2,
        pages: Some(3),
        word_count: 900,
        language: Some("en".to_owned()),
        updated_at: Timestamp(9_000),
        ..docs[1].clone()
    };
    store.update_document(&processed).await.unwrap();
    assert_eq!(
        store.document(processed.id).await.unwrap(),
        Some(processed.clone())
    );
    let failed = Document {
        status: DocumentStatus::Failed,
        error: Some("unreadable".to_owned()),
        ..docs[2].clone()
    };
    store.update_document(&failed).await.unwrap();
    assert_eq!(
        store.document(failed.id).await.unwrap(),
        Some(failed.clone())
    );
    let unknown = store.update_document(&sample_document(&jar)).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound { entity: "document" })),
        "{unknown:?}"
    );

    // Newest first, this jar only.
    let (page, total) = store
        .list_documents(
            jar.id,
            Page {
                limit: 2,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!((page, total), (vec![failed.clone(), processed.clone()], 3));
    let (page, total) = store
        .list_documents(
            jar.id,
            Page {
                limit: 2,
                offset: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!((page, total), (vec![docs[0].clone()], 3));

    // Oldest first, across jars.
    let mut processing = vec![docs[0].clone(), elsewhere.clone()];
    processing.sort_by_key(|d| (d.uploaded_at, d.id));
    assert_eq!(
        store
            .documents_with_status(DocumentStatus::Processing, 10)
            .await
            .unwrap(),
        processing
    );
    assert_eq!(
        store
            .documents_with_status(DocumentStatus::Processing, 1)
            .await
            .unwrap(),
        processing[..1]
    );
    assert_eq!(
        store
            .documents_with_status(DocumentStatus::Failed, 10)
            .await
            .unwrap(),
        vec![failed]
    );

    assert_eq!(
        store.delete_document(docs[0].id).await.unwrap(),
        Some(docs[0].clone())
    );
    assert_eq!(store.delete_document(docs[0].id).await.unwrap(), None);
    assert_eq!(store.document(docs[0].id).await.unwrap(), None);
    let late = store.update_document(&docs[0]).await;
    assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");
    assert_eq!(store.document(docs[0].id).await.unwrap(), None);
    let (_, total) = store
        .list_documents(
            jar.id,
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 2);
}

pub async fn save_chunks_replaces_and_refuses_deleted_documents(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let doc = sample_document(&jar);
    store.create_document(&doc).await.unwrap();

    let first: Vec<Chunk> = (0..3)
        .map(|seq| sample_chunk(doc.id, jar.id, seq))
        .collect();
    let mut record = Document {
        status: DocumentStatus::Processed,
        progress: 100,
        chunk_count: 3,
        embedding_count: 3,
        updated_at: Timestamp(2_000),
        ..doc.clone()
    };
    store.save_chunks(&record, &first).await.unwrap();
    let stored = store.document_chunks(doc.id).await.unwrap();
    assert_eq!(stored, first);
    assert_eq!(embedding_bits(&stored), embedding_bits(&first));
    assert_eq!(store.document(doc.id).await.unwrap(), Some(record.clone()));

    // A re-run replaces every chunk, even those past its new end.
    let second: Vec<Chunk> = (0..2)
        .map(|seq| Chunk {
            text: format!("re-run {seq}"),
            embedding: vec![0.5, seq as f32],
            ..sample_chunk(doc.id, jar.id, seq)
        })
        .collect();
    record.chunk_count = 2;
    record.embedding_count = 2;
    record.updated_at = Timestamp(3_000);
    store.save_chunks(&record, &second).await.unwrap();
    let stored = store.document_chunks(doc.id).await.unwrap();
    assert_eq!(stored, second);
    assert_eq!(embedding_bits(&stored), embedding_bits(&second));
    assert_eq!(store.document(doc.id).await.unwrap(), Some(record.clone()));

    // A chunk of another document is refused before anything is written.
    let stray = [
        sample_chunk(doc.id, jar.id, 0),
        sample_chunk(Uuid::new_v4(), jar.id, 1),
    ];
    let refused = store
        .save_chunks(
            &Document {
                chunk_count: 9,
                ..record.clone()
            },
            &stray,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Internal(_))),
        "{refused:?}"
    );
    assert_eq!(store.document_chunks(doc.id).await.unwrap(), second);
    assert_eq!(store.document(doc.id).await.unwrap(), Some(record.clone()));

    // Deleted meanwhile: the pipeline's late write is refused and leaves nothing behind.
    store.delete_document(doc.id).await.unwrap();
    assert!(store.document_chunks(doc.id).await.unwrap().is_empty());
    let late = store.save_chunks(&record, &first).await;
    assert!(
        matches!(late, Err(StoreError::NotFound { entity: "document" })),
        "{late:?}"
    );
    assert_eq!(store.document(doc.id).await.unwrap(), None);
    assert!(store.document_chunks(doc.id).await.unwrap().is_empty());
    assert!(store
        .jar_chunks(jar.id, None, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn jar_chunks_pages_with_a_cursor(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    let other = sample_jar(jar.owner_id);
    let mut expected = Vec::new();
    for j in [&jar, &other] {
        store.create_jar(j).await.unwrap();
        for chunks in [3, 4] {
            let doc = sample_document(j);
            store.create_document(&doc).await.unwrap();
            let chunks: Vec<Chunk> = (0..chunks)
                .map(|seq| sample_chunk(doc.id, j.id, seq))
                .collect();
            store.save_chunks(&doc, &chunks).await.unwrap();
            if j.id == jar.id {
                expected.extend(chunks);
            }
        }
    }

    let everything = store.jar_chunks(jar.id, None, 100).await.unwrap();
    // Ordered by (document_id, seq): each document's chunks together and in order.
    let key = |c: &Chunk| (c.document_id, c.seq);
    let mut sorted = expected.clone();
    sorted.sort_by_key(key);
    let mut got_sorted = everything.clone();
    got_sorted.sort_by_key(key);
    assert_eq!(got_sorted, sorted, "exactly this jar's chunks");
    let mut seen_documents: Vec<DocumentId> = Vec::new();
    for pair in everything.windows(2) {
        if pair[0].document_id == pair[1].document_id {
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        } else {
            seen_documents.push(pair[0].document_id);
            assert!(!seen_documents.contains(&pair[1].document_id));
        }
    }

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.jar_chunks(jar.id, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.document_id, last.seq));
        paged.extend(page);
        assert!(paged.len() <= expected.len(), "pages repeat chunks");
    }
    assert_eq!(paged, everything);
    assert_eq!(embedding_bits(&paged), embedding_bits(&everything));
    assert!(store
        .jar_chunks(Uuid::new_v4(), None, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn delete_jar_cascades(store: &dyn Store) {
    let reader = Uuid::new_v4();
    let doomed = HoneyJar {
        visibility: Visibility::Shared,
        shared_with: vec![reader],
        tags: vec!["hr".to_owned()],
        ..sample_jar(Uuid::new_v4())
    };
    let kept = HoneyJar {
        tags: vec!["hr".to_owned()],
        ..sample_jar(doomed.owner_id)
    };
    let mut documents = Vec::new();
    for jar in [&doomed, &kept] {
        store.create_jar(jar).await.unwrap();
        for _ in 0..2 {
            let doc = sample_document(jar);
            store.create_document(&doc).await.unwrap();
            let chunks: Vec<Chunk> = (0..2)
                .map(|seq| sample_chunk(doc.id, jar.id, seq))
                .collect();
            store.save_chunks(&doc, &chunks).await.unwrap();
            documents.push((doc, chunks));
        }
    }

    assert!(store.delete_jar(doomed.id).await.unwrap());
    assert_eq!(store.jar(doomed.id).await.unwrap(), None);
    for (doc, _) in &documents[..2] {
        assert_eq!(store.document(doc.id).await.unwrap(), None);
        assert!(store.document_chunks(doc.id).await.unwrap().is_empty());
    }
    assert!(store
        .jar_chunks(doomed.id, None, 100)
        .await
        .unwrap()
        .is_empty());
    let all = Page {
        limit: 10,
        offset: 0,
    };
    assert_eq!(
        store.list_documents(doomed.id, all).await.unwrap(),
        (vec![], 0)
    );
    assert!(store.readable_jars(reader).await.unwrap().is_empty());
    let (listed, total) = store
        .list_jars(&JarQuery {
            reader: None,
            visibility: None,
            owner: None,
            tag: Some("hr".to_owned()),
            search: None,
            page: all,
        })
        .await
        .unwrap();
    // The other jar is untouched, counting its two documents of two chunks.
    let kept = HoneyJar {
        document_count: 2,
        embedding_count: 4,
        ..kept
    };
    assert_eq!((listed, total), (vec![kept.clone()], 1));
    assert!(!store.delete_jar(doomed.id).await.unwrap());
    let late = store.create_document(&sample_document(&doomed)).await;
    assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");

    assert_eq!(store.jar(kept.id).await.unwrap(), Some(kept.clone()));
    for (doc, chunks) in &documents[2..] {
        assert_eq!(store.document(doc.id).await.unwrap(), Some(doc.clone()));
        assert_eq!(&store.document_chunks(doc.id).await.unwrap(), chunks);
    }
    assert_eq!(store.jar_chunks(kept.id, None, 100).await.unwrap().len(), 4);
}

// ---- marketplace ----

fn sample_listing(jar: &HoneyJar, price_minor: i64, category: &str, created: i64) -> Listing {
    Listing {
        id: Uuid::new_v4(),
        jar_id: jar.id,
        seller_id: jar.owner_id,
        title: format!("Jar for {category}"),
        description: "Curated knowledge".to_owned(),
        price_minor,
        currency: "USD".to_owned(),
        category: category.to_owned(),
        license_type: LicenseType::SingleUse,
        preview_enabled: true,
        status: ListingStatus::Active,
        rating_sum: 0,
        rating_count: 0,
        created_at: Timestamp(created),
        updated_at: Timestamp(created),
    }
}

fn sample_order(listing: &Listing, buyer: UserId, key: &str) -> Order {
    Order {
        id: Uuid::new_v4(),
        listing_id: listing.id,
        jar_id: listing.jar_id,
        buyer_id: buyer,
        idempotency_key: key.to_owned(),
        amount_minor: listing.price_minor,
        currency: listing.currency.clone(),
        license_type: listing.license_type,
        payment_method: "invoice".to_owned(),
        billing: "{}".to_owned(),
        status: OrderStatus::PendingInvoice,
        created_at: Timestamp(5_000),
        paid_at: None,
    }
}

pub(crate) fn listing_query(sort: ListingSort, order: SortOrder) -> ListingQuery {
    ListingQuery {
        category: None,
        price_min_minor: None,
        price_max_minor: None,
        rating_min_centi: None,
        search: None,
        sort,
        order,
        page: Page {
            limit: 50,
            offset: 0,
        },
    }
}

fn listing_ids(listings: &[Listing]) -> Vec<ListingId> {
    listings.iter().map(|l| l.id).collect()
}

pub async fn listings_filter_sort_and_page(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let cheap = sample_listing(&jar, 999, "business", 1);
    let middle = sample_listing(&jar, 4_950, "science", 2);
    let dear = sample_listing(&jar, 9_999, "business", 3);
    for listing in [&cheap, &middle, &dear] {
        store.create_listing(listing).await.unwrap();
    }
    assert!(matches!(
        store.create_listing(&cheap).await,
        Err(StoreError::Conflict(_))
    ));
    let orphan = sample_listing(&sample_jar(jar.owner_id), 1, "x", 4);
    assert!(matches!(
        store.create_listing(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.listing(cheap.id).await.unwrap(), Some(cheap.clone()));

    let by_price = listing_query(ListingSort::Price, SortOrder::Asc);
    let (all, total) = store.list_listings(&by_price).await.unwrap();
    assert_eq!(listing_ids(&all), [cheap.id, middle.id, dear.id]);
    assert_eq!(total, 3);
    let newest = listing_query(ListingSort::CreatedAt, SortOrder::Desc);
    let (all, _) = store.list_listings(&newest).await.unwrap();
    assert_eq!(listing_ids(&all), [dear.id, middle.id, cheap.id]);

    let business = ListingQuery {
        category: Some("business".into()),
        price_min_minor: Some(1_000),
        ..by_price.clone()
    };
    let (found, total) = store.list_listings(&business).await.unwrap();
    assert_eq!((listing_ids(&found), total), (vec![dear.id], 1));
    let cheap_only = ListingQuery {
        price_max_minor: Some(999),
        ..by_price.clone()
    };
    assert_eq!(
        listing_ids(&store.list_listings(&cheap_only).await.unwrap().0),
        [cheap.id]
    );
    let search = ListingQuery {
        search: Some("SCIENCE".into()),
        ..by_price.clone()
    };
    assert_eq!(
        listing_ids(&store.list_listings(&search).await.unwrap().0),
        [middle.id]
    );
    let second_page = ListingQuery {
        page: Page {
            limit: 1,
            offset: 1,
        },
        ..by_price.clone()
    };
    let (page, total) = store.list_listings(&second_page).await.unwrap();
    assert_eq!((listing_ids(&page), total), (vec![middle.id], 3));

    // A withdrawn listing is readable but no longer listed; updates leave ratings alone.
    let withdrawn = Listing {
        status: ListingStatus::Withdrawn,
        title: "Gone".into(),
        rating_sum: 99,
        updated_at: Timestamp(10),
        ..middle.clone()
    };
    store.update_listing(&withdrawn).await.unwrap();
    let stored = store.listing(middle.id).await.unwrap().unwrap();
    assert_eq!((stored.title.as_str(), stored.rating_sum), ("Gone", 0));
    let (all, total) = store.list_listings(&by_price).await.unwrap();
    assert_eq!((listing_ids(&all), total), (vec![cheap.id, dear.id], 2));
    let unknown = sample_listing(&jar, 1, "x", 1);
    assert!(matches!(
        store.update_listing(&unknown).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn orders_are_idempotent_per_key(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let listing = sample_listing(&jar, 2_500, "business", 1);
    store.create_listing(&listing).await.unwrap();
    let buyer = Uuid::new_v4();

    let first = store
        .place_order(&sample_order(&listing, buyer, "key-1"))
        .await
        .unwrap();
    // A retry with the same key, whatever else it says, is the first order again.
    let retry = Order {
        amount_minor: 1,
        ..sample_order(&listing, buyer, "key-1")
    };
    assert_eq!(store.place_order(&retry).await.unwrap(), first);
    // Another key for a listing the buyer already ordered is a conflict.
    assert!(matches!(
        store
            .place_order(&sample_order(&listing, buyer, "key-2"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // The same key from another buyer is another order.
    let other = store
        .place_order(&sample_order(&listing, Uuid::new_v4(), "key-1"))
        .await
        .unwrap();
    assert_ne!(other.id, first.id);

    assert!(store.licenses_of(buyer).await.unwrap().is_empty(), "unpaid");
    let paid = store
        .mark_order_paid(first.id, Timestamp(6_000))
        .await
        .unwrap();
    assert_eq!(
        (paid.status, paid.paid_at),
        (OrderStatus::Paid, Some(Timestamp(6_000)))
    );
    let again = store
        .mark_order_paid(first.id, Timestamp(7_000))
        .await
        .unwrap();
    assert_eq!(
        again.paid_at,
        Some(Timestamp(6_000)),
        "paying twice changes nothing"
    );
    let licenses = store.licenses_of(buyer).await.unwrap();
    assert_eq!(licenses.len(), 1);
    assert_eq!(
        (licenses[0].jar_id, licenses[0].granted_at),
        (jar.id, Timestamp(6_000))
    );
    assert_eq!(store.order(first.id).await.unwrap(), Some(paid));
    let (orders, total) = store
        .orders_of(
            buyer,
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!((orders.len(), total), (1, 1));
    assert!(matches!(
        store.mark_order_paid(Uuid::new_v4(), Timestamp(1)).await,
        Err(StoreError::NotFound { .. })
    ));
    // The admins' queue: the other buyer's order still waits; both are listed without a filter.
    let page = Page {
        limit: 10,
        offset: 0,
    };
    let (pending, total) = store
        .list_orders(Some(OrderStatus::PendingInvoice), page)
        .await
        .unwrap();
    assert_eq!(
        (pending.iter().map(|o| o.id).collect::<Vec<_>>(), total),
        (vec![other.id], 1)
    );
    assert_eq!(store.list_orders(None, page).await.unwrap().1, 2);
}

/// Records whose derived rows add up to more than a batch may carry over several partitions
/// (Cassandra refuses one above 50 KiB by default): a jar shared with 2,000 readers and
/// tagged 100 times, and an order with 100 KB of billing details, copied to three read tables.
pub async fn large_records_and_many_index_entries_are_written(store: &dyn Store) {
    let owner = Uuid::new_v4();
    let readers: Vec<UserId> = (0..2_000).map(|_| Uuid::new_v4()).collect();
    let tags: Vec<String> = (0..100)
        .map(|i| format!("tag-{i:03}-{}", "t".repeat(50)))
        .collect();
    let jar = HoneyJar {
        visibility: Visibility::Shared,
        shared_with: readers.clone(),
        tags: tags.clone(),
        ..sample_jar(owner)
    };
    store.create_jar(&jar).await.unwrap();
    let ids = |jars: Vec<HoneyJar>| jars.into_iter().map(|j| j.id).collect::<Vec<_>>();
    for reader in [readers[0], readers[1_999]] {
        assert_eq!(
            ids(store.readable_jars(reader).await.unwrap()),
            vec![jar.id]
        );
    }
    let tagged = |tag: &str| JarQuery {
        reader: None,
        visibility: None,
        owner: None,
        tag: Some(tag.to_owned()),
        search: None,
        page: Page {
            limit: 10,
            offset: 0,
        },
    };
    let (found, total) = store.list_jars(&tagged(&tags[99])).await.unwrap();
    assert_eq!((ids(found), total), (vec![jar.id], 1));
    // Narrowed to one reader and one tag: every other entry goes.
    let narrowed = HoneyJar {
        shared_with: vec![readers[0]],
        tags: vec![tags[0].clone()],
        ..jar.clone()
    };
    store.update_jar(&narrowed).await.unwrap();
    assert_eq!(
        ids(store.readable_jars(readers[0]).await.unwrap()),
        vec![jar.id]
    );
    assert!(store
        .readable_jars(readers[1_999])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.list_jars(&tagged(&tags[99])).await.unwrap().1, 0);
    assert_eq!(store.list_jars(&tagged(&tags[0])).await.unwrap().1, 1);

    let listing = sample_listing(&jar, 2_500, "business", 1);
    store.create_listing(&listing).await.unwrap();
    let buyer = Uuid::new_v4();
    let billing = serde_json::json!({
        "name": "A buyer",
        "email": "buyer@example.com",
        "notes": "n".repeat(100_000),
    })
    .to_string();
    let order = Order {
        billing: billing.clone(),
        ..sample_order(&listing, buyer, "key-large")
    };
    let placed = store.place_order(&order).await.unwrap();
    assert_eq!(placed.billing, billing);
    let page = Page {
        limit: 10,
        offset: 0,
    };
    let (pending, _) = store
        .list_orders(Some(OrderStatus::PendingInvoice), page)
        .await
        .unwrap();
    assert_eq!(pending, vec![placed.clone()]);
    let paid = store
        .mark_order_paid(placed.id, Timestamp(6_000))
        .await
        .unwrap();
    assert_eq!(paid.billing, billing);
    assert_eq!(
        store.orders_of(buyer, page).await.unwrap(),
        (vec![paid.clone()], 1)
    );
    assert_eq!(
        store
            .list_orders(Some(OrderStatus::Paid), page)
            .await
            .unwrap(),
        (vec![paid.clone()], 1)
    );
    assert_eq!(
        store
            .list_orders(Some(OrderStatus::PendingInvoice), page)
            .await
            .unwrap()
            .1,
        0,
        "the paid order left the queue"
    );
    assert_eq!(store.licenses_of(buyer).await.unwrap().len(), 1);
}

pub async fn ratings_replace_and_move_the_mean(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let rated = sample_listing(&jar, 100, "a", 1);
    let better = sample_listing(&jar, 100, "a", 2);
    let unrated = sample_listing(&jar, 100, "a", 3);
    for listing in [&rated, &better, &unrated] {
        store.create_listing(listing).await.unwrap();
    }
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .rate_listing(rated.id, ann, 5, Timestamp(1))
        .await
        .unwrap();
    let changed = store
        .rate_listing(rated.id, ann, 3, Timestamp(2))
        .await
        .unwrap();
    assert_eq!((changed.rating_sum, changed.rating_count), (3, 1));
    let two = store
        .rate_listing(rated.id, bob, 4, Timestamp(3))
        .await
        .unwrap();
    assert_eq!((two.rating_sum, two.rating_count), (7, 2));
    store
        .rate_listing(better.id, ann, 5, Timestamp(4))
        .await
        .unwrap();
    assert!(matches!(
        store
            .rate_listing(Uuid::new_v4(), ann, 5, Timestamp(5))
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let best_first = listing_query(ListingSort::Rating, SortOrder::Desc);
    assert_eq!(
        listing_ids(&store.list_listings(&best_first).await.unwrap().0),
        [better.id, rated.id, unrated.id],
        "unrated last"
    );
    let worst_first = listing_query(ListingSort::Rating, SortOrder::Asc);
    assert_eq!(
        listing_ids(&store.list_listings(&worst_first).await.unwrap().0),
        [rated.id, better.id, unrated.id]
    );
    let at_least = ListingQuery {
        rating_min_centi: Some(350),
        ..best_first
    };
    // 3.5 exactly counts; unrated never matches a minimum.
    assert_eq!(
        listing_ids(&store.list_listings(&at_least).await.unwrap().0),
        [better.id, rated.id]
    );
}

pub async fn deleting_a_jar_withdraws_its_listings(store: &dyn Store) {
    let jar = sample_jar(Uuid::new_v4());
    store.create_jar(&jar).await.unwrap();
    let listing = sample_listing(&jar, 100, "a", 1);
    store.create_listing(&listing).await.unwrap();
    let buyer = Uuid::new_v4();
    let order = store
        .place_order(&sample_order(&listing, buyer, "k"))
        .await
        .unwrap();
    store
        .rate_listing(listing.id, buyer, 4, Timestamp(1))
        .await
        .unwrap();
    assert!(store.delete_jar(jar.id).await.unwrap());
    assert_eq!(store.listing(listing.id).await.unwrap(), None);
    assert_eq!(
        store.order(order.id).await.unwrap(),
        Some(order),
        "orders stay as the buyer's history"
    );
}

fn sample_passkey(credential_id: &str, user_id: UserId, created: i64) -> Passkey {
    Passkey {
        credential_id: credential_id.to_owned(),
        user_id,
        user_handle: "aGFuZGxl".to_owned(),
        name: format!("key {credential_id}"),
        public_key: r#"{"type_":"ES256"}"#.to_owned(),
        sign_count: 0,
        transports: vec!["usb".to_owned(), "internal".to_owned()],
        credential: format!(r#"{{"cred_id":"{credential_id}"}}"#),
        created_at: Timestamp(created),
        last_used_at: None,
    }
}

pub async fn passkeys_belong_to_one_account(store: &dyn Store) {
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let first = sample_passkey("cred-1", ann, 10);
    let second = sample_passkey("cred-2", ann, 20);
    store.create_passkey(&second).await.unwrap();
    store.create_passkey(&first).await.unwrap();
    assert_eq!(store.passkey("cred-1").await.unwrap(), Some(first.clone()));
    assert_eq!(
        store.passkeys_of(ann).await.unwrap(),
        [first.clone(), second.clone()],
        "oldest first"
    );
    assert!(store.passkeys_of(bob).await.unwrap().is_empty());
    // The same credential cannot be registered again, by anyone.
    let stolen = sample_passkey("cred-1", bob, 30);
    assert!(matches!(
        store.create_passkey(&stolen).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.passkey("cred-1").await.unwrap().unwrap().user_id, ann);
    // Only the owner deletes it.
    assert!(!store.delete_passkey(bob, "cred-1").await.unwrap());
    assert!(store.delete_passkey(ann, "cred-1").await.unwrap());
    assert!(!store.delete_passkey(ann, "cred-1").await.unwrap());
    assert_eq!(store.passkey("cred-1").await.unwrap(), None);
    assert_eq!(store.passkeys_of(ann).await.unwrap(), [second]);
}

pub async fn passkey_counter_only_moves_up(store: &dyn Store) {
    let user = Uuid::new_v4();
    store
        .create_passkey(&sample_passkey("counted", user, 1))
        .await
        .unwrap();
    store
        .create_passkey(&sample_passkey("counterless", user, 2))
        .await
        .unwrap();
    store
        .record_passkey_use("counted", 5, "v5", Timestamp(100))
        .await
        .unwrap();
    for stale in [5, 4, 0] {
        assert!(
            matches!(
                store
                    .record_passkey_use("counted", stale, "old", Timestamp(200))
                    .await,
                Err(StoreError::Conflict(_))
            ),
            "counter {stale} after 5"
        );
    }
    let stored = store.passkey("counted").await.unwrap().unwrap();
    assert_eq!(
        (
            stored.sign_count,
            stored.credential.as_str(),
            stored.last_used_at
        ),
        (5, "v5", Some(Timestamp(100))),
        "a refused use changes nothing"
    );
    // An authenticator without a counter always reports 0.
    for at in [300, 400] {
        store
            .record_passkey_use("counterless", 0, "same", Timestamp(at))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .passkey("counterless")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(Timestamp(400))
    );
    assert!(matches!(
        store
            .record_passkey_use("gone", 1, "x", Timestamp(500))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn ceremonies_are_single_use_and_expire(store: &dyn Store) {
    let ceremony = |id: &str, expires_at: i64| Ceremony {
        id: id.to_owned(),
        kind: CeremonyKind::Authentication,
        user_id: Uuid::nil(),
        binding: String::new(),
        state: format!("state of {id}"),
        expires_at: Timestamp(expires_at),
    };
    let login = ceremony("login", 1_000);
    store.put_ceremony(&login, Timestamp(0)).await.unwrap();
    assert_eq!(
        store.take_ceremony("login", Timestamp(999)).await.unwrap(),
        Some(login.clone())
    );
    assert_eq!(
        store.take_ceremony("login", Timestamp(999)).await.unwrap(),
        None,
        "a challenge is answered once"
    );

    // A new challenge under the same id replaces the old one.
    let registration = Ceremony {
        kind: CeremonyKind::Registration,
        binding: "session-hash".to_owned(),
        ..ceremony("registration", 1_000)
    };
    store
        .put_ceremony(&registration, Timestamp(0))
        .await
        .unwrap();
    let renewed = Ceremony {
        state: "second".to_owned(),
        ..registration.clone()
    };
    store.put_ceremony(&renewed, Timestamp(10)).await.unwrap();
    assert_eq!(
        store
            .take_ceremony("registration", Timestamp(20))
            .await
            .unwrap(),
        Some(renewed)
    );

    // Expired: never handed out, and gone once taken.
    store
        .put_ceremony(&ceremony("late", 1_000), Timestamp(0))
        .await
        .unwrap();
    assert_eq!(
        store.take_ceremony("late", Timestamp(1_000)).await.unwrap(),
        None
    );
}

/// A small embedded deployment with a record in every table the copy moves: two users with a
/// session and a passkey, a jar with two documents (one processed into chunks), a listing
/// bought, paid and rated, a withdrawn listing, and a conversation longer than one save.
async fn populated_sqlite(dir: &std::path::Path) -> SqliteStore {
    let source = SqliteStore::open(dir.join("source.db")).await.unwrap();
    let seller = sample_user("seller@example.com");
    let buyer = sample_user("buyer@example.com");
    for user in [&seller, &buyer] {
        source.create_user(user).await.unwrap();
    }
    source
        .create_session(&sample_session(&buyer, &"5e".repeat(32), 9_000_000_000_000))
        .await
        .unwrap();
    source
        .create_passkey(&sample_passkey("cred-1", buyer.id, 2_000))
        .await
        .unwrap();
    let jar = HoneyJar {
        visibility: Visibility::Shared,
        tags: vec!["docs".to_owned()],
        shared_with: vec![buyer.id],
        wrapped_key: Some(vec![1, 2, 3]),
        ..sample_jar(seller.id)
    };
    source.create_jar(&jar).await.unwrap();
    let processed = sample_document(&jar);
    source.create_document(&processed).await.unwrap();
    save_processed(&source, &processed, 5).await;
    source
        .create_document(&sample_document(&jar))
        .await
        .unwrap();
    let listing = sample_listing(&jar, 1_500, "docs", 3_000);
    source.create_listing(&listing).await.unwrap();
    let withdrawn = sample_listing(&jar, 900, "docs", 3_100);
    source.create_listing(&withdrawn).await.unwrap();
    source
        .update_listing(&Listing {
            status: ListingStatus::Withdrawn,
            ..withdrawn
        })
        .await
        .unwrap();
    let order = source
        .place_order(&sample_order(&listing, buyer.id, "key-1"))
        .await
        .unwrap();
    source
        .mark_order_paid(order.id, Timestamp(6_000))
        .await
        .unwrap();
    // Paid only after the first copy (see below).
    source
        .place_order(&sample_order(&listing, seller.id, "key-2"))
        .await
        .unwrap();
    source
        .rate_listing(listing.id, buyer.id, 4, Timestamp(7_000))
        .await
        .unwrap();
    let mut conversation = sample_conversation(buyer.id, Uuid::new_v4());
    let messages: Vec<Message> = (1..=250)
        .map(|seq| sample_message(conversation.id, seq, MessageRole::User))
        .collect();
    conversation.message_count = 250;
    conversation.last_message = "message 250".to_owned();
    let lease = create_conversation(&source, &conversation, &messages).await;
    source.release_lease(&lease).await.unwrap();
    source
}

/// `sting store copy`: every record arrives, a copy stopped midway resumes from its checkpoint
/// and ends in the same state, and the verification names what differs.
pub async fn copy_moves_everything_and_resumes(target: &dyn Store) {
    let dir = tempfile::tempdir().unwrap();
    let source = populated_sqlite(dir.path()).await;
    let checkpoint = dir.path().join("copy.json");

    // Stopped once the jars are copied: the future is dropped, as by Ctrl-C or a crash.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop = Some(stop);
    let mut report = |progress: crate::copy::Progress| {
        if progress.stage == crate::copy::Stage::Jars {
            stop.take().map(|stop| stop.send(()));
        }
    };
    tokio::select! {
        result = crate::copy::copy(&source, target, "target", &checkpoint, &mut report) => {
            panic!("the copy should have been stopped: {result:?}")
        }
        _ = stopped => {}
    }
    let saved: crate::copy::Checkpoint =
        serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(
        saved.stage,
        Some(crate::copy::Stage::Documents),
        "{saved:?}"
    );
    let partial = crate::copy::verify(&source, target).await.unwrap();
    let differs: Vec<_> = partial
        .iter()
        .filter(|t| !t.matches())
        .map(|t| t.table)
        .collect();
    assert!(differs.contains(&"documents") && differs.contains(&"conversations"));

    let mut stages = Vec::new();
    let mut record = |progress: crate::copy::Progress| stages.push(progress.stage);
    crate::copy::copy(&source, target, "target", &checkpoint, &mut record)
        .await
        .unwrap();
    assert_eq!(
        stages.first(),
        Some(&crate::copy::Stage::Documents),
        "resumed where it stopped"
    );
    let checks = crate::copy::verify(&source, target).await.unwrap();
    for check in &checks {
        assert!(check.matches(), "{check:?}");
        assert!(check.source_count > 0, "{check:?}");
    }
    let messages = checks.iter().find(|c| c.table == "messages").unwrap();
    assert_eq!(messages.target_count, 250);

    // Again from the start (another target name): every write repeats harmlessly, and what
    // changed in the source since (an invoice paid) arrives.
    let (pending, _) = source
        .list_orders(
            Some(OrderStatus::PendingInvoice),
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    source
        .mark_order_paid(pending[0].id, Timestamp(8_000))
        .await
        .unwrap();
    crate::copy::copy(&source, target, "target-again", &checkpoint, &mut |_| {})
        .await
        .unwrap();
    let checks = crate::copy::verify(&source, target).await.unwrap();
    assert!(checks.iter().all(|check| check.matches()), "{checks:?}");
    assert_eq!(
        target.order(pending[0].id).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );

    // A difference is found and named.
    let (jars, _) = source
        .list_jars(&JarQuery {
            reader: None,
            visibility: None,
            owner: None,
            tag: None,
            search: None,
            page: Page {
                limit: 10,
                offset: 0,
            },
        })
        .await
        .unwrap();
    let mut renamed = jars[0].clone();
    renamed.name = "Renamed on the target".to_owned();
    target.update_jar(&renamed).await.unwrap();
    let checks = crate::copy::verify(&source, target).await.unwrap();
    let jars = checks.iter().find(|c| c.table == "jars").unwrap();
    assert!(!jars.matches());
    assert_eq!(
        jars.first_difference,
        Some(format!("{:?} differs", renamed.id))
    );
}
