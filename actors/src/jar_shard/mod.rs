//! Honey-jar shards: each jar's chunks are spread over `shards_per_jar` shards (by document),
//! and each shard is served by one [`JarShardActor`] that owns its indexes on the node's disk
//! (BM25 with tantivy, an HNSW graph with exact re-scoring for vectors; see [`index`]). An
//! actor holds the shard's lease in the store (so a cluster can place shards on nodes), opens
//! its indexes when it is activated and brings them up to date with the store (the store is the
//! source of truth; the indexes are caches, rebuilt from it whenever they were not checkpointed
//! cleanly), applies document changes as they are reported, checkpoints its files when quiet
//! and when passivated, and is passivated when idle.
//!
//! Search fans out to every shard of the searched jars and fuses the two rankings with
//! reciprocal rank fusion: a chunk's score is `Σ 1 / (RRF_K + rank)` over the BM25 and the
//! vector ranking it appears in (ranks from 1), divided by the best possible `2 / (RRF_K + 1)`
//! so that scores lie in 0..1 (1 = first in both rankings).

pub mod index;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use sting_cluster::{Cluster, NodeId};
use sting_store::{
    Chunk, Document, DocumentId, DocumentStatus, JarId, Lease, Page, Store, StoreError, Timestamp,
};

use crate::ownership::{self, Owned};
use crate::remote::Request;
use crate::supervision::{self, ChildSupervisor, SupervisorMsg};
use index::{ChunkHit, IndexError, ShardIndex};

/// The RRF constant (the usual 60: it damps the weight of the very first ranks).
pub const RRF_K: f32 = 60.0;
/// Chunks read from the store per page while building a shard.
const BUILD_PAGE: u32 = 1000;
/// Up to this many stale documents are read one by one; more are read with one chunk scan.
const PER_DOCUMENT_READS_MAX: usize = 64;
/// Chunks indexed per blocking step while building a shard.
const BUILD_BATCH_CHUNKS: usize = 5000;
/// Document changes are committed to the text index together, at most this long after the
/// first (a search commits at once what is pending, so it always sees every reported change).
const COMMIT_DELAY: Duration = Duration::from_millis(100);
/// A changed index is checkpointed once it has seen no change for this long.
const CHECKPOINT_QUIET: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How shards are laid out and kept.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Where the node keeps shard indexes: `<dir>/<jar>/<shard>/`.
    pub dir: PathBuf,
    pub shards_per_jar: u32,
    pub lease_ttl: Duration,
    pub idle_timeout: Duration,
}

/// Failures of shard operations.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(String),
    #[error("shard unavailable: {0}")]
    Unavailable(String),
}

impl From<IndexError> for ShardError {
    fn from(err: IndexError) -> ShardError {
        ShardError::Index(err.to_string())
    }
}

/// What one search asks of every shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardQuery {
    pub text: String,
    pub embedding: Vec<f32>,
    /// Only these document kinds ("pdf", ...); empty: all.
    pub document_types: Vec<String>,
    /// Only documents carrying one of these tags; empty: all.
    pub tags: Vec<String>,
    /// Candidates per ranking and shard.
    pub depth: usize,
}

/// A fused search result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchHit {
    pub jar_id: JarId,
    pub document_id: DocumentId,
    pub seq: u32,
    pub title: String,
    pub kind: String,
    pub text: String,
    pub page: Option<u32>,
    pub section: Option<String>,
    /// Fused score in 0..1.
    pub score: f32,
}

/// One shard's two rankings, resolved to hits.
#[derive(Serialize, Deserialize)]
pub struct ShardAnswer {
    bm25: Vec<(SearchHit, f32)>,
    vector: Vec<(SearchHit, f32)>,
    documents: usize,
}

/// The shard of a document: a hash every node computes the same way.
fn shard_of(document: DocumentId, shards: u32) -> u32 {
    (sting_cluster::placement::stable_hash(document.as_bytes()) % shards.max(1) as u64) as u32
}

fn actor_name(jar: JarId, shard: u32) -> String {
    format!("shard:{jar}:{shard}")
}

fn lease_key(jar: JarId, shard: u32) -> String {
    format!("jar-shard:{jar}:{shard}")
}

