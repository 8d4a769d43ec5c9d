//! The ingestion pipeline: an [`IngestionPipeline`] actor admits stored documents into a
//! bounded queue and runs at most `concurrency` of them at once, each in its own supervised
//! [`DocumentIngestion`] actor: read the original → extract text → chunk (token-aware) → embed
//! (the embedding model's worker, batched) → store chunks and embeddings with the document's
//! final record in one step. Progress is written to the document as it goes.
//!
//! Nothing stays `processing` forever: a failure (unsupported or corrupt file, text beyond the
//! extraction budget, missing model, a crashed actor) marks the document `failed` with the
//! reason, and at start the node re-runs every document a crash left `processing` (a re-run
//! replaces whatever chunks a previous run stored). Each run is counted in the store before it
//! starts, so a document that keeps taking its node down is failed after
//! `max_attempts` runs instead of being resumed forever, on this node or any other.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sting_store::{Chunk, Document, DocumentId, DocumentStatus, Store, StoreError, Timestamp};

use super::blobs::{BlobError, BlobStore, MasterKey};
use super::chunk::{chunk, ChunkingConfig};
use super::extract::{extract, DocumentKind, ExtractLimits};
use crate::jar_shard::ShardRegistry;
use crate::model::pool::ModelPoolHandle;
use crate::model::tokens::TokenCounters;
use crate::model::ModelError;

/// Documents listed per query when resuming after a restart.
const RESUME_BATCH: u32 = 1000;
/// Progress is written when it moved by at least this many points.
const PROGRESS_STEP: u8 = 5;

/// How documents are processed on this node.
#[derive(Debug, Clone)]
pub struct IngestionConfig {
    /// The model that embeds chunks (its tokenizer also sizes them).
    pub embedding_model: String,
    pub chunking: ChunkingConfig,
    /// Documents processed at once.
    pub concurrency: usize,
    /// Documents waiting beyond those; more are refused ([`IngestionError::Busy`]).
    pub queue_depth: usize,
    /// Chunks per embedding call.
    pub embed_batch: usize,
    /// What extracting one document's text may produce and take.
    pub extract_limits: ExtractLimits,
    /// Runs a document gets: one that was started this often without finishing (its node
    /// crashed or restarted each time) is failed rather than run again.
    pub max_attempts: u32,
}

/// Failures of admission.
#[derive(Debug, thiserror::Error)]
pub enum IngestionError {
    #[error("the ingestion queue is full; retry shortly")]
    Busy,
    #[error("ingestion pipeline unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What every document actor needs.
pub struct Context {
    pub store: Arc<dyn Store>,
    pub pool: ModelPoolHandle,
    pub blobs: BlobStore,
    pub master_key: MasterKey,
    pub config: IngestionConfig,
    pub counters: TokenCounters,
    /// Told when a document's chunks changed, so live shards index them.
    pub shards: ShardRegistry,
}

/// A cloneable handle to the node's pipeline.
#[derive(Clone)]
pub struct IngestionHandle {
    pipeline: ActorRef<PipelineMsg>,
}

impl IngestionHandle {
    /// Starts the pipeline actor.
    pub async fn start(context: Context) -> Result<IngestionHandle, IngestionError> {
        let (pipeline, _) = Actor::spawn(None, IngestionPipeline, Arc::new(context))
            .await
            .map_err(|err| IngestionError::Unavailable(err.to_string()))?;
        Ok(IngestionHandle { pipeline })
    }

    /// Queues a stored document (status `processing`) for processing.
    pub async fn submit(&self, document: DocumentId) -> Result<(), IngestionError> {
        self.pipeline
            .call(
                |reply| PipelineMsg::Submit(document, reply),
                Some(std::time::Duration::from_secs(10)),
            )
            .await
            .map_err(|err| IngestionError::Unavailable(err.to_string()))?
            .success_or(IngestionError::Unavailable("pipeline timed out".into()))?
    }

