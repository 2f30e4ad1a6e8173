//! The embedded default store: one SQLite file in WAL mode.
//!
//! The connection sits behind a mutex; every call is short and runs on a
//! blocking thread. `migrations` holds the schema, numbered by
//! `PRAGMA user_version`; `checkpoint` the thread that copies the
//! write-ahead log into the database file (its module doc says why it is a
//! thread of its own); `rows` how rows map to domain values and back.

mod admin;
mod checkpoint;
mod migrations;
mod rows;

use std::path::Path;

pub use self::admin::{RoomReport, Stats, UserReport};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use conclave_proto::{validate_username, DisplayName, Role, Seq, Username};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use self::checkpoint::{
    checkpoint, count_wal_pages, Checkpointer, CHECKPOINT_INLINE_PAGES, CHECKPOINT_PAGES, WAL_PAGES,
};
use self::rows::{
    account_row, apply_op, count_packages, db, db_ref, now, role_from_int, role_to_int, to_account, to_i64,
    token_hash, unique,
};
use super::{
    ClientMsgKey, Credential, DeviceAccount, DeviceKey, DeviceNo, NewAccount, NewKeyPackage, NewRoom, RoomId,
    RoomMember, RoomRecord, Store, StoreError, StoredWelcome, UserId, WriteOp,
};

/// The SQLite store. One connection serves requests; a second, used only
/// by the log writer's batches, keeps group commits off the request path; a
/// third, on the checkpointer's thread, copies the WAL into the database.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    log_conn: Mutex<Connection>,
    checkpointer: Checkpointer,
    /// WAL pages at which a log commit wakes the checkpointer, and at which
    /// it checkpoints inline.
    wal_pages: (i32, i32),
}

fn open_conn(path: &Path, fsync: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "OFF" }).map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema
    /// up to date. A new file is created readable by its owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// Like [`SqliteStore::open`]; with `fsync` false, SQLite does not wait
    /// for the disk (`synchronous = OFF`): a power failure can lose the last
    /// acknowledged writes. Only for measuring what durability costs.
    pub fn open_with(path: &Path, fsync: bool) -> Result<Self, StoreError> {
        crate::fs::create_private_file(path)
            .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", path.display())))?;
        let conn = open_conn(path, fsync)?;
        let log_conn = open_conn(path, fsync)?;
        // Replaces SQLite's own checkpoint-on-commit for this connection.
        log_conn.wal_hook(Some(count_wal_pages));
        let store = Self {
            conn: Mutex::new(conn),
            log_conn: Mutex::new(log_conn),
            checkpointer: Checkpointer::start(open_conn(path, fsync)?)?,
            wal_pages: (CHECKPOINT_PAGES, CHECKPOINT_INLINE_PAGES),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction
        // (rusqlite rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        migrations::migrate(&mut self.lock())
    }
}

