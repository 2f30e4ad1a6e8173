//! `conclave admin stats|users|rooms [--json]` against the data directory of
//! a server that is running and serving (issue 17, item 7, the reports).

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{alice_and_bob_in_lab, fails, ok, profile, run};

#[test]
fn the_reports_count_what_the_running_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, alice, bob) = alice_and_bob_in_lab(dir.path());
    ok(&run(&alice, &["send", "lab", "hello"], ""));
    ok(&run(&alice, &["room", "create", "quiet"], ""));
    let data = data.to_str().unwrap();
    let admin = |what: &str, json: bool| {
        let mut args = vec!["admin", what, "--data", data];
        if json {
            args.push("--json");
        }
        ok(&run(&alice, &args, ""))
    };

    let stats: serde_json::Value = serde_json::from_str(&admin("stats", true)).unwrap();
    assert_eq!(
        (stats["users"].as_u64(), stats["devices"].as_u64(), stats["rooms"].as_u64()),
        (Some(2), Some(2), Some(2))
    );
    // lab: Created, the commit adding bob, the message; quiet: Created.
    assert_eq!(stats["log_entries"].as_u64(), Some(4), "{stats}");
    assert!(stats["database_bytes"].as_u64().unwrap() > 0);
    let table = admin("stats", false);
    assert!(table.starts_with("what") && table.contains("log entries  4"), "{table}");

    let users: serde_json::Value = serde_json::from_str(&admin("users", true)).unwrap();
    let names: Vec<&str> =
        users.as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!((users[0]["rooms"].as_u64(), users[1]["rooms"].as_u64()), (Some(2), Some(1)));
    assert_eq!(users[0]["devices"].as_u64(), Some(1));
    assert!(users[0]["last_active_ms"].as_u64().is_some(), "alice wrote: {users}");
    assert!(users[1]["last_active_ms"].is_null(), "bob never wrote: {users}");
    let table = admin("users", false);
    assert!(table.lines().next().unwrap().starts_with("username  display name  devices"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    let rooms: serde_json::Value = serde_json::from_str(&admin("rooms", true)).unwrap();
    assert_eq!(rooms[0]["name"], "lab");
    assert_eq!((rooms[0]["members"].as_u64(), rooms[0]["log_entries"].as_u64()), (Some(2), Some(3)));
    assert_eq!((rooms[0]["epoch"].as_u64(), rooms[1]["name"].as_str()), (Some(1), Some("quiet")));
    assert!(admin("rooms", false).contains("#lab"));

    // The server went on serving beside the reports.
    ok(&run(&bob, &["send", "lab", "still here"], ""));
    let stats: serde_json::Value = serde_json::from_str(&admin("stats", true)).unwrap();
    assert_eq!(stats["log_entries"].as_u64(), Some(5));

    // A directory with no server in it is not made into one.
    let nowhere = dir.path().join("nowhere");
    let err = fails(&run(&alice, &["admin", "stats", "--data", nowhere.to_str().unwrap()], ""));
    assert!(err.contains("no server database in") && err.contains("start `conclave serve"), "{err}");
    assert!(!nowhere.join("server.db").exists());
}

#[test]
fn a_disabled_account_is_closed_and_refused_until_enabled() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, alice, bob) = alice_and_bob_in_lab(dir.path());
    let data = data.to_str().unwrap();

    // Alice is connected and following the room when she is disabled.
    let mut follow = Command::new(common::BIN)
        .arg("--profile")
        .arg(&alice)
        .args(["tail", "lab", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ok(&run(&bob, &["send", "lab", "before"], ""));
    std::thread::sleep(Duration::from_millis(500));
    let said = ok(&run(&bob, &["admin", "disable", "alice", "--data", data], ""));
    assert!(said.contains("disabled alice"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "alice's tail --follow was not closed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = follow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{err}");
    assert!(err.contains("disabled by the server's operator"), "{err}");

    // Refused while disabled, on this device and on a new one; bob is not.
    let err = fails(&run(&alice, &["whoami"], ""));
    assert!(err.contains("disabled by the server's operator"), "{err}");
    let laptop = profile(&dir, "alice-laptop");
    let err = fails(&run(
        &laptop,
        &["--server", &server.addr, "--accept-new-server", "login", "alice", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("disabled by the server's operator"), "{err}");
    ok(&run(&bob, &["send", "lab", "bob carries on"], ""));

    // Enabled again: alice signs in and reads what was said.
    assert!(ok(&run(&bob, &["admin", "enable", "alice", "--data", data], "")).contains("enabled alice"));
    assert!(ok(&run(&alice, &["whoami"], "")).starts_with("alice"));
    let lines = ok(&run(&alice, &["tail", "lab"], ""));
    assert!(lines.contains("bob carries on"), "{lines}");

    let err = fails(&run(&bob, &["admin", "disable", "nobody", "--data", data], ""));
    assert!(err.contains("no account is named nobody"), "{err}");
}
