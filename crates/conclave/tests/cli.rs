//! Drives the `conclave` binary as a user would: a real `conclave serve` on
//! a loopback port with its data in a temp dir, and client commands run in
//! their own profile directories.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fails, ok, profile, run, Served, BIN};

#[test]
fn register_whoami_and_a_second_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let alice = profile(&dir, "alice");
    let fp = s.fingerprint.clone();
    let out = run(
        &alice,
        &[
            "--server",
            &s.addr,
            "--fingerprint",
            &fp,
            "register",
            "alice",
            "--password-stdin",
            "--display-name",
            "Alice",
        ],
        "correct horse\n",
    );
    assert!(ok(&out).contains("registered alice (Alice), device 1"));

    // The server and pin are remembered: no flags needed now.
    let out = ok(&run(&alice, &["whoami"], ""));
    assert_eq!(out.trim(), format!("alice (Alice), device 1, server {} {fp}", s.addr));

    let laptop = profile(&dir, "laptop");
    let out = run(
        &laptop,
        &["--server", &s.addr, "--accept-new-server", "login", "alice", "--password-stdin"],
        "correct horse\n",
    );
    assert!(ok(&out).contains("device 2"));
    assert!(ok(&run(&laptop, &["whoami"], "")).starts_with("alice (Alice), device 2"));

    // Same error for a wrong password and an unknown user.
    let wrong = fails(&run(
        &profile(&dir, "x"),
        &["--server", &s.addr, "--accept-new-server", "login", "alice", "--password-stdin"],
        "wrong password\n",
    ));
    let unknown = fails(&run(
        &profile(&dir, "y"),
        &["--server", &s.addr, "--accept-new-server", "login", "zed", "--password-stdin"],
        "wrong password\n",
    ));
    assert_eq!(wrong, unknown);
    assert!(wrong.contains("invalid username or password"), "{wrong}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&alice), 0o700);
        assert_eq!(mode(&alice.join("device.key")), 0o600);
        assert_eq!(mode(&alice.join("profile.json")), 0o600);
        assert_eq!(mode(&dir.path().join("data/server.db")), 0o600);
        assert_eq!(mode(&dir.path().join("data/tls/key.pem")), 0o600);
    }
    s.stop();
}

