//! `conclave serve --log-format text|json` (issue 17, item 4): every line
//! about a connection names it, with the same id from its first line to its
//! last, in either format.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ok, profile, run, Served};

/// Runs a server logging to `log` with `env`, registers alice and asks
/// whoami (two connections), and returns the log once both sessions ended.
fn two_sessions(dir: &tempfile::TempDir, log: &Path, env: &[(&str, &str)]) -> String {
    let server = Served::start_logged(&dir.path().join("data"), log, env);
    let alice = profile(dir, "alice");
    ok(&run(
        &alice,
        &["--server", &server.addr, "--accept-new-server", "register", "alice", "--password-stdin"],
        "correct horse\n",
    ));
    ok(&run(&alice, &["whoami"], ""));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.matches("session ended").count() >= 2 {
            server.stop();
            return text;
        }
        assert!(Instant::now() < deadline, "the two sessions never ended in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_lines_carry_the_connection_they_are_about() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let text = two_sessions(&dir, &log, &[("CONCLAVE_LOG_FORMAT", "json")]);
    // Every line is one JSON object; those about a connection carry it.
    let mut by_conn: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        let message = v["message"].as_str().unwrap_or_default().to_owned();
        if let Some(span) = v.get("span") {
            assert_eq!(span["name"], "session", "{line}");
            let conn = span["conn"].as_u64().unwrap_or_else(|| panic!("no conn id: {line}"));
            assert!(span["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{line}");
            by_conn.entry(conn).or_default().push(message);
        } else {
            for about in ["signed in", "session ended", "account registered", "device authenticated"] {
                assert!(!message.contains(about), "a line about a connection without it: {line}");
            }
        }
    }
    // Two connections, each named by one id from its first line to its last.
    let register =
        by_conn.values().find(|m| m.iter().any(|m| m == "account registered")).expect("registered");
    assert!(register.iter().any(|m| m == "session ended"), "{by_conn:?}");
    let whoami =
        by_conn.values().find(|m| m.iter().any(|m| m == "device authenticated")).expect("authenticated");
    assert!(whoami.iter().any(|m| m == "session ended"), "{by_conn:?}");
    assert_eq!(by_conn.values().filter(|m| m.iter().any(|m| m == "session ended")).count(), 2, "{by_conn:?}");
}

#[test]
fn text_lines_name_the_connection_too_and_a_bad_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let text = two_sessions(&dir, &log, &[]);
    let ended: Vec<&str> = text.lines().filter(|l| l.contains("session ended")).collect();
    assert_eq!(ended.len(), 2, "{text}");
    for line in ended {
        assert!(line.contains("session{conn=") && line.contains("peer=127.0.0.1:"), "{line}");
    }
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--log-format", "yaml", "--data"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid value 'yaml'") && err.contains("text") && err.contains("json"), "{err}");
}