fn shard_dir(root: &Path, jar: JarId, shard: u32) -> PathBuf {
    root.join(jar.to_string()).join(shard.to_string())
}

/// What every shard actor of the node shares.
pub struct Shared {
    store: Arc<dyn Store>,
    config: ShardConfig,
    active: Arc<std::sync::atomic::AtomicU64>,
    cluster: Cluster,
    /// One holder per shard directory. A stopping actor leaves the name registry before its
    /// `post_stop` (its checkpoint) runs, so its successor waits here until it has let go.
    directories: std::sync::Mutex<HashMap<(JarId, u32), DirectoryLock>>,
}

type DirectoryLock = Arc<tokio::sync::Mutex<()>>;

impl Shared {
    /// Waits until no other actor on this node holds the shard's directory, and holds it.
    async fn hold_directory(
        &self,
        jar: JarId,
        shard: u32,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ShardError> {
        let lock = {
            let mut directories = self.directories.lock().unwrap_or_else(|e| e.into_inner());
            directories.entry((jar, shard)).or_default().clone()
        };
        tokio::time::timeout(CALL_TIMEOUT, lock.lock_owned())
            .await
            .map_err(|_| {
                ShardError::Unavailable("the shard's previous actor is still stopping".into())
            })
    }
}

/// The node's entry point to jar shards.
#[derive(Clone)]
pub struct ShardRegistry {
    supervisor: ActorRef<SupervisorMsg<JarShardActor>>,
    shared: Arc<Shared>,
}

impl ShardRegistry {
    /// Starts the shard supervisor. Shards are placed on the members of `cluster`; when its
    /// membership changes, every live shard checks that it is still the owner.
    pub async fn start(
        store: Arc<dyn Store>,
        config: ShardConfig,
        cluster: Cluster,
    ) -> Result<ShardRegistry, ShardError> {
        let shared = Arc::new(Shared {
            store,
            config,
            active: Default::default(),
            cluster,
            directories: Default::default(),
        });
        let (supervisor, _) = ChildSupervisor::start("jar shard", shared.active.clone())
            .await
            .map_err(|err| ShardError::Unavailable(err.to_string()))?;
        let mut view = shared.cluster.subscribe();
        let watched = supervisor.clone();
        tokio::spawn(async move {
            while view.changed().await.is_ok() {
                ChildSupervisor::broadcast(&watched, || ShardMsg::Tick);
            }
        });
        Ok(ShardRegistry { supervisor, shared })
    }

    /// Shard actors live on this node.
    pub fn active_count(&self) -> u64 {
        self.shared
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Searches every shard of `jars` and fuses the rankings; returns the best `limit` hits,
    /// how many distinct chunks matched, and how many documents were searched.
    pub async fn search(
        &self,
        jars: &[JarId],
        query: ShardQuery,
        limit: usize,
    ) -> Result<(Vec<SearchHit>, usize, usize), ShardError> {
        let shards = self.shared.config.shards_per_jar.max(1);
        let mut calls = Vec::new();
        for &jar in jars {
            for shard in 0..shards {
                let query = query.clone();
                calls.push(async move { self.search_shard(jar, shard, query).await });
            }
        }
        let answers = futures_util::future::try_join_all(calls).await?;
        let documents = answers.iter().map(|a| a.documents).sum();
        let (hits, total) = fuse(answers, limit);
        Ok((hits, total, documents))
    }

    /// Brings a document's chunks in the live shard up to date with the store (processed,
    /// re-processed or deleted), on whichever node owns the shard. A shard that is not live
    /// reads the store when activated.
    pub fn document_changed(&self, jar: JarId, document: DocumentId) {
        let shard = shard_of(document, self.shared.config.shards_per_jar);
        match self.remote_owner(jar, shard) {
            None => self.refresh_local(jar, document),
            Some(owner) => {
                let request = Request::DocumentChanged { jar, document };
                if let Err(err) = self.shared.cluster.cast(&owner, &request) {
                    // The owner is going away: its successor reads the store when activated.
                    tracing::debug!(%jar, %owner, error = %err, "document change not forwarded");
                }
            }
        }
    }

    /// [`ShardRegistry::document_changed`] for the shard's actor on this node.
    pub(crate) fn refresh_local(&self, jar: JarId, document: DocumentId) {
        let shard = shard_of(document, self.shared.config.shards_per_jar);
        if let Some(actor) = ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)) {
            let _ = actor.cast(ShardMsg::Refresh(document));
        }
    }

