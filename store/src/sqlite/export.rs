//! Reads for `sting store copy` that the store traits do not offer, because nothing but a copy
//! needs them: every session, every listing (withdrawn ones too) and every rating, in pages
//! ordered by primary key.

use rusqlite::params;

use super::marketplace::{listing_from_row, LISTING_COLUMNS};
use super::{parse_uuid, session_from_row, SqliteStore, SESSION_COLUMNS};
use crate::{Listing, Page, Rating, Session, StoreResult, Timestamp};

impl SqliteStore {
    /// A page of all sessions, by token hash.
    pub async fn export_sessions(&self, page: Page) -> StoreResult<Vec<Session>> {
        self.read(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY token_hash LIMIT ?1 OFFSET ?2"
            ))?;
            let rows =
                statement.query_map(params![page.limit, page.offset as i64], session_from_row)?;
            rows.collect()
        })
        .await
    }

    /// A page of all listings, active or withdrawn, by id.
    pub async fn export_listings(&self, page: Page) -> StoreResult<Vec<Listing>> {
        self.read(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {LISTING_COLUMNS} FROM listings ORDER BY id LIMIT ?1 OFFSET ?2"
            ))?;
            let rows =
                statement.query_map(params![page.limit, page.offset as i64], listing_from_row)?;
            rows.collect()
        })
        .await
    }

    /// A page of all ratings, by listing and buyer.
    pub async fn export_ratings(&self, page: Page) -> StoreResult<Vec<Rating>> {
        self.read(move |conn| {
            let mut statement = conn.prepare(
                "SELECT listing_id, buyer_id, stars, updated_at FROM ratings
                 ORDER BY listing_id, buyer_id LIMIT ?1 OFFSET ?2",
            )?;
            let rows = statement.query_map(params![page.limit, page.offset as i64], |row| {
                Ok(Rating {
                    listing_id: parse_uuid(&row.get::<_, String>(0)?)?,
                    buyer_id: parse_uuid(&row.get::<_, String>(1)?)?,
                    stars: row.get(2)?,
                    rated_at: Timestamp(row.get(3)?),
                })
            })?;
            rows.collect()
        })
        .await
    }
}
