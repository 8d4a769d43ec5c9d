//! `/api/knowledge/honey-pots*` and `/api/knowledge/documents/*`: honey jars, sharing, document
//! upload and status, HJX export and import. Access rules live in `crate::knowledge`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BufMut;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sting_actors::session::Identity;
use sting_store::{Document, HoneyJar, JarQuery, JarSettings, User, Visibility};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::filters::multipart::{FormData, Part};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, ErrorEnvelope};
use super::json::{body_error, json_body, parse_json};
use super::{authenticated, page, reject, rfc3339, with_ctx};
use crate::app::AppContext;
use crate::knowledge::{
    AskRequest, ImportUpload, JarPatch, NewJar, Reader, SearchRequest, UploadMetadata,
};

const MAX_PAGE: u32 = 200;
/// Room for the multipart framing and the small parts beside the file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
const IMPORT_PATH: &str = "/api/knowledge/honey-pots/import";

/// The largest body the multipart route at `path` (an upload or an import) accepts: its file
/// limit and room for the rest. The edge checks it up front from Content-Length; the exact file
/// limit is enforced again while the file streams in.
pub fn multipart_limit(ctx: &AppContext, path: &str) -> u64 {
    body_limit(if path == IMPORT_PATH {
        ctx.knowledge.max_import_bytes()
    } else {
        ctx.knowledge.max_upload_bytes()
    })
}

