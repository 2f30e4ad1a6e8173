//! Conclave's client library: connect over TLS 1.3 with a pinned server
//! certificate, authenticate a device, and talk to the server.
//!
//! Everything a front end needs, and nothing about terminals: the `conclave`
//! binary builds its CLI on this crate, and decides how to ask a person
//! whether to trust a new server.

#![warn(missing_docs)]

mod address;
mod chat;
mod connection;
mod device;
pub mod engine;
mod error;
pub mod live;
mod names;
mod profile;
mod tls;

pub use address::ServerAddr;
pub use chat::{Chat, Update, KEY_PACKAGES_LOW, KEY_PACKAGES_TARGET};
pub use connection::{connect_tls, Answer, ClientStream, Connection, TlsConnected};
pub use device::DeviceKey;
pub use engine::{HistoryKind, HistoryRow};
pub use error::ClientError;
pub use names::{RoomNames, ShownName};
pub use profile::{AccountRecord, Profile, ProfileState};
pub use tls::{fingerprint, normalize_fingerprint};
