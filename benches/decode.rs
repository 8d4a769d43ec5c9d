//! Decode throughput of the model worker against raw ONNX Runtime on the same model file,
//! session options and thread count, in one run (the machine is shared: compare ratios).
//!
//! ```sh
//! STING_BENCH_MODEL_DIR=data/models/smollm2-135m-instruct \
//! ORT_DYLIB_PATH=data/runtime/libonnxruntime.so.1.31.1 \
//! cargo bench --bench decode
//! ```
//!
//! Prints tokens/s of: raw ONNX Runtime greedy decoding at batch 1 and batch 16 (decode steps
//! only), and the worker with 1, 4 and 16 concurrent generations, both end to end (wall time
//! from submission to the last token: admission and prefill included) and inside its decode
//! steps (the same span as the raw figures), then the ratios; medians over
//! `STING_BENCH_ROUNDS` (default 3) rounds that alternate raw and worker runs.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use sting_actors::model::manifest::ModelDir;
use sting_actors::model::pool::{ModelPoolHandle, PoolConfig};
use sting_actors::model::runtime::OnnxRuntime;
use sting_actors::model::worker::GenerateRequest;
use sting_actors::model::{ChatMessage, GenerationEvent, Role, SamplingParams};

const THREADS: usize = 2;
const PROMPT: &str = "Write a long story about a bee who learns to read.";

