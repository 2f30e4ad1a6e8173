//! What a row of local history is: a message, an undecryptable message, or
//! one of the notices the client records for the room's log entries.
//!
//! The kind is stored in the profile's `history.kind` column and serialised
//! in [`HistoryRow`](super::HistoryRow) (`conclave tail --json`, the live
//! API) as the lowercase strings of [`HistoryKind::as_str`]. Those strings
//! are persisted: stable, do not rename.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// The kind of a history row. Persisted as text: stable, do not rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// A message decrypted (or sent) on this device: `"message"`.
    Message,
    /// A message this device could not decrypt; the row's text says why:
    /// `"undecryptable"`.
    Undecryptable,
    /// A notice with no more specific kind, such as "alice created #lab":
    /// `"notice"`.
    #[default]
    Notice,
    /// Members were added by a commit: `"join"`.
    Join,
    /// Members were removed by a commit: `"remove"`.
    Remove,
    /// A member left: `"leave"`.
    Leave,
    /// A member's role changed: `"role"`.
    Role,
    /// A commit that added and removed no one (a key update): `"commit"`.
    /// Such a commit has no notice text, so today no row of this kind is
    /// written; the kind exists for [`Meta`](super::Meta).
    Commit,
}

/// A stored history kind this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown history kind {0:?} (expected message, undecryptable, notice, join, remove, leave, role or commit); \
     the profile was written by a newer version of conclave, or is damaged"
)]
pub struct UnknownHistoryKind(pub String);

impl HistoryKind {
    /// Every kind, in declaration order.
    pub const ALL: [HistoryKind; 8] = [
        HistoryKind::Message,
        HistoryKind::Undecryptable,
        HistoryKind::Notice,
        HistoryKind::Join,
        HistoryKind::Remove,
        HistoryKind::Leave,
        HistoryKind::Role,
        HistoryKind::Commit,
    ];

    /// The stored and serialised text of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Message => "message",
            HistoryKind::Undecryptable => "undecryptable",
            HistoryKind::Notice => "notice",
            HistoryKind::Join => "join",
            HistoryKind::Remove => "remove",
            HistoryKind::Leave => "leave",
            HistoryKind::Role => "role",
            HistoryKind::Commit => "commit",
        }
    }

    /// Whether the row is a notice (anything but a message, readable or not).
    pub fn is_notice(self) -> bool {
        !matches!(self, HistoryKind::Message | HistoryKind::Undecryptable)
    }
}

impl fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HistoryKind {
    type Err = UnknownHistoryKind;

    fn from_str(s: &str) -> Result<Self, UnknownHistoryKind> {
        HistoryKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownHistoryKind(s.to_owned()))
    }
}

impl ToSql for HistoryKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for HistoryKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e: UnknownHistoryKind| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_serde_and_parse_agree() {
        for kind in HistoryKind::ALL {
            assert_eq!(kind.as_str().parse::<HistoryKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<HistoryKind>(&json).unwrap(), kind);
        }
        assert_eq!(HistoryKind::default(), HistoryKind::Notice);
    }

    #[test]
    fn stored_strings_are_stable() {
        let names: Vec<&str> = HistoryKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["message", "undecryptable", "notice", "join", "remove", "leave", "role", "commit"]
        );
    }

    #[test]
    fn an_unknown_kind_is_named_in_the_error() {
        let e = "poll".parse::<HistoryKind>().unwrap_err();
        assert!(e.to_string().contains("\"poll\""), "{e}");
        assert!("Message".parse::<HistoryKind>().is_err());
        assert!(serde_json::from_str::<HistoryKind>("\"poll\"").is_err());
    }
}
