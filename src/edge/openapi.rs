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
    modifiers(&SecuritySchemes, &ErrorResponses),
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

/// Every operation may also fail in ways its own list does not name (a malformed body, a
/// rate limit, an overloaded node, ...): each gets a `default` response, the error envelope
/// (under `/v1`, OpenAI's error object).
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let envelope = ResponseBuilder::new()
            .description("Any other failure: the error envelope, its `code` says which")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build();
        let openai = ResponseBuilder::new()
            .description("Any other failure: `{\"error\": {message, type, param, code}}`")
            .content("application/json", ContentBuilder::new().build())
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let default = if path.starts_with("/v1/") {
                &openai
            } else {
                &envelope
            };
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| default.clone().into());
            }
        }
    }
}

/// The schema of a request's `tags`: at most 32, each 1–64 characters with something besides
/// spaces (as `knowledge::valid_tags` checks them).
pub fn tags_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some(r"\S")),
        )
        .max_items(Some(32))
        .build()
}

/// [`tags_schema`], or null (unchanged).
pub fn optional_tags_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(tags_schema())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// The schema of `/v1/embeddings`' `input`, with the default limits of `[models]`.
pub fn embedding_input_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(16_384))
    };
    OneOfBuilder::new()
        .item(text())
        .item(
            ArrayBuilder::new()
                .items(text())
                .min_items(Some(1))
                .max_items(Some(256)),
        )
        .build()
        .into()
}

/// The schema of a purchase's billing details (as `marketplace::check_billing` checks them).
pub fn billing_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let field = |format: Option<&str>| {
        let builder = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(200))
            .pattern(Some(r"\S"));
        match format {
            Some(format) => builder.format(Some(utoipa::openapi::SchemaFormat::Custom(
                format.to_owned(),
            ))),
            None => builder,
        }
    };
    let mut object = ObjectBuilder::new().schema_type(Type::Object);
    for name in ["name", "address", "city", "zip"] {
        object = object.property(name, field(None)).required(name);
    }
    object
        .property("email", field(Some("email")))
        .required("email")
        .property("state", field(None))
        .build()
}

/// The methods the document lists for `path` (a concrete request path), as an `Allow` header
/// value; `None` when it names no such path.
pub fn allowed_methods(path: &str) -> Option<String> {
    static ROUTES: std::sync::LazyLock<Vec<(Vec<String>, String)>> =
        std::sync::LazyLock::new(|| {
            document()
                .paths
                .paths
                .iter()
                .map(|(template, item)| {
                    let segments = template
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let methods = [
                        ("GET", item.get.is_some()),
                        ("HEAD", item.get.is_some()),
                        ("POST", item.post.is_some()),
                        ("PUT", item.put.is_some()),
                        ("DELETE", item.delete.is_some()),
                        ("PATCH", item.patch.is_some()),
                    ];
                    let allow = methods
                        .iter()
                        .filter(|(_, present)| *present)
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ");
                    (segments, allow)
                })
                .collect()
        });
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .find(|(template, _)| {
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
        })
        .map(|(_, allow)| allow.clone())
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