fn main() {
    let Some(model_dir) = std::env::var_os("STING_BENCH_MODEL_DIR").map(PathBuf::from) else {
        eprintln!("SKIP decode bench: set STING_BENCH_MODEL_DIR to a chat model directory");
        return;
    };
    let library = PathBuf::from(std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH"));
    let new_tokens: usize = std::env::var("STING_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let model = ModelDir::load(&model_dir).expect("model dir");
    let runtime = OnnxRuntime::init(&library, THREADS).expect("runtime");
    let tokenizer = tokenizers::Tokenizer::from_file(model.tokenizer_path()).unwrap();
    let messages = vec![ChatMessage {
        role: Role::User,
        content: PROMPT.into(),
    }];
    let prompt = model
        .manifest
        .chat_template
        .as_ref()
        .expect("a chat model")
        .render(&messages);
    let prompt_ids: Vec<i64> = tokenizer
        .encode(prompt.as_str(), false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&id| id as i64)
        .collect();

    let rounds: usize = std::env::var("STING_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut session, _) = runtime.session(&model.model_path()).unwrap();
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
        pool.load(&model.manifest.name).await.unwrap();
        pool
    });
    // Rounds alternate raw and worker runs so that drift in the machine's load hits both;
    // the figures are medians over rounds.
    let mut figures: Vec<[f64; 8]> = Vec::new();
    for round in 0..rounds {
        let raw_1 = raw_decode(&mut session, &model, &prompt_ids, 1, new_tokens);
        let raw_16 = raw_decode(&mut session, &model, &prompt_ids, 16, new_tokens);
        let mut row = [raw_1, raw_16, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        for (slot, concurrency) in [1, 4, 16].into_iter().enumerate() {
            let name = &model.manifest.name;
            let (wall, decode) = tokio.block_on(async {
                let before = pool.info(name).await.unwrap();
                let wall = worker_decode(&pool, name, &messages, concurrency, new_tokens).await;
                let after = pool.info(name).await.unwrap();
                let decode = (after.decode_tokens - before.decode_tokens) as f64
                    / (after.decode_seconds - before.decode_seconds);
                (wall, decode)
            });
            row[2 + 2 * slot] = wall;
            row[3 + 2 * slot] = decode;
        }
        eprintln!("round {}: {row:.1?}", round + 1);
        figures.push(row);
    }
    let median = |i: usize| {
        let mut values: Vec<f64> = figures.iter().map(|row| row[i]).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (raw_1, raw_16) = (median(0), median(1));
    println!(
        "medians over {rounds} rounds, {new_tokens} new tokens per generation, {THREADS} threads:"
    );
    println!("raw ONNX Runtime, batch 1:  {raw_1:8.1} tokens/s");
    println!(
        "raw ONNX Runtime, batch 16: {raw_16:8.1} tokens/s ({:.2}x batch 1)",
        raw_16 / raw_1
    );
    for (slot, concurrency) in [1, 4, 16].into_iter().enumerate() {
        println!(
            "worker, {concurrency:2} concurrent: {:8.1} tokens/s end to end, {:8.1} tokens/s in decode steps",
            median(2 + 2 * slot),
            median(3 + 2 * slot)
        );
    }
    let ratio = |a: usize, b: usize| {
        let mut values: Vec<f64> = figures.iter().map(|row| row[a] / row[b]).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "single stream: worker / raw batch 1   = {:.2} in decode steps, {:.2} end to end",
        ratio(3, 0),
        ratio(2, 0)
    );
    println!(
        "16 concurrent: worker / raw batch 16  = {:.2} in decode steps, {:.2} end to end",
        ratio(7, 1),
        ratio(6, 1)
    );
    println!(
        "16 concurrent: worker / worker single = {:.2} end to end",
        ratio(6, 2)
    );
}

/// Greedy decoding of `batch` copies of the prompt; tokens/s of the decode steps.
fn raw_decode(
    session: &mut Session,
    model: &ModelDir,
    prompt: &[i64],
    batch: usize,
    steps: usize,
) -> f64 {
    let manifest = &model.manifest;
    let (layers, kv, dim) = (
        manifest.num_layers.unwrap(),
        manifest.num_kv_heads.unwrap(),
        manifest.head_dim.unwrap(),
    );
    let mut past: Vec<DynValue> = (0..2 * layers)
        .map(|_| {
            Tensor::from_array((
                vec![batch as i64, kv as i64, 0, dim as i64],
                Vec::<f32>::new(),
            ))
            .unwrap()
            .into_dyn()
        })
        .collect();
    let mut ids: Vec<i64> = prompt.repeat(batch);
    let mut seq = prompt.len();
    let mut total = 0;
    let mut decode_time = std::time::Duration::ZERO;
    for step in 0..=steps {
        let started = Instant::now();
        let dims = |cols: usize| vec![batch as i64, cols as i64];
        let positions: Vec<i64> = (0..batch)
            .flat_map(|_| (total..total + seq).map(|p| p as i64))
            .collect();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array((dims(seq), ids.clone())).unwrap().into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array((dims(total + seq), vec![1i64; batch * (total + seq)]))
                    .unwrap()
                    .into(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array((dims(seq), positions)).unwrap().into(),
            ),
        ];
        for (i, value) in std::mem::take(&mut past).into_iter().enumerate() {
            let kind = if i % 2 == 0 { "key" } else { "value" };
            inputs.push((
                format!("past_key_values.{}.{kind}", i / 2).into(),
                value.into(),
            ));
        }
        let mut outputs = session.run(inputs).unwrap();
        for i in 0..2 * layers {
            let kind = if i % 2 == 0 { "key" } else { "value" };
            past.push(outputs.remove(format!("present.{}.{kind}", i / 2)).unwrap());
        }
        let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        let vocab = shape[2] as usize;
        ids = (0..batch)
            .map(|row| {
                let last = &logits[(row * seq + seq - 1) * vocab..(row * seq + seq) * vocab];
                argmax(last) as i64
            })
            .collect();
        total += seq;
        seq = 1;
        if step > 0 {
            decode_time += started.elapsed();
        }
    }
    (batch * steps) as f64 / decode_time.as_secs_f64()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `concurrency` greedy generations at once through the pool; aggregate tokens/s.
async fn worker_decode(
    pool: &ModelPoolHandle,
    model: &str,
    messages: &[ChatMessage],
    concurrency: usize,
    new_tokens: usize,
) -> f64 {
    let started = Instant::now();
    let runs = (0..concurrency).map(|_| {
        let pool = pool.clone();
        let request = GenerateRequest {
            messages: messages.to_vec(),
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: new_tokens,
                ..Default::default()
            },
        };
        let model = model.to_owned();
        tokio::spawn(async move {
            let (mut events, _) = pool.generate(&model, request).await.unwrap();
            while let Some(event) = events.recv().await {
                match event {
                    GenerationEvent::Text(_) => {}
                    GenerationEvent::Done(summary) => return summary.completion_tokens,
                    GenerationEvent::Failed(err) => panic!("{err}"),
                }
            }
            0
        })
    });
    let handles: Vec<_> = runs.collect();
    let mut tokens = 0;
    for handle in handles {
        tokens += handle.await.unwrap();
    }
    tokens as f64 / started.elapsed().as_secs_f64()
}
