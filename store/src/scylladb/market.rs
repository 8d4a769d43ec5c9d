//! The marketplace on ScyllaDB: listings, orders (a paid order is a license) and ratings.
//!
//! `listings` and `orders` are the truth, and every change to them is a lightweight
//! transaction: a listing's changes compare-and-set its `revision`, an order moves from
//! `pending_invoice` to `paid` under `IF status = ?`. The read tables next to them are plain
//! writes made after the transaction, stamped with the write timestamp of the state they
//! copy (a listing's revision; an order's creation or payment time), so that a copy that
//! arrives late never overwrites a newer one. Browsing, the admins' queue and a buyer's orders
//! read those tables; the design and what is weaker than SQLite are in `store/SCYLLA.md`.

use std::cmp::Ordering;

use async_trait::async_trait;
use futures::future::try_join_all;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::schema::Migration;
use super::{
    applied, contended, corrupt, logged_batch, maybe_row, page_of, prepare, prepare_serial_read,
    read_paged, unavailable, ScyllaStore, BATCH_BYTES, BATCH_ROW_BYTES,
};
use crate::{
    JarId, License, LicenseType, Listing, ListingId, ListingQuery, ListingSort, ListingStatus,
    MarketStore, Order, OrderId, OrderStatus, Page, SortOrder, StoreError, StoreResult, Timestamp,
    UserId,
};

pub(super) const MIGRATION: Migration = Migration {
    version: 5,
    description: "market",
    statements: &[
        // The truth about a listing. Every change is a compare-and-set on `revision`, which
        // also stamps the listing's row in `active_listings`.
        "CREATE TABLE IF NOT EXISTS listings (
            id uuid PRIMARY KEY,
            jar_id uuid,
            seller_id uuid,
            title text,
            description text,
            price_minor bigint,
            currency text,
            category text,
            license_type text,
            preview_enabled boolean,
            status text,
            rating_sum bigint,
            rating_count bigint,
            created_at bigint,
            updated_at bigint,
            revision bigint
        )",
        // A jar's listings, for deleting them with the jar (bounded by one jar's listings).
        "CREATE TABLE IF NOT EXISTS listings_by_jar (
            jar_id uuid,
            listing_id uuid,
            PRIMARY KEY ((jar_id), listing_id)
        )",
        // The 30-day periods that hold active listings ('listings') or orders ('orders'):
        // one row per period, so a few hundred in decades.
        "CREATE TABLE IF NOT EXISTS market_periods (
            scope text,
            period bigint,
            PRIMARY KEY ((scope), period)
        )",
        // What browsing reads: the active listings, whole, by period of creation. Filtered
        // and sorted in the node.
        "CREATE TABLE IF NOT EXISTS active_listings (
            period bigint,
            created_at bigint,
            id uuid,
            jar_id uuid,
            seller_id uuid,
            title text,
            description text,
            price_minor bigint,
            currency text,
            category text,
            license_type text,
            preview_enabled boolean,
            rating_sum bigint,
            rating_count bigint,
            updated_at bigint,
            PRIMARY KEY ((period), created_at, id)
        )",
        // One row per buyer of a listing: a rating replaces it; sums are recomputed from here.
        "CREATE TABLE IF NOT EXISTS ratings (
            listing_id uuid,
            buyer_id uuid,
            stars int,
            at bigint,
            PRIMARY KEY ((listing_id), buyer_id)
        )",
        // The truth about an order: created `IF NOT EXISTS`, paid `IF status = ?`.
        "CREATE TABLE IF NOT EXISTS orders (
            id uuid PRIMARY KEY,
            listing_id uuid,
            jar_id uuid,
            buyer_id uuid,
            idempotency_key text,
            amount_minor bigint,
            currency text,
            license_type text,
            payment_method text,
            billing text,
            status text,
            created_at bigint,
            paid_at bigint
        )",
        // Once per (buyer, idempotency key), claimed `IF NOT EXISTS` before anything else is
        // written. It holds the whole order, so a placement that stopped halfway is finished
        // by the next one that finds it.
        "CREATE TABLE IF NOT EXISTS order_keys (
            buyer_id uuid,
            idempotency_key text,
            order_id uuid,
            listing_id uuid,
            jar_id uuid,
            amount_minor bigint,
            currency text,
            license_type text,
            payment_method text,
            billing text,
            status text,
            created_at bigint,
            paid_at bigint,
            PRIMARY KEY ((buyer_id), idempotency_key)
        )",
        // One open (not cancelled) order per (buyer, listing), claimed `IF NOT EXISTS`.
        "CREATE TABLE IF NOT EXISTS open_orders (
            buyer_id uuid,
            listing_id uuid,
            order_id uuid,
            idempotency_key text,
            PRIMARY KEY ((buyer_id), listing_id)
        )",
        // A buyer's orders, whole (bounded by what one user buys): their orders and licenses.
        "CREATE TABLE IF NOT EXISTS orders_by_buyer (
            buyer_id uuid,
            created_at bigint,
            id uuid,
            listing_id uuid,
            jar_id uuid,
            idempotency_key text,
            amount_minor bigint,
            currency text,
            license_type text,
            payment_method text,
            billing text,
            status text,
            paid_at bigint,
            PRIMARY KEY ((buyer_id), created_at, id)
        )",
        // Every order, oldest first, by period of creation: the admins' list without a filter.
        "CREATE TABLE IF NOT EXISTS orders_by_period (
            period bigint,
            created_at bigint,
            id uuid,
            listing_id uuid,
            jar_id uuid,
            buyer_id uuid,
            idempotency_key text,
            amount_minor bigint,
            currency text,
            license_type text,
            payment_method text,
            billing text,
            status text,
            paid_at bigint,
            PRIMARY KEY ((period), created_at, id)
        )",
        // The same by status (the invoices to settle): payment moves the row.
        "CREATE TABLE IF NOT EXISTS orders_by_status (
            status text,
            period bigint,
            created_at bigint,
            id uuid,
            listing_id uuid,
            jar_id uuid,
            buyer_id uuid,
            idempotency_key text,
            amount_minor bigint,
            currency text,
            license_type text,
            payment_method text,
            billing text,
            paid_at bigint,
            PRIMARY KEY ((status, period), created_at, id)
        )",
    ],
};

/// A compare-and-set that lost a race is decided again from the new state, at most this often.
const CAS_ATTEMPTS: usize = 5;
/// Active listings and orders are filed by 30-day period of their creation time, which bounds
/// the partitions of `active_listings`, `orders_by_period` and `orders_by_status`.
const PERIOD_MS: i64 = 30 * 24 * 60 * 60 * 1000;
const LISTINGS_SCOPE: &str = "listings";
const ORDERS_SCOPE: &str = "orders";
/// Browsing reads every active listing: the market's size, at most this.
const MARKET_LISTINGS_CAP: usize = 100_000;
const JAR_LISTINGS_CAP: usize = 10_000;
const LISTING_RATINGS_CAP: usize = 100_000;
const BUYER_ORDERS_CAP: usize = 10_000;
/// 30-day periods: eight centuries.
const PERIODS_CAP: usize = 10_000;

const LISTING_COLUMNS: &str = "id, jar_id, seller_id, title, description, price_minor, currency,
    category, license_type, preview_enabled, status, rating_sum, rating_count, created_at,
    updated_at, revision";
const ACTIVE_LISTING_COLUMNS: &str = "period, created_at, id, jar_id, seller_id, title,
    description, price_minor, currency, category, license_type, preview_enabled, rating_sum,
    rating_count, updated_at";
const ORDER_COLUMNS: &str = "id, listing_id, jar_id, buyer_id, idempotency_key, amount_minor,
    currency, license_type, payment_method, billing, status, created_at, paid_at";
const ORDER_KEY_COLUMNS: &str = "order_id, listing_id, jar_id, buyer_id, idempotency_key,
    amount_minor, currency, license_type, payment_method, billing, status, created_at, paid_at";
/// `orders_by_period` and `orders_by_status` are written with these (see [`OrderRow::filed`]).
const FILED_ORDER_COLUMNS: &str = "period, id, listing_id, jar_id, buyer_id, idempotency_key,
    amount_minor, currency, license_type, payment_method, billing, status, created_at, paid_at";

/// A row of `listings`.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct ListingRow {
    pub id: Uuid,
    pub jar_id: Uuid,
    pub seller_id: Uuid,
    pub title: String,
    pub description: String,
    pub price_minor: i64,
    pub currency: String,
    pub category: String,
    pub license_type: String,
    pub preview_enabled: bool,
    pub status: String,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

/// A listing and the revision its next change compares against.
struct StoredListing {
    listing: Listing,
    revision: i64,
}

