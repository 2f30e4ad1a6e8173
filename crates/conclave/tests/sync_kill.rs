//! Crash safety of the client (issue 6): a `conclave tail` process killed
//! with SIGKILL while it catches up. Alice sends 2,500 messages while bob is
//! away, adding carol halfway (a commit: a new epoch). Bob is added to the
//! room while away too, so his first catch-up starts with the Welcome. Then
//! bob's `conclave tail lab` is started and killed, eight times: most kills
//! at a random point of the catch-up as seen from his profile's database
//! (spread so that each leaves some for the next; sometimes right as the
//! commit is applied), some after a random delay under 50 ms (while starting,
//! authenticating, taking the Welcome or applying the first entries). Then
//! it runs to the end. Bob's history must hold every message exactly once and
//! in order, his profile's database must be intact, and he must still send
//! and receive.
//!
//! The client applies the log a page (1,000 entries) per transaction, so
//! 2,500 messages make three pages: a kill aimed past a page's end lands
//! while the next page's transaction is open.
//!
//! Bounded: 2,500 messages, 8 kills, loopback only. No timing assertion: time
//! only chooses when to kill. The random choices come from a seed printed at
//! the start (`CONCLAVE_SYNC_KILL_SEED=…` replays them).

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, open_chat, profile, run, Rng, Served, BIN};
use conclave_client::{HistoryKind, ServerAddr};
use conclave_proto::Seq;

const MESSAGES: usize = 2_500;
const KILLS: usize = 8;
/// Longest a `tail` may run before the test calls it hung (not a timing
/// assertion on the system's speed: a catch-up takes seconds).
const HANG: Duration = Duration::from_secs(300);

/// How far bob's device has applied the room's log (0 before it joined).
fn applied(profile: &Path) -> u64 {
    let Ok(db) = rusqlite::Connection::open_with_flags(
        profile.join("mls.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return 0;
    };
    let _ = db.busy_timeout(Duration::from_secs(5));
    db.query_row("SELECT last_seq FROM room_state WHERE room = 'lab'", [], |r| r.get::<_, i64>(0))
        .map_or(0, |seq| seq as u64)
}

/// Where a kill is aimed.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// After this long.
    After(Duration),
    /// Once the device has applied the log up to this sequence number.
    AtSeq(u64),
}

