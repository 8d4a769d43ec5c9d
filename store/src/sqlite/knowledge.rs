//! The knowledge part of the SQLite backend: honey jars, their documents and chunks.
//!
//! Plain functions on a connection; the [`Store`](crate::Store) impl in `mod.rs` runs them on
//! the blocking pool, writers inside its IMMEDIATE transaction. Tags and shares live in their
//! own tables (`jar_tags`, `jar_shares`, `document_tags`), so a record is its row plus those
//! lists; reads that assemble one take a snapshot so they never mix two versions of it.

use rusqlite::types::{Type, Value};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{map_err, parse_uuid};
use crate::{
    Chunk, Document, DocumentId, DocumentStatus, HoneyJar, JarId, JarQuery, JarSettings, Page,
    StoreError, StoreResult, Timestamp, UserId, Visibility,
};

// ---- shared helpers ----

/// A conversion failure of column `column` (an unknown enum spelling, a malformed blob).
pub(super) fn bad_value(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, what.into())
}

/// Runs `f` in a read transaction, so that its statements see one snapshot (a record and its
/// lists, a page and its total). Inside a transaction already (a writer), runs `f` as is.
pub(super) fn snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    if !conn.is_autocommit() {
        return f(conn);
    }
    let tx = conn.unchecked_transaction()?;
    let value = f(&tx)?;
    tx.finish()?;
    Ok(value)
}

/// `page.offset` as SQLite wants it.
pub(super) fn offset(page: Page) -> i64 {
    page.offset.min(i64::MAX as u64) as i64
}

/// A `LIKE` pattern matching `text` as a literal substring (with `ESCAPE '\'`).
pub(super) fn like_substring(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// An ordered list kept as rows beside a record.
#[derive(Debug, Clone, Copy)]
enum List {
    JarTags,
    JarShares,
    DocumentTags,
}

impl List {
    /// (table, key column, value column)
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            List::JarTags => ("jar_tags", "jar_id", "tag"),
            List::JarShares => ("jar_shares", "jar_id", "user_id"),
            List::DocumentTags => ("document_tags", "document_id", "tag"),
        }
    }
}

/// The values of a list, in the order they were given.
fn read_list(conn: &Connection, list: List, key: &str) -> rusqlite::Result<Vec<String>> {
    let (table, key_column, value_column) = list.names();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {value_column} FROM {table} WHERE {key_column} = ?1 ORDER BY position"
    ))?;
    let values = stmt
        .query_map([key], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(values)
}

/// Replaces a list; a repeated value is kept once, at its first position.
fn write_list(tx: &Connection, list: List, key: &str, values: &[String]) -> StoreResult<()> {
    let (table, key_column, value_column) = list.names();
    delete_list(tx, list, key)?;
    let mut stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} ({key_column}, {value_column}, position) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING"
        ))
        .map_err(map_err)?;
    for (position, value) in values.iter().enumerate() {
        stmt.execute(params![key, value, position as i64])
            .map_err(map_err)?;
    }
    Ok(())
}

fn delete_list(tx: &Connection, list: List, key: &str) -> StoreResult<()> {
    let (table, key_column, _) = list.names();
    tx.execute(
        &format!("DELETE FROM {table} WHERE {key_column} = ?1"),
        [key],
    )
    .map_err(map_err)?;
    Ok(())
}

// ---- jars ----

const JAR_COLUMNS: &str = "id, owner_id, name, description, visibility, allow_search,
    allow_export, encryption_enabled, wrapped_key, document_count, embedding_count, created_at,
    updated_at";

