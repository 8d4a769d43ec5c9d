//! `/api/marketplace/*`: listings (browsing needs no login), purchases, ratings, previews;
//! and `/api/admin/orders/{id}/paid` for the built-in invoice payments.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sting_actors::session::Identity;
use sting_store::{LicenseType, Listing, ListingQuery, Order, OrderStatus, Page};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, ErrorEnvelope};
use super::json::json_body;
use super::{admin, authenticated, page, reject, rfc3339, with_ctx};
use crate::app::AppContext;
use crate::marketplace::{
    default_order, format_price, parse_price, parse_sort, ListingPatch, NewListing, Purchase,
};

const MAX_PAGE: u32 = 100;

pub fn routes(ctx: Arc<AppContext>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ctx.config.limits.max_body_bytes;
    let pots = warp::path("api")
        .and(warp::path("marketplace"))
        .and(warp::path("honey-pots"));
    let list = pots
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(warp::query::<ListingsQuery>())
        .and_then(list_listings);
    let get = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and_then(get_listing);
    let create = pots
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<CreateListingRequest>(limit))
        .and_then(create_listing);
    let update = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end())
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<UpdateListingRequest>(limit))
        .and_then(update_listing);
    let withdraw = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and_then(withdraw_listing);
    let purchase = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path("purchase"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body::<PurchaseRequest>(limit))
        .and_then(purchase_listing);
    let rating = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path("rating"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<RatingRequest>(limit))
        .and_then(rate_listing);
    let preview = pots
        .and(warp::path::param::<Uuid>())
        .and(warp::path("preview"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(json_body::<PreviewRequest>(limit))
        .and_then(preview_listing);
    let purchases = warp::path!("api" / "marketplace" / "purchases")
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authenticated())
        .and(warp::query::<PageQuery>())
        .and_then(list_purchases);
    let orders = warp::path!("api" / "admin" / "orders")
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(admin())
        .and(warp::query::<OrdersQuery>())
        .and_then(list_orders);
    let paid = warp::path!("api" / "admin" / "orders" / Uuid / "paid")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(admin())
        .and_then(mark_paid);
    list.or(get)
        .unify()
        .or(create)
        .unify()
        .or(update)
        .unify()
        .or(withdraw)
        .unify()
        .or(purchase)
        .unify()
        .or(rating)
        .unify()
        .or(preview)
        .unify()
        .or(purchases)
        .unify()
        .or(orders)
        .unify()
        .or(paid)
        .unify()
        .boxed()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListingsQuery {
    pub category: Option<String>,
    /// Lowest price, a decimal with at most two places ("9.99").
    #[param(pattern = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?$")]
    pub price_min: Option<String>,
    #[param(pattern = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?$")]
    pub price_max: Option<String>,
    /// Lowest mean rating, 0–5 with at most two decimals.
    #[param(pattern = r"^([0-4](\.[0-9]{1,2})?|5(\.00?)?)$")]
    pub rating_min: Option<String>,
    /// Words in the title or description.
    pub search: Option<String>,
    /// `price`, `rating` or `created_at` (default).
    #[param(pattern = "^(price|rating|created_at)$")]
    pub sort: Option<String>,
    /// `asc` or `desc` (default: cheapest, best rated, newest first).
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// `pending_invoice`, `paid` or `cancelled` (default: all).
    #[param(pattern = "^(pending_invoice|paid|cancelled)$")]
    pub status: Option<String>,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateListingRequest {
    pub honey_jar_id: Uuid,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Decimal amount in USD with at most two decimals, as a number or a string ("99.99").
    #[schema(value_type = String, pattern = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?$", example = "99.99")]
    pub price: serde_json::Value,
    pub category: String,
    /// `single_use` (the documents the jar holds when the order is paid) or `personal`
    /// (later documents too); both for the buyer alone.
    #[schema(value_type = String, pattern = "^(single_use|personal)$", example = "single_use")]
    pub license_type: LicenseType,
    #[serde(default)]
    pub preview_enabled: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateListingRequest {
    pub title: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Option<String>, pattern = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?$", example = "49.00")]
    pub price: Option<serde_json::Value>,
    pub category: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^(single_use|personal)$", example = "personal")]
    pub license_type: Option<LicenseType>,
    pub preview_enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// `credit_card`, `invoice` or `bank_transfer` (every order is invoiced: no card
    /// processor is integrated).
    #[schema(pattern = "^(credit_card|invoice|bank_transfer)$")]
    pub payment_method: String,
    /// `name`, `email`, `address`, `city`, `zip` required; `state` optional.
    #[schema(schema_with = super::openapi::billing_schema)]
    pub billing_address: serde_json::Value,
    /// Makes retries safe (or send the `Idempotency-Key` header): the same key returns the
    /// first order. Default: one purchase per listing and buyer.
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    /// 1–5 stars.
    #[schema(minimum = 1, maximum = 5)]
    #[serde(deserialize_with = "super::json::whole_number")]
    pub rating: u8,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub query: String,
}

/// A listing as the marketplace shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListingView {
    pub id: Uuid,
    pub honey_jar_id: Uuid,
    pub seller_id: Uuid,
    pub title: String,
    pub description: String,
    /// Decimal string ("99.99"), exact.
    pub price: String,
    pub price_minor: i64,
    pub currency: String,
    pub category: String,
    pub license_type: String,
    pub preview_enabled: bool,
    /// `active` or `withdrawn`.
    pub status: String,
    /// Mean rating (1–5), null before the first.
    pub rating: Option<f64>,
    pub rating_count: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl ListingView {
    fn of(listing: &Listing) -> ListingView {
        ListingView {
            id: listing.id,
            honey_jar_id: listing.jar_id,
            seller_id: listing.seller_id,
            title: listing.title.clone(),
            description: listing.description.clone(),
            price: format_price(listing.price_minor),
            price_minor: listing.price_minor,
            currency: listing.currency.clone(),
            category: listing.category.clone(),
            license_type: listing.license_type.as_str().to_owned(),
            preview_enabled: listing.preview_enabled,
            status: listing.status.as_str().to_owned(),
            rating: (listing.rating_count > 0).then(|| {
                (listing.rating_sum as f64 / listing.rating_count as f64 * 100.0).round() / 100.0
            }),
            rating_count: listing.rating_count,
            created_at: rfc3339(listing.created_at),
            updated_at: rfc3339(listing.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListingPage {
    pub listings: Vec<ListingView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// An order, and the license it grants once paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: Uuid,
    pub listing_id: Uuid,
    pub honey_jar_id: Uuid,
    /// Orders are shown to their buyer and to admins only, who see these too (to invoice).
    pub buyer_id: Uuid,
    /// The billing details as the buyer gave them.
    #[schema(value_type = Object)]
    pub billing_address: serde_json::Value,
    pub amount: String,
    pub amount_minor: i64,
    pub currency: String,
    pub license_type: String,
    pub payment_method: String,
    /// `pending_invoice` (access once an admin marks it paid), `paid` or `cancelled`.
    pub status: String,
    /// Whether the buyer may search and ask the jar now.
    pub license_active: bool,
    pub created_at: String,
    pub paid_at: Option<String>,
}

impl OrderView {
    fn of(order: &Order) -> OrderView {
        OrderView {
            order_id: order.id,
            listing_id: order.listing_id,
            honey_jar_id: order.jar_id,
            buyer_id: order.buyer_id,
            billing_address: serde_json::from_str(&order.billing).unwrap_or_default(),
            amount: format_price(order.amount_minor),
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            license_type: order.license_type.as_str().to_owned(),
            payment_method: order.payment_method.clone(),
            status: order.status.as_str().to_owned(),
            license_active: order.paid_at.is_some(),
            created_at: rfc3339(order.created_at),
            paid_at: order.paid_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResult {
    pub title: String,
    /// At most 160 characters of the matching passage.
    pub snippet: String,
    pub page: Option<u32>,
    pub score: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    pub results: Vec<PreviewResult>,
}

/// A price from JSON (number or string) in minor units; `field` names it in a 422.
fn price(field: &str, value: &serde_json::Value) -> Result<i64, Rejection> {
    let text = match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    };
    // A JSON number like 12.0 prints with one decimal: fine; 1e3 is refused.
    parse_price(&text).map_err(|reason| reject(ApiError::validation(field, reason)))
}

fn listing_query(query: ListingsQuery) -> Result<ListingQuery, Rejection> {
    let sort = parse_sort(query.sort.as_deref())
        .map_err(|reason| reject(ApiError::validation("sort", reason)))?;
    let order = match query.order.as_deref() {
        None => default_order(sort),
        Some("asc") => sting_store::SortOrder::Asc,
        Some("desc") => sting_store::SortOrder::Desc,
        Some(_) => return Err(reject(ApiError::validation("order", "must be asc or desc"))),
    };
    let amount = |field: &str, text: Option<String>| -> Result<Option<i64>, Rejection> {
        text.map(|t| price(field, &serde_json::Value::String(t)))
            .transpose()
    };
    let rating_min_centi = amount("rating_min", query.rating_min)?.map(|centi| centi as u64);
    if rating_min_centi.is_some_and(|centi| centi > 500) {
        return Err(reject(ApiError::validation("rating_min", "must be 0 to 5")));
    }
    Ok(ListingQuery {
        category: query.category.map(|c| c.trim().to_lowercase()),
        price_min_minor: amount("price_min", query.price_min)?,
        price_max_minor: amount("price_max", query.price_max)?,
        rating_min_centi,
        search: query
            .search
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        sort,
        order,
        page: page(query.limit, query.offset, 20, MAX_PAGE)?,
    })
}

/// Browse listings for sale (no login needed).
#[utoipa::path(get, path = "/api/marketplace/honey-pots", tag = "marketplace", params(ListingsQuery),
    responses(
        (status = 200, body = ListingPage),
        (status = 422, description = "a bad filter, sort or page", body = ErrorEnvelope),
    ))]
pub async fn list_listings(
    ctx: Arc<AppContext>,
    query: ListingsQuery,
) -> Result<Response, Rejection> {
    let query = listing_query(query)?;
    let Page { limit, offset } = query.page;
    let (listings, total) = ctx.marketplace.list(&query).await.map_err(reject)?;
    Ok(warp::reply::json(&ListingPage {
        listings: listings.iter().map(ListingView::of).collect(),
        total,
        limit,
        offset,
    })
    .into_response())
}

/// One listing (no login needed; withdrawn ones show `status: withdrawn`).
#[utoipa::path(get, path = "/api/marketplace/honey-pots/{listing_id}", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id")),
    responses((status = 200, body = ListingView), (status = 404, body = ErrorEnvelope)))]
pub async fn get_listing(id: Uuid, ctx: Arc<AppContext>) -> Result<Response, Rejection> {
    let listing = ctx.marketplace.listing(id).await.map_err(reject)?;
    Ok(warp::reply::json(&ListingView::of(&listing)).into_response())
}

/// List a jar you own for sale.
#[utoipa::path(post, path = "/api/marketplace/honey-pots", tag = "marketplace",
    request_body = CreateListingRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, body = ListingView),
        (status = 401, body = ErrorEnvelope), (status = 403, description = "not your jar", body = ErrorEnvelope),
        (status = 404, description = "no such jar you can read", body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
    ))]
pub async fn create_listing(
    ctx: Arc<AppContext>,
    who: Identity,
    body: CreateListingRequest,
) -> Result<Response, Rejection> {
    let new = NewListing {
        jar_id: body.honey_jar_id,
        title: body.title,
        description: body.description,
        price_minor: price("price", &body.price)?,
        category: body.category,
        license_type: body.license_type,
        preview_enabled: body.preview_enabled,
    };
    let listing = ctx
        .marketplace
        .create_listing(&who, new)
        .await
        .map_err(reject)?;
    Ok(warp::reply::with_status(
        warp::reply::json(&ListingView::of(&listing)),
        StatusCode::CREATED,
    )
    .into_response())
}

/// Change your listing (its seller, or an admin).
#[utoipa::path(put, path = "/api/marketplace/honey-pots/{listing_id}", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id")),
    request_body = UpdateListingRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ListingView), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope),
    ))]
