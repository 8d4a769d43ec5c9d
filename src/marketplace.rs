//! The honey-jar marketplace: owners list their jars, buyers purchase a license to search and
//! ask them (see `docs/marketplace.md`).
//!
//! Money is kept in integer minor units (cents); prices arrive as decimal text or JSON numbers
//! with at most two decimals and are converted exactly, never through a float. Payments go
//! through a [`PaymentProvider`]; the built-in [`InvoiceProvider`] records each order as
//! `pending_invoice` for an admin to mark paid: no card processor is integrated.

use std::sync::Arc;

use sting_actors::conversation::shorten;
use sting_actors::session::Identity;
use sting_store::{
    LicenseType, Listing, ListingId, ListingQuery, ListingSort, ListingStatus, Order, OrderId,
    OrderStatus, Page, SortOrder, Store, StoreError, Timestamp, UserId,
};
use uuid::Uuid;

use crate::knowledge::{KnowledgeError, KnowledgeService};

/// Failures of marketplace operations, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Already bought, or no longer for sale.
    #[error("{message}")]
    Conflict {
        message: String,
        /// The order that already exists, when there is one.
        order: Option<OrderId>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Knowledge(#[from] KnowledgeError),
}

type Result<T> = std::result::Result<T, MarketError>;

/// Takes an order to payment. Implementations talk to a payment processor; the answer is the
/// order's status once placed.
pub trait PaymentProvider: Send + Sync + 'static {
    /// The provider's name, recorded with its orders.
    fn name(&self) -> &'static str;
    /// The status a new order starts in.
    fn place(&self, order: &Order) -> OrderStatus;
}

/// Orders are invoiced: they wait as `pending_invoice` until an admin marks them paid.
pub struct InvoiceProvider;

impl PaymentProvider for InvoiceProvider {
    fn name(&self) -> &'static str {
        "invoice"
    }

    fn place(&self, _order: &Order) -> OrderStatus {
        OrderStatus::PendingInvoice
    }
}

const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_CATEGORY_CHARS: usize = 64;
/// The highest price accepted, in minor units (one million in major units).
const MAX_PRICE_MINOR: i64 = 100_000_000;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Payment methods a purchase may name (all end up in the provider).
pub const PAYMENT_METHODS: [&str; 3] = ["credit_card", "invoice", "bank_transfer"];
/// Results and snippet length of a preview search.
pub const PREVIEW_RESULTS: usize = 5;
pub const PREVIEW_SNIPPET_CHARS: usize = 160;

/// Parses a price with at most two decimals into minor units, exactly ("99.99" → 9999).
pub fn parse_price(text: &str) -> std::result::Result<i64, String> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || fraction.len() > 2 {
        return Err("must be a non-negative amount with at most two decimals".into());
    }
    let whole: i64 = whole.parse().map_err(|_| "is too large".to_owned())?;
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    let minor = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .filter(|m| *m <= MAX_PRICE_MINOR)
        .ok_or_else(|| format!("must be at most {}.00", MAX_PRICE_MINOR / 100))?;
    Ok(minor)
}

/// Minor units as a decimal string ("9999" → "99.99").
pub fn format_price(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// A listing to create.
#[derive(Debug, Clone)]
pub struct NewListing {
    pub jar_id: Uuid,
    pub title: String,
    pub description: String,
    pub price_minor: i64,
    pub category: String,
    pub license_type: LicenseType,
    pub preview_enabled: bool,
}

/// Changes to a listing; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct ListingPatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price_minor: Option<i64>,
    pub category: Option<String>,
    pub license_type: Option<LicenseType>,
    pub preview_enabled: Option<bool>,
}

/// A purchase as asked.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub idempotency_key: String,
    pub payment_method: String,
    /// The billing details, checked (name, email, address, city, state, zip).
    pub billing: serde_json::Value,
}

/// A preview result: never more than a title and a short snippet.
#[derive(Debug, Clone)]
pub struct PreviewHit {
    pub title: String,
    pub snippet: String,
    pub page: Option<u32>,
    pub score: f32,
}

pub struct MarketplaceService {
    store: Arc<dyn Store>,
    knowledge: Arc<KnowledgeService>,
    payments: Arc<dyn PaymentProvider>,
}

