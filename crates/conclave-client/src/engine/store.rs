//! The engine's SQLite file: opening it (0600, WAL), OpenMLS's tables and the
//! engine's own (with their migrations), the serde codec OpenMLS's storage
//! needs, and a provider that borrows the connection, so that one SQLite
//! transaction covers an MLS state change and the engine's bookkeeping.

use std::path::Path;

use conclave_proto::Seq;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{params, Connection, OptionalExtension};

use super::{EngineError, HistoryKind};

/// The engine's own schema, one entry per version (`PRAGMA user_version` is the
/// number of entries applied). Append only: never edit or reorder an entry.
const MIGRATIONS: &[&str] = &[
    // 1: rooms, local history, unacknowledged own messages, pending commits.
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
     );
     CREATE TABLE room_state (
        room TEXT PRIMARY KEY,
        group_id BLOB NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE history (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        sender TEXT NOT NULL,
        sender_display TEXT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (room, seq)
     );
     CREATE TABLE outgoing (
        client_msg_id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE INDEX outgoing_by_room ON outgoing (room, client_msg_id);
     -- The commit this device sent for a room and the server has not answered yet.
     -- kind is 'member' or 'external' (stored values: do not rename).
     CREATE TABLE pending_commit (
        room TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        commit_bytes BLOB NOT NULL
     );",
];

/// `meta` key holding the identity this file belongs to.
const META_IDENTITY: &str = "identity";
/// `meta` key holding the device public key this file belongs to.
const META_PUBLIC_KEY: &str = "device_public_key";

/// The codec OpenMLS's SQLite storage uses for its values and keys: CBOR
/// (self-describing, so OpenMLS's serde types that deserialize "any" work, and
/// deterministic, which matters because keys are encoded with it too).
#[derive(Default)]
pub(super) struct CborCodec;

/// A CBOR encoding or decoding failure.
#[derive(Debug)]
pub(super) struct CborError(String);

impl std::fmt::Display for CborError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CBOR: {}", self.0)
    }
}

impl std::error::Error for CborError {}

impl Codec for CborCodec {
    type Error = CborError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).map_err(|e| CborError(e.to_string()))?;
        Ok(out)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        ciborium::from_reader(slice).map_err(|e| CborError(e.to_string()))
    }
}

/// OpenMLS's storage over a borrowed connection (so it joins the caller's
/// transaction).
pub(super) type Storage<'a> = SqliteStorageProvider<CborCodec, &'a Connection>;

/// An [`OpenMlsProvider`] for one operation: the engine's crypto and a storage
/// borrowing the connection (or the open transaction).
pub(super) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: Storage<'a>,
}

impl<'a> Provider<'a> {
    pub(super) fn new(crypto: &'a RustCrypto, conn: &'a Connection) -> Self {
        Self { crypto, storage: SqliteStorageProvider::new(conn) }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = Storage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// A SQLite failure, with what the engine was doing.
pub(super) fn sql(doing: &str) -> impl FnOnce(rusqlite::Error) -> EngineError + '_ {
    move |e| EngineError::Storage(format!("{doing}: {e}"))
}

/// Runs one statement without parameters through the connection's cache of
/// prepared statements.
pub(super) fn run_cached(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(drop)
}

/// Opens (or creates, 0600) the database at `path`: WAL, `synchronous=NORMAL`,
/// temporary storage in memory, OpenMLS's migrations, then the engine's. Checks that the file belongs to
/// this identity and device key (and records them in a new file).
pub(super) fn open(path: &Path, identity: &str, public_key: &[u8]) -> Result<Connection, EngineError> {
    let shown = path.display();
    create_private_file(path).map_err(|e| EngineError::Storage(format!("cannot create {shown}: {e}")))?;
    let mut conn =
        Connection::open(path).map_err(|e| EngineError::Storage(format!("cannot open {shown}: {e}")))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("setting the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql("switching to WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql("setting synchronous=NORMAL"))?;
    // The savepoint around each decryption journals the pages it changes (the
    // group's message secrets among them): in memory, not in a temporary file.
    // Nothing there is needed after a crash; the WAL holds what was committed.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(sql("setting temp_store=MEMORY"))?;
    SqliteStorageProvider::<CborCodec, &mut Connection>::new(&mut conn)
        .run_migrations()
        .map_err(|e| EngineError::Storage(format!("{shown}: OpenMLS storage migrations failed: {e}")))?;
    migrate(&mut conn).map_err(|e| EngineError::Storage(format!("{shown}: {e}")))?;
    check_owner(&conn, path, identity, public_key)?;
    // SQLite creates the -wal and -shm files with the database file's mode;
    // make sure anyway, in case they predate this code.
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        restrict(Path::new(&side)).map_err(|e| {
            EngineError::Storage(format!("cannot restrict {}: {e}", Path::new(&side).display()))
        })?;
    }
    Ok(conn)
}