pub async fn update_listing(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    body: UpdateListingRequest,
) -> Result<Response, Rejection> {
    let patch = ListingPatch {
        title: body.title,
        description: body.description,
        price_minor: body.price.as_ref().map(|p| price("price", p)).transpose()?,
        category: body.category,
        license_type: body.license_type,
        preview_enabled: body.preview_enabled,
    };
    let listing = ctx
        .marketplace
        .update_listing(&who, id, patch)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&ListingView::of(&listing)).into_response())
}

/// Withdraw your listing: it can no longer be bought; licenses already granted stay valid.
#[utoipa::path(delete, path = "/api/marketplace/honey-pots/{listing_id}", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ListingView), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ))]
pub async fn withdraw_listing(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
) -> Result<Response, Rejection> {
    let listing = ctx.marketplace.withdraw(&who, id).await.map_err(reject)?;
    Ok(warp::reply::json(&ListingView::of(&listing)).into_response())
}

/// Buy a listing. Every order is invoiced (`pending_invoice`; no card processor is
/// integrated) and grants search and ask on the jar once an admin marks it paid. The same
/// idempotency key returns the first order and charges nothing again.
#[utoipa::path(post, path = "/api/marketplace/honey-pots/{listing_id}/purchase", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe", min_length = 1, max_length = 128)),
    request_body = PurchaseRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, description = "the order (200 for a repeated idempotency key)", body = OrderView),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "your own listing", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "already bought, or withdrawn", body = ErrorEnvelope),
        (status = 422, description = "bad billing details or payment method", body = ErrorEnvelope),
    ))]