impl MarketplaceService {
    pub fn new(
        store: Arc<dyn Store>,
        knowledge: Arc<KnowledgeService>,
        payments: Arc<dyn PaymentProvider>,
    ) -> MarketplaceService {
        MarketplaceService {
            store,
            knowledge,
            payments,
        }
    }

    /// Lists a jar the caller owns.
    pub async fn create_listing(&self, who: &Identity, new: NewListing) -> Result<Listing> {
        let jar = self.knowledge.readable(who, new.jar_id).await?;
        if jar.owner_id != who.user_id {
            return Err(MarketError::Forbidden("only the jar's owner can list it"));
        }
        let now = Timestamp::now();
        let listing = Listing {
            id: Uuid::new_v4(),
            jar_id: jar.id,
            seller_id: who.user_id,
            title: text("title", &new.title, MAX_TITLE_CHARS, true)?,
            description: text(
                "description",
                &new.description,
                MAX_DESCRIPTION_CHARS,
                false,
            )?,
            price_minor: new.price_minor,
            currency: "USD".into(),
            category: category(&new.category)?,
            license_type: new.license_type,
            preview_enabled: new.preview_enabled,
            status: ListingStatus::Active,
            rating_sum: 0,
            rating_count: 0,
            created_at: now,
            updated_at: now,
        };
        self.store.create_listing(&listing).await?;
        tracing::info!(listing = %listing.id, jar = %jar.id, price_minor = listing.price_minor, "jar listed");
        Ok(listing)
    }

    /// One listing, active or withdrawn (anyone may look).
    pub async fn listing(&self, id: ListingId) -> Result<Listing> {
        self.store
            .listing(id)
            .await?
            .ok_or(MarketError::NotFound("listing"))
    }

    /// One page of active listings.
    pub async fn list(&self, query: &ListingQuery) -> Result<(Vec<Listing>, u64)> {
        Ok(self.store.list_listings(query).await?)
    }

    /// Changes a listing (its seller or an admin).
    pub async fn update_listing(
        &self,
        who: &Identity,
        id: ListingId,
        patch: ListingPatch,
    ) -> Result<Listing> {
        let mut listing = self.managed(who, id).await?;
        if let Some(title) = patch.title {
            listing.title = text("title", &title, MAX_TITLE_CHARS, true)?;
        }
        if let Some(description) = patch.description {
            listing.description = text("description", &description, MAX_DESCRIPTION_CHARS, false)?;
        }
        if let Some(category_name) = patch.category {
            listing.category = category(&category_name)?;
        }
        listing.price_minor = patch.price_minor.unwrap_or(listing.price_minor);
        listing.license_type = patch.license_type.unwrap_or(listing.license_type);
        listing.preview_enabled = patch.preview_enabled.unwrap_or(listing.preview_enabled);
        listing.updated_at = Timestamp::now();
        self.store.update_listing(&listing).await?;
        Ok(listing)
    }

    /// Takes a listing off the market; licenses already granted stay valid.
    pub async fn withdraw(&self, who: &Identity, id: ListingId) -> Result<Listing> {
        let mut listing = self.managed(who, id).await?;
        listing.status = ListingStatus::Withdrawn;
        listing.updated_at = Timestamp::now();
        self.store.update_listing(&listing).await?;
        tracing::info!(listing = %id, "listing withdrawn");
        Ok(listing)
    }

