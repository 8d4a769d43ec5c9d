//! `/api/admin/users*`: user management for admins.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sting_actors::session::Identity;
use sting_store::{Page, Role, User};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::ErrorEnvelope;
use super::json::json_body;
use super::{admin, page, reject, rfc3339, with_ctx};
use crate::app::AppContext;
use crate::identity::UserChanges;

const MAX_PAGE: u32 = 200;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let users = warp::path("api")
        .and(warp::path("admin"))
        .and(warp::path("users"));
    let list = users
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and(warp::query::<ListUsersQuery>())
        .and_then(list_users);
    let get = users
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and_then(get_user);
    let update = users
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end())
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and(json_body::<UpdateUserRequest>(limit))
        .and_then(update_user);
    let deactivate = users
        .and(warp::path::param::<Uuid>())
        .and(warp::path("deactivate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and_then(deactivate_user);
    let activate = users
        .and(warp::path::param::<Uuid>())
        .and(warp::path("activate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(admin())
        .and_then(activate_user);
    list.or(get)
        .unify()
        .or(update)
        .unify()
        .or(deactivate)
        .unify()
        .or(activate)
        .unify()
        .boxed()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// Page size, 1–200 (default 20).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Users to skip (default 0).
    pub offset: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(format = "email")]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^(user|admin)$", example = "admin")]
    pub role: Option<Role>,
}

/// A user as admins see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUser {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl AdminUser {
    fn of(user: &User) -> AdminUser {
        AdminUser {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role,
            active: user.active,
            created_at: rfc3339(user.created_at),
            updated_at: rfc3339(user.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<AdminUser>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivationResponse {
    pub success: bool,
    pub user: AdminUser,
    /// Sessions revoked by a deactivation.
    pub sessions_revoked: usize,
}

/// List users, oldest first.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", params(ListUsersQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = UserList),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 422, description = "limit out of range", body = ErrorEnvelope),
    ))]
pub async fn list_users(
    ctx: Arc<AppContext>,
    _admin: Identity,
    query: ListUsersQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let Page { limit, offset } = page;
    let (users, total) = ctx.identity.list_users(page).await.map_err(reject)?;
    Ok(warp::reply::json(&UserList {
        users: users.iter().map(AdminUser::of).collect(),
        total,
        limit,
        offset,
    })
    .into_response())
}

/// One user.
#[utoipa::path(get, path = "/api/admin/users/{user_id}", tag = "admin",
    params(("user_id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = AdminUser),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_user(
    user_id: Uuid,
    ctx: Arc<AppContext>,
    _admin: Identity,
) -> Result<Response, Rejection> {
    let user = ctx.identity.user(user_id).await.map_err(reject)?;
    Ok(warp::reply::json(&AdminUser::of(&user)).into_response())
}

/// Change a user's name, email or role. Admins cannot remove their own admin role.
#[utoipa::path(put, path = "/api/admin/users/{user_id}", tag = "admin",
    params(("user_id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = AdminUser),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
    ))]
pub async fn update_user(
    user_id: Uuid,
    ctx: Arc<AppContext>,
    admin: Identity,
    body: UpdateUserRequest,
) -> Result<Response, Rejection> {
    let changes = UserChanges {
        email: body.email,
        name: body.name,
        role: body.role,
    };
    let user = ctx
        .identity
        .update_user(admin.user_id, user_id, changes)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&AdminUser::of(&user)).into_response())
}

/// Deactivate a user: they cannot log in, and every session of theirs is revoked at once.
#[utoipa::path(post, path = "/api/admin/users/{user_id}/deactivate", tag = "admin",
    params(("user_id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ActivationResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn deactivate_user(
    user_id: Uuid,
    ctx: Arc<AppContext>,
    admin: Identity,
) -> Result<Response, Rejection> {
    set_active(&ctx, &admin, user_id, false).await
}

/// Reactivate a deactivated user (they log in again with their password).
#[utoipa::path(post, path = "/api/admin/users/{user_id}/activate", tag = "admin",
    params(("user_id" = Uuid, Path, description = "User id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ActivationResponse),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn activate_user(
    user_id: Uuid,
    ctx: Arc<AppContext>,
    admin: Identity,
) -> Result<Response, Rejection> {
    set_active(&ctx, &admin, user_id, true).await
}

async fn set_active(
    ctx: &AppContext,
    admin: &Identity,
    user_id: Uuid,
    active: bool,
) -> Result<Response, Rejection> {
    let (user, sessions_revoked) = ctx
        .identity
        .set_active(admin.user_id, user_id, active)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&ActivationResponse {
        success: true,
        user: AdminUser::of(&user),
        sessions_revoked,
    })
    .into_response())
}
