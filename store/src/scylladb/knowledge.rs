//! Honey jars, their documents and the documents' chunks on ScyllaDB.
//!
//! A jar's and a document's row are changed by lightweight transactions only: every change is
//! a compare-and-set on the row's `written_at`, the write timestamp (µs, rising with each
//! change) that its index rows are then written with (`USING TIMESTAMP`). Two writers of one
//! row are ordered by Paxos, and their index writes by those timestamps, whatever order they
//! arrive in: the index ends up as the last change left it. Index rows are added before the
//! row changes and taken away after, so an index is always a superset of the truth; every read
//! through one checks the rows it finds against the query.
//!
//! A jar's counts are a compare-and-set of their own (concurrent pipelines add to them).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::schema::Migration;
use super::{
    applied, batch_runs, contended, corrupt, logged_batch, maybe_row, page_of, prepare,
    prepare_serial_read, read_paged, rows, unavailable, ScyllaStore, BATCHES_IN_FLIGHT,
};
use crate::{
    check_chunks, embedding_from_bytes, embedding_to_bytes, Chunk, Document, DocumentId,
    DocumentStatus, HoneyJar, JarId, JarQuery, JarSettings, KnowledgeStore, Page, StoreError,
    StoreResult, Timestamp, UserId, Visibility,
};

pub(super) const MIGRATION: Migration = Migration {
    version: 4,
    description: "knowledge",
    statements: &[
        // Changed by LWTs only (see the module doc); `written_at` is the version they check.
        "CREATE TABLE IF NOT EXISTS jars (
            id uuid PRIMARY KEY,
            owner_id uuid,
            name text,
            description text,
            visibility text,
            tags frozen<list<text>>,
            allow_search boolean,
            allow_export boolean,
            encryption_enabled boolean,
            shared_with frozen<list<uuid>>,
            wrapped_key blob,
            document_count bigint,
            embedding_count bigint,
            created_at bigint,
            updated_at bigint,
            written_at bigint
        )",
        // The jars' read paths, one partition each: `owner:<user>`, `shared:<user>`,
        // `visibility:<visibility>`, `tag:<tag>`.
        "CREATE TABLE IF NOT EXISTS jar_index (
            entry text,
            jar_id uuid,
            PRIMARY KEY ((entry), jar_id)
        )",
        "CREATE TABLE IF NOT EXISTS documents (
            id uuid PRIMARY KEY,
            jar_id uuid,
            uploader_id uuid,
            uploaded_at bigint,
            filename text,
            title text,
            description text,
            tags frozen<list<text>>,
            size bigint,
            mime_type text,
            kind text,
            sha256 text,
            status text,
            progress int,
            error text,
            chunk_count bigint,
            embedding_count bigint,
            processing_ms bigint,
            processing_attempts int,
            pages bigint,
            word_count bigint,
            language text,
            updated_at bigint,
            stored_chunks bigint,
            written_at bigint,
            deleted boolean
        )",
        // A jar's documents, clustered by the id's text (which sorts like the uuid's bytes:
        // the order of `jar_chunks`).
        "CREATE TABLE IF NOT EXISTS documents_by_jar (
            jar_id uuid,
            document_key text,
            uploaded_at bigint,
            PRIMARY KEY ((jar_id), document_key, uploaded_at)
        )",
        // Documents by status, oldest first (`documents_with_status`).
        "CREATE TABLE IF NOT EXISTS documents_by_status (
            status text,
            uploaded_at bigint,
            document_key text,
            PRIMARY KEY ((status), uploaded_at, document_key)
        )",
        "CREATE TABLE IF NOT EXISTS chunks (
            document_id uuid,
            seq bigint,
            jar_id uuid,
            text text,
            page bigint,
            section text,
            token_count bigint,
            embedding blob,
            PRIMARY KEY ((document_id), seq)
        )",
    ],
};

/// A compare-and-set of a row that lost a race is decided again, at most this often.
const CAS_ATTEMPTS: usize = 8;
/// The counts of a jar whose documents finish together are contended: more tries, spread.
const COUNT_ATTEMPTS: u32 = 32;
/// What one read path, one jar's documents and one document's chunks are bounded by.
const INDEX_CAP: usize = 100_000;
/// Rows read at once when a listing fetches the records its index found.
const FETCH_CONCURRENCY: usize = 32;
/// Documents read per step of `jar_chunks` and `documents_with_status`.
const DOCUMENT_PAGE: usize = 100;

const JAR_COLUMNS: &str = "id, owner_id, name, description, visibility, tags, allow_search,
    allow_export, encryption_enabled, shared_with, wrapped_key, document_count,
    embedding_count, created_at, updated_at, written_at";

const DOCUMENT_COLUMNS: &str = "id, jar_id, uploader_id, uploaded_at, filename, title,
    description, tags, size, mime_type, kind, sha256, status, progress, error, chunk_count,
    embedding_count, processing_ms, processing_attempts, pages, word_count, language, updated_at,
    stored_chunks, written_at, deleted";

const CHUNK_COLUMNS: &str = "document_id, seq, jar_id, text, page, section, token_count, embedding";

/// A row of `jars` (inserted and read whole).
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct JarRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: String,
    pub visibility: String,
    pub tags: Vec<String>,
    pub allow_search: bool,
    pub allow_export: bool,
    pub encryption_enabled: bool,
    pub shared_with: Vec<Uuid>,
    pub wrapped_key: Option<Vec<u8>>,
    pub document_count: i64,
    pub embedding_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub written_at: i64,
}

/// A jar's counts, as its compare-and-set reads them.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct JarCountsRow {
    pub document_count: i64,
    pub embedding_count: i64,
}

/// A row of `jar_index`, as a read path lists it.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct JarEntryRow {
    pub jar_id: Uuid,
}

/// A row of `documents` (inserted and read whole).
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct DocumentRow {
    pub id: Uuid,
    pub jar_id: Uuid,
    pub uploader_id: Uuid,
    pub uploaded_at: i64,
    pub filename: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub mime_type: String,
    pub kind: String,
    pub sha256: String,
    pub status: String,
    pub progress: i32,
    pub error: Option<String>,
    pub chunk_count: i64,
    pub embedding_count: i64,
    pub processing_ms: Option<i64>,
    pub processing_attempts: i32,
    pub pages: Option<i64>,
    pub word_count: i64,
    pub language: Option<String>,
    pub updated_at: i64,
    /// How many chunks the document has stored: what its jar's counts hold for it.
    pub stored_chunks: i64,
    pub written_at: i64,
    /// Being deleted: absent to every reader, finished by whoever deletes it next.
    pub deleted: bool,
}

/// The values of `update_document` (named markers: `written_at` is both set and checked).
#[derive(scylla::SerializeRow)]
struct DocumentUpdate<'a> {
    filename: &'a str,
    title: &'a str,
    description: &'a str,
    tags: Vec<String>,
    size: i64,
    mime_type: &'a str,
    kind: &'a str,
    sha256: &'a str,
    status: &'a str,
    progress: i32,
    error: Option<&'a str>,
    chunk_count: i64,
    embedding_count: i64,
    processing_ms: Option<i64>,
    processing_attempts: i32,
    pages: Option<i64>,
    word_count: i64,
    language: Option<&'a str>,
    updated_at: i64,
    stored_chunks: i64,
    written_at: i64,
    id: Uuid,
    expected_written_at: i64,
}

/// A row of `documents_by_jar`.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct JarDocumentRow {
    pub document_key: String,
    pub uploaded_at: i64,
}

/// A row of `documents_by_status`.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct StatusDocumentRow {
    pub uploaded_at: i64,
    pub document_key: String,
}

/// A row of `chunks`.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct ChunkRow {
    pub document_id: Uuid,
    pub seq: i64,
    pub jar_id: Uuid,
    pub text: String,
    pub page: Option<i64>,
    pub section: Option<String>,
    pub token_count: i64,
    pub embedding: Vec<u8>,
}

