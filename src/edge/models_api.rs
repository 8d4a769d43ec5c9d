//! `/api/chat/models*`: the models this node can run, their state, loading and unloading.
//! Listing and status are public (as in the contract); load and unload are admin-only, since
//! they change what every user of the node gets and how much memory it uses.

use std::sync::Arc;

use serde::Serialize;
use sting_actors::model::pool::ModelInfo;
use sting_actors::model::ModelKind;
use sting_actors::session::Identity;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::ErrorEnvelope;
use super::{admin, reject, rfc3339, with_ctx};
use crate::app::AppContext;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let models = warp::path("api")
        .and(warp::path("chat"))
        .and(warp::path("models"));
    let list = models
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and_then(list_models);
    let status = models
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and_then(model_status);
    let load = models
        .and(warp::path::param::<String>())
        .and(warp::path("load"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and_then(load_model);
    let unload = models
        .and(warp::path::param::<String>())
        .and(warp::path("unload"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(admin())
        .and_then(unload_model);
    list.or(status)
        .unify()
        .or(load)
        .unify()
        .or(unload)
        .unify()
        .boxed()
}

/// A model in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub display_name: String,
    pub description: String,
    /// Parameter count, e.g. "135M".
    pub parameters: String,
    /// Size of the model file, e.g. "538MB".
    pub size: String,
    /// "chat" or "embeddings".
    pub capabilities: Vec<&'static str>,
    /// "loaded" or "available".
    pub status: &'static str,
    pub last_used: Option<String>,
    pub context_length: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
    pub default_model: String,
    pub loaded_models: Vec<String>,
    pub max_loaded: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatus {
    pub name: String,
    pub status: &'static str,
    /// Resident memory the load added, e.g. "1.1GB" (null when not loaded).
    pub memory_usage: Option<String>,
    /// e.g. "4.2s" (null when not loaded).
    pub load_time: Option<String>,
    pub inference_count: u64,
    pub last_used: Option<String>,
    /// Where it runs: "cpu", "cuda" or "coreml" (null when not loaded).
    pub hardware: Option<&'static str>,
    pub performance: ModelPerformance,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelPerformance {
    /// Seconds per request, mean since the node started.
    pub avg_response_time: f64,
    /// Generated tokens per second of decoding.
    pub tokens_per_second: f64,
}

fn summary(info: &ModelInfo) -> ModelSummary {
    let manifest = &info.model.manifest;
    ModelSummary {
        name: manifest.name.clone(),
        display_name: manifest.display_name.clone(),
        description: manifest.description.clone(),
        parameters: manifest.parameters.clone(),
        size: human_bytes(info.model.size_bytes),
        capabilities: match manifest.kind {
            ModelKind::Chat => vec!["chat"],
            ModelKind::Embedding => vec!["embeddings"],
        },
        status: status_word(info),
        last_used: info.last_used.map(rfc3339),
        context_length: manifest.context_length,
    }
}

fn status_word(info: &ModelInfo) -> &'static str {
    if info.loaded.is_some() {
        "loaded"
    } else {
        "available"
    }
}

fn status(info: &ModelInfo) -> ModelStatus {
    ModelStatus {
        name: info.model.manifest.name.clone(),
        status: status_word(info),
        memory_usage: info.loaded.as_ref().map(|l| human_bytes(l.memory_bytes)),
        load_time: info
            .loaded
            .as_ref()
            .map(|l| format!("{:.1}s", l.load_time.as_secs_f64())),
        inference_count: info.inference_count,
        last_used: info.last_used.map(rfc3339),
        hardware: info.loaded.as_ref().map(|l| l.hardware),
        performance: ModelPerformance {
            avg_response_time: info.avg_response_time,
            tokens_per_second: info.tokens_per_second,
        },
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Models this node can run.
#[utoipa::path(get, path = "/api/chat/models", tag = "models",
    responses((status = 200, body = ModelList)))]
pub async fn list_models(ctx: Arc<AppContext>) -> Result<Response, Rejection> {
    let infos = ctx.models.list().await.map_err(reject)?;
    let body = ModelList {
        models: infos.iter().map(summary).collect(),
        default_model: ctx.config.models.default_chat_model.clone(),
        loaded_models: infos
            .iter()
            .filter(|info| info.loaded.is_some())
            .map(|info| info.model.manifest.name.clone())
            .collect(),
        max_loaded: ctx.models.max_loaded(),
    };
    Ok(warp::reply::json(&body).into_response())
}

/// One model's state and performance.
#[utoipa::path(get, path = "/api/chat/models/{model_name}", tag = "models",
    params(("model_name" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelStatus), (status = 404, body = ErrorEnvelope)))]
pub async fn model_status(name: String, ctx: Arc<AppContext>) -> Result<Response, Rejection> {
    let info = ctx.models.info(&name).await.map_err(reject)?;
    Ok(warp::reply::json(&status(&info)).into_response())
}

/// Load a model (admin). Beyond `models.max_loaded`, the least recently used one is unloaded.
#[utoipa::path(post, path = "/api/chat/models/{model_name}/load", tag = "models",
    params(("model_name" = String, Path, description = "Model name")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ModelStatus),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 503, description = "MODEL_UNAVAILABLE: the runtime or model could not load", body = ErrorEnvelope),
    ))]
pub async fn load_model(
    name: String,
    ctx: Arc<AppContext>,
    _admin: Identity,
) -> Result<Response, Rejection> {
    let info = ctx.models.load(&name).await.map_err(reject)?;
    Ok(warp::reply::json(&status(&info)).into_response())
}

/// Unload a model (admin). Generations in progress finish first.
#[utoipa::path(post, path = "/api/chat/models/{model_name}/unload", tag = "models",
    params(("model_name" = String, Path, description = "Model name")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ModelStatus),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn unload_model(
    name: String,
    ctx: Arc<AppContext>,
    _admin: Identity,
) -> Result<Response, Rejection> {
    ctx.models.unload(&name).await.map_err(reject)?;
    let info = ctx.models.info(&name).await.map_err(reject)?;
    Ok(warp::reply::json(&status(&info)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_contract() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(538_000_000), "538.0MB");
        assert_eq!(human_bytes(7_800_000_000), "7.8GB");
    }
}
