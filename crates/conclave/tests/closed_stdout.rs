//! Issue 14 review: `conclave tail lab | head -1` printed "error: Broken
//! pipe (os error 32)" and exited 1. A standard output whose reader went
//! away ends a command quietly and successfully (see `src/output.rs` for
//! why 0), for every client command that prints. And `room members` shows
//! the user asking as online.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{ok, profile, run, Served, BIN};

/// Runs a command whose standard output is a pipe with no reader left.
fn run_into_closed_pipe(profile: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("CONCLAVE_SERVER")
        .env_remove("CONCLAVE_PROFILE")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let alice = profile(&dir, "alice");
    let fp = s.fingerprint.clone();
    ok(&run(
        &alice,
        &["--server", &s.addr, "--fingerprint", &fp, "register", "alice", "--password-stdin"],
        "correct horse\n",
    ));
    ok(&run(&alice, &["room", "create", "lab"], ""));
    for i in 0..3 {
        ok(&run(&alice, &["send", "lab", &format!("line {i}")], ""));
    }
    for args in [
        &["tail", "lab"][..],
        &["tail", "--follow", "lab"],
        &["tail", "--json", "lab"],
        &["room", "members", "lab"],
        &["room", "list"],
        &["whoami"],
    ] {
        let out = run_into_closed_pipe(&alice, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "conclave {args:?} exits 0 on a closed stdout: {:?} {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "conclave {args:?} says nothing on a closed stdout: {stderr}");
    }
    s.stop();
}

#[test]
fn room_members_shows_the_asker_online() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let fp = s.fingerprint.clone();
    let (alice, bob) = (profile(&dir, "alice"), profile(&dir, "bob"));
    for (p, name) in [(&alice, "alice"), (&bob, "bob")] {
        ok(&run(
            p,
            &["--server", &s.addr, "--fingerprint", &fp, "register", name, "--password-stdin"],
            "correct horse\n",
        ));
    }
    ok(&run(&alice, &["room", "create", "lab"], ""));
    ok(&run(&alice, &["room", "add", "lab", "bob"], ""));
    let members = ok(&run(&alice, &["room", "members", "lab"], ""));
    let line = |who: &str| {
        members
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("{who} in {members}"))
            .to_owned()
    };
    assert!(line("alice").ends_with(" online"), "the one asking is online: {members}");
    assert!(line("bob").ends_with(" offline"), "bob is not connected: {members}");
    s.stop();
}