pub(super) struct Statements {
    insert_jar: PreparedStatement,
    select_jar: PreparedStatement,
    /// At LOCAL_SERIAL: what a compare-and-set is decided from.
    select_jar_serial: PreparedStatement,
    select_jar_id: PreparedStatement,
    select_jar_counts_serial: PreparedStatement,
    update_jar: PreparedStatement,
    set_jar_counts: PreparedStatement,
    delete_jar: PreparedStatement,
    insert_jar_entry: PreparedStatement,
    delete_jar_entry: PreparedStatement,
    select_jar_entries: PreparedStatement,
    insert_document: PreparedStatement,
    select_document: PreparedStatement,
    select_document_serial: PreparedStatement,
    update_document: PreparedStatement,
    mark_document_deleted: PreparedStatement,
    /// Zeroes a deleted document's stored chunks: the one deleter it applies for moves the
    /// jar's counts.
    release_stored_chunks: PreparedStatement,
    delete_document: PreparedStatement,
    delete_jar_document: PreparedStatement,
    select_jar_documents: PreparedStatement,
    select_jar_documents_after: PreparedStatement,
    insert_status_document: PreparedStatement,
    delete_status_document: PreparedStatement,
    select_status_documents_after: PreparedStatement,
    clear_chunks: PreparedStatement,
    insert_chunk: PreparedStatement,
    select_chunks: PreparedStatement,
    select_chunks_after: PreparedStatement,
    /// A new document's two index rows.
    index_document: Batch,
    /// A deleted document's two index rows and its chunks.
    unindex_document: Batch,
}

impl Statements {
    pub(super) async fn prepare(session: &Session) -> StoreResult<Statements> {
        let insert_jar_document = prepare(
            session,
            "INSERT INTO documents_by_jar (jar_id, document_key, uploaded_at) VALUES (?, ?, ?)
             USING TIMESTAMP ?",
            true,
        )
        .await?;
        let insert_status_document = prepare(
            session,
            "INSERT INTO documents_by_status (status, uploaded_at, document_key) VALUES (?, ?, ?)
             USING TIMESTAMP ?",
            true,
        )
        .await?;
        let delete_jar_document = prepare(
            session,
            "DELETE FROM documents_by_jar USING TIMESTAMP ?
             WHERE jar_id = ? AND document_key = ? AND uploaded_at = ?",
            true,
        )
        .await?;
        let delete_status_document = prepare(
            session,
            "DELETE FROM documents_by_status USING TIMESTAMP ?
             WHERE status = ? AND uploaded_at = ? AND document_key = ?",
            true,
        )
        .await?;
        let clear_chunks = prepare(
            session,
            "DELETE FROM chunks USING TIMESTAMP ? WHERE document_id = ?",
            true,
        )
        .await?;
        // Every statement carries its timestamp: a retry writes the same cells again.
        let index_document = logged_batch(&[&insert_jar_document, &insert_status_document]);
        let unindex_document =
            logged_batch(&[&delete_jar_document, &delete_status_document, &clear_chunks]);
        Ok(Statements {
            insert_jar: prepare(
                session,
                &insert_cql("jars", JAR_COLUMNS, "IF NOT EXISTS"),
                false,
            )
            .await?,
            select_jar: prepare(
                session,
                &format!("SELECT {JAR_COLUMNS} FROM jars WHERE id = ?"),
                true,
            )
            .await?,
            select_jar_serial: prepare_serial_read(
                session,
                &format!("SELECT {JAR_COLUMNS} FROM jars WHERE id = ?"),
            )
            .await?,
            select_jar_id: prepare(session, "SELECT id FROM jars WHERE id = ?", true).await?,
            select_jar_counts_serial: prepare_serial_read(
                session,
                "SELECT document_count, embedding_count FROM jars WHERE id = ?",
            )
            .await?,
            update_jar: prepare(
                session,
                "UPDATE jars SET name = ?, description = ?, visibility = ?, tags = ?,
                 allow_search = ?, allow_export = ?, encryption_enabled = ?, shared_with = ?,
                 wrapped_key = ?, updated_at = ?, written_at = ?
                 WHERE id = ? IF written_at = ?",
                false,
            )
            .await?,
            set_jar_counts: prepare(
                session,
                "UPDATE jars SET document_count = ?, embedding_count = ? WHERE id = ?
                 IF document_count = ? AND embedding_count = ?",
                false,
            )
            .await?,
            delete_jar: prepare(
                session,
                "DELETE FROM jars WHERE id = ? IF written_at = ?",
                false,
            )
            .await?,
            insert_jar_entry: prepare(
                session,
                "INSERT INTO jar_index (entry, jar_id) VALUES (?, ?) USING TIMESTAMP ?",
                true,
            )
            .await?,
            delete_jar_entry: prepare(
                session,
                "DELETE FROM jar_index USING TIMESTAMP ? WHERE entry = ? AND jar_id = ?",
                true,
            )
            .await?,
            select_jar_entries: prepare(
                session,
                "SELECT jar_id FROM jar_index WHERE entry = ?",
                true,
            )
            .await?,
            insert_document: prepare(
                session,
                &insert_cql("documents", DOCUMENT_COLUMNS, "IF NOT EXISTS"),
                false,
            )
            .await?,
            select_document: prepare(
                session,
                &format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?"),
                true,
            )
            .await?,
            select_document_serial: prepare_serial_read(
                session,
                &format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?"),
            )
            .await?,
            update_document: prepare(
                session,
                "UPDATE documents SET filename = :filename, title = :title,
                 description = :description, tags = :tags, size = :size,
                 mime_type = :mime_type, kind = :kind, sha256 = :sha256, status = :status,
                 progress = :progress, error = :error, chunk_count = :chunk_count,
                 embedding_count = :embedding_count, processing_ms = :processing_ms,
                 processing_attempts = :processing_attempts, pages = :pages,
                 word_count = :word_count, language = :language,
                 updated_at = :updated_at, stored_chunks = :stored_chunks,
                 written_at = :written_at
                 WHERE id = :id IF written_at = :expected_written_at",
                false,
            )
            .await?,
            mark_document_deleted: prepare(
                session,
                "UPDATE documents SET deleted = true, written_at = ? WHERE id = ?
                 IF written_at = ?",
                false,
            )
            .await?,
            release_stored_chunks: prepare(
                session,
                "UPDATE documents SET stored_chunks = 0 WHERE id = ?
                 IF deleted = true AND stored_chunks = ?",
                false,
            )
            .await?,
            delete_document: prepare(
                session,
                "DELETE FROM documents WHERE id = ? IF written_at = ?",
                false,
            )
            .await?,
            delete_jar_document,
            select_jar_documents: prepare(
                session,
                "SELECT document_key, uploaded_at FROM documents_by_jar WHERE jar_id = ?",
                true,
            )
            .await?,
            select_jar_documents_after: prepare(
                session,
                "SELECT document_key, uploaded_at FROM documents_by_jar
                 WHERE jar_id = ? AND document_key > ? LIMIT ?",
                true,
            )
            .await?,
            insert_status_document,
            delete_status_document,
            select_status_documents_after: prepare(
                session,
                "SELECT uploaded_at, document_key FROM documents_by_status
                 WHERE status = ? AND (uploaded_at, document_key) > (?, ?) LIMIT ?",
                true,
            )
            .await?,
            clear_chunks,
            insert_chunk: prepare(
                session,
                &insert_cql("chunks", CHUNK_COLUMNS, "USING TIMESTAMP ?"),
                true,
            )
            .await?,
            select_chunks: prepare(
                session,
                &format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = ?"),
                true,
            )
            .await?,
            select_chunks_after: prepare(
                session,
                &format!(
                    "SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = ? AND seq > ?
                     LIMIT ?"
                ),
                true,
            )
            .await?,
            index_document,
            unindex_document,
        })
    }
}

// ---- pure helpers: conversions, index entries, the listing filter ----

/// `INSERT INTO table (columns) VALUES (?, ...) tail`, one marker per column.
fn insert_cql(table: &str, columns: &str, tail: &str) -> String {
    let markers = vec!["?"; columns.split(',').count()].join(", ");
    format!("INSERT INTO {table} ({columns}) VALUES ({markers}) {tail}")
}

/// Now, in microseconds: the unit of CQL write timestamps.
fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// The write timestamp of the change after one written at `previous`: now, and always later.
fn next_write(previous: i64) -> i64 {
    now_micros().max(previous.saturating_add(1))
}

/// A document's id as its index rows order it: the hyphenated lowercase text, which sorts
/// like the uuid's bytes (SQLite's order; ScyllaDB's `uuid` type compares versions first).
fn document_key(id: DocumentId) -> String {
    id.hyphenated().to_string()
}

fn parse_key(key: &str) -> StoreResult<DocumentId> {
    Uuid::parse_str(key).map_err(|err| corrupt("document key", format!("{key:?}: {err}")))
}

/// The values in the order given, each kept once at its first position (SQLite's lists).
fn first_occurrences<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
    let mut kept: Vec<T> = Vec::with_capacity(values.len());
    for value in values {
        if !kept.contains(value) {
            kept.push(value.clone());
        }
    }
    kept
}

fn count(what: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|err| corrupt(what, format!("{value}: {err}")))
}

fn narrow(what: &str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|err| corrupt(what, format!("{value}: {err}")))
}

