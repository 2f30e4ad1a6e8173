//! Every scenario at a tiny size against a real server (started by the
//! bench: the `conclave` binary beside it, as `cargo test --workspace`
//! builds it): the instrument works and counts right. No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_conclave-bench");

fn bench(args: &[&str]) -> Output {
    Command::new(BENCH).args(["--max-secs", "120", "--json"]).args(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "conclave-bench failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

#[test]
fn fanout_counts_every_delivery_and_decrypts_the_sample() {
    let v = json(&bench(&["fanout", "--members", "6", "--senders", "2", "--messages", "15", "--size", "64"]));
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(n(&v, "expected_deliveries"), 2 * 15 * 5);
    assert_eq!(n(&v, "delivered"), 2 * 15 * 5);
    assert_eq!(n(&v, "lost"), 0);
    assert_eq!(n(&v, "out_of_order"), 0);
    assert_eq!(n(&v, "disconnected"), 0);
    assert_eq!(n(&v, "acked"), 30);
    assert_eq!(n(&v, "refused"), 0);
    assert_eq!(n(&v["latency"], "samples"), 150);
    // Two decrypting members, each received all 30 messages.
    assert_eq!(n(&v, "decrypted"), 60);
    assert_eq!(n(&v, "decrypt_failed"), 0);
    assert!(v["deliveries_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn paced_fanout_delivers_everything() {
    let v = json(&bench(&["fanout", "--members", "4", "--senders", "1", "--messages", "6", "--rate", "50"]));
    assert_eq!(n(&v, "delivered"), 6 * 3);
    assert_eq!(n(&v, "lost"), 0);
    assert_eq!(v["rate_per_sender"], 50.0);
}

#[test]
fn idle_holds_authenticated_connections_and_measures_memory() {
    let v = json(&bench(&["idle", "--clients", "25", "--hold", "0", "--concurrency", "8"]));
    assert_eq!(n(&v, "ready"), 25);
    assert_eq!(n(&v, "open_after_hold"), 25);
    assert!(v["server_rss_after_mib"].as_f64().unwrap() > 0.0);
    assert!(v.get("kib_per_connection").is_some());
}

#[test]
fn memory_pipelines_unread_syncs_and_reads_them_all() {
    let v = json(&bench(&[
        "memory",
        "--registrations",
        "2",
        "--connections",
        "2",
        "--requests",
        "20",
        "--hold",
        "0",
    ]));
    assert_eq!(v["scenario"], "memory");
    assert_eq!(n(&v, "registrations"), 2);
    assert_eq!(n(&v, "answers_read_on_one_connection"), 20);
    // The room's creation and 17 messages: one answer holds them all.
    assert_eq!(n(&v, "entries_per_answer"), 18);
    for key in ["server_rss_idle_mib", "server_rss_peak_while_unread_mib", "server_rss_15s_after_close_mib"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
}

#[test]
fn durable_reports_fsync_on_and_off() {
    let v = json(&bench(&["durable", "--messages", "40", "--senders", "2"]));
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["fsync"], "on");
    assert_eq!(runs[1]["fsync"], "off");
    for r in runs {
        assert_eq!(n(r, "acked"), 40);
        assert_eq!(n(r, "refused"), 0);
    }
}

#[test]
fn login_storm_logs_everyone_in_while_chat_flows() {
    let v = json(&bench(&["login", "--clients", "3", "--members", "3", "--rate", "20", "--duration", "4"]));
    assert_eq!(n(&v, "logins_ok"), 3);
    assert_eq!(n(&v, "logins_failed"), 0);
    assert_eq!(n(&v, "chat_lost"), 0);
    assert_eq!(n(&v, "chat_delivered"), 80 * 2);
    assert!(n(&v["chat_latency_before_storm"], "samples") > 0);
}

#[test]
fn mls_times_every_step_at_each_size() {
    let v = json(&bench(&["mls", "--members", "2,5", "--repeat", "2"]));
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(n(&runs[1], "members"), 5);
    for r in runs {
        for step in [
            "add_one",
            "process_that_commit",
            "join_from_its_welcome",
            "encrypt_one_200_bytes",
            "decrypt_one",
        ] {
            assert_eq!(n(&r[step], "samples"), 2, "{step}");
        }
    }
}

#[test]
fn catchup_decrypts_and_stores_every_message_over_several_pages() {
    // 1,500 messages: two pages of the log (the client asks for 1,000 at a time).
    let v = json(&bench(&["catchup", "--messages", "1500", "--size", "32", "--repeat", "2"]));
    assert_eq!(v["scenario"], "catchup");
    assert_eq!(n(&v, "messages"), 1500);
    assert_eq!(v["catchup_ms"].as_array().unwrap().len(), 2);
    assert_eq!(v["messages_per_s"].as_array().unwrap().len(), 2);
    assert!(v["messages_per_s_median"].as_f64().unwrap() > 0.0);
    assert!(v["messages_per_s_with_connect_median"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_flags_and_foreign_targets_are_refused_with_one_line() {
    for args in [
        &["fanout", "--senders", "0"][..],
        &["fanout", "--members", "3", "--senders", "4"],
        &["fanout", "--size", "1"],
        &["fanout", "--rate", "0"],
        &["mls", "--members", "1"],
        &["catchup", "--messages", "0"],
        &["catchup", "--repeat", "0"],
        &["idle", "--clients", "0"],
        &["idle", "--server", "192.0.2.1:7667", "--fingerprint", "SHA256:00"],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let err = String::from_utf8(
        bench(&["idle", "--server", "192.0.2.1:7667", "--fingerprint", "SHA256:00"]).stderr,
    )
    .unwrap();
    assert!(err.contains("loopback"), "{err}");
}