    /// Stops the shards of a deleted jar and deletes their indexes, on every live node (a
    /// node that is down deletes its stale files when the shard next fails to find its jar).
    pub fn jar_deleted(&self, jar: JarId) {
        self.destroy_local(jar);
        crate::remote::cast_to_peers(&self.shared.cluster, &Request::JarDeleted(jar));
    }

    /// Stops this node's shards of a deleted jar and deletes their files.
    pub(crate) fn destroy_local(&self, jar: JarId) {
        for shard in 0..self.shared.config.shards_per_jar.max(1) {
            if let Some(actor) = ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)) {
                let _ = actor.cast(ShardMsg::Destroy);
            }
        }
        let dir = self.shared.config.dir.join(jar.to_string());
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%jar, error = %err, "could not delete the jar's shard indexes");
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("node shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }

    /// The shard's owner when it is another node.
    fn remote_owner(&self, jar: JarId, shard: u32) -> Option<NodeId> {
        let cluster = &self.shared.cluster;
        let owner = cluster.owner(lease_key(jar, shard).as_bytes());
        (owner != *cluster.local()).then_some(owner)
    }

    /// Searches one shard on whichever node owns it.
    async fn search_shard(
        &self,
        jar: JarId,
        shard: u32,
        query: ShardQuery,
    ) -> Result<ShardAnswer, ShardError> {
        let Some(owner) = self.remote_owner(jar, shard) else {
            return self.search_local(jar, shard, query).await;
        };
        let request = Request::Search { jar, shard, query };
        self.shared
            .cluster
            .call::<_, Result<ShardAnswer, String>>(&owner, &request, CALL_TIMEOUT)
            .await
            .map_err(|err| ShardError::Unavailable(err.to_string()))?
            .map_err(ShardError::Unavailable)
    }

    /// Searches the shard's actor on this node (activating it).
    pub(crate) async fn search_local(
        &self,
        jar: JarId,
        shard: u32,
        query: ShardQuery,
    ) -> Result<ShardAnswer, ShardError> {
        for _ in 0..5 {
            if ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)).is_none() {
                let owned = Owned {
                    lease_key: &lease_key(jar, shard),
                    actor_name: &actor_name(jar, shard),
                };
                let (store, ttl) = (self.shared.store.as_ref(), self.shared.config.lease_ttl);
                ownership::claim(store, &self.shared.cluster, owned, ttl).await?;
            }
            let args = (jar, shard, self.shared.clone());
            let actor = ChildSupervisor::activate(
                &self.supervisor,
                actor_name(jar, shard),
                args,
                CALL_TIMEOUT,
            )
            .await
            .map_err(ShardError::Unavailable)?;
            let query = query.clone();
            match actor
                .call(|reply| ShardMsg::Search(query, reply), Some(CALL_TIMEOUT))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(answer)) => return answer,
                Ok(ractor::rpc::CallResult::Timeout) => {
                    return Err(ShardError::Unavailable("shard timed out".into()))
                }
                // Passivating: ask its successor.
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        Err(ShardError::Unavailable("shard kept stopping".into()))
    }
}