/// Runs the engine's migrations not yet applied, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read the schema version: {e}"))?;
    if version > MIGRATIONS.len() {
        return Err(format!(
            "the file has schema version {version}, newer than this program knows ({}); \
             upgrade Conclave",
            MIGRATIONS.len()
        ));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.execute_batch(step).map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1).map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.commit().map_err(|e| format!("migration {}: {e}", i + 1))?;
    }
    Ok(())
}

/// Records the owner of a new file, or checks it is the same as before.
fn check_owner(conn: &Connection, path: &Path, identity: &str, public_key: &[u8]) -> Result<(), EngineError> {
    let get = |key: &str| -> Result<Option<Vec<u8>>, EngineError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("reading the file's owner"))
    };
    match (get(META_IDENTITY)?, get(META_PUBLIC_KEY)?) {
        (Some(id), Some(key)) => {
            if key != public_key || id != identity.as_bytes() {
                return Err(EngineError::Storage(format!(
                    "{} holds the MLS state of {} with another device key; it cannot be used by {identity}. \
                     Use the profile it belongs to, or remove the file (this device then rejoins its rooms)",
                    path.display(),
                    String::from_utf8_lossy(&id)
                )));
            }
            Ok(())
        }
        _ => {
            let put = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)";
            conn.execute(put, params![META_IDENTITY, identity.as_bytes()])
                .map_err(sql("recording the owner"))?;
            conn.execute(put, params![META_PUBLIC_KEY, public_key]).map_err(sql("recording the owner"))?;
            Ok(())
        }
    }
}

/// Creates `path` with mode 0600 if it does not exist, and restricts it if it does.
///
/// An existing file is never opened here: closing any descriptor of a file
/// drops every POSIX lock this process holds on it, SQLite's included. A
/// second engine opened on a profile whose first engine is still open (a
/// reconnect) would otherwise leave the first one's connection unlocked, and
/// another process on the same profile could then delete the WAL under it
/// and corrupt the database.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        // New: no connection can have it open yet.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => restrict(path),
        Err(e) => Err(e),
    }
}

/// Sets an existing file to 0600 (nothing on other platforms, or if it is absent).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What `room_state` holds for a room.
pub(super) struct RoomRow {
    pub(super) group_id: Vec<u8>,
    pub(super) last_seq: Seq,
}

pub(super) fn room_row(conn: &Connection, room: &str) -> Result<Option<RoomRow>, EngineError> {
    conn.prepare_cached("SELECT group_id, last_seq FROM room_state WHERE room = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([room], |r| Ok(RoomRow { group_id: r.get(0)?, last_seq: Seq::new(r.get(1)?) }))
                .optional()
        })
        .map_err(sql("reading the room state"))
}

pub(super) fn put_room(
    conn: &Connection,
    room: &str,
    group_id: &[u8],
    last_seq: Seq,
) -> Result<(), EngineError> {
    conn.execute(
        "INSERT INTO room_state (room, group_id, last_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (room) DO UPDATE SET group_id = excluded.group_id, last_seq = excluded.last_seq",
        params![room, group_id, last_seq.get()],
    )
    .map_err(sql("writing the room state"))?;
    Ok(())
}

