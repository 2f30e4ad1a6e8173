//! How the SQLite store's rows map to domain values and back: roles and
//! integers, account rows, each [`WriteOp`] as SQL, and constraint
//! violations as domain errors.

use conclave_proto::{validate_username, Role};
use rusqlite::{params, Connection, ErrorCode};
use sha2::{Digest, Sha256};

use crate::store::{DeviceAccount, DeviceKey, DeviceNo, StoreError, UserId, WriteOp};

pub(super) fn role_to_int(role: Role) -> i64 {
    match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    }
}

pub(super) fn role_from_int(n: i64) -> Result<Role, StoreError> {
    match n {
        0 => Ok(Role::Owner),
        1 => Ok(Role::Admin),
        2 => Ok(Role::Member),
        other => Err(StoreError::Database(format!("unknown stored role {other}"))),
    }
}

/// SQLite stores integers signed; sequence numbers and ids stay far below 2^63.
pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

pub(super) fn db_ref(e: &rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

pub(super) fn count_packages(conn: &Connection, user: UserId, device: DeviceNo) -> Result<u32, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM key_packages WHERE user_id = ?1 AND device_no = ?2 AND last_resort = 0",
        params![user.0, device.0],
        |r| r.get(0),
    )
    .map_err(db)
}

pub(super) fn apply_op(tx: &rusqlite::Transaction<'_>, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::Append { room, seq, time_ms, sender, client_msg_id, entry } => {
            tx.prepare_cached(
                "INSERT INTO log (room_id, seq, time_ms, sender_user, sender_device, client_msg_id, entry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    room.0,
                    to_i64(seq.get()),
                    to_i64(*time_ms),
                    sender.map(|(u, _)| u.0),
                    sender.map(|(_, d)| d.0),
                    // Bit-cast: ids are opaque 64-bit values, all of them distinct.
                    client_msg_id.map(|id| id as i64),
                    entry
                ])
            })
            .map_err(db)?;
        }
        WriteOp::SetEpoch { room, epoch, group_info, group_state } => {
            tx.execute(
                "UPDATE rooms SET epoch = ?2, group_info = ?3, group_state = ?4 WHERE id = ?1",
                params![room.0, to_i64(*epoch), group_info, group_state],
            )
            .map_err(db)?;
        }
        WriteOp::AddMember { room, user, role, joined_seq } => {
            tx.execute(
                "INSERT INTO room_members (room_id, user_id, role, joined_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role, joined_seq = excluded.joined_seq",
                params![room.0, user.0, role_to_int(*role), to_i64(joined_seq.get())],
            )
            .map_err(db)?;
        }
        WriteOp::RemoveMember { room, user } => {
            tx.execute(
                "DELETE FROM room_members WHERE room_id = ?1 AND user_id = ?2",
                params![room.0, user.0],
            )
            .map_err(db)?;
        }
        WriteOp::SetRole { room, user, role } => {
            tx.execute(
                "UPDATE room_members SET role = ?3 WHERE room_id = ?1 AND user_id = ?2",
                params![room.0, user.0, role_to_int(*role)],
            )
            .map_err(db)?;
        }
        WriteOp::Welcome { room, user, device, seq, welcome } => {
            tx.execute(
                "INSERT OR REPLACE INTO welcomes (user_id, device_no, room_id, seq, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user.0, device.0, room.0, to_i64(seq.get()), welcome],
            )
            .map_err(db)?;
        }
        WriteOp::DropWelcomes { room, user, device } => {
            tx.execute(
                "DELETE FROM welcomes WHERE user_id = ?1 AND device_no = ?2 AND room_id = ?3",
                params![user.0, device.0, room.0],
            )
            .map_err(db)?;
        }
        WriteOp::DeleteRoom { room } => {
            for table in ["log", "welcomes", "room_members"] {
                tx.execute(&format!("DELETE FROM {table} WHERE room_id = ?1"), [room.0]).map_err(db)?;
            }
            tx.execute("DELETE FROM rooms WHERE id = ?1", [room.0]).map_err(db)?;
        }
    }
    Ok(())
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Maps a UNIQUE violation to the domain error for the column it hit.
pub(super) fn unique(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == ErrorCode::ConstraintViolation {
            if msg.contains("users.username") {
                return StoreError::UsernameTaken;
            }
            if msg.contains("devices.public_key") {
                return StoreError::DeviceKeyInUse;
            }
            if msg.contains("rooms.name") || msg.contains("rooms.group_id") {
                return StoreError::RoomExists;
            }
        }
    }
    db(e)
}

pub(super) type AccountRow = (i64, String, String, u32, Vec<u8>);

pub(super) fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

pub(super) fn to_account(
    (user, name, display, device, key): AccountRow,
) -> Result<DeviceAccount, StoreError> {
    let username = validate_username(&name)
        .map_err(|e| StoreError::Database(format!("stored username {name:?} is invalid: {e}")))?;
    let key: [u8; 32] =
        key.try_into().map_err(|_| StoreError::Database("stored device key is not 32 bytes".into()))?;
    Ok(DeviceAccount {
        user: UserId(user),
        username,
        display_name: display,
        device: DeviceNo(device),
        key: DeviceKey(key),
    })
}
