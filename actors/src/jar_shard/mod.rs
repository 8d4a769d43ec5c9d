//! Honey-jar shards: each jar's chunks are spread over `shards_per_jar` shards (by document),
//! and each shard is served by one [`JarShardActor`] that owns its indexes (BM25 with tantivy,
//! exact cosine over the embeddings; see [`index`]). An actor holds the shard's lease in the
//! store (so a cluster can place shards on nodes), builds its indexes from the store when it is
//! activated (the store is the source of truth; the indexes are caches), applies document
//! changes as they are reported, and is passivated when idle.
//!
//! Search fans out to every shard of the searched jars and fuses the two rankings with
//! reciprocal rank fusion: a chunk's score is `Σ 1 / (RRF_K + rank)` over the BM25 and the
//! vector ranking it appears in (ranks from 1), divided by the best possible `2 / (RRF_K + 1)`
//! so that scores lie in 0..1 (1 = first in both rankings).

pub mod index;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sting_store::{DocumentId, DocumentStatus, JarId, Lease, Page, Store, StoreError, Timestamp};

use crate::supervision::{self, Children};
use index::{RankedHit, ShardIndex};

/// The RRF constant (the usual 60: it damps the weight of the very first ranks).
pub const RRF_K: f32 = 60.0;
/// Chunks read from the store per page while building a shard.
const BUILD_PAGE: u32 = 1000;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How shards are laid out and kept.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub node: String,
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

impl From<tantivy::TantivyError> for ShardError {
    fn from(err: tantivy::TantivyError) -> ShardError {
        ShardError::Index(err.to_string())
    }
}

/// What one search asks of every shard.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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

/// What every shard actor of the node shares.
pub struct Shared {
    store: Arc<dyn Store>,
    config: ShardConfig,
    active: Arc<std::sync::atomic::AtomicU64>,
}

/// The node's entry point to jar shards.
#[derive(Clone)]
pub struct ShardRegistry {
    supervisor: ActorRef<SupervisorMsg>,
    shared: Arc<Shared>,
}

