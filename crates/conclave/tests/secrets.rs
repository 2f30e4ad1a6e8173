//! Secrets hygiene (issue 6): a whole conversation runs with `RUST_LOG=trace`
//! on the server and on every client command, and no log line may carry a
//! password, a private key or a message's plaintext. "Private key" means each
//! profile's `device.key`, the server's TLS key, and every private key and
//! secret OpenMLS stores in a profile's `mls.db` (HPKE keys, epoch secrets,
//! ratchets), which is what OpenMLS's `crypto-debug` feature would print if
//! anything in the dependency graph ever turned it on. Each is looked for in
//! every shape a careless `Debug` or trace line would print it in: text, hex
//! in either case, base64, and the byte lists of `{:?}`, `{:x?}` and JSON.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Served, BIN};

/// How long one client command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Client commands, each at trace level with its stderr kept in its own file.
struct Clients {
    dir: PathBuf,
    addr: String,
    logs: Vec<PathBuf>,
}

/// What a finished client command left behind.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Clients {
    fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("profiles").join(name)
    }

    /// Runs `conclave --profile P --server ADDR --accept-new-server ARGS`,
    /// feeding `stdin`, and kills it if it outlives [`COMMAND_TIMEOUT`].
    fn run(&mut self, profile: &str, args: &[&str], stdin: &str) -> Ran {
        let n = self.logs.len();
        let out_path = self.dir.join(format!("client-{n:02}.out"));
        let log = self.dir.join(format!("client-{n:02}-{profile}-{}.log", args[0]));
        let mut child = Command::new(BIN)
            .arg("--profile")
            .arg(self.profile(profile))
            .args(["--server", &self.addr, "--accept-new-server"])
            .args(args)
            .env("RUST_LOG", "trace")
            .env_remove("CONCLAVE_SERVER")
            .env_remove("CONCLAVE_PROFILE")
            .stdin(Stdio::piped())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`conclave {}` did not finish within {COMMAND_TIMEOUT:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.logs.push(log.clone());
        Ran {
            success: status.success(),
            stdout: std::fs::read_to_string(&out_path).unwrap(),
            stderr: String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned(),
        }
    }

    fn ok(&mut self, profile: &str, args: &[&str], stdin: &str) -> String {
        let ran = self.run(profile, args, stdin);
        assert!(
            ran.success,
            "`conclave {}` failed\nstdout: {}\nstderr (tail): {}",
            args.join(" "),
            ran.stdout,
            tail(&ran.stderr)
        );
        ran.stdout
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The shapes in which `secret` could reach a log line: itself if it is text,
/// hex in both cases, base64, and the comma-separated bytes of `{:?}`,
/// `{:x?}` and `{:X?}` on a `[u8]` and of a JSON array (without brackets, so
/// a secret inside a larger buffer is caught too).
fn shapes(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_owned());
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_uppercase());
    out.push(hex);
    let list = |f: fn(&u8) -> String| secret.iter().map(f).collect::<Vec<_>>().join(", ");
    out.push(list(|b| format!("{b}")));
    out.push(list(|b| format!("{b:x}")));
    out.push(list(|b| format!("{b:X}")));
    out.push(secret.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
    out.push(base64(secret));
    out
}

/// The private values OpenMLS keeps in a profile's `mls.db` (HPKE private
/// keys of leaves and KeyPackages, the signature key, epoch and ratchet
/// secrets): every byte string of at least 16 bytes found under a CBOR map
/// key that names a private key or a secret, with where it was found.
fn mls_secrets(db: &Path) -> Vec<(String, Vec<u8>)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'openmls%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for (i, column) in columns.iter().enumerate() {
                if let Ok(blob) = row.get::<_, Vec<u8>>(i) {
                    if let Ok(value) = ciborium::from_reader::<ciborium::Value, _>(&blob[..]) {
                        collect_private(&value, &format!("{table}.{column}"), false, &mut out);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

fn collect_private(value: &ciborium::Value, path: &str, private: bool, out: &mut Vec<(String, Vec<u8>)>) {
    use ciborium::Value;
    if private {
        let bytes = match value {
            Value::Bytes(b) => Some(b.clone()),
            Value::Array(items) => {
                items.iter().map(|v| v.as_integer().and_then(|i| u8::try_from(i).ok())).collect()
            }
            _ => None,
        };
        if let Some(bytes) = bytes.filter(|b| b.len() >= 16) {
            out.push((path.to_owned(), bytes));
            return;
        }
    }
    match value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let key = k.as_text().unwrap_or("?");
                // The group context is public: it is the KDF context, logged at trace.
                if key.contains("public") || key.contains("context") {
                    continue;
                }
                let named = key.contains("private") || key.contains("secret") || key.contains("ratchet");
                collect_private(v, &format!("{path}.{key}"), private || named, out);
            }
        }
        Value::Array(items) => {
            items.iter().for_each(|v| collect_private(v, &format!("{path}[]"), private, out))
        }
        Value::Tag(_, v) => collect_private(v, path, private, out),
        _ => {}
    }
}

fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    assert_eq!(text.len(), 64, "a device key is 64 hex digits: {text:?}");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 of `bytes`, whole characters only: the prefix every
/// base64 encoding of a buffer that starts with `bytes` shares.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(BASE64[((acc >> bits) & 63) as usize] as char);
        }
    }
    out
}

/// Standard base64, enough for a PEM body.
fn unbase64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = BASE64.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The scanner itself: each way a secret is commonly formatted is caught.
#[test]
fn the_scanner_knows_the_usual_shapes() {
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(5)).collect();
    let all = shapes(&secret);
    let caught = |line: String| assert!(all.iter().any(|s| line.contains(s.as_str())), "missed: {line}");
    caught(format!("seed={secret:?} more"));
    caught(format!("buf {:x?}", [&[9u8, 9][..], &secret, &[1]].concat()));
    caught(format!("{secret:X?}"));
    caught(format!("0x{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    caught(format!(r#"{{"key":[{}]}}"#, secret.iter().map(u8::to_string).collect::<Vec<_>>().join(",")));
    caught(format!("key={}==", base64(&secret)));
    let pem_like = base64(&[secret.clone(), vec![1, 2, 3]].concat());
    assert_eq!(unbase64(&pem_like)[..30], secret[..30]);
    assert!(shapes(b"hunter2 password").iter().any(|s| s == "hunter2 password"));
}

#[test]
fn no_password_key_or_plaintext_reaches_a_log_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server_log = dir.path().join("server.log");
    let server = Served::start_logged(&dir.path().join("data"), &server_log, &[("RUST_LOG", "trace")]);
    let mut c = Clients { dir: dir.path().to_owned(), addr: server.addr.clone(), logs: Vec::new() };

    let alice_password = "Alice-pw-tangerine-quokka-7731";
    let bob_password = "Bob-pw-marmalade-axolotl-4419";
    let carol_password = "Carol-pw-lighthouse-wombat-9052";
    let wrong_password = "Wrong-pw-gooseberry-narwhal-1186";
    let plaintexts = [
        "plaintext-one: the vault code is 48151623",
        "plaintext-two from stdin: meet at the old pier",
        "plaintext-three from the laptop: bring the maps",
        "plaintext-four after carol left the room",
    ];

    for (name, password) in [("alice", alice_password), ("bob", bob_password), ("carol", carol_password)] {
        let out = c.ok(name, &["register", name, "--password-stdin"], &format!("{password}\n"));
        assert!(out.contains(&format!("registered {name}")), "{out}");
    }
    // A second device for alice, and a login with the wrong password.
    let out = c.ok("alice-laptop", &["login", "alice", "--password-stdin"], &format!("{alice_password}\n"));
    assert!(out.contains("device 2"), "{out}");
    let wrong = c.run("mallory", &["login", "alice", "--password-stdin"], &format!("{wrong_password}\n"));
    assert!(!wrong.success && wrong.stderr.contains("invalid username or password"), "{}", wrong.stderr);

    c.ok("alice", &["room", "create", "vault"], "");
    c.ok("alice", &["room", "add", "vault", "bob", "carol"], "");
    c.ok("alice", &["send", "vault", plaintexts[0]], "");
    c.ok("bob", &["send", "vault"], &format!("{}\n", plaintexts[1]));
    c.ok("alice-laptop", &["send", "vault", plaintexts[2]], "");
    let seen = c.ok("carol", &["tail", "vault"], "");
    for p in &plaintexts[..3] {
        assert!(seen.contains(p), "carol should read {p:?}: {seen}");
    }
    c.ok("alice", &["room", "remove", "vault", "carol"], "");
    c.ok("bob", &["send", "vault", plaintexts[3]], "");
    let seen = c.ok("alice-laptop", &["tail", "vault"], "");
    assert!(seen.contains(plaintexts[3]), "{seen}");
    c.ok("bob", &["room", "leave", "vault"], "");
    let seen = c.ok("alice", &["tail", "vault"], "");
    assert!(seen.contains("bob left"), "{seen}");

    // What must not leak: the passwords, every device's key, the server's
    // TLS key, every plaintext.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, password) in [
        ("alice's password", alice_password),
        ("bob's password", bob_password),
        ("carol's password", carol_password),
        ("the wrong password", wrong_password),
    ] {
        secrets.push((what.to_owned(), password.as_bytes().to_vec()));
    }
    for profile in ["alice", "alice-laptop", "bob", "carol", "mallory"] {
        let path = c.profile(profile).join("device.key");
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert_eq!(profile, "mallory", "{} is missing", path.display());
            continue;
        };
        secrets.push((format!("{profile}'s device.key (text)"), text.trim().as_bytes().to_vec()));
        secrets.push((format!("{profile}'s device seed"), unhex(&text)));
        // The failed login never got as far as MLS state.
        if profile == "mallory" {
            continue;
        }
        let mls = mls_secrets(&c.profile(profile).join("mls.db"));
        assert!(mls.len() > 2, "too few MLS secrets found in {profile}'s mls.db: {}", mls.len());
        for (path, secret) in mls {
            secrets.push((format!("{profile}'s MLS secret {path}"), secret));
        }
    }
    let pem = std::fs::read_to_string(dir.path().join("data/tls/key.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    // Whole lines only: a short last line could match by chance.
    for (i, line) in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 24).enumerate() {
        secrets.push((format!("the server's TLS key, PEM line {i}"), line.as_bytes().to_vec()));
    }
    secrets.push(("the server's TLS key (DER)".to_owned(), unbase64(&body)));
    for (i, p) in plaintexts.iter().enumerate() {
        secrets.push((format!("plaintext {i}"), p.as_bytes().to_vec()));
    }

    // Stop the server before reading its log, so the log is complete.
    server.stop();

    let mut logs = vec![server_log.clone()];
    logs.extend(c.logs.iter().cloned());
    let patterns: Vec<(&str, String)> = secrets
        .iter()
        .flat_map(|(what, secret)| shapes(secret).into_iter().map(move |p| (what.as_str(), p)))
        .collect();
    let mut leaks = Vec::new();
    for log in &logs {
        let mut bytes = Vec::new();
        File::open(log).unwrap().read_to_end(&mut bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let name = log.file_name().unwrap().to_string_lossy();
        for (what, pattern) in &patterns {
            for (at, _) in text.match_indices(pattern.as_str()) {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = text[start..].lines().next().unwrap_or("").chars().take(300).collect();
                leaks.push(format!("{what} in {name}: {excerpt}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} secret(s) in the logs:\n{}", leaks.len(), leaks.join("\n"));

    // The scan means something only if the logs were written at all.
    let server_text = std::fs::read_to_string(&server_log).unwrap();
    for expected in ["connection opened", "account registered", "device enrolled by login", "login failed"] {
        assert!(server_text.contains(expected), "the server log lacks {expected:?}:\n{}", tail(&server_text));
    }
    assert!(server_text.lines().any(|l| l.contains("TRACE")), "the server did not log at trace");
    let client_lines: usize =
        c.logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default().lines().count()).sum();
    assert!(client_lines > c.logs.len(), "the clients logged almost nothing ({client_lines} lines)");
}
