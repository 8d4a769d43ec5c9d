//! Passkey SQL: registered credentials and the WebAuthn ceremonies in flight.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::knowledge::bad_value;
use super::{map_err, parse_uuid};
use crate::{Ceremony, CeremonyKind, Passkey, StoreError, StoreResult, Timestamp, UserId};

const PASSKEY_COLUMNS: &str = "credential_id, user_id, user_handle, name, public_key, sign_count,
    transports, credential, created_at, last_used_at";

fn passkey_from_row(row: &Row<'_>) -> rusqlite::Result<Passkey> {
    let transports: String = row.get(6)?;
    Ok(Passkey {
        credential_id: row.get(0)?,
        user_id: parse_uuid(&row.get::<_, String>(1)?)?,
        user_handle: row.get(2)?,
        name: row.get(3)?,
        public_key: row.get(4)?,
        sign_count: row.get(5)?,
        transports: transports
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        credential: row.get(7)?,
        created_at: Timestamp(row.get(8)?),
        last_used_at: row.get::<_, Option<i64>>(9)?.map(Timestamp),
    })
}

pub(super) fn create_passkey(tx: &Connection, passkey: &Passkey) -> StoreResult<()> {
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO passkeys ({PASSKEY_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING"
            ),
            params![
                passkey.credential_id,
                passkey.user_id.to_string(),
                passkey.user_handle,
                passkey.name,
                passkey.public_key,
                passkey.sign_count,
                passkey.transports.join(","),
                passkey.credential,
                passkey.created_at.0,
                passkey.last_used_at.map(|t| t.0),
            ],
        )
        .map_err(map_err)?;
    if inserted == 0 {
        return Err(StoreError::Conflict(
            "this passkey is registered already".into(),
        ));
    }
    Ok(())
}

pub(super) fn passkey(conn: &Connection, credential_id: &str) -> rusqlite::Result<Option<Passkey>> {
    conn.query_row(
        &format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?1"),
        [credential_id],
        passkey_from_row,
    )
    .optional()
}

pub(super) fn passkeys_of(conn: &Connection, user_id: UserId) -> rusqlite::Result<Vec<Passkey>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ?1
         ORDER BY created_at, credential_id"
    ))?;
    let rows = statement.query_map([user_id.to_string()], passkey_from_row)?;
    rows.collect()
}

pub(super) fn record_passkey_use(
    tx: &Connection,
    credential_id: &str,
    sign_count: u32,
    credential: &str,
    at: Timestamp,
) -> StoreResult<()> {
    let updated = tx
        .execute(
            "UPDATE passkeys SET sign_count = ?2, credential = ?3, last_used_at = ?4
             WHERE credential_id = ?1
               AND (sign_count < ?2 OR (sign_count = 0 AND ?2 = 0))",
            params![credential_id, sign_count, credential, at.0],
        )
        .map_err(map_err)?;
    if updated == 1 {
        return Ok(());
    }
    match passkey(tx, credential_id).map_err(map_err)? {
        None => Err(StoreError::NotFound { entity: "passkey" }),
        Some(stored) => Err(StoreError::Conflict(format!(
            "signature counter {sign_count} does not go above {}",
            stored.sign_count
        ))),
    }
}

pub(super) fn delete_passkey(
    tx: &Connection,
    user_id: UserId,
    credential_id: &str,
) -> StoreResult<bool> {
    let deleted = tx
        .execute(
            "DELETE FROM passkeys WHERE credential_id = ?1 AND user_id = ?2",
            params![credential_id, user_id.to_string()],
        )
        .map_err(map_err)?;
    Ok(deleted == 1)
}

pub(super) fn put_ceremony(
    tx: &Connection,
    ceremony: &Ceremony,
    now: Timestamp,
) -> StoreResult<()> {
    tx.execute(
        "DELETE FROM webauthn_ceremonies WHERE expires_at <= ?1",
        [now.0],
    )
    .map_err(map_err)?;
    tx.execute(
        "INSERT OR REPLACE INTO webauthn_ceremonies (id, kind, user_id, binding, state, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ceremony.id,
            ceremony.kind.as_str(),
            ceremony.user_id.to_string(),
            ceremony.binding,
            ceremony.state,
            ceremony.expires_at.0,
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

pub(super) fn take_ceremony(
    tx: &Connection,
    id: &str,
    now: Timestamp,
) -> StoreResult<Option<Ceremony>> {
    let ceremony = tx
        .query_row(
            "DELETE FROM webauthn_ceremonies WHERE id = ?1
             RETURNING id, kind, user_id, binding, state, expires_at",
            [id],
            |row| {
                let kind: String = row.get(1)?;
                Ok(Ceremony {
                    id: row.get(0)?,
                    kind: CeremonyKind::parse(&kind)
                        .ok_or_else(|| bad_value(1, format!("ceremony kind {kind}")))?,
                    user_id: parse_uuid(&row.get::<_, String>(2)?)?,
                    binding: row.get(3)?,
                    state: row.get(4)?,
                    expires_at: Timestamp(row.get(5)?),
                })
            },
        )
        .optional()
        .map_err(map_err)?;
    Ok(ceremony.filter(|c| c.expires_at > now))
}