impl ListingRow {
    fn new(listing: &Listing, revision: i64) -> ListingRow {
        ListingRow {
            id: listing.id,
            jar_id: listing.jar_id,
            seller_id: listing.seller_id,
            title: listing.title.clone(),
            description: listing.description.clone(),
            price_minor: listing.price_minor,
            currency: listing.currency.clone(),
            category: listing.category.clone(),
            license_type: listing.license_type.as_str().to_owned(),
            preview_enabled: listing.preview_enabled,
            status: listing.status.as_str().to_owned(),
            rating_sum: listing.rating_sum as i64,
            rating_count: listing.rating_count as i64,
            created_at: listing.created_at.0,
            updated_at: listing.updated_at.0,
            revision,
        }
    }

    fn stored(self) -> StoreResult<StoredListing> {
        let listing = Listing {
            id: self.id,
            jar_id: self.jar_id,
            seller_id: self.seller_id,
            license_type: license_type(&self.license_type)?,
            status: ListingStatus::parse(&self.status)
                .ok_or_else(|| corrupt("listing row", format!("status {:?}", self.status)))?,
            title: self.title,
            description: self.description,
            price_minor: self.price_minor,
            currency: self.currency,
            category: self.category,
            preview_enabled: self.preview_enabled,
            rating_sum: self.rating_sum as u64,
            rating_count: self.rating_count as u64,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        };
        Ok(StoredListing {
            listing,
            revision: self.revision,
        })
    }
}

/// A row of `active_listings`: an active listing, whole.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct ActiveListingRow {
    pub period: i64,
    pub created_at: i64,
    pub id: Uuid,
    pub jar_id: Uuid,
    pub seller_id: Uuid,
    pub title: String,
    pub description: String,
    pub price_minor: i64,
    pub currency: String,
    pub category: String,
    pub license_type: String,
    pub preview_enabled: bool,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub updated_at: i64,
}

impl ActiveListingRow {
    fn new(listing: &Listing) -> ActiveListingRow {
        ActiveListingRow {
            period: period_of(listing.created_at),
            created_at: listing.created_at.0,
            id: listing.id,
            jar_id: listing.jar_id,
            seller_id: listing.seller_id,
            title: listing.title.clone(),
            description: listing.description.clone(),
            price_minor: listing.price_minor,
            currency: listing.currency.clone(),
            category: listing.category.clone(),
            license_type: listing.license_type.as_str().to_owned(),
            preview_enabled: listing.preview_enabled,
            rating_sum: listing.rating_sum as i64,
            rating_count: listing.rating_count as i64,
            updated_at: listing.updated_at.0,
        }
    }

    fn into_listing(self) -> StoreResult<Listing> {
        Ok(Listing {
            id: self.id,
            jar_id: self.jar_id,
            seller_id: self.seller_id,
            license_type: license_type(&self.license_type)?,
            title: self.title,
            description: self.description,
            price_minor: self.price_minor,
            currency: self.currency,
            category: self.category,
            preview_enabled: self.preview_enabled,
            status: ListingStatus::Active,
            rating_sum: self.rating_sum as u64,
            rating_count: self.rating_count as u64,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

/// A row of `orders`, and the order columns of `orders_by_buyer`, `orders_by_period` and
/// `orders_by_status`.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct OrderRow {
    pub id: Uuid,
    pub listing_id: Uuid,
    pub jar_id: Uuid,
    pub buyer_id: Uuid,
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub license_type: String,
    pub payment_method: String,
    pub billing: String,
    pub status: String,
    pub created_at: i64,
    pub paid_at: Option<i64>,
}

/// The values of [`FILED_ORDER_COLUMNS`].
type FiledOrder<'a> = (
    i64,
    Uuid,
    Uuid,
    Uuid,
    Uuid,
    &'a str,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    Option<i64>,
);

impl OrderRow {
    fn new(order: &Order) -> OrderRow {
        OrderRow {
            id: order.id,
            listing_id: order.listing_id,
            jar_id: order.jar_id,
            buyer_id: order.buyer_id,
            idempotency_key: order.idempotency_key.clone(),
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            license_type: order.license_type.as_str().to_owned(),
            payment_method: order.payment_method.clone(),
            billing: order.billing.clone(),
            status: order.status.as_str().to_owned(),
            created_at: order.created_at.0,
            paid_at: order.paid_at.map(|at| at.0),
        }
    }

    fn into_order(self) -> StoreResult<Order> {
        Ok(Order {
            id: self.id,
            listing_id: self.listing_id,
            jar_id: self.jar_id,
            buyer_id: self.buyer_id,
            license_type: license_type(&self.license_type)?,
            status: OrderStatus::parse(&self.status)
                .ok_or_else(|| corrupt("order row", format!("status {:?}", self.status)))?,
            idempotency_key: self.idempotency_key,
            amount_minor: self.amount_minor,
            currency: self.currency,
            payment_method: self.payment_method,
            billing: self.billing,
            created_at: Timestamp(self.created_at),
            paid_at: self.paid_at.map(Timestamp),
        })
    }

    /// What its copies in `orders_by_buyer`, `orders_by_period` and `orders_by_status` weigh
    /// in a batch, as [`batch_runs`](super::batch_runs) counts (ids, numbers: 128 bytes).
    fn indexed_bytes(&self) -> usize {
        let text = self.idempotency_key.len()
            + self.currency.len()
            + self.license_type.len()
            + self.payment_method.len()
            + self.billing.len()
            + self.status.len();
        3 * (text + 128 + BATCH_ROW_BYTES)
    }

    /// The row as `orders_by_period` and `orders_by_status` file it.
    fn filed(&self) -> FiledOrder<'_> {
        (
            period_of(Timestamp(self.created_at)),
            self.id,
            self.listing_id,
            self.jar_id,
            self.buyer_id,
            &self.idempotency_key,
            self.amount_minor,
            &self.currency,
            &self.license_type,
            &self.payment_method,
            &self.billing,
            &self.status,
            self.created_at,
            self.paid_at,
        )
    }
}

/// A row of `order_keys`: the order a (buyer, idempotency key) placed, whole.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow, scylla::SerializeRow)]
pub(super) struct OrderKeyRow {
    pub order_id: Uuid,
    pub listing_id: Uuid,
    pub jar_id: Uuid,
    pub buyer_id: Uuid,
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub license_type: String,
    pub payment_method: String,
    pub billing: String,
    pub status: String,
    pub created_at: i64,
    pub paid_at: Option<i64>,
}

impl OrderKeyRow {
    fn new(order: &Order) -> OrderKeyRow {
        let row = OrderRow::new(order);
        OrderKeyRow {
            order_id: row.id,
            listing_id: row.listing_id,
            jar_id: row.jar_id,
            buyer_id: row.buyer_id,
            idempotency_key: row.idempotency_key,
            amount_minor: row.amount_minor,
            currency: row.currency,
            license_type: row.license_type,
            payment_method: row.payment_method,
            billing: row.billing,
            status: row.status,
            created_at: row.created_at,
            paid_at: row.paid_at,
        }
    }

    fn into_order(self) -> StoreResult<Order> {
        OrderRow {
            id: self.order_id,
            listing_id: self.listing_id,
            jar_id: self.jar_id,
            buyer_id: self.buyer_id,
            idempotency_key: self.idempotency_key,
            amount_minor: self.amount_minor,
            currency: self.currency,
            license_type: self.license_type,
            payment_method: self.payment_method,
            billing: self.billing,
            status: self.status,
            created_at: self.created_at,
            paid_at: self.paid_at,
        }
        .into_order()
    }
}

/// A row of `open_orders`.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct OpenOrderRow {
    pub order_id: Uuid,
    pub idempotency_key: String,
}

/// A row of `listings_by_jar`.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct JarListingRow {
    pub listing_id: Uuid,
}

/// A row of `market_periods`.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct PeriodRow {
    pub period: i64,
}

/// A row of `ratings`, as the sums read it.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct StarsRow {
    pub stars: i32,
}