pub(super) fn set_last_seq(conn: &Connection, room: &str, seq: Seq) -> Result<bool, EngineError> {
    let n = conn
        .prepare_cached("UPDATE room_state SET last_seq = ?2 WHERE room = ?1")
        .and_then(|mut stmt| stmt.execute(params![room, seq.get()]))
        .map_err(sql("advancing the room's last sequence number"))?;
    Ok(n == 1)
}

pub(super) fn delete_room(conn: &Connection, room: &str) -> Result<(), EngineError> {
    conn.execute("DELETE FROM room_state WHERE room = ?1", [room]).map_err(sql("forgetting the room"))?;
    conn.execute("DELETE FROM pending_commit WHERE room = ?1", [room]).map_err(sql("forgetting the room"))?;
    Ok(())
}

/// Which kind of commit is pending (stored as text: do not rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingKind {
    /// A commit by a member of the group (add, remove, update): merged on acceptance.
    Member,
    /// The external commit that joins this device: already applied to the stored
    /// group by OpenMLS; on refusal the whole group is forgotten.
    External,
}

impl PendingKind {
    fn as_str(self) -> &'static str {
        match self {
            PendingKind::Member => "member",
            PendingKind::External => "external",
        }
    }
}

pub(super) fn pending(conn: &Connection, room: &str) -> Result<Option<(PendingKind, Vec<u8>)>, EngineError> {
    let row: Option<(String, Vec<u8>)> = conn
        .prepare_cached("SELECT kind, commit_bytes FROM pending_commit WHERE room = ?1")
        .and_then(|mut stmt| stmt.query_row([room], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(sql("reading the pending commit"))?;
    match row {
        None => Ok(None),
        Some((kind, bytes)) => {
            let kind = match kind.as_str() {
                "member" => PendingKind::Member,
                "external" => PendingKind::External,
                other => {
                    return Err(EngineError::Storage(format!(
                        "unknown pending commit kind {other:?} for {room}"
                    )))
                }
            };
            Ok(Some((kind, bytes)))
        }
    }
}

pub(super) fn put_pending(
    conn: &Connection,
    room: &str,
    kind: PendingKind,
    commit: &[u8],
) -> Result<(), EngineError> {
    conn.execute(
        "INSERT OR REPLACE INTO pending_commit (room, kind, commit_bytes) VALUES (?1, ?2, ?3)",
        params![room, kind.as_str(), commit],
    )
    .map_err(sql("recording the pending commit"))?;
    Ok(())
}

pub(super) fn clear_pending(conn: &Connection, room: &str) -> Result<(), EngineError> {
    conn.prepare_cached("DELETE FROM pending_commit WHERE room = ?1")
        .and_then(|mut stmt| stmt.execute([room]))
        .map_err(sql("clearing the pending commit"))?;
    Ok(())
}

/// One history row to write.
pub(super) struct NewRow<'a> {
    pub(super) seq: Seq,
    pub(super) time_ms: u64,
    pub(super) sender: &'a str,
    pub(super) sender_display: &'a str,
    pub(super) kind: HistoryKind,
    pub(super) text: &'a str,
}

pub(super) fn put_history(conn: &Connection, room: &str, row: &NewRow<'_>) -> Result<(), EngineError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO history (room, seq, time_ms, sender, sender_display, kind, text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            room,
            row.seq.get(),
            row.time_ms,
            row.sender,
            row.sender_display,
            row.kind,
            row.text
        ])
    })
    .map_err(sql("writing the room history"))?;
    Ok(())
}

/// Takes the queued own message `client_msg_id` of `room`, if there is one.
pub(super) fn take_outgoing(
    conn: &Connection,
    room: &str,
    client_msg_id: u64,
) -> Result<Option<String>, EngineError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT text FROM outgoing WHERE client_msg_id = ?1 AND room = ?2")
        .and_then(|mut stmt| stmt.query_row(params![client_msg_id, room], |r| r.get(0)).optional())
        .map_err(sql("reading the outgoing queue"))?;
    if text.is_some() {
        conn.prepare_cached("DELETE FROM outgoing WHERE client_msg_id = ?1")
            .and_then(|mut stmt| stmt.execute([client_msg_id]))
            .map_err(sql("updating the outgoing queue"))?;
    }
    Ok(text)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
