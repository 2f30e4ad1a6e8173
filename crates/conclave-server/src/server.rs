//! Binding the listeners and the accept loop.
//!
//! `run` accepts on every listener until `shutdown` is cancelled. Each
//! accepted connection takes a permit from the connection cap (closed at once
//! when none is left) and is served by its own tracked task; on shutdown the
//! sessions are told and the loop waits for them, bounded.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TlsSource};
use crate::session::{self, ActiveGuard};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::tls::{Identity, TlsError};
use crate::{password, throttle, Shared};

/// How long shutdown waits for sessions to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No listen address was given.
    #[error("no address to listen on; pass --listen ADDR")]
    NoListener,
    /// Something else failed during setup.
    #[error("{0}")]
    Setup(String),
}

/// A bound server, ready to run.
pub struct Server {
    listeners: Vec<TcpListener>,
    fingerprint: String,
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the data directory, loads or makes the certificate, and binds
    /// every listen address.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        crate::fs::create_private_dir(&config.data_dir)
            .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
        let identity = match &config.tls {
            TlsSource::SelfSigned => Identity::self_signed_in(&config.tls_dir())?,
            TlsSource::Files { cert, key } => Identity::from_pem_files(cert, key)?,
        };
        let tls_config = identity.server_config()?;
        let store = SqliteStore::open(&config.database_path())?;
        let listeners = bind_all(&config.listen)?;
        let hasher =
            password::Hasher::new(config.argon2_threads).map_err(|e| ServerError::Setup(e.message))?;
        let store: Arc<dyn Store> = Arc::new(store);
        let log_writer = crate::log_writer::LogWriter::spawn(store.clone())
            .map_err(|e| ServerError::Setup(format!("cannot start the log writer: {e}")))?;
        let message_rates = crate::limits::Keyed::new(config.messages_per_second);
        let shared = Arc::new(Shared {
            throttle: throttle::Throttle::new(config.free_login_failures, config.login_backoff),
            config,
            store,
            hub: Default::default(),
            rooms: Default::default(),
            log_writer,
            per_address: Default::default(),
            message_rates,
            acceptor: tokio_rustls::TlsAcceptor::from(tls_config),
            hasher,
            active: AtomicUsize::new(0),
            tracker: TaskTracker::new(),
        });
        Ok(Self { listeners, fingerprint: identity.fingerprint(), shared })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// `SHA256:<hex>` of the server certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The state its sessions share (for `crate::bench_support`).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shutdown` is cancelled, then closes every session.
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let tracker = self.shared.tracker.clone();
        for listener in self.listeners {
            let shared = self.shared.clone();
            let limit = limit.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(accept_loop(listener, shared, limit, shutdown));
        }
        shutdown.cancelled().await;
        // Sessions see the same token and close; rooms finish what is queued.
        self.shared.rooms.close_all().await;
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!("some connections did not close within the shutdown grace period");
        }
        tracing::info!("server stopped");
    }
}

/// The fuzzer's way in (feature `fuzzing`, used by `fuzz/fuzz_targets/preauth.rs`).
#[cfg(feature = "fuzzing")]
impl Server {
    /// **For fuzzing only.** Serves one session over `stream` as if its TLS
    /// handshake had just finished, with this `nonce` in the `Hello` and this
    /// TLS exporter value, so that the fuzzer can make valid device
    /// signatures. Returns when the session has ended. No listener is used:
    /// the session runs on the caller's runtime against this server's state.
    #[doc(hidden)]
    pub async fn serve_plaintext_for_fuzzing<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        nonce: [u8; conclave_proto::NONCE_LEN],
        exporter: [u8; conclave_proto::EXPORTER_LEN],
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.shared.config.handshake_timeout;
        let info = session::ConnInfo { peer, nonce, exporter };
        let (rd, wr) = tokio::io::split(stream);
        session::run(self.shared.clone(), rd, wr, info, deadline, CancellationToken::new()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = shared.config.max_connections, "connection refused: server full");
            drop(tcp);
            continue;
        };
        let Some(slot) = shared.per_address.try_acquire(peer.ip(), shared.config.max_connections_per_address)
        else {
            tracing::warn!(%peer, max = shared.config.max_connections_per_address, "connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let shutdown = shutdown.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let _active = ActiveGuard::new(shared2.clone(), peer);
            session::serve(shared2, tcp, peer, shutdown).await;
        });
    }
}

fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServerError> {
    if addrs.is_empty() {
        return Err(ServerError::NoListener);
    }
    let mut listeners = Vec::new();
    for &addr in addrs {
        match bind_one(addr) {
            Ok(l) => listeners.push(l),
            // A machine without IPv6 still serves IPv4 under the default pair.
            Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && addrs.len() > 1 => {
                tracing::warn!(%addr, error = %e, "cannot listen on IPv6; serving IPv4 only");
            }
            Err(source) => return Err(ServerError::Bind { addr, source }),
        }
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // IPv4 gets its own listener; keep this one to IPv6 so both can bind.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Makes a single-use invitation token in the server's database (usable while
/// the server runs) and returns it.
pub fn create_invite(data_dir: &std::path::Path) -> Result<String, ServerError> {
    use rand::RngCore;
    let config = Config::new(data_dir);
    if !config.database_path().exists() {
        return Err(ServerError::Setup(format!(
            "no server database in {}; start `conclave serve --data {}` once first",
            data_dir.display(),
            data_dir.display()
        )));
    }
    let store = SqliteStore::open(&config.database_path())?;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    store.create_invite(&token)?;
    Ok(token)
}