/// Reciprocal rank fusion over all shards' rankings (each ranking re-sorted globally first).
fn fuse(answers: Vec<ShardAnswer>, limit: usize) -> (Vec<SearchHit>, usize) {
    use std::collections::HashMap;
    let mut bm25: Vec<(SearchHit, f32)> = Vec::new();
    let mut vector: Vec<(SearchHit, f32)> = Vec::new();
    for answer in answers {
        bm25.extend(answer.bm25);
        vector.extend(answer.vector);
    }
    bm25.sort_by(|a, b| b.1.total_cmp(&a.1));
    vector.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut fused: HashMap<(DocumentId, u32), SearchHit> = HashMap::new();
    for ranking in [bm25, vector] {
        for (rank, (hit, _)) in ranking.into_iter().enumerate() {
            let contribution = 1.0 / (RRF_K + rank as f32 + 1.0);
            fused
                .entry((hit.document_id, hit.seq))
                .and_modify(|existing| existing.score += contribution)
                .or_insert(SearchHit {
                    score: contribution,
                    ..hit
                });
        }
    }
    let best = 2.0 / (RRF_K + 1.0);
    let total = fused.len();
    let mut hits: Vec<SearchHit> = fused
        .into_values()
        .map(|hit| SearchHit {
            score: (hit.score / best).min(1.0),
            ..hit
        })
        .collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.document_id.cmp(&b.document_id))
            .then(a.seq.cmp(&b.seq))
    });
    hits.truncate(limit);
    (hits, total)
}

// ---------------------------------------------------------------------------------------
// JarShardActor

#[derive(Default)]
pub struct JarShardActor;

pub struct ShardState {
    jar: JarId,
    shard: u32,
    shared: Arc<Shared>,
    lease: Lease,
    /// None once the jar is deleted.
    index: Option<ShardIndex>,
    last_request: Instant,
    /// When the index last changed without a checkpoint since.
    changed_at: Option<Instant>,
    /// Changes await a commit (one is scheduled).
    commit_pending: bool,
    /// Declared last: dropped after the index, so a successor opens it only once let go.
    _directory: tokio::sync::OwnedMutexGuard<()>,
}

pub enum ShardMsg {
    Search(ShardQuery, RpcReplyPort<Result<ShardAnswer, ShardError>>),
    /// Re-reads one document from the store.
    Refresh(DocumentId),
    /// Commits pending changes.
    Commit,
    /// The jar is deleted: stop and delete the index files.
    Destroy,
    Tick,
}

// Local only: never sent to another node.
impl ractor::Message for ShardMsg {}

impl Actor for JarShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = (JarId, u32, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (jar, shard, shared): Self::Arguments,
    ) -> Result<ShardState, ActorProcessingErr> {
        let directory = shared.hold_directory(jar, shard).await?;
        let config = &shared.config;
        let lease = shared
            .store
            .acquire_lease(
                &lease_key(jar, shard),
                shared.cluster.local().as_str(),
                config.lease_ttl.as_millis() as i64,
                Timestamp::now(),
            )
            .await?;
        let started = Instant::now();
        let index = open(&shared, jar, shard).await?;
        tracing::info!(%jar, shard, documents = index.document_count(), chunks = index.chunk_count(), ms = started.elapsed().as_millis() as u64, "jar shard ready");
        let tick = (config.lease_ttl / 3).min(config.idle_timeout / 2);
        myself.send_interval(tick.max(Duration::from_millis(50)), || ShardMsg::Tick);
        Ok(ShardState {
            jar,
            shard,
            shared,
            lease,
            index: Some(index),
            last_request: Instant::now(),
            changed_at: None,
            commit_pending: false,
            _directory: directory,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(index) = state.index.as_mut() {
            if let Err(err) = index.checkpoint() {
                tracing::warn!(jar = %state.jar, shard = state.shard, error = %err, "shard checkpoint failed; it will be rebuilt");
            }
        }
        let _ = state.shared.store.release_lease(&state.lease).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Search(query, reply) => {
                state.last_request = Instant::now();
                let result = match commit(state) {
                    Ok(()) => search(state, &query),
                    Err(err) => Err(err),
                };
                let _ = reply.send(result);
            }
            ShardMsg::Refresh(document) => {
                if let Err(err) = refresh(state, document).await {
                    tracing::warn!(jar = %state.jar, %document, error = %err, "shard refresh failed; rebuilding on next activation");
                    myself.stop(Some("refresh failed".into()));
                } else if !state.commit_pending {
                    state.commit_pending = true;
                    myself.send_after(COMMIT_DELAY, || ShardMsg::Commit);
                }
            }
            ShardMsg::Commit => {
                if let Err(err) = commit(state) {
                    tracing::warn!(jar = %state.jar, error = %err, "shard commit failed; rebuilding on next activation");
                    myself.stop(Some("commit failed".into()));
                }
            }
            ShardMsg::Destroy => {
                if let Some(index) = state.index.take() {
                    if let Err(err) = index.destroy() {
                        tracing::warn!(jar = %state.jar, shard = state.shard, error = %err, "could not delete shard index");
                    }
                }
                myself.stop(Some("jar deleted".into()));
            }
            ShardMsg::Tick => {
                let config = &state.shared.config;
                if state.last_request.elapsed() >= config.idle_timeout {
                    myself.stop(Some("idle".into()));
                    return Ok(());
                }
                if !ownership::is_owner(&state.shared.cluster, &state.lease.key) {
                    myself.stop(Some("ownership moved".into()));
                    return Ok(());
                }
                if state
                    .changed_at
                    .is_some_and(|at| at.elapsed() >= CHECKPOINT_QUIET)
                {
                    state.changed_at = None;
                    if let Some(Err(err)) = state.index.as_mut().map(ShardIndex::checkpoint) {
                        tracing::warn!(jar = %state.jar, shard = state.shard, error = %err, "shard checkpoint failed");
                    }
                }
                let ttl = config.lease_ttl;
                let store = state.shared.store.clone();
                if let Err(err) =
                    supervision::renew_if_due(store.as_ref(), &mut state.lease, ttl).await
                {
                    tracing::warn!(jar = %state.jar, shard = state.shard, error = %err, "jar shard lease lost");
                    myself.stop(Some("lease lost".into()));
                }
            }
        }
        Ok(())
    }
}

