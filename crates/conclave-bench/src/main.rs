//! `conclave-bench`: Conclave's load generator.
//!
//! It drives a real `conclave serve` over loopback TLS, with the workload
//! shapes of the IRC load generator in `../shared/peer/` so the two can be
//! run side by side (`bench/compare.sh`). Every run is bounded in time and
//! stops by itself; setup shows progress bars on stderr, results print as a
//! table, or as one JSON document with `--json`. See BENCHMARKS.md.

mod client;
mod lean;
mod memory;
mod room;
mod scenarios;
mod stats;
mod target;
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Conclave's load generator: drives a real `conclave serve` over loopback TLS.
#[derive(Debug, Parser)]
#[command(name = "conclave-bench", version)]
pub struct Cli {
    /// The `conclave` binary to start as the server (default: the one next to
    /// this binary).
    #[arg(long, env = "CONCLAVE_BIN", value_name = "PATH", global = true)]
    pub conclave: Option<PathBuf>,
    /// Pin the started server to these CPUs (as `taskset -c LIST`).
    #[arg(long, value_name = "LIST", global = true)]
    pub server_cpus: Option<String>,
    /// Use a server that is already running (loopback only) instead of starting one.
    #[arg(long, value_name = "ADDR", global = true, requires = "fingerprint")]
    pub server: Option<String>,
    /// The running server's certificate fingerprint (`SHA256:…`).
    #[arg(long, value_name = "FP", global = true)]
    pub fingerprint: Option<String>,
    /// The running server's process id (for its memory and CPU figures).
    #[arg(long, value_name = "PID", global = true)]
    pub server_pid: Option<u32>,
    /// Extra flags for the started `conclave serve` (repeatable).
    #[arg(long = "serve-arg", value_name = "FLAG", global = true, allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2, global = true)]
    pub threads: usize,
    /// Connection attempts in flight during setup.
    #[arg(long, default_value_t = 256, global = true)]
    pub concurrency: usize,
    /// Give up after this many seconds (a watchdog ends the process 15 s later whatever happens).
    #[arg(long, default_value_t = 300, global = true, value_name = "SECS")]
    pub max_secs: u64,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N authenticated connections held open: connect rate, server memory per connection.
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds to hold them after setup.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
    /// One room of M members; S senders send K messages of B bytes; every member counts.
    Fanout {
        /// Members of the room.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Senders (the first S members).
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Plaintext bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Messages per second per sender (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Members that keep what they receive and decrypt it after the run.
        #[arg(long, default_value_t = 2)]
        decryptors: usize,
    },
    /// Acknowledged messages per second (log group commit), with fsync on and off.
    Durable {
        /// Messages in all.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Senders sharing them, each on its own connection.
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Plaintext bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Which runs: on, off or both.
        #[arg(long, default_value = "both", value_parser = ["on", "off", "both"])]
        fsync: String,
    },
    /// Password logins per second, and chat latency while they happen.
    Login {
        /// Clients logging in at once.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Members of the chat room running meanwhile.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Chat messages per second (one sender).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of chat traffic (the storm starts 2 s in).
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Server memory under registrations and connections that pipeline
    /// `Sync`s of ~1 MiB answers without reading; and after they close.
    Memory {
        /// Accounts registered through the protocol first (Argon2 each).
        #[arg(long, default_value_t = 20)]
        registrations: usize,
        /// Connections that pipeline.
        #[arg(long, default_value_t = 3)]
        connections: usize,
        /// `Sync` requests each connection sends without reading.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Seconds the answers stay unread.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// A device that was away catches up: one member sends N messages while
    /// another member's device is offline, then that device reconnects and
    /// replays the log (decrypted, stored in its history): messages/s.
    Catchup {
        /// Messages sent while the device was away.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Plaintext bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Catch-ups timed, each from a fresh copy of the away device's state.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// MLS costs at several group sizes (in-process, no server).
    Mls {
        /// Group sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = vec![10, 100, 1000])]
        members: Vec<usize>,
        /// Repetitions of each timed step.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    anyhow::ensure!(cli.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(cli.max_secs >= 1, "--max-secs must be at least 1");
    let watchdog = cli.max_secs + 15;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(watchdog));
        eprintln!("error: the run did not end within --max-secs + 15 s; stopping");
        scenarios::kill_started_servers();
        std::process::exit(2);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let reports = rt.block_on(scenarios::run(&cli))?;
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    if cli.json {
        let docs: Vec<_> = reports.iter().map(|(name, r)| r.to_json(name, &command)).collect();
        let doc = if docs.len() == 1 { docs[0].clone() } else { serde_json::Value::Array(docs) };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (name, r) in &reports {
            print!("{}", r.to_table(name));
        }
    }
    Ok(())
}