/// A multipart body's limit for a file of at most `file_limit` bytes.
fn body_limit(file_limit: u64) -> u64 {
    file_limit + MULTIPART_OVERHEAD
}

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let jars = warp::path("api")
        .and(warp::path("knowledge"))
        .and(warp::path("honey-pots"));
    let create = jars
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<CreateJarRequest>(limit))
        .and_then(create_jar);
    let list = jars
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::query::<ListJarsQuery>())
        .and_then(list_jars);
    let one = jars.and(warp::path::param::<Uuid>());
    let get = one
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(get_jar);
    let update = one
        .and(warp::path::end())
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<UpdateJarRequest>(limit))
        .and_then(update_jar);
    let delete = one
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(delete_jar);
    let share = one
        .and(warp::path("shares"))
        .and(warp::path::end())
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<ShareRequest>(limit))
        .and_then(share_jar);
    let upload = one
        .and(warp::path("documents"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::multipart::form().max_length(body_limit(ctx.knowledge.max_upload_bytes())))
        .and_then(upload_document);
    let export = one
        .and(warp::path("export"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(export_jar);
    let import = jars
        .and(warp::path("import"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::multipart::form().max_length(body_limit(ctx.knowledge.max_import_bytes())))
        .and_then(import_jar);
    let documents = one
        .and(warp::path("documents"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::query::<PageQuery>())
        .and_then(list_documents);
    let document = warp::path("api")
        .and(warp::path("knowledge"))
        .and(warp::path("documents"))
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end());
    let get_document = document
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(get_document);
    let delete_document = document
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(delete_document);
    let ask = warp::path("api")
        .and(warp::path("knowledge"))
        .and(warp::path("ask"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<AskBody>(limit))
        .and_then(ask);
    let search = warp::path("api")
        .and(warp::path("knowledge"))
        .and(warp::path("search"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authenticated())
        .and(json_body::<SearchBody>(limit))
        .and_then(search);
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(share)
        .unify()
        .or(upload)
        .unify()
        .or(export)
        .unify()
        .or(import)
        .unify()
        .or(documents)
        .unify()
        .or(get_document)
        .unify()
        .or(delete_document)
        .unify()
        .or(search)
        .unify()
        .or(ask)
        .unify()
        .boxed()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJarRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `private` (default), `shared` or `public`.
    #[serde(default = "private")]
    #[schema(value_type = String, pattern = "^(private|shared|public)$", example = "private")]
    pub visibility: Visibility,
    #[serde(default)]
    #[schema(schema_with = super::openapi::tags_schema)]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "super::json::object_only")]
    pub settings: SettingsInput,
}

fn private() -> Visibility {
    Visibility::Private
}

/// Jar settings; omitted ones take their defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    /// Readers other than the owner may search and ask it (default true).
    pub allow_search: Option<bool>,
    /// It may be exported (default false).
    pub allow_export: Option<bool>,
    /// Originals encrypted at rest with a per-jar key (default false; fixed at creation).
    pub encryption_enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJarRequest {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^(private|shared|public)$")]
    pub visibility: Option<Visibility>,
    #[schema(schema_with = super::openapi::optional_tags_schema)]
    pub tags: Option<Vec<String>>,
    #[schema(nullable = true)]
    #[serde(default, deserialize_with = "super::json::optional_object_only")]
    pub settings: Option<UpdateSettingsInput>,
}

/// Settings that may change after creation (encryption is chosen once, at creation); omitted
/// ones stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettingsInput {
    /// Readers other than the owner may search and ask it.
    pub allow_search: Option<bool>,
    /// It may be exported.
    pub allow_export: Option<bool>,
}

/// Who a `shared` jar is shared with (replaces the list).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub emails: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Owner {
    pub id: Uuid,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    pub allow_search: bool,
    pub allow_export: bool,
    pub encryption_enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SharedUser {
    pub id: Uuid,
    pub email: String,
    pub name: String,
}

/// A honey jar.
#[derive(Debug, Serialize, ToSchema)]
pub struct JarView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub owner_id: Uuid,
    pub owner: Option<Owner>,
    #[schema(value_type = String)]
    pub visibility: Visibility,
    pub status: &'static str,
    pub tags: Vec<String>,
    pub settings: SettingsView,
    pub document_count: u64,
    pub embedding_count: u64,
    pub created_at: String,
    pub updated_at: String,
    pub last_updated: String,
    /// Only shown to the owner (and admins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Vec<SharedUser>>,
}

fn jar_view(
    jar: &HoneyJar,
    owner: Option<&User>,
    with_email: bool,
    shared: Option<Vec<SharedUser>>,
) -> JarView {
    JarView {
        id: jar.id,
        name: jar.name.clone(),
        description: jar.description.clone(),
        owner_id: jar.owner_id,
        owner: owner.map(|user| Owner {
            id: user.id,
            name: user.name.clone(),
            email: with_email.then(|| user.email.clone()),
        }),
        visibility: jar.visibility,
        status: "active",
        tags: jar.tags.clone(),
        settings: SettingsView {
            allow_search: jar.settings.allow_search,
            allow_export: jar.settings.allow_export,
            encryption_enabled: jar.settings.encryption_enabled,
        },
        document_count: jar.document_count,
        embedding_count: jar.embedding_count,
        created_at: rfc3339(jar.created_at),
        updated_at: rfc3339(jar.updated_at),
        last_updated: rfc3339(jar.updated_at),
        shared_with: shared,
    }
}

/// Whether `who` sees a jar's people by email (its owner's, and whom it is shared with): its
/// owner and admins do; every other reader sees the owner's name only.
fn manages(who: &Identity, jar: &HoneyJar) -> bool {
    jar.owner_id == who.user_id || who.is_admin()
}

/// One jar as `who` may see it, with its owner and (to those who manage it) its shared-with
/// list.
async fn jar_detail_view(
    ctx: &AppContext,
    who: &Identity,
    jar: &HoneyJar,
) -> Result<JarView, Rejection> {
    let owner = ctx.knowledge.users(&[jar.owner_id]).await.map_err(reject)?;
    let manages = manages(who, jar);
    let shared = if manages {
        Some(shared_view(ctx, jar).await?)
    } else {
        None
    };
    Ok(jar_view(jar, owner.get(&jar.owner_id), manages, shared))
}

/// The shared-with list.
async fn shared_view(ctx: &AppContext, jar: &HoneyJar) -> Result<Vec<SharedUser>, Rejection> {
    let users = ctx
        .knowledge
        .users(&jar.shared_with)
        .await
        .map_err(reject)?;
    Ok(jar
        .shared_with
        .iter()
        .filter_map(|id| users.get(id))
        .map(|user| SharedUser {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
        })
        .collect())
}

/// Create a honey jar owned by the caller.
#[utoipa::path(post, path = "/api/knowledge/honey-pots", tag = "knowledge",
    request_body = CreateJarRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, body = JarView),
        (status = 401, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
    ))]
