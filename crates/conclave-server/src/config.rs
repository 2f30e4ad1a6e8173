//! The server's settings, with their defaults and the reason for each.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use conclave_proto::{DEFAULT_MAX_FRAME_LEN, DEFAULT_PORT};

/// Default cap on concurrent connections: below the 20,000 file descriptors
/// one process may hold here, leaving room for the database and listeners.
pub const DEFAULT_MAX_CONNECTIONS: usize = 19_500;

/// Default time a new connection has for TLS, `Hello` and authentication.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on frames queued for one connection. A client that lets
/// this many pile up is disconnected; it re-syncs from the log when back.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;

/// Default byte budget of one connection's outbound queue. Answers to the
/// connection's own requests may fill half of it before the server stops
/// reading its requests; events past all of it disconnect it
/// (`slow_consumer`). Four times the largest frame (1 MiB), so a 1 MiB
/// `Sync` answer and a 1 MiB event both fit (docs/LIMITS.md).
pub const DEFAULT_OUTBOUND_BYTES: usize = 4 * 1024 * 1024;

/// Default cap on connections from one source address that have not
/// authenticated yet: well under the per-address cap, so that connections
/// which never sign in cannot keep the users behind that address out.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 64;

/// Default age past which an unauthenticated connection may be closed to
/// make room for a newer one from its address (a real client authenticates
/// within milliseconds).
pub const DEFAULT_UNAUTHENTICATED_GRACE: Duration = Duration::from_secs(2);

/// Failed logins allowed per account and per address before backoff starts.
pub const DEFAULT_FREE_LOGIN_FAILURES: u32 = 5;

/// Default wait after the free failures; each further failure doubles it.
pub const DEFAULT_LOGIN_BACKOFF: Duration = Duration::from_secs(1);

/// Default cap on connections from one source address (a NAT may hide a
/// whole office behind one address, so it is generous).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Default requests per second on one connection (bursts of twice that).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 5_000;

/// Default messages per second from one user, over all their devices.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 1_000;

/// Default number of rooms one user may be a member of.
pub const DEFAULT_MAX_ROOMS_PER_USER: usize = 1_000;

/// Default number of members in one room (MLS costs grow with it: adding one
/// member to a 1,000-member group takes about 0.1 s on the committer).
pub const DEFAULT_MAX_MEMBERS_PER_ROOM: usize = 5_000;

/// Default number of single-use KeyPackages kept per device.
pub const DEFAULT_MAX_KEY_PACKAGES: u32 = 1_000;

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationPolicy {
    /// Anyone who can reach the server.
    Open,
    /// Only holders of a single-use invitation token (`conclave admin invite`).
    Token,
    /// Nobody.
    Closed,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A self-signed certificate kept in the data directory, made on first start.
    SelfSigned,
    /// The operator's PEM files.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
}

/// Everything `conclave serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database and the self-signed certificate live.
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The certificate.
    pub tls: TlsSource,
    /// The largest frame accepted from a client, in bytes.
    pub max_frame_len: usize,
    /// Who may register.
    pub registration: RegistrationPolicy,
    /// The most connections held at once; more are closed on accept.
    pub max_connections: usize,
    /// Time allowed for TLS + `Hello` + authentication.
    pub handshake_timeout: Duration,
    /// Frames queued per connection before it counts as too slow.
    pub outbound_queue: usize,
    /// Bytes queued per connection: answers may use half before the server
    /// stops reading the connection's requests; events past all of it
    /// disconnect it (`slow_consumer`).
    pub outbound_bytes: usize,
    /// Password hashes computed at once (each takes one core and 19 MiB).
    pub argon2_threads: usize,
    /// Failed logins per account and per address before backoff starts.
    pub free_login_failures: u32,
    /// The wait after the free failures; it doubles with each further
    /// failure, up to 15 minutes.
    pub login_backoff: Duration,
    /// Connections from one source address.
    pub max_connections_per_address: usize,
    /// Connections from one source address that have not authenticated yet.
    pub max_unauthenticated_per_address: usize,
    /// Age past which an unauthenticated connection may be closed to make
    /// room for a newer one from the same address.
    pub unauthenticated_grace: Duration,
    /// Requests per second on one connection.
    pub requests_per_second: u32,
    /// Messages per second from one user.
    pub messages_per_second: u32,
    /// Rooms one user may be a member of.
    pub max_rooms_per_user: usize,
    /// Members in one room.
    pub max_members_per_room: usize,
    /// Single-use KeyPackages kept per device.
    pub max_key_packages: u32,
    /// Wait for the disk before acknowledging (SQLite `synchronous = FULL`).
    /// Off only to measure what durability costs: a power failure can then
    /// lose acknowledged messages.
    pub fsync: bool,
}

impl Config {
    /// The defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: default_listen(DEFAULT_PORT),
            tls: TlsSource::SelfSigned,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            registration: RegistrationPolicy::Open,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_bytes: DEFAULT_OUTBOUND_BYTES,
            // One core is left to chat traffic, so a login storm cannot
            // stall it (BENCHMARKS.md, `login`); at least one hash at a time.
            argon2_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            free_login_failures: DEFAULT_FREE_LOGIN_FAILURES,
            login_backoff: DEFAULT_LOGIN_BACKOFF,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_unauthenticated_per_address: DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
            unauthenticated_grace: DEFAULT_UNAUTHENTICATED_GRACE,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
            max_rooms_per_user: DEFAULT_MAX_ROOMS_PER_USER,
            max_members_per_room: DEFAULT_MAX_MEMBERS_PER_ROOM,
            max_key_packages: DEFAULT_MAX_KEY_PACKAGES,
            fsync: true,
        }
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("server.db")
    }

    /// The directory of the self-signed certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

/// IPv6 and IPv4 wildcard addresses on `port`.
pub fn default_listen(port: u16) -> Vec<SocketAddr> {
    vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))]
}
