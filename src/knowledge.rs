//! Honey jars and their documents: who may do what, and the steps around the store, the
//! document originals and the ingestion pipeline. The edge (`edge/knowledge_api.rs`) only
//! translates HTTP to these calls.
//!
//! Access: admins may do everything. Otherwise a jar is readable by its owner, by everyone when
//! `public`, and by the users it is shared with when `shared`; only its owner manages it
//! (update, share, upload, delete). A jar the caller cannot read is "not found" (its existence
//! is not revealed); one they can read but not manage is "forbidden".

pub mod hjx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sting_actors::conversation::{fit_passages, system_text, ChatPolicy, Passage};
use sting_actors::ingestion::blobs::{BlobError, BlobStore, DataKey, MasterKey};
use sting_actors::ingestion::extract::detect;
use sting_actors::ingestion::pipeline::{store_processed, IngestionError, IngestionHandle};
use sting_actors::jar_shard::{SearchHit, ShardError, ShardQuery, ShardRegistry};
use sting_actors::model::pool::ModelPoolHandle;
use sting_actors::model::tokens::TokenCounters;
use sting_actors::model::worker::GenerateRequest;
use sting_actors::model::{
    ChatMessage, GenerationEvent, ModelError, ModelKind, Role, SamplingParams,
};
use sting_actors::session::Identity;
use sting_store::{
    Chunk, Document, DocumentId, DocumentStatus, HoneyJar, JarId, JarQuery, JarSettings, License,
    LicenseType, Page, Store, StoreError, Timestamp, User, UserId, Visibility,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Failures of knowledge operations, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the file exceeds the upload limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Ingestion(#[from] IngestionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An HJX archive that cannot be imported.
    #[error(transparent)]
    Archive(#[from] hjx::HjxError),
    /// The node is doing as much of this as it may at once; retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// A failure that is nobody's fault but the node's (logged, not shown).
    #[error("{0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, KnowledgeError>;

/// A new jar.
#[derive(Debug, Clone)]
pub struct NewJar {
    pub name: String,
    pub description: String,
    pub visibility: Visibility,
    pub tags: Vec<String>,
    pub settings: JarSettings,
}

/// Changes to a jar; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct JarPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    pub tags: Option<Vec<String>>,
    pub allow_search: Option<bool>,
    pub allow_export: Option<bool>,
}

/// What came with an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadMetadata {
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
const MAX_FILENAME_CHARS: usize = 255;

pub struct KnowledgeService {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    master_key: MasterKey,
    ingestion: IngestionHandle,
    shards: ShardRegistry,
    models: ModelPoolHandle,
    embedding_model: String,
    max_upload_bytes: u64,
    max_import_bytes: u64,
    max_import_unpacked_bytes: u64,
    /// One permit per import under way (`limits.max_concurrent_imports`).
    imports: Arc<Semaphore>,
    /// `<data_dir>/imports`: where imports stream their archive and unpack its entries.
    imports_dir: PathBuf,
    /// Bee's prompt, default model and token budget, shared with chat.
    chat: ChatPolicy,
    counters: TokenCounters,
}

/// A question to answer from honey jars.
#[derive(Debug, Clone)]
pub struct AskRequest {
    pub question: String,
    pub jar_ids: Vec<JarId>,
    /// Chunks to retrieve (1–20).
    pub context_limit: usize,
    pub model: Option<String>,
}

/// A grounded answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// The chunks the model was given, as numbered in its prompt.
    pub sources: Vec<SearchHit>,
    pub confidence: f32,
    pub model: String,
}

/// Most chunks one question may use.
pub const MAX_CONTEXT_LIMIT: usize = 20;

/// Who reads: the rights that decide which jars a search may touch.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub user_id: UserId,
    pub admin: bool,
}

impl From<&Identity> for Reader {
    fn from(who: &Identity) -> Reader {
        Reader {
            user_id: who.user_id,
            admin: who.is_admin(),
        }
    }
}

/// Chunks a chat turn naming honey jars gets in its prompt.
const CHAT_PASSAGES: usize = 5;

/// A search over honey jars.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    /// Empty: every jar the caller may search.
    pub jar_ids: Vec<JarId>,
    pub document_types: Vec<String>,
    pub tags: Vec<String>,
    pub limit: usize,
}

/// Search results with their totals.
#[derive(Debug, Clone)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    pub total: usize,
    pub searched_documents: usize,
}

/// An exported jar.
#[derive(Debug)]
pub struct Export {
    /// `<jar name>.hjx`, reduced to characters safe in a Content-Disposition header.
    pub filename: String,
    pub archive: Vec<u8>,
}

/// What an import created.
#[derive(Debug)]
pub struct Imported {
    pub jar: HoneyJar,
    pub documents: usize,
    /// The archive's embedding model is not this node's: the documents are re-embedded here
    /// (`processing` until done) instead of keeping the archive's chunks.
    pub reembedding: bool,
}

/// A checked document of an archive, ready to store (its original and chunks stay on disk
/// until then).
struct Incoming {
    /// Its place in the archive's documents.
    index: usize,
    /// Its record as created (`processing`).
    document: Document,
    /// Its processed record, when the archive's chunks are kept.
    processed: Option<Document>,
}

/// An import under way: its place among the `limits.max_concurrent_imports` the node runs at
/// once (held until the import ends), and the archive as it streams in, written to an unnamed
/// temporary file under `<data_dir>/imports` (gone when closed, even after a crash).
pub struct ImportUpload {
    permit: OwnedSemaphorePermit,
    file: tokio::fs::File,
    bytes: u64,
    limit: u64,
}

