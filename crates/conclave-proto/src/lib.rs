//! Conclave's wire protocol: frame types, their encoding, limits and error codes.
//!
//! This crate does no I/O and holds no cryptographic state. A connection is a
//! stream of frames, each a 4-byte big-endian length followed by that many
//! bytes of [postcard]-encoded payload. The client sends [`ClientFrame`]s, the
//! server [`ServerFrame`]s. `docs/PROTOCOL.md` in the repository specifies every
//! frame well enough to write another client from it.
//!
//! Decoding is incremental: [`decode`] returns `Ok(None)` while a frame is
//! incomplete, so the caller simply reads more bytes and tries again.

#![warn(missing_docs)]

mod auth;
mod codec;
mod error;
mod frame;
mod identity;
mod names;
mod rooms;
mod secret;
mod seq;

pub use auth::{auth_message, AUTH_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN, NONCE_LEN};
pub use codec::{
    decode, decode_entry, encode, encode_entry, encode_to_bytes, DecodeError, EncodeError, LEN_PREFIX,
};
pub use error::{ErrorBody, ErrorCode};
pub use frame::{
    AccountInfo, Authenticate, ClientFrame, ClientHello, Login, Register, Request, RequestId, Response,
    ServerFrame, ServerHello,
};
pub use identity::{IdentityError, MemberIdentity};
pub use names::{
    clean_display_name, display_name_char_problem, validate_display_name, validate_new_username,
    validate_password, validate_username, DisplayName, NameError, Username, MAX_DISPLAY_NAME_CHARS,
    MAX_PASSWORD_BYTES, MAX_USERNAME_LEN, MIN_PASSWORD_CHARS,
};
pub use rooms::{
    validate_new_room_name, validate_room_name, ClaimedKeyPackage, EntryBody, Event, LogEntry, MemberInfo,
    Role, RoomSummary, WelcomeItem, MAX_MESSAGE_BYTES, MAX_ROOM_NAME_LEN,
};
pub use secret::Password;
pub use seq::{Seq, SeqParseError};

/// The protocol version this build speaks. Both sides send it in their `Hello`;
/// a mismatch ends the connection with [`ErrorCode::VERSION_MISMATCH`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The server's default limit on one frame's payload, in bytes (1 MiB).
/// Operators can change it with `conclave serve --max-frame-bytes`.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// The client's limit on one frame from the server (16 MiB): generous, since
/// a server is trusted not to flood, but still bounded.
pub const CLIENT_MAX_FRAME_LEN: usize = 16 << 20;

/// The TCP port `conclave serve` listens on by default.
pub const DEFAULT_PORT: u16 = 7667;
