//! Marketplace SQL: listings, orders (a paid order is a license) and ratings.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::knowledge::{bad_value, offset, snapshot};
use super::{map_err, parse_uuid};
use crate::{
    JarId, License, LicenseType, Listing, ListingId, ListingQuery, ListingSort, ListingStatus,
    Order, OrderId, OrderStatus, Page, SortOrder, StoreError, StoreResult, Timestamp, UserId,
};

pub(super) const LISTING_COLUMNS: &str =
    "id, jar_id, seller_id, title, description, price_minor, currency,
    category, license_type, preview_enabled, status, rating_sum, rating_count, created_at,
    updated_at";

pub(super) fn listing_from_row(row: &Row<'_>) -> rusqlite::Result<Listing> {
    let license: String = row.get(8)?;
    let status: String = row.get(10)?;
    Ok(Listing {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        jar_id: parse_uuid(&row.get::<_, String>(1)?)?,
        seller_id: parse_uuid(&row.get::<_, String>(2)?)?,
        title: row.get(3)?,
        description: row.get(4)?,
        price_minor: row.get(5)?,
        currency: row.get(6)?,
        category: row.get(7)?,
        license_type: LicenseType::parse(&license)
            .ok_or_else(|| bad_value(8, format!("license type {license}")))?,
        preview_enabled: row.get(9)?,
        status: ListingStatus::parse(&status)
            .ok_or_else(|| bad_value(10, format!("listing status {status}")))?,
        rating_sum: row.get::<_, i64>(11)? as u64,
        rating_count: row.get::<_, i64>(12)? as u64,
        created_at: Timestamp(row.get(13)?),
        updated_at: Timestamp(row.get(14)?),
    })
}

pub(super) fn create_listing(tx: &Connection, listing: &Listing) -> StoreResult<()> {
    let jar_exists: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM jars WHERE id = ?1)",
            [listing.jar_id.to_string()],
            |row| row.get(0),
        )
        .map_err(map_err)?;
    if !jar_exists {
        return Err(StoreError::NotFound {
            entity: "honey jar",
        });
    }
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO listings ({LISTING_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT DO NOTHING"
            ),
            params![
                listing.id.to_string(),
                listing.jar_id.to_string(),
                listing.seller_id.to_string(),
                listing.title,
                listing.description,
                listing.price_minor,
                listing.currency,
                listing.category,
                listing.license_type.as_str(),
                listing.preview_enabled,
                listing.status.as_str(),
                listing.rating_sum as i64,
                listing.rating_count as i64,
                listing.created_at.0,
                listing.updated_at.0,
            ],
        )
        .map_err(map_err)?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "listing {} exists",
            listing.id
        )));
    }
    Ok(())
}

pub(super) fn listing(conn: &Connection, id: ListingId) -> rusqlite::Result<Option<Listing>> {
    conn.query_row(
        &format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = ?1"),
        [id.to_string()],
        listing_from_row,
    )
    .optional()
}

pub(super) fn update_listing(tx: &Connection, listing: &Listing) -> StoreResult<()> {
    // The jar, the seller, the ratings and the creation time are not the caller's to replace.
    let updated = tx
        .execute(
            "UPDATE listings SET title = ?2, description = ?3, price_minor = ?4, currency = ?5,
             category = ?6, license_type = ?7, preview_enabled = ?8, status = ?9,
             updated_at = ?10 WHERE id = ?1",
            params![
                listing.id.to_string(),
                listing.title,
                listing.description,
                listing.price_minor,
                listing.currency,
                listing.category,
                listing.license_type.as_str(),
                listing.preview_enabled,
                listing.status.as_str(),
                listing.updated_at.0,
            ],
        )
        .map_err(map_err)?;
    if updated == 0 {
        return Err(StoreError::NotFound { entity: "listing" });
    }
    Ok(())
}

