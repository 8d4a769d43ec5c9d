//! `ModelPool`: the node's registry of models (the valid directories under the models dir) and
//! of their loaded workers. It keeps at most `max_loaded` models loaded, unloading the least
//! recently used first, loads on demand, and announces loads and unloads.
//!
//! Supervisor of every `ModelWorker` on the node; a worker that fails is forgotten (the model
//! counts as unloaded and is loaded again on next use).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sting_store::Timestamp;
use tokio::sync::broadcast;

use super::encoder::Embedding;
use super::generation::WorkerCounters;
use super::manifest::ModelDir;
use super::runtime::OnnxRuntime;
use super::worker::{ModelWorker, ModelWorkerArgs, ModelWorkerMsg};
use super::ModelError;

/// How the pool is set up.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub models_dir: PathBuf,
    /// The ONNX Runtime shared library, loaded on the first model load.
    pub runtime_library: PathBuf,
    pub intra_threads: usize,
    pub max_loaded: usize,
    pub queue_depth: usize,
    pub max_batch: usize,
}

/// A model load or unload, for subscribers (the WebSocket `model_status` channel).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    Loaded { name: String, load_time: Duration },
    Unloaded { name: String },
}

/// What the pool knows about one model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model: ModelDir,
    pub last_used: Option<Timestamp>,
    pub inference_count: u64,
    pub tokens_generated: u64,
    /// Seconds, mean over requests.
    pub avg_response_time: f64,
    /// Tokens per second of decode steps (prefill excluded).
    pub tokens_per_second: f64,
    /// Time spent in decode steps (prefill excluded), since the node started.
    pub decode_seconds: f64,
    /// Tokens those decode steps produced.
    pub decode_tokens: u64,
    pub loaded: Option<LoadedInfo>,
}

#[derive(Debug, Clone)]
pub struct LoadedInfo {
    pub load_time: Duration,
    /// Growth of the process's resident memory across the load.
    pub memory_bytes: u64,
    pub hardware: &'static str,
}

pub struct ModelPool;

pub struct ModelPoolState {
    config: PoolConfig,
    available: BTreeMap<String, ModelDir>,
    loaded: HashMap<String, Loaded>,
    usage: HashMap<String, Usage>,
    runtime: Option<Arc<OnnxRuntime>>,
    events: broadcast::Sender<ModelEvent>,
}

struct Loaded {
    worker: ActorRef<ModelWorkerMsg>,
    info: LoadedInfo,
}

/// Survives unloads, so a model's counters are for the node's lifetime.
#[derive(Default)]
struct Usage {
    last_used: Option<Timestamp>,
    counters: Arc<WorkerCounters>,
}

/// A model's worker, and its load time when the call loaded it.
pub type Acquired = (ActorRef<ModelWorkerMsg>, Option<Duration>);

pub enum ModelPoolMsg {
    List(RpcReplyPort<Vec<ModelInfo>>),
    Info(String, RpcReplyPort<Result<ModelInfo, ModelError>>),
    /// Loads (if needed) and marks used; replies with the model's state.
    Load(String, RpcReplyPort<Result<ModelInfo, ModelError>>),
    Unload(String, RpcReplyPort<Result<bool, ModelError>>),
    /// The worker of a model, loading it if needed; the duration is the load time when this
    /// call loaded it.
    Acquire(String, RpcReplyPort<Result<Acquired, ModelError>>),
    /// Re-reads the models dir (after `sting models prepare` or a drop-in).
    Rescan,
}

// Local only: never sent to another node.
impl ractor::Message for ModelPoolMsg {}

pub struct ModelPoolArgs {
    pub config: PoolConfig,
    pub events: broadcast::Sender<ModelEvent>,
}

impl Actor for ModelPool {
    type Msg = ModelPoolMsg;
    type State = ModelPoolState;
    type Arguments = ModelPoolArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ModelPoolArgs,
    ) -> Result<ModelPoolState, ActorProcessingErr> {
        let mut state = ModelPoolState {
            config: args.config,
            available: BTreeMap::new(),
            loaded: HashMap::new(),
            usage: HashMap::new(),
            runtime: None,
            events: args.events,
        };
        rescan(&mut state).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ModelPoolMsg,
        state: &mut ModelPoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ModelPoolMsg::List(reply) => {
                let infos = state
                    .available
                    .keys()
                    .map(|name| info(state, name))
                    .collect();
                let _ = reply.send(infos);
            }
            ModelPoolMsg::Info(name, reply) => {
                let _ = reply.send(known(state, &name).map(|()| info(state, &name)));
            }
            ModelPoolMsg::Load(name, reply) => {
                let result = acquire(&myself, state, &name)
                    .await
                    .map(|_| info(state, &name));
                let _ = reply.send(result);
            }
            ModelPoolMsg::Unload(name, reply) => {
                let result = known(state, &name).map(|()| unload(state, &name));
                let _ = reply.send(result);
            }
            ModelPoolMsg::Acquire(name, reply) => {
                let _ = reply.send(acquire(&myself, state, &name).await);
            }
            ModelPoolMsg::Rescan => rescan(state).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut ModelPoolState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = &event {
            let failed = state
                .loaded
                .iter()
                .find(|(_, loaded)| loaded.worker.get_id() == cell.get_id())
                .map(|(name, _)| name.clone());
            if let Some(name) = failed {
                tracing::error!(model = %name, error = %err, "model worker failed");
                state.loaded.remove(&name);
                let _ = state.events.send(ModelEvent::Unloaded { name });
            }
        }
        Ok(())
    }
}