impl ImportUpload {
    /// Appends the next bytes of the archive; more than `limits.max_import_bytes` in all is
    /// [`KnowledgeError::TooLarge`].
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let total = self.bytes.saturating_add(bytes.len() as u64);
        if total > self.limit {
            return Err(KnowledgeError::TooLarge { limit: self.limit });
        }
        self.file.write_all(bytes).await.map_err(spool_failed)?;
        self.bytes = total;
        Ok(())
    }
}

fn spool_failed(err: std::io::Error) -> KnowledgeError {
    KnowledgeError::Internal(format!("writing an archive being imported to disk: {err}"))
}

/// Creates `dir` if missing, its owner's alone (0700).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes what imports interrupted by a crash left in `dir` (their unpacked entries).
fn remove_leftover_imports(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("import-") {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed what an interrupted import left")
                }
                Err(err) => {
                    tracing::warn!(dir = %entry.path().display(), error = %err, "could not remove what an interrupted import left")
                }
            }
        }
    }
}

/// Most characters of a search query.
const MAX_QUERY_CHARS: usize = 2000;
/// Most results one search returns.
pub const MAX_SEARCH_LIMIT: usize = 100;

/// The jars `licenses` open for search: `None` for the whole jar, else the time after which its
/// documents are not included (a `single_use` license: the documents held when it was paid).
fn licensed_jars(licenses: &[License]) -> HashMap<JarId, Option<Timestamp>> {
    let mut jars: HashMap<JarId, Option<Timestamp>> = HashMap::new();
    for license in licenses {
        let cutoff = match license.license_type {
            LicenseType::SingleUse => Some(license.granted_at),
            LicenseType::Personal => None,
        };
        jars.entry(license.jar_id)
            .and_modify(|known| {
                *known = match (*known, cutoff) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            })
            .or_insert(cutoff);
    }
    jars
}

/// Whether `user` may read `jar`.
pub fn can_read(jar: &HoneyJar, user: UserId, admin: bool) -> bool {
    admin
        || jar.owner_id == user
        || match jar.visibility {
            Visibility::Public => true,
            Visibility::Shared => jar.shared_with.contains(&user),
            Visibility::Private => false,
        }
}