    /// Buys a listing. The same idempotency key from the same buyer returns the first order
    /// and charges nothing again.
    pub async fn purchase(
        &self,
        who: &Identity,
        id: ListingId,
        purchase: Purchase,
    ) -> Result<Order> {
        let key = purchase.idempotency_key.trim();
        if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(MarketError::Invalid {
                field: "idempotency_key",
                reason: format!("must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            });
        }
        if !PAYMENT_METHODS.contains(&purchase.payment_method.as_str()) {
            return Err(MarketError::Invalid {
                field: "payment_method",
                reason: format!("must be one of {}", PAYMENT_METHODS.join(", ")),
            });
        }
        check_billing(&purchase.billing)?;
        let listing = self.listing(id).await?;
        if listing.seller_id == who.user_id {
            return Err(MarketError::Forbidden(
                "sellers cannot buy their own listing",
            ));
        }
        let mut order = Order {
            id: Uuid::new_v4(),
            listing_id: listing.id,
            jar_id: listing.jar_id,
            buyer_id: who.user_id,
            idempotency_key: key.to_owned(),
            amount_minor: listing.price_minor,
            currency: listing.currency.clone(),
            license_type: listing.license_type,
            payment_method: purchase.payment_method,
            billing: purchase.billing.to_string(),
            status: OrderStatus::PendingInvoice,
            created_at: Timestamp::now(),
            paid_at: None,
        };
        // The store answers a retry of an earlier purchase itself; for a listing withdrawn
        // since, the first order is looked up here instead.
        if listing.status != ListingStatus::Active {
            if let Some(first) = self.existing(who.user_id, key).await? {
                return Ok(first);
            }
            return Err(MarketError::Conflict {
                message: "the listing is no longer for sale".into(),
                order: None,
            });
        }
        order.status = self.payments.place(&order);
        if order.status == OrderStatus::Paid {
            order.paid_at = Some(order.created_at);
        }
        match self.store.place_order(&order).await {
            Ok(placed) => {
                if placed.id == order.id {
                    tracing::info!(order = %placed.id, listing = %id, provider = self.payments.name(), status = placed.status.as_str(), "order placed");
                }
                Ok(placed)
            }
            Err(StoreError::Conflict(message)) => Err(MarketError::Conflict {
                message,
                order: self.open_order(who.user_id, id).await?,
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Marks an order paid (admins: the built-in invoice provider has no processor to ask).
    pub async fn mark_paid(&self, id: OrderId) -> Result<Order> {
        match self.store.mark_order_paid(id, Timestamp::now()).await {
            Err(StoreError::NotFound { .. }) => Err(MarketError::NotFound("order")),
            Err(StoreError::Conflict(message)) => Err(MarketError::Conflict {
                message,
                order: Some(id),
            }),
            result => Ok(result?),
        }
    }

    /// Every buyer's orders, oldest first, only those with `status` when given (admins: the
    /// invoices to settle).
    pub async fn all_orders(
        &self,
        status: Option<OrderStatus>,
        page: Page,
    ) -> Result<(Vec<Order>, u64)> {
        Ok(self.store.list_orders(status, page).await?)
    }

    /// The caller's orders, newest first.
    pub async fn purchases(&self, who: &Identity, page: Page) -> Result<(Vec<Order>, u64)> {
        Ok(self.store.orders_of(who.user_id, page).await?)
    }

    /// Rates a listing 1–5 (buyers with a paid order only; a second rating replaces the first).
    pub async fn rate(&self, who: &Identity, id: ListingId, stars: u8) -> Result<Listing> {
        if !(1..=5).contains(&stars) {
            return Err(MarketError::Invalid {
                field: "rating",
                reason: "must be 1 to 5".into(),
            });
        }
        self.listing(id).await?;
        let licensed = self
            .store
            .licenses_of(who.user_id)
            .await?
            .iter()
            .any(|license| license.listing_id == id);
        if !licensed {
            return Err(MarketError::Forbidden(
                "only buyers with a paid order can rate",
            ));
        }
        Ok(self
            .store
            .rate_listing(id, who.user_id, stars, Timestamp::now())
            .await?)
    }

    /// Searches a listing's jar for anyone signed in, when its seller enabled previews: titles
    /// and snippets only.
    pub async fn preview(&self, id: ListingId, query: &str) -> Result<Vec<PreviewHit>> {
        let listing = self.listing(id).await?;
        if !listing.preview_enabled || listing.status != ListingStatus::Active {
            return Err(MarketError::Forbidden("this listing has no preview"));
        }
        let query = text("query", query, 500, true)?;
        let hits = self
            .knowledge
            .preview(listing.jar_id, &query, PREVIEW_RESULTS)
            .await?;
        Ok(hits
            .into_iter()
            .map(|hit| PreviewHit {
                title: hit.title,
                snippet: shorten(&hit.text, PREVIEW_SNIPPET_CHARS),
                page: hit.page,
                score: hit.score,
            })
            .collect())
    }

    /// A listing the caller may change.
    async fn managed(&self, who: &Identity, id: ListingId) -> Result<Listing> {
        let listing = self.listing(id).await?;
        if listing.seller_id != who.user_id && !who.is_admin() {
            return Err(MarketError::Forbidden(
                "only the seller can change a listing",
            ));
        }
        Ok(listing)
    }

    async fn existing(&self, buyer: UserId, key: &str) -> Result<Option<Order>> {
        Ok(self
            .orders(buyer)
            .await?
            .into_iter()
            .find(|order| order.idempotency_key == key))
    }

    async fn open_order(&self, buyer: UserId, listing: ListingId) -> Result<Option<OrderId>> {
        Ok(self
            .orders(buyer)
            .await?
            .into_iter()
            .find(|o| o.listing_id == listing && o.status != OrderStatus::Cancelled)
            .map(|o| o.id))
    }

    /// A buyer's orders (bounded by what one user buys).
    async fn orders(&self, buyer: UserId) -> Result<Vec<Order>> {
        let page = Page {
            limit: 1000,
            offset: 0,
        };
        Ok(self.store.orders_of(buyer, page).await?.0)
    }
}

/// Listing sorts as the API spells them.
pub fn parse_sort(sort: Option<&str>) -> std::result::Result<ListingSort, String> {
    match sort.unwrap_or("created_at") {
        "price" => Ok(ListingSort::Price),
        "rating" => Ok(ListingSort::Rating),
        "created_at" => Ok(ListingSort::CreatedAt),
        _ => Err("must be price, rating or created_at".into()),
    }
}

/// The default direction of a sort: cheapest, best rated, newest first.
pub fn default_order(sort: ListingSort) -> SortOrder {
    match sort {
        ListingSort::Price => SortOrder::Asc,
        ListingSort::Rating | ListingSort::CreatedAt => SortOrder::Desc,
    }
}

fn text(field: &'static str, value: &str, max: usize, required: bool) -> Result<String> {
    let value = value.trim();
    let chars = value.chars().count();
    if (required && chars == 0) || chars > max {
        let least = usize::from(required);
        return Err(MarketError::Invalid {
            field,
            reason: format!("must have {least} to {max} characters"),
        });
    }
    Ok(value.to_owned())
}

fn category(value: &str) -> Result<String> {
    let value = text("category", value, MAX_CATEGORY_CHARS, true)?.to_lowercase();
    if !value
        .chars()
        .all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
    {
        return Err(MarketError::Invalid {
            field: "category",
            reason: "letters, digits, spaces, - and _ only".into(),
        });
    }
    Ok(value)
}

/// Billing details need a name, a valid email, an address, a city and a postal code (state is
/// optional: not every country has one).
fn check_billing(billing: &serde_json::Value) -> Result<()> {
    let field = |name: &str| billing.get(name).and_then(|v| v.as_str()).map(str::trim);
    for (name, path) in [
        ("name", "billing_address.name"),
        ("address", "billing_address.address"),
        ("city", "billing_address.city"),
        ("zip", "billing_address.zip"),
    ] {
        match field(name) {
            Some(value) if !value.is_empty() && value.chars().count() <= 200 => {}
            _ => {
                return Err(MarketError::Invalid {
                    field: path,
                    reason: "is required (at most 200 characters)".into(),
                })
            }
        }
    }
    let email = field("email").unwrap_or_default();
    if !email_address::EmailAddress::is_valid(email) {
        return Err(MarketError::Invalid {
            field: "billing_address.email",
            reason: "must be a valid email address".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_exact_minor_units() {
        assert_eq!(parse_price("99.99"), Ok(9999));
        assert_eq!(parse_price("0.1"), Ok(10));
        assert_eq!(parse_price("12"), Ok(1200));
        assert_eq!(parse_price("1000000.00"), Ok(100_000_000));
        for bad in [
            "",
            "-1",
            "1.999",
            "1e3",
            "abc",
            "1.",
            ".5",
            "1000000.01",
            "99999999999999999999",
        ] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
        assert_eq!(format_price(9999), "99.99");
        assert_eq!(format_price(5), "0.05");
    }

    #[test]
    fn billing_needs_the_essentials() {
        let good = serde_json::json!({"name": "Jo", "email": "jo@example.com", "address": "1 Main St",
            "city": "Town", "zip": "12345"});
        assert!(check_billing(&good).is_ok());
        let mut bad = good.clone();
        bad["email"] = "not-an-email".into();
        assert!(matches!(
            check_billing(&bad),
            Err(MarketError::Invalid {
                field: "billing_address.email",
                ..
            })
        ));
        let mut missing = good;
        missing.as_object_mut().unwrap().remove("zip");
        assert!(check_billing(&missing).is_err());
    }
}
