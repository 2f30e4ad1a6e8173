//! The scenarios: each sets up what it needs, runs bounded, and reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use conclave_client::engine::{Applied, Engine, HistoryKind, Item, Meta};
use conclave_client::{connect_tls, DeviceKey};
use conclave_proto::{Password, Seq};
use serde_json::json;

use crate::client::connect_all;
use crate::stats::{latency, Report};
use crate::target::{ServerSpec, Target, BENCH_PASSWORD, STARTED};
use crate::traffic::{self, Load};
use crate::{room, Cli, Scenario};

/// Kills the servers this process started (the watchdog's last act).
pub fn kill_started_servers() {
    if let Ok(started) = STARTED.lock() {
        for pid in started.iter() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn spec(cli: &Cli, extra: &[&str]) -> Result<ServerSpec> {
    let conclave = match &cli.conclave {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe()?;
            exe.with_file_name(format!("conclave{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if cli.server.is_none() {
        ensure!(
            conclave.exists(),
            "no conclave binary at {}: build it (cargo build --release -p conclave) or name it with --conclave",
            conclave.display()
        );
    }
    let mut extra_args: Vec<String> = cli.serve_args.clone();
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    Ok(ServerSpec {
        conclave,
        cpus: cli.server_cpus.clone(),
        external: cli.server.clone(),
        fingerprint: cli.fingerprint.clone(),
        pid: cli.server_pid,
        extra: extra_args,
    })
}

fn mib(kib: Option<u64>) -> serde_json::Value {
    kib.map_or(serde_json::Value::Null, |k| json!((k as f64 / 1024.0 * 10.0).round() / 10.0))
}

fn cpu_percent(cpu: Option<f64>, over: Duration) -> serde_json::Value {
    cpu.map_or(serde_json::Value::Null, |c| json!((c / over.as_secs_f64().max(1e-9) * 100.0).round()))
}

/// CPU time the host took over a run, per CPU (`cpu0`, `cpu1`, …).
fn steal(per_cpu: Option<&[u64]>) -> serde_json::Value {
    per_cpu.map_or(serde_json::Value::Null, |v| {
        serde_json::Value::Object(
            v.iter().enumerate().map(|(i, ms)| (format!("cpu{i}"), json!(ms))).collect(),
        )
    })
}

/// Runs the scenario the command line names.
pub async fn run(cli: &Cli) -> Result<Vec<(String, Report)>> {
    let max = Duration::from_secs(cli.max_secs);
    match cli.scenario.clone() {
        Scenario::Idle { clients, hold } => Ok(vec![("idle".into(), idle(cli, clients, hold).await?)]),
        Scenario::Fanout { members, senders, messages, size, rate, decryptors } => {
            ensure!(members >= 2, "--members must be at least 2");
            ensure!(senders >= 1 && senders <= members, "--senders must be between 1 and --members");
            ensure!(messages >= 1, "--messages must be at least 1");
            ensure!(
                (16..=conclave_proto::MAX_MESSAGE_BYTES).contains(&size),
                "--size must be between 16 and {} bytes",
                conclave_proto::MAX_MESSAGE_BYTES
            );
            if let Some(r) = rate {
                ensure!(r > 0.0 && r.is_finite(), "--rate must be a positive number of messages per second");
            }
            let decryptors = decryptors.min(members - senders);
            let load = Load { senders, messages, size, rate, decryptors, max };
            Ok(vec![("fanout".into(), fanout(cli, members, load).await?)])
        }
        Scenario::Durable { messages, senders, size, fsync } => {
            ensure!(senders >= 1, "--senders must be at least 1");
            ensure!(messages >= senders, "--messages must be at least --senders");
            let mut out = Vec::new();
            for on in [true, false] {
                if (on && fsync == "off") || (!on && fsync == "on") {
                    continue;
                }
                let load =
                    Load { senders, messages: messages / senders, size, rate: None, decryptors: 0, max };
                out.push((
                    format!("durable (fsync {})", if on { "on" } else { "off" }),
                    durable(cli, load, on).await?,
                ));
            }
            Ok(out)
        }
        Scenario::Login { clients, members, rate, duration } => {
            ensure!(clients >= 1, "--clients must be at least 1");
            ensure!(members >= 2, "--members must be at least 2");
            ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
            ensure!(duration >= 3, "--duration must be at least 3 seconds (2 s of chat before the storm)");
            Ok(vec![("login".into(), login(cli, clients, members, rate, duration).await?)])
        }
        Scenario::Memory { registrations, connections, requests, hold } => {
            ensure!(connections >= 1 && requests >= 1, "--connections and --requests must be at least 1");
            let (target, accounts) = Target::start(&spec(cli, &[])?, "mem", 1).await?;
            let state = tempfile::Builder::new().prefix("conclave-bench-clients-").tempdir()?;
            let wave = crate::memory::Wave { registrations, connections, requests, hold };
            let report = crate::memory::run(Arc::new(target), Arc::new(accounts), state.path(), wave).await?;
            Ok(vec![("memory".into(), report)])
        }
        Scenario::Catchup { messages, size, repeat } => {
            ensure!(messages >= 1, "--messages must be at least 1");
            ensure!(repeat >= 1, "--repeat must be at least 1");
            ensure!(
                (16..=conclave_proto::MAX_MESSAGE_BYTES).contains(&size),
                "--size must be between 16 and {} bytes",
                conclave_proto::MAX_MESSAGE_BYTES
            );
            Ok(vec![("catchup".into(), catchup(cli, messages, size, repeat).await?)])
        }
        Scenario::Mls { members, repeat } => {
            ensure!(members.iter().all(|&m| m >= 2), "--members: each group size must be at least 2");
            ensure!(repeat >= 1, "--repeat must be at least 1");
            let mut out = Vec::new();
            for m in members {
                out.push((format!("mls ({m} members)"), mls(m, repeat)?));
            }
            Ok(out)
        }
    }
}

async fn idle(cli: &Cli, clients: usize, hold: u64) -> Result<Report> {
    ensure!(clients >= 1, "--clients must be at least 1");
    let (target, accounts) = Target::start(&spec(cli, &[])?, "i", clients).await?;
    let (target, accounts) = (Arc::new(target), Arc::new(accounts));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = target.rss_kib();
    let cpu_before = target.cpu_secs();
    let start = Instant::now();
    let conns = connect_all(&target, &accounts, 0..clients, cli.concurrency, "connecting").await?;
    let setup = start.elapsed();
    let cpu_after = target.cpu_secs();
    // Let the server settle (buffers of the handshakes freed), then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = target.rss_kib();
    let mut took: Vec<u64> = conns.iter().map(|c| c.took.as_nanos() as u64).collect();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss_held = target.rss_kib();
    let open = conns.iter().filter(|c| c.conn.closed().is_none()).count();
    // One request on each of a few connections: they still answer.
    for c in conns.iter().step_by((clients / 10).max(1)) {
        c.conn.whoami().await.context("a held connection stopped answering")?;
    }
    let mut r = Report::default();
    r.put("clients", clients);
    r.put("ready", conns.len());
    r.put("setup_s", (setup.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("connects_per_s", (conns.len() as f64 / setup.as_secs_f64()).round());
    r.put("connect_latency", latency(&mut took));
    r.put(
        "server_cpu_percent_during_setup",
        cpu_percent(cpu_before.zip(cpu_after).map(|(a, b)| b - a), setup),
    );
    r.put("server_rss_before_mib", mib(rss_before));
    r.put("server_rss_after_mib", mib(rss_after));
    r.put("server_rss_after_hold_mib", mib(rss_held));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let per = (a.saturating_sub(b)) as f64 / conns.len() as f64;
        r.put("kib_per_connection", (per * 100.0).round() / 100.0);
    }
    r.put("server_threads", target.threads());
    r.put("open_after_hold", open);
    r.put("hold_s", hold);
    Ok(r)
}

async fn fanout(cli: &Cli, members: usize, load: Load) -> Result<Report> {
    let (target, accounts) = Target::start(&spec(cli, &[])?, "f", members).await?;
    let (target, accounts) = (Arc::new(target), Arc::new(accounts));
    let state = tempfile::Builder::new().prefix("conclave-bench-clients-").tempdir()?;
    let full = (load.senders + load.decryptors).max(1);
    let room = room::setup(
        &target,
        &accounts,
        0..members,
        full,
        cli.concurrency,
        state.path(),
        &format!("bench{}", target.tag),
    )
    .await?;
    let t = target.clone();
    let (out, _room) = traffic::run(room, load, move || t.cpu_secs(), None, None).await?;
    let mut r = Report::default();
    r.put("members", members);
    r.put("senders", load.senders);
    r.put("messages_per_sender", load.messages);
    r.put("size_bytes", load.size);
    r.put("rate_per_sender", load.rate.map_or(json!("unbounded"), |x| json!(x)));
    traffic_report(&mut r, out, &target);
    r.put(
        "decrypting_members",
        format!(
            "{} of {} (every message they received, after the timed window)",
            load.decryptors,
            members - 1
        ),
    );
    Ok(r)
}

fn traffic_report(r: &mut Report, mut out: traffic::Outcome, target: &Target) {
    r.put("expected_deliveries", out.expected);
    r.put("delivered", out.delivered);
    r.put("lost", out.lost);
    r.put("out_of_order", out.out_of_order);
    r.put("disconnected", out.disconnected);
    r.put("acked", out.acked);
    r.put("refused", out.refused);
    if let Some(e) = &out.first_error {
        r.put("first_refusal", e.as_str());
    }
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    r.put("elapsed_s", (secs * 1000.0).round() / 1000.0);
    r.put("last_send_s", (out.send_elapsed.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("last_ack_s", (out.ack_elapsed.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("deliveries_per_s", (out.delivered as f64 / secs).round());
    r.put("messages_in_per_s", (out.acked as f64 / out.ack_elapsed.as_secs_f64().max(1e-9)).round());
    let mut lat: Vec<u64> = out.samples.iter().map(|&(_, l)| l).collect();
    r.put("latency", latency(&mut lat));
    r.put("server_cpu_percent", cpu_percent(out.server_cpu, out.elapsed));
    r.put("loadgen_cpu_percent", cpu_percent(out.loadgen_cpu, out.elapsed));
    r.put("host_steal_ms", steal(out.host_steal_ms.as_deref()));
    r.put("server_rss_mib", mib(target.rss_kib()));
    r.put("decrypted", out.decrypted);
    r.put("decrypt_failed", out.decrypt_failed);
    out.samples.clear();
}

async fn durable(cli: &Cli, load: Load, fsync: bool) -> Result<Report> {
    let extra: &[&str] = if fsync { &[] } else { &["--fsync", "off"] };
    let (target, accounts) = Target::start(&spec(cli, extra)?, "d", load.senders).await?;
    let (target, accounts) = (Arc::new(target), Arc::new(accounts));
    let state = tempfile::Builder::new().prefix("conclave-bench-clients-").tempdir()?;
    // Each sender in a room of its own: appends only, no fan-out.
    let mut rooms = Vec::new();
    for i in 0..load.senders {
        rooms.push(
            room::setup(
                &target,
                &accounts,
                i..i + 1,
                1,
                cli.concurrency,
                state.path(),
                &format!("durable{i}"),
            )
            .await?,
        );
    }
    // One run for all rooms: merge them into one traffic run by giving each
    // sender its own room is not possible in one Room, so run them at once.
    let cpu_before = target.cpu_secs();
    let one = Load { senders: 1, ..load };
    // Every sender encrypts first; then all clocks start together.
    let gate = Arc::new(tokio::sync::Barrier::new(rooms.len()));
    let runs: Vec<_> = rooms
        .into_iter()
        .map(|room| {
            let (t, gate) = (target.clone(), gate.clone());
            tokio::spawn(async move { traffic::run(room, one, move || t.cpu_secs(), None, Some(gate)).await })
        })
        .collect();
    let mut acked = 0;
    let mut refused = 0;
    let mut first_error = None;
    let mut slowest = Duration::ZERO;
    for run in runs {
        let (out, _room) = run.await??;
        acked += out.acked;
        refused += out.refused;
        first_error = first_error.or(out.first_error);
        slowest = slowest.max(out.ack_elapsed);
    }
    let cpu = target.cpu_secs().zip(cpu_before).map(|(a, b)| a - b);
    let mut r = Report::default();
    r.put("fsync", if fsync { "on" } else { "off" });
    r.put("senders", load.senders);
    r.put("messages", load.senders * load.messages);
    r.put("size_bytes", load.size);
    r.put("acked", acked);
    r.put("refused", refused);
    if let Some(e) = first_error {
        r.put("first_refusal", e);
    }
    r.put("slowest_sender_s", (slowest.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("acked_per_s", (acked as f64 / slowest.as_secs_f64().max(1e-9)).round());
    r.put("server_cpu_percent", cpu_percent(cpu, slowest));
    r.put("note", "each sender encrypts its messages before its clock starts; acked_per_s = all acks / slowest sender's first send → last ack");
    Ok(r)
}

async fn login(cli: &Cli, clients: usize, members: usize, rate: f64, duration: u64) -> Result<Report> {
    let (target, accounts) = Target::start(&spec(cli, &[])?, "l", members + clients).await?;
    let (target, accounts) = (Arc::new(target), Arc::new(accounts));
    let state = tempfile::Builder::new().prefix("conclave-bench-clients-").tempdir()?;
    let room = room::setup(
        &target,
        &accounts,
        0..members,
        1,
        cli.concurrency,
        state.path(),
        &format!("chat{}", target.tag),
    )
    .await?;
    // Chat: one sender at `rate` for `duration` seconds; the storm starts 2 s in.
    let baseline = Duration::from_secs(2);
    let t = target.clone();
    let load = Load {
        senders: 1,
        messages: ((rate * duration as f64) as usize).max(1),
        size: 200,
        rate: Some(rate),
        decryptors: 0,
        max: Duration::from_secs(cli.max_secs),
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let chat =
        tokio::spawn(
            async move { traffic::run(room, load, move || t.cpu_secs(), Some(started_tx), None).await },
        );
    let started = started_rx.await.context("the chat traffic did not start")?;
    tokio::time::sleep(baseline).await;
    let storm_start = started.elapsed();
    let mut tasks = Vec::new();
    for i in members..members + clients {
        let (target, accounts) = (target.clone(), accounts.clone());
        tasks.push(tokio::spawn(async move {
            let begin = Instant::now();
            let conn = connect_tls(&target.addr, Some(&target.fingerprint)).await?.hello().await?;
            // A new device each time: what `conclave login` on a new machine does.
            let device = DeviceKey::generate();
            conn.login(&device, &accounts[i].username, Password::new(BENCH_PASSWORD)).await?;
            anyhow::Ok(begin.elapsed())
        }));
    }
    let mut took = Vec::new();
    let mut first_failure = None;
    for t in tasks {
        match t.await? {
            Ok(d) => took.push(d.as_nanos() as u64),
            Err(e) => {
                first_failure.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let storm_end = started.elapsed();
    let storm = storm_end - storm_start;
    let (out, _room) = chat.await??;
    let window = |from: Duration, to: Duration| -> Vec<u64> {
        out.samples
            .iter()
            .filter(|(at, _)| (from..to).contains(&Duration::from_nanos(*at)))
            .map(|s| s.1)
            .collect()
    };
    let mut before = window(Duration::ZERO, storm_start);
    let mut during = window(storm_start, storm_end);
    let mut r = Report::default();
    r.put("clients", clients);
    r.put("logins_ok", took.len());
    r.put("logins_failed", clients - took.len());
    if let Some(e) = first_failure {
        r.put("first_failure", e);
    }
    r.put("storm_s", (storm.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("logins_per_s", (took.len() as f64 / storm.as_secs_f64().max(1e-9)).round());
    r.put("login_latency", latency(&mut took));
    r.put("chat_members", members);
    r.put("chat_rate_per_s", rate);
    r.put("chat_latency_before_storm", latency(&mut before));
    r.put("chat_latency_during_storm", latency(&mut during));
    r.put("chat_delivered", out.delivered);
    r.put("chat_lost", out.lost);
    r.put("chat_out_of_order", out.out_of_order);
    if storm_end > Duration::from_secs(duration) {
        r.put("warning", "the storm outlasted the chat traffic: raise --duration");
    }
    Ok(r)
}

/// Sends the most requests a connection may have in flight at once (the
/// server's limit is 1,024): the seeding keeps half of that.
const SEED_WINDOW: usize = 512;

/// One member (`c0`) sends `messages` messages while the device of another
/// (`c1`) is away; then that device reconnects and catches up, `repeat`
/// times, each from a copy of its state as it was when it went away. Timed:
/// connecting, and `Chat::sync_room` (every message decrypted and stored in
/// the device's history, ready to show), as `conclave tail` and the TUI do it.
async fn catchup(cli: &Cli, messages: usize, size: usize, repeat: usize) -> Result<Report> {
    let (target, accounts) = Target::start(&spec(cli, &[])?, "c", 2).await?;
    let (target, accounts) = (Arc::new(target), Arc::new(accounts));
    let state = tempfile::Builder::new().prefix("conclave-bench-clients-").tempdir()?;
    let name = format!("catchup{}", target.tag);
    let room = room::setup(&target, &accounts, 0..2, 2, cli.concurrency, state.path(), &name).await?;
    let room::Room { mut chats, events, .. } = room;
    drop(events);
    // The away device: its connection closed, its state kept as it was.
    let away_state = state.path().join(&accounts[1].username);
    drop(chats.pop());
    let snapshot = state.path().join("away-snapshot");
    copy_dir(&away_state, &snapshot)?;

    let sender = &mut chats[0];
    let bar = crate::progress(messages as u64, "encrypting");
    let mut ciphertexts = Vec::with_capacity(messages);
    for k in 0..messages {
        ciphertexts.push(sender.engine_mut().encrypt(&name, traffic::plaintext(0, k, size).as_bytes())?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let bar = crate::progress(messages as u64, "sending");
    let seed_start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(SEED_WINDOW);
    for (k, ciphertext) in ciphertexts.into_iter().enumerate() {
        if in_flight.len() >= SEED_WINDOW {
            seeded(in_flight.pop_front(), &bar).await?;
        }
        let req =
            conclave_proto::Request::Send { room: name.clone(), client_msg_id: k as u64 + 1, ciphertext };
        in_flight.push_back(sender.connection().start_request(req).await?);
    }
    while !in_flight.is_empty() {
        seeded(in_flight.pop_front(), &bar).await?;
    }
    let seed = seed_start.elapsed();
    bar.finish_and_clear();

    let mut connect_ms = Vec::new();
    let mut catchup_ms = Vec::new();
    let mut rates = Vec::new();
    let mut server_cpu = Vec::new();
    let bar = crate::progress(repeat as u64, "catching up");
    for run in 0..repeat {
        let dir = state.path().join(format!("away-{run}"));
        copy_dir(&snapshot, &dir)?;
        let start = Instant::now();
        let c = crate::client::connect(&target, &accounts[1]).await?;
        let mut chat = conclave_client::Chat::open(&dir, &accounts[1].device, c.conn, c.account)?;
        let connected = start.elapsed();
        let cpu_before = target.cpu_secs();
        let t = Instant::now();
        let updates = chat.sync_room(&name).await?;
        let took = t.elapsed();
        let cpu = target.cpu_secs().zip(cpu_before).map(|(a, b)| a - b);
        // Every message must be there, decrypted, in order: a catch-up that
        // dropped or garbled something would be fast for the wrong reason.
        let rows: Vec<_> = updates
            .iter()
            .filter_map(|u| match u {
                conclave_client::Update::Row(r) if r.kind == HistoryKind::Message => Some(r),
                _ => None,
            })
            .collect();
        ensure!(
            rows.len() == messages,
            "catch-up {run}: {} of {messages} messages decrypted ({} updates)",
            rows.len(),
            updates.len()
        );
        for (k, r) in rows.iter().enumerate() {
            ensure!(r.text == traffic::plaintext(0, k, size), "catch-up {run}: message {k} is wrong");
        }
        let stored = chat
            .history(&name, Seq::ZERO, messages + 10)?
            .iter()
            .filter(|r| r.kind == HistoryKind::Message)
            .count();
        ensure!(stored == messages, "catch-up {run}: {stored} of {messages} messages in the history");
        connect_ms.push(connected.as_secs_f64() * 1000.0);
        catchup_ms.push(took.as_secs_f64() * 1000.0);
        rates.push(messages as f64 / took.as_secs_f64().max(1e-9));
        server_cpu.extend(cpu.map(|c| c / took.as_secs_f64().max(1e-9) * 100.0));
        drop(chat);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut r = Report::default();
    r.put("messages", messages);
    r.put("size_bytes", size);
    r.put("repeat", repeat);
    r.put("seed_s", (seed.as_secs_f64() * 1000.0).round() / 1000.0);
    r.put("connect_ms", json!(connect_ms.iter().map(|&x| round(x)).collect::<Vec<_>>()));
    r.put("catchup_ms", json!(catchup_ms.iter().map(|&x| round(x)).collect::<Vec<_>>()));
    r.put("messages_per_s", json!(rates.iter().map(|x| x.round()).collect::<Vec<_>>()));
    r.put("messages_per_s_median", median(&rates).round());
    r.put("messages_per_s_best", rates.iter().copied().fold(0.0, f64::max).round());
    let with_connect: Vec<f64> = catchup_ms.iter().zip(&connect_ms).map(|(a, b)| a + b).collect();
    r.put("messages_per_s_with_connect_median", (messages as f64 / (median(&with_connect) / 1000.0)).round());
    r.put("server_cpu_percent", json!(server_cpu.iter().map(|x| x.round()).collect::<Vec<_>>()));
    r.put(
        "note",
        "messages_per_s = messages / Chat::sync_room (fetch, decrypt, store in history, rows ready to show), \
         after connecting and authenticating; one member's device catching up on another's messages",
    );
    Ok(r)
}

/// Awaits one seeding send's answer.
async fn seeded(answer: Option<conclave_client::Answer>, bar: &indicatif::ProgressBar) -> Result<()> {
    let Some(answer) = answer else { return Ok(()) };
    match answer.answer().await.context("seeding the room")? {
        conclave_proto::Response::Accepted { .. } => {
            bar.inc(1);
            Ok(())
        }
        other => anyhow::bail!("seeding the room: unexpected answer {other:?}"),
    }
}

/// Copies the files of `from` (not recursively) into a new directory `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// MLS costs with the client's real engine (SQLite-backed state, as
/// `conclave` keeps it), no server.
fn mls(members: usize, repeat: usize) -> Result<Report> {
    let dir = tempfile::Builder::new().prefix("conclave-bench-mls-").tempdir()?;
    let make = |i: usize| -> Result<Engine> {
        let key = DeviceKey::generate();
        let path = dir.path().join(format!("m{i}.db"));
        Ok(Engine::open(&path, &key.seed(), &key.public(), &format!("m{i}:1"))?)
    };
    let room = "mls";
    let bar = crate::progress(members as u64, "making members");
    let mut creator = make(0)?;
    creator.create_group(room, b"bench-group-0001")?;
    // Member 1 is kept, to process commits and decrypt; the others only
    // need to exist in the tree.
    let mut second = make(1)?;
    let mut kps = second.new_key_packages(1)?;
    for i in 2..members {
        kps.extend(make(i)?.new_key_packages(1)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let t = Instant::now();
    let out = creator.add_members(room, &kps)?;
    creator.merge_pending(room)?;
    let add_all = t.elapsed();
    let welcome = out.welcome.context("no Welcome")?;
    let t = Instant::now();
    second.join_from_welcome(room, &welcome, Seq::FIRST)?;
    let join_all = t.elapsed();

    let mut add_one = Vec::new();
    let mut process = Vec::new();
    let mut join = Vec::new();
    let mut encrypt = Vec::new();
    let mut decrypt = Vec::new();
    let mut seq = Seq::FIRST;
    for r in 0..repeat {
        let mut newcomer = make(2_000_000 + r)?;
        let kp = newcomer.new_key_packages(1)?;
        let t = Instant::now();
        let out = creator.add_members(room, &kp)?;
        creator.merge_pending(room)?;
        add_one.push(t.elapsed().as_nanos() as u64);
        seq = seq.next();
        let meta = Meta { seq, kind: HistoryKind::Notice, ..Meta::default() };
        let t = Instant::now();
        second.apply(room, &meta, Item::Commit(&out.commit))?;
        process.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        newcomer.join_from_welcome(room, &out.welcome.context("no Welcome")?, seq)?;
        join.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        let ct = creator.encrypt(room, &[b'x'; 200])?;
        encrypt.push(t.elapsed().as_nanos() as u64);
        seq = seq.next();
        let meta = Meta { seq, sender: "m0".into(), kind: HistoryKind::Message, ..Meta::default() };
        let t = Instant::now();
        let applied = second.apply(room, &meta, Item::Message(&ct))?;
        decrypt.push(t.elapsed().as_nanos() as u64);
        ensure!(matches!(applied, Applied::Message { .. }), "the message did not decrypt: {applied:?}");
    }
    let mut r = Report::default();
    r.put("members", members);
    r.put("add_all_in_one_commit_ms", (add_all.as_secs_f64() * 1e6).round() / 1e3);
    r.put("join_from_welcome_at_start_ms", (join_all.as_secs_f64() * 1e6).round() / 1e3);
    r.put("add_one", latency(&mut add_one));
    r.put("process_that_commit", latency(&mut process));
    r.put("join_from_its_welcome", latency(&mut join));
    r.put("encrypt_one_200_bytes", latency(&mut encrypt));
    r.put("decrypt_one", latency(&mut decrypt));
    r.put("repeat", repeat);
    r.put(
        "note",
        "client engine with its SQLite state (one transaction per operation), as conclave keeps it",
    );
    Ok(r)
}
