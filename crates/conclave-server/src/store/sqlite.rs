//! The embedded default store: one SQLite file in WAL mode.
//!
//! Migrations live here, numbered by `PRAGMA user_version`. The connection
//! sits behind a mutex; every call is short and runs on a blocking thread.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use conclave_proto::{validate_username, Username};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::{Credential, DeviceAccount, DeviceKey, DeviceNo, NewAccount, Store, StoreError, UserId};

/// Each entry upgrades the schema by one version. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, devices, invitations.
    "CREATE TABLE users (
         id            INTEGER PRIMARY KEY,
         username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
         display_name  TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         created_at    INTEGER NOT NULL
     );
     CREATE TABLE devices (
         user_id    INTEGER NOT NULL REFERENCES users(id),
         device_no  INTEGER NOT NULL,
         public_key BLOB NOT NULL UNIQUE,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (user_id, device_no)
     );
     CREATE TABLE invites (
         token_sha256 TEXT PRIMARY KEY,
         created_at   INTEGER NOT NULL,
         used_at      INTEGER
     );",
];

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema
    /// up to date. A new file is created readable by its owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        crate::fs::create_private_file(path)
            .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", path.display())))?;
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        let store = Self { conn: Mutex::new(conn) };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction
        // (rusqlite rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Database(format!(
                "the database has schema version {version}, newer than this build knows ({}); \
                 run a newer conclave",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Maps a UNIQUE violation to the domain error for the column it hit.
fn unique(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == ErrorCode::ConstraintViolation {
            if msg.contains("users.username") {
                return StoreError::UsernameTaken;
            }
            if msg.contains("devices.public_key") {
                return StoreError::DeviceKeyInUse;
            }
        }
    }
    db(e)
}

fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, u32)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_account(
    (user, name, display, device): (i64, String, String, u32),
) -> Result<DeviceAccount, StoreError> {
    let username = validate_username(&name)
        .map_err(|e| StoreError::Database(format!("stored username {name:?} is invalid: {e}")))?;
    Ok(DeviceAccount { user: UserId(user), username, display_name: display, device: DeviceNo(device) })
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
                "SELECT u.id, u.username, u.display_name, ?2 FROM users u WHERE u.id = ?1",
                params![user.0, next],
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
                "SELECT u.id, u.username, u.display_name, d.device_no
                 FROM devices d JOIN users u ON u.id = d.user_id WHERE d.public_key = ?1",
                [&key.0[..]],
                account_row,
            )
            .optional()
            .map_err(db)?;
        row.map(to_account).transpose()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        super::super::conformance::run_all(&store);
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
}
