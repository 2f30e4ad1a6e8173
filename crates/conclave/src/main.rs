//! `conclave`: one binary that is both the server (`conclave serve`) and the
//! client (every other subcommand). This file maps errors to one line on
//! stderr and an exit code; the work is in the library crates.

mod account;
mod admin;
mod cli;
mod connect;
mod rooms;
mod serve;
mod tui;

use clap::Parser;

/// jemalloc returns freed memory to the OS (glibc's malloc kept what a wave
/// of large answers or of Argon2 hashes had used: docs/RELIABILITY.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let default_level = if matches!(cli.command, cli::Command::Serve(_)) { "info" } else { "warn" };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
    };
    if let cli::Command::Chat(args) = &cli.command {
        // Lines on stderr would garble the chat screen: a file, or nothing.
        if let Some(path) = &args.log {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => tracing_subscriber::fmt()
                    .with_env_filter(filter())
                    .with_writer(std::sync::Mutex::new(file))
                    .with_ansi(false)
                    .init(),
                Err(e) => {
                    eprintln!("error: cannot open the log file {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, most specific last.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            std::process::ExitCode::FAILURE
        }
    }
}