pub(super) fn list_listings(
    conn: &Connection,
    query: &ListingQuery,
) -> rusqlite::Result<(Vec<Listing>, u64)> {
    let mut clauses = vec!["status = 'active'".to_owned()];
    let mut args: Vec<Value> = Vec::new();
    if let Some(category) = &query.category {
        clauses.push("category = ?".into());
        args.push(Value::Text(category.clone()));
    }
    if let Some(min) = query.price_min_minor {
        clauses.push("price_minor >= ?".into());
        args.push(Value::Integer(min));
    }
    if let Some(max) = query.price_max_minor {
        clauses.push("price_minor <= ?".into());
        args.push(Value::Integer(max));
    }
    if let Some(min) = query.rating_min_centi {
        // mean ≥ min/100  ⇔  100·sum ≥ min·count (and at least one rating)
        clauses.push("rating_count > 0 AND 100 * rating_sum >= ? * rating_count".into());
        args.push(Value::Integer(min as i64));
    }
    if let Some(search) = &query.search {
        clauses.push("(instr(lower(title), ?) > 0 OR instr(lower(description), ?) > 0)".into());
        let needle = search.to_lowercase();
        args.push(Value::Text(needle.clone()));
        args.push(Value::Text(needle));
    }
    let where_sql = format!("WHERE {}", clauses.join(" AND "));
    let direction = match query.order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    let order_sql = match query.sort {
        ListingSort::Price => format!("price_minor {direction}, created_at DESC, id"),
        // Unrated listings last whichever the direction.
        ListingSort::Rating => format!(
            "rating_count = 0, CAST(rating_sum AS REAL) / MAX(rating_count, 1) {direction}, \
             rating_count DESC, id"
        ),
        ListingSort::CreatedAt => format!("created_at {direction}, id"),
    };
    snapshot(conn, |conn| {
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM listings {where_sql}"),
            params_from_iter(&args),
            |row| row.get(0),
        )?;
        let mut page_args = args.clone();
        page_args.extend([
            Value::Integer(query.page.limit.into()),
            Value::Integer(offset(query.page)),
        ]);
        let mut statement = conn.prepare(&format!(
            "SELECT {LISTING_COLUMNS} FROM listings {where_sql} ORDER BY {order_sql}
             LIMIT ? OFFSET ?"
        ))?;
        let listings = statement
            .query_map(params_from_iter(&page_args), listing_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((listings, total as u64))
    })
}

const ORDER_COLUMNS: &str = "id, listing_id, jar_id, buyer_id, idempotency_key, amount_minor,
    currency, license_type, payment_method, billing, status, created_at, paid_at";

fn order_from_row(row: &Row<'_>) -> rusqlite::Result<Order> {
    let license: String = row.get(7)?;
    let status: String = row.get(10)?;
    Ok(Order {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        listing_id: parse_uuid(&row.get::<_, String>(1)?)?,
        jar_id: parse_uuid(&row.get::<_, String>(2)?)?,
        buyer_id: parse_uuid(&row.get::<_, String>(3)?)?,
        idempotency_key: row.get(4)?,
        amount_minor: row.get(5)?,
        currency: row.get(6)?,
        license_type: LicenseType::parse(&license)
            .ok_or_else(|| bad_value(7, format!("license type {license}")))?,
        payment_method: row.get(8)?,
        billing: row.get(9)?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| bad_value(10, format!("order status {status}")))?,
        created_at: Timestamp(row.get(11)?),
        paid_at: row.get::<_, Option<i64>>(12)?.map(Timestamp),
    })
}

fn select_order(conn: &Connection, clause: &str, args: &[&str]) -> rusqlite::Result<Option<Order>> {
    conn.query_row(
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE {clause}"),
        params_from_iter(args),
        order_from_row,
    )
    .optional()
}

pub(super) fn place_order(tx: &Connection, order: &Order) -> StoreResult<Order> {
    let buyer = order.buyer_id.to_string();
    if let Some(first) = select_order(
        tx,
        "buyer_id = ?1 AND idempotency_key = ?2",
        &[&buyer, &order.idempotency_key],
    )
    .map_err(map_err)?
    {
        return Ok(first);
    }
    let listing_id = order.listing_id.to_string();
    if let Some(other) = select_order(
        tx,
        "listing_id = ?1 AND buyer_id = ?2 AND status != 'cancelled'",
        &[&listing_id, &buyer],
    )
    .map_err(map_err)?
    {
        return Err(StoreError::Conflict(format!(
            "order {} already buys this listing",
            other.id
        )));
    }
    tx.execute(
        &format!(
            "INSERT INTO orders ({ORDER_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            order.id.to_string(),
            listing_id,
            order.jar_id.to_string(),
            buyer,
            order.idempotency_key,
            order.amount_minor,
            order.currency,
            order.license_type.as_str(),
            order.payment_method,
            order.billing,
            order.status.as_str(),
            order.created_at.0,
            order.paid_at.map(|t| t.0),
        ],
    )
    .map_err(map_err)?;
    Ok(order.clone())
}

pub(super) fn order(conn: &Connection, id: OrderId) -> rusqlite::Result<Option<Order>> {
    select_order(conn, "id = ?1", &[&id.to_string()])
}

