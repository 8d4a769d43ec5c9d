//! `ModelWorker`: one per loaded model on a node. It loads the model's ONNX Runtime session,
//! runs it on a dedicated thread (the generation loop for chat models, a batching loop for
//! embedding models) and admits requests into that thread's bounded queue: a full queue is
//! refused at once ([`ModelError::Busy`]) instead of waiting without bound.
//!
//! Supervisor: the node's `ModelPool`. Stopping the actor closes the queue; the thread
//! finishes the work it holds and exits.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use super::decoder::{CacheShape, Decoder};
use super::encoder::{Embedding, Encoder};
use super::generation::{self, GenerationEvent, GenerationJob, LoopConfig, WorkerCounters};
use super::manifest::{ChatMessage, ChatTemplate, ModelDir, ModelKind};
use super::runtime::OnnxRuntime;
use super::sampling::SamplingParams;
use super::ModelError;

/// Texts embedded in one forward pass at most.
pub const EMBED_BATCH: usize = 32;

pub struct ModelWorker;

pub struct ModelWorkerArgs {
    pub runtime: Arc<OnnxRuntime>,
    pub model: ModelDir,
    pub counters: Arc<WorkerCounters>,
    /// Requests waiting beyond the running batch.
    pub queue_depth: usize,
    /// Sequences decoded together.
    pub max_batch: usize,
}

/// What loading cost and where the model runs.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub load_time: Duration,
    pub hardware: &'static str,
}

pub struct ModelWorkerState {
    name: String,
    queue: Queue,
    report: LoadReport,
}

enum Queue {
    Chat {
        jobs: SyncSender<GenerationJob>,
        template: ChatTemplate,
    },
    Embedding {
        jobs: SyncSender<EmbedJob>,
    },
}

struct EmbedJob {
    texts: Vec<String>,
    reply: RpcReplyPort<Result<Vec<Embedding>, ModelError>>,
}

/// A chat completion request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
}

pub enum ModelWorkerMsg {
    /// Queues a generation whose events go to the sender; replies once admitted (or refused).
    Generate(
        GenerateRequest,
        UnboundedSender<GenerationEvent>,
        RpcReplyPort<Result<(), ModelError>>,
    ),
    /// Embeds texts (unit vectors, in order).
    Embed(
        Vec<String>,
        RpcReplyPort<Result<Vec<Embedding>, ModelError>>,
    ),
    /// How loading went.
    Report(RpcReplyPort<LoadReport>),
}

// Local only: never sent to another node.
impl ractor::Message for ModelWorkerMsg {}

impl Actor for ModelWorker {
    type Msg = ModelWorkerMsg;
    type State = ModelWorkerState;
    type Arguments = ModelWorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ModelWorkerArgs,
    ) -> Result<ModelWorkerState, ActorProcessingErr> {
        let name = args.model.manifest.name.clone();
        let started = Instant::now();
        let (queue, hardware) = tokio::task::spawn_blocking(move || start_engine(args)).await??;
        let report = LoadReport {
            load_time: started.elapsed(),
            hardware,
        };
        tracing::info!(model = %name, load_ms = report.load_time.as_millis() as u64, hardware, "model loaded");
        Ok(ModelWorkerState {
            name,
            queue,
            report,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: ModelWorkerMsg,
        state: &mut ModelWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ModelWorkerMsg::Generate(request, events, reply) => {
                let _ = reply.send(admit_generation(state, request, events));
            }
            ModelWorkerMsg::Embed(texts, reply) => admit_embedding(state, texts, reply),
            ModelWorkerMsg::Report(reply) => {
                let _ = reply.send(state.report.clone());
            }
        }
        Ok(())
    }
}

fn admit_generation(
    state: &ModelWorkerState,
    request: GenerateRequest,
    events: UnboundedSender<GenerationEvent>,
) -> Result<(), ModelError> {
    let Queue::Chat { jobs, template } = &state.queue else {
        return Err(ModelError::WrongKind {
            name: state.name.clone(),
            operation: "generate text",
        });
    };
    let job = GenerationJob {
        prompt: template.render(&request.messages),
        params: request.params,
        events,
        enqueued_at: Instant::now(),
    };
    jobs.try_send(job).map_err(|err| match err {
        TrySendError::Full(_) => ModelError::Busy(state.name.clone()),
        TrySendError::Disconnected(_) => ModelError::Stopped,
    })
}

