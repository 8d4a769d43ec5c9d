//! Honey-jar vector search and insertion against Chroma (the vector store the original STING
//! uses), on one generated corpus, in one run.
//!
//! ```sh
//! python3 -m venv /tmp/chroma && /tmp/chroma/bin/pip install chromadb numpy   # once
//! STING_BENCH_CHROMA_PYTHON=/tmp/chroma/bin/python cargo bench --bench search
//! ```
//!
//! The corpus (seeded, so every run sees the same one): `STING_BENCH_CHUNKS` chunks (default
//! 100,000) of 384-dimensional unit vectors in documents of 10 chunks, each document tagged
//! `t0`..`t9` in turn (the tag filter `t3` keeps a tenth). `STING_BENCH_CORPUS=clustered`
//! (default) draws every vector around one of 1,000 topic centres, as real embeddings group by
//! topic; `uniform` draws them uniformly on the sphere (where every point is nearly as far as
//! every other, and graph indexes lose recall). Queries are drawn the same way.
//!
//! Sting side: a real SQLite store and a jar shard actor with its on-disk indexes. Insertion is
//! what ingestion does after embedding: create the document, store its chunks, report it to
//! the shard; the rate counts until every chunk is searchable. Search asks the shard registry
//! (actor round trip included) for the top 10 by vector, unfiltered and with the tag filter.
//! Recall@10 is measured against exact answers computed here. Chroma side:
//! `benches/baselines/chroma_search.py` on the same files (a persistent client; Chroma's cosine
//! HNSW with its defaults).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sting_actors::jar_shard::index::dot;
use sting_actors::jar_shard::{ShardConfig, ShardQuery, ShardRegistry};
use sting_store::{
    Chunk, Document, DocumentId, DocumentStatus, HoneyJar, JarSettings, Role, SqliteStore, Store,
    Timestamp, User, Visibility,
};

const DIMS: usize = 384;
const CHUNKS_PER_DOCUMENT: usize = 10;
const TAGS: usize = 10;
const FILTER_TAG: usize = 3;
const K: usize = 10;
const CENTRES: usize = 1000;

fn main() {
    let chunks = env_number("STING_BENCH_CHUNKS", 100_000);
    let queries = env_number("STING_BENCH_QUERIES", 200);
    let clustered = std::env::var("STING_BENCH_CORPUS").as_deref() != Ok("uniform");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("search-bench");
    std::fs::create_dir_all(&dir).unwrap();

    eprintln!(
        "generating {chunks} chunks × {DIMS} ({}), {queries} queries",
        if clustered { "clustered" } else { "uniform" }
    );
    let corpus = Corpus::generate(chunks, queries, clustered);
    let truth = corpus.exact_answers();
    corpus.write(&dir, &truth);

    let sting = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_sting(&corpus, &truth));
    let chroma = std::env::var_os("STING_BENCH_CHROMA_PYTHON").map(|python| {
        eprintln!("running the Chroma baseline");
        let output = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/baselines/chroma_search.py"
            ))
            .arg(&dir)
            .output()
            .expect("run the Chroma baseline");
        assert!(
            output.status.success(),
            "Chroma baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).expect("Chroma's JSON")
    });

    println!(
        "corpus: {chunks} chunks × {DIMS}, {}, {queries} queries, top {K}",
        if clustered { "clustered" } else { "uniform" }
    );
    println!("{:<28} {:>12} {:>12}", "", "Sting", "Chroma");
    let show = |name: &str, ours: f64, theirs: Option<f64>, digits: usize| {
        let theirs = theirs.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        println!("{name:<28} {ours:>12.digits$} {theirs:>12}");
    };
    let theirs = |path: &str| chroma.as_ref().and_then(|c| c.pointer(path)?.as_f64());
    show(
        "insert, chunks/s",
        sting.insert_per_s,
        theirs("/insert_per_s"),
        0,
    );
    for (name, ours) in [
        ("unfiltered", &sting.unfiltered),
        ("filtered", &sting.filtered),
    ] {
        show(
            &format!("{name} p50 ms"),
            ours.p50_ms,
            theirs(&format!("/{name}/p50_ms")),
            3,
        );
        show(
            &format!("{name} p99 ms"),
            ours.p99_ms,
            theirs(&format!("/{name}/p99_ms")),
            3,
        );
        show(
            &format!("{name} recall@10"),
            ours.recall,
            theirs(&format!("/{name}/recall_at_10")),
            3,
        );
    }
    if let Some(chroma) = &chroma {
        let ratio =
            |a: f64, path: &str| chroma.pointer(path).and_then(Value::as_f64).map(|b| a / b);
        println!(
            "ratios (Sting / Chroma): insert rate {:.1}×, unfiltered p50 {:.3}×, filtered p50 {:.3}× (Chroma {})",
            ratio(sting.insert_per_s, "/insert_per_s").unwrap_or(f64::NAN),
            ratio(sting.unfiltered.p50_ms, "/unfiltered/p50_ms").unwrap_or(f64::NAN),
            ratio(sting.filtered.p50_ms, "/filtered/p50_ms").unwrap_or(f64::NAN),
            chroma["chroma_version"].as_str().unwrap_or("?"),
        );
    }
}