    /// Re-queues every document left `processing` by an earlier run of the node; those beyond
    /// the queue's room are marked failed (to be uploaded again). Returns how many were queued.
    pub async fn resume_interrupted(&self, store: &dyn Store) -> Result<usize, IngestionError> {
        let interrupted = store
            .documents_with_status(DocumentStatus::Processing, RESUME_BATCH)
            .await?;
        let mut queued = 0;
        for document in interrupted {
            match self.submit(document.id).await {
                Ok(()) => queued += 1,
                Err(IngestionError::Busy) => {
                    fail(
                        store,
                        document,
                        "interrupted by a restart; upload it again".into(),
                    )
                    .await;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(queued)
    }

    /// Documents waiting and running.
    pub async fn load(&self) -> Option<(usize, usize)> {
        self.pipeline
            .call(PipelineMsg::Load, Some(std::time::Duration::from_secs(5)))
            .await
            .ok()?
            .success_or(())
            .ok()
    }

    pub fn is_running(&self) -> bool {
        self.pipeline.get_status() == ractor::ActorStatus::Running
    }

    pub async fn shutdown(&self) {
        let _ = self
            .pipeline
            .stop_and_wait(
                Some("node shutdown".into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// IngestionPipeline

/// Admission, the queue, and the supervisor of the document actors.
pub struct IngestionPipeline;

pub struct PipelineState {
    context: Arc<Context>,
    queue: VecDeque<DocumentId>,
    running: HashMap<ActorId, DocumentId>,
}

pub enum PipelineMsg {
    Submit(DocumentId, RpcReplyPort<Result<(), IngestionError>>),
    /// (waiting, running)
    Load(RpcReplyPort<(usize, usize)>),
}

// Local only: never sent to another node.
impl ractor::Message for PipelineMsg {}

impl Actor for IngestionPipeline {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = Arc<Context>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        context: Arc<Context>,
    ) -> Result<PipelineState, ActorProcessingErr> {
        Ok(PipelineState {
            context,
            queue: VecDeque::new(),
            running: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PipelineMsg,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PipelineMsg::Submit(document, reply) => {
                let config = &state.context.config;
                let result = if state.queue.len() >= config.queue_depth
                    && state.running.len() >= config.concurrency
                {
                    Err(IngestionError::Busy)
                } else {
                    state.queue.push_back(document);
                    Ok(())
                };
                let _ = reply.send(result);
                state.start_waiting(&myself).await;
            }
            PipelineMsg::Load(reply) => {
                let _ = reply.send((state.queue.len(), state.running.len()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        if let Some(document) = state.running.remove(&cell.get_id()) {
            if let Some(reason) = failure {
                tracing::error!(%document, error = %reason, "document ingestion crashed");
                let store = state.context.store.as_ref();
                if let Ok(Some(record)) = store.document(document).await {
                    fail(store, record, "internal error while processing".into()).await;
                }
            }
        }
        state.start_waiting(&myself).await;
        Ok(())
    }
}

impl PipelineState {
    /// Starts queued documents while there is room.
    async fn start_waiting(&mut self, myself: &ActorRef<PipelineMsg>) {
        while self.running.len() < self.context.config.concurrency {
            let Some(document) = self.queue.pop_front() else {
                return;
            };
            let args = (document, self.context.clone());
            match Actor::spawn_linked(None, DocumentIngestion, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    self.running.insert(actor.get_id(), document);
                }
                Err(err) => {
                    tracing::error!(%document, error = %err, "could not start document ingestion");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// DocumentIngestion

/// Processes one document, then stops.
pub struct DocumentIngestion;

impl Actor for DocumentIngestion {
    type Msg = ();
    type State = (DocumentId, Arc<Context>);
    type Arguments = (DocumentId, Arc<Context>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(())?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _message: (),
        (document, context): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        process(context, *document).await;
        myself.stop(None);
        Ok(())
    }
}

/// Why a document was not processed.
enum Failure {
    /// The document (or its jar) was deleted meanwhile: nothing to report.
    Gone,
    /// The reason shown to the document's owner.
    Failed(String),
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Failure {
        match err {
            StoreError::NotFound { .. } => Failure::Gone,
            err => Failure::Failed(format!("storage: {err}")),
        }
    }
}

impl From<ModelError> for Failure {
    fn from(err: ModelError) -> Failure {
        Failure::Failed(format!("embedding: {err}"))
    }
}

impl From<BlobError> for Failure {
    fn from(err: BlobError) -> Failure {
        Failure::Failed(format!("reading the original: {err}"))
    }
}

async fn process(context: &Context, id: DocumentId) {
    let started = Instant::now();
    let Ok(Some(document)) = context.store.document(id).await else {
        return; // deleted meanwhile
    };
    match run(context, document.clone(), started).await {
        Ok(()) | Err(Failure::Gone) => {}
        Err(Failure::Failed(reason)) => {
            tracing::warn!(document = %id, %reason, "document failed");
            let current = context.store.document(id).await.ok().flatten();
            fail(context.store.as_ref(), current.unwrap_or(document), reason).await;
        }
    }
}

async fn run(context: &Context, mut document: Document, started: Instant) -> Result<(), Failure> {
    let store = context.store.as_ref();
    let config = &context.config;
    if document.processing_attempts >= config.max_attempts {
        return Err(Failure::Failed(format!(
            "processing did not finish in {} attempt(s) (the node stopped each time); the file \
             may be too demanding to process",
            document.processing_attempts
        )));
    }
    // Counted before anything that could take the node down.
    document.processing_attempts += 1;
    document.updated_at = Timestamp::now();
    store.update_document(&document).await?;
    let jar = store.jar(document.jar_id).await?.ok_or(Failure::Gone)?;
    let key = match &jar.wrapped_key {
        Some(wrapped) => Some(context.master_key.unwrap_key(wrapped)?),
        None => None,
    };
    let bytes = context.blobs.get(jar.id, document.id, key.as_ref()).await?;
    let kind = DocumentKind::parse(&document.kind)
        .ok_or_else(|| Failure::Failed(format!("unknown document kind {}", document.kind)))?;
    let limits = config.extract_limits;
    let extracted = tokio::task::spawn_blocking(move || extract(kind, &bytes, &limits))
        .await
        .map_err(|_| Failure::Failed("text extraction crashed".into()))?
        .map_err(|err| Failure::Failed(err.to_string()))?;
    progress(store, &mut document, 30).await?;

    let model = context.pool.info(&config.embedding_model).await?;
    let counter = context
        .counters
        .get(&config.embedding_model, Some(&model.model))?;
    let chunking = config.chunking;
    let sections = extracted.sections.clone();
    let pieces = tokio::task::spawn_blocking(move || chunk(&sections, &chunking, &counter))
        .await
        .map_err(|_| Failure::Failed("chunking crashed".into()))??;
    if pieces.is_empty() {
        return Err(Failure::Failed("the document contains no text".into()));
    }
    progress(store, &mut document, 40).await?;

    let mut chunks = Vec::with_capacity(pieces.len());
    for batch in pieces.chunks(config.embed_batch.max(1)) {
        let texts = batch.iter().map(|piece| piece.text.clone()).collect();
        let embeddings = context.pool.embed(&config.embedding_model, texts).await?;
        for (piece, embedding) in batch.iter().zip(embeddings) {
            chunks.push(Chunk {
                document_id: document.id,
                jar_id: document.jar_id,
                seq: chunks.len() as u32,
                text: piece.text.clone(),
                page: piece.page,
                section: piece.section.clone(),
                token_count: piece.token_count as u32,
                embedding: embedding.vector,
            });
        }
        let done = 40 + 55 * chunks.len() / pieces.len();
        progress(store, &mut document, done as u8).await?;
    }

    document.status = DocumentStatus::Processed;
    document.progress = 100;
    document.error = None;
    document.chunk_count = chunks.len() as u64;
    document.embedding_count = chunks.len() as u64;
    document.processing_ms = Some(started.elapsed().as_millis() as u64);
    document.pages = extracted.pages;
    document.word_count = extracted.word_count;
    document.language = extracted.language;
    document.updated_at = Timestamp::now();
    store_processed(store, &context.shards, &document, &chunks).await?;
    tracing::info!(
        document = %document.id,
        chunks = chunks.len(),
        ms = started.elapsed().as_millis() as u64,
        "document processed"
    );
    Ok(())
}

/// Stores a processed document's chunks with its final record and its jar's counts (one store
/// step, so a retry counts nothing twice) and tells the jar's live shard to index it: how a
/// document becomes searchable, whether its chunks were made here or came with an imported
/// archive.
pub async fn store_processed(
    store: &dyn Store,
    shards: &ShardRegistry,
    document: &Document,
    chunks: &[Chunk],
) -> Result<(), StoreError> {
    store.save_chunks(document, chunks).await?;
    shards.document_changed(document.jar_id, document.id);
    Ok(())
}

/// Records progress when it moved enough to be worth a write.
async fn progress(store: &dyn Store, document: &mut Document, percent: u8) -> Result<(), Failure> {
    if percent < document.progress.saturating_add(PROGRESS_STEP) {
        return Ok(());
    }
    document.progress = percent;
    document.updated_at = Timestamp::now();
    store.update_document(document).await?;
    Ok(())
}

/// Marks a document failed with `reason` (a deleted document stays deleted).
async fn fail(store: &dyn Store, mut document: Document, reason: String) {
    document.status = DocumentStatus::Failed;
    document.error = Some(reason);
    document.updated_at = Timestamp::now();
    if let Err(err) = store.update_document(&document).await {
        if !matches!(err, StoreError::NotFound { .. }) {
            tracing::error!(document = %document.id, error = %err, "could not mark document failed");
        }
    }
}