pub async fn create_jar(
    ctx: Arc<AppContext>,
    who: Identity,
    body: CreateJarRequest,
) -> Result<Response, Rejection> {
    let settings = JarSettings {
        allow_search: body.settings.allow_search.unwrap_or(true),
        allow_export: body.settings.allow_export.unwrap_or(false),
        encryption_enabled: body.settings.encryption_enabled.unwrap_or(false),
    };
    let jar = ctx
        .knowledge
        .create_jar(
            &who,
            NewJar {
                name: body.name,
                description: body.description,
                visibility: body.visibility,
                tags: body.tags,
                settings,
            },
        )
        .await
        .map_err(reject)?;
    let view = new_jar_view(&ctx, &who, &jar).await?;
    Ok(warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED).into_response())
}

/// The view of a jar the caller just created (shared with nobody yet).
async fn new_jar_view(
    ctx: &AppContext,
    who: &Identity,
    jar: &HoneyJar,
) -> Result<JarView, Rejection> {
    let owner = ctx.knowledge.users(&[who.user_id]).await.map_err(reject)?;
    Ok(jar_view(
        jar,
        owner.get(&who.user_id),
        true,
        Some(Vec::new()),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJarsQuery {
    /// `private`, `shared` or `public`.
    #[param(pattern = "^(private|shared|public)$")]
    pub visibility: Option<String>,
    /// Owner's user id.
    pub owner: Option<Uuid>,
    pub tag: Option<String>,
    /// Text in the name or description.
    pub search: Option<String>,
    /// 1–200 (default 20).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JarList {
    pub honey_jars: Vec<JarView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The honey jars the caller may read (admins: all), newest first.
#[utoipa::path(get, path = "/api/knowledge/honey-pots", tag = "knowledge", params(ListJarsQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = JarList), (status = 401, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn list_jars(
    ctx: Arc<AppContext>,
    who: Identity,
    query: ListJarsQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let visibility = match query.visibility.as_deref() {
        None => None,
        Some(text) => Some(Visibility::parse(text).ok_or_else(|| {
            reject(ApiError::validation(
                "visibility",
                "must be private, shared or public",
            ))
        })?),
    };
    let (jars, total) = ctx
        .knowledge
        .list_jars(
            &who,
            JarQuery {
                reader: None,
                visibility,
                owner: query.owner,
                tag: query.tag.map(|t| t.trim().to_lowercase()),
                search: query.search,
                page,
            },
        )
        .await
        .map_err(reject)?;
    let owners = ctx
        .knowledge
        .users(&jars.iter().map(|jar| jar.owner_id).collect::<Vec<_>>())
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&JarList {
        honey_jars: jars
            .iter()
            .map(|jar| jar_view(jar, owners.get(&jar.owner_id), false, None))
            .collect(),
        total,
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

/// One honey jar the caller may read.
#[utoipa::path(get, path = "/api/knowledge/honey-pots/{honey_jar_id}", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = JarView), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_jar(id: Uuid, ctx: Arc<AppContext>, who: Identity) -> Result<Response, Rejection> {
    let jar = ctx.knowledge.readable(&who, id).await.map_err(reject)?;
    Ok(warp::reply::json(&jar_detail_view(&ctx, &who, &jar).await?).into_response())
}

/// Change a honey jar (owner or admin).
#[utoipa::path(put, path = "/api/knowledge/honey-pots/{honey_jar_id}", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), request_body = UpdateJarRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = JarView), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn update_jar(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    body: UpdateJarRequest,
) -> Result<Response, Rejection> {
    let settings = body.settings.unwrap_or_default();
    let jar = ctx
        .knowledge
        .update_jar(
            &who,
            id,
            JarPatch {
                name: body.name,
                description: body.description,
                visibility: body.visibility,
                tags: body.tags,
                allow_search: settings.allow_search,
                allow_export: settings.allow_export,
            },
        )
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&jar_detail_view(&ctx, &who, &jar).await?).into_response())
}

/// Share a `shared` jar with these users (by email; replaces the list). Added to the contract.
#[utoipa::path(put, path = "/api/knowledge/honey-pots/{honey_jar_id}/shares", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), request_body = ShareRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = JarView), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn share_jar(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    body: ShareRequest,
) -> Result<Response, Rejection> {
    let (jar, _) = ctx
        .knowledge
        .share_jar(&who, id, &body.emails)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&jar_detail_view(&ctx, &who, &jar).await?).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub success: bool,
    pub id: Uuid,
}

