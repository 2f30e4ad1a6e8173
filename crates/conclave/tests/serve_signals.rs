//! `conclave serve` stops on a signal even when its log cannot be written.
//! Regression test: with stderr piped to a reader that had gone (`serve 2>&1
//! | tee log`, then Ctrl+C kills `tee` first), the first log line after the
//! signal panicked inside tracing's error report, before the shutdown was
//! triggered, and the server never stopped.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

#[test]
fn serve_stops_on_sigterm_when_its_log_reader_is_gone() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(listening.starts_with("listening on "), "{listening}");
    std::thread::spawn(move || lines.for_each(drop));
    // The log's reader goes away, as `tee` does on Ctrl+C.
    drop(child.stderr.take());

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("conclave serve was still running 30 s after SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