struct Corpus {
    vectors: Vec<f32>,
    queries: Vec<f32>,
}

/// Exact top-K chunk numbers per query, unfiltered and with the tag filter.
struct Truth {
    unfiltered: Vec<Vec<usize>>,
    filtered: Vec<Vec<usize>>,
}

impl Corpus {
    fn generate(chunks: usize, queries: usize, clustered: bool) -> Corpus {
        let mut random = SplitMix(42);
        let centres: Vec<Vec<f32>> = (0..CENTRES).map(|_| random.unit()).collect();
        let draw = |random: &mut SplitMix| {
            if !clustered {
                return random.unit();
            }
            let centre = &centres[(random.next() % CENTRES as u64) as usize];
            let noise = random.unit();
            normalised(
                centre
                    .iter()
                    .zip(&noise)
                    .map(|(c, n)| c + 0.9 * n)
                    .collect(),
            )
        };
        Corpus {
            vectors: (0..chunks).flat_map(|_| draw(&mut random)).collect(),
            queries: (0..queries).flat_map(|_| draw(&mut random)).collect(),
        }
    }

    fn chunk_count(&self) -> usize {
        self.vectors.len() / DIMS
    }

    fn exact_answers(&self) -> Truth {
        let top = |query: &[f32], keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
            let mut scored: Vec<(f32, usize)> = self
                .vectors
                .chunks_exact(DIMS)
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, v)| (dot(query, v), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.iter().take(K).map(|&(_, i)| i).collect()
        };
        let queries: Vec<&[f32]> = self.queries.chunks_exact(DIMS).collect();
        Truth {
            unfiltered: queries.iter().map(|q| top(q, &|_| true)).collect(),
            filtered: queries
                .iter()
                .map(|q| top(q, &|i| tag_of(i) == FILTER_TAG))
                .collect(),
        }
    }

    /// The files the Chroma baseline reads.
    fn write(&self, dir: &Path, truth: &Truth) {
        let floats =
            |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        std::fs::write(dir.join("vectors.f32"), floats(&self.vectors)).unwrap();
        std::fs::write(dir.join("queries.f32"), floats(&self.queries)).unwrap();
        let tags: Vec<u8> = (0..self.chunk_count()).map(|i| tag_of(i) as u8).collect();
        std::fs::write(dir.join("tags.u8"), tags).unwrap();
        let meta = json!({
            "dims": DIMS,
            "chunks": self.chunk_count(),
            "queries": self.queries.len() / DIMS,
            "filter_tag": FILTER_TAG,
        });
        std::fs::write(dir.join("corpus.json"), meta.to_string()).unwrap();
        let answers = json!({ "unfiltered": truth.unfiltered, "filtered": truth.filtered });
        std::fs::write(dir.join("truth.json"), answers.to_string()).unwrap();
    }
}

fn tag_of(chunk: usize) -> usize {
    (chunk / CHUNKS_PER_DOCUMENT) % TAGS
}

struct Latencies {
    p50_ms: f64,
    p99_ms: f64,
    recall: f64,
}

struct StingFigures {
    insert_per_s: f64,
    unfiltered: Latencies,
    filtered: Latencies,
}