pub(super) struct Statements {
    insert_listing: PreparedStatement,
    listing: PreparedStatement,
    /// At LOCAL_SERIAL: the revision a compare-and-set is decided from.
    listing_serial: PreparedStatement,
    update_listing: PreparedStatement,
    set_rating_totals: PreparedStatement,
    delete_listing: PreparedStatement,
    /// Written with the listing's revision as timestamp (a clone per write).
    index_listing: PreparedStatement,
    unindex_listing: PreparedStatement,
    active_listings: PreparedStatement,
    link_listing: PreparedStatement,
    unlink_listing: PreparedStatement,
    jar_listings: PreparedStatement,
    unlink_jar: PreparedStatement,
    add_period: PreparedStatement,
    periods: PreparedStatement,
    rate: PreparedStatement,
    unrate: PreparedStatement,
    ratings: PreparedStatement,
    delete_ratings: PreparedStatement,
    claim_key: PreparedStatement,
    /// At LOCAL_SERIAL.
    order_key: PreparedStatement,
    release_key: PreparedStatement,
    claim_open: PreparedStatement,
    /// At LOCAL_SERIAL.
    open_order: PreparedStatement,
    release_open: PreparedStatement,
    insert_order: PreparedStatement,
    order: PreparedStatement,
    /// At LOCAL_SERIAL.
    order_serial: PreparedStatement,
    pay_order: PreparedStatement,
    /// An order's read tables in its state; a clone per write carries the state's timestamp.
    index_order: Batch,
    /// The same for a paid order, which also leaves the `pending_invoice` queue.
    index_paid_order: Batch,
    /// The statements of those batches, run one by one for an order too large for a batch.
    order_in_buyer: PreparedStatement,
    order_in_period: PreparedStatement,
    order_in_status: PreparedStatement,
    leave_status: PreparedStatement,
    buyer_orders: PreparedStatement,
    count_orders: PreparedStatement,
    count_orders_by_status: PreparedStatement,
    orders_in_period: PreparedStatement,
    orders_by_status_in_period: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session) -> StoreResult<Statements> {
        let order_in_buyer = prepare(
            session,
            &format!(
                "INSERT INTO orders_by_buyer ({ORDER_COLUMNS}) VALUES ({})",
                marks(13)
            ),
            true,
        )
        .await?;
        let order_in_period = prepare(
            session,
            &format!(
                "INSERT INTO orders_by_period ({FILED_ORDER_COLUMNS}) VALUES ({})",
                marks(14)
            ),
            true,
        )
        .await?;
        let order_in_status = prepare(
            session,
            &format!(
                "INSERT INTO orders_by_status ({FILED_ORDER_COLUMNS}) VALUES ({})",
                marks(14)
            ),
            true,
        )
        .await?;
        let add_period = prepare(
            session,
            "INSERT INTO market_periods (scope, period) VALUES (?, ?)",
            true,
        )
        .await?;
        let leave_status = prepare(
            session,
            "DELETE FROM orders_by_status
             WHERE status = ? AND period = ? AND created_at = ? AND id = ?",
            true,
        )
        .await?;
        let index_order = logged_batch(&[
            &order_in_buyer,
            &order_in_period,
            &order_in_status,
            &add_period,
        ]);
        let index_paid_order = logged_batch(&[
            &order_in_buyer,
            &order_in_period,
            &order_in_status,
            &add_period,
            &leave_status,
        ]);
        Ok(Statements {
            insert_listing: prepare(
                session,
                &format!(
                    "INSERT INTO listings ({LISTING_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                    marks(16)
                ),
                false,
            )
            .await?,
            listing: prepare(
                session,
                &format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = ?"),
                true,
            )
            .await?,
            listing_serial: prepare_serial_read(
                session,
                &format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = ?"),
            )
            .await?,
            update_listing: prepare(
                session,
                "UPDATE listings SET title = ?, description = ?, price_minor = ?, currency = ?,
                 category = ?, license_type = ?, preview_enabled = ?, status = ?,
                 updated_at = ?, revision = ?
                 WHERE id = ? IF revision = ?",
                false,
            )
            .await?,
            set_rating_totals: prepare(
                session,
                "UPDATE listings SET rating_sum = ?, rating_count = ?, revision = ?
                 WHERE id = ? IF revision = ?",
                false,
            )
            .await?,
            delete_listing: prepare(
                session,
                "DELETE FROM listings WHERE id = ? IF revision = ?",
                false,
            )
            .await?,
            index_listing: prepare(
                session,
                &format!(
                    "INSERT INTO active_listings ({ACTIVE_LISTING_COLUMNS}) VALUES ({})",
                    marks(15)
                ),
                true,
            )
            .await?,
            unindex_listing: prepare(
                session,
                "DELETE FROM active_listings WHERE period = ? AND created_at = ? AND id = ?",
                true,
            )
            .await?,
            active_listings: prepare(
                session,
                &format!("SELECT {ACTIVE_LISTING_COLUMNS} FROM active_listings WHERE period = ?"),
                true,
            )
            .await?,
            link_listing: prepare(
                session,
                "INSERT INTO listings_by_jar (jar_id, listing_id) VALUES (?, ?)",
                true,
            )
            .await?,
            unlink_listing: prepare(
                session,
                "DELETE FROM listings_by_jar WHERE jar_id = ? AND listing_id = ?",
                true,
            )
            .await?,
            jar_listings: prepare(
                session,
                "SELECT listing_id FROM listings_by_jar WHERE jar_id = ?",
                true,
            )
            .await?,
            unlink_jar: prepare(
                session,
                "DELETE FROM listings_by_jar WHERE jar_id = ?",
                true,
            )
            .await?,
            periods: prepare(
                session,
                "SELECT period FROM market_periods WHERE scope = ?",
                true,
            )
            .await?,
            rate: prepare(
                session,
                "INSERT INTO ratings (listing_id, buyer_id, stars, at) VALUES (?, ?, ?, ?)",
                true,
            )
            .await?,
            unrate: prepare(
                session,
                "DELETE FROM ratings WHERE listing_id = ? AND buyer_id = ?",
                true,
            )
            .await?,
            ratings: prepare(
                session,
                "SELECT stars FROM ratings WHERE listing_id = ?",
                true,
            )
            .await?,
            delete_ratings: prepare(session, "DELETE FROM ratings WHERE listing_id = ?", true)
                .await?,
            claim_key: prepare(
                session,
                &format!(
                    "INSERT INTO order_keys ({ORDER_KEY_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                    marks(13)
                ),
                false,
            )
            .await?,
            order_key: prepare_serial_read(
                session,
                &format!(
                    "SELECT {ORDER_KEY_COLUMNS} FROM order_keys
                         WHERE buyer_id = ? AND idempotency_key = ?"
                ),
            )
            .await?,
            release_key: prepare(
                session,
                "DELETE FROM order_keys WHERE buyer_id = ? AND idempotency_key = ?
                 IF order_id = ?",
                false,
            )
            .await?,
            claim_open: prepare(
                session,
                "INSERT INTO open_orders (buyer_id, listing_id, order_id, idempotency_key)
                 VALUES (?, ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            open_order: prepare_serial_read(
                session,
                "SELECT order_id, idempotency_key FROM open_orders
                     WHERE buyer_id = ? AND listing_id = ?",
            )
            .await?,
            release_open: prepare(
                session,
                "DELETE FROM open_orders WHERE buyer_id = ? AND listing_id = ? IF order_id = ?",
                false,
            )
            .await?,
            insert_order: prepare(
                session,
                &format!(
                    "INSERT INTO orders ({ORDER_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                    marks(13)
                ),
                false,
            )
            .await?,
            order: prepare(
                session,
                &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"),
                true,
            )
            .await?,
            order_serial: prepare_serial_read(
                session,
                &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"),
            )
            .await?,
            pay_order: prepare(
                session,
                "UPDATE orders SET status = ?, paid_at = ? WHERE id = ? IF status = ?",
                false,
            )
            .await?,
            index_order,
            index_paid_order,
            order_in_buyer,
            order_in_period,
            order_in_status,
            leave_status,
            buyer_orders: prepare(
                session,
                &format!("SELECT {ORDER_COLUMNS} FROM orders_by_buyer WHERE buyer_id = ?"),
                true,
            )
            .await?,
            count_orders: prepare(
                session,
                "SELECT COUNT(*) FROM orders_by_period WHERE period = ?",
                true,
            )
            .await?,
            count_orders_by_status: prepare(
                session,
                "SELECT COUNT(*) FROM orders_by_status WHERE status = ? AND period = ?",
                true,
            )
            .await?,
            orders_in_period: prepare(
                session,
                &format!("SELECT {ORDER_COLUMNS} FROM orders_by_period WHERE period = ? LIMIT ?"),
                true,
            )
            .await?,
            orders_by_status_in_period: prepare(
                session,
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM orders_by_status
                     WHERE status = ? AND period = ? LIMIT ?"
                ),
                true,
            )
            .await?,
            add_period,
        })
    }
}

/// `n` bind markers.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn license_type(spelling: &str) -> StoreResult<LicenseType> {
    LicenseType::parse(spelling)
        .ok_or_else(|| corrupt("market row", format!("license type {spelling:?}")))
}

/// The 30-day period `at` falls in.
fn period_of(at: Timestamp) -> i64 {
    at.0.div_euclid(PERIOD_MS)
}

/// A listing's next revision: the current time in microseconds, and always above the last
/// one, so that it orders the listing's changes and can stamp the copies of each.
fn next_revision(previous: i64) -> i64 {
    Timestamp::now()
        .0
        .saturating_mul(1000)
        .max(previous.saturating_add(1))
}

/// The write timestamp (µs) of an order's read-table rows in its current state: its creation
/// time, and for a paid order its payment time, always later, so that rows of the unpaid
/// state written late (a retry finishing a placement) never overwrite the paid ones.
fn order_state_timestamp(order: &Order) -> i64 {
    let placed = order.created_at.0.saturating_mul(1000);
    match order.status {
        OrderStatus::Paid => order
            .paid_at
            .map_or(placed, |at| at.0.saturating_mul(1000))
            .max(placed.saturating_add(1)),
        OrderStatus::PendingInvoice | OrderStatus::Cancelled => placed,
    }
}

