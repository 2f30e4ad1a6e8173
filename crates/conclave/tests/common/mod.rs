//! Helpers shared by the binary's integration tests: a real `conclave serve`
//! on a loopback port, and client commands run in their own profiles.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use conclave_client::{connect_tls, Chat, DeviceKey, Profile, ServerAddr};

pub const BIN: &str = env!("CARGO_BIN_EXE_conclave");

/// A `conclave serve` child process, killed when dropped.
pub struct Served {
    child: Child,
    /// The address it listens on.
    pub addr: String,
    /// Its certificate fingerprint.
    pub fingerprint: String,
}

impl Served {
    pub fn start(data: &Path, extra: &[&str]) -> Served {
        Self::start_on(data, "127.0.0.1:0", extra)
    }

    pub fn start_on(data: &Path, listen: &str, extra: &[&str]) -> Served {
        Self::spawn(data, listen, extra, &[], Stdio::null())
    }

    /// Like [`Served::start`], with `env` set for the server and its
    /// stderr (its log) written to the file `log`.
    pub fn start_logged(data: &Path, log: &Path, env: &[(&str, &str)]) -> Served {
        Self::spawn(data, "127.0.0.1:0", &[], env, std::fs::File::create(log).unwrap().into())
    }

    fn spawn(data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Served {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = lines.next().unwrap().unwrap();
        let addr = listening.strip_prefix("listening on ").unwrap().to_owned();
        let fp_line = lines.next().unwrap().unwrap();
        let fingerprint = fp_line.strip_prefix("fingerprint ").unwrap().to_owned();
        assert!(fingerprint.starts_with("SHA256:"), "{fp_line}");
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Served { child, addr, fingerprint }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `conclave` with `args` in profile `profile`, feeding `stdin`.
pub fn run(profile: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("CONCLAVE_SERVER")
        .env_remove("CONCLAVE_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts failure with exactly one line on stderr, and returns it.
pub fn fails(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

pub fn profile(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Opens the profile's `Chat` in this process, against the server it pinned:
/// connects, catches up and re-sends whatever was queued. `None` if any step
/// fails (the server may be down).
pub async fn open_chat(dir: &Path, addr: &ServerAddr) -> Option<Chat> {
    let profile = Profile::open(dir).ok()?;
    let pin = profile.pin(addr)?.to_owned();
    let device: DeviceKey = profile.device_key().ok()??;
    let conn = connect_tls(addr, Some(&pin)).await.ok()?.hello().await.ok()?;
    let info = conn.authenticate(&device).await.ok()?;
    let mut chat = Chat::open(dir, &device, conn, info).ok()?;
    chat.catch_up().await.ok()?;
    chat.resend_pending().await.ok()?;
    Some(chat)
}

/// xorshift64*: enough randomness for kill timing in the crash tests, no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A server with alice and bob registered and both in #lab (alice owns it).
pub fn alice_and_bob_in_lab(dir: &Path) -> (Served, PathBuf, PathBuf) {
    let s = Served::start_on(&dir.join("data"), "127.0.0.1:0", &[]);
    let alice = dir.join("alice");
    let bob = dir.join("bob");
    for (profile, name, display) in [(&alice, "alice", "Alice"), (&bob, "bob", "Bob")] {
        ok(&run(
            profile,
            &[
                "--server",
                &s.addr,
                "--fingerprint",
                &s.fingerprint,
                "register",
                name,
                "--password-stdin",
                "--display-name",
                display,
            ],
            "correct horse\n",
        ));
    }
    ok(&run(&alice, &["room", "create", "lab"], ""));
    ok(&run(&alice, &["room", "add", "lab", "bob"], ""));
    (s, alice, bob)
}