pub(super) fn mark_order_paid(tx: &Connection, id: OrderId, at: Timestamp) -> StoreResult<Order> {
    let current = order(tx, id)
        .map_err(map_err)?
        .ok_or(StoreError::NotFound { entity: "order" })?;
    match current.status {
        OrderStatus::Paid => return Ok(current),
        OrderStatus::Cancelled => {
            return Err(StoreError::Conflict(format!("order {id} was cancelled")))
        }
        OrderStatus::PendingInvoice => {}
    }
    tx.execute(
        "UPDATE orders SET status = 'paid', paid_at = ?2 WHERE id = ?1",
        params![id.to_string(), at.0],
    )
    .map_err(map_err)?;
    Ok(Order {
        status: OrderStatus::Paid,
        paid_at: Some(at),
        ..current
    })
}

pub(super) fn orders_of(
    conn: &Connection,
    buyer: UserId,
    page: Page,
) -> rusqlite::Result<(Vec<Order>, u64)> {
    let buyer = buyer.to_string();
    snapshot(conn, |conn| {
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM orders WHERE buyer_id = ?1",
            [&buyer],
            |row| row.get(0),
        )?;
        let mut statement = conn.prepare(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE buyer_id = ?1
             ORDER BY created_at DESC, id LIMIT ?2 OFFSET ?3"
        ))?;
        let orders = statement
            .query_map(params![buyer, page.limit, offset(page)], order_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((orders, total as u64))
    })
}

pub(super) fn list_orders(
    conn: &Connection,
    status: Option<OrderStatus>,
    page: Page,
) -> rusqlite::Result<(Vec<Order>, u64)> {
    // `?1 IS NULL` keeps one statement for "any status".
    let status = status.map(OrderStatus::as_str);
    snapshot(conn, |conn| {
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM orders WHERE ?1 IS NULL OR status = ?1",
            [status],
            |row| row.get(0),
        )?;
        let mut statement = conn.prepare(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE ?1 IS NULL OR status = ?1
             ORDER BY created_at, id LIMIT ?2 OFFSET ?3"
        ))?;
        let orders = statement
            .query_map(params![status, page.limit, offset(page)], order_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((orders, total as u64))
    })
}

pub(super) fn licenses_of(conn: &Connection, buyer: UserId) -> rusqlite::Result<Vec<License>> {
    let mut statement = conn.prepare(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE buyer_id = ?1 AND status = 'paid'
         ORDER BY paid_at, id"
    ))?;
    let orders = statement
        .query_map([buyer.to_string()], order_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(orders.into_iter().map(|order| order.license()).collect())
}

pub(super) fn rate_listing(
    tx: &Connection,
    listing_id: ListingId,
    buyer: UserId,
    stars: u8,
    at: Timestamp,
) -> StoreResult<Listing> {
    if !(1..=5).contains(&stars) {
        return Err(StoreError::Internal(format!("a rating of {stars} stars")));
    }
    let id = listing_id.to_string();
    let previous: Option<i64> = tx
        .query_row(
            "SELECT stars FROM ratings WHERE listing_id = ?1 AND buyer_id = ?2",
            [&id, &buyer.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(map_err)?;
    let (sum_delta, count_delta) = match previous {
        Some(old) => (i64::from(stars) - old, 0),
        None => (i64::from(stars), 1),
    };
    let updated = tx
        .execute(
            "UPDATE listings SET rating_sum = rating_sum + ?2, rating_count = rating_count + ?3
             WHERE id = ?1",
            params![id, sum_delta, count_delta],
        )
        .map_err(map_err)?;
    if updated == 0 {
        return Err(StoreError::NotFound { entity: "listing" });
    }
    tx.execute(
        "INSERT INTO ratings (listing_id, buyer_id, stars, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (listing_id, buyer_id) DO UPDATE SET stars = ?3, updated_at = ?4",
        params![id, buyer.to_string(), stars, at.0],
    )
    .map_err(map_err)?;
    listing(tx, listing_id)
        .map_err(map_err)?
        .ok_or(StoreError::NotFound { entity: "listing" })
}

/// Removes a deleted jar's listings and their ratings (orders stay, as the buyers' history).
pub(super) fn delete_jar_listings(tx: &Connection, jar: JarId) -> StoreResult<()> {
    let jar = jar.to_string();
    tx.execute(
        "DELETE FROM ratings WHERE listing_id IN (SELECT id FROM listings WHERE jar_id = ?1)",
        [&jar],
    )
    .map_err(map_err)?;
    tx.execute("DELETE FROM listings WHERE jar_id = ?1", [&jar])
        .map_err(map_err)?;
    Ok(())
}