fn already_buys(order: OrderId) -> StoreError {
    StoreError::Conflict(format!("order {order} already buys this listing"))
}

/// The active listings matching `query`, sorted and paged as SQLite's `list_listings` does
/// it, and how many match.
fn browse(listings: Vec<Listing>, query: &ListingQuery) -> (Vec<Listing>, u64) {
    let needle = query.search.as_ref().map(|search| search.to_lowercase());
    let mut matching: Vec<Listing> = listings
        .into_iter()
        .filter(|listing| listing.status == ListingStatus::Active)
        .filter(|listing| {
            query
                .category
                .as_ref()
                .is_none_or(|category| &listing.category == category)
        })
        .filter(|listing| {
            query
                .price_min_minor
                .is_none_or(|min| listing.price_minor >= min)
        })
        .filter(|listing| {
            query
                .price_max_minor
                .is_none_or(|max| listing.price_minor <= max)
        })
        .filter(|listing| {
            query
                .rating_min_centi
                .is_none_or(|min| rated_at_least(listing, min))
        })
        .filter(|listing| {
            needle.as_ref().is_none_or(|needle| {
                // SQLite's lower() folds ASCII only; the needle is folded fully.
                listing.title.to_ascii_lowercase().contains(needle.as_str())
                    || listing
                        .description
                        .to_ascii_lowercase()
                        .contains(needle.as_str())
            })
        })
        .collect();
    matching.sort_by(|a, b| compare_listings(a, b, query.sort, query.order));
    let total = matching.len() as u64;
    (page_of(matching, query.page), total)
}

/// `rating_count > 0 AND 100 * rating_sum >= min * rating_count`, in SQLite's integers.
fn rated_at_least(listing: &Listing, min_centi: u64) -> bool {
    let (sum, count) = (listing.rating_sum as i64, listing.rating_count as i64);
    count > 0 && 100 * i128::from(sum) >= i128::from(min_centi as i64) * i128::from(count)
}

/// The mean as SQLite computes it: `CAST(rating_sum AS REAL) / MAX(rating_count, 1)`.
fn mean_rating(listing: &Listing) -> f64 {
    let (sum, count) = (listing.rating_sum as i64, listing.rating_count as i64);
    sum as f64 / count.max(1) as f64
}

/// SQLite's `ORDER BY` of `list_listings`: ids compare as their text, which is byte order.
fn compare_listings(a: &Listing, b: &Listing, sort: ListingSort, order: SortOrder) -> Ordering {
    let directed = |ordering: Ordering| match order {
        SortOrder::Asc => ordering,
        SortOrder::Desc => ordering.reverse(),
    };
    match sort {
        ListingSort::Price => directed(a.price_minor.cmp(&b.price_minor))
            .then(b.created_at.cmp(&a.created_at))
            .then(a.id.cmp(&b.id)),
        // Unrated listings last whichever the direction; more ratings first among equal means.
        ListingSort::Rating => (a.rating_count == 0)
            .cmp(&(b.rating_count == 0))
            .then(directed(mean_rating(a).total_cmp(&mean_rating(b))))
            .then((b.rating_count as i64).cmp(&(a.rating_count as i64)))
            .then(a.id.cmp(&b.id)),
        ListingSort::CreatedAt => directed(a.created_at.cmp(&b.created_at)).then(a.id.cmp(&b.id)),
    }
}

impl ScyllaStore {
    /// Removes a deleted jar's listings and their ratings (orders stay, as the buyers'
    /// history); called by `delete_jar`, after the jar itself is gone.
    pub(super) async fn delete_jar_listings(&self, jar: JarId) -> StoreResult<()> {
        let links: Vec<JarListingRow> = read_paged(
            &self.session,
            &self.market.jar_listings,
            (jar,),
            JAR_LISTINGS_CAP,
            "jar's listings",
        )
        .await?;
        for link in links {
            self.remove_listing(link.listing_id, jar).await?;
        }
        self.write(&self.market.unlink_jar, (jar,)).await
    }

