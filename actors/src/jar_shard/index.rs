//! One shard's indexes: tantivy BM25 over chunk text and document title and tags, and exact
//! cosine over the chunk embeddings. Both in memory, rebuilt from the store on activation.

use std::collections::HashMap;

use sting_store::{Chunk, Document, DocumentId};
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, Value, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, TantivyDocument, Term};

/// Bytes of tantivy's indexing arena (its minimum is 15 MB per thread).
const WRITER_ARENA_BYTES: usize = 15_000_000;

/// What search filters and shows of a document.
#[derive(Debug, Clone)]
pub struct DocumentInfo {
    pub title: String,
    pub kind: String,
    pub tags: Vec<String>,
}

/// A stored chunk as the shard keeps it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub document_id: DocumentId,
    pub seq: u32,
    pub text: String,
    pub page: Option<u32>,
    pub section: Option<String>,
    pub embedding: Vec<f32>,
}

/// A hit from one of the two rankings, best first within its list.
#[derive(Debug, Clone)]
pub struct RankedHit {
    pub key: u64,
    pub score: f32,
}

struct Fields {
    key: Field,
    document: Field,
    text: Field,
    title: Field,
    tags: Field,
}

pub struct ShardIndex {
    index: Index,
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    entries: HashMap<u64, Entry>,
    by_document: HashMap<DocumentId, Vec<u64>>,
    documents: HashMap<DocumentId, DocumentInfo>,
    next_key: u64,
}

impl ShardIndex {
    pub fn new() -> tantivy::Result<ShardIndex> {
        let mut schema = Schema::builder();
        let fields = Fields {
            key: schema.add_u64_field("key", STORED | INDEXED),
            document: schema.add_text_field("document", STRING),
            text: schema.add_text_field("text", TEXT),
            title: schema.add_text_field("title", TEXT),
            tags: schema.add_text_field("tags", TEXT),
        };
        let index = Index::create_in_ram(schema.build());
        let writer = index.writer_with_num_threads(1, WRITER_ARENA_BYTES)?;
        let reader = index.reader()?;
        Ok(ShardIndex {
            index,
            writer,
            reader,
            fields,
            entries: HashMap::new(),
            by_document: HashMap::new(),
            documents: HashMap::new(),
            next_key: 0,
        })
    }

    /// Adds (or replaces) a document's chunks; call [`ShardIndex::commit`] to make them searchable.
    pub fn put(&mut self, document: &Document, chunks: Vec<Chunk>) -> tantivy::Result<()> {
        self.remove(document.id);
        let info = DocumentInfo {
            title: document.title.clone(),
            kind: document.kind.clone(),
            tags: document.tags.clone(),
        };
        let mut keys = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let key = self.next_key;
            self.next_key += 1;
            self.writer.add_document(doc!(
                self.fields.key => key,
                self.fields.document => document.id.to_string(),
                self.fields.text => chunk.text.as_str(),
                self.fields.title => info.title.as_str(),
                self.fields.tags => info.tags.join(" "),
            ))?;
            keys.push(key);
            self.entries.insert(
                key,
                Entry {
                    document_id: document.id,
                    seq: chunk.seq,
                    text: chunk.text,
                    page: chunk.page,
                    section: chunk.section,
                    embedding: chunk.embedding,
                },
            );
        }
        self.by_document.insert(document.id, keys);
        self.documents.insert(document.id, info);
        Ok(())
    }

    /// Removes a document's chunks (effective at the next commit).
    pub fn remove(&mut self, document: DocumentId) {
        if let Some(keys) = self.by_document.remove(&document) {
            for key in keys {
                self.entries.remove(&key);
            }
            self.writer.delete_term(Term::from_field_text(
                self.fields.document,
                &document.to_string(),
            ));
        }
        self.documents.remove(&document);
    }

    pub fn commit(&mut self) -> tantivy::Result<()> {
        self.writer.commit()?;
        self.reader.reload()
    }

    pub fn entry(&self, key: u64) -> Option<&Entry> {
        self.entries.get(&key)
    }

    pub fn document(&self, id: DocumentId) -> Option<&DocumentInfo> {
        self.documents.get(&id)
    }

    pub fn document_count(&self) -> usize {
        self.documents.len()
    }

    /// BM25 ranking of the chunks that pass `keep`, at most `limit`.
    pub fn bm25(
        &self,
        query: &str,
        limit: usize,
        keep: &dyn Fn(&DocumentInfo) -> bool,
    ) -> tantivy::Result<Vec<RankedHit>> {
        let fields = &self.fields;
        let parser =
            QueryParser::for_index(&self.index, vec![fields.text, fields.title, fields.tags]);
        let (query, _) = parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        // Filters apply after ranking: fetch more so that filtering still leaves `limit`.
        let fetch = (limit * 4).max(limit + 16);
        let top = searcher.search(&query, &TopDocs::with_limit(fetch).order_by_score())?;
        let mut hits = Vec::with_capacity(limit);
        for (score, address) in top {
            let stored: TantivyDocument = searcher.doc(address)?;
            let Some(key) = stored.get_first(fields.key).and_then(|v| v.as_u64()) else {
                continue;
            };
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if self.documents.get(&entry.document_id).is_some_and(keep) {
                hits.push(RankedHit { key, score });
                if hits.len() == limit {
                    break;
                }
            }
        }
        Ok(hits)
    }

    /// Exact cosine ranking (embeddings are unit vectors) of the chunks that pass `keep`.
    pub fn nearest(
        &self,
        query: &[f32],
        limit: usize,
        keep: &dyn Fn(&DocumentInfo) -> bool,
    ) -> Vec<RankedHit> {
        let mut hits: Vec<RankedHit> = self
            .entries
            .iter()
            .filter(|(_, entry)| self.documents.get(&entry.document_id).is_some_and(keep))
            .map(|(&key, entry)| RankedHit {
                key,
                score: dot(query, &entry.embedding),
            })
            .collect();
        let limit = limit.min(hits.len());
        if limit == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(limit - 1, |a, b| b.score.total_cmp(&a.score));
        hits.truncate(limit);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
