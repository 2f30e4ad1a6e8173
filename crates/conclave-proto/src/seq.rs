//! The position of an entry in a room's log.
//!
//! The server numbers each room's log entries 1, 2, 3, … as it accepts them
//! (docs/PROTOCOL.md §4). On the wire a [`Seq`] is the bare `u64`: the type
//! exists so that a sequence number cannot be mixed up with a count, an epoch,
//! a message id or a limit, all of which are `u64`s too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A sequence number in one room's log. [`Seq::ZERO`] stands before the first
/// entry: "nothing read yet" for a reader, "empty" for a log's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Before the first entry.
    pub const ZERO: Seq = Seq(0);
    /// The first entry of every room: its `Created` notice.
    pub const FIRST: Seq = Seq(1);

    /// The sequence number `n`.
    pub const fn new(n: u64) -> Self {
        Seq(n)
    }

    /// The number itself, for storage and arithmetic at the edges.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The entry after this one. Saturates at `u64::MAX`, a number no log
    /// reaches, so that a hostile peer's number cannot make this panic.
    #[must_use]
    pub const fn next(self) -> Self {
        Seq(self.0.saturating_add(1))
    }

    /// The entry before this one, or [`Seq::ZERO`] before the first.
    #[must_use]
    pub const fn prev(self) -> Self {
        Seq(self.0.saturating_sub(1))
    }

    /// How many entries lie after `earlier` up to and including this one
    /// (0 when `earlier` is not before it).
    pub const fn since(self, earlier: Seq) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Seq {
    fn from(n: u64) -> Self {
        Seq(n)
    }
}

impl From<Seq> for u64 {
    fn from(seq: Seq) -> Self {
        seq.0
    }
}

/// Why text is not a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sequence number: give a whole number from 0, like 120")]
pub struct SeqParseError(String);

impl FromStr for Seq {
    type Err = SeqParseError;

    fn from_str(s: &str) -> Result<Self, SeqParseError> {
        s.parse().map(Seq).map_err(|_| SeqParseError(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_wire_a_seq_is_its_number() {
        let n = 1_048_576u64;
        assert_eq!(postcard::to_allocvec(&Seq::new(n)).unwrap(), postcard::to_allocvec(&n).unwrap());
        assert_eq!(postcard::from_bytes::<Seq>(&postcard::to_allocvec(&n).unwrap()).unwrap(), Seq::new(n));
    }

    #[test]
    fn steps_saturate_instead_of_panicking() {
        assert_eq!(Seq::new(u64::MAX).next(), Seq::new(u64::MAX));
        assert_eq!(Seq::ZERO.prev(), Seq::ZERO);
        assert_eq!(Seq::FIRST.prev(), Seq::ZERO);
        assert_eq!(Seq::ZERO.next(), Seq::FIRST);
        assert_eq!(Seq::new(10).since(Seq::new(4)), 6);
        assert_eq!(Seq::new(4).since(Seq::new(10)), 0);
    }

    #[test]
    fn parses_plain_numbers_and_says_what_is_wrong() {
        assert_eq!("120".parse::<Seq>().unwrap(), Seq::new(120));
        assert_eq!(Seq::new(120).to_string(), "120");
        let err = "-1".parse::<Seq>().unwrap_err().to_string();
        assert!(err.contains("\"-1\"") && err.contains("whole number"), "{err}");
        assert!("é".parse::<Seq>().is_err());
    }
}
