//! Rooms: the log entries the server keeps, and the shapes of room requests,
//! answers and live events.
//!
//! The server never sees plaintext: `Message` carries an MLS PrivateMessage,
//! `Commit` an MLS PublicMessage commit (which the server validates), and
//! notices carry only names. Variants are only appended (stable indices).

use serde::{Deserialize, Serialize};

use crate::Seq;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME_LEN: usize = 64;

/// Longest message text, in bytes (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A member's role in a room. Stable: persisted by the server as these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Created the room; sets roles; may add and remove.
    Owner,
    /// May add and remove members.
    Admin,
    /// May send, read and leave.
    Member,
}

impl Role {
    /// Lowercase name, as shown and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses `owner`, `admin` or `member`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Whether this role may add and remove members.
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// One entry of a room's log, numbered by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The entry's sequence number in its room: 1, 2, 3, …
    pub seq: Seq,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The username of whoever caused it (empty for the server itself).
    pub sender: String,
    /// The sender's device number (0 for the server).
    pub sender_device: u32,
    /// What it is.
    pub body: EntryBody,
}

/// What a log entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EntryBody {
    /// The room was created by `sender`, its owner.
    Created,
    /// An MLS commit (PublicMessage bytes) the server checked and applied,
    /// with the membership change it made, as the server understood it.
    Commit {
        /// The MLSMessage bytes of the commit.
        #[serde(with = "serde_bytes")]
        commit: Vec<u8>,
        /// Users who joined the room through it.
        added: Vec<String>,
        /// Users whose devices it removed from the group.
        removed: Vec<String>,
    },
    /// An application message: MLS PrivateMessage bytes.
    Message {
        /// The sender's id for it, so a retry is stored once.
        client_msg_id: u64,
        /// The MLSMessage bytes.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
    /// `user` left the room (the server stopped delivering to them here).
    Left {
        /// Who left.
        user: String,
    },
    /// `sender` gave `user` a new role.
    RoleChanged {
        /// Whose role changed.
        user: String,
        /// The new role.
        role: Role,
    },
}

/// A room as its member sees it in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    /// The room's name.
    pub name: String,
    /// The MLS group id.
    #[serde(with = "serde_bytes")]
    pub group_id: Vec<u8>,
    /// Your role in it.
    pub role: Role,
    /// How many users are members.
    pub members: u32,
    /// The sequence number of the newest log entry.
    pub head_seq: Seq,
    /// The sequence number at which you joined (entries before it are not yours to read).
    pub joined_seq: Seq,
}

/// A room member, for `room members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Username.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Whether a live session of theirs is connected.
    pub online: bool,
}

/// One device's KeyPackage, claimed for adding it to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The user.
    pub username: String,
    /// The device number.
    pub device_id: u32,
    /// MLSMessage(KeyPackage) bytes.
    #[serde(with = "serde_bytes")]
    pub key_package: Vec<u8>,
}

/// A Welcome into a room, for one of your devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeItem {
    /// The room.
    pub room: String,
    /// Its MLS group id.
    #[serde(with = "serde_bytes")]
    pub group_id: Vec<u8>,
    /// The sequence number of the commit that added you: read the log after it.
    pub joined_seq: Seq,
    /// MLSMessage(Welcome) bytes.
    #[serde(with = "serde_bytes")]
    pub welcome: Vec<u8>,
}

/// Events the server pushes to a subscribed session, without a request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A new entry in a room you are in.
    Entry {
        /// The room.
        room: String,
        /// The entry.
        entry: LogEntry,
    },
    /// You (one of your devices) were added to a room.
    Welcome(WelcomeItem),
    /// A member came online or went offline.
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// Online now?
        online: bool,
    },
    /// This device has few KeyPackages left on the server; upload more.
    KeyPackagesLow {
        /// How many are left (not counting the last-resort one).
        available: u32,
    },
}

/// Checks a room name: 1–64 of `a-z 0-9 . _ -` (uppercase is folded), with an
/// optional leading `#` dropped.
pub fn validate_room_name(raw: &str) -> Result<String, String> {
    let name = raw.strip_prefix('#').unwrap_or(raw).to_ascii_lowercase();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_ROOM_NAME_LEN {
        return Err(format!("room name must be 1 to {MAX_ROOM_NAME_LEN} characters, got {chars}"));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("room name may contain only a-z, 0-9, '.', '_' and '-' (found {bad:?})"));
    }
    Ok(name)
}

/// Checks the name of a new room: [`validate_room_name`], and the first
/// character is a letter or digit, so that no room is called `.`, `..` or
/// `-`, or hides like a dot file. Rooms made before this rule keep working:
/// every other request checks only [`validate_room_name`].
pub fn validate_new_room_name(raw: &str) -> Result<String, String> {
    let name = validate_room_name(raw)?;
    match name.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => Ok(name),
        Some(c) => Err(format!("a room name must start with a letter or a digit, not {c:?}")),
        None => Err(format!("room name must be 1 to {MAX_ROOM_NAME_LEN} characters, got 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(validate_room_name("#Lab").unwrap(), "lab");
        assert_eq!(validate_room_name(&"r".repeat(64)).unwrap().len(), 64);
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("#").is_err());
        assert!(validate_room_name(&"r".repeat(65)).is_err());
        assert!(validate_room_name("la b").unwrap_err().contains("' '"));
        assert!(validate_room_name(&"é".repeat(40)).unwrap_err().contains("may contain only"));
    }

    #[test]
    fn new_room_names_start_with_a_letter_or_digit() {
        for bad in [".", "..", "-", ".hidden", "_x", "#-"] {
            assert!(validate_room_name(bad).is_ok(), "{bad:?} still names an existing room");
            let err = validate_new_room_name(bad).unwrap_err();
            assert!(err.contains("must start with a letter or a digit"), "{bad:?}: {err}");
        }
        assert_eq!(validate_new_room_name("#9.lab-x_y").unwrap(), "9.lab-x_y");
        assert!(validate_new_room_name("la b").unwrap_err().contains("' '"), "the other rules come first");
    }

    #[test]
    fn roles() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert!(Role::Admin.can_manage() && !Role::Member.can_manage());
    }
}