    /// A plain (idempotent) write.
    async fn write(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<()> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A lightweight transaction: whether it was applied.
    async fn transact(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(unavailable)?;
        applied(result)
    }

    async fn read_listing(
        &self,
        statement: &PreparedStatement,
        id: ListingId,
    ) -> StoreResult<Option<StoredListing>> {
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        let row: Option<ListingRow> = maybe_row(result, "listing row")?;
        row.map(ListingRow::stored).transpose()
    }

    /// The listing's row in `active_listings` as of `revision`: there when active, gone
    /// otherwise. Stamped with the revision, so an older state written late loses.
    async fn index_listing(&self, listing: &Listing, revision: i64) -> StoreResult<()> {
        match listing.status {
            ListingStatus::Active => {
                let mut statement = self.market.index_listing.clone();
                statement.set_timestamp(Some(revision));
                self.write(&statement, ActiveListingRow::new(listing)).await
            }
            ListingStatus::Withdrawn => self.unindex_listing(listing, revision).await,
        }
    }

    async fn unindex_listing(&self, listing: &Listing, revision: i64) -> StoreResult<()> {
        let mut statement = self.market.unindex_listing.clone();
        statement.set_timestamp(Some(revision));
        let key = (
            period_of(listing.created_at),
            listing.created_at.0,
            listing.id,
        );
        self.write(&statement, key).await
    }

    /// Deletes listing `id` of `jar`, its row in `active_listings` first, then its ratings.
    async fn remove_listing(&self, id: ListingId, jar: JarId) -> StoreResult<()> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.read_listing(&self.market.listing_serial, id).await? else {
                return self.write(&self.market.delete_ratings, (id,)).await;
            };
            if current.listing.jar_id != jar {
                // A link left by a listing id that another jar's listing already had.
                return Ok(());
            }
            // Above every revision the listing had: no copy of it written late comes back.
            let revision = next_revision(current.revision);
            self.unindex_listing(&current.listing, revision).await?;
            if self
                .transact(&self.market.delete_listing, (id, current.revision))
                .await?
            {
                return self.write(&self.market.delete_ratings, (id,)).await;
            }
        }
        Err(contended(format!("deleting listing {id}"), CAS_ATTEMPTS))
    }

    /// Sum and number of a listing's ratings, from its partition.
    async fn rating_totals(&self, listing: ListingId) -> StoreResult<(u64, u64)> {
        let ratings: Vec<StarsRow> = read_paged(
            &self.session,
            &self.market.ratings,
            (listing,),
            LISTING_RATINGS_CAP,
            "listing's ratings",
        )
        .await?;
        let sum = ratings
            .iter()
            .map(|rating| u64::try_from(rating.stars).unwrap_or(0))
            .sum();
        Ok((sum, ratings.len() as u64))
    }

    async fn periods(&self, scope: &str) -> StoreResult<Vec<i64>> {
        let rows: Vec<PeriodRow> = read_paged(
            &self.session,
            &self.market.periods,
            (scope,),
            PERIODS_CAP,
            "market periods",
        )
        .await?;
        Ok(rows.into_iter().map(|row| row.period).collect())
    }

    async fn read_order(
        &self,
        statement: &PreparedStatement,
        id: OrderId,
    ) -> StoreResult<Option<Order>> {
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        let row: Option<OrderRow> = maybe_row(result, "order row")?;
        row.map(OrderRow::into_order).transpose()
    }

    /// The order a buyer's idempotency key placed (or is placing), at LOCAL_SERIAL.
    async fn order_key(&self, buyer: UserId, key: &str) -> StoreResult<Option<Order>> {
        let result = self
            .session
            .execute_unpaged(&self.market.order_key, (buyer, key))
            .await
            .map_err(unavailable)?;
        let row: Option<OrderKeyRow> = maybe_row(result, "order key row")?;
        row.map(OrderKeyRow::into_order).transpose()
    }

    /// Releases the buyer's idempotency key if `order` still holds it (not applied: it no
    /// longer does, which is as good).
    async fn release_key(&self, order: &Order) -> StoreResult<()> {
        self.transact(
            &self.market.release_key,
            (order.buyer_id, &order.idempotency_key, order.id),
        )
        .await?;
        Ok(())
    }

    /// Releases the buyer's open-order claim of `listing` if `order` still holds it.
    async fn release_open(
        &self,
        buyer: UserId,
        listing: ListingId,
        order: OrderId,
    ) -> StoreResult<()> {
        self.transact(&self.market.release_open, (buyer, listing, order))
            .await?;
        Ok(())
    }

    /// Claims the buyer's one open order of the listing for `placing`. `Some(other)`: a live
    /// order holds it. Claims whose order never got placed are released on the way.
    async fn claim_open(&self, placing: &Order) -> StoreResult<Option<OrderId>> {
        let (buyer, listing) = (placing.buyer_id, placing.listing_id);
        for _ in 0..CAS_ATTEMPTS {
            // A cancelled order claims nothing but is refused like any other while one is
            // open, as on SQLite.
            let claimed = placing.status != OrderStatus::Cancelled
                && self
                    .transact(
                        &self.market.claim_open,
                        (buyer, listing, placing.id, &placing.idempotency_key),
                    )
                    .await?;
            if claimed {
                return Ok(None);
            }
            let result = self
                .session
                .execute_unpaged(&self.market.open_order, (buyer, listing))
                .await
                .map_err(unavailable)?;
            let holder: Option<OpenOrderRow> = maybe_row(result, "open order row")?;
            let Some(holder) = holder else {
                match placing.status {
                    OrderStatus::Cancelled => return Ok(None),
                    // Released between the claim and the read: claim again.
                    OrderStatus::PendingInvoice | OrderStatus::Paid => continue,
                }
            };
            if holder.order_id == placing.id {
                return Ok(None);
            }
            if self.holds_open(&holder, placing).await? {
                return Ok(Some(holder.order_id));
            }
            // A claim whose order never got placed: released, and claimed again.
            self.release_open(buyer, listing, holder.order_id).await?;
        }
        Err(contended(
            format!("the open order of buyer {buyer} for listing {listing}"),
            CAS_ATTEMPTS,
        ))
    }

    /// Whether the open-order claim `holder` (of another order than `placing`) stands for a
    /// live order. An order not written yet whose key still names it is being placed, or
    /// stopped after its claims: it is finished here, so that the conflict names an order
    /// the buyer can see.
    async fn holds_open(&self, holder: &OpenOrderRow, placing: &Order) -> StoreResult<bool> {
        if let Some(order) = self
            .read_order(&self.market.order_serial, holder.order_id)
            .await?
        {
            return Ok(order.status != OrderStatus::Cancelled);
        }
        match self
            .order_key(placing.buyer_id, &holder.idempotency_key)
            .await?
        {
            Some(unfinished)
                if unfinished.id == holder.order_id
                    && unfinished.listing_id == placing.listing_id =>
            {
                match self.record_order(&unfinished).await {
                    Ok(_) => Ok(true),
                    // Its id was another order's: that placement was undone, claims and all.
                    Err(StoreError::Conflict(_)) => Ok(false),
                    Err(err) => Err(err),
                }
            }
            _ => Ok(false),
        }
    }

    /// Writes the order of claimed key and listing, then its read tables.
    async fn record_order(&self, placing: &Order) -> StoreResult<Order> {
        let placed = if self
            .transact(&self.market.insert_order, OrderRow::new(placing))
            .await?
        {
            placing.clone()
        } else {
            let existing = self
                .read_order(&self.market.order_serial, placing.id)
                .await?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!("order {} is being written", placing.id))
                })?;
            if existing.buyer_id != placing.buyer_id
                || existing.idempotency_key != placing.idempotency_key
            {
                // Another order has this id: this placement is undone.
                self.release_open(placing.buyer_id, placing.listing_id, placing.id)
                    .await?;
                self.release_key(placing).await?;
                return Err(StoreError::Conflict(format!("order {} exists", placing.id)));
            }
            // Finished by a retry meanwhile (the same order), and maybe paid since.
            existing
        };
        self.index_order(&placed).await?;
        Ok(placed)
    }

    /// Writes an order's rows in `orders_by_buyer`, `orders_by_period` and `orders_by_status`
    /// as its current state has them (idempotent: the timestamp is the state's).
    async fn index_order(&self, order: &Order) -> StoreResult<()> {
        let row = OrderRow::new(order);
        let period = period_of(order.created_at);
        let timestamp = order_state_timestamp(order);
        if row.indexed_bytes() > BATCH_BYTES {
            return self.index_large_order(order, &row).await;
        }
        let common = (&row, row.filed(), row.filed(), (ORDERS_SCOPE, period));
        let result = match order.status {
            OrderStatus::Paid => {
                let mut batch = self.market.index_paid_order.clone();
                batch.set_timestamp(Some(timestamp));
                let unpaid = (
                    OrderStatus::PendingInvoice.as_str(),
                    period,
                    order.created_at.0,
                    order.id,
                );
                let (buyer, by_period, by_status, add_period) = common;
                self.session
                    .batch(&batch, (buyer, by_period, by_status, add_period, unpaid))
                    .await
            }
            OrderStatus::PendingInvoice | OrderStatus::Cancelled => {
                let mut batch = self.market.index_order.clone();
                batch.set_timestamp(Some(timestamp));
                self.session.batch(&batch, common).await
            }
        };
        result.map_err(unavailable)?;
        Ok(())
    }

    /// [`Self::index_order`] for an order too large for one batch over several partitions (its
    /// billing details are copied to each read table): one write per table, all at the state's
    /// timestamp, and the paid order's `pending_invoice` row removed after the others. A
    /// failure in between leaves some read tables behind, as a failure before the batch
    /// leaves them all; the retry or the payment that follows writes them again.
    async fn index_large_order(&self, order: &Order, row: &OrderRow) -> StoreResult<()> {
        let stamped = |statement: &PreparedStatement| {
            let mut statement = statement.clone();
            statement.set_timestamp(Some(order_state_timestamp(order)));
            statement
        };
        let statements = &self.market;
        let period = period_of(order.created_at);
        let (buyer, by_period, by_status, add_period) = (
            stamped(&statements.order_in_buyer),
            stamped(&statements.order_in_period),
            stamped(&statements.order_in_status),
            stamped(&statements.add_period),
        );
        futures::future::try_join4(
            self.session.execute_unpaged(&buyer, row),
            self.session.execute_unpaged(&by_period, row.filed()),
            self.session.execute_unpaged(&by_status, row.filed()),
            self.session
                .execute_unpaged(&add_period, (ORDERS_SCOPE, period)),
        )
        .await
        .map_err(unavailable)?;
        if order.status == OrderStatus::Paid {
            let unpaid = (
                OrderStatus::PendingInvoice.as_str(),
                period,
                order.created_at.0,
                order.id,
            );
            self.session
                .execute_unpaged(&stamped(&statements.leave_status), unpaid)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Every order of a buyer (bounded by what one user buys), in no particular order.
    async fn buyer_orders(&self, buyer: UserId) -> StoreResult<Vec<Order>> {
        let rows: Vec<OrderRow> = read_paged(
            &self.session,
            &self.market.buyer_orders,
            (buyer,),
            BUYER_ORDERS_CAP,
            "buyer's orders",
        )
        .await?;
        rows.into_iter().map(OrderRow::into_order).collect()
    }

    /// How many orders (with `status` when given) were created in `period`.
    async fn count_orders(&self, status: Option<OrderStatus>, period: i64) -> StoreResult<u64> {
        let result = match status {
            Some(status) => {
                self.session
                    .execute_unpaged(
                        &self.market.count_orders_by_status,
                        (status.as_str(), period),
                    )
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(&self.market.count_orders, (period,))
                    .await
            }
        }
        .map_err(unavailable)?;
        let count: Option<(i64,)> = maybe_row(result, "order count")?;
        Ok(count.map_or(0, |(count,)| u64::try_from(count).unwrap_or(0)))
    }

    /// The first `limit` orders (with `status` when given) created in `period`, oldest first.
    async fn first_orders(
        &self,
        status: Option<OrderStatus>,
        period: i64,
        limit: u64,
    ) -> StoreResult<Vec<Order>> {
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<OrderRow> = match status {
            Some(status) => {
                read_paged(
                    &self.session,
                    &self.market.orders_by_status_in_period,
                    (status.as_str(), period, limit),
                    cap,
                    "orders by status",
                )
                .await?
            }
            None => {
                read_paged(
                    &self.session,
                    &self.market.orders_in_period,
                    (period, limit),
                    cap,
                    "orders by period",
                )
                .await?
            }
        };
        rows.into_iter().map(OrderRow::into_order).collect()
    }
}

#[async_trait]
impl MarketStore for ScyllaStore {
    async fn create_listing(&self, listing: &Listing) -> StoreResult<()> {
        let jar_gone = StoreError::NotFound {
            entity: "honey jar",
        };
        if !self.jar_exists(listing.jar_id).await? {
            return Err(jar_gone);
        }
        // Linked first, so that deleting the jar finds the listing whatever happens next.
        futures::try_join!(
            self.write(&self.market.link_listing, (listing.jar_id, listing.id)),
            self.write(
                &self.market.add_period,
                (LISTINGS_SCOPE, period_of(listing.created_at))
            ),
        )?;
        let revision = next_revision(0);
        if !self
            .transact(
                &self.market.insert_listing,
                ListingRow::new(listing, revision),
            )
            .await?
        {
            return Err(StoreError::Conflict(format!(
                "listing {} exists",
                listing.id
            )));
        }
        self.index_listing(listing, revision).await?;
        // The jar may have gone since it was checked, its listings swept before this one was
        // written (`delete_jar` removes the jar, then its listings).
        if !self.jar_exists(listing.jar_id).await? {
            self.remove_listing(listing.id, listing.jar_id).await?;
            self.write(&self.market.unlink_listing, (listing.jar_id, listing.id))
                .await?;
            return Err(jar_gone);
        }
        Ok(())
    }

    async fn listing(&self, id: ListingId) -> StoreResult<Option<Listing>> {
        Ok(self
            .read_listing(&self.market.listing, id)
            .await?
            .map(|stored| stored.listing))
    }

    async fn update_listing(&self, listing: &Listing) -> StoreResult<()> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .read_listing(&self.market.listing_serial, listing.id)
                .await?
                .ok_or(StoreError::NotFound { entity: "listing" })?;
            // The jar, the seller, the ratings and the creation time are not the caller's to
            // replace.
            let next = Listing {
                title: listing.title.clone(),
                description: listing.description.clone(),
                price_minor: listing.price_minor,
                currency: listing.currency.clone(),
                category: listing.category.clone(),
                license_type: listing.license_type,
                preview_enabled: listing.preview_enabled,
                status: listing.status,
                updated_at: listing.updated_at,
                ..current.listing
            };
            let revision = next_revision(current.revision);
            let values = (
                &next.title,
                &next.description,
                next.price_minor,
                &next.currency,
                &next.category,
                next.license_type.as_str(),
                next.preview_enabled,
                next.status.as_str(),
                next.updated_at.0,
                revision,
                next.id,
                current.revision,
            );
            if self.transact(&self.market.update_listing, values).await? {
                return self.index_listing(&next, revision).await;
            }
        }
        Err(contended(format!("listing {}", listing.id), CAS_ATTEMPTS))
    }

    async fn list_listings(&self, query: &ListingQuery) -> StoreResult<(Vec<Listing>, u64)> {
        let mut listings = Vec::new();
        for period in self.periods(LISTINGS_SCOPE).await? {
            let rows: Vec<ActiveListingRow> = read_paged(
                &self.session,
                &self.market.active_listings,
                (period,),
                MARKET_LISTINGS_CAP - listings.len(),
                "active listings",
            )
            .await?;
            for row in rows {
                listings.push(row.into_listing()?);
            }
        }
        Ok(browse(listings, query))
    }

    async fn place_order(&self, order: &Order) -> StoreResult<Order> {
        for _ in 0..CAS_ATTEMPTS {
            let claimed = self
                .transact(&self.market.claim_key, OrderKeyRow::new(order))
                .await?;
            let placing = if claimed {
                order.clone()
            } else {
                let Some(first) = self
                    .order_key(order.buyer_id, &order.idempotency_key)
                    .await?
                else {
                    // Released between the claim and the read: claim again.
                    continue;
                };
                if let Some(placed) = self.read_order(&self.market.order_serial, first.id).await? {
                    // A retry: the first order. Its read tables are written again (unchanged
                    // if they were), for a placement that stopped before them.
                    self.index_order(&placed).await?;
                    return Ok(placed);
                }
                // A placement that stopped (or is) between its key and its order: finish it.
                first
            };
            if let Some(holder) = self.claim_open(&placing).await? {
                self.release_key(&placing).await?;
                if claimed {
                    return Err(already_buys(holder));
                }
                // The unfinished placement could never have been placed: the key is free.
                continue;
            }
            return self.record_order(&placing).await;
        }
        Err(contended(
            format!(
                "order key {:?} of buyer {}",
                order.idempotency_key, order.buyer_id
            ),
            CAS_ATTEMPTS,
        ))
    }

    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        self.read_order(&self.market.order, id).await
    }

    async fn mark_order_paid(&self, id: OrderId, at: Timestamp) -> StoreResult<Order> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .read_order(&self.market.order_serial, id)
                .await?
                .ok_or(StoreError::NotFound { entity: "order" })?;
            match current.status {
                OrderStatus::Paid => {
                    // Unchanged; its read tables again, for a payment that stopped before them.
                    self.index_order(&current).await?;
                    return Ok(current);
                }
                OrderStatus::Cancelled => {
                    return Err(StoreError::Conflict(format!("order {id} was cancelled")))
                }
                OrderStatus::PendingInvoice => {}
            }
            let values = (
                OrderStatus::Paid.as_str(),
                at.0,
                id,
                OrderStatus::PendingInvoice.as_str(),
            );
            if self.transact(&self.market.pay_order, values).await? {
                let paid = Order {
                    status: OrderStatus::Paid,
                    paid_at: Some(at),
                    ..current
                };
                self.index_order(&paid).await?;
                return Ok(paid);
            }
        }
        Err(contended(format!("order {id}"), CAS_ATTEMPTS))
    }

    async fn orders_of(&self, buyer: UserId, page: Page) -> StoreResult<(Vec<Order>, u64)> {
        let mut orders = self.buyer_orders(buyer).await?;
        orders.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        let total = orders.len() as u64;
        Ok((page_of(orders, page), total))
    }

    async fn list_orders(
        &self,
        status: Option<OrderStatus>,
        page: Page,
    ) -> StoreResult<(Vec<Order>, u64)> {
        let periods = self.periods(ORDERS_SCOPE).await?;
        let counts = try_join_all(
            periods
                .iter()
                .map(|&period| self.count_orders(status, period)),
        )
        .await?;
        let total = counts.iter().sum();
        // Periods in order, oldest first; within one, the clustering order (created_at, id)
        // is SQLite's `ORDER BY created_at, id` (same-version UUIDs compare as bytes).
        let (mut skip, mut wanted) = (page.offset, u64::from(page.limit));
        let mut orders = Vec::new();
        for (&period, &count) in periods.iter().zip(&counts) {
            if wanted == 0 {
                break;
            }
            if skip >= count {
                skip -= count;
                continue;
            }
            let first = self
                .first_orders(status, period, skip.saturating_add(wanted).min(count))
                .await?;
            let before = orders.len();
            orders.extend(
                first
                    .into_iter()
                    .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                    .take(usize::try_from(wanted).unwrap_or(usize::MAX)),
            );
            wanted -= (orders.len() - before) as u64;
            skip = 0;
        }
        Ok((orders, total))
    }

    async fn licenses_of(&self, buyer: UserId) -> StoreResult<Vec<License>> {
        let mut paid: Vec<Order> = self
            .buyer_orders(buyer)
            .await?
            .into_iter()
            .filter(|order| order.status == OrderStatus::Paid)
            .collect();
        paid.sort_by(|a, b| a.paid_at.cmp(&b.paid_at).then(a.id.cmp(&b.id)));
        Ok(paid.into_iter().map(|order| order.license()).collect())
    }

    async fn rate_listing(
        &self,
        listing: ListingId,
        buyer: UserId,
        stars: u8,
        at: Timestamp,
    ) -> StoreResult<Listing> {
        if !(1..=5).contains(&stars) {
            return Err(StoreError::Internal(format!("a rating of {stars} stars")));
        }
        let not_found = || StoreError::NotFound { entity: "listing" };
        let mut current = self
            .read_listing(&self.market.listing_serial, listing)
            .await?
            .ok_or_else(not_found)?;
        self.write(&self.market.rate, (listing, buyer, i32::from(stars), at.0))
            .await?;
        // The totals are recomputed after the rating is written and set only on the revision
        // they were decided from: the last to be set read every rating written before it.
        for _ in 0..CAS_ATTEMPTS {
            let (sum, count) = self.rating_totals(listing).await?;
            let revision = next_revision(current.revision);
            let values = (
                sum as i64,
                count as i64,
                revision,
                listing,
                current.revision,
            );
            if self
                .transact(&self.market.set_rating_totals, values)
                .await?
            {
                let rated = Listing {
                    rating_sum: sum,
                    rating_count: count,
                    ..current.listing
                };
                self.index_listing(&rated, revision).await?;
                return Ok(rated);
            }
            current = match self
                .read_listing(&self.market.listing_serial, listing)
                .await?
            {
                Some(current) => current,
                None => {
                    // Deleted meanwhile (with its jar): the rating goes with it.
                    self.write(&self.market.unrate, (listing, buyer)).await?;
                    return Err(not_found());
                }
            };
        }
        Err(contended(
            format!("ratings of listing {listing}"),
            CAS_ATTEMPTS,
        ))
    }
}

