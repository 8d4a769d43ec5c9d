//! One shard's indexes, kept in the shard's directory on the node's disk:
//!
//! - `text/`: tantivy, BM25 over chunk text, section, document title and tags; it also stores
//!   each chunk's text, page and section for results;
//! - `vectors.usearch`: an HNSW graph (usearch) over int8-quantised embeddings, which proposes
//!   candidates;
//! - `vectors.f32`: the exact embeddings, by document, which re-score the candidates and serve
//!   exact scans when a filter leaves few chunks;
//! - `state.json`: the documents the files hold, and whether they were last written together.
//!
//! The store stays the source of truth: a directory whose files were not checkpointed together
//! (a crash, a format change, a damaged file) is wiped and rebuilt from the store, and the shard
//! actor brings a clean one up to date with the store (see `catch_up` in the parent module).
//!
//! Vector search strategy: when the chunks that pass the filters number at most
//! [`EXACT_SCAN_MAX`] they are scanned exactly; otherwise the graph proposes
//! `max(4 × limit, 40)` candidates (filtered inside the graph walk when a filter applies) which
//! are re-scored with the exact embeddings.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sting_store::{Chunk, Document, DocumentId};
use tantivy::collector::TopDocs;
use tantivy::query::{QueryParser, TermSetQuery};
use tantivy::schema::{Field, Schema, Value, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, TantivyDocument, Term};
use usearch::{IndexOptions, MetricKind, ScalarKind};

/// Bytes of tantivy's indexing arena (its minimum is 15 MB per thread).
const WRITER_ARENA_BYTES: usize = 15_000_000;
/// Bumped whenever the files' layout changes: older directories are rebuilt.
const FORMAT: u32 = 1;
/// A chunk's key is `slot << SEQ_BITS | seq`: the slot names the document inside this index.
const SEQ_BITS: u32 = 24;
/// Filtered chunks up to this many are scanned exactly instead of walking the graph.
pub const EXACT_SCAN_MAX: usize = 20_000;
/// HNSW parameters: links per node, candidate list while inserting and while searching.
const GRAPH_CONNECTIVITY: usize = 16;
const GRAPH_EXPANSION_ADD: usize = 40;
const GRAPH_EXPANSION_SEARCH: usize = 128;

/// What search filters and shows of a document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentInfo {
    pub title: String,
    pub kind: String,
    pub tags: Vec<String>,
}