impl KnowledgeService {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: BlobStore,
        master_key: MasterKey,
        ingestion: IngestionHandle,
        shards: ShardRegistry,
        models: ModelPoolHandle,
        config: &crate::config::Config,
    ) -> KnowledgeService {
        let imports_dir = config.data_dir.join("imports");
        remove_leftover_imports(&imports_dir);
        KnowledgeService {
            store,
            blobs,
            master_key,
            ingestion,
            shards,
            models,
            embedding_model: config.embedding_model(),
            max_upload_bytes: config.knowledge.max_upload_bytes,
            max_import_bytes: config.limits.max_import_bytes,
            max_import_unpacked_bytes: config.limits.max_import_unpacked_bytes,
            imports: Arc::new(Semaphore::new(
                config
                    .limits
                    .max_concurrent_imports
                    .min(Semaphore::MAX_PERMITS),
            )),
            imports_dir,
            chat: config.chat_policy(),
            counters: TokenCounters::default(),
        }
    }

    /// Answers a question from the jars the caller may search: the best `context_limit` chunks
    /// become numbered sources in Bee's prompt (as many as the model's token budget holds,
    /// best first), and the model answers greedily. `confidence` is the mean relevance score
    /// (0..1) of the sources it was given; 0 when nothing relevant was found.
    pub async fn ask(&self, who: Reader, request: AskRequest) -> Result<Answer> {
        if !(1..=MAX_CONTEXT_LIMIT).contains(&request.context_limit) {
            return Err(KnowledgeError::Invalid {
                field: "context_limit",
                reason: format!("must be between 1 and {MAX_CONTEXT_LIMIT}"),
            });
        }
        let model = request
            .model
            .clone()
            .unwrap_or_else(|| self.chat.default_model.clone());
        let info = self.models.info(&model).await?;
        let template = match (info.model.manifest.kind, &info.model.manifest.chat_template) {
            (ModelKind::Chat, Some(template)) => template.clone(),
            _ => {
                return Err(KnowledgeError::Invalid {
                    field: "model",
                    reason: "not a chat model".into(),
                })
            }
        };
        let results = self
            .search(
                who,
                SearchRequest {
                    query: request.question.clone(),
                    jar_ids: request.jar_ids,
                    document_types: Vec::new(),
                    tags: Vec::new(),
                    limit: request.context_limit,
                },
            )
            .await
            .map_err(|err| match err {
                KnowledgeError::Invalid {
                    field: "query",
                    reason,
                } => KnowledgeError::Invalid {
                    field: "question",
                    reason,
                },
                err => err,
            })?;
        let counter = self.counters.get(&model, Some(&info.model))?;
        let budget = self.chat.budget(info.model.manifest.context_length);
        let question = request.question.trim();
        let sources = results.hits;
        let mut passages: Vec<Passage> = sources
            .iter()
            .map(|hit| Passage {
                title: hit.title.clone(),
                page: hit.page,
                content: hit.text.clone(),
            })
            .collect();
        let fixed = counter.count(&template.segment(Role::User, question))?
            + counter.count(&template.generation_prompt)?;
        let room = budget.saturating_sub(fixed as u64);
        fit_passages(
            &counter,
            &template,
            &self.chat.system_prompt,
            None,
            &mut passages,
            room,
        )?;
        let system = system_text(&self.chat.system_prompt, None, &passages);
        let sources: Vec<SearchHit> = sources.into_iter().take(passages.len()).collect();
        let generation = GenerateRequest {
            messages: vec![
                ChatMessage {
                    role: Role::System,
                    content: system,
                },
                ChatMessage {
                    role: Role::User,
                    content: question.to_owned(),
                },
            ],
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: self.chat.default_max_tokens,
                ..SamplingParams::default()
            },
        };
        let (mut events, _) = self.models.generate(&model, generation).await?;
        let mut text = String::new();
        loop {
            match events.recv().await {
                Some(GenerationEvent::Text(piece)) => text.push_str(&piece),
                Some(GenerationEvent::Done(_)) => break,
                Some(GenerationEvent::Failed(err)) => return Err(err.into()),
                None => return Err(ModelError::Stopped.into()),
            }
        }
        let confidence = if sources.is_empty() {
            0.0
        } else {
            sources.iter().map(|hit| hit.score).sum::<f32>() / sources.len() as f32
        };
        Ok(Answer {
            text: text.trim().to_owned(),
            sources,
            confidence,
            model,
        })
    }

    pub fn shards(&self) -> &ShardRegistry {
        &self.shards
    }

    /// Hybrid search over the jars the caller may search: named ones must be readable (404
    /// otherwise) and searchable by the caller (`allow_search`, or they own it: 403 otherwise);
    /// without names, every jar they may read and search.
    pub async fn search(&self, who: Reader, request: SearchRequest) -> Result<SearchResults> {
        let query = request.query.trim();
        if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            return Err(KnowledgeError::Invalid {
                field: "query",
                reason: format!("must have 1 to {MAX_QUERY_CHARS} characters"),
            });
        }
        if !(1..=MAX_SEARCH_LIMIT).contains(&request.limit) {
            return Err(KnowledgeError::Invalid {
                field: "limit",
                reason: format!("must be between 1 and {MAX_SEARCH_LIMIT}"),
            });
        }
        let searchable =
            |jar: &HoneyJar| jar.settings.allow_search || jar.owner_id == who.user_id || who.admin;
        // Jars bought on the marketplace are searchable through their licenses.
        let licensed = licensed_jars(&self.store.licenses_of(who.user_id).await?);
        let mut cutoffs = HashMap::new();
        let jars: Vec<JarId> = if request.jar_ids.is_empty() {
            let mut ids: Vec<JarId> = self
                .store
                .readable_jars(who.user_id)
                .await?
                .iter()
                .filter(|jar| searchable(jar))
                .map(|jar| jar.id)
                .collect();
            for (&jar, &cutoff) in &licensed {
                if !ids.contains(&jar) {
                    ids.push(jar);
                    cutoffs.extend(cutoff.map(|at| (jar, at)));
                }
            }
            ids
        } else {
            let mut ids = Vec::new();
            for &id in &request.jar_ids {
                match self.readable_by(who, id).await {
                    Ok(jar) if !searchable(&jar) && !licensed.contains_key(&id) => {
                        return Err(KnowledgeError::Forbidden(
                            "this honey jar does not allow search",
                        ))
                    }
                    Ok(_) => {}
                    Err(KnowledgeError::NotFound(_)) if licensed.contains_key(&id) => {
                        cutoffs.extend(licensed[&id].map(|at| (id, at)));
                    }
                    Err(err) => return Err(err),
                }
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids
        };
        let request = SearchRequest {
            query: query.to_owned(),
            ..request
        };
        self.run_search(&jars, request, &cutoffs).await
    }

    /// Searches a listed jar for a marketplace preview, with no reader's rights involved (the
    /// marketplace decides who may preview; callers show only titles and snippets).
    pub async fn preview(&self, jar: JarId, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
        let request = SearchRequest {
            query: query.trim().to_owned(),
            jar_ids: vec![jar],
            document_types: Vec::new(),
            tags: Vec::new(),
            limit,
        };
        Ok(self
            .run_search(&[jar], request, &HashMap::new())
            .await?
            .hits)
    }

    /// Searches `jars` (already checked); a jar in `cutoffs` shows only the documents
    /// uploaded by then (a `single_use` license).
    async fn run_search(
        &self,
        jars: &[JarId],
        request: SearchRequest,
        cutoffs: &HashMap<JarId, Timestamp>,
    ) -> Result<SearchResults> {
        let query = request.query.as_str();
        if jars.is_empty() {
            return Ok(SearchResults {
                hits: Vec::new(),
                total: 0,
                searched_documents: 0,
            });
        }
        let embedding = self
            .models
            .embed(&self.embedding_model, vec![query.to_owned()])
            .await?
            .pop()
            .map(|e| e.vector)
            .unwrap_or_default();
        let shard_query = ShardQuery {
            text: query.to_owned(),
            embedding,
            document_types: request.document_types,
            tags: request
                .tags
                .iter()
                .map(|t| t.trim().to_lowercase())
                .collect(),
            depth: (request.limit * 5).max(50),
        };
        // Hits from after a cut-off are dropped below: ask for more so the page stays full.
        let wanted = match cutoffs.is_empty() {
            true => request.limit,
            false => (request.limit * 3).min(MAX_SEARCH_LIMIT),
        };
        let (mut hits, total, searched_documents) =
            self.shards.search(jars, shard_query, wanted).await?;
        if !cutoffs.is_empty() {
            let mut uploaded: HashMap<DocumentId, Timestamp> = HashMap::new();
            let mut kept = Vec::new();
            for hit in hits {
                if let Some(cutoff) = cutoffs.get(&hit.jar_id) {
                    let at = match uploaded.get(&hit.document_id) {
                        Some(at) => *at,
                        None => {
                            let document = self.store.document(hit.document_id).await?;
                            let at = document.map_or(Timestamp(i64::MAX), |d| d.uploaded_at);
                            *uploaded.entry(hit.document_id).or_insert(at)
                        }
                    };
                    if at > *cutoff {
                        continue;
                    }
                }
                kept.push(hit);
            }
            kept.truncate(request.limit);
            hits = kept;
        }
        Ok(SearchResults {
            hits,
            total,
            searched_documents,
        })
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    pub fn max_import_bytes(&self) -> u64 {
        self.max_import_bytes
    }

    pub fn ingestion(&self) -> &IngestionHandle {
        &self.ingestion
    }

    /// The jar if `who` may read it; `NotFound` otherwise.
    pub async fn readable(&self, who: &Identity, id: JarId) -> Result<HoneyJar> {
        self.readable_by(Reader::from(who), id).await
    }

    async fn readable_by(&self, who: Reader, id: JarId) -> Result<HoneyJar> {
        match self.store.jar(id).await? {
            Some(jar) if can_read(&jar, who.user_id, who.admin) => Ok(jar),
            _ => Err(KnowledgeError::NotFound("honey jar")),
        }
    }

    /// The jar if `who` may manage it; `NotFound` when they cannot even read it.
    async fn manageable(&self, who: &Identity, id: JarId) -> Result<HoneyJar> {
        let jar = self.readable(who, id).await?;
        if jar.owner_id == who.user_id || who.is_admin() {
            Ok(jar)
        } else {
            Err(KnowledgeError::Forbidden(
                "only the jar's owner may change it",
            ))
        }
    }

    pub async fn create_jar(&self, who: &Identity, new: NewJar) -> Result<HoneyJar> {
        let jar = self.new_jar(who.user_id, new)?;
        self.store.create_jar(&jar).await?;
        tracing::info!(jar = %jar.id, owner = %who.user_id, "honey jar created");
        Ok(jar)
    }

    /// A checked jar record owned by `owner` (with its data key when it encrypts), not stored.
    fn new_jar(&self, owner: UserId, new: NewJar) -> Result<HoneyJar> {
        let now = Timestamp::now();
        let wrapped_key = if new.settings.encryption_enabled {
            Some(self.master_key.new_data_key()?.1)
        } else {
            None
        };
        Ok(HoneyJar {
            id: Uuid::new_v4(),
            owner_id: owner,
            name: valid_name(&new.name)?,
            description: valid_description(&new.description)?,
            visibility: new.visibility,
            tags: valid_tags(new.tags)?,
            settings: new.settings,
            shared_with: Vec::new(),
            wrapped_key,
            document_count: 0,
            embedding_count: 0,
            created_at: now,
            updated_at: now,
        })
    }

    /// The jar's data key, when it encrypts its originals.
    fn data_key(&self, jar: &HoneyJar) -> Result<Option<DataKey>> {
        Ok(match &jar.wrapped_key {
            Some(wrapped) => Some(self.master_key.unwrap_key(wrapped)?),
            None => None,
        })
    }

    /// Jars `who` may read, filtered; admins see every jar.
    pub async fn list_jars(
        &self,
        who: &Identity,
        mut query: JarQuery,
    ) -> Result<(Vec<HoneyJar>, u64)> {
        query.reader = (!who.is_admin()).then_some(who.user_id);
        Ok(self.store.list_jars(&query).await?)
    }

    pub async fn update_jar(&self, who: &Identity, id: JarId, patch: JarPatch) -> Result<HoneyJar> {
        let mut jar = self.manageable(who, id).await?;
        if let Some(name) = patch.name {
            jar.name = valid_name(&name)?;
        }
        if let Some(description) = patch.description {
            jar.description = valid_description(&description)?;
        }
        if let Some(visibility) = patch.visibility {
            jar.visibility = visibility;
        }
        if let Some(tags) = patch.tags {
            jar.tags = valid_tags(tags)?;
        }
        if let Some(allow) = patch.allow_search {
            jar.settings.allow_search = allow;
        }
        if let Some(allow) = patch.allow_export {
            jar.settings.allow_export = allow;
        }
        jar.updated_at = Timestamp::now();
        self.store.update_jar(&jar).await?;
        Ok(jar)
    }

    /// Shares a jar with exactly these users (by email), replacing the previous list.
    pub async fn share_jar(
        &self,
        who: &Identity,
        id: JarId,
        emails: &[String],
    ) -> Result<(HoneyJar, Vec<User>)> {
        let mut jar = self.manageable(who, id).await?;
        let mut users = Vec::new();
        for email in emails {
            let normalised = email.trim().to_lowercase();
            match self.store.user_by_email(&normalised).await? {
                Some(user) if user.id != jar.owner_id => {
                    if !users.iter().any(|u: &User| u.id == user.id) {
                        users.push(user);
                    }
                }
                Some(_) => {}
                None => {
                    return Err(KnowledgeError::Invalid {
                        field: "emails",
                        reason: format!("no user with email {normalised}"),
                    })
                }
            }
        }
        jar.shared_with = users.iter().map(|u| u.id).collect();
        jar.updated_at = Timestamp::now();
        self.store.update_jar(&jar).await?;
        Ok((jar, users))
    }

    pub async fn delete_jar(&self, who: &Identity, id: JarId) -> Result<()> {
        let jar = self.manageable(who, id).await?;
        self.remove_jar(jar.id).await?;
        tracing::info!(jar = %jar.id, "honey jar deleted");
        Ok(())
    }

    /// Deletes a jar with its documents, chunks, shards and originals.
    async fn remove_jar(&self, id: JarId) -> Result<()> {
        self.store.delete_jar(id).await?;
        self.shards.jar_deleted(id);
        self.blobs.delete_jar(id).await?;
        Ok(())
    }

    /// The users of these ids (for owner objects in listings), looked up once each.
    pub async fn users(&self, ids: &[UserId]) -> Result<HashMap<UserId, User>> {
        let mut found = HashMap::new();
        for &id in ids {
            if found.contains_key(&id) {
                continue;
            }
            if let Some(user) = self.store.user(id).await? {
                found.insert(id, user);
            }
        }
        Ok(found)
    }

    /// Stores an upload and queues it for processing. A file whose type is not supported is
    /// kept as a `failed` document with the reason.
    pub async fn upload(
        &self,
        who: &Identity,
        jar_id: JarId,
        filename: &str,
        bytes: Vec<u8>,
        metadata: UploadMetadata,
    ) -> Result<Document> {
        let jar = self.manageable(who, jar_id).await?;
        if bytes.len() as u64 > self.max_upload_bytes {
            return Err(KnowledgeError::TooLarge {
                limit: self.max_upload_bytes,
            });
        }
        if bytes.is_empty() {
            return Err(KnowledgeError::Invalid {
                field: "file",
                reason: "is empty".into(),
            });
        }
        let document = new_document(jar.id, who.user_id, filename, &bytes, metadata)?;
        let key = self.data_key(&jar)?;
        self.store_original(&jar, key.as_ref(), &document, &bytes)
            .await?;
        if document.status == DocumentStatus::Processing {
            if let Err(err) = self.ingestion.submit(document.id).await {
                // Refused (queue full): nothing of it stays behind.
                self.store.delete_document(document.id).await?;
                self.blobs.delete(jar.id, document.id).await?;
                return Err(err.into());
            }
        }
        tracing::info!(document = %document.id, jar = %jar.id, kind = %document.kind, size = document.size, "document uploaded");
        Ok(document)
    }

    /// Stores a new document's record and its original (sealed with the jar's key when given);
    /// the record goes again when the original cannot be written.
    async fn store_original(
        &self,
        jar: &HoneyJar,
        key: Option<&DataKey>,
        document: &Document,
        bytes: &[u8],
    ) -> Result<()> {
        self.store.create_document(document).await?;
        if let Err(err) = self.blobs.put(jar.id, document.id, bytes, key).await {
            self.store.delete_document(document.id).await?;
            return Err(err.into());
        }
        Ok(())
    }

    /// The jar as an HJX archive (see [`hjx`]): its processed documents with their originals
    /// (decrypted), chunks and embeddings; the others are listed in the manifest as skipped.
    /// The owner and admins may always export; other readers only when the jar allows it.
    pub async fn export(&self, who: &Identity, id: JarId) -> Result<Export> {
        let jar = self.readable(who, id).await?;
        if !(jar.owner_id == who.user_id || who.is_admin() || jar.settings.allow_export) {
            return Err(KnowledgeError::Forbidden(
                "this honey jar does not allow export",
            ));
        }
        let model = hjx::EmbeddingModel {
            name: self.embedding_model.clone(),
            dimensions: self.embedding_dimensions().await?,
        };
        let key = self.data_key(&jar)?;
        // Every document of the jar, in one consistent read.
        let every = Page {
            limit: u32::MAX,
            offset: 0,
        };
        let (documents, _) = self.store.list_documents(jar.id, every).await?;
        let mut writer = hjx::Writer::new(chrono::Utc::now());
        for document in documents {
            if document.status != DocumentStatus::Processed {
                writer.skip(&document);
                continue;
            }
            let chunks = self.store.document_chunks(document.id).await?;
            let original = self.blobs.get(jar.id, document.id, key.as_ref()).await;
            if self.store.document(document.id).await?.is_none() {
                continue; // deleted while it was read: left out rather than half exported
            }
            let original = original?;
            writer = blocking(move || {
                writer
                    .add_document(&document, &original, chunks)
                    .map_err(archive_failed)?;
                Ok(writer)
            })
            .await?;
        }
        let documents = writer.document_count();
        let filename = attachment_name(&jar.name);
        let jar_id = jar.id;
        let archive = blocking(move || writer.finish(&jar, model).map_err(archive_failed)).await?;
        tracing::info!(jar = %jar_id, user = %who.user_id, documents, bytes = archive.len(), "honey jar exported");
        Ok(Export { filename, archive })
    }

    /// Starts an import: takes one of the node's `limits.max_concurrent_imports` places
    /// ([`KnowledgeError::Busy`] at once when none is free; it is held until the import ends)
    /// and opens the temporary file the archive streams into ([`ImportUpload::write`]), for
    /// [`KnowledgeService::import`].
    pub async fn begin_import(&self) -> Result<ImportUpload> {
        let permit = self.imports.clone().try_acquire_owned().map_err(|_| {
            KnowledgeError::Busy(
                "the node is importing as many archives as it may at once; retry shortly",
            )
        })?;
        let dir = self.imports_dir.clone();
        let file = blocking(move || {
            private_dir(&dir)
                .and_then(|()| tempfile::tempfile_in(&dir))
                .map_err(spool_failed)
        })
        .await?;
        Ok(ImportUpload {
            permit,
            file: tokio::fs::File::from_std(file),
            bytes: 0,
            limit: self.max_import_bytes,
        })
    }

    /// A new private jar owned by `who` from the HJX archive streamed into `upload` (`name`
    /// overrides the archive's). The whole archive is checked before anything is written, and
    /// a jar whose writing fails midway is deleted again. The archive's chunks and embeddings
    /// are kept when its embedding model is this node's (same name and dimensions); otherwise
    /// the originals go through the ingestion pipeline to be embedded here.
    ///
    /// The archive is unpacked into a private directory under `<data_dir>/imports` (see
    /// [`hjx::read`]), removed when the import ends, whatever the outcome; what the import holds
    /// in memory is the manifest and one document (its original and its chunks) at a time.
    pub async fn import(
        &self,
        who: &Identity,
        upload: ImportUpload,
        name: Option<String>,
    ) -> Result<Imported> {
        let ImportUpload {
            permit, mut file, ..
        } = upload;
        let name = name.map(|name| valid_name(&name)).transpose()?;
        file.flush().await.map_err(spool_failed)?;
        let mut file = file.into_std().await;
        let limits = hjx::Limits {
            max_unpacked_bytes: self.max_import_unpacked_bytes,
            max_original_bytes: self.max_upload_bytes,
        };
        let dir = self.imports_dir.clone();
        // The place goes along with the unpacking: should the request be dropped meanwhile,
        // it stays taken until the unpacking ends.
        let (archive, permit) = blocking(move || {
            std::io::Seek::rewind(&mut file).map_err(spool_failed)?;
            Ok((hjx::read(file, &dir, limits)?, permit))
        })
        .await?;
        tracing::debug!(dir = %archive.dir().display(), documents = archive.documents.len(), "archive checked and unpacked");
        let archive = Arc::new(archive);
        let result = self.import_archive(who, &archive, name).await;
        // Removing the unpacked entries (a file each) may take a while: on the blocking pool.
        let _ = tokio::task::spawn_blocking(move || drop(archive)).await;
        drop(permit);
        result
    }

    /// The import of a checked archive.
    async fn import_archive(
        &self,
        who: &Identity,
        archive: &Arc<hjx::Archive>,
        name: Option<String>,
    ) -> Result<Imported> {
        let ours = hjx::EmbeddingModel {
            name: self.embedding_model.clone(),
            dimensions: self.embedding_dimensions().await?,
        };
        let reembedding = archive.embedding_model != ours;
        let source = &archive.honey_jar;
        let settings = JarSettings {
            allow_search: source.settings.allow_search,
            allow_export: source.settings.allow_export,
            encryption_enabled: source.settings.encryption_enabled,
        };
        // Never the archive's visibility: a public or shared jar from someone else's archive
        // would expose its content to users the importer did not choose.
        let new = NewJar {
            name: name.unwrap_or_else(|| source.name.clone()),
            description: source.description.clone(),
            visibility: Visibility::Private,
            tags: source.tags.clone(),
            settings,
        };
        let jar = self
            .new_jar(who.user_id, new)
            .map_err(|err| in_manifest("honey_jar", err))?;
        let incoming = {
            let archive = archive.clone();
            let (jar_id, owner) = (jar.id, who.user_id);
            blocking(move || incoming_documents(&archive, jar_id, owner, reembedding)).await?
        };

        let key = self.data_key(&jar)?;
        let documents = incoming.len();
        self.store.create_jar(&jar).await?;
        if let Err(err) = self
            .store_imported(&jar, key.as_ref(), archive, incoming)
            .await
        {
            tracing::warn!(jar = %jar.id, error = %err, "import failed; removing the jar it created");
            if let Err(cleanup) = self.remove_jar(jar.id).await {
                tracing::error!(jar = %jar.id, error = %cleanup, "could not remove a half-imported jar");
            }
            return Err(err);
        }
        let jar = self
            .store
            .jar(jar.id)
            .await?
            .ok_or(KnowledgeError::NotFound("honey jar"))?;
        tracing::info!(jar = %jar.id, owner = %who.user_id, documents, reembedding, "honey jar imported");
        Ok(Imported {
            jar,
            documents,
            reembedding,
        })
    }

    /// Stores an import's documents one at a time, each read back from the unpacked archive:
    /// its original, then its kept chunks (searchable at once) or its place in the ingestion
    /// queue.
    async fn store_imported(
        &self,
        jar: &HoneyJar,
        key: Option<&DataKey>,
        archive: &Arc<hjx::Archive>,
        documents: Vec<Incoming>,
    ) -> Result<()> {
        for incoming in documents {
            let index = incoming.index;
            let original = {
                let archive = archive.clone();
                blocking(move || Ok(archive.original(index)?)).await?
            };
            self.store_original(jar, key, &incoming.document, &original)
                .await?;
            drop(original);
            match incoming.processed {
                Some(document) => {
                    let chunks = {
                        let archive = archive.clone();
                        let (jar_id, id) = (jar.id, document.id);
                        blocking(move || {
                            Ok(archive
                                .chunks(index)?
                                .into_iter()
                                .map(|chunk| chunk.into_chunk(jar_id, id))
                                .collect::<Vec<Chunk>>())
                        })
                        .await?
                    };
                    store_processed(self.store.as_ref(), &self.shards, &document, &chunks).await?
                }
                None => self.ingestion.submit(incoming.document.id).await?,
            }
        }
        Ok(())
    }

    /// Dimensions of this node's embedding model.
    async fn embedding_dimensions(&self) -> Result<usize> {
        let info = self.models.info(&self.embedding_model).await?;
        info.model.manifest.embedding_dimension.ok_or_else(|| {
            ModelError::WrongKind {
                name: self.embedding_model.clone(),
                operation: "embed",
            }
            .into()
        })
    }

    /// A document, if `who` may read its jar.
    pub async fn document(&self, who: &Identity, id: DocumentId) -> Result<Document> {
        let document = self
            .store
            .document(id)
            .await?
            .ok_or(KnowledgeError::NotFound("document"))?;
        match self.readable(who, document.jar_id).await {
            Ok(_) => Ok(document),
            Err(KnowledgeError::NotFound(_)) => Err(KnowledgeError::NotFound("document")),
            Err(err) => Err(err),
        }
    }

    pub async fn list_documents(
        &self,
        who: &Identity,
        jar_id: JarId,
        page: Page,
    ) -> Result<(Vec<Document>, u64)> {
        let jar = self.readable(who, jar_id).await?;
        Ok(self.store.list_documents(jar.id, page).await?)
    }

    pub async fn delete_document(&self, who: &Identity, id: DocumentId) -> Result<()> {
        let document = self.document(who, id).await?;
        self.manageable(who, document.jar_id).await?;
        if let Some(deleted) = self.store.delete_document(id).await? {
            self.shards.document_changed(deleted.jar_id, deleted.id);
            self.blobs.delete(deleted.jar_id, deleted.id).await?;
        }
        Ok(())
    }
}

