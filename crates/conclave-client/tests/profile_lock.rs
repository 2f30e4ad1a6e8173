//! Regression test: opening a profile's MLS database a second time in one
//! process (as reconnecting does while the old engine is still open) must not
//! drop the first connection's SQLite locks. It once did: the engine opened
//! and closed the file with `std::fs` to set its mode, and closing any
//! descriptor of a file drops all of the process's POSIX locks on it. Another
//! process on the same profile then saw the database unused, deleted its WAL
//! on closing, and the first process went on writing into a deleted WAL: the
//! profile was corrupted.
//!
//! The other process is this test binary run again (`SECOND_PROCESS`).

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use conclave_client::engine::Engine;

/// Set in the environment of the second process: the database it opens.
const SECOND_PROCESS: &str = "CONCLAVE_TEST_SECOND_PROCESS_DB";

fn engine(path: &Path) -> Engine {
    let seed = [7u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    Engine::open(path, &seed, &public, "alice:1").unwrap()
}

#[test]
fn a_second_engine_on_a_profile_keeps_the_first_ones_locks() {
    if std::env::var_os(SECOND_PROCESS).is_some() {
        return; // Only the helper below runs in the second process.
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mls.db");
    let wal = dir.path().join("mls.db-wal");
    let first = engine(&db);
    assert!(wal.exists(), "WAL mode keeps a -wal file while the database is open");
    let second = engine(&db);

    // Another process opens the same database, reads, and closes. If this
    // process still holds its locks, SQLite there knows it is not the last
    // user and leaves the WAL alone.
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "second_process_reads_and_closes", "--nocapture"])
        .env(SECOND_PROCESS, &db)
        .status()
        .unwrap();
    assert!(status.success(), "the second process failed");
    assert!(wal.exists(), "another process deleted the WAL of a database this process has open");
    drop((first, second));
}

/// Not a test on its own: the second process of the test above (it does
/// nothing unless `SECOND_PROCESS` is set).
#[test]
fn second_process_reads_and_closes() {
    let Some(db) = std::env::var_os(SECOND_PROCESS) else { return };
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
    assert!(tables > 0);
    conn.close().unwrap();
}
