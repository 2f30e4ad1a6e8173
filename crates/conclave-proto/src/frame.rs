//! The frames both sides exchange.
//!
//! Postcard encodes an enum variant as its index: variants are only ever
//! appended, never reordered or removed (stable, do not renumber).

use serde::{Deserialize, Serialize};

use crate::rooms::{ClaimedKeyPackage, Event, LogEntry, MemberInfo, Role, RoomSummary, WelcomeItem};
use crate::{ErrorBody, Password, Seq, NONCE_LEN};

/// A request id, chosen by the client and echoed in the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// Every frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The first frame on a connection.
    Hello(ClientHello),
    /// A request; the server answers with a response or an error carrying `id`.
    Request {
        /// Chosen by the client; unique among its outstanding requests.
        id: RequestId,
        /// What is asked.
        body: Request,
    },
}

/// Every frame a server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to the client's `Hello`.
    Hello(ServerHello),
    /// A successful answer to the request `id`.
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        body: Response,
    },
    /// A failed request (`id` set), or a connection-level error (`id` none),
    /// after which the server closes the connection.
    Error {
        /// The request's id, if the error answers one.
        id: Option<RequestId>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// Something happened that a subscribed session should know.
    Event(Event),
}

/// The client's greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// Free-form client name and version, for the server's log.
    pub client: String,
}

/// The server's greeting, with the challenge the device must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol_version: u32,
    /// Free-form server name and version.
    pub server: String,
    /// A fresh random nonce for this connection; see [`crate::auth_message`].
    pub auth_nonce: [u8; NONCE_LEN],
}

/// Every request. The first three authenticate the connection; the rest
/// need an authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Create an account and its first device, and authenticate as it.
    Register(Register),
    /// Enrol a new device with the account's password, and authenticate as it.
    Login(Login),
    /// Authenticate as an enrolled device, without a password.
    Authenticate(Authenticate),
    /// Who is this connection authenticated as?
    WhoAmI,
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Store KeyPackages of this device (MLSMessage bytes), and optionally
    /// its last-resort one. Answered with `KeyPackageCount`.
    UploadKeyPackages {
        /// Single-use KeyPackages.
        key_packages: Vec<Vec<u8>>,
        /// A replacement last-resort KeyPackage.
        #[serde(with = "serde_bytes")]
        last_resort: Option<Vec<u8>>,
    },
    /// How many KeyPackages of this device the server holds.
    KeyPackageCount,
    /// Create a room whose MLS group the client made (epoch 0, one member).
    CreateRoom {
        /// The room's name.
        name: String,
        /// The MLS group id.
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        /// The group's GroupInfo (MLSMessage bytes) with the ratchet tree.
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// The rooms you are a member of.
    ListRooms,
    /// Claim one KeyPackage of every device of these users, to add them.
    ClaimKeyPackages {
        /// The room they are to be added to.
        room: String,
        /// Usernames.
        users: Vec<String>,
    },
    /// Submit an MLS commit (PublicMessage) for the room's current epoch: an
    /// add, a remove, an update, or a device joining by external commit.
    Commit {
        /// The room.
        room: String,
        /// MLSMessage(PublicMessage) bytes.
        #[serde(with = "serde_bytes")]
        commit: Vec<u8>,
        /// MLSMessage(Welcome) bytes, when the commit adds devices.
        #[serde(with = "serde_bytes")]
        welcome: Option<Vec<u8>>,
        /// GroupInfo of the new epoch, with the ratchet tree.
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// The room's latest GroupInfo, to join it by external commit.
    GetGroupInfo {
        /// The room.
        room: String,
    },
    /// Send an application message (MLS PrivateMessage).
    Send {
        /// The room.
        room: String,
        /// A random id; a retry with the same id is stored once.
        client_msg_id: u64,
        /// MLSMessage(PrivateMessage) bytes.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
    /// The room's log after `after_seq`, oldest first, at most `limit` entries.
    Sync {
        /// The room.
        room: String,
        /// The last sequence number you processed.
        after_seq: Seq,
        /// At most this many entries (the server may send fewer).
        limit: u32,
    },
    /// The room's members with their roles and presence.
    Members {
        /// The room.
        room: String,
    },
    /// Give a member a role (owner only).
    SetRole {
        /// The room.
        room: String,
        /// The member.
        user: String,
        /// `Admin` or `Member`.
        role: Role,
    },
    /// Leave the room.
    Leave {
        /// The room.
        room: String,
    },
    /// Welcomes waiting for this device.
    PendingWelcomes,
    /// Push live events for every room of yours on this connection, and count
    /// it as online.
    Subscribe,
    /// Change your display name. Answered with `WhoAmI`.
    SetDisplayName {
        /// The new name (see [`crate::validate_display_name`]).
        display_name: String,
    },
}

/// Create an account. The device key and signature enrol the first device
/// and prove that the client holds its private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// 1–32 of `a-z 0-9 . _ -` (see [`crate::validate_username`]).
    pub username: String,
    /// At least 8 characters.
    pub password: Password,
    /// Shown to other people; defaults to the username.
    pub display_name: Option<String>,
    /// An invitation token, for servers that require one.
    pub token: Option<String>,
    /// The new device's Ed25519 public key, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub device_key: Vec<u8>,
    /// Ed25519 signature of [`crate::auth_message`] by `device_key`, 64 bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Enrol a new device on an existing account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Login {
    /// The account.
    pub username: String,
    /// Its password.
    pub password: Password,
    /// The new device's Ed25519 public key, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub device_key: Vec<u8>,
    /// Ed25519 signature of [`crate::auth_message`] by `device_key`, 64 bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Authenticate as an enrolled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authenticate {
    /// The device's Ed25519 public key, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub device_key: Vec<u8>,
    /// Ed25519 signature of [`crate::auth_message`] by `device_key`, 64 bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Every successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The connection is now authenticated as this account and device
    /// (answers `Register`, `Login` and `Authenticate`).
    Authenticated(AccountInfo),
    /// Answers `WhoAmI`.
    WhoAmI(AccountInfo),
    /// Answers `Ping`.
    Pong,
    /// How many single-use KeyPackages of this device the server holds.
    KeyPackageCount {
        /// The count (the last-resort one not included).
        available: u32,
    },
    /// A room, as just created.
    Room(RoomSummary),
    /// Answers `ListRooms` and `Subscribe`.
    Rooms(Vec<RoomSummary>),
    /// Answers `ClaimKeyPackages`: one per device of the users named.
    KeyPackages(Vec<ClaimedKeyPackage>),
    /// The request was stored in the room's log under this number.
    Accepted {
        /// The log entry's sequence number.
        seq: Seq,
    },
    /// Answers `GetGroupInfo`.
    GroupInfo {
        /// The epoch it describes.
        epoch: u64,
        /// MLSMessage(GroupInfo) bytes with the ratchet tree.
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// Answers `Sync`.
    Log {
        /// Entries, oldest first.
        entries: Vec<LogEntry>,
        /// Whether more entries follow (ask again after the last one).
        more: bool,
    },
    /// Answers `Members`.
    Members(Vec<MemberInfo>),
    /// Answers `PendingWelcomes`.
    Welcomes(Vec<WelcomeItem>),
    /// Done, nothing to report.
    Done,
}

/// An account and the device a connection is authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// The username (always lowercase).
    pub username: String,
    /// The display name.
    pub display_name: String,
    /// The device's number within the account, from 1.
    pub device_id: u32,
}