/// Runs CPU-bound work (archive compression and checks) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| KnowledgeError::Internal(format!("archive task failed: {err}")))?
}

fn archive_failed(err: std::io::Error) -> KnowledgeError {
    KnowledgeError::Internal(format!("writing an archive: {err}"))
}

/// The records of a checked archive's documents, each checked as an upload would be (its
/// metadata, and a supported kind detected from its original, read back one at a time).
fn incoming_documents(
    archive: &hjx::Archive,
    jar: JarId,
    owner: UserId,
    reembedding: bool,
) -> Result<Vec<Incoming>> {
    let mut incoming = Vec::with_capacity(archive.documents.len());
    for (index, entry) in archive.documents.iter().enumerate() {
        let at = format!("documents[{index}]");
        let metadata = UploadMetadata {
            title: Some(entry.title.clone()),
            description: Some(entry.description.clone()),
            tags: entry.tags.clone(),
        };
        let original = archive.original(index)?;
        let document = new_document(jar, owner, &entry.filename, &original, metadata)
            .map_err(|err| in_manifest(&at, err))?;
        drop(original);
        if document.status == DocumentStatus::Failed {
            return Err(hjx::HjxError::Invalid {
                entry: entry.original.clone(),
                reason: document.error.unwrap_or_default(),
            }
            .into());
        }
        let language = entry.metadata.language.clone();
        if language
            .as_ref()
            .is_some_and(|code| code.len() > 8 || !code.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(in_manifest(
                &at,
                KnowledgeError::Invalid {
                    field: "metadata.language",
                    reason: "must be a language code".into(),
                },
            ));
        }
        let processed = (!reembedding).then(|| Document {
            status: DocumentStatus::Processed,
            progress: 100,
            chunk_count: entry.chunk_count,
            embedding_count: entry.chunk_count,
            pages: entry.metadata.pages,
            word_count: entry.metadata.word_count,
            language,
            ..document.clone()
        });
        incoming.push(Incoming {
            index,
            document,
            processed,
        });
    }
    Ok(incoming)
}

