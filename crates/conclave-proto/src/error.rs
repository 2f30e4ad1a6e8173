//! Error frames: a stable machine code and a message a person can act on.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Codes are numbers on the wire so
/// that an older client can still show the message of a code it does not
/// know. Stable: never renumber or reuse a code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: Self = Self($num);)*

            /// The code's stable name, `snake_case`, or `unknown` for a
            /// code this build does not know.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($num => $text,)*
                    _ => "unknown",
                }
            }
        }
    };
}

codes! {
    // Connection-level: the server closes the connection after these.
    /// The two sides speak different protocol versions.
    VERSION_MISMATCH = 1, "version_mismatch";
    /// A frame's length prefix exceeds the receiver's limit.
    FRAME_TOO_LARGE = 2, "frame_too_large";
    /// A frame's payload does not decode.
    MALFORMED_FRAME = 3, "malformed_frame";
    /// A frame that is valid but not allowed in the session's current state
    /// (for example a request before `Hello`, or before authenticating).
    UNEXPECTED_FRAME = 4, "unexpected_frame";
    /// The handshake (TLS, `Hello`, authentication) took longer than allowed.
    HANDSHAKE_TIMEOUT = 5, "handshake_timeout";
    /// The server holds as many connections as it allows.
    SERVER_FULL = 6, "server_full";
    /// The server is stopping.
    SHUTTING_DOWN = 7, "shutting_down";
    /// Something failed inside the server; the message says what, if it can.
    INTERNAL = 8, "internal";
    /// The client did not read its events fast enough; reconnect and sync.
    SLOW_CONSUMER = 9, "slow_consumer";
    /// Too many connections from the client's address (in all, or not
    /// authenticated yet); the message names the limit. Retry later.
    TOO_MANY_CONNECTIONS = 10, "too_many_connections";

    // Accounts and devices.
    /// Wrong password or unknown user: deliberately indistinguishable.
    INVALID_CREDENTIALS = 100, "invalid_credentials";
    /// Too many failed attempts; `retry_after_secs` says when to try again.
    THROTTLED = 101, "throttled";
    /// A username breaks the naming rules.
    INVALID_USERNAME = 102, "invalid_username";
    /// A password breaks the password rules.
    WEAK_PASSWORD = 103, "weak_password";
    /// The username is already registered.
    USERNAME_TAKEN = 104, "username_taken";
    /// The server does not accept registrations.
    REGISTRATION_CLOSED = 105, "registration_closed";
    /// The server requires an invitation token and none, or a bad one, was given.
    INVALID_TOKEN = 106, "invalid_token";
    /// A device signature does not verify.
    BAD_SIGNATURE = 107, "bad_signature";
    /// No device with this key is registered.
    UNKNOWN_DEVICE = 108, "unknown_device";
    /// This device key is already registered.
    DEVICE_KEY_IN_USE = 109, "device_key_in_use";
    /// A display name breaks the naming rules.
    INVALID_DISPLAY_NAME = 110, "invalid_display_name";
    /// A field has the wrong shape (for example a key of the wrong length).
    INVALID_REQUEST = 111, "invalid_request";
    /// The server's operator disabled the account (`conclave admin disable`).
    ACCOUNT_DISABLED = 112, "account_disabled";

    // Rooms.
    /// Not a member of the room (also said of rooms that do not exist, so
    /// that non-members learn nothing).
    NOT_A_MEMBER = 200, "not_a_member";
    /// The member's role does not allow it.
    PERMISSION_DENIED = 201, "permission_denied";
    /// The commit was made for an epoch the room has moved past: sync and retry.
    STALE_EPOCH = 202, "stale_epoch";
    /// A room with this name exists.
    ROOM_EXISTS = 203, "room_exists";
    /// A room name breaks the naming rules.
    INVALID_ROOM_NAME = 204, "invalid_room_name";
    /// An MLS message failed the server's checks.
    INVALID_MLS = 205, "invalid_mls";
    /// No user has this name.
    NO_SUCH_USER = 206, "no_such_user";
    /// The user is already a member.
    ALREADY_MEMBER = 207, "already_member";
    /// A message is over the size limit.
    MESSAGE_TOO_LARGE = 208, "message_too_large";
    /// A limit was reached (for example KeyPackages kept per device).
    LIMIT_REACHED = 209, "limit_reached";
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The body of an error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do about it, for people.
    pub message: String,
    /// For [`ErrorCode::THROTTLED`]: seconds until the next attempt is allowed.
    pub retry_after_secs: Option<u32>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_secs: None }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_stable_names() {
        assert_eq!(ErrorCode::INVALID_CREDENTIALS.name(), "invalid_credentials");
        assert_eq!(ErrorCode(9999).name(), "unknown");
        assert_eq!(format!("{:?}", ErrorCode::THROTTLED), "throttled(101)");
    }
}