#[test]
fn first_contact_needs_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let p = profile(&dir, "p");
    // No terminal, no flag: refused, with the fingerprint and what to do.
    let err =
        fails(&run(&p, &["--server", &s.addr, "register", "pat", "--password-stdin"], "correct horse\n"));
    assert!(err.contains(&s.fingerprint) && err.contains("--fingerprint"), "{err}");
    // A wrong expected fingerprint: refused.
    let other = format!("SHA256:{}", "0".repeat(64));
    let err = fails(&run(
        &p,
        &["--server", &s.addr, "--fingerprint", &other, "register", "pat", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("not the"), "{err}");
    // A malformed one: a clear error.
    let err = fails(&run(
        &p,
        &["--server", &s.addr, "--fingerprint", "abc", "register", "pat", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("fingerprint"), "{err}");
    s.stop();
}

#[test]
fn a_changed_certificate_is_refused_even_with_accept_new_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Served::start(&data, &[]);
    let p = profile(&dir, "p");
    ok(&run(
        &p,
        &["--server", &s.addr, "--accept-new-server", "register", "quinn", "--password-stdin"],
        "correct horse\n",
    ));
    let old_fp = s.fingerprint.clone();
    let old_addr = s.addr.clone();
    s.stop();

    // The operator wipes the certificate; a new one is made on start.
    std::fs::remove_dir_all(data.join("tls")).unwrap();
    let s = Served::start_on(&data, &old_addr, &[]);
    assert_ne!(s.fingerprint, old_fp);
    let err = fails(&run(&p, &["--server", &old_addr, "--accept-new-server", "whoami"], ""));
    assert!(err.contains(&old_fp) && err.contains(&s.fingerprint), "{err}");
    assert!(err.contains("forget-server"), "{err}");

    // Re-pinning deliberately works.
    ok(&run(&p, &["forget-server", &old_addr], ""));
    let out = ok(&run(&p, &["--fingerprint", &s.fingerprint, "whoami"], ""));
    assert!(out.contains(&s.fingerprint));
    s.stop();
}

#[test]
fn accounts_and_the_certificate_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Served::start(&data, &[]);
    let p = profile(&dir, "p");
    ok(&run(
        &p,
        &["--server", &s.addr, "--accept-new-server", "register", "rita", "--password-stdin"],
        "correct horse\n",
    ));
    let fp = s.fingerprint.clone();
    let addr = s.addr.clone();
    s.stop();
    let s = Served::start_on(&data, &addr, &[]);
    assert_eq!(s.fingerprint, fp);
    let out = ok(&run(&p, &["whoami"], ""));
    assert!(out.starts_with("rita (rita), device 1"), "{out}");
    s.stop();
}

#[test]
fn invitation_tokens_from_admin_invite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Served::start(&data, &["--registration", "token"]);
    let p = profile(&dir, "p");
    let err = fails(&run(
        &p,
        &["--server", &s.addr, "--accept-new-server", "register", "sam", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("--token"), "{err}");
    let out = Command::new(BIN).args(["admin", "invite", "--data"]).arg(&data).output().unwrap();
    let token = ok(&out).trim().to_owned();
    ok(&run(
        &p,
        &[
            "--server",
            &s.addr,
            "--accept-new-server",
            "register",
            "sam",
            "--password-stdin",
            "--token",
            &token,
        ],
        "correct horse\n",
    ));
    let err = fails(&run(
        &profile(&dir, "q"),
        &[
            "--server",
            &s.addr,
            "--accept-new-server",
            "register",
            "tom",
            "--password-stdin",
            "--token",
            &token,
        ],
        "correct horse\n",
    ));
    assert!(err.contains("invalid or already used"), "{err}");
    s.stop();
}

#[test]
fn cli_misuse_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(&dir, "p");
    let err = fails(&run(&p, &["register", "uma", "--password-stdin"], "correct horse\n"));
    assert!(err.contains("no server known") && err.contains("--server"), "{err}");
    let err = fails(&run(
        &p,
        &["--server", "not an address", "register", "uma", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("bad server address"), "{err}");
    let err = fails(&run(
        &p,
        &["--server", "localhost:99999", "register", "uma", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("port"), "{err}");
    let err = fails(&run(
        &p,
        &["--server", "127.0.0.1:1", "register", "Bad Name", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("username may contain only"), "{err}");
    let err = fails(&run(&p, &["--server", "127.0.0.1:1", "register", "uma", "--password-stdin"], "short\n"));
    assert!(err.contains("at least 8"), "{err}");
    let err = fails(&run(&p, &["--server", "127.0.0.1:1", "register", "uma"], ""));
    assert!(err.contains("--password-stdin"), "{err}");
    let err = fails(&run(
        &p,
        &["--server", "127.0.0.1:1", "--accept-new-server", "register", "uma", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    let err = fails(&run(&p, &["whoami"], ""));
    assert!(err.contains("conclave register"), "{err}");
    let out = Command::new(BIN)
        .args(["admin", "invite", "--data"])
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("conclave serve --data"), "{err}");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.pem",
            "--data",
        ])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("/nonexistent.pem"), "{err}");
}

#[test]
fn a_first_conversation_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let profiles: Vec<PathBuf> = ["alice", "bob", "carol"].iter().map(|n| profile(&dir, n)).collect();
    for (p, name) in profiles.iter().zip(["alice", "bob", "carol"]) {
        let display = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        ok(&run(
            p,
            &[
                "--server",
                &s.addr,
                "--accept-new-server",
                "register",
                name,
                "--password-stdin",
                "--display-name",
                &display,
            ],
            "correct horse\n",
        ));
    }
    let (alice, bob, carol) = (&profiles[0], &profiles[1], &profiles[2]);
    assert!(ok(&run(alice, &["room", "create", "lab"], "")).contains("created #lab"));
    ok(&run(alice, &["room", "add", "lab", "bob", "carol"], ""));
    ok(&run(alice, &["send", "lab", "the build is green"], ""));
    ok(&run(bob, &["send", "lab"], "piped from stdin\n"));

    let out = ok(&run(carol, &["tail", "lab"], ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].ends_with(" * bob, carol joined #lab"), "{out}");
    assert!(lines[1].ends_with(" <Alice (alice)> the build is green"), "{out}");
    assert!(lines[2].ends_with(" <Bob (bob)> piped from stdin"), "{out}");
    assert_eq!(lines[1].as_bytes()[2], b':', "HH:MM:SS first: {out}");

    let out = ok(&run(carol, &["tail", "lab", "--json", "--since", "3"], ""));
    let first = out.lines().next().unwrap();
    assert!(first.contains(r#""kind":"message""#) && first.contains(r#""sender":"bob""#), "{out}");
    assert!(
        first.contains(r#""room":"lab""#) && first.contains(r#""seq":4"#) && first.contains(r#""time":"#)
    );

    let out = ok(&run(alice, &["room", "members", "lab"], ""));
    assert!(out.contains("Alice (alice)") && out.contains("owner") && out.contains("Bob (bob)"), "{out}");

    // A plain member may not remove; the owner promotes, then removes.
    let err = fails(&run(bob, &["room", "remove", "lab", "carol"], ""));
    assert!(err.contains("permission denied: only owners and admins can"), "{err}");
    ok(&run(alice, &["room", "role", "lab", "carol", "admin"], ""));
    ok(&run(carol, &["room", "remove", "lab", "bob"], ""));
    ok(&run(alice, &["send", "lab", "bob is out"], ""));
    let out = ok(&run(alice, &["tail", "lab"], ""));
    assert!(out.contains("* alice made carol admin") && out.contains("* carol removed bob"), "{out}");
    assert!(out.contains("<Alice (alice)> bob is out"), "{out}");
    let err = fails(&run(bob, &["tail", "lab"], ""));
    assert!(err.contains("no longer a member of #lab"), "{err}");
    let bob_saw = String::from_utf8(run(bob, &["tail", "lab"], "").stdout).unwrap();
    assert!(!bob_saw.contains("bob is out"), "{bob_saw}");

    ok(&run(carol, &["room", "leave", "lab"], ""));
    assert!(ok(&run(alice, &["tail", "lab"], "")).contains("* carol left"));
    assert!(ok(&run(alice, &["room", "list"], "")).contains("#lab"));
    assert!(ok(&run(carol, &["room", "list"], "")).contains("no rooms yet"));
    let err = fails(&run(carol, &["send", "lab", "hello?"], ""));
    assert!(err.contains("not a member of #lab"), "{err}");
    s.stop();
}

#[test]
fn members_who_share_a_display_name_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(&dir.path().join("data"), &[]);
    let register = |name: &str, display: Option<&str>| {
        let p = profile(&dir, name);
        let mut args = vec!["--server", &s.addr, "--accept-new-server", "register", name, "--password-stdin"];
        if let Some(d) = display {
            args.extend(["--display-name", d]);
        }
        ok(&run(&p, &args, "correct horse\n"));
        p
    };
    // Two people call themselves Sam; carol keeps her username; mallory
    // calls herself "carol".
    let alice = register("alice", Some("Sam"));
    let bob = register("bob", Some("Sam"));
    let carol = register("carol", None);
    let mallory = register("mallory", Some("carol"));
    ok(&run(&alice, &["room", "create", "lab"], ""));
    ok(&run(&alice, &["room", "add", "lab", "bob", "carol", "mallory"], ""));
    ok(&run(&alice, &["send", "lab", "from alice"], ""));
    ok(&run(&bob, &["send", "lab", "from bob"], ""));
    ok(&run(&carol, &["send", "lab", "from carol"], ""));
    ok(&run(&mallory, &["send", "lab", "from mallory"], ""));

    let out = ok(&run(&carol, &["tail", "lab"], ""));
    let said = |who: &str, text: &str| out.lines().any(|l| l.ends_with(&format!(" <{who}> {text}")));
    assert!(said("Sam (alice)", "from alice"), "{out}");
    assert!(said("Sam (bob)", "from bob"), "{out}");
    // carol's display name is her username, but mallory uses it too.
    assert!(said("carol (carol)", "from carol"), "{out}");
    assert!(said("carol (mallory)", "from mallory"), "{out}");

    let out = ok(&run(&bob, &["room", "members", "lab"], ""));
    let listed: Vec<&str> = out.lines().map(|l| l.split("  ").next().unwrap_or("").trim()).collect();
    for want in ["Sam (alice)", "Sam (bob)", "carol (carol)", "carol (mallory)"] {
        assert!(listed.contains(&want), "{want}: {out}");
    }

    // Once mallory is gone, carol's name is hers alone and shows bare.
    ok(&run(&alice, &["room", "remove", "lab", "mallory"], ""));
    ok(&run(&carol, &["send", "lab", "just me"], ""));
    let out = ok(&run(&alice, &["tail", "lab"], ""));
    assert!(out.lines().any(|l| l.ends_with(" <carol> just me")), "{out}");
    assert!(out.lines().any(|l| l.ends_with(" <Sam (bob)> from bob")), "{out}");
    s.stop();
}

#[test]
fn names_that_hide_text_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(&dir, "p");
    // Port 1: nothing listens, so these errors come from the client itself.
    let register = |name: &str, display: &str| {
        fails(&run(
            &p,
            &["--server", "127.0.0.1:1", "register", name, "--password-stdin", "--display-name", display],
            "correct horse\n",
        ))
    };
    let err = register("dave", "dave\u{202E}gpj.exe");
    assert!(err.contains("U+202E") && err.contains("bidirectional"), "{err}");
    let err = register("dave", "da\u{200B}ve");
    assert!(err.contains("U+200B") && err.contains("zero-width"), "{err}");
    let err = register("dave", "\u{301}");
    assert!(err.contains("visible character"), "{err}");
    for bad in [".", "..", "-", ".hidden"] {
        let err = register(bad, "Dave");
        assert!(err.contains("must start with a letter or a digit"), "{bad:?}: {err}");
    }
    // A fingerprint with non-ASCII text used to panic (a slice inside "é").
    let err = fails(&run(
        &p,
        &["--server", "127.0.0.1:1", "--fingerprint", "ééééééé", "register", "dave", "--password-stdin"],
        "correct horse\n",
    ));
    assert!(err.contains("is not a SHA-256 fingerprint"), "{err}");
    // A sequence number is a whole number; anything else says so (in clap's
    // usage-error form: the message, then a pointer to --help; exit code 2).
    for bad in ["-1", "3.5", "ééé", "18446744073709551616"] {
        let out = run(&p, &["tail", "lab", &format!("--since={bad}")], "");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains("is not a sequence number") && first.contains("whole number"),
            "{bad:?}: {err}"
        );
    }
}