/// A jar's row, without its tags and shares (see [`with_lists`]).
fn jar_from_row(row: &Row<'_>) -> rusqlite::Result<HoneyJar> {
    let visibility: String = row.get(4)?;
    Ok(HoneyJar {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        owner_id: parse_uuid(&row.get::<_, String>(1)?)?,
        name: row.get(2)?,
        description: row.get(3)?,
        visibility: Visibility::parse(&visibility)
            .ok_or_else(|| bad_value(4, format!("unknown visibility {visibility:?}")))?,
        tags: Vec::new(),
        settings: JarSettings {
            allow_search: row.get(5)?,
            allow_export: row.get(6)?,
            encryption_enabled: row.get(7)?,
        },
        shared_with: Vec::new(),
        wrapped_key: row.get(8)?,
        document_count: row.get::<_, i64>(9)? as u64,
        embedding_count: row.get::<_, i64>(10)? as u64,
        created_at: Timestamp(row.get(11)?),
        updated_at: Timestamp(row.get(12)?),
    })
}

/// Fills in a jar's tags and shares.
fn with_lists(conn: &Connection, mut jar: HoneyJar) -> rusqlite::Result<HoneyJar> {
    let id = jar.id.to_string();
    jar.tags = read_list(conn, List::JarTags, &id)?;
    jar.shared_with = read_list(conn, List::JarShares, &id)?
        .iter()
        .map(|user| parse_uuid(user))
        .collect::<rusqlite::Result<_>>()?;
    Ok(jar)
}

/// The jars `sql` selects (its columns must be [`JAR_COLUMNS`]), complete.
fn select_jars(conn: &Connection, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<HoneyJar>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), jar_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(|jar| with_lists(conn, jar)).collect()
}

/// A `WHERE` clause (with its arguments) selecting the jars a listing asks for.
#[derive(Default)]
struct JarFilter {
    clauses: Vec<&'static str>,
    args: Vec<Value>,
}

impl JarFilter {
    fn from_query(query: &JarQuery) -> JarFilter {
        let mut filter = JarFilter::default();
        if let Some(reader) = query.reader {
            filter.readable_by(reader);
        }
        if let Some(visibility) = query.visibility {
            filter.add("visibility = ?", [visibility.as_str().to_owned().into()]);
        }
        if let Some(owner) = query.owner {
            filter.add("owner_id = ?", [owner.to_string().into()]);
        }
        if let Some(tag) = &query.tag {
            filter.add(
                "id IN (SELECT jar_id FROM jar_tags WHERE tag = ?)",
                [tag.clone().into()],
            );
        }
        if let Some(search) = &query.search {
            let pattern = like_substring(search);
            // SQLite's LIKE folds ASCII case only.
            filter.add(
                "(name LIKE ? ESCAPE '\\' OR description LIKE ? ESCAPE '\\')",
                [pattern.clone().into(), pattern.into()],
            );
        }
        filter
    }

    /// Owned by `reader`, public, or shared with them (the rule of `can_read`, admins aside).
    fn readable_by(&mut self, reader: UserId) {
        let reader = reader.to_string();
        self.add(
            "(owner_id = ? OR visibility = ? OR (visibility = ?
              AND id IN (SELECT jar_id FROM jar_shares WHERE user_id = ?)))",
            [
                reader.clone().into(),
                Visibility::Public.as_str().to_owned().into(),
                Visibility::Shared.as_str().to_owned().into(),
                reader.into(),
            ],
        );
    }

    fn add<const N: usize>(&mut self, clause: &'static str, args: [Value; N]) {
        self.clauses.push(clause);
        self.args.extend(args);
    }

    fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

pub(super) fn create_jar(tx: &Connection, jar: &HoneyJar) -> StoreResult<()> {
    let id = jar.id.to_string();
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO jars ({JAR_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT DO NOTHING"
            ),
            params![
                id,
                jar.owner_id.to_string(),
                jar.name,
                jar.description,
                jar.visibility.as_str(),
                jar.settings.allow_search,
                jar.settings.allow_export,
                jar.settings.encryption_enabled,
                jar.wrapped_key,
                jar.document_count as i64,
                jar.embedding_count as i64,
                jar.created_at.0,
                jar.updated_at.0,
            ],
        )
        .map_err(map_err)?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!("honey jar {id} exists")));
    }
    write_jar_lists(tx, jar)
}