/// Delete a honey jar with its documents, chunks and originals (owner or admin).
#[utoipa::path(delete, path = "/api/knowledge/honey-pots/{honey_jar_id}", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = Deleted), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_jar(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    ctx.knowledge.delete_jar(&who, id).await.map_err(reject)?;
    Ok(warp::reply::json(&Deleted { success: true, id }).into_response())
}

/// A document and where it is in processing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: Uuid,
    pub honey_jar_id: Uuid,
    pub filename: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub mime_type: String,
    /// pdf, docx, markdown, html, text, json, csv ("unknown" when unsupported).
    pub document_type: String,
    /// processing, processed or failed.
    pub status: &'static str,
    pub processing_progress: u8,
    /// Why processing failed.
    pub error: Option<String>,
    pub chunk_count: u64,
    pub embedding_count: u64,
    /// Seconds.
    pub processing_time: Option<f64>,
    pub uploaded_at: String,
    pub updated_at: String,
    pub metadata: DocumentMetadataView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentMetadataView {
    pub pages: Option<u32>,
    pub word_count: u64,
    pub language: Option<String>,
    pub sha256: String,
}

fn document_view(document: &Document) -> DocumentView {
    DocumentView {
        id: document.id,
        honey_jar_id: document.jar_id,
        filename: document.filename.clone(),
        title: document.title.clone(),
        description: document.description.clone(),
        tags: document.tags.clone(),
        size: document.size,
        mime_type: document.mime_type.clone(),
        document_type: document.kind.clone(),
        status: document.status.as_str(),
        processing_progress: document.progress,
        error: document.error.clone(),
        chunk_count: document.chunk_count,
        embedding_count: document.embedding_count,
        processing_time: document.processing_ms.map(|ms| ms as f64 / 1000.0),
        uploaded_at: rfc3339(document.uploaded_at),
        updated_at: rfc3339(document.updated_at),
        metadata: DocumentMetadataView {
            pages: document.pages,
            word_count: document.word_count,
            language: document.language.clone(),
            sha256: document.sha256.clone(),
        },
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataPart {
    title: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// A multipart form read whole: the `file` part (its name, and its bytes when read into
/// memory) and the small text parts.
struct Form {
    filename: String,
    file: Vec<u8>,
    fields: HashMap<&'static str, Vec<u8>>,
}

/// Where a form's `file` part goes.
enum FileSink<'a> {
    /// Into [`Form::file`], at most this many bytes.
    Memory(u64),
    /// Into an import's temporary file, which enforces the import limit (`Form::file` stays
    /// empty).
    Import(&'a mut ImportUpload),
}

/// Reads a form of a `file` part (into `sink`) and the small parts named in `fields`; any
/// other part is refused, and so is a form without a file.
async fn read_form(
    mut form: FormData,
    mut sink: FileSink<'_>,
    fields: &[&'static str],
) -> Result<Form, Rejection> {
    let mut file = None;
    let mut values = HashMap::new();
    while let Some(part) = form
        .try_next()
        .await
        .map_err(|err| reject(body_error(&err)))?
    {
        if part.name() == "file" {
            if file.is_some() {
                return Err(reject(ApiError::validation(
                    "file",
                    "more than one file part",
                )));
            }
            let filename = part.filename().unwrap_or("document").to_owned();
            let bytes = match &mut sink {
                FileSink::Memory(limit) => read_part(part, *limit).await?,
                FileSink::Import(upload) => {
                    spool_part(part, upload).await?;
                    Vec::new()
                }
            };
            file = Some((filename, bytes));
        } else if let Some(&field) = fields.iter().find(|&&field| field == part.name()) {
            values.insert(field, read_part(part, MULTIPART_OVERHEAD).await?);
        } else {
            return Err(reject(ApiError::validation(
                part.name(),
                format!("unknown form field (expected file, {})", fields.join(", ")),
            )));
        }
    }
    let Some((filename, file)) = file else {
        return Err(reject(ApiError::validation("file", "missing file part")));
    };
    Ok(Form {
        filename,
        file,
        fields: values,
    })
}

/// Reads a part into memory, refusing more than `limit` bytes.
async fn read_part(part: Part, limit: u64) -> Result<Vec<u8>, Rejection> {
    let mut stream = part.stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|err| reject(body_error(&err)))?
    {
        if bytes.len() as u64 + bytes::Buf::remaining(&chunk) as u64 > limit {
            return Err(reject(ApiError::payload_too_large(limit)));
        }
        bytes.put(chunk);
    }
    Ok(bytes)
}

/// Streams a part into an import's temporary file.
async fn spool_part(part: Part, upload: &mut ImportUpload) -> Result<(), Rejection> {
    let mut stream = part.stream();
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|err| reject(body_error(&err)))?
    {
        while bytes::Buf::has_remaining(&chunk) {
            let piece = bytes::Buf::chunk(&chunk);
            let len = piece.len();
            upload.write(piece).await.map_err(reject)?;
            bytes::Buf::advance(&mut chunk, len);
        }
    }
    Ok(())
}

/// Upload a document (multipart: `file`, optional `metadata` JSON with title, description,
/// tags). Answers at once with `status: processing` (or `failed` with the reason for an
/// unsupported file); poll the document for progress.
#[utoipa::path(post, path = "/api/knowledge/honey-pots/{honey_jar_id}/documents", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    request_body(content_type = "multipart/form-data", description = "`file` and optional `metadata` (JSON)"),
    responses(
        (status = 202, body = DocumentView),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, description = "ingestion queue full", body = ErrorEnvelope),
    ))]