/// A chunk found by one of the two rankings, with its score in that ranking.
#[derive(Debug, Clone)]
pub struct ChunkHit {
    pub document_id: DocumentId,
    pub seq: u32,
    pub text: String,
    pub page: Option<u32>,
    pub section: Option<String>,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("text index: {0}")]
    Text(#[from] tantivy::TantivyError),
    #[error("vector index: {0}")]
    Vectors(String),
    #[error("index files: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

impl From<cxx::Exception> for IndexError {
    fn from(err: cxx::Exception) -> IndexError {
        IndexError::Vectors(err.what().to_string())
    }
}

/// A document as the index holds it.
struct Held {
    id: DocumentId,
    info: DocumentInfo,
    updated_at: i64,
    chunks: u32,
    /// `chunks × dims` exact embeddings.
    vectors: Vec<f32>,
}

/// `state.json`.
#[derive(Serialize, Deserialize)]
struct State {
    format: u32,
    /// False from the first change after a checkpoint until the next checkpoint.
    clean: bool,
    dims: usize,
    next_slot: u32,
    graph_bytes: u64,
    documents: Vec<HeldRecord>,
}

#[derive(Serialize, Deserialize)]
struct HeldRecord {
    id: DocumentId,
    slot: u32,
    info: DocumentInfo,
    updated_at: i64,
    chunks: u32,
}

/// What [`ShardIndex::load`] reads from a checkpointed directory.
struct Loaded {
    text: Index,
    graph: Option<usearch::Index>,
    dims: usize,
    next_slot: u32,
    slots: HashMap<u32, Held>,
}

struct Fields {
    key: Field,
    document: Field,
    seq: Field,
    page: Field,
    text: Field,
    section: Field,
    title: Field,
    tags: Field,
}

pub struct ShardIndex {
    dir: PathBuf,
    text: Index,
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    graph: Option<usearch::Index>,
    dims: usize,
    slots: HashMap<u32, Held>,
    by_document: HashMap<DocumentId, u32>,
    next_slot: u32,
    /// Vectors removed from the graph since it was last built (usearch only marks them).
    tombstones: usize,
    dirty: bool,
}

impl ShardIndex {
    /// Opens the index in `dir`, or starts an empty one there (wiping what was left) when the
    /// files are missing, from another format or were not checkpointed together.
    pub fn open(dir: &Path) -> Result<ShardIndex, IndexError> {
        let loaded = match Self::load(dir) {
            Ok(loaded) => loaded,
            Err(err) => {
                if dir.exists() {
                    tracing::info!(dir = %dir.display(), reason = %err, "rebuilding shard index from the store");
                    fs::remove_dir_all(dir)?;
                }
                fs::create_dir_all(dir.join("text"))?;
                Loaded {
                    text: Index::create_in_dir(dir.join("text"), schema().0)?,
                    graph: None,
                    dims: 0,
                    next_slot: 0,
                    slots: HashMap::new(),
                }
            }
        };
        // Taking the writer (a lock on the directory) is not a reason to wipe anything.
        let writer = loaded.text.writer_with_num_threads(1, WRITER_ARENA_BYTES)?;
        let reader = loaded.text.reader()?;
        let by_document = loaded
            .slots
            .iter()
            .map(|(&slot, held)| (held.id, slot))
            .collect();
        Ok(ShardIndex {
            dir: dir.to_path_buf(),
            fields: schema().1,
            text: loaded.text,
            writer,
            reader,
            graph: loaded.graph,
            dims: loaded.dims,
            slots: loaded.slots,
            by_document,
            next_slot: loaded.next_slot,
            tombstones: 0,
            dirty: false,
        })
    }

    /// Reads a checkpointed directory; any doubt is an error.
    fn load(dir: &Path) -> Result<Loaded, IndexError> {
        let state: State = serde_json::from_slice(&fs::read(dir.join("state.json"))?)
            .map_err(|err| IndexError::Invalid(err.to_string()))?;
        if state.format != FORMAT || !state.clean {
            return Err(IndexError::Invalid("not checkpointed".into()));
        }
        let text = Index::open_in_dir(dir.join("text"))?;
        if text.schema() != schema().0 {
            return Err(IndexError::Invalid("text schema changed".into()));
        }
        let vectors = fs::read(dir.join("vectors.f32"))?;
        let total: usize = state.documents.iter().map(|d| d.chunks as usize).sum();
        if vectors.len() != total * state.dims * 4 {
            return Err(IndexError::Invalid("vectors.f32 has the wrong size".into()));
        }
        let graph_path = dir.join("vectors.usearch");
        let graph = if state.dims > 0 {
            if fs::metadata(&graph_path)?.len() != state.graph_bytes {
                return Err(IndexError::Invalid(
                    "vectors.usearch has the wrong size".into(),
                ));
            }
            let graph = new_graph(state.dims)?;
            graph.load(path_str(&graph_path)?)?;
            Some(graph)
        } else {
            None
        };
        let mut floats = vectors
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut slots = HashMap::with_capacity(state.documents.len());
        for record in state.documents {
            let len = record.chunks as usize * state.dims;
            slots.insert(
                record.slot,
                Held {
                    id: record.id,
                    info: record.info,
                    updated_at: record.updated_at,
                    chunks: record.chunks,
                    vectors: floats.by_ref().take(len).collect(),
                },
            );
        }
        Ok(Loaded {
            text,
            graph,
            dims: state.dims,
            next_slot: state.next_slot,
            slots,
        })
    }

    /// The documents held, with the `updated_at` they were indexed at.
    pub fn versions(&self) -> HashMap<DocumentId, i64> {
        self.slots
            .values()
            .map(|held| (held.id, held.updated_at))
            .collect()
    }

    /// Adds (or replaces) documents with their chunks; [`ShardIndex::commit`] makes them
    /// searchable. Chunks whose embedding does not have the index's dimensions are refused.
    pub fn put(&mut self, documents: Vec<(Document, Vec<Chunk>)>) -> Result<(), IndexError> {
        // Check everything first: a refused batch changes nothing.
        let mut dims = self.dims;
        for (document, chunks) in &documents {
            if chunks.len() >= 1 << SEQ_BITS {
                return Err(IndexError::Invalid(format!(
                    "document {} has too many chunks",
                    document.id
                )));
            }
            for chunk in chunks {
                if dims == 0 {
                    dims = chunk.embedding.len();
                }
                if chunk.embedding.len() != dims {
                    return Err(IndexError::Invalid(format!(
                        "chunk {} of document {} has {} dimensions, the index {dims}",
                        chunk.seq,
                        document.id,
                        chunk.embedding.len()
                    )));
                }
            }
        }
        self.mark_dirty()?;
        self.dims = dims;
        let mut added: Vec<u64> = Vec::new();
        for (document, chunks) in documents {
            self.remove(document.id)?;
            let slot = self.next_slot;
            self.next_slot += 1;
            let info = DocumentInfo {
                title: document.title.clone(),
                kind: document.kind.clone(),
                tags: document.tags.clone(),
            };
            let mut vectors = Vec::with_capacity(chunks.len() * dims);
            for (position, chunk) in chunks.iter().enumerate() {
                let key = key_of(slot, position as u32);
                let fields = &self.fields;
                let mut entry = doc!(
                    fields.key => key,
                    fields.document => document.id.to_string(),
                    fields.seq => chunk.seq as u64,
                    fields.text => chunk.text.as_str(),
                    fields.title => info.title.as_str(),
                    fields.tags => info.tags.join(" "),
                );
                if let Some(page) = chunk.page {
                    entry.add_u64(fields.page, page as u64);
                }
                if let Some(section) = &chunk.section {
                    entry.add_text(fields.section, section);
                }
                self.writer.add_document(entry)?;
                vectors.extend_from_slice(&chunk.embedding);
                added.push(key);
            }
            self.by_document.insert(document.id, slot);
            self.slots.insert(
                slot,
                Held {
                    id: document.id,
                    info,
                    updated_at: document.updated_at.0,
                    chunks: chunks.len() as u32,
                    vectors,
                },
            );
        }
        self.add_to_graph(&added)
    }

    /// Removes a document's chunks (from the text index at the next commit).
    pub fn remove(&mut self, document: DocumentId) -> Result<(), IndexError> {
        let Some(slot) = self.by_document.remove(&document) else {
            return Ok(());
        };
        self.mark_dirty()?;
        self.writer.delete_term(Term::from_field_text(
            self.fields.document,
            &document.to_string(),
        ));
        if let (Some(held), Some(graph)) = (self.slots.remove(&slot), &self.graph) {
            for position in 0..held.chunks {
                graph.remove(key_of(slot, position))?;
            }
            self.tombstones += held.chunks as usize;
        }
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Writes the vector files and marks the directory consistent (the text index is already
    /// committed). Rebuilds the graph first when removals left it mostly tombstones.
    pub fn checkpoint(&mut self) -> Result<(), IndexError> {
        if !self.dirty {
            return Ok(());
        }
        self.commit()?;
        let live = self.chunk_count();
        if self.tombstones > 1000 && self.tombstones > live / 2 {
            self.graph = None;
            self.tombstones = 0;
            let all: Vec<u64> = self
                .slots
                .iter()
                .flat_map(|(&slot, held)| (0..held.chunks).map(move |p| key_of(slot, p)))
                .collect();
            self.add_to_graph(&all)?;
        }
        let mut graph_bytes = 0;
        if let Some(graph) = &self.graph {
            let path = self.dir.join("vectors.usearch");
            let partial = self.dir.join("vectors.usearch.partial");
            graph.save(path_str(&partial)?)?;
            graph_bytes = fs::metadata(&partial)?.len();
            fs::rename(partial, path)?;
        }
        let mut documents = Vec::with_capacity(self.slots.len());
        let partial = self.dir.join("vectors.f32.partial");
        let mut out = BufWriter::new(fs::File::create(&partial)?);
        for (&slot, held) in &self.slots {
            for value in &held.vectors {
                out.write_all(&value.to_le_bytes())?;
            }
            documents.push(HeldRecord {
                id: held.id,
                slot,
                info: held.info.clone(),
                updated_at: held.updated_at,
                chunks: held.chunks,
            });
        }
        out.into_inner()
            .map_err(|err| err.into_error())?
            .sync_all()?;
        fs::rename(partial, self.dir.join("vectors.f32"))?;
        self.write_state(true, graph_bytes, documents)?;
        self.dirty = false;
        Ok(())
    }

    /// Deletes the index's directory (its jar is gone).
    pub fn destroy(self) -> Result<(), IndexError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    pub fn document(&self, id: DocumentId) -> Option<&DocumentInfo> {
        self.by_document
            .get(&id)
            .and_then(|slot| self.slots.get(slot))
            .map(|held| &held.info)
    }

    pub fn document_count(&self) -> usize {
        self.slots.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.slots.values().map(|held| held.chunks as usize).sum()
    }

    /// BM25 ranking of the chunks of documents that pass `keep`, at most `limit`.
    pub fn bm25(
        &self,
        query: &str,
        limit: usize,
        keep: &dyn Fn(&DocumentInfo) -> bool,
    ) -> Result<Vec<ChunkHit>, IndexError> {
        let fields = &self.fields;
        let parser = QueryParser::for_index(
            &self.text,
            vec![fields.text, fields.section, fields.title, fields.tags],
        );
        let (query, _) = parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        // Filters apply after ranking: fetch more so that filtering still leaves `limit`.
        let fetch = (limit * 4).max(limit + 16);
        let top = searcher.search(&query, &TopDocs::with_limit(fetch).order_by_score())?;
        let mut hits = Vec::with_capacity(limit);
        for (score, address) in top {
            let stored: TantivyDocument = searcher.doc(address)?;
            let Some(hit) = self.chunk_hit(&stored, score) else {
                continue;
            };
            if self.document(hit.document_id).is_some_and(keep) {
                hits.push(hit);
                if hits.len() == limit {
                    break;
                }
            }
        }
        Ok(hits)
    }

    /// Cosine ranking (embeddings are unit vectors) of the chunks of documents that pass
    /// `keep`, at most `limit`; scores are exact cosines.
    pub fn nearest(
        &self,
        query: &[f32],
        limit: usize,
        keep: &dyn Fn(&DocumentInfo) -> bool,
    ) -> Result<Vec<ChunkHit>, IndexError> {
        if query.len() != self.dims || limit == 0 {
            return Ok(Vec::new());
        }
        let passing: Vec<(u32, &Held)> = self
            .slots
            .iter()
            .filter(|(_, held)| keep(&held.info))
            .map(|(&slot, held)| (slot, held))
            .collect();
        let passing_chunks: usize = passing.iter().map(|(_, held)| held.chunks as usize).sum();
        let scored: Vec<(u64, f32)> = match &self.graph {
            Some(graph) if passing_chunks > EXACT_SCAN_MAX => {
                let candidates = (limit * 4).max(40);
                let matches = if passing.len() == self.slots.len() {
                    graph.search(query, candidates)?
                } else {
                    let allowed: HashSet<u32> = passing.iter().map(|&(slot, _)| slot).collect();
                    graph
                        .filtered_search(query, candidates, |key| allowed.contains(&slot_of(key)))?
                };
                matches
                    .keys
                    .into_iter()
                    .filter_map(|key| Some((key, dot(query, self.vector(key)?))))
                    .collect()
            }
            _ => passing
                .iter()
                .flat_map(|&(slot, held)| {
                    held.vectors
                        .chunks_exact(self.dims)
                        .enumerate()
                        .map(move |(p, v)| (key_of(slot, p as u32), dot(query, v)))
                })
                .collect(),
        };
        let best = top(scored, limit);
        if best.is_empty() {
            return Ok(Vec::new());
        }
        // One term-set lookup fetches the stored chunks of every hit.
        let searcher = self.reader.searcher();
        let terms = best
            .iter()
            .map(|&(key, _)| Term::from_field_u64(self.fields.key, key));
        let found = searcher.search(
            &TermSetQuery::new(terms),
            &TopDocs::with_limit(best.len()).order_by_score(),
        )?;
        let mut stored_by_key = HashMap::with_capacity(found.len());
        for (_, address) in found {
            let stored: TantivyDocument = searcher.doc(address)?;
            if let Some(key) = stored.get_first(self.fields.key).and_then(|v| v.as_u64()) {
                stored_by_key.insert(key, stored);
            }
        }
        Ok(best
            .into_iter()
            .filter_map(|(key, score)| self.chunk_hit(stored_by_key.get(&key)?, score))
            .collect())
    }

    fn chunk_hit(&self, stored: &TantivyDocument, score: f32) -> Option<ChunkHit> {
        let fields = &self.fields;
        let text_of = |field| stored.get_first(field).and_then(|v| v.as_str());
        Some(ChunkHit {
            document_id: text_of(fields.document)?.parse().ok()?,
            seq: stored.get_first(fields.seq)?.as_u64()? as u32,
            text: text_of(fields.text)?.to_string(),
            page: stored
                .get_first(fields.page)
                .and_then(|v| v.as_u64())
                .map(|p| p as u32),
            section: text_of(fields.section).map(str::to_string),
            score,
        })
    }

    fn vector(&self, key: u64) -> Option<&[f32]> {
        let held = self.slots.get(&slot_of(key))?;
        let at = (key & ((1 << SEQ_BITS) - 1)) as usize * self.dims;
        held.vectors.get(at..at + self.dims)
    }

    /// Inserts the vectors of `keys` into the graph, on every core when there are many.
    fn add_to_graph(&mut self, keys: &[u64]) -> Result<(), IndexError> {
        if keys.is_empty() {
            return Ok(());
        }
        if self.graph.is_none() {
            self.graph = Some(new_graph(self.dims)?);
        }
        let graph = self.graph.as_ref().expect("created above");
        let needed = graph.size() + keys.len();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if needed > graph.capacity() {
            graph.reserve_capacity_and_threads(needed.max(graph.capacity() * 2), threads)?;
        }
        let add = |part: &[u64]| -> Result<(), IndexError> {
            for &key in part {
                let vector = self.vector(key).expect("vectors are held before insertion");
                graph.add(key, vector)?;
            }
            Ok(())
        };
        if keys.len() < 256 || threads == 1 {
            return add(keys);
        }
        let part = keys.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = keys
                .chunks(part)
                .map(|p| scope.spawn(move || add(p)))
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("graph insertion panicked"))
        })
    }

    fn mark_dirty(&mut self) -> Result<(), IndexError> {
        if !self.dirty {
            self.write_state(false, 0, Vec::new())?;
            self.dirty = true;
        }
        Ok(())
    }

    fn write_state(
        &self,
        clean: bool,
        graph_bytes: u64,
        documents: Vec<HeldRecord>,
    ) -> Result<(), IndexError> {
        let state = State {
            format: FORMAT,
            clean,
            dims: self.dims,
            next_slot: self.next_slot,
            graph_bytes,
            documents,
        };
        let partial = self.dir.join("state.json.partial");
        let bytes =
            serde_json::to_vec(&state).map_err(|err| IndexError::Invalid(err.to_string()))?;
        let mut file = fs::File::create(&partial)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(partial, self.dir.join("state.json"))?;
        Ok(())
    }
}

