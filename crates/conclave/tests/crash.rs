//! Crash safety (issue 6): the real server is killed with SIGKILL at random
//! moments while three clients send, twenty times over. Afterwards every
//! message whose send was acknowledged is in the room's log exactly once and
//! in the order of its acknowledgement, no message is stored twice (retries
//! of unacknowledged sends are recognised), the clients carried on after
//! every restart, and the database passes `PRAGMA integrity_check`.
//!
//! Bounded: 20 cycles, each a few hundred milliseconds of traffic; only
//! loopback. The random delays come from a seed printed at the start, so a
//! failure can be replayed (`CONCLAVE_CRASH_SEED=…`).

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{ok, open_chat, profile, run, Rng, Served};
use conclave_client::{HistoryKind, ServerAddr};
use conclave_proto::Seq;

const CYCLES: usize = 20;
const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[tokio::test(flavor = "current_thread")]
async fn acknowledged_messages_survive_sigkill_exactly_once_and_in_order() {
    let seed = std::env::var("CONCLAVE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("CONCLAVE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Served::start(&data, &[]);
    let addr_text = first.addr.clone();
    for name in USERS {
        ok(&run(
            &profile(&dir, name),
            &["--server", &addr_text, "--accept-new-server", "register", name, "--password-stdin"],
            "correct horse\n",
        ));
    }
    ok(&run(&profile(&dir, "alice"), &["room", "create", "lab"], ""));
    ok(&run(&profile(&dir, "alice"), &["room", "add", "lab", "bob", "carol"], ""));
    first.stop();
    let addr = ServerAddr::parse(&addr_text).unwrap();

    // (user, text) -> acknowledged sequence number
    let mut acked: HashMap<String, Seq> = HashMap::new();
    let mut sent_texts = 0usize;
    for cycle in 0..CYCLES {
        let server = Served::start_on(&data, &addr_text, &[]);
        let mut chats = Vec::new();
        for name in USERS {
            let chat = open_chat(&profile(&dir, name), &addr).await;
            chats.push((name, chat.unwrap_or_else(|| panic!("{name} could not reconnect in cycle {cycle}"))));
        }
        let crash_after = Duration::from_millis(50 + rng.next() % 400);
        let traffic = futures::future::join_all(chats.iter_mut().map(|(name, chat)| {
            let name = *name;
            async move {
                let mut mine = Vec::new();
                for i in 0.. {
                    let text = format!("{name}-{cycle}-{i}");
                    match chat.send("lab", &text).await {
                        Ok(seq) => mine.push((text, seq)),
                        Err(_) => return (mine, i + 1),
                    }
                }
                (mine, 0)
            }
        }));
        let killer = async {
            tokio::time::sleep(crash_after).await;
            server.stop();
        };
        let (results, ()) = futures::future::join(traffic, killer).await;
        for (mine, attempted) in results {
            sent_texts += attempted;
            for (text, seq) in mine {
                assert!(acked.insert(text.clone(), seq).is_none(), "{text} acknowledged twice");
            }
        }
    }
    assert!(acked.len() >= CYCLES, "the clients got messages through: {} acknowledged", acked.len());

    // One more start: every client reconnects and re-sends what is queued.
    let server = Served::start_on(&data, &addr_text, &[]);
    let mut alice = None;
    for name in USERS {
        let chat = open_chat(&profile(&dir, name), &addr).await.expect("reconnects after the last crash");
        if name == "alice" {
            alice = Some(chat);
        }
    }
    let mut alice = alice.unwrap();
    alice.sync_room("lab").await.unwrap();
    let rows: Vec<(Seq, String)> = alice
        .history("lab", Seq::ZERO, 1_000_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == HistoryKind::Message)
        .map(|r| (r.seq, r.text))
        .collect();
    let mut seen: HashMap<&str, Seq> = HashMap::new();
    for (seq, text) in &rows {
        assert!(seen.insert(text, *seq).is_none(), "{text} is in the log twice");
    }
    for (text, seq) in &acked {
        assert_eq!(seen.get(text.as_str()), Some(seq), "acknowledged {text} (seq {seq}) is missing or moved");
    }
    // Per sender, acknowledged messages keep the order they were sent in.
    for name in USERS {
        let mut mine: Vec<(Seq, &str)> = rows
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("{name}-")))
            .map(|(s, t)| (*s, t.as_str()))
            .collect();
        mine.sort();
        let order: Vec<(usize, usize)> = mine
            .iter()
            .map(|(_, t)| {
                let mut parts = t.rsplitn(3, '-');
                let i = parts.next().unwrap().parse().unwrap();
                let cycle = parts.next().unwrap().parse().unwrap();
                (cycle, i)
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{name}'s messages are out of order in the log");
    }
    println!("{} sends attempted, {} acknowledged, {} in the log", sent_texts, acked.len(), rows.len());
    server.stop();

    let db = rusqlite::Connection::open(data.join("server.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}