/// A bad value of an archive's content (`at`: where in its manifest), as an archive error.
fn in_manifest(at: &str, err: KnowledgeError) -> KnowledgeError {
    match err {
        KnowledgeError::Invalid { field, reason } => hjx::HjxError::Invalid {
            entry: hjx::MANIFEST.into(),
            reason: format!("{at}.{field}: {reason}"),
        }
        .into(),
        err => err,
    }
}

/// The download name of a jar's archive: its name in ASCII file-name characters, `.hjx`.
fn attachment_name(jar_name: &str) -> String {
    let ascii: String = jar_name
        .chars()
        .map(|c| {
            if c.is_ascii() && !matches!(c, '/' | '\\') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}.hjx", sanitise_filename(&ascii))
}

/// A new document's record for an original: checked metadata and the kind detected from its
/// content; `processing`, or `failed` with the reason when the kind is not supported.
fn new_document(
    jar: JarId,
    uploader: UserId,
    filename: &str,
    bytes: &[u8],
    metadata: UploadMetadata,
) -> Result<Document> {
    let filename = sanitise_filename(filename);
    let detected = detect(bytes, &filename);
    let title = match metadata.title {
        Some(title) => valid_name(&title)?,
        None => title_from(&filename),
    };
    let sha256 = hex::encode(Sha256::digest(bytes));
    let mut document = Document {
        title,
        description: valid_description(metadata.description.as_deref().unwrap_or(""))?,
        tags: valid_tags(metadata.tags)?,
        ..Document::new_upload(jar, uploader, filename, bytes.len() as u64, sha256)
    };
    match detected {
        Ok(kind) => {
            document.kind = kind.as_str().into();
            document.mime_type = kind.mime_type().into();
        }
        Err(err) => {
            document.status = DocumentStatus::Failed;
            document.error = Some(err.to_string());
        }
    }
    Ok(document)
}

fn valid_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(KnowledgeError::Invalid {
            field: "name",
            reason: format!("must have 1 to {MAX_NAME_CHARS} characters"),
        });
    }
    Ok(name.to_owned())
}