async fn run_sting(corpus: &Corpus, truth: &Truth) -> StingFigures {
    let temp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(temp.path().join("sting.db"))
            .await
            .unwrap(),
    );
    let shards = ShardRegistry::start(
        store.clone(),
        ShardConfig {
            dir: temp.path().join("shards"),
            shards_per_jar: 1,
            lease_ttl: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
        },
        sting_cluster::Cluster::single(sting_cluster::NodeId::new("bench"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let owner = User {
        id: uuid::Uuid::new_v4(),
        email: "bench@example.com".into(),
        name: "Bench".into(),
        password_hash: "-".into(),
        role: Role::User,
        active: true,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    };
    store.create_user(&owner).await.unwrap();
    let jar = HoneyJar {
        id: uuid::Uuid::new_v4(),
        owner_id: owner.id,
        name: "Bench".into(),
        description: String::new(),
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
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
    };
    store.create_jar(&jar).await.unwrap();
    // Activate the (empty) shard first, as a live jar has it.
    shards
        .search(&[jar.id], query(&corpus.queries[..DIMS], Vec::new()), K)
        .await
        .unwrap();

    let documents = corpus.chunk_count() / CHUNKS_PER_DOCUMENT;
    let mut chunk_of: HashMap<(DocumentId, u32), usize> = HashMap::new();
    let started = Instant::now();
    for d in 0..documents {
        let upload = Document::new_upload(
            jar.id,
            owner.id,
            format!("document-{d}.md"),
            1000,
            "00".repeat(32),
        );
        let document = Document {
            title: format!("Document {d}"),
            tags: vec![format!("t{}", d % TAGS)],
            mime_type: "text/markdown".into(),
            kind: "markdown".into(),
            status: DocumentStatus::Processed,
            progress: 100,
            chunk_count: CHUNKS_PER_DOCUMENT as u64,
            embedding_count: CHUNKS_PER_DOCUMENT as u64,
            processing_ms: Some(1),
            processing_attempts: 1,
            word_count: 100,
            language: Some("en".into()),
            ..upload
        };
        let chunks: Vec<Chunk> = (0..CHUNKS_PER_DOCUMENT)
            .map(|seq| {
                let i = d * CHUNKS_PER_DOCUMENT + seq;
                chunk_of.insert((document.id, seq as u32), i);
                Chunk {
                    document_id: document.id,
                    jar_id: jar.id,
                    seq: seq as u32,
                    text: format!("chunk {i} of document {d} about topic {}", i % 97),
                    page: None,
                    section: None,
                    token_count: 12,
                    embedding: corpus.vectors[i * DIMS..(i + 1) * DIMS].to_vec(),
                }
            })
            .collect();
        store.create_document(&document).await.unwrap();
        store.save_chunks(&document, &chunks).await.unwrap();
        shards.document_changed(jar.id, document.id);
    }
    // Searchable means the shard answers over every document.
    loop {
        let (_, _, searched) = shards
            .search(&[jar.id], query(&corpus.queries[..DIMS], Vec::new()), K)
            .await
            .unwrap();
        if searched == documents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let insert_per_s = corpus.chunk_count() as f64 / started.elapsed().as_secs_f64();

    let unfiltered = measure(
        &shards,
        &jar,
        corpus,
        &chunk_of,
        Vec::new(),
        &truth.unfiltered,
    )
    .await;
    let tags = vec![format!("t{FILTER_TAG}")];
    let filtered = measure(&shards, &jar, corpus, &chunk_of, tags, &truth.filtered).await;
    shards.shutdown().await;
    StingFigures {
        insert_per_s,
        unfiltered,
        filtered,
    }
}

/// A top-K vector query (no text: Chroma is searched by vector alone).
fn query(embedding: &[f32], tags: Vec<String>) -> ShardQuery {
    ShardQuery {
        text: String::new(),
        embedding: embedding.to_vec(),
        document_types: Vec::new(),
        tags,
        depth: K,
    }
}

/// Latency percentiles and recall@K of the corpus's queries against `expected`.
async fn measure(
    shards: &ShardRegistry,
    jar: &HoneyJar,
    corpus: &Corpus,
    chunk_of: &HashMap<(DocumentId, u32), usize>,
    tags: Vec<String>,
    expected: &[Vec<usize>],
) -> Latencies {
    let mut latencies = Vec::new();
    let mut recall = 0.0;
    for (q, exact) in corpus.queries.chunks_exact(DIMS).zip(expected) {
        let started = Instant::now();
        let (hits, _, _) = shards
            .search(&[jar.id], query(q, tags.clone()), K)
            .await
            .unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let found = hits
            .iter()
            .filter(|h| exact.contains(&chunk_of[&(h.document_id, h.seq)]))
            .count();
        recall += found as f64 / K as f64;
    }
    latencies.sort_by(f64::total_cmp);
    Latencies {
        p50_ms: latencies[latencies.len() / 2],
        p99_ms: latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)],
        recall: recall / expected.len() as f64,
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A small seeded generator (SplitMix64), so the corpus is the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly random unit vector (normalised Gaussian components, by Box–Muller).
    fn unit(&mut self) -> Vec<f32> {
        let mut v = Vec::with_capacity(DIMS);
        while v.len() < DIMS {
            let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            v.push((r * theta.cos()) as f32);
            v.push((r * theta.sin()) as f32);
        }
        v.truncate(DIMS);
        normalised(v)
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