#[cfg(test)]
mod tests {
    use scylla::frame::response::result::ColumnType;
    use scylla::frame::response::result::NativeType::{
        BigInt, Boolean, Int, Text, Uuid as UuidType,
    };

    use super::super::tests::roundtrip;
    use super::*;

    fn listing(id: u128, price_minor: i64, created: i64, ratings: (u64, u64)) -> Listing {
        Listing {
            id: Uuid::from_u128(id),
            jar_id: Uuid::from_u128(100),
            seller_id: Uuid::from_u128(200),
            title: format!("Listing {id}"),
            description: "Curated knowledge".into(),
            price_minor,
            currency: "USD".into(),
            category: "science".into(),
            license_type: LicenseType::Personal,
            preview_enabled: true,
            status: ListingStatus::Active,
            rating_sum: ratings.0,
            rating_count: ratings.1,
            created_at: Timestamp(created),
            updated_at: Timestamp(created),
        }
    }

    fn query(sort: ListingSort, order: SortOrder) -> ListingQuery {
        crate::tests::listing_query(sort, order)
    }

    fn ids(listings: Vec<Listing>, query: &ListingQuery) -> (Vec<u128>, u64) {
        let (page, total) = browse(listings, query);
        (page.iter().map(|l| l.id.as_u128()).collect(), total)
    }