/// Starts `conclave tail lab` for `profile` and kills it as `aim` says.
/// Returns whether it was killed (false: it finished first).
fn tail_and_kill(profile: &Path, aim: Aim) -> bool {
    let mut child = Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(["tail", "lab", "--json"])
        .env_remove("CONCLAVE_SERVER")
        .env_remove("CONCLAVE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "conclave tail failed on its own: {status:?}");
            return false;
        }
        let due = match aim {
            Aim::After(delay) => started.elapsed() >= delay,
            Aim::AtSeq(seq) => applied(profile) >= seq,
        };
        if due {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        assert!(started.elapsed() < HANG, "conclave tail hung");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// (seq, kind, sender, text) of each line of `conclave tail lab --json`.
fn tail_rows(profile: &Path) -> Vec<(u64, String, String, String)> {
    let out = ok(&run(profile, &["tail", "lab", "--json"], ""));
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {line}")).to_owned();
            (v["seq"].as_u64().unwrap(), field("kind"), field("sender"), field("text"))
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_killed_while_catching_up_ends_with_every_message_once_in_order() {
    let seed =
        std::env::var("CONCLAVE_SYNC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
    println!("CONCLAVE_SYNC_KILL_SEED={seed}");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("data"), &[]);
    let (alice_dir, bob_dir) = (profile(&dir, "alice"), profile(&dir, "bob"));
    for (name, dir) in [("alice", &alice_dir), ("bob", &bob_dir), ("carol", &profile(&dir, "carol"))] {
        ok(&run(
            dir,
            &["--server", &server.addr, "--accept-new-server", "register", name, "--password-stdin"],
            "correct horse\n",
        ));
    }
    ok(&run(&alice_dir, &["room", "create", "lab"], ""));
    // Bob is away from here on: added, then the messages.
    ok(&run(&alice_dir, &["room", "add", "lab", "bob"], ""));
    let addr = ServerAddr::parse(&server.addr).unwrap();
    let mut alice = open_chat(&alice_dir, &addr).await.expect("alice connects");
    let (mut last, mut commit) = (0u64, 0u64);
    for i in 0..MESSAGES {
        if i == MESSAGES / 2 {
            // A commit halfway: bob's device must also survive being killed
            // around a change of epoch.
            commit = alice.add("lab", &["carol".into()]).await.unwrap().get();
        }
        last = alice.send("lab", &format!("m{i}")).await.unwrap().get();
    }
    assert_eq!(applied(&bob_dir), 0, "bob has not joined yet");

    let (mut report, mut mid_catch_up) = (Vec::new(), 0);
    for kill in 0..KILLS {
        let before = applied(&bob_dir);
        let aim = if before + 1 < commit && rng.next().is_multiple_of(4) {
            // Right as the commit is applied.
            Aim::AtSeq(commit - 1)
        } else if kill > 0 && rng.next().is_multiple_of(3) {
            // Early: starting, TLS, authentication, the Welcome, the first entries.
            Aim::After(Duration::from_millis(rng.next() % 50))
        } else {
            // Spread the kills over what is left of the catch-up.
            let left = last.saturating_sub(before);
            let span = (2 * left / (KILLS - kill) as u64).max(1);
            Aim::AtSeq((before + 1 + rng.next() % span).min(last.saturating_sub(1)).max(1))
        };
        let killed = tail_and_kill(&bob_dir, aim);
        let after = applied(&bob_dir);
        assert!(after >= before, "bob's device went back from {before} to {after}");
        if killed && after < last {
            mid_catch_up += 1;
        }
        report.push(format!("{aim:?}: {before} -> {after}{}", if killed { "" } else { " (finished first)" }));
    }
    println!(
        "log up to {last}, carol added at {commit}; {mid_catch_up} of {KILLS} kills landed before the \
         catch-up was done; kill by kill (aim: applied before -> after):\n  {}",
        report.join("\n  ")
    );

    // Left alone, it finishes: every message once, in order, nothing else twice.
    let rows = tail_rows(&bob_dir);
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "rows in log order, each once");
    let texts: Vec<&str> = rows.iter().filter(|r| r.1 == "message").map(|r| r.3.as_str()).collect();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "bob's history");
    let notices: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].3 == "carol joined #lab").collect();
    assert_eq!(notices.len(), 1, "{rows:?}");
    let around = (rows[notices[0] - 1].3.clone(), rows[notices[0] + 1].3.clone());
    assert_eq!(
        around,
        (format!("m{}", MESSAGES / 2 - 1), format!("m{}", MESSAGES / 2)),
        "where carol joined"
    );
    assert!(rows.iter().filter(|r| r.1 == "message").all(|r| r.2 == "alice"));
    assert_eq!(applied(&bob_dir), last);
    let db = rusqlite::Connection::open(bob_dir.join("mls.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(db);

    // And bob carries on: he sends, alice reads; alice answers, bob reads.
    let back = format!("back after {KILLS} kills");
    ok(&run(&bob_dir, &["send", "lab", &back], ""));
    alice.sync_room("lab").await.unwrap();
    let seen = alice.history("lab", Seq::new(last), 100).unwrap();
    assert!(seen.iter().any(|r| r.kind == HistoryKind::Message && r.sender == "bob" && r.text == back));
    alice.send("lab", "welcome back").await.unwrap();
    let rows = tail_rows(&bob_dir);
    let tail: Vec<&str> = rows.iter().rev().take(2).map(|r| r.3.as_str()).collect();
    assert_eq!(tail, ["welcome back", back.as_str()]);
    server.stop();
}