pub async fn upload_document(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    form: FormData,
) -> Result<Response, Rejection> {
    let form = read_form(
        form,
        FileSink::Memory(ctx.knowledge.max_upload_bytes()),
        &["metadata"],
    )
    .await?;
    let metadata: MetadataPart = match form.fields.get("metadata") {
        Some(bytes) => parse_json(bytes).map_err(|mut err| {
            err.message = format!("metadata: {}", err.message);
            reject(err)
        })?,
        None => MetadataPart::default(),
    };
    let document = ctx
        .knowledge
        .upload(
            &who,
            id,
            &form.filename,
            form.file,
            UploadMetadata {
                title: metadata.title,
                description: metadata.description,
                tags: metadata.tags,
            },
        )
        .await
        .map_err(reject)?;
    Ok(warp::reply::with_status(
        warp::reply::json(&document_view(&document)),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

/// Export a honey jar as an HJX archive (gzip'd tar: manifest.json, and per processed document
/// its original and its chunks with embeddings; see docs/knowledge.md). The owner and admins may
/// always export; other readers only when the jar's `allow_export` setting is on.
#[utoipa::path(get, path = "/api/knowledge/honey-pots/{honey_jar_id}/export", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "the archive, as an attachment named after the jar",
            content_type = "application/gzip"),
        (status = 403, description = "a reader, and the jar does not allow export", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn export_jar(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    let export = ctx.knowledge.export(&who, id).await.map_err(reject)?;
    let disposition = format!("attachment; filename=\"{}\"", export.filename);
    let reply = warp::reply::with_header(
        export.archive,
        warp::http::header::CONTENT_TYPE,
        "application/gzip",
    );
    Ok(
        warp::reply::with_header(reply, warp::http::header::CONTENT_DISPOSITION, disposition)
            .into_response(),
    )
}

/// A jar created by an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedJarView {
    #[serde(flatten)]
    pub honey_jar: JarView,
    /// Documents brought in.
    pub imported_documents: usize,
    /// The archive's embedding model is not this node's: its documents are being embedded here
    /// (`processing` until done) instead of keeping the archive's embeddings.
    pub reembedding: bool,
}

/// Import an HJX archive as a new private jar owned by the caller (multipart: `file`, optional
/// `name` overriding the archive's jar name). The whole archive is checked before anything is
/// written; an archive breaking the format's rules is refused with 422 naming the entry
/// (`details.entry`). The node runs `limits.max_concurrent_imports` imports at once; one more
/// is refused at once with 503 and Retry-After.
#[utoipa::path(post, path = "/api/knowledge/honey-pots/import", tag = "knowledge",
    security(("bearer" = []), ("cookie" = [])),
    request_body(content_type = "multipart/form-data", description = "`file` (the .hjx archive) and optional `name`"),
    responses(
        (status = 201, body = ImportedJarView),
        (status = 400, description = "not a gzip'd tar", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
        (status = 422, description = "an entry breaks the format's rules", body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
        (status = 503, description = "as many imports under way as the node runs at once, or the ingestion queue cannot take the documents to re-embed", body = ErrorEnvelope),
    ))]
pub async fn import_jar(
    ctx: Arc<AppContext>,
    who: Identity,
    form: FormData,
) -> Result<Response, Rejection> {
    // A place among the imports under way first (refused at once when none is free), then the
    // archive streams to disk.
    let mut upload = ctx.knowledge.begin_import().await.map_err(reject)?;
    let mut form = read_form(form, FileSink::Import(&mut upload), &["name"]).await?;
    let name = form
        .fields
        .remove("name")
        .map(String::from_utf8)
        .transpose()
        .map_err(|_| reject(ApiError::validation("name", "must be UTF-8 text")))?;
    let imported = ctx
        .knowledge
        .import(&who, upload, name)
        .await
        .map_err(reject)?;
    let view = ImportedJarView {
        honey_jar: new_jar_view(&ctx, &who, &imported.jar).await?,
        imported_documents: imported.documents,
        reembedding: imported.reembedding,
    };
    Ok(warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–200 (default 20).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    pub documents: Vec<DocumentView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The documents of a jar the caller may read, newest first.
#[utoipa::path(get, path = "/api/knowledge/honey-pots/{honey_jar_id}/documents", tag = "knowledge",
    params(("honey_jar_id" = Uuid, Path), PageQuery), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = DocumentList), (status = 404, body = ErrorEnvelope)))]
