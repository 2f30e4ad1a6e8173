//! What `conclave admin stats`, `users` and `rooms` report: read-only
//! queries, safe beside a running server (WAL readers do not block it).

use super::rows::db;
use super::SqliteStore;
use crate::store::StoreError;

/// The whole server at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Accounts.
    pub users: u64,
    /// Devices of all accounts.
    pub devices: u64,
    /// Rooms.
    pub rooms: u64,
    /// Entries in all rooms' logs.
    pub log_entries: u64,
    /// The database file's size in bytes (pages in use, free pages included).
    pub database_bytes: u64,
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserReport {
    /// Username.
    pub username: String,
    /// Display name, as stored.
    pub display_name: String,
    /// Its devices.
    pub devices: u64,
    /// Rooms it is a member of.
    pub rooms: u64,
    /// When it was created, in seconds since the Unix epoch.
    pub created_at: u64,
    /// When one of its devices last wrote to a room's log (a message, a
    /// commit, leaving), in milliseconds since the Unix epoch.
    pub last_active_ms: Option<u64>,
}

/// One room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomReport {
    /// Name.
    pub name: String,
    /// Members (users).
    pub members: u64,
    /// Entries in its log.
    pub log_entries: u64,
    /// Its MLS epoch.
    pub epoch: u64,
    /// When it was created, in seconds since the Unix epoch.
    pub created_at: u64,
    /// Its newest log entry's time, in milliseconds since the Unix epoch.
    pub last_activity_ms: Option<u64>,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl SqliteStore {
    /// Counts of everything, and the database's size.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let conn = self.lock();
        let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(count).map_err(db);
        Ok(Stats {
            users: one("SELECT COUNT(*) FROM users")?,
            devices: one("SELECT COUNT(*) FROM devices")?,
            rooms: one("SELECT COUNT(*) FROM rooms")?,
            log_entries: one("SELECT COUNT(*) FROM log")?,
            database_bytes: one(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )?,
        })
    }

    /// Every account, by username.
    pub fn user_reports(&self) -> Result<Vec<UserReport>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT u.username, u.display_name, u.created_at,
                        (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id),
                        (SELECT COUNT(*) FROM room_members m WHERE m.user_id = u.id),
                        (SELECT MAX(time_ms) FROM log l WHERE l.sender_user = u.id)
                 FROM users u ORDER BY u.username",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(UserReport {
                    username: r.get(0)?,
                    display_name: r.get(1)?,
                    created_at: count(r.get(2)?),
                    devices: count(r.get(3)?),
                    rooms: count(r.get(4)?),
                    last_active_ms: r.get::<_, Option<i64>>(5)?.map(count),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Every room, by name.
    pub fn room_reports(&self) -> Result<Vec<RoomReport>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT r.name, r.epoch, r.created_at,
                        (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.id),
                        (SELECT COUNT(*) FROM log l WHERE l.room_id = r.id),
                        (SELECT time_ms FROM log l WHERE l.room_id = r.id ORDER BY seq DESC LIMIT 1)
                 FROM rooms r ORDER BY r.name",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RoomReport {
                    name: r.get(0)?,
                    epoch: count(r.get(1)?),
                    created_at: count(r.get(2)?),
                    members: count(r.get(3)?),
                    log_entries: count(r.get(4)?),
                    last_activity_ms: r.get::<_, Option<i64>>(5)?.map(count),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}
