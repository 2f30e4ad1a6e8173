//! The MLS identity of one device, `USERNAME:DEVICE_NO`, parsed and
//! formatted in this one place.
//!
//! Every leaf of a room's MLS group carries a BasicCredential whose identity
//! bytes are this text (docs/PROTOCOL.md §7): the account's username, a
//! colon, and the device number in canonical decimal (`alice:1`). Client and
//! server both parse it with [`MemberIdentity::parse`], so both refuse the
//! same malformed identities with the same message.

use std::fmt;
use std::str::FromStr;

use crate::names::{validate_username, NameError, Username};

/// One device of one account, as named in its MLS credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberIdentity {
    /// The account's username (already lowercase).
    pub username: Username,
    /// The device's number within the account, from 1.
    pub device: u32,
}

/// Why credential identity bytes are not a `USERNAME:DEVICE_NO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not UTF-8.
    #[error("the identity is not UTF-8 text; it must be USERNAME:DEVICE_NO, like alice:1")]
    NotUtf8,
    /// There is no `:` between username and device number.
    #[error("the identity {0:?} has no ':'; it must be USERNAME:DEVICE_NO, like alice:1")]
    NoColon(String),
    /// The part before the last `:` is not a valid, lowercase username.
    #[error("the identity {identity:?} does not start with a valid username: {problem}")]
    Username {
        /// The whole identity.
        identity: String,
        /// What is wrong with the username part.
        problem: NameError,
    },
    /// The username part is valid but not in its stored, lowercase form.
    #[error("the identity {0:?} has a username with capital letters; identities use the lowercase username")]
    NotLowercase(String),
    /// The part after the last `:` is not a device number in canonical
    /// decimal (no sign, no leading zero, at most 4294967295).
    #[error(
        "the identity {0:?} does not end in a device number (1 to 4294967295 in plain decimal, \
         without leading zeros), like alice:1"
    )]
    Device(String),
}

impl MemberIdentity {
    /// The identity of `username`'s device number `device`.
    pub fn new(username: Username, device: u32) -> Self {
        Self { username, device }
    }

    /// Parses credential identity bytes: UTF-8 `USERNAME:DEVICE_NO`, the
    /// username valid and lowercase, the device number canonical decimal.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdentityError> {
        std::str::from_utf8(bytes).map_err(|_| IdentityError::NotUtf8)?.parse()
    }

    /// The credential identity bytes, `USERNAME:DEVICE_NO` in UTF-8.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl FromStr for MemberIdentity {
    type Err = IdentityError;

    fn from_str(identity: &str) -> Result<Self, IdentityError> {
        let (user, device) =
            identity.rsplit_once(':').ok_or_else(|| IdentityError::NoColon(identity.into()))?;
        let username = validate_username(user)
            .map_err(|problem| IdentityError::Username { identity: identity.into(), problem })?;
        if username.as_str() != user {
            return Err(IdentityError::NotLowercase(identity.into()));
        }
        let number: u32 = device.parse().map_err(|_| IdentityError::Device(identity.into()))?;
        if number.to_string() != device {
            return Err(IdentityError::Device(identity.into()));
        }
        Ok(Self { username, device: number })
    }
}

impl fmt::Display for MemberIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.username, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MemberIdentity, IdentityError> {
        s.parse()
    }

    #[test]
    fn round_trips_through_text_and_bytes() {
        for text in ["alice:1", "a.b-c_d:4294967295", "bob:0", "x:42"] {
            let id = parse(text).unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.to_bytes(), text.as_bytes());
            assert_eq!(MemberIdentity::parse(text.as_bytes()).unwrap(), id);
        }
        let built = MemberIdentity::new(validate_username("carol").unwrap(), 7);
        assert_eq!(built.to_string(), "carol:7");
        assert_eq!(parse("carol:7").unwrap(), built);
        assert_eq!(built.username.as_str(), "carol");
        assert_eq!(built.device, 7);
    }

    #[test]
    fn the_username_is_validated() {
        assert!(matches!(parse(":1"), Err(IdentityError::Username { .. })));
        assert!(matches!(
            parse("al ice:1"),
            Err(IdentityError::Username { problem: NameError::UsernameChar(' '), .. })
        ));
        let long = format!("{}:1", "a".repeat(33));
        assert!(matches!(parse(&long), Err(IdentityError::Username { .. })));
        assert_eq!(parse("Alice:1"), Err(IdentityError::NotLowercase("Alice:1".into())));
    }

    #[test]
    fn a_device_number_that_does_not_parse_is_refused() {
        for bad in ["alice:", "alice:01", "alice:+1", "alice:-1", "alice:x", "alice:4294967296", "alice: 1"] {
            assert_eq!(parse(bad), Err(IdentityError::Device(bad.into())), "{bad}");
        }
    }

    #[test]
    fn an_identity_without_a_colon_is_refused() {
        assert_eq!(parse("alice"), Err(IdentityError::NoColon("alice".into())));
        assert_eq!(parse(""), Err(IdentityError::NoColon(String::new())));
        assert_eq!(MemberIdentity::parse(b"\xffalice:1"), Err(IdentityError::NotUtf8));
    }

    #[test]
    fn extra_colons_are_refused() {
        for bad in ["a:b:1", "alice::1", ":alice:1", "alice:1:"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(IdentityError::Username { problem: NameError::UsernameChar(':'), .. })
                ),
                "{bad}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn errors_say_what_form_is_expected() {
        for bad in ["alice", "alice:x", "a:b:1", "Alice:1"] {
            let message = parse(bad).unwrap_err().to_string();
            assert!(message.contains(bad), "{message}");
        }
        assert!(parse("alice").unwrap_err().to_string().contains("USERNAME:DEVICE_NO"));
    }
}
