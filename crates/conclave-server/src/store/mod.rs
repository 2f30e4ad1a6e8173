//! The server's storage, behind a trait that speaks domain types only.
//!
//! [`Store`] is what the rest of the server sees; [`sqlite::SqliteStore`] is the
//! embedded default. A second engine (PostgreSQL, for several server nodes)
//! implements the same trait and runs the same conformance suite:
//! `conformance::run_all`, public with the crate's `conformance` feature.
//! Calls are blocking: async code reaches them through [`crate::blocking`].

pub mod sqlite;

use conclave_proto::{DisplayName, MemberIdentity, Role, Seq, Username};

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
    /// The device's key (also its MLS signature key).
    pub key: DeviceKey,
}

impl DeviceAccount {
    /// The device's MLS credential identity, `username:device`.
    pub fn identity(&self) -> String {
        MemberIdentity::new(self.username.clone(), self.device.0).to_string()
    }
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

/// Identifies one sent message: the sending device and its message id.
pub type ClientMsgKey = (UserId, DeviceNo, u64);

/// A room's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub i64);

/// A room as stored.
#[derive(Debug, Clone)]
pub struct RoomRecord {
    /// Row id.
    pub id: RoomId,
    /// Name.
    pub name: String,
    /// MLS group id.
    pub group_id: Vec<u8>,
    /// Current MLS epoch.
    pub epoch: u64,
    /// GroupInfo of the current epoch (MLSMessage bytes, with the tree).
    pub group_info: Vec<u8>,
    /// The server's own saved keyless group state for that epoch, if any.
    pub group_state: Option<Vec<u8>>,
    /// Sequence number of the newest log entry.
    pub head_seq: Seq,
}

/// A member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMember {
    /// The user.
    pub user: UserId,
    /// Username.
    pub username: Username,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Sequence number of the entry that made them a member.
    pub joined_seq: Seq,
}

/// A new room, with its first log entry.
pub struct NewRoom<'a> {
    /// Name (validated).
    pub name: &'a str,
    /// MLS group id.
    pub group_id: &'a [u8],
    /// GroupInfo at epoch 0.
    pub group_info: &'a [u8],
    /// The creator, who becomes the owner.
    pub owner: UserId,
    /// The encoded `Created` log entry, sequence number 1.
    pub created_entry: &'a [u8],
    /// Its time.
    pub time_ms: u64,
}

/// One change in a batch written by the log writer. A job (a list of ops)
/// is applied all or nothing.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Append an encoded log entry.
    Append {
        /// Room.
        room: RoomId,
        /// Its sequence number (the room's next).
        seq: Seq,
        /// Accepted at.
        time_ms: u64,
        /// Who sent it, if a device did.
        sender: Option<(UserId, DeviceNo)>,
        /// The sender's message id, for deduplication.
        client_msg_id: Option<u64>,
        /// The encoded `LogEntry`.
        entry: Vec<u8>,
    },
    /// Record the room's new epoch and its GroupInfo.
    SetEpoch {
        /// Room.
        room: RoomId,
        /// Epoch.
        epoch: u64,
        /// GroupInfo of that epoch.
        group_info: Vec<u8>,
        /// The server's keyless group state at that epoch.
        group_state: Vec<u8>,
    },
    /// Make a user a member.
    AddMember {
        /// Room.
        room: RoomId,
        /// User.
        user: UserId,
        /// Role.
        role: Role,
        /// The entry that added them.
        joined_seq: Seq,
    },
    /// End a membership.
    RemoveMember {
        /// Room.
        room: RoomId,
        /// User.
        user: UserId,
    },
    /// Change a member's role.
    SetRole {
        /// Room.
        room: RoomId,
        /// User.
        user: UserId,
        /// New role.
        role: Role,
    },
    /// Keep a Welcome for a device.
    Welcome {
        /// Room.
        room: RoomId,
        /// User.
        user: UserId,
        /// Device.
        device: DeviceNo,
        /// The commit that added it.
        seq: Seq,
        /// MLSMessage(Welcome) bytes.
        welcome: Vec<u8>,
    },
    /// Drop the Welcomes into a room kept for a device (it has joined).
    DropWelcomes {
        /// Room.
        room: RoomId,
        /// User.
        user: UserId,
        /// Device.
        device: DeviceNo,
    },
    /// Delete a room whose last member left: its log, memberships, Welcomes
    /// and the room itself. Its name is free again.
    DeleteRoom {
        /// Room.
        room: RoomId,
    },
}

