//! Model workers on real ONNX Runtime with the committed fixture models (tiny, random weights,
//! the real models' I/O layouts), checked against references computed independently by Python
//! onnxruntime (`tools/model-convert/reference.py`). The same checks on SmolLM2 and MiniLM run
//! with `--ignored` and `STING_TEST_MODELS_DIR` (see `real_models_match_their_references`).
//!
//! Needs the ONNX Runtime library: `ORT_DYLIB_PATH`. Without it the tests say SKIP and pass,
//! unless `STING_REQUIRE_ORT=1` (CI sets it) turns that into a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::ort_library;
use sting_actors::model::pool::{ModelPoolHandle, PoolConfig};
use sting_actors::model::worker::GenerateRequest;
use sting_actors::model::{
    ChatMessage, FinishReason, GenerationEvent, GenerationSummary, ModelError, Role, SamplingParams,
};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

async fn pool(models_dir: &Path, library: PathBuf, max_batch: usize) -> ModelPoolHandle {
    ModelPoolHandle::start(PoolConfig {
        models_dir: models_dir.to_path_buf(),
        runtime_library: library,
        intra_threads: 2,
        max_loaded: 2,
        queue_depth: 64,
        max_batch,
    })
    .await
    .unwrap()
}

fn reference(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn question(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: text.to_owned(),
    }]
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..Default::default()
    }
}

/// Runs one generation to its end: (text, summary).
async fn complete(
    pool: &ModelPoolHandle,
    model: &str,
    messages: Vec<ChatMessage>,
    params: SamplingParams,
) -> Result<(String, GenerationSummary), ModelError> {
    let (mut events, _) = pool
        .generate(model, GenerateRequest { messages, params })
        .await?;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Done(summary) => return Ok((text, summary)),
            GenerationEvent::Failed(err) => return Err(err),
        }
    }
    panic!("generation ended without Done");
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Greedy decoding reproduces the reference continuation exactly.
async fn check_chat_reference(pool: &ModelPoolHandle, model: &str, reference: &Value) {
    let generated = reference["generated_ids"].as_array().unwrap().len();
    let (text, summary) = complete(
        pool,
        model,
        question("What is the capital of France?"),
        greedy(generated.max(1)),
    )
    .await
    .unwrap();
    assert_eq!(
        summary.prompt_tokens,
        reference["prompt_ids"].as_array().unwrap().len(),
        "prompt tokenisation differs from the reference"
    );
    assert_eq!(
        text,
        reference["text"].as_str().unwrap(),
        "{model}: continuation differs"
    );
}