/// Opens the shard's index from disk and brings it up to date with the store: documents no
/// longer processed are dropped, new or re-processed ones (by `updated_at`) are read and added.
async fn open(shared: &Shared, jar: JarId, shard: u32) -> Result<ShardIndex, ShardError> {
    let dir = shard_dir(&shared.config.dir, jar, shard);
    let mut index = blocking(move || ShardIndex::open(&dir)).await?;
    let current = processed_documents(shared, jar, shard).await?;
    let held = index.versions();
    for id in held.keys().filter(|id| !current.contains_key(id)) {
        index.remove(*id)?;
    }
    let mut stale: HashMap<DocumentId, (Document, Vec<Chunk>)> = current
        .into_iter()
        .filter(|(id, document)| held.get(id) != Some(&document.updated_at.0))
        .map(|(id, document)| (id, (document, Vec::new())))
        .collect();
    let rebuilt = stale.len();
    if stale.len() <= PER_DOCUMENT_READS_MAX {
        for (id, (_, chunks)) in stale.iter_mut() {
            *chunks = shared.store.document_chunks(*id).await?;
        }
    } else {
        let mut after = None;
        loop {
            let chunks = shared.store.jar_chunks(jar, after, BUILD_PAGE).await?;
            let Some(last) = chunks.last() else { break };
            after = Some((last.document_id, last.seq));
            for chunk in chunks {
                if let Some((_, list)) = stale.get_mut(&chunk.document_id) {
                    list.push(chunk);
                }
            }
        }
    }
    let mut batch = Vec::new();
    let mut batch_chunks = 0;
    let mut documents = stale.into_values().peekable();
    while let Some(document) = documents.next() {
        batch_chunks += document.1.len();
        batch.push(document);
        if batch_chunks >= BUILD_BATCH_CHUNKS || documents.peek().is_none() {
            let put = std::mem::take(&mut batch);
            batch_chunks = 0;
            index = blocking(move || {
                index.put(put)?;
                Ok(index)
            })
            .await?;
        }
    }
    if rebuilt > 0 {
        tracing::info!(%jar, shard, documents = rebuilt, "shard index caught up with the store");
    }
    blocking(move || {
        index.checkpoint()?;
        Ok(index)
    })
    .await
}

/// Runs index work that may take a while on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, ShardError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ShardError::Index(err.to_string()))?
        .map_err(ShardError::from)
}