async fn rescan(state: &mut ModelPoolState) {
    let dir = state.config.models_dir.clone();
    let found = tokio::task::spawn_blocking(move || ModelDir::scan(&dir))
        .await
        .unwrap_or_default();
    state.available = found
        .into_iter()
        .map(|model| (model.manifest.name.clone(), model))
        .collect();
    tracing::info!(
        models = ?state.available.keys().collect::<Vec<_>>(),
        dir = %state.config.models_dir.display(),
        "models available"
    );
}

fn known(state: &ModelPoolState, name: &str) -> Result<(), ModelError> {
    if state.available.contains_key(name) {
        Ok(())
    } else {
        Err(ModelError::NotFound(name.to_owned()))
    }
}

fn info(state: &ModelPoolState, name: &str) -> ModelInfo {
    let usage = state.usage.get(name);
    let counters = usage.map(|u| u.counters.clone()).unwrap_or_default();
    let inferences = counters.inferences.load(Ordering::Relaxed);
    let tokens = counters.tokens_generated.load(Ordering::Relaxed);
    let decode_secs = counters.decode_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let response_secs = counters.response_micros.load(Ordering::Relaxed) as f64 / 1e6;
    ModelInfo {
        model: state.available[name].clone(),
        last_used: usage.and_then(|u| u.last_used),
        inference_count: inferences,
        tokens_generated: tokens,
        avg_response_time: if inferences == 0 {
            0.0
        } else {
            response_secs / inferences as f64
        },
        tokens_per_second: if decode_secs > 0.0 {
            counters.decode_tokens.load(Ordering::Relaxed) as f64 / decode_secs
        } else {
            0.0
        },
        decode_seconds: decode_secs,
        decode_tokens: counters.decode_tokens.load(Ordering::Relaxed),
        loaded: state.loaded.get(name).map(|loaded| loaded.info.clone()),
    }
}

async fn acquire(
    myself: &ActorRef<ModelPoolMsg>,
    state: &mut ModelPoolState,
    name: &str,
) -> Result<Acquired, ModelError> {
    known(state, name)?;
    let usage = state.usage.entry(name.to_owned()).or_default();
    usage.last_used = Some(Timestamp::now());
    let counters = usage.counters.clone();
    if let Some(loaded) = state.loaded.get(name) {
        return Ok((loaded.worker.clone(), None));
    }
    let runtime = match &state.runtime {
        Some(runtime) => runtime.clone(),
        None => {
            let runtime =
                OnnxRuntime::init(&state.config.runtime_library, state.config.intra_threads)?;
            state.runtime = Some(runtime.clone());
            runtime
        }
    };
    while state.loaded.len() >= state.config.max_loaded.max(1) {
        let Some(victim) = least_recently_used(state) else {
            break;
        };
        tracing::info!(model = %victim, "unloading the least recently used model");
        unload(state, &victim);
    }
    let rss_before = resident_bytes();
    let args = ModelWorkerArgs {
        runtime,
        model: state.available[name].clone(),
        counters,
        queue_depth: state.config.queue_depth,
        max_batch: state.config.max_batch,
    };
    let (worker, _) = Actor::spawn_linked(None, ModelWorker, args, myself.get_cell())
        .await
        .map_err(|err| ModelError::Runtime(format!("loading {name}: {err}")))?;
    let report = worker
        .call(ModelWorkerMsg::Report, Some(Duration::from_secs(5)))
        .await
        .map_err(|_| ModelError::Stopped)?
        .success_or(ModelError::Stopped)?;
    let info = LoadedInfo {
        load_time: report.load_time,
        memory_bytes: resident_bytes().saturating_sub(rss_before),
        hardware: report.hardware,
    };
    state.loaded.insert(
        name.to_owned(),
        Loaded {
            worker: worker.clone(),
            info,
        },
    );
    let _ = state.events.send(ModelEvent::Loaded {
        name: name.to_owned(),
        load_time: report.load_time,
    });
    Ok((worker, Some(report.load_time)))
}

