//! The OpenAPI description of everything served, generated from the handlers' annotations and
//! the request/response types themselves, at `GET /api/openapi.json`. An end-to-end test
//! calls every documented operation to prove each is routed.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    admin_api, auth_api, chat_api, cluster_api, error, knowledge_api, marketplace_api, models_api,
    openai_api, system_api, webauthn_api,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sting API",
        description = "Self-hosted private-LLM platform. Every failure answers with the error \
                       envelope; every response carries X-Request-Id and, under /api, the \
                       X-RateLimit-* headers.",
    ),
    paths(
        auth_api::register, auth_api::login, auth_api::logout, auth_api::logout_everywhere,
        auth_api::change_password, auth_api::session,
        webauthn_api::register_init, webauthn_api::register_complete, webauthn_api::login_init,
        webauthn_api::login_complete, webauthn_api::list_passkeys, webauthn_api::delete_passkey,
        system_api::health, system_api::status, system_api::metrics, system_api::prometheus,
        cluster_api::cluster_status, cluster_api::drain_node, cluster_api::leave_cluster,
        admin_api::list_users, admin_api::get_user, admin_api::update_user,
        admin_api::deactivate_user, admin_api::activate_user,
        models_api::list_models, models_api::model_status, models_api::load_model,
        models_api::unload_model,
        chat_api::send_message, chat_api::list_conversations, chat_api::get_conversation,
        chat_api::delete_conversation, chat_api::token_usage, chat_api::prune_conversation,
        knowledge_api::create_jar, knowledge_api::list_jars, knowledge_api::get_jar,
        knowledge_api::update_jar, knowledge_api::share_jar, knowledge_api::delete_jar,
        knowledge_api::upload_document, knowledge_api::list_documents,
        knowledge_api::get_document, knowledge_api::delete_document, knowledge_api::search,
        knowledge_api::ask, knowledge_api::export_jar, knowledge_api::import_jar,
        marketplace_api::list_listings, marketplace_api::get_listing,
        marketplace_api::create_listing, marketplace_api::update_listing,
        marketplace_api::withdraw_listing, marketplace_api::purchase_listing,
        marketplace_api::rate_listing, marketplace_api::preview_listing,
        marketplace_api::list_purchases, marketplace_api::list_orders, marketplace_api::mark_paid,
        openai_api::list_models, openai_api::embeddings, openai_api::chat_completions,
        openapi_json,
    ),
    components(schemas(error::ErrorEnvelope, error::ErrorBody)),
    modifiers(&SecuritySchemes),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("sting_session"))),
        );
    }
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn routes() -> warp::filters::BoxedFilter<(Response,)> {
    warp::path("api")
        .and(warp::path("openapi.json"))
        .and(warp::path::end())
        .and(warp::get())
        .map(openapi_json)
        .boxed()
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub fn openapi_json() -> Response {
    warp::reply::json(&document()).into_response()
}