fn jar_row(jar: &HoneyJar, written_at: i64) -> JarRow {
    JarRow {
        id: jar.id,
        owner_id: jar.owner_id,
        name: jar.name.clone(),
        description: jar.description.clone(),
        visibility: jar.visibility.as_str().to_owned(),
        tags: first_occurrences(&jar.tags),
        allow_search: jar.settings.allow_search,
        allow_export: jar.settings.allow_export,
        encryption_enabled: jar.settings.encryption_enabled,
        shared_with: first_occurrences(&jar.shared_with),
        wrapped_key: jar.wrapped_key.clone(),
        document_count: jar.document_count as i64,
        embedding_count: jar.embedding_count as i64,
        created_at: jar.created_at.0,
        updated_at: jar.updated_at.0,
        written_at,
    }
}

fn jar_from_row(row: JarRow) -> StoreResult<HoneyJar> {
    let visibility = Visibility::parse(&row.visibility).ok_or_else(|| {
        corrupt(
            "jar row",
            format!("unknown visibility {:?}", row.visibility),
        )
    })?;
    Ok(HoneyJar {
        id: row.id,
        owner_id: row.owner_id,
        name: row.name,
        description: row.description,
        visibility,
        tags: row.tags,
        settings: JarSettings {
            allow_search: row.allow_search,
            allow_export: row.allow_export,
            encryption_enabled: row.encryption_enabled,
        },
        shared_with: row.shared_with,
        wrapped_key: row.wrapped_key,
        // Counts are kept as exact sums of their moves (which may pass below zero for a while
        // when a save and a deletion race) and shown never below zero.
        document_count: row.document_count.max(0) as u64,
        embedding_count: row.embedding_count.max(0) as u64,
        created_at: Timestamp(row.created_at),
        updated_at: Timestamp(row.updated_at),
    })
}

fn owner_entry(owner: UserId) -> String {
    format!("owner:{owner}")
}

fn shared_entry(reader: UserId) -> String {
    format!("shared:{reader}")
}

fn visibility_entry(visibility: Visibility) -> String {
    format!("visibility:{}", visibility.as_str())
}

fn tag_entry(tag: &str) -> String {
    format!("tag:{tag}")
}

/// The `jar_index` partitions that list `jar`. Shares count only while it is `Shared`.
fn jar_entries(jar: &HoneyJar) -> BTreeSet<String> {
    let mut entries = BTreeSet::from([owner_entry(jar.owner_id), visibility_entry(jar.visibility)]);
    entries.extend(jar.tags.iter().map(|tag| tag_entry(tag)));
    if jar.visibility == Visibility::Shared {
        entries.extend(jar.shared_with.iter().map(|&reader| shared_entry(reader)));
    }
    entries
}

/// The read paths that hold every jar `query` can match (a superset, checked row by row).
fn candidate_entries(query: &JarQuery) -> Vec<String> {
    if let Some(owner) = query.owner {
        vec![owner_entry(owner)]
    } else if let Some(tag) = &query.tag {
        vec![tag_entry(tag)]
    } else if let Some(reader) = query.reader {
        readable_entries(reader)
    } else if let Some(visibility) = query.visibility {
        vec![visibility_entry(visibility)]
    } else {
        [Visibility::Private, Visibility::Shared, Visibility::Public]
            .into_iter()
            .map(visibility_entry)
            .collect()
    }
}

fn readable_entries(reader: UserId) -> Vec<String> {
    vec![
        owner_entry(reader),
        shared_entry(reader),
        visibility_entry(Visibility::Public),
    ]
}

/// Owned by `reader`, public, or shared with them (SQLite's `readable_by`).
fn readable_by(jar: &HoneyJar, reader: UserId) -> bool {
    jar.owner_id == reader
        || jar.visibility == Visibility::Public
        || (jar.visibility == Visibility::Shared && jar.shared_with.contains(&reader))
}

/// `needle` in `haystack`, ASCII letters in any case: SQLite's `LIKE '%needle%'`.
fn contains_ignoring_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// Whether `jar` is one `query` asks for: SQLite's `WHERE` clause, in the node.
fn matches(query: &JarQuery, jar: &HoneyJar) -> bool {
    query.reader.is_none_or(|reader| readable_by(jar, reader))
        && query.visibility.is_none_or(|v| jar.visibility == v)
        && query.owner.is_none_or(|owner| jar.owner_id == owner)
        && query.tag.as_ref().is_none_or(|tag| jar.tags.contains(tag))
        && query.search.as_ref().is_none_or(|search| {
            contains_ignoring_ascii_case(&jar.name, search)
                || contains_ignoring_ascii_case(&jar.description, search)
        })
}

/// The page of `jars` that `query` asks for, newest first (ties by id), and how many match.
fn page_of_jars(jars: Vec<HoneyJar>, query: &JarQuery) -> (Vec<HoneyJar>, u64) {
    let mut matching: Vec<HoneyJar> = jars.into_iter().filter(|j| matches(query, j)).collect();
    matching.sort_by_key(|jar| (Reverse(jar.created_at), jar.id));
    let total = matching.len() as u64;
    (page_of(matching, query.page), total)
}

fn document_row(document: &Document, stored_chunks: i64, written_at: i64) -> DocumentRow {
    DocumentRow {
        id: document.id,
        jar_id: document.jar_id,
        uploader_id: document.uploader_id,
        uploaded_at: document.uploaded_at.0,
        filename: document.filename.clone(),
        title: document.title.clone(),
        description: document.description.clone(),
        tags: first_occurrences(&document.tags),
        size: document.size as i64,
        mime_type: document.mime_type.clone(),
        kind: document.kind.clone(),
        sha256: document.sha256.clone(),
        status: document.status.as_str().to_owned(),
        progress: document.progress.into(),
        error: document.error.clone(),
        chunk_count: document.chunk_count as i64,
        embedding_count: document.embedding_count as i64,
        processing_ms: document.processing_ms.map(|ms| ms as i64),
        processing_attempts: attempts_column(document.processing_attempts),
        pages: document.pages.map(i64::from),
        word_count: document.word_count as i64,
        language: document.language.clone(),
        updated_at: document.updated_at.0,
        stored_chunks,
        written_at,
        deleted: false,
    }
}