fn write_jar_lists(tx: &Connection, jar: &HoneyJar) -> StoreResult<()> {
    let id = jar.id.to_string();
    write_list(tx, List::JarTags, &id, &jar.tags)?;
    let shares: Vec<String> = jar.shared_with.iter().map(|u| u.to_string()).collect();
    write_list(tx, List::JarShares, &id, &shares)
}

pub(super) fn jar(conn: &Connection, id: JarId) -> rusqlite::Result<Option<HoneyJar>> {
    snapshot(conn, |conn| {
        conn.query_row(
            &format!("SELECT {JAR_COLUMNS} FROM jars WHERE id = ?1"),
            [id.to_string()],
            jar_from_row,
        )
        .optional()?
        .map(|jar| with_lists(conn, jar))
        .transpose()
    })
}

pub(super) fn update_jar(tx: &Connection, jar: &HoneyJar) -> StoreResult<()> {
    // The owner, the counts and the creation time are not the caller's to replace.
    let updated = tx
        .execute(
            "UPDATE jars SET name = ?2, description = ?3, visibility = ?4, allow_search = ?5,
             allow_export = ?6, encryption_enabled = ?7, wrapped_key = ?8, updated_at = ?9
             WHERE id = ?1",
            params![
                jar.id.to_string(),
                jar.name,
                jar.description,
                jar.visibility.as_str(),
                jar.settings.allow_search,
                jar.settings.allow_export,
                jar.settings.encryption_enabled,
                jar.wrapped_key,
                jar.updated_at.0,
            ],
        )
        .map_err(map_err)?;
    if updated == 0 {
        return Err(StoreError::NotFound {
            entity: "honey jar",
        });
    }
    write_jar_lists(tx, jar)
}

pub(super) fn delete_jar(tx: &Connection, id: JarId) -> StoreResult<bool> {
    super::marketplace::delete_jar_listings(tx, id)?;
    let id = id.to_string();
    tx.execute("DELETE FROM chunks WHERE jar_id = ?1", [&id])
        .map_err(map_err)?;
    tx.execute(
        "DELETE FROM document_tags
         WHERE document_id IN (SELECT id FROM documents WHERE jar_id = ?1)",
        [&id],
    )
    .map_err(map_err)?;
    tx.execute("DELETE FROM documents WHERE jar_id = ?1", [&id])
        .map_err(map_err)?;
    delete_list(tx, List::JarTags, &id)?;
    delete_list(tx, List::JarShares, &id)?;
    let deleted = tx
        .execute("DELETE FROM jars WHERE id = ?1", [&id])
        .map_err(map_err)?;
    Ok(deleted == 1)
}

pub(super) fn list_jars(
    conn: &Connection,
    query: &JarQuery,
) -> rusqlite::Result<(Vec<HoneyJar>, u64)> {
    let filter = JarFilter::from_query(query);
    let where_sql = filter.where_sql();
    snapshot(conn, |conn| {
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM jars {where_sql}"),
            params_from_iter(&filter.args),
            |row| row.get(0),
        )?;
        let mut args = filter.args.clone();
        args.extend([
            Value::Integer(query.page.limit.into()),
            Value::Integer(offset(query.page)),
        ]);
        let jars = select_jars(
            conn,
            &format!(
                "SELECT {JAR_COLUMNS} FROM jars {where_sql}
                 ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
            ),
            &args,
        )?;
        Ok((jars, total as u64))
    })
}

pub(super) fn readable_jars(conn: &Connection, reader: UserId) -> rusqlite::Result<Vec<HoneyJar>> {
    let mut filter = JarFilter::default();
    filter.readable_by(reader);
    snapshot(conn, |conn| {
        select_jars(
            conn,
            &format!(
                "SELECT {JAR_COLUMNS} FROM jars {} ORDER BY created_at, id",
                filter.where_sql()
            ),
            &filter.args,
        )
    })
}