    #[test]
    fn price_ties_go_newest_first_then_by_id() {
        let listings = vec![
            listing(3, 500, 10, (0, 0)),
            listing(1, 500, 10, (0, 0)),
            listing(2, 500, 20, (0, 0)),
            listing(4, 100, 5, (0, 0)),
        ];
        let ascending = query(ListingSort::Price, SortOrder::Asc);
        assert_eq!(ids(listings.clone(), &ascending), (vec![4, 2, 1, 3], 4));
        // Only the price turns around; the tie-breaks do not.
        let descending = query(ListingSort::Price, SortOrder::Desc);
        assert_eq!(ids(listings, &descending), (vec![2, 1, 3, 4], 4));
    }

    #[test]
    fn creation_ties_go_by_id_whichever_the_direction() {
        let listings = vec![
            listing(2, 1, 10, (0, 0)),
            listing(1, 1, 10, (0, 0)),
            listing(3, 1, 5, (0, 0)),
        ];
        let newest = query(ListingSort::CreatedAt, SortOrder::Desc);
        assert_eq!(ids(listings.clone(), &newest).0, [1, 2, 3]);
        let oldest = query(ListingSort::CreatedAt, SortOrder::Asc);
        assert_eq!(ids(listings, &oldest).0, [3, 1, 2]);
    }

    #[test]
    fn unrated_listings_come_last_and_equal_means_favour_more_ratings() {
        let listings = vec![
            listing(1, 1, 1, (0, 0)),  // unrated
            listing(2, 1, 1, (7, 2)),  // 3.5
            listing(3, 1, 1, (14, 4)), // 3.5, more ratings
            listing(4, 1, 1, (5, 1)),  // 5.0
            listing(5, 1, 1, (1, 1)),  // 1.0
            listing(6, 1, 1, (0, 0)),  // unrated
            listing(7, 1, 1, (5, 1)),  // 5.0, same count: by id
        ];
        let best = query(ListingSort::Rating, SortOrder::Desc);
        assert_eq!(ids(listings.clone(), &best).0, [4, 7, 3, 2, 5, 1, 6]);
        let worst = query(ListingSort::Rating, SortOrder::Asc);
        assert_eq!(ids(listings.clone(), &worst).0, [5, 3, 2, 4, 7, 1, 6]);
        // A minimum: 3.5 exactly counts, unrated never matches (not even a minimum of 0).
        let at_least = ListingQuery {
            rating_min_centi: Some(350),
            ..best.clone()
        };
        assert_eq!(ids(listings.clone(), &at_least), (vec![4, 7, 3, 2], 4));
        let any_rated = ListingQuery {
            rating_min_centi: Some(0),
            ..best
        };
        assert_eq!(ids(listings, &any_rated).1, 5);
    }

    #[test]
    fn means_compare_as_sqlite_reals() {
        // 1/3 and 2/6 are the same double; 2/3 is above both.
        let listings = vec![
            listing(1, 1, 1, (1, 3)),
            listing(2, 1, 1, (2, 6)),
            listing(3, 1, 1, (2, 3)),
        ];
        let best = query(ListingSort::Rating, SortOrder::Desc);
        assert_eq!(ids(listings, &best).0, [3, 2, 1]);
    }

    #[test]
    fn filters_combine_and_count_before_paging() {
        let mut business = listing(1, 999, 1, (0, 0));
        business.category = "business".into();
        let mut dear = listing(2, 9_999, 2, (0, 0));
        dear.category = "business".into();
        let mut withdrawn = listing(3, 5_000, 3, (0, 0));
        withdrawn.status = ListingStatus::Withdrawn;
        let science = listing(4, 4_950, 4, (0, 0));
        let listings = vec![business, dear, withdrawn, science];
        let by_price = query(ListingSort::Price, SortOrder::Asc);
        assert_eq!(ids(listings.clone(), &by_price), (vec![1, 4, 2], 3));
        let filtered = ListingQuery {
            category: Some("business".into()),
            price_min_minor: Some(1_000),
            ..by_price.clone()
        };
        assert_eq!(ids(listings.clone(), &filtered), (vec![2], 1));
        let range = ListingQuery {
            price_min_minor: Some(999),
            price_max_minor: Some(4_950),
            ..by_price.clone()
        };
        assert_eq!(ids(listings.clone(), &range), (vec![1, 4], 2));
        let second = ListingQuery {
            page: Page {
                limit: 1,
                offset: 1,
            },
            ..by_price.clone()
        };
        assert_eq!(ids(listings.clone(), &second), (vec![4], 3));
        let beyond = ListingQuery {
            page: Page {
                limit: 10,
                offset: u64::MAX,
            },
            ..by_price.clone()
        };
        assert_eq!(ids(listings.clone(), &beyond), (vec![], 3));
        let none = ListingQuery {
            page: Page {
                limit: 0,
                offset: 0,
            },
            ..by_price
        };
        assert_eq!(ids(listings, &none), (vec![], 3));
    }

    #[test]
    fn search_folds_case_as_sqlite_does() {
        let mut ascii = listing(1, 1, 1, (0, 0));
        ascii.title = "Jar for SCIENCE".into();
        let mut in_description = listing(2, 1, 2, (0, 0));
        in_description.description = "All about Science".into();
        let mut accented = listing(3, 1, 3, (0, 0));
        accented.title = "ÉCOLE".into();
        let mut lower_accented = listing(4, 1, 4, (0, 0));
        lower_accented.title = "une école".into();
        let listings = vec![ascii, in_description, accented, lower_accented];
        let search = |text: &str| ListingQuery {
            search: Some(text.into()),
            ..query(ListingSort::CreatedAt, SortOrder::Asc)
        };
        assert_eq!(ids(listings.clone(), &search("sCiEnCe")).0, [1, 2]);
        // lower() folds ASCII only: an upper-case É in a title matches no search.
        assert_eq!(ids(listings.clone(), &search("ÉCOLE")).0, [4]);
        assert_eq!(ids(listings.clone(), &search("école")).0, [4]);
        // instr(x, '') is 1: the empty search matches everything.
        assert_eq!(ids(listings, &search("")).1, 4);
    }