fn schema() -> (Schema, Fields) {
    let mut schema = Schema::builder();
    let fields = Fields {
        key: schema.add_u64_field("key", STORED | INDEXED),
        document: schema.add_text_field("document", STRING | STORED),
        seq: schema.add_u64_field("seq", STORED),
        page: schema.add_u64_field("page", STORED),
        text: schema.add_text_field("text", TEXT | STORED),
        section: schema.add_text_field("section", TEXT | STORED),
        title: schema.add_text_field("title", TEXT),
        tags: schema.add_text_field("tags", TEXT),
    };
    (schema.build(), fields)
}

fn new_graph(dims: usize) -> Result<usearch::Index, IndexError> {
    Ok(usearch::Index::new(&IndexOptions {
        dimensions: dims,
        metric: MetricKind::IP,
        quantization: ScalarKind::I8,
        connectivity: GRAPH_CONNECTIVITY,
        expansion_add: GRAPH_EXPANSION_ADD,
        expansion_search: GRAPH_EXPANSION_SEARCH,
        multi: false,
    })?)
}

fn path_str(path: &Path) -> Result<&str, IndexError> {
    path.to_str()
        .ok_or_else(|| IndexError::Invalid(format!("{} is not UTF-8", path.display())))
}

fn key_of(slot: u32, position: u32) -> u64 {
    ((slot as u64) << SEQ_BITS) | position as u64
}