// ---- documents ----

const DOCUMENT_COLUMNS: &str = "id, jar_id, uploader_id, uploaded_at, filename, title,
    description, size, mime_type, kind, sha256, status, progress, error, chunk_count,
    embedding_count, processing_ms, pages, word_count, language, updated_at, processing_attempts";

/// A document's row, without its tags (see [`with_tags`]).
fn document_from_row(row: &Row<'_>) -> rusqlite::Result<Document> {
    let status: String = row.get(11)?;
    Ok(Document {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        jar_id: parse_uuid(&row.get::<_, String>(1)?)?,
        uploader_id: parse_uuid(&row.get::<_, String>(2)?)?,
        uploaded_at: Timestamp(row.get(3)?),
        filename: row.get(4)?,
        title: row.get(5)?,
        description: row.get(6)?,
        tags: Vec::new(),
        size: row.get::<_, i64>(7)? as u64,
        mime_type: row.get(8)?,
        kind: row.get(9)?,
        sha256: row.get(10)?,
        status: DocumentStatus::parse(&status)
            .ok_or_else(|| bad_value(11, format!("unknown document status {status:?}")))?,
        progress: row.get(12)?,
        error: row.get(13)?,
        chunk_count: row.get::<_, i64>(14)? as u64,
        embedding_count: row.get::<_, i64>(15)? as u64,
        processing_ms: row.get::<_, Option<i64>>(16)?.map(|ms| ms as u64),
        pages: row.get(17)?,
        word_count: row.get::<_, i64>(18)? as u64,
        language: row.get(19)?,
        updated_at: Timestamp(row.get(20)?),
        processing_attempts: row.get(21)?,
    })
}

fn with_tags(conn: &Connection, mut document: Document) -> rusqlite::Result<Document> {
    document.tags = read_list(conn, List::DocumentTags, &document.id.to_string())?;
    Ok(document)
}

/// The documents `sql` selects (its columns must be [`DOCUMENT_COLUMNS`]), complete.
fn select_documents(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Document>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map(args, document_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(|d| with_tags(conn, d)).collect()
}

/// Writes a document's record: inserts it when `create`, else replaces its mutable fields.
fn write_document(tx: &Connection, d: &Document, create: bool) -> StoreResult<()> {
    let id = d.id.to_string();
    let values = params![
        id,
        d.jar_id.to_string(),
        d.uploader_id.to_string(),
        d.uploaded_at.0,
        d.filename,
        d.title,
        d.description,
        d.size as i64,
        d.mime_type,
        d.kind,
        d.sha256,
        d.status.as_str(),
        d.progress,
        d.error,
        d.chunk_count as i64,
        d.embedding_count as i64,
        d.processing_ms.map(|ms| ms as i64),
        d.pages,
        d.word_count as i64,
        d.language,
        d.updated_at.0,
        d.processing_attempts,
    ];
    if create {
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO documents ({DOCUMENT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                             ?16, ?17, ?18, ?19, ?20, ?21, ?22)
                     ON CONFLICT DO NOTHING"
                ),
                values,
            )
            .map_err(map_err)?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("document {id} exists")));
        }
    } else {
        // The jar (its chunks are keyed by it), the uploader and the upload time never
        // change; ?2 to ?4 are bound but unused.
        let updated = tx
            .execute(
                "UPDATE documents SET filename = ?5, title = ?6, description = ?7, size = ?8,
                 mime_type = ?9, kind = ?10, sha256 = ?11, status = ?12, progress = ?13,
                 error = ?14, chunk_count = ?15, embedding_count = ?16, processing_ms = ?17,
                 pages = ?18, word_count = ?19, language = ?20, updated_at = ?21,
                 processing_attempts = ?22
                 WHERE id = ?1",
                values,
            )
            .map_err(map_err)?;
        if updated == 0 {
            return Err(StoreError::NotFound { entity: "document" });
        }
    }
    write_list(tx, List::DocumentTags, &id, &d.tags)
}

