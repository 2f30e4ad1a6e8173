//! The `memory` scenario: what a hostile but authenticated client costs the
//! server in memory, and whether the server gives it back.
//!
//! Two findings of issue 14 are reproduced: registrations through the
//! Argon2 pool (each hash takes 19 MiB), and connections that pipeline
//! `Sync` requests with ~1 MiB answers without reading them. The server's
//! RSS is read from /proc before, at its peak (sampled every 50 ms), and
//! after the connections close.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conclave_client::{Chat, DeviceKey};
use conclave_proto::{Request, Response, Seq};

use crate::client::{connect, register_all};
use crate::lean::Lean;
use crate::stats::Report;
use crate::target::{Account, Target};

/// Plaintext of each message of the room: the most a message may hold, less
/// room for the MLS framing, so that about 17 fill one 1 MiB `Sync` answer.
const MESSAGE_BYTES: usize = 60 * 1024;

/// How the wave is shaped.
pub struct Wave {
    /// Accounts registered through the protocol (one Argon2 hash each).
    pub registrations: usize,
    /// Connections pipelining.
    pub connections: usize,
    /// `Sync` requests each connection sends without reading.
    pub requests: usize,
    /// Seconds to hold them unread.
    pub hold: u64,
}

fn mib(kib: Option<u64>) -> serde_json::Value {
    kib.map_or(serde_json::Value::Null, |k| serde_json::json!((k as f64 / 1024.0 * 10.0).round() / 10.0))
}

/// The peak RSS over `over`, sampled every 50 ms.
async fn peak_rss(target: &Target, over: Duration) -> Option<u64> {
    let end = Instant::now() + over;
    let mut peak = target.rss_kib();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(target.rss_kib());
    }
    peak
}

/// Runs the wave against a fresh server (one seeded account owns the room).
pub async fn run(target: Arc<Target>, accounts: Arc<Vec<Account>>, dir: &Path, wave: Wave) -> Result<Report> {
    let mut r = Report::default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.put("server_rss_idle_mib", mib(target.rss_kib()));

    // 1. Registrations, each an Argon2 hash on the server's pool.
    let fresh: Vec<Account> = (0..wave.registrations)
        .map(|i| Account { username: format!("reg{}{i}", target.tag), device: DeviceKey::generate() })
        .collect();
    let start = Instant::now();
    register_all(&target, &fresh).await?;
    r.put("registrations", wave.registrations);
    r.put("registrations_s", (start.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    r.put("server_rss_after_registrations_mib", mib(target.rss_kib()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.put("server_rss_2s_after_registrations_mib", mib(target.rss_kib()));

    // 2. A room whose log fills one `Sync` answer (~1 MiB).
    let owner = &accounts[0];
    let c = connect(&target, owner).await?;
    let profile = dir.join(&owner.username);
    std::fs::create_dir_all(&profile)?;
    let mut chat = Chat::open(&profile, &owner.device, c.conn, c.account)?;
    chat.ensure_key_packages().await?;
    let room = format!("memory{}", target.tag);
    chat.create_room(&room).await.with_context(|| format!("creating room {room}"))?;
    let text = "m".repeat(MESSAGE_BYTES);
    for i in 0..17 {
        chat.send(&room, &format!("{i} {text}")).await.context("filling the room")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = target.rss_kib();
    r.put("server_rss_before_wave_mib", mib(rss_before));

    // 3. The wave: every connection sends all its requests, reads nothing.
    let mut leans = Vec::new();
    for _ in 0..wave.connections {
        leans.push(Lean::connect(&target, owner).await?);
    }
    let sync = || Request::Sync { room: room.clone(), after_seq: Seq::ZERO, limit: 1000 };
    let mut first = None;
    let start = Instant::now();
    for lean in leans.iter_mut() {
        for _ in 0..wave.requests {
            let id = lean.start(sync()).await?;
            first.get_or_insert(id);
        }
    }
    r.put("connections", wave.connections);
    r.put("requests_per_connection", wave.requests);
    r.put("requests_sent_s", (start.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    let peak = peak_rss(&target, Duration::from_secs(wave.hold)).await;
    r.put("server_rss_peak_while_unread_mib", mib(peak));

    // 4. One connection reads all its answers: still served, in full.
    let mut entries_read = 0usize;
    let start = Instant::now();
    let Some(first) = first else { bail!("no request was sent") };
    let reader = &mut leans[0];
    for n in 0..wave.requests as u64 {
        let id = conclave_proto::RequestId(first.0 + n);
        match reader.answer(id).await? {
            Response::Log { entries, .. } => entries_read += entries.len(),
            other => bail!("unexpected answer to Sync: {other:?}"),
        }
    }
    r.put("answers_read_on_one_connection", wave.requests);
    r.put("entries_per_answer", entries_read / wave.requests.max(1));
    r.put("answers_read_s", (start.elapsed().as_secs_f64() * 100.0).round() / 100.0);

    // 5. Close them all; what stays resident?
    drop(leans);
    drop(chat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.put("server_rss_1s_after_close_mib", mib(target.rss_kib()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    r.put("server_rss_5s_after_close_mib", mib(target.rss_kib()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.put("server_rss_15s_after_close_mib", mib(target.rss_kib()));
    r.put("server_threads", target.threads());
    Ok(r)
}