fn valid_description(description: &str) -> Result<String> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(KnowledgeError::Invalid {
            field: "description",
            reason: format!("must have at most {MAX_DESCRIPTION_CHARS} characters"),
        });
    }
    Ok(description.trim().to_owned())
}

/// Tags are trimmed, lowercased and deduplicated.
fn valid_tags(tags: Vec<String>) -> Result<Vec<String>> {
    let mut clean: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() || tag.chars().count() > MAX_TAG_CHARS {
            return Err(KnowledgeError::Invalid {
                field: "tags",
                reason: format!("each tag must have 1 to {MAX_TAG_CHARS} characters"),
            });
        }
        if !clean.contains(&tag) {
            clean.push(tag);
        }
    }
    if clean.len() > MAX_TAGS {
        return Err(KnowledgeError::Invalid {
            field: "tags",
            reason: format!("at most {MAX_TAGS} tags"),
        });
    }
    Ok(clean)
}

/// The last path component, without control characters or characters that mean something
/// to shells and file systems; never empty.
pub fn sanitise_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '(' | ')') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "document".to_owned()
    } else {
        cleaned
    }
}

/// A title from a file name: its stem, with separators as spaces.
fn title_from(filename: &str) -> String {
    let stem = filename.rsplit_once('.').map_or(filename, |(stem, _)| stem);
    let title = stem.replace(['_', '-'], " ").trim().to_owned();
    if title.is_empty() {
        filename.to_owned()
    } else {
        title
    }
}

