//! How a front end shows who someone is.
//!
//! A display name is chosen by its owner and need not be unique, so on its
//! own it proves nothing: anyone can call themselves "alice". The username is
//! the identity (the one the MLS credential names). Every front end therefore
//! shows a member as their display name with the username beside it,
//! `Alice (alice)`, unless the display name is exactly the username and no one
//! else in the room goes by the same name. A name shown alone is then always
//! the username of the person who sent it.
//!
//! Display names stored before the server refused invisible and reordering
//! characters may still hold them, so the name shown is cleaned first
//! ([`clean_display_name`]): each character the rules refuse becomes U+FFFD
//! (�), and a name with nothing visible in it is not shown at all.

use std::collections::HashMap;
use std::fmt;

use conclave_proto::{clean_display_name, MemberInfo};

/// What to show for one member: the name, and the username beside it when
/// the name alone could mislead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownName {
    /// The cleaned display name, or the username when there is nothing else to show.
    pub name: String,
    /// The username, to show beside `name` (as `name (username)`); `None`
    /// when `name` is the username and no one else in the room uses it.
    pub username: Option<String>,
}

impl fmt::Display for ShownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(u) => write!(f, "{} ({u})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The key two display names are compared by for "the same name": cleaned,
/// lowercased, without joiners and variation selectors, spaces collapsed.
fn same_name_key(clean: &str) -> String {
    let folded: String = clean
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}'))
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The display names in use in one room, to decide how each member is shown.
#[derive(Debug, Clone, Default)]
pub struct RoomNames {
    /// Same-name key → the usernames that go by it.
    users_by_name: HashMap<String, Vec<String>>,
}

impl RoomNames {
    /// The names of `members`, as (username, display name) pairs.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut users_by_name: HashMap<String, Vec<String>> = HashMap::new();
        for (username, display) in members {
            let clean = clean_display_name(display);
            let name = if clean.is_empty() { username } else { &clean };
            let users = users_by_name.entry(same_name_key(name)).or_default();
            if !users.iter().any(|u| u == username) {
                users.push(username.to_owned());
            }
        }
        RoomNames { users_by_name }
    }

    /// The names of a room's member list, as `Members` answered it.
    pub fn of_members(members: &[MemberInfo]) -> Self {
        Self::new(members.iter().map(|m| (m.username.as_str(), m.display_name.as_str())))
    }

    /// How to show `username`, who goes by `display` (a message's sender, a
    /// member of the list): `display` alone only if it is exactly the
    /// username and no other member of the room uses the same name.
    pub fn show(&self, username: &str, display: &str) -> ShownName {
        let clean = clean_display_name(display);
        let name = if clean.is_empty() { username.to_owned() } else { clean };
        let shared = self
            .users_by_name
            .get(&same_name_key(&name))
            .is_some_and(|users| users.iter().any(|u| u != username));
        let username = (name != username || shared).then(|| username.to_owned());
        ShownName { name, username }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(names: &RoomNames, user: &str, display: &str) -> String {
        names.show(user, display).to_string()
    }

    #[test]
    fn the_username_shows_when_the_display_name_differs() {
        let names = RoomNames::new([("alice", "Alice"), ("bob", "bob")]);
        assert_eq!(shown(&names, "alice", "Alice"), "Alice (alice)");
        assert_eq!(shown(&names, "bob", "bob"), "bob");
        assert_eq!(names.show("bob", "bob"), ShownName { name: "bob".into(), username: None });
        // Someone calling themselves by another member's username.
        let names = RoomNames::new([("alice", "alice"), ("mallory", "alice")]);
        assert_eq!(shown(&names, "mallory", "alice"), "alice (mallory)");
        assert_eq!(shown(&names, "alice", "alice"), "alice (alice)");
    }

    #[test]
    fn a_shared_display_name_shows_both_usernames() {
        let names = RoomNames::new([("alice", "Sam"), ("bob", "Sam"), ("carol", "carol")]);
        assert_eq!(shown(&names, "alice", "Sam"), "Sam (alice)");
        assert_eq!(shown(&names, "bob", "Sam"), "Sam (bob)");
        assert_eq!(shown(&names, "carol", "carol"), "carol");
        // Shared up to case, spacing and invisible joiners.
        let names = RoomNames::new([("sam", "sam"), ("eve", "SAM"), ("zed", "z  e d")]);
        assert_eq!(shown(&names, "sam", "sam"), "sam (sam)");
        let names = RoomNames::new([("zed", "zed"), ("eve", "ZED")]);
        assert_eq!(shown(&names, "zed", "zed"), "zed (zed)");
        // A sender who has left the room is still compared with those in it.
        let names = RoomNames::new([("carol", "dave")]);
        assert_eq!(shown(&names, "dave", "dave"), "dave (dave)");
        assert_eq!(shown(&RoomNames::default(), "dave", "dave"), "dave");
        // One member listed twice is not "shared".
        let names = RoomNames::new([("dave", "dave"), ("dave", "dave")]);
        assert_eq!(shown(&names, "dave", "dave"), "dave");
    }

    #[test]
    fn names_stored_before_the_rules_are_cleaned() {
        let names = RoomNames::default();
        assert_eq!(shown(&names, "mallory", "alice\u{202E}txt"), "alice\u{FFFD}txt (mallory)");
        assert_eq!(shown(&names, "mallory", "ali\u{200B}ce"), "ali\u{FFFD}ce (mallory)");
        assert_eq!(shown(&names, "mallory", "a\nb\u{1B}[2J"), "a\u{FFFD}b\u{FFFD}[2J (mallory)");
        // Nothing visible: the username alone, which is the truth.
        assert_eq!(shown(&names, "mallory", "\u{200B}\u{200B}"), "mallory");
        assert_eq!(shown(&names, "mallory", "   "), "mallory");
        assert_eq!(shown(&names, "mallory", ""), "mallory");
        // A display name that looks like the username but hides a character
        // is never shown alone.
        assert_eq!(shown(&names, "bob", "bob\u{200B}"), "bob\u{FFFD} (bob)");
        // Emoji sequences stay whole.
        assert_eq!(shown(&names, "ada", "👩\u{200D}💻 Ada"), "👩\u{200D}💻 Ada (ada)");
        assert_eq!(shown(&names, "ada", "a\u{200D}b"), "a\u{FFFD}b (ada)");
    }

    proptest::proptest! {
        /// Whatever the display name, what is shown alone is the username.
        #[test]
        fn a_name_shown_alone_is_the_username(
            user in "[a-z0-9][a-z0-9._-]{0,8}",
            display in "\\PC{0,12}|[a-z\u{200B}\u{202E} ]{0,6}",
            other in "\\PC{0,8}",
        ) {
            let names = RoomNames::new([(user.as_str(), display.as_str()), ("zz-other", other.as_str())]);
            let shown = names.show(&user, &display);
            if shown.username.is_none() {
                proptest::prop_assert_eq!(&shown.name, &user);
            }
            proptest::prop_assert!(conclave_proto::validate_display_name(&shown.name).is_ok() || shown.name == user);
        }
    }
}