pub async fn purchase_listing(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    header_key: Option<String>,
    body: PurchaseRequest,
) -> Result<Response, Rejection> {
    let key = header_key
        .or(body.idempotency_key)
        .unwrap_or_else(|| format!("listing:{id}"));
    let purchase = Purchase {
        idempotency_key: key,
        payment_method: body.payment_method,
        billing: body.billing_address,
    };
    let started = sting_store::Timestamp::now();
    let order = ctx
        .marketplace
        .purchase(&who, id, purchase)
        .await
        .map_err(reject)?;
    let status = match order.created_at < started {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok(warp::reply::with_status(warp::reply::json(&OrderView::of(&order)), status).into_response())
}

/// Rate a listing you bought (1–5; rating again replaces your rating).
#[utoipa::path(post, path = "/api/marketplace/honey-pots/{listing_id}/rating", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id")),
    request_body = RatingRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = ListingView), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "no paid order for it", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
    ))]
pub async fn rate_listing(
    id: Uuid,
    ctx: Arc<AppContext>,
    who: Identity,
    body: RatingRequest,
) -> Result<Response, Rejection> {
    let listing = ctx
        .marketplace
        .rate(&who, id, body.rating)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&ListingView::of(&listing)).into_response())
}

/// Search a listing's jar before buying (when its seller enabled previews): the top 5 titles
/// and 160-character snippets, never whole passages.
#[utoipa::path(post, path = "/api/marketplace/honey-pots/{listing_id}/preview", tag = "marketplace",
    params(("listing_id" = Uuid, Path, description = "Listing id")),
    request_body = PreviewRequest, security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = PreviewResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "no preview", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
    ))]