    /// The same listings and queries on the SQLite store, the reference: every answer of
    /// `browse` must be SQLite's.
    #[tokio::test]
    async fn browsing_answers_what_sqlite_answers() {
        use crate::{HoneyJar, KnowledgeStore, SqliteStore};

        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(dir.path().join("sting.db"))
            .await
            .unwrap();
        let jar = HoneyJar {
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            ..crate::tests::sample_jar(Uuid::new_v4())
        };
        sqlite.create_jar(&jar).await.unwrap();
        // Price, creation time, (rating sum, count), category, title.
        type Shape = (i64, i64, (u64, u64), &'static str, &'static str);
        let shapes: [Shape; 14] = [
            (500, 10, (0, 0), "a", "Science jar"),
            (500, 10, (7, 2), "a", "ÉCOLE"),
            (500, 20, (14, 4), "b", "une école"),
            (100, 5, (5, 1), "a", "SCIENCE"),
            (100, 5, (1, 3), "b", "plain"),
            (900, 30, (2, 6), "a", "plain"),
            (900, 30, (2, 3), "b", "École"),
            (0, 30, (10, 2), "a", "x"),
            (0, 1, (0, 0), "b", "x"),
            (250, 1, (5, 1), "a", "scientific"),
            (250, 2, (3, 1), "a", "y"),
            (250, 2, (0, 0), "b", "y"),
            (700, 40, (6, 2), "a", "withdrawn"),
            (700, 40, (1, 1), "a", "z"),
        ];
        let mut listings = Vec::new();
        for (i, (price, created, ratings, category, title)) in shapes.into_iter().enumerate() {
            let mut listing = listing(0, price, created, ratings);
            listing.id = Uuid::new_v4();
            listing.jar_id = jar.id;
            listing.category = category.into();
            listing.title = title.into();
            if title == "withdrawn" {
                listing.status = ListingStatus::Withdrawn;
            }
            if i % 3 == 0 {
                listing.description = "About Science and more".into();
            }
            sqlite.create_listing(&listing).await.unwrap();
            listings.push(listing);
        }
        let filters: Vec<fn(&mut ListingQuery)> = vec![
            |_| {},
            |q| q.category = Some("a".into()),
            |q| {
                q.price_min_minor = Some(100);
                q.price_max_minor = Some(500);
            },
            |q| q.rating_min_centi = Some(0),
            |q| q.rating_min_centi = Some(350),
            |q| q.rating_min_centi = Some(500),
            |q| q.search = Some("sci".into()),
            |q| q.search = Some("École".into()),
            |q| q.search = Some("école".into()),
            |q| q.search = Some(String::new()),
            |q| {
                q.category = Some("b".into());
                q.search = Some("E".into());
            },
        ];
        let pages = [(50, 0), (3, 2), (0, 0), (5, 100), (4, 9)];
        for sort in [
            ListingSort::Price,
            ListingSort::Rating,
            ListingSort::CreatedAt,
        ] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                for filter in &filters {
                    for (limit, offset) in pages {
                        let mut q = query(sort, order);
                        filter(&mut q);
                        q.page = Page { limit, offset };
                        let expected = sqlite.list_listings(&q).await.unwrap();
                        assert_eq!(browse(listings.clone(), &q), expected, "{q:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_paid_state_is_stamped_after_the_unpaid_one() {
        let order = Order {
            id: Uuid::from_u128(1),
            listing_id: Uuid::from_u128(2),
            jar_id: Uuid::from_u128(3),
            buyer_id: Uuid::from_u128(4),
            idempotency_key: "k".into(),
            amount_minor: 100,
            currency: "USD".into(),
            license_type: LicenseType::SingleUse,
            payment_method: "invoice".into(),
            billing: "{}".into(),
            status: OrderStatus::PendingInvoice,
            created_at: Timestamp(5_000),
            paid_at: None,
        };
        let pending = order_state_timestamp(&order);
        assert_eq!(pending, 5_000_000);
        for paid_at in [Timestamp(6_000), Timestamp(5_000), Timestamp(1)] {
            let paid = Order {
                status: OrderStatus::Paid,
                paid_at: Some(paid_at),
                ..order.clone()
            };
            assert!(order_state_timestamp(&paid) > pending, "{paid_at:?}");
        }
        assert!(next_revision(i64::MAX - 1) == i64::MAX);
        assert!(next_revision(0) > 0);
    }

    #[test]
    fn periods_are_thirty_days() {
        assert_eq!(period_of(Timestamp(0)), 0);
        assert_eq!(period_of(Timestamp(PERIOD_MS - 1)), 0);
        assert_eq!(period_of(Timestamp(PERIOD_MS)), 1);
        assert_eq!(period_of(Timestamp(-1)), -1);
    }

    /// The column specs of a `*_COLUMNS` list, with their types in order.
    fn specs(
        columns: &'static str,
        types: &[ColumnType<'static>],
    ) -> Vec<(&'static str, ColumnType<'static>)> {
        let names: Vec<&str> = columns.split(',').map(str::trim).collect();
        assert_eq!(names.len(), types.len(), "{columns}");
        names.into_iter().zip(types.iter().cloned()).collect()
    }

    /// The columns `CREATE TABLE ... {table}` defines, in order.
    fn table_columns(table: &str) -> Vec<String> {
        let head = format!("CREATE TABLE IF NOT EXISTS {table} (");
        let statement = MIGRATION
            .statements
            .iter()
            .find(|s| s.starts_with(&head))
            .unwrap_or_else(|| panic!("no table {table}"));
        statement[head.len()..]
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("PRIMARY KEY") && *line != ")")
            .map(|line| line.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn written_columns_are_every_column_of_their_table() {
        for (table, columns) in [
            ("listings", LISTING_COLUMNS),
            ("active_listings", ACTIVE_LISTING_COLUMNS),
            ("orders", ORDER_COLUMNS),
            ("order_keys", ORDER_KEY_COLUMNS),
            ("orders_by_buyer", ORDER_COLUMNS),
            ("orders_by_period", FILED_ORDER_COLUMNS),
            ("orders_by_status", FILED_ORDER_COLUMNS),
        ] {
            let mut written: Vec<String> =
                columns.split(',').map(|c| c.trim().to_owned()).collect();
            let mut defined = table_columns(table);
            written.sort();
            defined.sort();
            assert_eq!(written, defined, "{table}");
        }
    }

    #[test]
    fn listing_rows_roundtrip_through_the_driver_serialization() {
        let uuid = ColumnType::Native(UuidType);
        let (text, bigint, boolean) = (
            ColumnType::Native(Text),
            ColumnType::Native(BigInt),
            ColumnType::Native(Boolean),
        );
        let sample = listing(1, 4_950, 1_700_000_000_000, (7, 2));
        let row = ListingRow::new(&sample, 1_700_000_000_000_123);
        let columns = specs(
            LISTING_COLUMNS,
            &[
                uuid.clone(),
                uuid.clone(),
                uuid.clone(),
                text.clone(),
                text.clone(),
                bigint.clone(),
                text.clone(),
                text.clone(),
                text.clone(),
                boolean.clone(),
                text.clone(),
                bigint.clone(),
                bigint.clone(),
                bigint.clone(),
                bigint.clone(),
                bigint.clone(),
            ],
        );
        let back = roundtrip(&row, &columns);
        assert_eq!(back, row);
        let stored = back.stored().unwrap();
        assert_eq!(
            (stored.listing, stored.revision),
            (sample.clone(), 1_700_000_000_000_123)
        );

        let active = ActiveListingRow::new(&sample);
        let columns = specs(
            ACTIVE_LISTING_COLUMNS,
            &[
                bigint.clone(),
                bigint.clone(),
                uuid.clone(),
                uuid.clone(),
                uuid.clone(),
                text.clone(),
                text.clone(),
                bigint.clone(),
                text.clone(),
                text.clone(),
                text.clone(),
                boolean,
                bigint.clone(),
                bigint.clone(),
                bigint.clone(),
            ],
        );
        let back = roundtrip(&active, &columns);
        assert_eq!(back, active);
        assert_eq!(back.into_listing().unwrap(), sample);

        let link = JarListingRow {
            listing_id: sample.id,
        };
        assert_eq!(roundtrip(&link, &[("listing_id", uuid)]), link);
        let period = PeriodRow { period: -3 };
        assert_eq!(roundtrip(&period, &[("period", bigint)]), period);
        let stars = StarsRow { stars: 4 };
        assert_eq!(
            roundtrip(&stars, &[("stars", ColumnType::Native(Int))]),
            stars
        );
    }

    #[test]
    fn order_rows_roundtrip_through_the_driver_serialization() {
        let uuid = ColumnType::Native(UuidType);
        let (text, bigint) = (ColumnType::Native(Text), ColumnType::Native(BigInt));
        let order_types = [
            uuid.clone(),
            uuid.clone(),
            uuid.clone(),
            uuid.clone(),
            text.clone(),
            bigint.clone(),
            text.clone(),
            text.clone(),
            text.clone(),
            text.clone(),
            text.clone(),
            bigint.clone(),
            bigint.clone(),
        ];
        let order = Order {
            id: Uuid::from_u128(1),
            listing_id: Uuid::from_u128(2),
            jar_id: Uuid::from_u128(3),
            buyer_id: Uuid::from_u128(4),
            idempotency_key: "key-1".into(),
            amount_minor: 2_500,
            currency: "EUR".into(),
            license_type: LicenseType::SingleUse,
            payment_method: "invoice".into(),
            billing: r#"{"name":"Ann"}"#.into(),
            status: OrderStatus::Paid,
            created_at: Timestamp(5_000),
            paid_at: Some(Timestamp(6_000)),
        };
        for order in [
            order.clone(),
            Order {
                status: OrderStatus::PendingInvoice,
                paid_at: None,
                ..order.clone()
            },
        ] {
            let row = OrderRow::new(&order);
            let back = roundtrip(&row, &specs(ORDER_COLUMNS, &order_types));
            assert_eq!(back, row);
            assert_eq!(back.into_order().unwrap(), order);
            let key = OrderKeyRow::new(&order);
            let back = roundtrip(&key, &specs(ORDER_KEY_COLUMNS, &order_types));
            assert_eq!(back, key);
            assert_eq!(back.into_order().unwrap(), order);
        }
        let open = OpenOrderRow {
            order_id: order.id,
            idempotency_key: "key-1".into(),
        };
        assert_eq!(
            roundtrip(&open, &[("order_id", uuid), ("idempotency_key", text)]),
            open
        );
    }

    #[test]
    fn unknown_spellings_are_corrupt_rows() {
        let mut row = ListingRow::new(&listing(1, 1, 1, (0, 0)), 1);
        row.status = "sold".into();
        assert!(matches!(row.stored(), Err(StoreError::Internal(_))));
        let mut active = ActiveListingRow::new(&listing(1, 1, 1, (0, 0)));
        active.license_type = "forever".into();
        assert!(matches!(
            active.into_listing(),
            Err(StoreError::Internal(_))
        ));
    }
}