fn slot_of(key: u64) -> u32 {
    (key >> SEQ_BITS) as u32
}

/// The `limit` best `(key, score)` pairs, best first.
fn top(mut scored: Vec<(u64, f32)>, limit: usize) -> Vec<(u64, f32)> {
    let limit = limit.min(scored.len());
    if limit == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(limit - 1, |a, b| b.1.total_cmp(&a.1));
    scored.truncate(limit);
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

/// Dot product in 16 independent lanes, so that the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for lane in 0..16 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use sting_store::{DocumentStatus, Timestamp};

    const DIMS: usize = 8;

    fn document(n: u128, tag: &str) -> Document {
        let upload = Document::new_upload(
            DocumentId::nil(),
            DocumentId::nil(),
            format!("d{n}.md"),
            1,
            String::new(),
        );
        Document {
            id: DocumentId::from_u128(n),
            title: format!("Document {n}"),
            tags: vec![tag.to_string()],
            kind: "markdown".into(),
            status: DocumentStatus::Processed,
            updated_at: Timestamp(n as i64),
            ..upload
        }
    }

    /// A deterministic unit vector.
    fn vector(seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..DIMS)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    fn chunks(document: &Document, count: u32, first_seed: u64) -> Vec<Chunk> {
        (0..count)
            .map(|seq| Chunk {
                document_id: document.id,
                jar_id: document.jar_id,
                seq,
                text: format!("chunk {seq} of {} about honey", document.title),
                page: Some(seq + 1),
                section: Some("Intro".into()),
                token_count: 5,
                embedding: vector(first_seed + seq as u64),
            })
            .collect()
    }

    fn everything(_: &DocumentInfo) -> bool {
        true
    }

    /// Exact top `k` keys of `query` over `(document, chunks)`, for comparison.
    fn exact(
        all: &[(Document, Vec<Chunk>)],
        query: &[f32],
        k: usize,
        tag: Option<&str>,
    ) -> Vec<(DocumentId, u32)> {
        let mut scored: Vec<(f32, (DocumentId, u32))> = all
            .iter()
            .filter(|(d, _)| tag.is_none_or(|t| d.tags.iter().any(|x| x == t)))
            .flat_map(|(d, cs)| {
                cs.iter()
                    .map(move |c| (dot(query, &c.embedding), (d.id, c.seq)))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, key)| key).collect()
    }

    #[test]
    fn checkpointed_indexes_reopen_with_the_same_answers_and_unclean_ones_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard");
        let a = document(1, "red");
        let b = document(2, "blue");
        let mut index = ShardIndex::open(&path).unwrap();
        index
            .put(vec![
                (a.clone(), chunks(&a, 3, 10)),
                (b.clone(), chunks(&b, 2, 20)),
            ])
            .unwrap();
        index.commit().unwrap();
        let query = vector(11);
        let before = index.nearest(&query, 3, &everything).unwrap();
        assert_eq!((before[0].document_id, before[0].seq), (a.id, 1));
        assert!(
            (before[0].score - 1.0).abs() < 1e-5,
            "exact cosine of itself"
        );
        assert_eq!(before[0].page, Some(2));
        assert_eq!(before[0].section.as_deref(), Some("Intro"));
        index.checkpoint().unwrap();
        drop(index);

        let mut index = ShardIndex::open(&path).unwrap();
        assert_eq!(index.document_count(), 2);
        assert_eq!(index.versions()[&a.id], 1);
        let after = index.nearest(&query, 3, &everything).unwrap();
        let keys = |hits: &[ChunkHit]| {
            hits.iter()
                .map(|h| (h.document_id, h.seq, h.text.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&after), keys(&before));
        let bm25 = index
            .bm25("honey", 10, &|info| info.tags == ["blue"])
            .unwrap();
        assert_eq!(bm25.len(), 2, "{bm25:?}");
        assert!(bm25.iter().all(|h| h.document_id == b.id));

        // A change not checkpointed: the directory is not trusted again.
        index.remove(a.id).unwrap();
        index.commit().unwrap();
        drop(index);
        let index = ShardIndex::open(&path).unwrap();
        assert_eq!(index.document_count(), 0, "rebuilt from the store instead");
        assert!(index.nearest(&query, 3, &everything).unwrap().is_empty());
    }

    #[test]
    fn graph_search_with_and_without_filters_agrees_with_exact_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ShardIndex::open(&dir.path().join("shard")).unwrap();
        // Enough chunks that unfiltered queries walk the graph; "rare" stays under the exact
        // scan limit, "common" above it.
        let per_document = 100;
        let all: Vec<(Document, Vec<Chunk>)> = (0..260u128)
            .map(|n| {
                let d = document(n + 1, if n % 10 == 0 { "rare" } else { "common" });
                let c = chunks(&d, per_document, n as u64 * 1000);
                (d, c)
            })
            .collect();
        index.put(all.clone()).unwrap();
        index.commit().unwrap();
        assert!(index.chunk_count() > EXACT_SCAN_MAX);
        let mut found = [0usize; 3];
        let queries = 20;
        for q in 0..queries {
            let query = vector(7_000_000 + q);
            for (i, tag) in [None, Some("rare"), Some("common")].into_iter().enumerate() {
                let keep =
                    |info: &DocumentInfo| tag.is_none_or(|t| info.tags.iter().any(|x| x == t));
                let hits = index.nearest(&query, 10, &keep).unwrap();
                let truth = exact(&all, &query, 10, tag);
                found[i] += hits
                    .iter()
                    .filter(|h| truth.contains(&(h.document_id, h.seq)))
                    .count();
                assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                if let Some(tag) = tag {
                    assert!(hits
                        .iter()
                        .all(|h| index.document(h.document_id).unwrap().tags == [tag]));
                }
            }
        }
        let recall = found.map(|f| f as f64 / (queries * 10) as f64);
        assert!(recall[0] >= 0.9, "unfiltered recall {recall:?}");
        assert_eq!(recall[1], 1.0, "exact scan under the limit");
        assert!(recall[2] >= 0.9, "filtered graph recall {recall:?}");
    }

    #[test]
    fn removed_documents_disappear_and_dimension_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ShardIndex::open(&dir.path().join("shard")).unwrap();
        let a = document(1, "red");
        index.put(vec![(a.clone(), chunks(&a, 4, 1))]).unwrap();
        let mut odd = chunks(&document(2, "red"), 1, 5);
        odd[0].embedding.push(0.0);
        assert!(matches!(
            index.put(vec![(document(2, "red"), odd)]),
            Err(IndexError::Invalid(_))
        ));
        index.remove(a.id).unwrap();
        index.commit().unwrap();
        assert!(index
            .nearest(&vector(1), 5, &everything)
            .unwrap()
            .is_empty());
        assert!(index.bm25("honey", 5, &everything).unwrap().is_empty());
        assert!(
            index.nearest(&[1.0], 5, &everything).unwrap().is_empty(),
            "wrong query dims"
        );
    }
}