fn least_recently_used(state: &ModelPoolState) -> Option<String> {
    state
        .loaded
        .keys()
        .min_by_key(|name| state.usage.get(*name).and_then(|u| u.last_used))
        .cloned()
}

/// Stops a model's worker; returns whether it was loaded.
fn unload(state: &mut ModelPoolState, name: &str) -> bool {
    match state.loaded.remove(name) {
        Some(loaded) => {
            loaded.worker.stop(Some("unloaded".into()));
            let _ = state.events.send(ModelEvent::Unloaded {
                name: name.to_owned(),
            });
            true
        }
        None => false,
    }
}

/// The process's resident set size (Linux); 0 where unknown.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// How long a call waits for the pool when it may have to load a model.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a quick call (list, info, admission) waits.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A cloneable handle to the node's model pool.
#[derive(Clone)]
pub struct ModelPoolHandle {
    pool: ActorRef<ModelPoolMsg>,
    events: broadcast::Sender<ModelEvent>,
    max_loaded: usize,
}

impl ModelPoolHandle {
    /// Starts the pool actor (scanning the models dir; nothing is loaded yet).
    pub async fn start(config: PoolConfig) -> Result<ModelPoolHandle, ModelError> {
        let (events, _) = broadcast::channel(64);
        let max_loaded = config.max_loaded;
        let (pool, _) = Actor::spawn(
            None,
            ModelPool,
            ModelPoolArgs {
                config,
                events: events.clone(),
            },
        )
        .await
        .map_err(|err| ModelError::Runtime(format!("starting the model pool: {err}")))?;
        Ok(ModelPoolHandle {
            pool,
            events,
            max_loaded,
        })
    }

    pub fn max_loaded(&self) -> usize {
        self.max_loaded
    }

    /// Whether the pool actor runs (for health checks).
    pub fn is_running(&self) -> bool {
        self.pool.get_status() == ractor::ActorStatus::Running
    }

    /// Model loads and unloads from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ModelEvent> {
        self.events.subscribe()
    }

    async fn ask<T: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<T>) -> ModelPoolMsg,
        timeout: Duration,
    ) -> Result<T, ModelError> {
        self.pool
            .call(message, Some(timeout))
            .await
            .map_err(|_| ModelError::Stopped)?
            .success_or(ModelError::Busy("model pool".into()))
    }

    pub async fn list(&self) -> Result<Vec<ModelInfo>, ModelError> {
        self.ask(ModelPoolMsg::List, CALL_TIMEOUT).await
    }

    pub async fn info(&self, name: &str) -> Result<ModelInfo, ModelError> {
        let name = name.to_owned();
        self.ask(|reply| ModelPoolMsg::Info(name, reply), CALL_TIMEOUT)
            .await?
    }

    pub async fn load(&self, name: &str) -> Result<ModelInfo, ModelError> {
        let name = name.to_owned();
        self.ask(|reply| ModelPoolMsg::Load(name, reply), LOAD_TIMEOUT)
            .await?
    }

    /// Returns whether the model was loaded.
    pub async fn unload(&self, name: &str) -> Result<bool, ModelError> {
        let name = name.to_owned();
        self.ask(|reply| ModelPoolMsg::Unload(name, reply), CALL_TIMEOUT)
            .await?
    }

    pub fn rescan(&self) {
        let _ = self.pool.cast(ModelPoolMsg::Rescan);
    }

    async fn acquire(&self, name: &str) -> Result<Acquired, ModelError> {
        let name = name.to_owned();
        self.ask(|reply| ModelPoolMsg::Acquire(name, reply), LOAD_TIMEOUT)
            .await?
    }

    /// Starts a generation on `model`: its events arrive on the returned receiver; dropping
    /// the receiver cancels it. Also returns the load time when this call loaded the model.
    pub async fn generate(
        &self,
        model: &str,
        request: super::worker::GenerateRequest,
    ) -> Result<
        (
            tokio::sync::mpsc::UnboundedReceiver<super::GenerationEvent>,
            Option<Duration>,
        ),
        ModelError,
    > {
        let (worker, load_time) = self.acquire(model).await?;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        worker
            .call(
                |reply| ModelWorkerMsg::Generate(request, events, reply),
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(|_| ModelError::Stopped)?
            .success_or(ModelError::Busy(model.to_owned()))??;
        Ok((receiver, load_time))
    }

    /// Embeds `texts` with `model` (unit vectors, in order).
    pub async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, ModelError> {
        let (worker, _) = self.acquire(model).await?;
        worker
            .call(
                |reply| ModelWorkerMsg::Embed(texts, reply),
                Some(LOAD_TIMEOUT),
            )
            .await
            .map_err(|_| ModelError::Stopped)?
            .success_or(ModelError::Busy(model.to_owned()))?
    }
}
