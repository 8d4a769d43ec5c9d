//! Ingestion throughput against raw ONNX Runtime on the same model file, session options,
//! thread count, texts and batches, in one run (the machine is shared: compare ratios).
//!
//! ```sh
//! STING_BENCH_MODEL_DIR=data/models/all-minilm-l6-v2 \
//! ORT_DYLIB_PATH=data/runtime/libonnxruntime.so.1.31.1 \
//! cargo bench --bench ingest
//! ```
//!
//! Generates `STING_BENCH_DOCUMENTS` (default 96) deterministic prose documents, alternately
//! Markdown and plain text, and chunks them as the pipeline does (the default 200-token chunks
//! with 32 tokens of overlap; about 2,000 chunks). Prints embeddings/s of: raw ONNX Runtime
//! (tokenizers and a session, batches of the worker's [`EMBED_BATCH`], mean pooling and L2
//! normalisation), the model worker's `embed` on the same batches, and the whole ingestion
//! pipeline (a SQLite store in a temporary directory, the documents uploaded and processed:
//! extraction, chunking, embedding, storing), with its chunks/s and documents/s; then the
//! ratios to raw. Medians over `STING_BENCH_ROUNDS` (default 3) rounds that alternate the
//! three runs.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use sha2::{Digest, Sha256};
use sting_actors::ingestion::blobs::{BlobStore, MasterKey};
use sting_actors::ingestion::chunk::{chunk, ChunkingConfig};
use sting_actors::ingestion::extract::{extract, DocumentKind, ExtractLimits};
use sting_actors::ingestion::pipeline::{Context, IngestionConfig, IngestionHandle};
use sting_actors::jar_shard::{ShardConfig, ShardRegistry};
use sting_actors::model::manifest::ModelDir;
use sting_actors::model::pool::{ModelPoolHandle, PoolConfig};
use sting_actors::model::runtime::OnnxRuntime;
use sting_actors::model::tokens::TokenCounter;
use sting_actors::model::worker::EMBED_BATCH;
use sting_store::{Document, HoneyJar, JarSettings, SqliteStore, Store, Timestamp, Visibility};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use uuid::Uuid;

const THREADS: usize = 2;
/// The shipped configuration's `knowledge.chunk_max_tokens`, `chunk_overlap_tokens` and
/// `ingestion_concurrency`.
const CHUNKING: ChunkingConfig = ChunkingConfig {
    max_tokens: 200,
    overlap_tokens: 32,
};
const CONCURRENCY: usize = 2;
const SEED: u64 = 0x5eed_b0ee;

fn main() {
    let Some(model_dir) = std::env::var_os("STING_BENCH_MODEL_DIR").map(PathBuf::from) else {
        eprintln!("SKIP ingest bench: set STING_BENCH_MODEL_DIR to an embedding model directory");
        return;
    };
    let library = PathBuf::from(std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH"));
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (documents, rounds) = (
        setting("STING_BENCH_DOCUMENTS", 96),
        setting("STING_BENCH_ROUNDS", 3),
    );
    let model = ModelDir::load(&model_dir).expect("model dir");
    let name = model.manifest.name.clone();
    let runtime = OnnxRuntime::init(&library, THREADS).expect("runtime");

    let mut words = Words::new(SEED);
    let uploads: Vec<Upload> = (0..documents).map(|i| words.document(i)).collect();
    let counter = TokenCounter::for_model(&name, Some(&model)).expect("token counter");
    let texts: Vec<String> = uploads
        .iter()
        .flat_map(|upload| {
            let extracted =
                extract(upload.kind, &upload.bytes, &ExtractLimits::default()).expect("extracted");
            chunk(&extracted.sections, &CHUNKING, &counter).expect("chunked")
        })
        .map(|piece| piece.text)
        .collect();
    let batches: Vec<Vec<String>> = texts.chunks(EMBED_BATCH).map(<[_]>::to_vec).collect();

    let mut raw = RawEncoder::new(&runtime, &model);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let pool = tokio.block_on(async {
        let pool = ModelPoolHandle::start(PoolConfig {
            models_dir: model_dir.parent().unwrap().to_path_buf(),
            runtime_library: library.clone(),
            intra_threads: THREADS,
            max_loaded: 1,
            queue_depth: 64,
            max_batch: 16,
        })
        .await
        .unwrap();
        pool.load(&name).await.unwrap();
        pool
    });
    // Both sides compute the same vectors (and are warm before the first round).
    let expected = raw.embed(&batches[0]);
    let got = tokio
        .block_on(pool.embed(&name, batches[0].clone()))
        .unwrap();
    for (raw, worker) in expected.iter().zip(&got) {
        let gap = raw
            .iter()
            .zip(&worker.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-4, "raw and worker embeddings differ by {gap}");
    }

    // Rounds alternate the runs so that drift in the machine's load hits all of them; the
    // figures are medians over rounds.
    let mut figures: Vec<[f64; 4]> = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        batches.iter().for_each(|batch| drop(raw.embed(batch)));
        let raw_rate = texts.len() as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        tokio.block_on(async {
            for batch in &batches {
                pool.embed(&name, batch.clone()).await.unwrap();
            }
        });
        let worker_rate = texts.len() as f64 / started.elapsed().as_secs_f64();

        let elapsed = tokio.block_on(ingest(&pool, &name, &uploads, texts.len()));
        let document_rate = uploads.len() as f64 / elapsed.as_secs_f64();
        let chunk_rate = texts.len() as f64 / elapsed.as_secs_f64();

        let row = [raw_rate, worker_rate, chunk_rate, document_rate];
        eprintln!("round {}: {row:.1?}", round + 1);
        figures.push(row);
    }
    let median = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let column = |i: usize| median(figures.iter().map(|row| row[i]).collect());
    let ratio = |i: usize| median(figures.iter().map(|row| row[i] / row[0]).collect());
    println!(
        "medians over {rounds} rounds, {} documents, {} chunks of at most {} tokens, batches of \
         {EMBED_BATCH}, {THREADS} threads:",
        uploads.len(),
        texts.len(),
        CHUNKING.max_tokens
    );
    println!("raw ONNX Runtime:   {:8.1} embeddings/s", column(0));
    println!(
        "model worker embed: {:8.1} embeddings/s ({:.2}x raw)",
        column(1),
        ratio(1)
    );
    println!(
        "ingestion pipeline: {:8.1} embeddings/s ({:.2}x raw), as many chunks/s, {:.2} documents/s",
        column(2),
        ratio(2),
        column(3)
    );
}

