//! `conclave`: one binary that is both the server (`conclave serve`) and the
//! client (every other subcommand). This file maps errors to one line on
//! stderr and an exit code; the work is in the library crates.

mod account;
mod admin;
mod cli;
mod config_file;
mod connect;
mod output;
mod package;
mod rooms;
mod serve;
mod tui;

/// jemalloc returns freed memory to the OS (glibc's malloc kept what a wave
/// of large answers or of Argon2 hashes had used: docs/RELIABILITY.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
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
                    .log_internal_errors(false)
                    .init(),
                Err(e) => {
                    eprintln!("error: cannot open the log file {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    } else {
        let format = match &cli.command {
            cli::Command::Serve(args) => args.log_format,
            _ => cli::LogFormat::Text,
        };
        let log = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            // A log that cannot be written (stderr piped to a reader that
            // is gone) must not stop the server: tracing would report it
            // with eprintln!, which panics on a broken pipe.
            .log_internal_errors(false);
        match format {
            cli::LogFormat::Text => {
                log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
            }
            // One JSON object a line: time, level, target, the event's
            // fields at the top, and the connection's (`conn`, `peer`)
            // under "span" for every line about one.
            cli::LogFormat::Json => {
                log.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
            }
        }
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
        // The reader of standard output went away (`| head`): it had what
        // it wanted. Quietly, and successfully (see `output`).
        Err(e) if output::is_stdout_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, most specific last. A cause that
/// its error's message already ends with (a message that names its source)
/// is not said twice.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.is_empty() {
            line = cause;
        } else if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error whose message names its source, as thiserror's `{source}` does.
    #[derive(Debug)]
    struct Named {
        source: std::io::Error,
    }

    impl std::fmt::Display for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot connect to h:1: {}", self.source)
        }
    }

    impl std::error::Error for Named {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::other("Connection refused (os error 111)");
        let e = anyhow::Error::new(Named { source: io }).context("cannot log in");
        assert_eq!(one_line(&e), "cannot log in: cannot connect to h:1: Connection refused (os error 111)");
    }

    #[test]
    fn causes_not_in_the_message_are_chained() {
        let e = anyhow::anyhow!("disk full").context("cannot save").context("cannot send");
        assert_eq!(one_line(&e), "cannot send: cannot save: disk full");
    }
}