/// A single-use KeyPackage to store, as the server checked it.
#[derive(Debug, Clone)]
pub struct NewKeyPackage {
    /// MLSMessage(KeyPackage) bytes.
    pub data: Vec<u8>,
    /// Its hash reference: what makes it the same KeyPackage.
    pub key_package_ref: Vec<u8>,
    /// When it expires (seconds since the Unix epoch); its reference is kept
    /// until then.
    pub not_after: u64,
}

/// A Welcome waiting for a device.
#[derive(Debug, Clone)]
pub struct StoredWelcome {
    /// Room name.
    pub room: String,
    /// MLS group id.
    pub group_id: Vec<u8>,
    /// The commit that added the device.
    pub seq: Seq,
    /// MLSMessage(Welcome) bytes.
    pub welcome: Vec<u8>,
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
    /// A single-use KeyPackage was stored before (it may have been claimed
    /// since), or appears twice in one upload. Nothing was stored.
    #[error("a KeyPackage was uploaded more than once")]
    KeyPackageReused,
    /// A user has no KeyPackage on the server (nothing was claimed).
    #[error("a user has no KeyPackages")]
    NoKeyPackages(UserId),
    /// A room with this name (or group id) exists.
    #[error("a room with this name already exists")]
    RoomExists,
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

    /// Disables (or enables again) the account `username`; false if there
    /// is no such account. Disabling one already disabled keeps its time.
    fn set_disabled(&self, username: &Username, disabled: bool) -> Result<bool, StoreError>;

    /// The accounts the operator disabled.
    fn disabled_users(&self) -> Result<Vec<UserId>, StoreError>;

    /// Records a single-use invitation token.
    fn create_invite(&self, token: &str) -> Result<(), StoreError>;

    /// Changes a user's display name.
    fn set_display_name(&self, user: UserId, display_name: &DisplayName) -> Result<(), StoreError>;

    /// A user by name, with their display name.
    fn user_by_name(&self, username: &Username) -> Result<Option<(UserId, String)>, StoreError>;

    /// Every device of a user, with its key.
    fn devices_of(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceKey)>, StoreError>;

    /// Stores KeyPackages of a device (the last-resort one replaces any
    /// older) and returns how many single-use ones it now has. A single-use
    /// package whose reference was stored before, until its `not_after`, fails
    /// the whole call with `KeyPackageReused`.
    fn store_key_packages(
        &self,
        user: UserId,
        device: DeviceNo,
        packages: &[NewKeyPackage],
        last_resort: Option<&[u8]>,
    ) -> Result<u32, StoreError>;

    /// How many single-use KeyPackages a device has.
    fn key_package_count(&self, user: UserId, device: DeviceNo) -> Result<u32, StoreError>;

    /// Takes one KeyPackage of every device of each user, in one transaction:
    /// a single-use one (deleted) if any is left, else the last-resort one.
    /// Devices with neither are left out; a user none of whose devices has
    /// one fails the whole claim with `NoKeyPackages`, and nothing is taken.
    fn claim_key_packages(&self, users: &[UserId]) -> Result<Vec<(UserId, DeviceNo, Vec<u8>)>, StoreError>;

    /// Creates a room, its owner's membership and its first log entry.
    fn create_room(&self, room: NewRoom<'_>) -> Result<RoomId, StoreError>;

    /// A room by name.
    fn room_by_name(&self, name: &str) -> Result<Option<RoomRecord>, StoreError>;

    /// A room's members.
    fn room_members(&self, room: RoomId) -> Result<Vec<RoomMember>, StoreError>;

    /// The names of the rooms a user is a member of.
    fn rooms_of_user(&self, user: UserId) -> Result<Vec<String>, StoreError>;

    /// The newest `limit` message ids of a room, for deduplicating retries:
    /// `((user, device, client_msg_id), seq)`.
    fn recent_client_ids(&self, room: RoomId, limit: usize) -> Result<Vec<(ClientMsgKey, Seq)>, StoreError>;

    /// Encoded log entries after `after`, oldest first: at most `limit`
    /// entries and about `max_bytes` bytes (always at least one). The flag
    /// says whether more follow.
    fn read_log(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError>;

    /// Applies jobs in one durable transaction (group commit); each job is
    /// all or nothing, and one job's failure does not fail the others.
    fn write_batch(&self, jobs: &[Vec<WriteOp>]) -> Vec<Result<(), StoreError>>;

    /// Welcomes kept for a device.
    fn welcomes_for(&self, user: UserId, device: DeviceNo) -> Result<Vec<StoredWelcome>, StoreError>;

    /// Whether a Welcome into `room` is kept for the device.
    fn has_welcome(&self, user: UserId, device: DeviceNo, room: RoomId) -> Result<bool, StoreError>;
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