impl Store for SqliteStore {
    fn create_account(&self, a: NewAccount<'_>) -> Result<DeviceAccount, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let t = now();
        if let Some(token) = a.invite_token {
            let used = tx
                .execute(
                    "UPDATE invites SET used_at = ?1 WHERE token_sha256 = ?2 AND used_at IS NULL",
                    params![t, token_hash(token)],
                )
                .map_err(db)?;
            if used != 1 {
                return Err(StoreError::InvalidToken);
            }
        }
        tx.execute(
            "INSERT INTO users (username, display_name, password_hash, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![a.username.as_str(), a.display_name.as_str(), a.password_hash, t],
        )
        .map_err(unique)?;
        let user = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO devices (user_id, device_no, public_key, created_at) VALUES (?1, 1, ?2, ?3)",
            params![user, &a.device_key.0[..], t],
        )
        .map_err(unique)?;
        tx.commit().map_err(db)?;
        Ok(DeviceAccount {
            user: UserId(user),
            username: a.username.clone(),
            display_name: a.display_name.as_str().to_owned(),
            device: DeviceNo(1),
            key: *a.device_key,
        })
    }

    fn credential(&self, username: &Username) -> Result<Option<Credential>, StoreError> {
        self.lock()
            .query_row("SELECT id, password_hash FROM users WHERE username = ?1", [username.as_str()], |r| {
                Ok(Credential { user: UserId(r.get(0)?), password_hash: r.get(1)? })
            })
            .optional()
            .map_err(db)
    }

    fn add_device(&self, user: UserId, key: &DeviceKey) -> Result<DeviceAccount, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let next: u32 = tx
            .query_row(
                "SELECT COALESCE(MAX(device_no), 0) + 1 FROM devices WHERE user_id = ?1",
                [user.0],
                |r| r.get(0),
            )
            .map_err(db)?;
        tx.execute(
            "INSERT INTO devices (user_id, device_no, public_key, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![user.0, next, &key.0[..], now()],
        )
        .map_err(unique)?;
        let row = tx
            .query_row(
                "SELECT u.id, u.username, u.display_name, ?2, ?3 FROM users u WHERE u.id = ?1",
                params![user.0, next, &key.0[..]],
                account_row,
            )
            .map_err(db)?;
        tx.commit().map_err(db)?;
        to_account(row)
    }

    fn device_by_key(&self, key: &DeviceKey) -> Result<Option<DeviceAccount>, StoreError> {
        let row = self
            .lock()
            .query_row(
                "SELECT u.id, u.username, u.display_name, d.device_no, d.public_key
                 FROM devices d JOIN users u ON u.id = d.user_id WHERE d.public_key = ?1",
                [&key.0[..]],
                account_row,
            )
            .optional()
            .map_err(db)?;
        row.map(to_account).transpose()
    }

    fn set_disabled(&self, username: &Username, disabled: bool) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = if disabled {
            conn.execute(
                "UPDATE users SET disabled_at = COALESCE(disabled_at, ?2) WHERE username = ?1",
                params![username.as_str(), now()],
            )
        } else {
            conn.execute("UPDATE users SET disabled_at = NULL WHERE username = ?1", [username.as_str()])
        };
        Ok(n.map_err(db)? == 1)
    }

    fn disabled_users(&self) -> Result<Vec<UserId>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id FROM users WHERE disabled_at IS NOT NULL ORDER BY id")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get(0).map(UserId)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn create_invite(&self, token: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO invites (token_sha256, created_at) VALUES (?1, ?2)",
                params![token_hash(token), now()],
            )
            .map_err(db)?;
        Ok(())
    }

    fn set_display_name(&self, user: UserId, display_name: &DisplayName) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE users SET display_name = ?2 WHERE id = ?1",
                params![user.0, display_name.as_str()],
            )
            .map_err(db)?;
        Ok(())
    }

    fn user_by_name(&self, username: &Username) -> Result<Option<(UserId, String)>, StoreError> {
        self.lock()
            .query_row("SELECT id, display_name FROM users WHERE username = ?1", [username.as_str()], |r| {
                Ok((UserId(r.get(0)?), r.get(1)?))
            })
            .optional()
            .map_err(db)
    }

    fn devices_of(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceKey)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT device_no, public_key FROM devices WHERE user_id = ?1 ORDER BY device_no")
            .map_err(db)?;
        let rows =
            stmt.query_map([user.0], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (no, key) = row.map_err(db)?;
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| StoreError::Database("stored device key is not 32 bytes".into()))?;
            out.push((DeviceNo(no), DeviceKey(key)));
        }
        Ok(out)
    }

    fn store_key_packages(
        &self,
        user: UserId,
        device: DeviceNo,
        packages: &[NewKeyPackage],
        last_resort: Option<&[u8]>,
    ) -> Result<u32, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        {
            // An expired KeyPackage is refused on upload, so its reference
            // need not be kept any more.
            tx.execute("DELETE FROM key_package_refs WHERE not_after <= ?1", [now()]).map_err(db)?;
            let mut seen = tx
                .prepare_cached("INSERT OR IGNORE INTO key_package_refs (ref, not_after) VALUES (?1, ?2)")
                .map_err(db)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO key_packages (user_id, device_no, last_resort, data) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(db)?;
            for p in packages {
                let not_after = i64::try_from(p.not_after).unwrap_or(i64::MAX);
                if seen.execute(params![p.key_package_ref, not_after]).map_err(db)? == 0 {
                    // Dropping the transaction rolls back the whole upload.
                    return Err(StoreError::KeyPackageReused);
                }
                insert.execute(params![user.0, device.0, 0, p.data]).map_err(db)?;
            }
            if let Some(lr) = last_resort {
                tx.execute(
                    "DELETE FROM key_packages WHERE user_id = ?1 AND device_no = ?2 AND last_resort = 1",
                    params![user.0, device.0],
                )
                .map_err(db)?;
                insert.execute(params![user.0, device.0, 1, lr]).map_err(db)?;
            }
        }
        let count = count_packages(&tx, user, device)?;
        tx.commit().map_err(db)?;
        Ok(count)
    }

    fn key_package_count(&self, user: UserId, device: DeviceNo) -> Result<u32, StoreError> {
        count_packages(&self.lock(), user, device)
    }

    fn claim_key_packages(&self, users: &[UserId]) -> Result<Vec<(UserId, DeviceNo, Vec<u8>)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let mut out = Vec::new();
        for user in users {
            let devices: Vec<u32> = {
                let mut stmt = tx
                    .prepare_cached("SELECT device_no FROM devices WHERE user_id = ?1 ORDER BY device_no")
                    .map_err(db)?;
                let rows = stmt.query_map([user.0], |r| r.get(0)).map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            for device in devices {
                let found: Option<(i64, i64, Vec<u8>)> = tx
                    .query_row(
                        "SELECT id, last_resort, data FROM key_packages WHERE user_id = ?1 AND device_no = ?2
                         ORDER BY last_resort, id LIMIT 1",
                        params![user.0, device],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(db)?;
                if let Some((id, last_resort, data)) = found {
                    if last_resort == 0 {
                        tx.execute("DELETE FROM key_packages WHERE id = ?1", [id]).map_err(db)?;
                    }
                    out.push((*user, DeviceNo(device), data));
                }
            }
            if !out.iter().any(|(u, _, _)| u == user) {
                // Dropping the transaction rolls back what was claimed so far.
                return Err(StoreError::NoKeyPackages(*user));
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn create_room(&self, room: NewRoom<'_>) -> Result<RoomId, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        tx.execute(
            "INSERT INTO rooms (name, group_id, epoch, group_info, created_at) VALUES (?1, ?2, 0, ?3, ?4)",
            params![room.name, room.group_id, room.group_info, now()],
        )
        .map_err(unique)?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO room_members (room_id, user_id, role, joined_seq) VALUES (?1, ?2, ?3, 1)",
            params![id, room.owner.0, role_to_int(Role::Owner)],
        )
        .map_err(db)?;
        tx.execute(
            "INSERT INTO log (room_id, seq, time_ms, sender_user, entry) VALUES (?1, 1, ?2, ?3, ?4)",
            params![id, to_i64(room.time_ms), room.owner.0, room.created_entry],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(RoomId(id))
    }

    fn room_by_name(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        self.lock()
            .query_row(
                "SELECT r.id, r.name, r.group_id, r.epoch, r.group_info,
                        (SELECT COALESCE(MAX(seq), 0) FROM log WHERE room_id = r.id), r.group_state
                 FROM rooms r WHERE r.name = ?1",
                [name],
                |r| {
                    Ok(RoomRecord {
                        id: RoomId(r.get(0)?),
                        name: r.get(1)?,
                        group_id: r.get(2)?,
                        epoch: r.get::<_, i64>(3)? as u64,
                        group_info: r.get(4)?,
                        head_seq: Seq::new(r.get::<_, i64>(5)? as u64),
                        group_state: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn room_members(&self, room: RoomId) -> Result<Vec<RoomMember>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT u.id, u.username, u.display_name, m.role, m.joined_seq
                 FROM room_members m JOIN users u ON u.id = m.user_id WHERE m.room_id = ?1 ORDER BY u.username",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([room.0], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (user, name, display, role, joined): (i64, String, String, i64, i64) = row.map_err(db)?;
            let username = validate_username(&name)
                .map_err(|e| StoreError::Database(format!("stored username {name:?} is invalid: {e}")))?;
            out.push(RoomMember {
                user: UserId(user),
                username,
                display_name: display,
                role: role_from_int(role)?,
                joined_seq: Seq::new(joined as u64),
            });
        }
        Ok(out)
    }

    fn rooms_of_user(&self, user: UserId) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.name FROM room_members m JOIN rooms r ON r.id = m.room_id
                 WHERE m.user_id = ?1 ORDER BY r.name",
            )
            .map_err(db)?;
        let rows = stmt.query_map([user.0], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn recent_client_ids(&self, room: RoomId, limit: usize) -> Result<Vec<(ClientMsgKey, Seq)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT sender_user, sender_device, client_msg_id, seq FROM log
                 WHERE room_id = ?1 AND client_msg_id IS NOT NULL ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![room.0, to_i64(limit as u64)], |r| {
                Ok((
                    (UserId(r.get(0)?), DeviceNo(r.get(1)?), r.get::<_, i64>(2)? as u64),
                    Seq::new(r.get::<_, i64>(3)? as u64),
                ))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn read_log(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT entry FROM log WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
            .map_err(db)?;
        let mut rows =
            stmt.query(params![room.0, to_i64(after.get()), to_i64(limit as u64 + 1)]).map_err(db)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(db)? {
            let entry: Vec<u8> = row.get(0).map_err(db)?;
            if out.len() == limit || (!out.is_empty() && bytes + entry.len() > max_bytes) {
                return Ok((out, true));
            }
            bytes += entry.len();
            out.push(entry);
        }
        Ok((out, false))
    }

    fn write_batch(&self, jobs: &[Vec<WriteOp>]) -> Vec<Result<(), StoreError>> {
        let mut conn = self.log_conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return jobs.iter().map(|_| Err(db_ref(&e))).collect(),
        };
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            let result = tx.execute_batch("SAVEPOINT job").map_err(db).and_then(|()| {
                match job.iter().try_for_each(|op| apply_op(&tx, op)) {
                    Ok(()) => tx.execute_batch("RELEASE job").map_err(db),
                    Err(e) => {
                        let _ = tx.execute_batch("ROLLBACK TO job; RELEASE job");
                        Err(e)
                    }
                }
            });
            results.push(result);
        }
        WAL_PAGES.set(0);
        if let Err(e) = tx.commit() {
            return jobs.iter().map(|_| Err(db_ref(&e))).collect();
        }
        let pages = WAL_PAGES.get();
        let (background, inline) = self.wal_pages;
        if pages >= inline {
            match checkpoint(&conn) {
                Ok((log, done)) => tracing::info!(
                    log,
                    done,
                    "the WAL outgrew the background checkpoint; checkpointed inline"
                ),
                Err(e) => tracing::warn!(error = %e, "inline checkpoint failed"),
            }
        } else {
            self.checkpointer.committed(pages, background);
        }
        results
    }

    fn has_welcome(&self, user: UserId, device: DeviceNo, room: RoomId) -> Result<bool, StoreError> {
        self.lock()
            .prepare_cached(
                "SELECT 1 FROM welcomes WHERE user_id = ?1 AND device_no = ?2 AND room_id = ?3 LIMIT 1",
            )
            .and_then(|mut stmt| stmt.exists(params![user.0, device.0, room.0]))
            .map_err(db)
    }

    fn welcomes_for(&self, user: UserId, device: DeviceNo) -> Result<Vec<StoredWelcome>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.name, r.group_id, w.seq, w.data FROM welcomes w JOIN rooms r ON r.id = w.room_id
                 JOIN room_members m ON m.room_id = w.room_id AND m.user_id = w.user_id
                 WHERE w.user_id = ?1 AND w.device_no = ?2 ORDER BY w.room_id, w.seq",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![user.0, device.0], |r| {
                Ok(StoredWelcome {
                    room: r.get(0)?,
                    group_id: r.get(1)?,
                    seq: Seq::new(r.get::<_, i64>(2)? as u64),
                    welcome: r.get(3)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRoom, RoomId};

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::store::conformance::run_all(|| {
            n += 1;
            SqliteStore::open(&dir.path().join(format!("server-{n}.db"))).unwrap()
        });
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        store_one(&path);
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.credential(&validate_username("erin").unwrap()).unwrap().is_some());
    }

    #[cfg(unix)]
    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        store_one(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn store_one(path: &Path) {
        let store = SqliteStore::open(path).unwrap();
        let name = validate_username("erin").unwrap();
        let display = conclave_proto::validate_display_name("Erin").unwrap();
        store
            .create_account(NewAccount {
                username: &name,
                display_name: &display,
                password_hash: "$argon2id$x",
                device_key: &DeviceKey([7; 32]),
                invite_token: None,
            })
            .unwrap();
    }

    fn room_with_owner(store: &SqliteStore) -> (RoomId, UserId) {
        let name = validate_username("owner").unwrap();
        let display = conclave_proto::validate_display_name("Owner").unwrap();
        let owner = store
            .create_account(NewAccount {
                username: &name,
                display_name: &display,
                password_hash: "$argon2id$x",
                device_key: &DeviceKey([1; 32]),
                invite_token: None,
            })
            .unwrap();
        let room = store
            .create_room(NewRoom {
                name: "lab",
                group_id: b"g",
                group_info: b"gi",
                owner: owner.user,
                created_entry: b"created",
                time_ms: 0,
            })
            .unwrap();
        (room, owner.user)
    }

    /// Appends `n` entries of 2000 bytes in one batch; the WAL's pages after it.
    fn append(store: &SqliteStore, room: RoomId, owner: UserId, seq: &mut u64, n: usize) -> i32 {
        let job: Vec<WriteOp> = (0..n)
            .map(|_| {
                *seq += 1;
                WriteOp::Append {
                    room,
                    seq: Seq::new(*seq),
                    time_ms: *seq,
                    sender: Some((owner, DeviceNo(1))),
                    client_msg_id: Some(*seq),
                    entry: vec![*seq as u8; 2000],
                }
            })
            .collect();
        for result in store.write_batch(&[job]) {
            result.unwrap();
        }
        WAL_PAGES.get()
    }

    #[test]
    fn the_checkpointer_copies_the_wal_and_the_log_starts_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let store = SqliteStore::open(&path).unwrap();
        let (room, owner) = room_with_owner(&store);
        let db_bytes = || std::fs::metadata(&path).unwrap().len();
        let before = db_bytes();
        let mut seq = 1;
        let mut pages = 0;
        while pages < CHECKPOINT_PAGES {
            pages = append(&store, room, owner, &mut seq, 8);
            assert!(pages < CHECKPOINT_INLINE_PAGES, "the log writer must not checkpoint itself here");
        }
        // Writes that pause let the checkpointer catch up; then a commit
        // starts the WAL over instead of growing it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let now = append(&store, room, owner, &mut seq, 1);
            if now < pages {
                break;
            }
            pages = now;
            assert!(std::time::Instant::now() < deadline, "the WAL was never checkpointed ({pages} pages)");
        }
        assert!(db_bytes() > before, "the checkpoint copied the log into the database file");
        let (entries, _) = store.read_log(room, Seq::FIRST, 10_000, usize::MAX).unwrap();
        assert_eq!(entries.len() as u64, seq - 1, "every entry reads back");
    }

    #[test]
    fn a_wal_the_checkpointer_cannot_keep_down_is_checkpointed_inline() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        // The checkpointer is never woken; the inline limit is low.
        store.wal_pages = (i32::MAX, 50);
        let (room, owner) = room_with_owner(&store);
        let mut seq = 1;
        let mut pages = 0;
        let mut restarted = false;
        for _ in 0..100 {
            let now = append(&store, room, owner, &mut seq, 4);
            if now < pages {
                restarted = true;
                break;
            }
            pages = now;
        }
        assert!(restarted, "the WAL grew to {pages} pages past the inline limit");
        let (entries, _) = store.read_log(room, Seq::FIRST, 10_000, usize::MAX).unwrap();
        assert_eq!(entries.len() as u64, seq - 1);
    }

    mod properties {
        use super::*;
        use crate::store::WriteOp;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// However appends are grouped into jobs and batches, and however
            /// the log is paged through, it reads back complete, in order,
            /// each entry once.
            #[test]
            fn the_log_reads_back_in_order(
                sizes in prop::collection::vec(1usize..40, 1..12),
                jobs_per_batch in 1usize..5,
                page in 1usize..50,
                page_bytes in 1usize..400,
            ) {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
                let (room, owner) = room_with_owner(&store);
                let mut seq = 1u64;
                let mut jobs = Vec::new();
                for size in &sizes {
                    let mut job = Vec::new();
                    for _ in 0..*size {
                        seq += 1;
                        job.push(WriteOp::Append {
                            room,
                            seq: Seq::new(seq),
                            time_ms: seq,
                            sender: Some((owner, DeviceNo(1))),
                            client_msg_id: Some(seq * 7),
                            entry: format!("entry {seq}").into_bytes(),
                        });
                    }
                    jobs.push(job);
                }
                for batch in jobs.chunks(jobs_per_batch) {
                    for result in store.write_batch(batch) {
                        prop_assert!(result.is_ok());
                    }
                }
                let mut read = Vec::new();
                let mut after = 0u64;
                loop {
                    let (entries, more) = store.read_log(room, Seq::new(after), page, page_bytes).unwrap();
                    prop_assert!(!entries.is_empty() || !more);
                    after += entries.len() as u64;
                    read.extend(entries);
                    if !more {
                        break;
                    }
                }
                let mut want = vec![b"created".to_vec()];
                want.extend((2..=seq).map(|s| format!("entry {s}").into_bytes()));
                prop_assert_eq!(read, want);
            }

            /// A job that fails (a sequence number taken twice) changes
            /// nothing and does not fail the other jobs of its batch.
            #[test]
            fn a_failed_job_leaves_the_others(bad in 0usize..3) {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
                let (room, owner) = room_with_owner(&store);
                let append = |seq: u64| WriteOp::Append {
                    room,
                    seq: Seq::new(seq),
                    time_ms: 0,
                    sender: Some((owner, DeviceNo(1))),
                    client_msg_id: None,
                    entry: vec![seq as u8],
                };
                let mut jobs = vec![vec![append(2)], vec![append(3)], vec![append(4)]];
                // The bad job also appends a fresh number before the clash:
                // that part must roll back with it.
                jobs[bad] = vec![append(10 + bad as u64), append(1)];
                let results = store.write_batch(&jobs);
                for (i, r) in results.iter().enumerate() {
                    prop_assert_eq!(r.is_ok(), i != bad);
                }
                let (entries, _) = store.read_log(room, Seq::ZERO, 100, 1 << 20).unwrap();
                prop_assert_eq!(entries.len(), 1 + 2);
            }
        }
    }
}