/// Chat turns that name honey jars get the same retrieval as search (with the rights of the
/// user only: an admin's turn does not reach jars they could not read as a user).
impl sting_actors::conversation::Retriever for KnowledgeService {
    fn retrieve<'a>(
        &'a self,
        user_id: UserId,
        honey_jar_ids: &'a [Uuid],
        query: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::result::Result<
                        Vec<sting_actors::conversation::Passage>,
                        sting_actors::conversation::ChatError,
                    >,
                > + Send
                + 'a,
        >,
    > {
        use sting_actors::conversation::{ChatError, Passage};
        Box::pin(async move {
            let request = SearchRequest {
                query: query.to_owned(),
                jar_ids: honey_jar_ids.to_vec(),
                document_types: Vec::new(),
                tags: Vec::new(),
                limit: CHAT_PASSAGES,
            };
            let reader = Reader {
                user_id,
                admin: false,
            };
            match self.search(reader, request).await {
                Ok(results) => Ok(results
                    .hits
                    .into_iter()
                    .map(|hit| Passage {
                        title: hit.title,
                        page: hit.page,
                        content: hit.text,
                    })
                    .collect()),
                Err(KnowledgeError::NotFound(_)) | Err(KnowledgeError::Forbidden(_)) => {
                    Err(ChatError::Invalid {
                        field: "context.honey_jar_ids",
                        reason: "a named honey jar does not exist or cannot be searched".into(),
                    })
                }
                Err(KnowledgeError::Model(err)) => Err(ChatError::Model(err)),
                Err(err) => Err(ChatError::Unavailable(err.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_interrupted_imports_left_is_removed_and_nothing_else() {
        let data = tempfile::tempdir().unwrap();
        let imports = data.path().join("imports");
        // Nothing there yet: nothing to do.
        remove_leftover_imports(&imports);
        private_dir(&imports).unwrap();
        let stale = imports.join("import-a1b2c3");
        std::fs::create_dir_all(stale.join("nested")).unwrap();
        std::fs::write(stale.join("1"), b"an original").unwrap();
        std::fs::write(imports.join("unrelated"), b"kept").unwrap();
        remove_leftover_imports(&imports);
        assert!(!stale.exists());
        assert!(imports.join("unrelated").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&imports).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(sanitise_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitise_filename("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(
            sanitise_filename("a;rm -rf $HOME.txt"),
            "a_rm -rf _HOME.txt"
        );
        assert_eq!(sanitise_filename("..."), "document");
        assert_eq!(sanitise_filename(".hidden"), "hidden");
        assert_eq!(sanitise_filename("bell\u{7}.md"), "bell_.md");
        assert_eq!(sanitise_filename(&"x".repeat(400)).len(), 255);
        assert_eq!(title_from("company_policy-2024.pdf"), "company policy 2024");
        assert_eq!(attachment_name("Field guide"), "Field guide.hjx");
        assert_eq!(attachment_name("Notes 24/25 \"é\""), "Notes 24_25 ___.hjx");
        assert_eq!(attachment_name("..."), "document.hjx");
    }

    #[test]
    fn tags_are_normalised_and_bounded() {
        assert_eq!(
            valid_tags(vec![" HR ".into(), "hr".into(), "Policies".into()]).unwrap(),
            ["hr", "policies"]
        );
        assert!(valid_tags(vec!["".into()]).is_err());
        assert!(valid_tags((0..33).map(|i| format!("t{i}")).collect()).is_err());
    }
}
