//! Binding the listeners and the accept loop.
//!
//! `run` accepts on every listener until `shutdown` is cancelled. Each
//! accepted connection takes a permit from the connection cap and a slot of
//! its address (in all, and as not yet authenticated), and is served by its
//! own tracked task; on shutdown the sessions are told and the loop waits for
//! them, bounded.
//!
//! A connection refused for a limit is told why: the server completes its
//! TLS handshake and sends one error frame naming the limit, then closes
//! (docs/PROTOCOL.md §1.4). At most [`MAX_REFUSALS`] such refusals run at
//! once, each bounded by [`REFUSAL_TIMEOUT`]; past that a refused connection
//! is closed on accept, and the client's library says that the server closed
//! the connection during the handshake. Refusals are logged once per kind
//! and address and then counted ([`crate::repeated`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::{encode_to_bytes, ErrorBody, ErrorCode, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::{Config, TlsSource};
use crate::limits::{AddressCaps, Refusal};
use crate::repeated::{self, Repeated, Warning};
use crate::session::{self, ActiveGuard};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::tls::{Identity, TlsError};
use crate::{password, throttle, Shared};

/// How long shutdown waits for sessions to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Refused connections told why at once (each costs a TLS handshake);
/// further ones are closed on accept.
pub const MAX_REFUSALS: usize = 64;

/// Time a refused connection has for its TLS handshake and for reading the
/// error frame.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the ended windows of repeated warnings are summed up in the log.
const WARNING_FLUSH: Duration = Duration::from_secs(5);

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
        let disabled = store.disabled_users()?.into_iter().collect();
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
            queue_stats: Default::default(),
            warnings: Repeated::new(repeated::WINDOW, repeated::MAX_PEERS),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            disabled: std::sync::Mutex::new(disabled),
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

    /// Bytes queued for this server's connections: the most one connection
    /// has held (stays valid after [`Server::run`] starts).
    pub fn queue_stats(&self) -> Arc<crate::QueueStats> {
        self.shared.queue_stats.clone()
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
        let shared = self.shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(WARNING_FLUSH);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        repeated::log_summaries(shared.warnings.finish(std::time::Instant::now()));
                        return;
                    }
                    _ = tick.tick() => {}
                }
                repeated::log_summaries(shared.warnings.flush(std::time::Instant::now()));
            }
        });
        tracker.spawn(crate::accounts::watch_disabled(self.shared.clone(), shutdown.clone()));
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
        let info = session::ConnInfo { conn: self.shared.hub.next_conn(), peer, nonce, exporter };
        let (rd, wr) = tokio::io::split(stream);
        session::run(self.shared.clone(), rd, wr, info, None, deadline, CancellationToken::new()).await;
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
        // Every log line about this connection, from here to its close,
        // carries its id and address (`session{conn=… peer=…}`).
        let conn = shared.hub.next_conn();
        let span = tracing::info_span!("session", conn = conn.0, %peer);
        let entered = span.enter();
        let config = &shared.config;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let max = config.max_connections;
            let why = format!(
                "the server is full: it holds its most connections ({max}, --max-connections); try again later"
            );
            refuse(&shared, tcp, peer, Warning::ServerFull, ErrorBody::new(ErrorCode::SERVER_FULL, why));
            continue;
        };
        let caps = AddressCaps {
            max: config.max_connections_per_address,
            max_waiting: config.max_unauthenticated_per_address,
            grace: config.unauthenticated_grace,
        };
        let now = std::time::Instant::now();
        let (slot, waiting) = match shared.per_address.admit(peer.ip(), caps, now, has_spoken(&tcp)) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let ip = peer.ip();
                let (kind, why) = match refusal {
                    Refusal::TooMany { max } => (
                        Warning::TooManyFromAddress,
                        format!(
                            "too many connections from {ip}: at most {max} at once \
                             (--max-connections-per-address); close some, or try again later"
                        ),
                    ),
                    Refusal::TooManyWaiting { max } => (
                        Warning::TooManyUnauthenticated,
                        format!(
                            "too many connections from {ip} that have not signed in yet: at most {max} at once \
                             (--max-unauthenticated-per-address); try again in a few seconds"
                        ),
                    ),
                };
                drop(permit);
                refuse(&shared, tcp, peer, kind, ErrorBody::new(ErrorCode::TOO_MANY_CONNECTIONS, why));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let shutdown = shutdown.clone();
        drop(entered);
        shared.tracker.spawn(
            async move {
                let _permit = permit;
                let _slot = slot;
                let _active = ActiveGuard::new(shared2.clone());
                session::serve(shared2, tcp, conn, peer, waiting, shutdown).await;
            }
            .instrument(span),
        );
        // Let the new session look at its socket before the next accept:
        // whether its client has spoken decides who makes room for whom
        // when its address is at its unauthenticated cap.
        tokio::task::yield_now().await;
    }
}

/// Whether the client has sent something already (its ClientHello, usually:
/// a real client sends it as soon as it has connected, so under a backlog of
/// accepts it is there by now). Does not wait and consumes nothing.
pub(crate) fn has_spoken(tcp: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(tcp).peek(&mut byte), Ok(n) if n > 0)
}

/// Refuses a connection for a limit: logs it (once per kind and address,
/// then counted), and tells the client why if a refusal slot is free: TLS
/// handshake, one error frame, close. Otherwise closes it at once.
fn refuse(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr, kind: Warning, error: ErrorBody) {
    repeated::note(&shared.warnings, kind, peer, &error.message);
    let Ok(permit) = shared.refusals.clone().try_acquire_owned() else {
        drop(tcp);
        return;
    };
    let acceptor = shared.acceptor.clone();
    shared.tracker.spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, tell_and_close(acceptor, tcp, error)).await;
    });
}

/// Completes the TLS handshake, sends `error` as the connection's only
/// frame, closes the sending side and reads what the client still sends
/// until it closes, so that it sees the frame rather than a reset.
async fn tell_and_close(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, error: ErrorBody) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
    let Ok(frame) = encode_to_bytes(&ServerFrame::Error { id: None, error }) else { return };
    if tls.write_all(&frame).await.is_err() || tls.flush().await.is_err() {
        return;
    }
    let _ = tls.shutdown().await;
    crate::conn::linger(&mut tls, crate::conn::LINGER_BYTES).await;
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
    let store = open_store(data_dir)?;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    store.create_invite(&token)?;
    Ok(token)
}

/// The store of the server whose data directory is `data_dir`, for the admin
/// commands (safe while that server runs: SQLite WAL). Refuses a directory
/// without a database rather than making an empty one.
pub fn open_store(data_dir: &std::path::Path) -> Result<SqliteStore, ServerError> {
    let config = Config::new(data_dir);
    if !config.database_path().exists() {
        return Err(ServerError::Setup(format!(
            "no server database in {}; start `conclave serve --data {}` once first",
            data_dir.display(),
            data_dir.display()
        )));
    }
    Ok(SqliteStore::open(&config.database_path())?)
}