pub async fn preview_listing(
    id: Uuid,
    ctx: Arc<AppContext>,
    _who: Identity,
    body: PreviewRequest,
) -> Result<Response, Rejection> {
    let hits = ctx
        .marketplace
        .preview(id, &body.query)
        .await
        .map_err(reject)?;
    let results = hits
        .into_iter()
        .map(|hit| PreviewResult {
            title: hit.title,
            snippet: hit.snippet,
            page: hit.page,
            score: hit.score,
        })
        .collect();
    Ok(warp::reply::json(&PreviewResponse { results }).into_response())
}

/// Your orders (newest first) and whether each license is active.
#[utoipa::path(get, path = "/api/marketplace/purchases", tag = "marketplace", params(PageQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = OrderPage), (status = 401, body = ErrorEnvelope)))]
pub async fn list_purchases(
    ctx: Arc<AppContext>,
    who: Identity,
    query: PageQuery,
) -> Result<Response, Rejection> {
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let (orders, total) = ctx
        .marketplace
        .purchases(&who, page)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&OrderPage {
        orders: orders.iter().map(OrderView::of).collect(),
        total,
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

/// Every buyer's orders, oldest first: with `status=pending_invoice`, the invoices to settle.
#[utoipa::path(get, path = "/api/admin/orders", tag = "admin", params(OrdersQuery),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = OrderPage), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
    ))]
pub async fn list_orders(
    ctx: Arc<AppContext>,
    _admin: Identity,
    query: OrdersQuery,
) -> Result<Response, Rejection> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(OrderStatus::parse(text).ok_or_else(|| {
            reject(ApiError::validation(
                "status",
                "must be pending_invoice, paid or cancelled",
            ))
        })?),
    };
    let page = page(query.limit, query.offset, 20, MAX_PAGE)?;
    let (orders, total) = ctx
        .marketplace
        .all_orders(status, page)
        .await
        .map_err(reject)?;
    Ok(warp::reply::json(&OrderPage {
        orders: orders.iter().map(OrderView::of).collect(),
        total,
        limit: page.limit,
        offset: page.offset,
    })
    .into_response())
}

/// Mark an invoiced order paid: its buyer may search and ask the jar from now on.
#[utoipa::path(post, path = "/api/admin/orders/{order_id}/paid", tag = "admin",
    params(("order_id" = Uuid, Path, description = "Order id")),
    security(("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, body = OrderView), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "cancelled", body = ErrorEnvelope),
    ))]
pub async fn mark_paid(
    id: Uuid,
    ctx: Arc<AppContext>,
    _admin: Identity,
) -> Result<Response, Rejection> {
    let order = ctx.marketplace.mark_paid(id).await.map_err(reject)?;
    Ok(warp::reply::json(&OrderView::of(&order)).into_response())
}