/// The jar's processed documents that belong to this shard.
async fn processed_documents(
    shared: &Shared,
    jar: JarId,
    shard: u32,
) -> Result<HashMap<DocumentId, Document>, ShardError> {
    let shards = shared.config.shards_per_jar;
    let mut documents = HashMap::new();
    let mut offset = 0;
    loop {
        let page = Page { limit: 200, offset };
        let (batch, total) = shared.store.list_documents(jar, page).await?;
        offset += batch.len() as u64;
        for document in batch {
            if document.status == DocumentStatus::Processed
                && shard_of(document.id, shards) == shard
            {
                documents.insert(document.id, document);
            }
        }
        if offset >= total || offset == 0 {
            break;
        }
    }
    Ok(documents)
}

async fn refresh(state: &mut ShardState, id: DocumentId) -> Result<(), ShardError> {
    let Some(index) = state.index.as_mut() else {
        return Ok(());
    };
    let store = &state.shared.store;
    match store.document(id).await? {
        Some(document) if document.status == DocumentStatus::Processed => {
            let chunks = store.document_chunks(id).await?;
            index.put(vec![(document, chunks)])?;
        }
        _ => index.remove(id)?,
    }
    state.changed_at = Some(Instant::now());
    Ok(())
}

/// Makes pending changes searchable.
fn commit(state: &mut ShardState) -> Result<(), ShardError> {
    if std::mem::take(&mut state.commit_pending) {
        if let Some(index) = state.index.as_mut() {
            index.commit()?;
        }
    }
    Ok(())
}

fn search(state: &ShardState, query: &ShardQuery) -> Result<ShardAnswer, ShardError> {
    let Some(index) = state.index.as_ref() else {
        return Err(ShardError::Unavailable("jar deleted".into()));
    };
    let keep = |info: &index::DocumentInfo| {
        (query.document_types.is_empty() || query.document_types.contains(&info.kind))
            && (query.tags.is_empty() || info.tags.iter().any(|t| query.tags.contains(t)))
    };
    let resolve = |hits: Vec<ChunkHit>| -> Vec<(SearchHit, f32)> {
        hits.into_iter()
            .filter_map(|hit| {
                let info = index.document(hit.document_id)?;
                Some((
                    SearchHit {
                        jar_id: state.jar,
                        document_id: hit.document_id,
                        seq: hit.seq,
                        title: info.title.clone(),
                        kind: info.kind.clone(),
                        text: hit.text,
                        page: hit.page,
                        section: hit.section,
                        score: 0.0,
                    },
                    hit.score,
                ))
            })
            .collect()
    };
    let bm25 = if query.text.trim().is_empty() {
        Vec::new()
    } else {
        index.bm25(&query.text, query.depth, &keep)?
    };
    let vector = index.nearest(&query.embedding, query.depth, &keep)?;
    Ok(ShardAnswer {
        bm25: resolve(bm25),
        vector: resolve(vector),
        documents: index.document_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(document: DocumentId, seq: u32) -> SearchHit {
        SearchHit {
            jar_id: JarId::nil(),
            document_id: document,
            seq,
            title: String::new(),
            kind: String::new(),
            text: String::new(),
            page: None,
            section: None,
            score: 0.0,
        }
    }

    #[test]
    fn fusion_rewards_agreement_and_scores_lie_in_0_to_1() {
        let (a, b, c) = (
            DocumentId::from_u128(1),
            DocumentId::from_u128(2),
            DocumentId::from_u128(3),
        );
        let answer = ShardAnswer {
            bm25: vec![(hit(a, 0), 9.0), (hit(b, 0), 5.0)],
            vector: vec![(hit(a, 0), 0.9), (hit(c, 0), 0.8)],
            documents: 3,
        };
        let (hits, total) = fuse(vec![answer], 10);
        assert_eq!(total, 3);
        assert_eq!(hits[0].document_id, a, "first in both rankings wins");
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        assert!(hits.iter().all(|h| h.score > 0.0 && h.score <= 1.0));
        assert_eq!(hits.len(), 3);
    }

    #[test]
    fn documents_spread_over_shards_stably() {
        let counts = (0..1000u128).fold([0u32; 4], |mut counts, i| {
            counts[shard_of(DocumentId::from_u128(i * 7919 + 13), 4) as usize] += 1;
            counts
        });
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
        assert_eq!(shard_of(DocumentId::from_u128(42), 1), 0);
    }
}
