//! The store contract suite: one async fn per behaviour, written once against `&dyn Store`.
//! Each backend runs all of them through [`store_test_suite!`](crate::store_test_suite).

use uuid::Uuid;

use crate::{Lease, Page, Role, Session, Store, StoreError, Timestamp, User};

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
            concurrent_acquires_elect_one_owner);
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