impl ShardRegistry {
    pub async fn start(
        store: Arc<dyn Store>,
        config: ShardConfig,
    ) -> Result<ShardRegistry, ShardError> {
        let shared = Arc::new(Shared {
            store,
            config,
            active: Default::default(),
        });
        let (supervisor, _) = Actor::spawn(None, ShardSupervisor, shared.clone())
            .await
            .map_err(|err| ShardError::Unavailable(err.to_string()))?;
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
                calls.push(async move { self.ask_search(jar, shard, query).await });
            }
        }
        let answers = futures_util::future::try_join_all(calls).await?;
        let documents = answers.iter().map(|a| a.documents).sum();
        let (hits, total) = fuse(answers, limit);
        Ok((hits, total, documents))
    }

    /// Brings a document's chunks in the live shard up to date with the store (processed,
    /// re-processed or deleted). A shard that is not live reads the store when activated.
    pub fn document_changed(&self, jar: JarId, document: DocumentId) {
        let shard = shard_of(document, self.shared.config.shards_per_jar);
        if let Some(actor) = ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)) {
            let _ = actor.cast(ShardMsg::Refresh(document));
        }
    }

    /// Stops the shards of a deleted jar.
    pub fn jar_deleted(&self, jar: JarId) {
        for shard in 0..self.shared.config.shards_per_jar.max(1) {
            if let Some(actor) = ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)) {
                actor.stop(Some("jar deleted".into()));
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("node shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }

    async fn ask_search(
        &self,
        jar: JarId,
        shard: u32,
        query: ShardQuery,
    ) -> Result<ShardAnswer, ShardError> {
        for _ in 0..5 {
            let actor = match ActorRef::<ShardMsg>::where_is(actor_name(jar, shard)) {
                Some(actor) => actor,
                None => self
                    .supervisor
                    .call(
                        |reply| SupervisorMsg::Activate(jar, shard, reply),
                        Some(CALL_TIMEOUT),
                    )
                    .await
                    .map_err(|err| ShardError::Unavailable(err.to_string()))?
                    .success_or(ShardError::Unavailable("activation timed out".into()))??,
            };
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
// ShardSupervisor

pub struct ShardSupervisor;

pub struct SupervisorState {
    shared: Arc<Shared>,
    children: Children,
}

pub enum SupervisorMsg {
    Activate(
        JarId,
        u32,
        RpcReplyPort<Result<ActorRef<ShardMsg>, ShardError>>,
    ),
}

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            children: Children::new(shared.active.clone()),
            shared,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Activate(jar, shard, reply) = message;
        let args = (jar, shard, state.shared.clone());
        let result = state
            .children
            .activate(
                actor_name(jar, shard),
                JarShardActor,
                args,
                myself.get_cell(),
            )
            .await
            .map_err(|err| ShardError::Unavailable(err.to_string()));
        let _ = reply.send(result);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.children.on_event(&event, "jar shard");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// JarShardActor

pub struct JarShardActor;

pub struct ShardState {
    jar: JarId,
    shard: u32,
    shared: Arc<Shared>,
    lease: Lease,
    index: ShardIndex,
    last_request: Instant,
}

pub enum ShardMsg {
    Search(ShardQuery, RpcReplyPort<Result<ShardAnswer, ShardError>>),
    /// Re-reads one document from the store.
    Refresh(DocumentId),
    Tick,
}

impl Actor for JarShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = (JarId, u32, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (jar, shard, shared): Self::Arguments,
    ) -> Result<ShardState, ActorProcessingErr> {
        let config = &shared.config;
        let lease = shared
            .store
            .acquire_lease(
                &lease_key(jar, shard),
                &config.node,
                config.lease_ttl.as_millis() as i64,
                Timestamp::now(),
            )
            .await?;
        let started = Instant::now();
        let index = build(&shared, jar, shard).await?;
        tracing::info!(%jar, shard, documents = index.document_count(), ms = started.elapsed().as_millis() as u64, "jar shard built");
        let tick = (config.lease_ttl / 3).min(config.idle_timeout / 2);
        myself.send_interval(tick.max(Duration::from_millis(50)), || ShardMsg::Tick);
        Ok(ShardState {
            jar,
            shard,
            shared,
            lease,
            index,
            last_request: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
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
                let _ = reply.send(search(state, &query));
            }
            ShardMsg::Refresh(document) => {
                if let Err(err) = refresh(state, document).await {
                    tracing::warn!(jar = %state.jar, %document, error = %err, "shard refresh failed; rebuilding on next activation");
                    myself.stop(Some("refresh failed".into()));
                }
            }
            ShardMsg::Tick => {
                let config = &state.shared.config;
                if state.last_request.elapsed() >= config.idle_timeout {
                    myself.stop(Some("idle".into()));
                    return Ok(());
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

/// The shard's indexes from the store: its processed documents and their chunks.
async fn build(shared: &Shared, jar: JarId, shard: u32) -> Result<ShardIndex, ShardError> {
    let shards = shared.config.shards_per_jar;
    let mut documents = std::collections::HashMap::new();
    let mut offset = 0;
    loop {
        let page = Page { limit: 200, offset };
        let (batch, total) = shared.store.list_documents(jar, page).await?;
        offset += batch.len() as u64;
        for document in batch {
            if document.status == DocumentStatus::Processed
                && shard_of(document.id, shards) == shard
            {
                documents.insert(document.id, (document, Vec::new()));
            }
        }
        if offset >= total || offset == 0 {
            break;
        }
    }
    let mut after = None;
    loop {
        let chunks = shared.store.jar_chunks(jar, after, BUILD_PAGE).await?;
        let Some(last) = chunks.last() else { break };
        after = Some((last.document_id, last.seq));
        for chunk in chunks {
            if let Some((_, list)) = documents.get_mut(&chunk.document_id) {
                list.push(chunk);
            }
        }
    }
    let mut index = ShardIndex::new()?;
    for (_, (document, chunks)) in documents {
        index.put(&document, chunks)?;
    }
    index.commit()?;
    Ok(index)
}

async fn refresh(state: &mut ShardState, id: DocumentId) -> Result<(), ShardError> {
    let store = &state.shared.store;
    match store.document(id).await? {
        Some(document) if document.status == DocumentStatus::Processed => {
            let chunks = store.document_chunks(id).await?;
            state.index.put(&document, chunks)?;
        }
        _ => state.index.remove(id),
    }
    state.index.commit()?;
    Ok(())
}

fn search(state: &ShardState, query: &ShardQuery) -> Result<ShardAnswer, ShardError> {
    let keep = |info: &index::DocumentInfo| {
        (query.document_types.is_empty() || query.document_types.contains(&info.kind))
            && (query.tags.is_empty() || info.tags.iter().any(|t| query.tags.contains(t)))
    };
    let index = &state.index;
    let resolve = |hits: Vec<RankedHit>| -> Vec<(SearchHit, f32)> {
        hits.into_iter()
            .filter_map(|hit| {
                let entry = index.entry(hit.key)?;
                let info = index.document(entry.document_id)?;
                Some((
                    SearchHit {
                        jar_id: state.jar,
                        document_id: entry.document_id,
                        seq: entry.seq,
                        title: info.title.clone(),
                        kind: info.kind.clone(),
                        text: entry.text.clone(),
                        page: entry.page,
                        section: entry.section.clone(),
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
    let vector = index.nearest(&query.embedding, query.depth, &keep);
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
