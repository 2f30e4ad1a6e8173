//! Conclave's server: the TLS accept loop, sessions and authentication, and
//! the durable storage behind them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), conclave_server::ServerError> {
//! let config = conclave_server::Config::new("./conclave-data");
//! let server = conclave_server::Server::bind(config).await?;
//! println!("fingerprint {}", server.fingerprint());
//! server.run(tokio_util::sync::CancellationToken::new()).await;
//! # Ok(()) }
//! ```
//!
//! ARCHITECTURE.md in the repository holds the concurrency design: which task
//! owns what and which channels connect them.

#![warn(missing_docs)]

mod accounts;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_support;
mod blocking;
pub mod config;
mod conn;
pub mod fs;
mod handlers;
mod hub;
mod limits;
mod log_writer;
pub mod mls;
pub mod password;
mod repeated;
mod rooms;
mod server;
mod session;
pub mod store;
mod throttle;
pub mod tls;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub use config::{Config, RegistrationPolicy, TlsSource};
pub use conn::QueueStats;
pub use server::{create_invite, open_store, Server, ServerError};

/// State shared by every connection task.
pub(crate) struct Shared {
    config: Config,
    store: Arc<dyn store::Store>,
    acceptor: tokio_rustls::TlsAcceptor,
    hasher: password::Hasher,
    throttle: throttle::Throttle,
    active: AtomicUsize,
    tracker: tokio_util::task::TaskTracker,
    hub: hub::Hub,
    rooms: rooms::Rooms,
    log_writer: log_writer::LogWriter,
    per_address: Arc<limits::PerAddress>,
    message_rates: limits::Keyed<store::UserId>,
    /// Bytes queued for the connections.
    queue_stats: Arc<conn::QueueStats>,
    /// Repeated per-peer warnings, logged once and then counted.
    warnings: repeated::Repeated<(repeated::Warning, std::net::IpAddr)>,
    /// Refused connections being told why (TLS handshake, error frame).
    refusals: Arc<tokio::sync::Semaphore>,
    /// The accounts the operator disabled, as last read from the store.
    disabled: std::sync::Mutex<std::collections::HashSet<store::UserId>>,
}

impl Shared {
    /// Refuses a disabled account's sign-in. An account the last reading
    /// says is disabled is looked up again, so that one enabled a moment ago
    /// gets in at once (one disabled a moment ago is closed by the next
    /// reading, within `accounts::DISABLED_POLL`).
    async fn refuse_disabled(&self, user: store::UserId) -> Result<(), conclave_proto::ErrorBody> {
        if !self.disabled.lock().unwrap_or_else(|p| p.into_inner()).contains(&user) {
            return Ok(());
        }
        let store = self.store.clone();
        let now = blocking::run(move || store.disabled_users()).await?.map_err(handlers::store_error)?;
        if now.contains(&user) {
            return Err(accounts::disabled_error());
        }
        // Only this account's entry: the next reading closes the sessions of
        // any account disabled since the last one.
        self.disabled.lock().unwrap_or_else(|p| p.into_inner()).remove(&user);
        Ok(())
    }
}