pub(super) fn create_document(tx: &Connection, document: &Document) -> StoreResult<()> {
    // Checked in the writer's transaction, so a concurrent delete_jar cannot slip between.
    let jar_exists = tx
        .query_row(
            "SELECT 1 FROM jars WHERE id = ?1",
            [document.jar_id.to_string()],
            |_| Ok(()),
        )
        .optional()
        .map_err(map_err)?
        .is_some();
    if !jar_exists {
        return Err(StoreError::NotFound {
            entity: "honey jar",
        });
    }
    write_document(tx, document, true)
}

pub(super) fn document(conn: &Connection, id: DocumentId) -> rusqlite::Result<Option<Document>> {
    snapshot(conn, |conn| {
        conn.query_row(
            &format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?1"),
            [id.to_string()],
            document_from_row,
        )
        .optional()?
        .map(|d| with_tags(conn, d))
        .transpose()
    })
}

pub(super) fn update_document(tx: &Connection, document: &Document) -> StoreResult<()> {
    write_document(tx, document, false)
}

pub(super) fn list_documents(
    conn: &Connection,
    jar_id: JarId,
    page: Page,
) -> rusqlite::Result<(Vec<Document>, u64)> {
    snapshot(conn, |conn| {
        let jar_id = jar_id.to_string();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM documents WHERE jar_id = ?1",
            [&jar_id],
            |row| row.get(0),
        )?;
        let documents = select_documents(
            conn,
            &format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE jar_id = ?1
                 ORDER BY uploaded_at DESC, id LIMIT ?2 OFFSET ?3"
            ),
            params![jar_id, page.limit as i64, offset(page)],
        )?;
        Ok((documents, total as u64))
    })
}

pub(super) fn documents_with_status(
    conn: &Connection,
    status: DocumentStatus,
    limit: u32,
) -> rusqlite::Result<Vec<Document>> {
    snapshot(conn, |conn| {
        select_documents(
            conn,
            &format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE status = ?1
                 ORDER BY uploaded_at, id LIMIT ?2"
            ),
            params![status.as_str(), limit as i64],
        )
    })
}

pub(super) fn delete_document(tx: &Connection, id: DocumentId) -> StoreResult<Option<Document>> {
    let Some(deleted) = document(tx, id).map_err(map_err)? else {
        return Ok(None);
    };
    let id = id.to_string();
    let before = stored_chunks(tx, &id)?;
    tx.execute("DELETE FROM chunks WHERE document_id = ?1", [&id])
        .map_err(map_err)?;
    count_chunks(tx, deleted.jar_id, before, 0)?;
    delete_list(tx, List::DocumentTags, &id)?;
    tx.execute("DELETE FROM documents WHERE id = ?1", [&id])
        .map_err(map_err)?;
    Ok(Some(deleted))
}

// ---- chunks ----

const CHUNK_COLUMNS: &str = "document_id, seq, jar_id, text, page, section, token_count, embedding";

fn chunk_from_row(row: &Row<'_>) -> rusqlite::Result<Chunk> {
    let embedding: Vec<u8> = row.get(7)?;
    Ok(Chunk {
        document_id: parse_uuid(&row.get::<_, String>(0)?)?,
        seq: row.get(1)?,
        jar_id: parse_uuid(&row.get::<_, String>(2)?)?,
        text: row.get(3)?,
        page: row.get(4)?,
        section: row.get(5)?,
        token_count: row.get(6)?,
        embedding: crate::embedding_from_bytes(&embedding).ok_or_else(|| {
            bad_value(
                7,
                format!("embedding of {} bytes is not f32s", embedding.len()),
            )
        })?,
    })
}

