//! The server's storage, behind a trait that speaks domain types only.
//!
//! [`Store`] is what the rest of the server sees; [`sqlite::SqliteStore`] is the
//! embedded default. A second engine (PostgreSQL, for several server nodes)
//! implements the same trait and runs the same conformance tests. Calls are
//! blocking: async code reaches them through [`crate::blocking`].

pub mod sqlite;

use conclave_proto::{DisplayName, Username};

/// A user's row id. Stable for the life of the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

/// A device's number within its account, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceNo(pub u32);

/// An Ed25519 device public key, 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceKey(pub [u8; 32]);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", hex::encode(&self.0[..8]))
    }
}

/// An account together with one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAccount {
    /// The account.
    pub user: UserId,
    /// Its username.
    pub username: Username,
    /// Its display name.
    pub display_name: String,
    /// The device.
    pub device: DeviceNo,
}

/// An account's login credential.
#[derive(Clone)]
pub struct Credential {
    /// The account.
    pub user: UserId,
    /// The Argon2id PHC string.
    pub password_hash: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("user", &self.user).finish_non_exhaustive()
    }
}

/// A new account, ready to be stored.
#[derive(Clone)]
pub struct NewAccount<'a> {
    /// The username.
    pub username: &'a Username,
    /// The display name.
    pub display_name: &'a DisplayName,
    /// The Argon2id PHC string of the password.
    pub password_hash: &'a str,
    /// The first device's key.
    pub device_key: &'a DeviceKey,
    /// If set, an invitation token that must be unused, and is used up.
    pub invite_token: Option<&'a str>,
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The username is already registered (case-insensitively).
    #[error("username is already taken")]
    UsernameTaken,
    /// The device key is already registered.
    #[error("device key is already registered")]
    DeviceKeyInUse,
    /// The invitation token is unknown or already used.
    #[error("invitation token is invalid or already used")]
    InvalidToken,
    /// The database failed; the message says how.
    #[error("database error: {0}")]
    Database(String),
}

/// The server's durable state.
pub trait Store: Send + Sync + 'static {
    /// Creates an account and its first device (number 1), using up the
    /// invitation token if one is given, all in one transaction.
    fn create_account(&self, account: NewAccount<'_>) -> Result<DeviceAccount, StoreError>;

    /// The credential of `username`, if the account exists.
    fn credential(&self, username: &Username) -> Result<Option<Credential>, StoreError>;

    /// Adds a device to an account and returns it with its new number.
    fn add_device(&self, user: UserId, key: &DeviceKey) -> Result<DeviceAccount, StoreError>;

    /// The account and device that own `key`.
    fn device_by_key(&self, key: &DeviceKey) -> Result<Option<DeviceAccount>, StoreError>;

    /// Records a single-use invitation token.
    fn create_invite(&self, token: &str) -> Result<(), StoreError>;
}

#[cfg(test)]
mod conformance;