pub async fn list_documents(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    query: PageQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let (documents, total) = ctx
        .knowledge
        .list_documents(&who, id, page)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&DocumentList {
        documents: documents.iter().map(document_view).collect(),
        total,
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

/// A document's status and metadata.
#[utoipa::path(get, path = "/api/knowledge/documents/{document_id}", tag = "knowledge",
    params(("document_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = DocumentView), (status = 404, body = ErrorEnvelope)))]
pub async fn get_document(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    let document = ctx.knowledge.document(&who, id).await.map_err(reject)?;
    Ok(warp::reply::json(&document_view(&document)).into_response())
}

/// Delete a document with its chunks and original (jar owner or admin).
#[utoipa::path(delete, path = "/api/knowledge/documents/{document_id}", tag = "knowledge",
    params(("document_id" = Uuid, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = Deleted), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_document(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    ctx.knowledge
        .delete_document(&who, id)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&Deleted { success: true, id }).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub query: String,
    /// Jars to search; omitted or empty: every jar the caller may search.
    #[serde(default)]
    pub honey_jar_ids: Vec<Uuid>,
    #[serde(default)]
    pub filters: SearchFilters,
    /// 1–100 (default 10).
    #[serde(
        default = "default_limit",
        deserialize_with = "super::json::whole_number"
    )]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: usize,
    /// Include each chunk's text (default true).
    #[serde(default = "yes")]
    pub include_content: bool,
}

fn default_limit() -> usize {
    10
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    /// pdf, docx, markdown, html, text, json, csv.
    #[serde(default)]
    pub document_types: Vec<String>,
    /// Documents carrying any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResultView {
    /// `<document_id>:<chunk number>`.
    pub id: String,
    pub document_id: Uuid,
    pub honey_jar_id: Uuid,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Reciprocal-rank fusion of BM25 and vector rankings, in 0..1 (see docs/knowledge.md).
    pub score: f32,
    pub metadata: ResultMetadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResultMetadata {
    pub page: Option<u32>,
    pub section: Option<String>,
    pub document_type: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResultView>,
    /// Distinct chunks either ranking found.
    pub total_results: usize,
    /// Seconds.
    pub query_time: f64,
    /// Processed documents in the searched jars.
    pub searched_documents: usize,
}

/// Hybrid search (BM25 + vectors, fused by reciprocal rank) over honey jars the caller may
/// search.
#[utoipa::path(post, path = "/api/knowledge/search", tag = "knowledge", request_body = SearchBody,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = SearchResponse),
        (status = 403, description = "a named jar does not allow search", body = ErrorEnvelope),
        (status = 404, description = "a named jar is not readable", body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ))]
pub async fn search(
    ctx: Arc<AppContext>,
    who: Identity,
    body: SearchBody,
) -> Result<Response, Rejection> {
    let started = std::time::Instant::now();
    let results = ctx
        .knowledge
        .search(
            Reader::from(&who),
            SearchRequest {
                query: body.query,
                jar_ids: body.honey_jar_ids,
                document_types: body.filters.document_types,
                tags: body.filters.tags,
                limit: body.limit,
            },
        )
        .await
        .map_err(reject)?;
    let include = body.include_content;
    Ok(warp::reply::json(&SearchResponse {
        results: results
            .hits
            .into_iter()
            .map(|hit| SearchResultView {
                id: format!("{}:{}", hit.document_id, hit.seq),
                document_id: hit.document_id,
                honey_jar_id: hit.jar_id,
                title: hit.title,
                content: include.then_some(hit.text),
                score: hit.score,
                metadata: ResultMetadata {
                    page: hit.page,
                    section: hit.section,
                    document_type: hit.kind,
                },
            })
            .collect(),
        total_results: results.total,
        query_time: started.elapsed().as_secs_f64(),
        searched_documents: results.searched_documents,
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub question: String,
    /// Jars to answer from; omitted or empty: every jar the caller may search.
    #[serde(default)]
    pub honey_jar_ids: Vec<Uuid>,
    /// Chunks retrieved as sources, 1–20 (default 5).
    #[serde(
        default = "default_context_limit",
        deserialize_with = "super::json::whole_number"
    )]
    #[schema(minimum = 1, maximum = 20)]
    pub context_limit: usize,
    /// Chat model (default: `models.default_chat_model`).
    pub model: Option<String>,
}

fn default_context_limit() -> usize {
    5
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub document_id: Uuid,
    pub honey_jar_id: Uuid,
    pub title: String,
    pub page: Option<u32>,
    pub section: Option<String>,
    /// The fused search score, 0..1.
    pub relevance_score: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AskResponse {
    pub answer: String,
    /// The sources in the order they were numbered in the prompt ([1], [2], ...).
    pub sources: Vec<SourceView>,
    /// Mean relevance score of the sources given to the model (0 when none were found).
    pub confidence: f32,
    pub model_used: String,
    /// Seconds.
    pub response_time: f64,
}

/// Answer a question from honey jars with cited sources (retrieval as in search; the answer
/// is generated by the chat model from Bee's prompt and the numbered sources).
#[utoipa::path(post, path = "/api/knowledge/ask", tag = "knowledge", request_body = AskBody,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = AskResponse),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope),
    ))]
pub async fn ask(
    ctx: Arc<AppContext>,
    who: Identity,
    body: AskBody,
) -> Result<Response, Rejection> {
    let started = std::time::Instant::now();
    let answer = ctx
        .knowledge
        .ask(
            Reader::from(&who),
            AskRequest {
                question: body.question,
                jar_ids: body.honey_jar_ids,
                context_limit: body.context_limit,
                model: body.model,
            },
        )
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&AskResponse {
        answer: answer.text,
        sources: answer
            .sources
            .into_iter()
            .map(|hit| SourceView {
                document_id: hit.document_id,
                honey_jar_id: hit.jar_id,
                title: hit.title,
                page: hit.page,
                section: hit.section,
                relevance_score: hit.score,
            })
            .collect(),
        confidence: answer.confidence,
        model_used: answer.model,
        response_time: started.elapsed().as_secs_f64(),
    })
    .into_response())
}