/// Embeddings match the reference to cosine ≥ 0.9999.
async fn check_embedding_reference(pool: &ModelPoolHandle, model: &str, reference: &Value) {
    let sentences: Vec<String> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let embeddings = pool.embed(model, sentences).await.unwrap();
    for (embedding, expected) in embeddings
        .iter()
        .zip(reference["embeddings"].as_array().unwrap())
    {
        let vector = &embedding.vector;
        assert!(embedding.tokens >= 3, "[CLS] text [SEP]");
        let expected: Vec<f64> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let similarity = cosine(vector, &expected);
        assert!(similarity >= 0.9999, "{model}: cosine {similarity}");
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_chat_matches_reference() {
    let Some(library) = ort_library("fixture_chat_matches_reference") else {
        return;
    };
    let pool = pool(&fixtures_dir(), library, 8).await;
    let reference = reference(&fixtures_dir().join("fixture-chat/reference.json"));
    check_chat_reference(&pool, "fixture-chat", &reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_embeddings_match_reference() {
    let Some(library) = ort_library("fixture_embeddings_match_reference") else {
        return;
    };
    let pool = pool(&fixtures_dir(), library, 8).await;
    let reference = reference(&fixtures_dir().join("fixture-embed/reference.json"));
    check_embedding_reference(&pool, "fixture-embed", &reference).await;
}

/// Continuous batching changes nothing in the results: generations that join a running batch
/// at different moments produce exactly what each produces alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_generations_equal_solo_generations() {
    let Some(library) = ort_library("batched_generations_equal_solo_generations") else {
        return;
    };
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("Prompt number {i}: {}", "tell me more ".repeat(i + 1)))
        .collect();
    let solo_pool = pool(&fixtures_dir(), library.clone(), 1).await;
    let mut solo = Vec::new();
    for prompt in &prompts {
        solo.push(
            complete(&solo_pool, "fixture-chat", question(prompt), greedy(24))
                .await
                .unwrap()
                .0,
        );
    }
    let batched_pool = pool(&fixtures_dir(), library, 8).await;
    // All at once (prefilled together, left-padded), then staggered (joining a running batch).
    for stagger_ms in [0, 3] {
        let runs = prompts.iter().enumerate().map(|(i, prompt)| {
            let pool = batched_pool.clone();
            let prompt = prompt.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(stagger_ms * i as u64)).await;
                complete(&pool, "fixture-chat", question(&prompt), greedy(24))
                    .await
                    .unwrap()
                    .0
            }
        });
        let batched = futures_join(runs).await;
        assert_eq!(batched, solo, "stagger {stagger_ms} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_stop_sequences_and_cancellation() {
    let Some(library) = ort_library("max_tokens_stop_sequences_and_cancellation") else {
        return;
    };
    let pool = pool(&fixtures_dir(), library, 8).await;
    let (text, summary) = complete(&pool, "fixture-chat", question("hello"), greedy(5))
        .await
        .unwrap();
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(summary.completion_tokens, 5);

    // Stop at the second character of what greedy decoding produces anyway.
    let (long, _) = complete(&pool, "fixture-chat", question("hello"), greedy(30))
        .await
        .unwrap();
    assert!(long.starts_with(&text));
    let stop: String = long.chars().skip(3).take(2).collect();
    if !stop.trim().is_empty() {
        let params = SamplingParams {
            stop: vec![stop.clone()],
            ..greedy(30)
        };
        let (cut, summary) = complete(&pool, "fixture-chat", question("hello"), params)
            .await
            .unwrap();
        assert_eq!(summary.finish_reason, FinishReason::Stop);
        assert!(!cut.contains(&stop), "{cut:?} contains the stop {stop:?}");
        assert!(long.starts_with(&cut));
    }

    // Dropping the receiver cancels; the worker keeps serving others.
    let (events, _) = pool
        .generate(
            "fixture-chat",
            GenerateRequest {
                messages: question("cancel me"),
                params: greedy(200),
            },
        )
        .await
        .unwrap();
    drop(events);
    let (_, summary) = complete(&pool, "fixture-chat", question("still there?"), greedy(3))
        .await
        .unwrap();
    assert_eq!(summary.completion_tokens, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_loads_on_demand_unloads_lru_and_refuses_unknown_models() {
    let Some(library) = ort_library("pool_loads_on_demand_unloads_lru_and_refuses_unknown_models")
    else {
        return;
    };
    let pool = ModelPoolHandle::start(PoolConfig {
        models_dir: fixtures_dir(),
        runtime_library: library,
        intra_threads: 1,
        max_loaded: 1,
        queue_depth: 4,
        max_batch: 4,
    })
    .await
    .unwrap();
    let mut events = pool.subscribe();
    let names: Vec<String> = pool
        .list()
        .await
        .unwrap()
        .iter()
        .map(|m| m.model.manifest.name.clone())
        .collect();
    assert!(names.contains(&"fixture-chat".to_owned()), "{names:?}");
    assert!(names.contains(&"fixture-embed".to_owned()), "{names:?}");

    let info = pool.load("fixture-chat").await.unwrap();
    assert_eq!(info.loaded.as_ref().unwrap().hardware, "cpu");
    pool.embed("fixture-embed", vec!["hello".into()])
        .await
        .unwrap();
    let chat = pool.info("fixture-chat").await.unwrap();
    assert!(
        chat.loaded.is_none(),
        "max_loaded 1: the least recently used went"
    );
    assert!(pool.info("fixture-embed").await.unwrap().loaded.is_some());
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(seen.len() >= 3, "loaded, unloaded, loaded: {seen:?}");

    assert!(matches!(
        pool.load("no-such-model").await,
        Err(ModelError::NotFound(_))
    ));
    assert!(matches!(
        pool.embed("fixture-chat", vec!["x".into()]).await,
        Err(ModelError::WrongKind { .. })
    ));
}

/// The real models, prepared by `sting models prepare`. Ignored by default (they are ~600 MB
/// and not on every machine); run with
/// `STING_TEST_MODELS_DIR=<data_dir>/models cargo test -p sting-actors --test models -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real models: STING_TEST_MODELS_DIR=<data_dir>/models"]
async fn real_models_match_their_references() {
    let dir = std::env::var_os("STING_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .expect("STING_TEST_MODELS_DIR names a prepared models dir");
    let Some(library) = ort_library("real_models_match_their_references") else {
        return;
    };
    let pool = pool(&dir, library, 4).await;
    let chat = reference(&fixtures_dir().join("reference-smollm2.json"));
    check_chat_reference(&pool, "smollm2-135m-instruct", &chat).await;
    let embed = reference(&fixtures_dir().join("reference-minilm.json"));
    check_embedding_reference(&pool, "all-minilm-l6-v2", &embed).await;
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// A full queue refuses at once instead of waiting without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_busy() {
    let Some(library) = ort_library("a_full_queue_refuses_with_busy") else {
        return;
    };
    let pool = ModelPoolHandle::start(PoolConfig {
        models_dir: fixtures_dir(),
        runtime_library: library,
        intra_threads: 1,
        max_loaded: 1,
        queue_depth: 1,
        max_batch: 1,
    })
    .await
    .unwrap();
    pool.load("fixture-chat").await.unwrap();
    // Submitted all at once: admission answers far faster than a batch of one drains.
    let attempts = (0..50).map(|_| {
        let pool = pool.clone();
        async move {
            let request = GenerateRequest {
                messages: question("a long answer please"),
                params: greedy(200),
            };
            pool.generate("fixture-chat", request).await
        }
    });
    let mut receivers = Vec::new();
    let mut refused = 0;
    for outcome in futures_join(attempts).await {
        match outcome {
            Ok((events, _)) => receivers.push(events),
            Err(ModelError::Busy(name)) => {
                assert_eq!(name, "fixture-chat");
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(
        refused > 0,
        "50 requests into a batch of 1 and a queue of 1"
    );
    assert!(!receivers.is_empty(), "some were admitted");
}
