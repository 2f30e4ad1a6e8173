//! Measurements, not tests (ignored; run them by name): how fast a device
//! that was away catches up, and how soon `conclave chat` draws its first
//! screen with 10,000 messages of local history. BENCHMARKS.md records the
//! figures with this command:
//!
//! ```text
//! cargo test --release -p conclave --test first_screen -- --ignored --nocapture
//! ```
//!
//! A real `conclave serve` on a loopback port: alice sends 10,000 messages
//! (encrypted with her real MLS state, sent pipelined) while bob is away;
//! bob's `conclave tail lab` catches up (timed: the process from start to
//! exit, connection included); then `conclave chat lab` is started in a
//! pseudo-terminal (80×24, parsed with vt100) several times, each timed from
//! the spawn to the first screen that shows the newest message. Nothing is
//! asserted about the figures: they are printed.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ok, open_chat, run, Served, BIN};
use conclave_client::ServerAddr;
use conclave_proto::{Request, Response};
use portable_pty::{CommandBuilder, PtySize};

/// Messages of local history.
const MESSAGES: usize = 10_000;
/// Timed starts of `conclave chat`.
const STARTS: usize = 5;
/// How long any one wait may take before the measurement gives up.
const PATIENCE: Duration = Duration::from_secs(120);

fn text(k: usize) -> String {
    format!("message {k:05} of the backlog, about as long as a chat line")
}

/// Spawns `conclave chat lab` for `profile` in a pseudo-terminal and returns
/// how long it took until the screen showed `newest`; then quits it.
fn time_first_screen(profile: &Path, newest: &str) -> Duration {
    let pair = portable_pty::native_pty_system()
        .openpty(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 })
        .unwrap();
    let mut cmd = CommandBuilder::new(BIN);
    cmd.arg("--profile");
    cmd.arg(profile);
    cmd.args(["chat", "lab"]);
    cmd.env("TERM", "xterm-256color");
    cmd.env_remove("CONCLAVE_SERVER");
    cmd.env_remove("CONCLAVE_PROFILE");
    cmd.env_remove("RUST_LOG");
    let start = Instant::now();
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let mut writer = pair.master.take_writer().unwrap();
    let screen = Arc::new(Mutex::new(vt100::Parser::new(24, 80, 0)));
    let seen = Arc::new(Mutex::new(None::<Duration>));
    let (feed, seen2, newest2) = (screen.clone(), seen.clone(), newest.to_owned());
    // Checks the screen after every read, so the time is that of the read
    // that completed the frame, not of a polling tick.
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut parser = feed.lock().unwrap();
                    parser.process(&buf[..n]);
                    let mut s = seen2.lock().unwrap();
                    if s.is_none() && parser.screen().contents().contains(&newest2) {
                        *s = Some(start.elapsed());
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let took = loop {
        if let Some(t) = *seen.lock().unwrap() {
            break t;
        }
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200));
            let shown = screen.lock().unwrap_or_else(|e| e.into_inner()).screen().contents();
            panic!("conclave chat exited early ({status:?}); screen:\n{shown}");
        }
        assert!(
            Instant::now() < deadline,
            "the newest message never showed; screen:\n{}",
            screen.lock().unwrap_or_else(|e| e.into_inner()).screen().contents()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.write_all(b"/quit\r").unwrap();
    writer.flush().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "conclave chat did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    took
}

#[test]
#[ignore = "a measurement (BENCHMARKS.md): run with --ignored --nocapture"]
fn catch_up_and_first_screen_with_ten_thousand_messages() {
    let dir = tempfile::tempdir().unwrap();
    // Seeding sends faster than one user may in normal use (1,000 a second).
    let open = ["--messages-per-second", "100000000", "--requests-per-second", "100000000"];
    let s = Served::start_on(&dir.path().join("data"), "127.0.0.1:0", &open);
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    for (profile, name) in [(&alice, "alice"), (&bob, "bob")] {
        let args =
            ["--server", &s.addr, "--fingerprint", &s.fingerprint, "register", name, "--password-stdin"];
        ok(&run(profile, &args, "correct horse\n"));
    }
    ok(&run(&alice, &["room", "create", "lab"], ""));
    ok(&run(&alice, &["room", "add", "lab", "bob"], ""));
    // Bob takes his Welcome, then is away.
    ok(&run(&bob, &["tail", "lab"], ""));

    let addr = ServerAddr::parse(&s.addr).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut chat = open_chat(&alice, &addr).await.expect("alice connects");
        let mut answers = std::collections::VecDeque::new();
        for k in 0..MESSAGES {
            let ciphertext = chat.engine_mut().encrypt("lab", text(k).as_bytes()).unwrap();
            let req = Request::Send { room: "lab".into(), client_msg_id: k as u64 + 1, ciphertext };
            answers.push_back(chat.connection().start_request(req).await.unwrap());
            if answers.len() >= 512 {
                let a = answers.pop_front().unwrap();
                assert!(matches!(a.answer().await.unwrap(), Response::Accepted { .. }));
            }
        }
        for a in answers {
            assert!(matches!(a.answer().await.unwrap(), Response::Accepted { .. }));
        }
    });

    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("--profile")
        .arg(&bob)
        .args(["tail", "lab"])
        .env_remove("CONCLAVE_SERVER")
        .env_remove("CONCLAVE_PROFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let tail = start.elapsed();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains(&text(MESSAGES - 1)), "tail did not show the newest message");
    println!(
        "tail caught up {MESSAGES} messages in {:.3} s, connection included: {:.0} messages/s",
        tail.as_secs_f64(),
        MESSAGES as f64 / tail.as_secs_f64()
    );

    // The start of the newest line (the screen wraps the rest).
    let newest = format!("message {:05}", MESSAGES - 1);
    let mut starts: Vec<f64> =
        (0..STARTS).map(|_| time_first_screen(&bob, &newest).as_secs_f64() * 1000.0).collect();
    println!(
        "conclave chat, {MESSAGES} messages of local history, start to first screen with the newest: {} ms",
        starts.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
    );
    starts.sort_by(f64::total_cmp);
    println!("median {:.0} ms", starts[STARTS / 2]);
    s.stop();
}