/// A generated document, as uploaded.
struct Upload {
    filename: String,
    kind: DocumentKind,
    bytes: Vec<u8>,
}

/// Deterministic prose: words of [`VOCABULARY`] drawn by splitmix64.
struct Words {
    state: u64,
    vocabulary: Vec<&'static str>,
}

/// The vocabulary of the generated prose.
const VOCABULARY: &str =
    "the bee hive honey colony worker queen flower nectar pollen summer winter garden meadow \
     field season keeper frame wax comb forage flight dance signal scent temperature swarm \
     brood cell larva record report policy team review process budget customer service \
     product market quality safety training schedule meeting decision question answer result \
     method sample measure change growth yield weather rain morning evening distance route \
     water small large early late careful strong quiet busy warm cold new old local regular \
     simple common useful important every many few some most other each this that these their \
     our collects stores builds protects visits returns follows shows reports checks improves \
     reduces supports explains describes keeps needs finds makes takes gives brings moves \
     starts ends grows and or but with from into over under after before during near across \
     through while because when where which often rarely always usually slowly quickly \
     together again also only";

impl Words {
    fn new(seed: u64) -> Words {
        Words {
            state: seed,
            vocabulary: VOCABULARY.split_whitespace().collect(),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range`.
    fn between(&mut self, range: std::ops::RangeInclusive<usize>) -> usize {
        range.start() + (self.next() % (range.end() - range.start() + 1) as u64) as usize
    }

    fn sentence(&mut self, words: usize) -> String {
        let mut sentence = String::new();
        for i in 0..words {
            let pick = self.between(0..=self.vocabulary.len() - 1);
            let word = self.vocabulary[pick];
            if i == 0 {
                let mut letters = word.chars();
                sentence.extend(letters.next().map(|c| c.to_ascii_uppercase()));
                sentence.push_str(letters.as_str());
            } else {
                sentence.push(' ');
                sentence.push_str(word);
            }
            if i + 1 < words && self.between(0..=9) == 0 {
                sentence.push(',');
            }
        }
        sentence.push('.');
        sentence
    }

    /// Eight sections of four to six paragraphs (about 2,200 words, 21 chunks): Markdown with
    /// headings for even `index`, plain text for odd.
    fn document(&mut self, index: usize) -> Upload {
        let markdown = index % 2 == 0;
        let mut text = String::new();
        if markdown {
            text.push_str(&format!("# Report {index}\n\n"));
        }
        for _ in 0..8 {
            if markdown {
                let heading = self.sentence(3);
                text.push_str(&format!("## {}\n\n", heading.trim_end_matches('.')));
            }
            for _ in 0..self.between(4..=6) {
                let sentences: Vec<String> = (0..self.between(3..=6))
                    .map(|_| {
                        let words = self.between(6..=18);
                        self.sentence(words)
                    })
                    .collect();
                text.push_str(&sentences.join(" "));
                text.push_str("\n\n");
            }
        }
        let (filename, kind) = if markdown {
            (format!("report-{index}.md"), DocumentKind::Markdown)
        } else {
            (format!("report-{index}.txt"), DocumentKind::Text)
        };
        Upload {
            filename,
            kind,
            bytes: text.into_bytes(),
        }
    }
}

/// Tokenizer and session, used the way the worker's encoder uses them.
struct RawEncoder {
    session: Session,
    tokenizer: Tokenizer,
    token_types: bool,
}

impl RawEncoder {
    fn new(runtime: &OnnxRuntime, model: &ModelDir) -> RawEncoder {
        let (session, _) = runtime.session(&model.model_path()).unwrap();
        let mut tokenizer = Tokenizer::from_file(model.tokenizer_path()).unwrap();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: model.manifest.context_length,
                ..Default::default()
            }))
            .unwrap();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let token_types = session
            .inputs()
            .iter()
            .any(|input| input.name() == "token_type_ids");
        RawEncoder {
            session,
            tokenizer,
            token_types,
        }
    }

    /// Unit-length, mean-pooled embeddings of one batch.
    fn embed(&mut self, texts: &[String]) -> Vec<Vec<f32>> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).unwrap();
        let (rows, seq) = (encodings.len(), encodings[0].len());
        let ids: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&v| v as i64))
            .collect();
        let mask: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&v| v as i64))
            .collect();
        let tensor = |data: Vec<i64>| -> SessionInputValue<'static> {
            Tensor::from_array((vec![rows as i64, seq as i64], data))
                .unwrap()
                .into()
        };
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("input_ids".into(), tensor(ids)),
            ("attention_mask".into(), tensor(mask.clone())),
        ];
        if self.token_types {
            inputs.push(("token_type_ids".into(), tensor(vec![0; rows * seq])));
        }
        let outputs = self.session.run(inputs).unwrap();
        let (shape, hidden) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .unwrap();
        let dim = shape[2] as usize;
        hidden
            .chunks(seq * dim)
            .zip(mask.chunks(seq))
            .map(|(tokens, mask)| {
                let mut pooled = vec![0.0f32; dim];
                let mut count = 0.0f32;
                for (token, _) in tokens.chunks(dim).zip(mask).filter(|(_, &m)| m != 0) {
                    pooled.iter_mut().zip(token).for_each(|(p, v)| *p += v);
                    count += 1.0;
                }
                pooled.iter_mut().for_each(|p| *p /= count.max(1.0));
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|p| *p /= norm);
                pooled
            })
            .collect()
    }
}

/// Uploads every document into a new jar of a fresh node (SQLite store, blobs, shards and the
/// ingestion pipeline in a temporary directory) and waits until all are processed; the time
/// from the first upload to the last document stored.
async fn ingest(
    pool: &ModelPoolHandle,
    model: &str,
    uploads: &[Upload],
    chunks: usize,
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("sting.db"))
            .await
            .unwrap(),
    );
    let master_key = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
    let blobs = BlobStore::new(dir.path().join("blobs"));
    let shards = ShardRegistry::start(
        store.clone(),
        ShardConfig {
            dir: dir.path().join("shards"),
            shards_per_jar: 1,
            lease_ttl: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        },
        sting_cluster::Cluster::single(sting_cluster::NodeId::new("bench"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let ingestion = IngestionHandle::start(Context {
        store: store.clone(),
        pool: pool.clone(),
        blobs: blobs.clone(),
        master_key,
        config: IngestionConfig {
            embedding_model: model.to_owned(),
            chunking: CHUNKING,
            concurrency: CONCURRENCY,
            queue_depth: uploads.len(),
            embed_batch: EMBED_BATCH,
            extract_limits: ExtractLimits::default(),
            max_attempts: 3,
        },
        counters: Default::default(),
        shards: shards.clone(),
    })
    .await
    .unwrap();
    let jar = new_jar();
    store.create_jar(&jar).await.unwrap();

    let started = Instant::now();
    for upload in uploads {
        let document = new_document(&jar, upload);
        blobs
            .put(jar.id, document.id, &upload.bytes, None)
            .await
            .unwrap();
        store.create_document(&document).await.unwrap();
        ingestion.submit(document.id).await.unwrap();
    }
    while ingestion.load().await != Some((0, 0)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();

    let counted = store.jar(jar.id).await.unwrap().unwrap();
    assert_eq!(
        (counted.document_count, counted.embedding_count),
        (uploads.len() as u64, chunks as u64),
        "every document processed into the chunks embedded raw"
    );
    ingestion.shutdown().await;
    shards.shutdown().await;
    elapsed
}

fn new_jar() -> HoneyJar {
    let now = Timestamp::now();
    HoneyJar {
        id: Uuid::new_v4(),
        owner_id: Uuid::new_v4(),
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
        created_at: now,
        updated_at: now,
    }
}

/// The record of a fresh upload, waiting for the pipeline.
fn new_document(jar: &HoneyJar, upload: &Upload) -> Document {
    let sha256 = hex::encode(Sha256::digest(&upload.bytes));
    let size = upload.bytes.len() as u64;
    Document {
        mime_type: upload.kind.mime_type().into(),
        kind: upload.kind.as_str().into(),
        ..Document::new_upload(jar.id, jar.owner_id, upload.filename.clone(), size, sha256)
    }
}