/// Attempts as the `int` column holds them (saturating: past `i32::MAX` nothing changes).
fn attempts_column(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

fn document_from_row(row: DocumentRow) -> StoreResult<Document> {
    let status = DocumentStatus::parse(&row.status)
        .ok_or_else(|| corrupt("document row", format!("unknown status {:?}", row.status)))?;
    let progress = u8::try_from(row.progress)
        .map_err(|err| corrupt("document progress", format!("{}: {err}", row.progress)))?;
    Ok(Document {
        id: row.id,
        jar_id: row.jar_id,
        uploader_id: row.uploader_id,
        filename: row.filename,
        title: row.title,
        description: row.description,
        tags: row.tags,
        size: count("document size", row.size)?,
        mime_type: row.mime_type,
        kind: row.kind,
        sha256: row.sha256,
        status,
        progress,
        error: row.error,
        chunk_count: count("document chunk_count", row.chunk_count)?,
        embedding_count: count("document embedding_count", row.embedding_count)?,
        processing_ms: row
            .processing_ms
            .map(|ms| count("document processing_ms", ms))
            .transpose()?,
        processing_attempts: narrow(
            "document processing_attempts",
            row.processing_attempts.into(),
        )?,
        pages: row
            .pages
            .map(|pages| narrow("document pages", pages))
            .transpose()?,
        word_count: count("document word_count", row.word_count)?,
        language: row.language,
        uploaded_at: Timestamp(row.uploaded_at),
        updated_at: Timestamp(row.updated_at),
    })
}

fn chunk_from_row(row: ChunkRow) -> StoreResult<Chunk> {
    let embedding = embedding_from_bytes(&row.embedding).ok_or_else(|| {
        corrupt(
            "chunk embedding",
            format!("{} bytes are not f32s", row.embedding.len()),
        )
    })?;
    Ok(Chunk {
        document_id: row.document_id,
        jar_id: row.jar_id,
        seq: narrow("chunk seq", row.seq)?,
        text: row.text,
        page: row
            .page
            .map(|page| narrow("chunk page", page))
            .transpose()?,
        section: row.section,
        token_count: narrow("chunk token_count", row.token_count)?,
        embedding,
    })
}

fn jar_not_found() -> StoreError {
    StoreError::NotFound {
        entity: "honey jar",
    }
}

fn document_not_found() -> StoreError {
    StoreError::NotFound { entity: "document" }
}

/// A short, random pause before compare-and-set attempt `attempt` tries again.
async fn back_off(attempt: u32) {
    let jitter = (Uuid::new_v4().as_u128() % 5) as u64;
    let ms = u64::from(attempt.min(10)) * 2 + jitter;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---- reads and writes ----

/// Where an entry of `jar_index` is going.
#[derive(Clone, Copy)]
enum Change {
    Add,
    Remove,
}

impl ScyllaStore {
    /// Whether jar `id` exists (the marketplace lists only existing jars).
    pub(super) async fn jar_exists(&self, id: JarId) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(&self.knowledge.select_jar_id, (id,))
            .await
            .map_err(unavailable)?;
        Ok(maybe_row::<(Uuid,)>(result, "jar id")?.is_some())
    }

    /// A jar's row, read with `statement` (plain, or serial before a compare-and-set).
    async fn read_jar_row(
        &self,
        statement: &PreparedStatement,
        id: JarId,
    ) -> StoreResult<Option<JarRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "jar row")
    }

    /// The jar and its `written_at`, at LOCAL_SERIAL.
    async fn jar_for_change(&self, id: JarId) -> StoreResult<Option<(HoneyJar, i64)>> {
        match self
            .read_jar_row(&self.knowledge.select_jar_serial, id)
            .await?
        {
            Some(row) => {
                let written_at = row.written_at;
                Ok(Some((jar_from_row(row)?, written_at)))
            }
            None => Ok(None),
        }
    }

    /// Adds or removes index entries of jar `id`, written at `timestamp`: in logged batches
    /// within [`BATCH_BYTES`](super::BATCH_BYTES) (a jar shared with thousands of readers
    /// takes several), each entry idempotent on its own.
    async fn change_jar_entries<'a>(
        &self,
        change: Change,
        id: JarId,
        entries: impl Iterator<Item = &'a String>,
        timestamp: i64,
    ) -> StoreResult<()> {
        let statement = match change {
            Change::Add => &self.knowledge.insert_jar_entry,
            Change::Remove => &self.knowledge.delete_jar_entry,
        };
        // Owned: a closure over borrowed entries is not `Send` for every lifetime.
        let entries: Vec<String> = entries.cloned().collect();
        stream::iter(batch_runs(entries, |entry| entry.len() + 16))
            .map(|run| async move {
                let mut batch = Batch::new(BatchType::Logged);
                batch.set_is_idempotent(true);
                for _ in &run {
                    batch.append_statement(statement.clone());
                }
                match change {
                    Change::Add => {
                        let values: Vec<(&String, Uuid, i64)> =
                            run.iter().map(|e| (e, id, timestamp)).collect();
                        self.session.batch(&batch, values).await
                    }
                    Change::Remove => {
                        let values: Vec<(i64, &String, Uuid)> =
                            run.iter().map(|e| (timestamp, e, id)).collect();
                        self.session.batch(&batch, values).await
                    }
                }
            })
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The jars `entries` list, read whole; ids that no longer have a row are left out.
    async fn jars_listed_in(&self, entries: &[String]) -> StoreResult<Vec<HoneyJar>> {
        let mut ids = BTreeSet::new();
        for entry in entries {
            let rows: Vec<JarEntryRow> = read_paged(
                &self.session,
                &self.knowledge.select_jar_entries,
                (entry,),
                INDEX_CAP,
                "jar index",
            )
            .await?;
            ids.extend(rows.into_iter().map(|row| row.jar_id));
        }
        let found: Vec<Option<JarRow>> = stream::iter(ids)
            .map(|id| self.read_jar_row(&self.knowledge.select_jar, id))
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        found.into_iter().flatten().map(jar_from_row).collect()
    }

    /// Moves jar `jar_id`'s counts as one of its documents goes from `before` to `after`
    /// stored chunks: a document counts once while it has chunks, each chunk is one
    /// embedding, and counts never go below 0 (as on SQLite). A compare-and-set, so that
    /// concurrent pipelines of one jar never lose each other's changes. A jar deleted
    /// meanwhile took its counts with it: nothing to move.
    async fn move_jar_counts(&self, jar_id: JarId, before: u64, after: u64) -> StoreResult<()> {
        let documents = i64::from(after > 0) - i64::from(before > 0);
        let embeddings = after as i64 - before as i64;
        if documents == 0 && embeddings == 0 {
            return Ok(());
        }
        for attempt in 0..COUNT_ATTEMPTS {
            let result = self
                .session
                .execute_unpaged(&self.knowledge.select_jar_counts_serial, (jar_id,))
                .await
                .map_err(unavailable)?;
            let Some(counts) = maybe_row::<JarCountsRow>(result, "jar counts")? else {
                return Ok(());
            };
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.set_jar_counts,
                    (
                        // Unclamped: moves that race must still add up (see `jar_from_row`).
                        counts.document_count + documents,
                        counts.embedding_count + embeddings,
                        jar_id,
                        counts.document_count,
                        counts.embedding_count,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                return Ok(());
            }
            back_off(attempt).await;
        }
        Err(contended(
            format!("counts of honey jar {jar_id}"),
            COUNT_ATTEMPTS as usize,
        ))
    }

    async fn read_document_row(
        &self,
        statement: &PreparedStatement,
        id: DocumentId,
    ) -> StoreResult<Option<DocumentRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "document row")
    }

    /// Documents by id, in the order given; ids without a row (or being deleted) are left out.
    async fn documents_by_id(&self, ids: Vec<DocumentId>) -> StoreResult<Vec<Document>> {
        let found: Vec<Option<DocumentRow>> = stream::iter(ids)
            .map(|id| self.read_document_row(&self.knowledge.select_document, id))
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        found
            .into_iter()
            .flatten()
            .filter(|row| !row.deleted)
            .map(document_from_row)
            .collect()
    }

    async fn change_status_entry(
        &self,
        change: Change,
        status: &str,
        uploaded_at: i64,
        key: &str,
        timestamp: i64,
    ) -> StoreResult<()> {
        let result = match change {
            Change::Add => {
                self.session
                    .execute_unpaged(
                        &self.knowledge.insert_status_document,
                        (status, uploaded_at, key, timestamp),
                    )
                    .await
            }
            Change::Remove => {
                self.session
                    .execute_unpaged(
                        &self.knowledge.delete_status_document,
                        (timestamp, status, uploaded_at, key),
                    )
                    .await
            }
        };
        result.map_err(unavailable)?;
        Ok(())
    }

    /// Replaces a document's record (its jar, uploader and upload time stay), and its stored
    /// chunk count when `stored_chunks` is given; moves its status entry. Returns the row it
    /// replaced and the change's write timestamp. NotFound once the document is deleted: an
    /// LWT on a missing row applies nothing, so a late write never brings it back.
    async fn replace_document(
        &self,
        document: &Document,
        stored_chunks: Option<u64>,
    ) -> StoreResult<(DocumentRow, i64)> {
        let key = document_key(document.id);
        let status = document.status.as_str();
        // The status entry an attempt added before its compare-and-set lost.
        let mut stray: Option<(i64, i64)> = None;
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self
                .read_document_row(&self.knowledge.select_document_serial, document.id)
                .await?
                .filter(|row| !row.deleted)
            else {
                if let Some((uploaded_at, timestamp)) = stray {
                    // The document is gone: the entry points at nothing.
                    self.change_status_entry(Change::Remove, status, uploaded_at, &key, timestamp)
                        .await?;
                }
                return Err(document_not_found());
            };
            let timestamp = next_write(current.written_at);
            let moved = current.status != status;
            if moved {
                self.change_status_entry(Change::Add, status, current.uploaded_at, &key, timestamp)
                    .await?;
                stray = Some((current.uploaded_at, timestamp));
            }
            let update = DocumentUpdate {
                filename: &document.filename,
                title: &document.title,
                description: &document.description,
                tags: first_occurrences(&document.tags),
                size: document.size as i64,
                mime_type: &document.mime_type,
                kind: &document.kind,
                sha256: &document.sha256,
                status,
                progress: document.progress.into(),
                error: document.error.as_deref(),
                chunk_count: document.chunk_count as i64,
                embedding_count: document.embedding_count as i64,
                processing_ms: document.processing_ms.map(|ms| ms as i64),
                processing_attempts: attempts_column(document.processing_attempts),
                pages: document.pages.map(i64::from),
                word_count: document.word_count as i64,
                language: document.language.as_deref(),
                updated_at: document.updated_at.0,
                stored_chunks: stored_chunks.map_or(current.stored_chunks, |n| n as i64),
                written_at: timestamp,
                id: document.id,
                expected_written_at: current.written_at,
            };
            let result = self
                .session
                .execute_unpaged(&self.knowledge.update_document, &update)
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                if moved {
                    self.change_status_entry(
                        Change::Remove,
                        &current.status,
                        current.uploaded_at,
                        &key,
                        timestamp,
                    )
                    .await?;
                }
                return Ok((current, timestamp));
            }
        }
        Err(contended(format!("document {}", document.id), CAS_ATTEMPTS))
    }

    /// Removes a document marked deleted: its index rows and chunks (at a timestamp later
    /// than every write of it, so they go whatever order the writes land in), its share of
    /// its jar's counts, and last its row. Until the row goes, a retry finds the mark and
    /// finishes the job.
    async fn finish_deletion(&self, row: DocumentRow) -> StoreResult<()> {
        let timestamp = next_write(row.written_at);
        let key = document_key(row.id);
        self.session
            .batch(
                &self.knowledge.unindex_document,
                (
                    (timestamp, row.jar_id, &key, row.uploaded_at),
                    (timestamp, &row.status, row.uploaded_at, &key),
                    (timestamp, row.id),
                ),
            )
            .await
            .map_err(unavailable)?;
        // Two deleters may get here at once (a retry racing the first call): only the one that
        // zeroes the stored count takes the chunks off the jar's counts.
        if row.stored_chunks > 0 {
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.release_stored_chunks,
                    (row.id, row.stored_chunks),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                let stored_chunks = count("document stored_chunks", row.stored_chunks)?;
                self.move_jar_counts(row.jar_id, stored_chunks, 0).await?;
            }
        }
        // Not applied: another deleter finished first.
        self.session
            .execute_unpaged(&self.knowledge.delete_document, (row.id, row.written_at))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl KnowledgeStore for ScyllaStore {
    async fn create_jar(&self, jar: &HoneyJar) -> StoreResult<()> {
        let written_at = now_micros();
        let row = jar_row(jar, written_at);
        let stored = jar_from_row(row.clone())?;
        // Index first: should the insert lose, its entries are extra candidates that every
        // listing checks against the row.
        self.change_jar_entries(Change::Add, jar.id, jar_entries(&stored).iter(), written_at)
            .await?;
        let result = self
            .session
            .execute_unpaged(&self.knowledge.insert_jar, &row)
            .await
            .map_err(unavailable)?;
        match applied(result)? {
            true => Ok(()),
            false => Err(StoreError::Conflict(format!("honey jar {} exists", jar.id))),
        }
    }

    async fn jar(&self, id: JarId) -> StoreResult<Option<HoneyJar>> {
        self.read_jar_row(&self.knowledge.select_jar, id)
            .await?
            .map(jar_from_row)
            .transpose()
    }

    async fn update_jar(&self, jar: &HoneyJar) -> StoreResult<()> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((stored, written_at)) = self.jar_for_change(jar.id).await? else {
                return Err(jar_not_found());
            };
            // The owner, the counts and the creation time are not the caller's to replace.
            let next = HoneyJar {
                owner_id: stored.owner_id,
                document_count: stored.document_count,
                embedding_count: stored.embedding_count,
                created_at: stored.created_at,
                tags: first_occurrences(&jar.tags),
                shared_with: first_occurrences(&jar.shared_with),
                ..jar.clone()
            };
            let timestamp = next_write(written_at);
            let (before, after) = (jar_entries(&stored), jar_entries(&next));
            self.change_jar_entries(Change::Add, jar.id, after.difference(&before), timestamp)
                .await?;
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.update_jar,
                    (
                        &next.name,
                        &next.description,
                        next.visibility.as_str(),
                        &next.tags,
                        next.settings.allow_search,
                        next.settings.allow_export,
                        next.settings.encryption_enabled,
                        &next.shared_with,
                        &next.wrapped_key,
                        next.updated_at.0,
                        timestamp,
                        jar.id,
                        written_at,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                return self
                    .change_jar_entries(
                        Change::Remove,
                        jar.id,
                        before.difference(&after),
                        timestamp,
                    )
                    .await;
            }
        }
        Err(contended(format!("honey jar {}", jar.id), CAS_ATTEMPTS))
    }

    async fn delete_jar(&self, id: JarId) -> StoreResult<bool> {
        // The row first, so that a document or listing created meanwhile sees the jar gone
        // (see `create_document`, `create_listing`); then its listings, entries and documents.
        // A retry after a failure finds the row gone and still deletes what is left.
        let mut existed = None;
        for _ in 0..CAS_ATTEMPTS {
            let Some((jar, written_at)) = self.jar_for_change(id).await? else {
                existed = Some(false);
                break;
            };
            let result = self
                .session
                .execute_unpaged(&self.knowledge.delete_jar, (id, written_at))
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                self.change_jar_entries(
                    Change::Remove,
                    id,
                    jar_entries(&jar).iter(),
                    next_write(written_at),
                )
                .await?;
                existed = Some(true);
                break;
            }
        }
        let existed =
            existed.ok_or_else(|| contended(format!("honey jar {}", id), CAS_ATTEMPTS))?;
        self.delete_jar_listings(id).await?;
        let entries: Vec<JarDocumentRow> = read_paged(
            &self.session,
            &self.knowledge.select_jar_documents,
            (id,),
            INDEX_CAP,
            "jar documents",
        )
        .await?;
        stream::iter(entries)
            .map(|entry| async move {
                let document_id = parse_key(&entry.document_key)?;
                let row = self
                    .read_document_row(&self.knowledge.select_document_serial, document_id)
                    .await?;
                match row {
                    Some(row) if row.jar_id == id => {
                        self.delete_document(document_id).await?;
                    }
                    // An entry left by a create that lost its race: nothing else to delete.
                    _ => {
                        self.session
                            .execute_unpaged(
                                &self.knowledge.delete_jar_document,
                                (now_micros(), id, &entry.document_key, entry.uploaded_at),
                            )
                            .await
                            .map_err(unavailable)?;
                    }
                }
                Ok::<(), StoreError>(())
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(existed)
    }

    async fn list_jars(&self, query: &JarQuery) -> StoreResult<(Vec<HoneyJar>, u64)> {
        let candidates = self.jars_listed_in(&candidate_entries(query)).await?;
        Ok(page_of_jars(candidates, query))
    }

    async fn readable_jars(&self, reader: UserId) -> StoreResult<Vec<HoneyJar>> {
        let mut jars: Vec<HoneyJar> = self
            .jars_listed_in(&readable_entries(reader))
            .await?
            .into_iter()
            .filter(|jar| readable_by(jar, reader))
            .collect();
        jars.sort_by_key(|jar| (jar.created_at, jar.id));
        Ok(jars)
    }

    async fn create_document(&self, document: &Document) -> StoreResult<()> {
        if !self.jar_exists(document.jar_id).await? {
            return Err(jar_not_found());
        }
        let conflict = || StoreError::Conflict(format!("document {} exists", document.id));
        if self
            .read_document_row(&self.knowledge.select_document_serial, document.id)
            .await?
            .is_some()
        {
            return Err(conflict());
        }
        let written_at = now_micros();
        let key = document_key(document.id);
        let status = document.status.as_str();
        let uploaded_at = document.uploaded_at.0;
        self.session
            .batch(
                &self.knowledge.index_document,
                (
                    (document.jar_id, &key, uploaded_at, written_at),
                    (status, uploaded_at, &key, written_at),
                ),
            )
            .await
            .map_err(unavailable)?;
        let result = self
            .session
            .execute_unpaged(
                &self.knowledge.insert_document,
                &document_row(document, 0, written_at),
            )
            .await
            .map_err(unavailable)?;
        if !applied(result)? {
            // Another create of this id won the race: take back the entries it does not share.
            let winner = self
                .read_document_row(&self.knowledge.select_document_serial, document.id)
                .await?;
            if winner
                .as_ref()
                .is_none_or(|w| (w.jar_id, w.uploaded_at) != (document.jar_id, uploaded_at))
            {
                self.session
                    .execute_unpaged(
                        &self.knowledge.delete_jar_document,
                        (written_at, document.jar_id, &key, uploaded_at),
                    )
                    .await
                    .map_err(unavailable)?;
            }
            if winner
                .as_ref()
                .is_none_or(|w| (w.status.as_str(), w.uploaded_at) != (status, uploaded_at))
            {
                self.change_status_entry(Change::Remove, status, uploaded_at, &key, written_at)
                    .await?;
            }
            return Err(conflict());
        }
        // A jar deleted meanwhile may have listed its documents before this one was indexed.
        if !self.jar_exists(document.jar_id).await? {
            self.delete_document(document.id).await?;
            return Err(jar_not_found());
        }
        Ok(())
    }

    async fn document(&self, id: DocumentId) -> StoreResult<Option<Document>> {
        self.read_document_row(&self.knowledge.select_document, id)
            .await?
            .filter(|row| !row.deleted)
            .map(document_from_row)
            .transpose()
    }

    async fn update_document(&self, document: &Document) -> StoreResult<()> {
        self.replace_document(document, None).await?;
        Ok(())
    }

    async fn list_documents(&self, jar_id: JarId, page: Page) -> StoreResult<(Vec<Document>, u64)> {
        let entries: Vec<JarDocumentRow> = read_paged(
            &self.session,
            &self.knowledge.select_jar_documents,
            (jar_id,),
            INDEX_CAP,
            "jar documents",
        )
        .await?;
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            listed.push((entry.uploaded_at, parse_key(&entry.document_key)?));
        }
        // Newest first, ties by id (SQLite's order); an id is listed once.
        listed.sort_by_key(|&(uploaded_at, id)| (Reverse(uploaded_at), id));
        let mut seen = BTreeSet::new();
        listed.retain(|&(_, id)| seen.insert(id));
        let total = listed.len() as u64;
        let ids = page_of(listed, page)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let documents = self.documents_by_id(ids).await?;
        Ok((documents, total))
    }

    async fn documents_with_status(
        &self,
        status: DocumentStatus,
        limit: u32,
    ) -> StoreResult<Vec<Document>> {
        let limit = limit as usize;
        let mut found = Vec::new();
        let mut after = (i64::MIN, String::new());
        while found.len() < limit {
            let want = (limit - found.len()).min(DOCUMENT_PAGE);
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.select_status_documents_after,
                    (status.as_str(), after.0, &after.1, want as i32),
                )
                .await
                .map_err(unavailable)?;
            let entries: Vec<StatusDocumentRow> = rows(result, "documents by status")?;
            let exhausted = entries.len() < want;
            let Some(last) = entries.last() else { break };
            after = (last.uploaded_at, last.document_key.clone());
            let mut ids = Vec::with_capacity(entries.len());
            for entry in &entries {
                ids.push(parse_key(&entry.document_key)?);
            }
            // An entry whose document moved on or is gone is skipped.
            found.extend(
                self.documents_by_id(ids)
                    .await?
                    .into_iter()
                    .filter(|d| d.status == status),
            );
            if exhausted {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn delete_document(&self, id: DocumentId) -> StoreResult<Option<Document>> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self
                .read_document_row(&self.knowledge.select_document_serial, id)
                .await?
            else {
                return Ok(None);
            };
            if current.deleted {
                // A deletion interrupted earlier: finish it.
                self.finish_deletion(current).await?;
                return Ok(None);
            }
            let marked_at = next_write(current.written_at);
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.mark_document_deleted,
                    (marked_at, id, current.written_at),
                )
                .await
                .map_err(unavailable)?;
            if !applied(result)? {
                continue;
            }
            let record = document_from_row(current.clone())?;
            self.finish_deletion(DocumentRow {
                written_at: marked_at,
                deleted: true,
                ..current
            })
            .await?;
            return Ok(Some(record));
        }
        Err(contended(format!("document {}", id), CAS_ATTEMPTS))
    }

    async fn save_chunks(&self, document: &Document, chunks: &[Chunk]) -> StoreResult<()> {
        check_chunks(document, chunks)?;
        let stored_chunks = chunks.len() as u64;
        // The record first: NotFound, with nothing written, once the document is deleted.
        let (before, timestamp) = self.replace_document(document, Some(stored_chunks)).await?;
        let stored_before = count("document stored_chunks", before.stored_chunks)?;
        self.move_jar_counts(before.jar_id, stored_before, stored_chunks)
            .await?;
        // The chunks saved before are older than `timestamp - 1`, these are written at
        // `timestamp`: the partition ends up with these only, whatever order they land in.
        self.session
            .execute_unpaged(&self.knowledge.clear_chunks, (timestamp - 1, document.id))
            .await
            .map_err(unavailable)?;
        // By position: a closure over `&Chunk` would not be general enough for async_trait.
        stream::iter(0..chunks.len())
            .map(|i| {
                let chunk = &chunks[i];
                self.session.execute_unpaged(
                    &self.knowledge.insert_chunk,
                    (
                        chunk.document_id,
                        i64::from(chunk.seq),
                        chunk.jar_id,
                        &chunk.text,
                        chunk.page.map(i64::from),
                        &chunk.section,
                        i64::from(chunk.token_count),
                        embedding_to_bytes(&chunk.embedding),
                        timestamp,
                    ),
                )
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .map_err(unavailable)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    async fn document_chunks(&self, document_id: DocumentId) -> StoreResult<Vec<Chunk>> {
        let rows: Vec<ChunkRow> = read_paged(
            &self.session,
            &self.knowledge.select_chunks,
            (document_id,),
            INDEX_CAP,
            "document chunks",
        )
        .await?;
        rows.into_iter().map(chunk_from_row).collect()
    }

    async fn jar_chunks(
        &self,
        jar_id: JarId,
        after: Option<(DocumentId, u32)>,
        limit: u32,
    ) -> StoreResult<Vec<Chunk>> {
        let limit = limit as usize;
        let mut found: Vec<Chunk> = Vec::new();
        // Chunks of one document after `seq`, as many as are still wanted; a document of
        // another jar (a cursor from elsewhere) has none of this jar's.
        let chunks_after = |document_id: DocumentId, seq: i64, want: usize| async move {
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.select_chunks_after,
                    (document_id, seq, i32::try_from(want).unwrap_or(i32::MAX)),
                )
                .await
                .map_err(unavailable)?;
            let rows: Vec<ChunkRow> = rows(result, "document chunks")?;
            rows.into_iter()
                .filter(|row| row.jar_id == jar_id)
                .map(chunk_from_row)
                .collect::<StoreResult<Vec<Chunk>>>()
        };
        let mut cursor = String::new();
        if let Some((document_id, seq)) = after {
            if limit > 0 {
                found.extend(chunks_after(document_id, i64::from(seq), limit).await?);
            }
            cursor = document_key(document_id);
        }
        while found.len() < limit {
            let result = self
                .session
                .execute_unpaged(
                    &self.knowledge.select_jar_documents_after,
                    (jar_id, &cursor, DOCUMENT_PAGE as i32),
                )
                .await
                .map_err(unavailable)?;
            let entries: Vec<JarDocumentRow> = rows(result, "jar documents")?;
            let exhausted = entries.len() < DOCUMENT_PAGE;
            for entry in entries {
                // (A key listed twice, with two upload times, is read once.)
                if entry.document_key == cursor {
                    continue;
                }
                let document_id = parse_key(&entry.document_key)?;
                cursor = entry.document_key;
                found.extend(chunks_after(document_id, -1, limit - found.len()).await?);
                if found.len() >= limit {
                    break;
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use scylla::frame::response::result::{
        CollectionType, ColumnType,
        NativeType::{BigInt, Blob, Boolean, Int, Text, Uuid as UuidType},
    };

    use super::super::tests::roundtrip;
    use super::*;

    fn list_of(typ: ColumnType<'static>) -> ColumnType<'static> {
        ColumnType::Collection {
            frozen: true,
            typ: CollectionType::List(Box::new(typ)),
        }
    }

    fn sample_jar(owner: UserId, created: i64) -> HoneyJar {
        HoneyJar {
            created_at: Timestamp(created),
            updated_at: Timestamp(created),
            ..crate::tests::sample_jar(owner)
        }
    }

    fn query() -> JarQuery {
        JarQuery {
            reader: None,
            visibility: None,
            owner: None,
            tag: None,
            search: None,
            page: Page {
                limit: 10,
                offset: 0,
            },
        }
    }

    #[test]
    fn inserts_bind_every_column() {
        assert_eq!(
            insert_cql(
                "chunks",
                "document_id, seq,\n    jar_id",
                "USING TIMESTAMP ?"
            ),
            "INSERT INTO chunks (document_id, seq,\n    jar_id) VALUES (?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(insert_cql("jars", JAR_COLUMNS, "").matches('?').count(), 16);
        assert_eq!(
            insert_cql("documents", DOCUMENT_COLUMNS, "")
                .matches('?')
                .count(),
            26
        );
    }

    #[test]
    fn embeddings_roundtrip_bit_for_bit() {
        let embedding = vec![1.0 / 3.0, -0.0, f32::MIN_POSITIVE / 2.0, -1.0, f32::NAN];
        let bytes = embedding_to_bytes(&embedding);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[4..8], &(-0.0f32).to_le_bytes());
        let back = embedding_from_bytes(&bytes).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&embedding));
        assert_eq!(embedding_from_bytes(&[]), Some(vec![]));
        assert_eq!(embedding_from_bytes(&[0, 0, 0]), None);
    }

    #[test]
    fn document_keys_sort_like_uuids() {
        let mut ids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        // Bytes either side of 0x7f/0x80 and of the letters and digits of hex.
        ids.extend(
            [0x00, 0x09, 0x0a, 0x7f, 0x80, 0x9f, 0xa0, 0xff].map(|b| Uuid::from_bytes([b; 16])),
        );
        ids.push(Uuid::from_u128(1));
        ids.push(Uuid::from_u128(u128::MAX - 1));
        let mut by_uuid = ids.clone();
        by_uuid.sort();
        let mut by_key = ids.clone();
        by_key.sort_by_key(|id| document_key(*id));
        assert_eq!(by_key, by_uuid);
        assert!(by_uuid
            .iter()
            .all(|id| parse_key(&document_key(*id)).unwrap() == *id));
        // The empty cursor comes before every key.
        assert!(by_uuid.iter().all(|id| document_key(*id) > String::new()));
    }

    #[test]
    fn lists_keep_each_value_once_at_its_first_position() {
        assert_eq!(
            first_occurrences(&["b", "a", "b", "c", "a"]),
            vec!["b", "a", "c"]
        );
        let jar = HoneyJar {
            tags: vec!["x".into(), "x".into()],
            ..sample_jar(Uuid::new_v4(), 1)
        };
        assert_eq!(jar_from_row(jar_row(&jar, 7)).unwrap().tags, vec!["x"]);
    }

    #[test]
    fn jar_entries_follow_owner_visibility_tags_and_shares() {
        let (owner, reader) = (Uuid::new_v4(), Uuid::new_v4());
        let private = HoneyJar {
            tags: vec!["hr".into(), "a:b".into()],
            shared_with: vec![reader],
            ..sample_jar(owner, 1)
        };
        assert_eq!(
            jar_entries(&private),
            BTreeSet::from([
                owner_entry(owner),
                "visibility:private".to_owned(),
                "tag:hr".to_owned(),
                "tag:a:b".to_owned(),
            ]),
            "shares of a private jar are not a read path"
        );
        let shared = HoneyJar {
            visibility: Visibility::Shared,
            ..private.clone()
        };
        let added: Vec<_> = jar_entries(&shared)
            .difference(&jar_entries(&private))
            .cloned()
            .collect();
        assert_eq!(
            added,
            vec![
                "shared:".to_owned() + &reader.to_string(),
                "visibility:shared".to_owned()
            ]
        );
        // Every candidate source holds what the query can match.
        let q = JarQuery {
            reader: Some(reader),
            ..query()
        };
        assert_eq!(candidate_entries(&q), readable_entries(reader));
        let q = JarQuery {
            owner: Some(owner),
            tag: Some("hr".into()),
            ..q
        };
        assert_eq!(candidate_entries(&q), vec![owner_entry(owner)]);
        assert_eq!(candidate_entries(&query()).len(), 3);
    }

    /// The cases of the contract's `list_jars` test, on the node-side filter alone.
    #[test]
    fn the_listing_filter_is_sqlites_where_clause() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let jar = |owner,
                   visibility,
                   shared_with: Vec<UserId>,
                   created,
                   name: &str,
                   desc: &str,
                   tags: &[&str]| {
            HoneyJar {
                visibility,
                shared_with,
                name: name.to_owned(),
                description: desc.to_owned(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..sample_jar(owner, created)
            }
        };
        let jars = vec![
            jar(
                a,
                Visibility::Private,
                vec![b],
                1_000,
                "Alpha notes",
                "first",
                &["hr"],
            ),
            jar(
                a,
                Visibility::Shared,
                vec![b],
                2_000,
                "Beta: 100% sure",
                "second",
                &["hr", "legal"],
            ),
            jar(
                a,
                Visibility::Public,
                vec![],
                3_000,
                "Gamma",
                "The HANDBOOK",
                &["legal"],
            ),
            jar(
                c,
                Visibility::Private,
                vec![],
                4_000,
                "Delta",
                "100 percent",
                &["hr"],
            ),
            jar(
                c,
                Visibility::Shared,
                vec![a],
                5_000,
                "Epsilon",
                "handbook draft",
                &[],
            ),
        ];
        let s = |s: &str| Some(s.to_owned());
        let cases: Vec<(JarQuery, Vec<usize>)> = vec![
            (query(), vec![4, 3, 2, 1, 0]),
            (
                JarQuery {
                    reader: Some(b),
                    ..query()
                },
                vec![2, 1],
            ),
            (
                JarQuery {
                    reader: Some(a),
                    ..query()
                },
                vec![4, 2, 1, 0],
            ),
            (
                JarQuery {
                    reader: Some(c),
                    ..query()
                },
                vec![4, 3, 2],
            ),
            (
                JarQuery {
                    reader: Some(Uuid::new_v4()),
                    ..query()
                },
                vec![2],
            ),
            (
                JarQuery {
                    visibility: Some(Visibility::Shared),
                    ..query()
                },
                vec![4, 1],
            ),
            (
                JarQuery {
                    owner: Some(a),
                    ..query()
                },
                vec![2, 1, 0],
            ),
            (
                JarQuery {
                    reader: Some(a),
                    owner: Some(c),
                    ..query()
                },
                vec![4],
            ),
            (
                JarQuery {
                    tag: s("hr"),
                    ..query()
                },
                vec![3, 1, 0],
            ),
            (
                JarQuery {
                    reader: Some(b),
                    tag: s("hr"),
                    ..query()
                },
                vec![1],
            ),
            (
                JarQuery {
                    tag: s("nope"),
                    ..query()
                },
                vec![],
            ),
            (
                JarQuery {
                    search: s("handbook"),
                    ..query()
                },
                vec![4, 2],
            ),
            (
                JarQuery {
                    search: s("ALPHA"),
                    ..query()
                },
                vec![0],
            ),
            (
                JarQuery {
                    search: s("100%"),
                    ..query()
                },
                vec![1],
            ),
            (
                JarQuery {
                    search: s("a_"),
                    ..query()
                },
                vec![],
            ),
            (
                JarQuery {
                    search: s(""),
                    ..query()
                },
                vec![4, 3, 2, 1, 0],
            ),
            (
                JarQuery {
                    reader: Some(b),
                    visibility: Some(Visibility::Shared),
                    owner: Some(a),
                    tag: s("legal"),
                    search: s("beta"),
                    ..query()
                },
                vec![1],
            ),
        ];
        for (q, expected) in cases {
            let (listed, total) = page_of_jars(jars.clone(), &q);
            let expected: Vec<JarId> = expected.iter().map(|&i| jars[i].id).collect();
            assert_eq!(
                listed.iter().map(|j| j.id).collect::<Vec<_>>(),
                expected,
                "{q:?}"
            );
            assert_eq!(total, expected.len() as u64, "{q:?}");
        }
        let paged = |limit, offset| {
            let (listed, total) = page_of_jars(
                jars.clone(),
                &JarQuery {
                    page: Page { limit, offset },
                    ..query()
                },
            );
            (listed.iter().map(|j| j.id).collect::<Vec<_>>(), total)
        };
        assert_eq!(paged(2, 1), (vec![jars[3].id, jars[2].id], 5));
        assert_eq!(paged(2, 5), (vec![], 5));
        assert_eq!(paged(2, u64::MAX), (vec![], 5));
    }

    #[test]
    fn listing_ties_go_by_id() {
        let owner = Uuid::new_v4();
        let jars: Vec<HoneyJar> = (0..10).map(|_| sample_jar(owner, 5)).collect();
        let (listed, _) = page_of_jars(jars.clone(), &query());
        let mut ids: Vec<Uuid> = jars.iter().map(|j| j.id).collect();
        ids.sort();
        assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    }

    #[test]
    fn non_ascii_letters_match_only_as_written() {
        let jar = HoneyJar {
            name: "Ärger".to_owned(),
            ..sample_jar(Uuid::new_v4(), 1)
        };
        let search = |s: &str| {
            matches(
                &JarQuery {
                    search: Some(s.to_owned()),
                    ..query()
                },
                &jar,
            )
        };
        assert!(search("RGER"));
        assert!(search("Ä"));
        assert!(!search("ä"), "SQLite's LIKE folds ASCII only");
    }

    #[test]
    fn jar_rows_roundtrip_through_the_driver_serialization() {
        let jar = HoneyJar {
            visibility: Visibility::Shared,
            tags: vec!["policies".into(), "hr".into()],
            shared_with: vec![Uuid::new_v4(), Uuid::new_v4()],
            wrapped_key: Some(vec![0, 1, 2, 255]),
            document_count: 2,
            embedding_count: 7,
            ..sample_jar(Uuid::new_v4(), 1_000)
        };
        let columns = [
            ("id", ColumnType::Native(UuidType)),
            ("owner_id", ColumnType::Native(UuidType)),
            ("name", ColumnType::Native(Text)),
            ("description", ColumnType::Native(Text)),
            ("visibility", ColumnType::Native(Text)),
            ("tags", list_of(ColumnType::Native(Text))),
            ("allow_search", ColumnType::Native(Boolean)),
            ("allow_export", ColumnType::Native(Boolean)),
            ("encryption_enabled", ColumnType::Native(Boolean)),
            ("shared_with", list_of(ColumnType::Native(UuidType))),
            ("wrapped_key", ColumnType::Native(Blob)),
            ("document_count", ColumnType::Native(BigInt)),
            ("embedding_count", ColumnType::Native(BigInt)),
            ("created_at", ColumnType::Native(BigInt)),
            ("updated_at", ColumnType::Native(BigInt)),
            ("written_at", ColumnType::Native(BigInt)),
        ];
        for jar in [
            jar.clone(),
            HoneyJar {
                wrapped_key: None,
                tags: vec![],
                shared_with: vec![],
                ..jar
            },
        ] {
            let row = jar_row(&jar, 1_700_000_000_000_000);
            let back = roundtrip(&row, &columns);
            assert_eq!(back, row);
            assert_eq!(jar_from_row(back).unwrap(), jar);
        }

        let counts = JarCountsRow {
            document_count: 3,
            embedding_count: 40,
        };
        let count_columns = [
            ("document_count", ColumnType::Native(BigInt)),
            ("embedding_count", ColumnType::Native(BigInt)),
        ];
        assert_eq!(roundtrip(&counts, &count_columns), counts);
        let entry = JarEntryRow {
            jar_id: Uuid::new_v4(),
        };
        assert_eq!(
            roundtrip(&entry, &[("jar_id", ColumnType::Native(UuidType))]),
            entry
        );
        let bad = JarRow {
            visibility: "secret".into(),
            ..jar_row(&sample_jar(Uuid::new_v4(), 1), 1)
        };
        assert!(matches!(jar_from_row(bad), Err(StoreError::Internal(_))));
    }

    #[test]
    fn document_rows_roundtrip_through_the_driver_serialization() {
        let document = Document {
            id: Uuid::new_v4(),
            jar_id: Uuid::new_v4(),
            uploader_id: Uuid::new_v4(),
            filename: "handbook.pdf".into(),
            title: "Handbook".into(),
            description: "The staff handbook".into(),
            tags: vec!["hr".into(), "all".into()],
            size: 12_345,
            mime_type: "application/pdf".into(),
            kind: "pdf".into(),
            sha256: "ab".repeat(32),
            status: DocumentStatus::Failed,
            progress: 100,
            error: Some("unreadable".into()),
            chunk_count: 4,
            embedding_count: 4,
            processing_ms: Some(1_234),
            processing_attempts: 2,
            pages: Some(3),
            word_count: 900,
            language: Some("en".into()),
            uploaded_at: Timestamp(1_000),
            updated_at: Timestamp(9_000),
        };
        let columns = [
            ("id", ColumnType::Native(UuidType)),
            ("jar_id", ColumnType::Native(UuidType)),
            ("uploader_id", ColumnType::Native(UuidType)),
            ("uploaded_at", ColumnType::Native(BigInt)),
            ("filename", ColumnType::Native(Text)),
            ("title", ColumnType::Native(Text)),
            ("description", ColumnType::Native(Text)),
            ("tags", list_of(ColumnType::Native(Text))),
            ("size", ColumnType::Native(BigInt)),
            ("mime_type", ColumnType::Native(Text)),
            ("kind", ColumnType::Native(Text)),
            ("sha256", ColumnType::Native(Text)),
            ("status", ColumnType::Native(Text)),
            ("progress", ColumnType::Native(Int)),
            ("error", ColumnType::Native(Text)),
            ("chunk_count", ColumnType::Native(BigInt)),
            ("embedding_count", ColumnType::Native(BigInt)),
            ("processing_ms", ColumnType::Native(BigInt)),
            ("processing_attempts", ColumnType::Native(Int)),
            ("pages", ColumnType::Native(BigInt)),
            ("word_count", ColumnType::Native(BigInt)),
            ("language", ColumnType::Native(Text)),
            ("updated_at", ColumnType::Native(BigInt)),
            ("stored_chunks", ColumnType::Native(BigInt)),
            ("written_at", ColumnType::Native(BigInt)),
            ("deleted", ColumnType::Native(Boolean)),
        ];
        for document in [
            document.clone(),
            Document {
                status: DocumentStatus::Processing,
                error: None,
                processing_ms: None,
                pages: None,
                language: None,
                tags: vec![],
                ..document
            },
        ] {
            let row = document_row(&document, 4, 42);
            let back = roundtrip(&row, &columns);
            assert_eq!(back, row);
            assert_eq!(document_from_row(back).unwrap(), document);
        }

        let by_jar = JarDocumentRow {
            document_key: document_key(Uuid::new_v4()),
            uploaded_at: 1_000,
        };
        let by_jar_columns = [
            ("document_key", ColumnType::Native(Text)),
            ("uploaded_at", ColumnType::Native(BigInt)),
        ];
        assert_eq!(roundtrip(&by_jar, &by_jar_columns), by_jar);
        let by_status = StatusDocumentRow {
            uploaded_at: -5,
            document_key: document_key(Uuid::new_v4()),
        };
        let by_status_columns = [
            ("uploaded_at", ColumnType::Native(BigInt)),
            ("document_key", ColumnType::Native(Text)),
        ];
        assert_eq!(roundtrip(&by_status, &by_status_columns), by_status);
    }

    #[test]
    fn chunk_rows_roundtrip_through_the_driver_serialization() {
        let chunk = Chunk {
            document_id: Uuid::new_v4(),
            jar_id: Uuid::new_v4(),
            seq: u32::MAX,
            text: "chunk".into(),
            page: Some(2),
            section: Some("Section 3".into()),
            token_count: 103,
            embedding: vec![1.0 / 3.0, -0.0, f32::MIN_POSITIVE / 2.0, -1.0],
        };
        let row = ChunkRow {
            document_id: chunk.document_id,
            seq: i64::from(chunk.seq),
            jar_id: chunk.jar_id,
            text: chunk.text.clone(),
            page: chunk.page.map(i64::from),
            section: chunk.section.clone(),
            token_count: i64::from(chunk.token_count),
            embedding: embedding_to_bytes(&chunk.embedding),
        };
        let columns = [
            ("document_id", ColumnType::Native(UuidType)),
            ("seq", ColumnType::Native(BigInt)),
            ("jar_id", ColumnType::Native(UuidType)),
            ("text", ColumnType::Native(Text)),
            ("page", ColumnType::Native(BigInt)),
            ("section", ColumnType::Native(Text)),
            ("token_count", ColumnType::Native(BigInt)),
            ("embedding", ColumnType::Native(Blob)),
        ];
        let back = roundtrip(&row, &columns);
        assert_eq!(back, row);
        let read = chunk_from_row(back).unwrap();
        assert_eq!(read, chunk);
        assert_eq!(
            read.embedding
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            chunk
                .embedding
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        );
        let torn = ChunkRow {
            embedding: vec![1, 2, 3],
            ..row
        };
        assert!(matches!(chunk_from_row(torn), Err(StoreError::Internal(_))));
    }

    #[test]
    fn stray_chunks_are_refused() {
        let jar = sample_jar(Uuid::new_v4(), 1);
        let document = Document::new_upload(jar.id, jar.owner_id, "a.md".into(), 1, "00".into());
        let chunk = |document_id, jar_id| Chunk {
            document_id,
            jar_id,
            seq: 0,
            text: String::new(),
            page: None,
            section: None,
            token_count: 0,
            embedding: vec![],
        };
        assert!(check_chunks(&document, &[chunk(document.id, jar.id)]).is_ok());
        assert!(check_chunks(&document, &[chunk(Uuid::new_v4(), jar.id)]).is_err());
        assert!(check_chunks(&document, &[chunk(document.id, Uuid::new_v4())]).is_err());
        let twice = [chunk(document.id, jar.id), chunk(document.id, jar.id)];
        assert!(check_chunks(&document, &twice).is_err());
    }
}
