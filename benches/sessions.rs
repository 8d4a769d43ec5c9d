//! Authenticating a request: through the live session actor (the edge's path) versus reading
//! the session and user from the SQLite store each time (what the actor saves).
//!
//! Run: `cargo bench --bench sessions`. Compare the two lines of the same run: the ratio is the
//! figure, absolute times vary with the machine's load.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sting_actors::session::{token_hash, SessionPolicy, SessionRegistry};
use sting_store::{Role, Session, SqliteStore, Store, Timestamp, User};
use uuid::Uuid;

fn authenticate(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (registry, store, token) = runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .unwrap(),
        );
        let now = Timestamp::now();
        let user = User {
            id: Uuid::new_v4(),
            email: "bench@example.com".into(),
            name: "Bench".into(),
            password_hash: "unused".into(),
            role: Role::User,
            active: true,
            created_at: now,
            updated_at: now,
        };
        store.create_user(&user).await.unwrap();
        let token = "bench-token".to_owned();
        store
            .create_session(&Session {
                id: Uuid::new_v4(),
                token_hash: token_hash(&token),
                user_id: user.id,
                created_at: now,
                expires_at: now.plus_ms(3_600_000),
                last_seen_at: now,
            })
            .await
            .unwrap();
        let policy = SessionPolicy {
            idle_ttl: Duration::from_secs(3600),
            absolute_ttl: Duration::from_secs(86_400),
            renew_interval: Duration::from_secs(60),
            revalidate_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        };
        let (registry, _) = SessionRegistry::start(store.clone(), policy).await.unwrap();
        (registry, store, token)
    });

    let mut group = c.benchmark_group("authenticate");
    group.bench_function("session_actor", |b| {
        b.to_async(&runtime).iter(|| async {
            registry.authenticate(&token).await.unwrap().unwrap();
        })
    });
    group.bench_function("store_reads", |b| {
        b.to_async(&runtime).iter(|| async {
            let session = store.session(&token_hash(&token)).await.unwrap().unwrap();
            store.user(session.user_id).await.unwrap().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, authenticate);
criterion_main!(benches);
