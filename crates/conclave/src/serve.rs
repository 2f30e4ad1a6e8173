//! `conclave serve`: start the server, print where it listens and its
//! certificate fingerprint, run until Ctrl+C or SIGTERM.

use anyhow::Context;
use conclave_server::{Config, RegistrationPolicy, Server, TlsSource};
use tokio_util::sync::CancellationToken;

use crate::cli::{OnOff, Registration, ServeArgs};

/// Runs the server in the foreground (or, with --check-config, checks and
/// prints its settings).
pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    if args.check_config {
        crate::output::say!("{}", args.effective.trim_end())?;
        crate::output::say!("# the settings are valid (data directory {})", config.data_dir.display())?;
        return Ok(());
    }
    serve(config).await
}

/// The server's settings from the flags, checked.
fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => crate::cli::default_data_dir()?,
    };
    let mut config = Config::new(data);
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = TlsSource::Files { cert: cert.clone(), key: key.clone() };
    }
    anyhow::ensure!(args.max_frame_bytes >= 1024, "--max-frame-bytes must be at least 1024");
    anyhow::ensure!(args.max_connections >= 1, "--max-connections must be at least 1");
    anyhow::ensure!(args.handshake_timeout >= 1, "--handshake-timeout must be at least 1 second");
    config.max_frame_len = args.max_frame_bytes;
    config.max_connections = args.max_connections;
    config.handshake_timeout = std::time::Duration::from_secs(args.handshake_timeout);
    config.free_login_failures = args.free_login_failures.max(1);
    for (value, flag) in [
        (args.max_connections_per_address, "--max-connections-per-address"),
        (args.requests_per_second as usize, "--requests-per-second"),
        (args.messages_per_second as usize, "--messages-per-second"),
        (args.max_rooms_per_user, "--max-rooms-per-user"),
        (args.max_members_per_room, "--max-members-per-room"),
        (args.outbound_queue, "--outbound-queue"),
        (args.max_unauthenticated_per_address, "--max-unauthenticated-per-address"),
    ] {
        anyhow::ensure!(value >= 1, "{flag} must be at least 1");
    }
    config.max_connections_per_address = args.max_connections_per_address;
    config.requests_per_second = args.requests_per_second;
    config.messages_per_second = args.messages_per_second;
    config.max_rooms_per_user = args.max_rooms_per_user;
    config.max_members_per_room = args.max_members_per_room;
    config.max_key_packages = args.max_key_packages;
    config.outbound_queue = args.outbound_queue;
    anyhow::ensure!(args.outbound_bytes >= 64 * 1024, "--outbound-bytes must be at least 65536");
    config.outbound_bytes = args.outbound_bytes;
    anyhow::ensure!(
        args.max_unauthenticated_per_address <= args.max_connections_per_address,
        "--max-unauthenticated-per-address ({}) cannot be more than --max-connections-per-address ({}): \
         unauthenticated connections count against both; lower the first or raise the second",
        args.max_unauthenticated_per_address,
        args.max_connections_per_address
    );
    config.max_unauthenticated_per_address = args.max_unauthenticated_per_address;
    config.unauthenticated_grace = std::time::Duration::from_secs(args.unauthenticated_grace);
    config.fsync = args.fsync == OnOff::On;
    config.registration = match args.registration {
        Registration::Open => RegistrationPolicy::Open,
        Registration::Token => RegistrationPolicy::Token,
        Registration::Closed => RegistrationPolicy::Closed,
    };
    Ok(config)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config)
        .await
        .with_context(|| format!("cannot start the server (data in {})", data_dir.display()))?;
    // Signals are caught from here on, before the addresses are printed: a
    // supervisor that stops the server as soon as it reads them gets a clean
    // shutdown, not the default action of the signal.
    let signals = Signals::catch().context("cannot catch SIGTERM and SIGINT")?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    println!("fingerprint {}", server.fingerprint());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signals.wait().await;
        // Cancel first: nothing that follows may stand between the signal
        // and the shutdown.
        trigger.cancel();
        tracing::info!("shutting down");
    });
    server.run(shutdown).await;
    Ok(())
}

/// The signals that stop the server, caught from the moment this is made.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Until SIGTERM or SIGINT (Ctrl+C).
    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
