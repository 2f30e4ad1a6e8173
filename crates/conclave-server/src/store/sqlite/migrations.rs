//! The SQLite store's schema: one migration per version, numbered by
//! `PRAGMA user_version`, applied in one transaction when the store opens.

use rusqlite::{Connection, TransactionBehavior};

use super::rows::db;
use crate::store::StoreError;

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
    // 2: rooms, their members and logs, KeyPackages, Welcomes.
    // Roles are stored as numbers: 0 owner, 1 admin, 2 member (stable, do not renumber).
    "CREATE TABLE rooms (
         id         INTEGER PRIMARY KEY,
         name       TEXT NOT NULL UNIQUE,
         group_id   BLOB NOT NULL UNIQUE,
         epoch      INTEGER NOT NULL,
         group_info BLOB NOT NULL,
         created_at INTEGER NOT NULL
     );
     CREATE TABLE room_members (
         room_id    INTEGER NOT NULL REFERENCES rooms(id),
         user_id    INTEGER NOT NULL REFERENCES users(id),
         role       INTEGER NOT NULL,
         joined_seq INTEGER NOT NULL,
         PRIMARY KEY (room_id, user_id)
     ) WITHOUT ROWID;
     CREATE INDEX room_members_by_user ON room_members(user_id);
     CREATE TABLE log (
         room_id       INTEGER NOT NULL,
         seq           INTEGER NOT NULL,
         time_ms       INTEGER NOT NULL,
         sender_user   INTEGER,
         sender_device INTEGER,
         client_msg_id INTEGER,
         entry         BLOB NOT NULL,
         PRIMARY KEY (room_id, seq)
     ) WITHOUT ROWID;
     CREATE UNIQUE INDEX log_client_msg ON log(room_id, sender_user, sender_device, client_msg_id)
         WHERE client_msg_id IS NOT NULL;
     CREATE TABLE key_packages (
         id          INTEGER PRIMARY KEY,
         user_id     INTEGER NOT NULL,
         device_no   INTEGER NOT NULL,
         last_resort INTEGER NOT NULL,
         data        BLOB NOT NULL
     );
     CREATE INDEX key_packages_by_device ON key_packages(user_id, device_no, last_resort);
     CREATE TABLE welcomes (
         user_id   INTEGER NOT NULL,
         device_no INTEGER NOT NULL,
         room_id   INTEGER NOT NULL,
         seq       INTEGER NOT NULL,
         data      BLOB NOT NULL,
         PRIMARY KEY (user_id, device_no, room_id, seq)
     ) WITHOUT ROWID;",
    // 3: the server's saved keyless group state per room.
    "ALTER TABLE rooms ADD COLUMN group_state BLOB;",
    // 4: every single-use KeyPackage ever stored, until it expires, so that
    // none is stored (and handed out) twice. Packages stored before this
    // version are not in it.
    "CREATE TABLE key_package_refs (
         ref       BLOB PRIMARY KEY,
         not_after INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX key_package_refs_by_expiry ON key_package_refs(not_after);",
    // 5: accounts the operator disabled (`conclave admin disable`), and when.
    "ALTER TABLE users ADD COLUMN disabled_at INTEGER;
     CREATE INDEX users_disabled ON users(disabled_at) WHERE disabled_at IS NOT NULL;",
];

/// Brings the schema of the database behind `conn` up to date, refusing a
/// database made by a newer build.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