fn select_chunks(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Chunk>> {
    let mut stmt = conn.prepare(sql)?;
    let chunks = stmt
        .query_map(args, chunk_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(chunks)
}

/// How many chunks a document has stored.
fn stored_chunks(tx: &Connection, document_id: &str) -> StoreResult<u64> {
    tx.query_row(
        "SELECT COUNT(*) FROM chunks WHERE document_id = ?1",
        [document_id],
        |row| row.get::<_, i64>(0),
    )
    .map(|count| count as u64)
    .map_err(map_err)
}

/// Moves a jar's counts as one of its documents goes from `before` to `after` stored chunks:
/// a document counts once while it has chunks, and each chunk is one embedding. Called in the
/// transaction that changes the chunks, so the counts cannot drift from them.
fn count_chunks(tx: &Connection, jar_id: JarId, before: u64, after: u64) -> StoreResult<()> {
    let documents = i64::from(after > 0) - i64::from(before > 0);
    let embeddings = after as i64 - before as i64;
    if documents == 0 && embeddings == 0 {
        return Ok(());
    }
    // Never below 0, should counts written before they were kept this way be short.
    let updated = tx
        .execute(
            "UPDATE jars SET document_count = MAX(0, document_count + ?2),
             embedding_count = MAX(0, embedding_count + ?3) WHERE id = ?1",
            params![jar_id.to_string(), documents, embeddings],
        )
        .map_err(map_err)?;
    if updated == 0 {
        return Err(StoreError::NotFound {
            entity: "honey jar",
        });
    }
    Ok(())
}

/// Replaces a document's chunks and record and moves its jar's counts by the difference; the
/// caller has run [`crate::check_chunks`].
pub(super) fn save_chunks(
    tx: &Connection,
    document: &Document,
    chunks: &[Chunk],
) -> StoreResult<()> {
    // First the record: it fails (and so the transaction) when the document was deleted.
    write_document(tx, document, false)?;
    let id = document.id.to_string();
    let before = stored_chunks(tx, &id)?;
    tx.execute("DELETE FROM chunks WHERE document_id = ?1", [&id])
        .map_err(map_err)?;
    count_chunks(tx, document.jar_id, before, chunks.len() as u64)?;
    let mut insert = tx
        .prepare_cached(&format!(
            "INSERT INTO chunks ({CHUNK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))
        .map_err(map_err)?;
    for chunk in chunks {
        insert
            .execute(params![
                id,
                chunk.seq,
                chunk.jar_id.to_string(),
                chunk.text,
                chunk.page,
                chunk.section,
                chunk.token_count,
                crate::embedding_to_bytes(&chunk.embedding),
            ])
            .map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn document_chunks(
    conn: &Connection,
    document_id: DocumentId,
) -> rusqlite::Result<Vec<Chunk>> {
    select_chunks(
        conn,
        &format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE document_id = ?1 ORDER BY seq"),
        [document_id.to_string()],
    )
}

pub(super) fn jar_chunks(
    conn: &Connection,
    jar_id: JarId,
    after: Option<(DocumentId, u32)>,
    limit: u32,
) -> rusqlite::Result<Vec<Chunk>> {
    let jar_id = jar_id.to_string();
    // Hyphenated lowercase UUID text sorts like the UUIDs' bytes, so the text order is the
    // (DocumentId, seq) order callers see.
    match after {
        None => select_chunks(
            conn,
            &format!(
                "SELECT {CHUNK_COLUMNS} FROM chunks WHERE jar_id = ?1
                 ORDER BY document_id, seq LIMIT ?2"
            ),
            params![jar_id, limit as i64],
        ),
        Some((document_id, seq)) => select_chunks(
            conn,
            &format!(
                "SELECT {CHUNK_COLUMNS} FROM chunks WHERE jar_id = ?1
                 AND (document_id > ?2 OR (document_id = ?2 AND seq > ?3))
                 ORDER BY document_id, seq LIMIT ?4"
            ),
            params![jar_id, document_id.to_string(), seq, limit as i64],
        ),
    }
}