fn admit_embedding(
    state: &ModelWorkerState,
    texts: Vec<String>,
    reply: RpcReplyPort<Result<Vec<Embedding>, ModelError>>,
) {
    let Queue::Embedding { jobs } = &state.queue else {
        let _ = reply.send(Err(ModelError::WrongKind {
            name: state.name.clone(),
            operation: "embed text",
        }));
        return;
    };
    if let Err(err) = jobs.try_send(EmbedJob { texts, reply }) {
        let (job, error) = match err {
            TrySendError::Full(job) => (job, ModelError::Busy(state.name.clone())),
            TrySendError::Disconnected(job) => (job, ModelError::Stopped),
        };
        let _ = job.reply.send(Err(error));
    }
}

/// Loads the session and starts the model's thread (blocking: runs on the blocking pool).
fn start_engine(args: ModelWorkerArgs) -> Result<(Queue, &'static str), ModelError> {
    let manifest = &args.model.manifest;
    let tokenizer = Tokenizer::from_file(args.model.tokenizer_path())
        .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
    let (session, hardware) = args.runtime.session(&args.model.model_path())?;
    let thread_name = format!("model-{}", manifest.name);
    let spawn_err = |err: std::io::Error| ModelError::Runtime(format!("spawning thread: {err}"));
    let queue = match manifest.kind {
        ModelKind::Chat => {
            let shape = CacheShape {
                layers: manifest.num_layers.unwrap_or_default(),
                kv_heads: manifest.num_kv_heads.unwrap_or_default(),
                head_dim: manifest.head_dim.unwrap_or_default(),
            };
            let eos_ids = manifest
                .eos_tokens
                .iter()
                .filter_map(|token| tokenizer.token_to_id(token))
                .collect();
            let config = LoopConfig {
                max_batch: args.max_batch.max(1),
                context_length: manifest.context_length,
                eos_ids,
            };
            let template = manifest
                .chat_template
                .clone()
                .expect("validated when the model dir was loaded");
            let (jobs, receiver) = sync_channel(args.queue_depth);
            let decoder = Decoder::new(session, shape);
            let counters = args.counters.clone();
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    generation::run_loop(decoder, tokenizer, shape, config, receiver, counters)
                })
                .map_err(spawn_err)?;
            Queue::Chat { jobs, template }
        }
        ModelKind::Embedding => {
            let encoder = Encoder::new(session, tokenizer, manifest.context_length)?;
            let (jobs, receiver) = sync_channel(args.queue_depth);
            let counters = args.counters.clone();
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || embed_loop(encoder, receiver, counters))
                .map_err(spawn_err)?;
            Queue::Embedding { jobs }
        }
    };
    Ok((queue, hardware))
}

/// Embeds queued requests, merging waiting ones into batches of up to [`EMBED_BATCH`] texts.
fn embed_loop(mut encoder: Encoder, jobs: Receiver<EmbedJob>, counters: Arc<WorkerCounters>) {
    use std::sync::atomic::Ordering;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let mut texts = batch[0].texts.len();
        while texts < EMBED_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    texts += job.texts.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let all: Vec<String> = batch.iter().flat_map(|job| job.texts.clone()).collect();
        let result: Result<Vec<Embedding>, ModelError> = all
            .chunks(EMBED_BATCH)
            .map(|chunk| encoder.embed(chunk))
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.into_iter().flatten().collect());
        let elapsed = started.elapsed().as_micros() as u64;
        counters.decode_micros.fetch_add(elapsed, Ordering::Relaxed);
        counters
            .inferences
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters
            .response_micros
            .fetch_add(elapsed * batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(mut vectors) => {
                for job in batch {
                    let rest = vectors.split_off(job.texts.len());
                    let mine = std::mem::replace(&mut vectors, rest);
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(err) => {
                for job in batch {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
