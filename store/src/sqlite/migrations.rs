//! Schema migrations, versioned in code. Migration `i` brings the schema from version `i` to
//! `i + 1`; the applied version is kept in SQLite's `user_version`. Never edit a shipped
//! migration: append a new one.

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: identity and leases
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        active INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX users_by_creation ON users(created_at, id);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE INDEX sessions_by_expiry ON sessions(expires_at);
    CREATE TABLE leases (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );",
    // 2: conversations and their messages
    "CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        model TEXT NOT NULL,
        message_count INTEGER NOT NULL,
        last_message TEXT NOT NULL,
        summary TEXT,
        pruned_through INTEGER NOT NULL,
        -- the latest pruning: all NULL, or all set
        pruning_at INTEGER,
        pruning_messages INTEGER,
        pruning_tokens_before INTEGER,
        pruning_tokens_after INTEGER,
        pruning_automatic INTEGER
    );
    CREATE INDEX conversations_by_creation ON conversations(user_id, created_at, id);
    CREATE INDEX conversations_by_update ON conversations(user_id, updated_at, id);
    CREATE TABLE messages (
        conversation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        model TEXT,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;",
    // 3: honey jars, their documents and chunks. No foreign keys: deletes cascade in code, in
    // one transaction, as they must on ScyllaDB. Tags and shares are rows (keyed for the
    // listing filters); `position` keeps the order they were given in.
    "CREATE TABLE jars (
        id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        visibility TEXT NOT NULL,
        allow_search INTEGER NOT NULL,
        allow_export INTEGER NOT NULL,
        encryption_enabled INTEGER NOT NULL,
        wrapped_key BLOB,
        document_count INTEGER NOT NULL,
        embedding_count INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX jars_by_creation ON jars(created_at, id);
    CREATE INDEX jars_by_owner ON jars(owner_id, created_at);
    CREATE TABLE jar_tags (
        jar_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (jar_id, tag)
    ) WITHOUT ROWID;
    CREATE INDEX jar_tags_by_tag ON jar_tags(tag, jar_id);
    CREATE TABLE jar_shares (
        jar_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (jar_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX jar_shares_by_user ON jar_shares(user_id, jar_id);
    CREATE TABLE documents (
        id TEXT PRIMARY KEY,
        jar_id TEXT NOT NULL,
        uploader_id TEXT NOT NULL,
        filename TEXT NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        size INTEGER NOT NULL,
        mime_type TEXT NOT NULL,
        kind TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL,
        error TEXT,
        chunk_count INTEGER NOT NULL,
        embedding_count INTEGER NOT NULL,
        processing_ms INTEGER,
        pages INTEGER,
        word_count INTEGER NOT NULL,
        language TEXT,
        uploaded_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX documents_by_jar ON documents(jar_id, uploaded_at);
    CREATE INDEX documents_by_status ON documents(status, uploaded_at);
    CREATE TABLE document_tags (
        document_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (document_id, tag)
    ) WITHOUT ROWID;
    -- A rowid table: chunk rows (text and embedding) are too large for WITHOUT ROWID to pay.
    CREATE TABLE chunks (
        document_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        jar_id TEXT NOT NULL,
        text TEXT NOT NULL,
        page INTEGER,
        section TEXT,
        token_count INTEGER NOT NULL,
        -- little-endian f32s
        embedding BLOB NOT NULL,
        PRIMARY KEY (document_id, seq)
    );
    CREATE INDEX chunks_by_jar ON chunks(jar_id, document_id, seq);",
    // 4: the marketplace. A license is a paid order (no table of its own).
    "CREATE TABLE listings (
        id TEXT PRIMARY KEY,
        jar_id TEXT NOT NULL,
        seller_id TEXT NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        price_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        category TEXT NOT NULL,
        license_type TEXT NOT NULL,
        preview_enabled INTEGER NOT NULL,
        status TEXT NOT NULL,
        rating_sum INTEGER NOT NULL,
        rating_count INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX listings_by_jar ON listings(jar_id);
    CREATE INDEX listings_by_status ON listings(status, created_at, id);
    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        listing_id TEXT NOT NULL,
        jar_id TEXT NOT NULL,
        buyer_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        amount_minor INTEGER NOT NULL,
        currency TEXT NOT NULL,
        license_type TEXT NOT NULL,
        payment_method TEXT NOT NULL,
        billing TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        paid_at INTEGER,
        UNIQUE (buyer_id, idempotency_key)
    );
    CREATE INDEX orders_by_buyer ON orders(buyer_id, created_at, id);
    CREATE INDEX orders_by_listing ON orders(listing_id, buyer_id);
    CREATE TABLE ratings (
        listing_id TEXT NOT NULL,
        buyer_id TEXT NOT NULL,
        stars INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (listing_id, buyer_id)
    ) WITHOUT ROWID;",
    // 5: passkeys, and the WebAuthn ceremonies in flight (single-use challenges).
    "CREATE TABLE passkeys (
        credential_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        user_handle TEXT NOT NULL,
        name TEXT NOT NULL,
        public_key TEXT NOT NULL,
        sign_count INTEGER NOT NULL,
        transports TEXT NOT NULL,
        credential TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER
    );
    CREATE INDEX passkeys_by_user ON passkeys(user_id, created_at);
    CREATE TABLE webauthn_ceremonies (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        user_id TEXT NOT NULL,
        binding TEXT NOT NULL,
        state TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX webauthn_ceremonies_by_expiry ON webauthn_ceremonies(expires_at);",
    // 6: how many times processing of a document was started.
    "ALTER TABLE documents ADD COLUMN processing_attempts INTEGER NOT NULL DEFAULT 0;",
];

/// Applies every migration newer than the file's `user_version`, each in its own transaction.
pub(super) fn migrate(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated between our read and the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if now > version as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
