//! The rules for usernames, display names and passwords, shared by client
//! and server so that both give the same clear error.
//!
//! Usernames are the identity: short, ASCII, unique. Display names are free
//! text chosen by their owner, so they are where someone would hide or
//! pretend to be someone else: the rules refuse the characters that reorder,
//! hide or break text, and names with nothing visible in them. Display names
//! stay non-unique; `docs/PROTOCOL.md` §7.9 says how clients show who is who.

use serde::{Deserialize, Serialize};

/// Longest username, in bytes (all allowed characters are ASCII).
pub const MAX_USERNAME_LEN: usize = 32;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes: bounds the work one login can cost.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A valid username: 1–32 of `a-z 0-9 . _ -`, stored lowercase (see
/// [`validate_username`] and, for new accounts, [`validate_new_username`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Username(String);

impl Username {
    /// The username as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid display name (see [`validate_display_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayName(String);

impl DisplayName {
    /// The display name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a name or password was refused. Each message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Username empty or too long.
    #[error("username must be 1 to {MAX_USERNAME_LEN} characters, got {0}")]
    UsernameLength(usize),
    /// Username with a character outside the allowed set.
    #[error("username may contain only a-z, 0-9, '.', '_' and '-' (found {0:?})")]
    UsernameChar(char),
    /// New username that does not start with a letter or digit (`.`, `..`,
    /// `-x`, `.hidden`).
    #[error("username must start with a letter or a digit (found {0:?})")]
    UsernameStart(char),
    /// Display name empty or too long after trimming.
    #[error("display name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters after trimming spaces, got {0}")]
    DisplayNameLength(usize),
    /// Display name with a character that can hide or disguise text.
    #[error("display name may not contain U+{:04X}, {why}", u32::from(*.ch))]
    DisplayNameChar {
        /// The character.
        ch: char,
        /// What it is and why it is refused.
        why: &'static str,
    },
    /// Display name with nothing visible in it.
    #[error(
        "display name must contain a visible character (a letter, digit, symbol or punctuation), \
         not only spaces, combining marks or invisible characters"
    )]
    DisplayNameBlank,
    /// Password too short.
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    /// Password too long.
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
}

/// Parses the username of an account that may already exist: 1–32 of
/// `a-z 0-9 . _ -` after folding `A-Z` to lowercase, so usernames are unique
/// case-insensitively (`Alice` and `alice` are one name).
///
/// This is the rule every stored account meets, so logins, member lists and
/// the store use it. A **new** account must also meet
/// [`validate_new_username`], whose extra rule came later: accounts made
/// before it keep working.
pub fn validate_username(raw: &str) -> Result<Username, NameError> {
    let name = raw.to_ascii_lowercase();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_USERNAME_LEN {
        return Err(NameError::UsernameLength(chars));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::UsernameChar(bad));
    }
    Ok(Username(name))
}

/// Checks the username of a new account: [`validate_username`], and the
/// first character is a letter or digit, so that no one can register `.`,
/// `..`, `-` or a name that hides like a dot file.
pub fn validate_new_username(raw: &str) -> Result<Username, NameError> {
    let name = validate_username(raw)?;
    match name.0.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => Ok(name),
        Some(c) => Err(NameError::UsernameStart(c)),
        None => Err(NameError::UsernameLength(0)),
    }
}

/// Why `c` may not appear in a display name, or `None` if it may.
///
/// Refused: control characters (Unicode category Cc), the line and
/// paragraph separators (U+2028, U+2029), bidirectional controls
/// (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), zero-width
/// characters (U+200B–U+200D, U+2060, U+FEFF, U+180E), every other format
/// character (Cf: soft hyphen, invisible operators, tags, …), blank fillers
/// (U+115F, U+1160, U+3164, U+FFA0, U+2800) and the reserved invisible code
/// points (U+2065, U+FFF0–U+FFF8, U+E0000–U+E0FFF outside the variation
/// selectors). [`validate_display_name`] lets one exception through: U+200D
/// ZERO WIDTH JOINER between two emoji, where it joins them into one
/// picture (👩‍💻).
pub fn display_name_char_problem(c: char) -> Option<&'static str> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    Some(match c {
        '\u{2028}' | '\u{2029}' => "a line or paragraph separator: it breaks the name across lines",
        c if c.is_control() => {
            "a control character (such as a newline, tab or escape), which terminals act on"
        }
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            "a bidirectional control character: it reorders how the name and the text after it are shown"
        }
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{180E}' => {
            "a zero-width character: it is invisible, so two different names could look the same"
        }
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}' => {
            "a blank filler character: it shows as empty space"
        }
        c if c.general_category() == GeneralCategory::Format => {
            "an invisible formatting character (Unicode category Cf)"
        }
        '\u{2065}' | '\u{FFF0}'..='\u{FFF8}' | '\u{E0000}'..='\u{E00FF}' | '\u{E01F0}'..='\u{E0FFF}' => {
            "a reserved code point that is shown as nothing"
        }
        _ => return None,
    })
}

/// Whether `c` is something a reader sees: not a space, not a combining mark
/// on its own, not a control, format or separator character.
fn is_visible(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    !c.is_whitespace()
        && display_name_char_problem(c).is_none()
        && !matches!(
            c.general_category(),
            G::NonspacingMark
                | G::EnclosingMark
                | G::SpaceSeparator
                | G::LineSeparator
                | G::ParagraphSeparator
        )
}

/// An emoji (not one of the ASCII characters `#`, `*`, `0`–`9` that Unicode
/// also counts as emoji), or the emoji presentation selector U+FE0F that may
/// follow one.
fn is_emoji_part(c: Option<char>) -> bool {
    use unicode_properties::UnicodeEmoji;
    c.is_some_and(|c| c == '\u{FE0F}' || (!c.is_ascii() && c.is_emoji_char()))
}

/// The characters of `name` that a display name may not hold, with why: every
/// one [`display_name_char_problem`] names, except a zero width joiner
/// between two emoji.
fn refused_chars(name: &str) -> impl Iterator<Item = (usize, char, &'static str)> + '_ {
    let mut prev = None;
    let mut it = name.char_indices();
    std::iter::from_fn(move || {
        for (i, c) in it.by_ref() {
            let before = prev.replace(c);
            let Some(why) = display_name_char_problem(c) else { continue };
            let next = name[i + c.len_utf8()..].chars().next();
            if !(c == '\u{200D}' && is_emoji_part(before) && is_emoji_part(next)) {
                return Some((i, c, why));
            }
        }
        None
    })
}

/// Checks a display name: leading and trailing whitespace trimmed, then 1–64
/// characters, none of those [`display_name_char_problem`] refuses (a zero
/// width joiner is allowed between two emoji), and at least one visible
/// character.
pub fn validate_display_name(raw: &str) -> Result<DisplayName, NameError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS {
        return Err(NameError::DisplayNameLength(chars));
    }
    if let Some((_, ch, why)) = refused_chars(name).next() {
        return Err(NameError::DisplayNameChar { ch, why });
    }
    if !name.chars().any(is_visible) {
        return Err(NameError::DisplayNameBlank);
    }
    Ok(DisplayName(name.to_owned()))
}

/// A display name from anywhere (one stored before today's rules, say) made
/// safe to show: each character [`validate_display_name`] would refuse
/// becomes U+FFFD (�), and the result is trimmed. Empty if nothing visible
/// is in it. A name that passes the rules comes back unchanged but trimmed.
pub fn clean_display_name(raw: &str) -> String {
    if !raw.chars().any(is_visible) {
        return String::new();
    }
    let mut out = String::with_capacity(raw.len());
    let mut from = 0;
    for (i, c, _) in refused_chars(raw) {
        out.push_str(&raw[from..i]);
        out.push('\u{FFFD}');
        from = i + c.len_utf8();
    }
    out.push_str(&raw[from..]);
    out.trim().to_owned()
}

/// Checks a new password's length (at least 8 characters, at most 1 KiB).
pub fn validate_password(password: &str) -> Result<(), NameError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(NameError::PasswordTooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(NameError::PasswordTooShort);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(validate_username("alice").unwrap().as_str(), "alice");
        assert_eq!(validate_username("Alice").unwrap().as_str(), "alice");
        assert_eq!(validate_username("a.b_c-9").unwrap().as_str(), "a.b_c-9");
        assert_eq!(validate_username(&"x".repeat(32)).unwrap().as_str().len(), 32);
        assert_eq!(validate_username(""), Err(NameError::UsernameLength(0)));
        assert_eq!(validate_username(&"x".repeat(33)), Err(NameError::UsernameLength(33)));
        assert_eq!(validate_username("al ice"), Err(NameError::UsernameChar(' ')));
        assert_eq!(validate_username("émile"), Err(NameError::UsernameChar('é')));
        // Accounts made before the first-character rule still parse.
        assert_eq!(validate_username(".hidden").unwrap().as_str(), ".hidden");
    }

    #[test]
    fn new_usernames_start_with_a_letter_or_digit() {
        for bad in [".", "..", "-", ".hidden", "_x", "-rf", "..."] {
            let first = bad.chars().next().unwrap();
            assert_eq!(validate_new_username(bad), Err(NameError::UsernameStart(first)), "{bad:?}");
        }
        let e = validate_new_username(".hidden").unwrap_err().to_string();
        assert!(e.contains("must start with a letter or a digit") && e.contains("'.'"), "{e}");
        for good in ["alice", "Bob", "9lives", "a.", "a-b_c.d", "x"] {
            assert_eq!(validate_new_username(good), validate_username(good), "{good:?}");
            assert!(validate_new_username(good).is_ok(), "{good:?}");
        }
        // The other rules still come first.
        assert_eq!(validate_new_username(""), Err(NameError::UsernameLength(0)));
        assert_eq!(validate_new_username("é"), Err(NameError::UsernameChar('é')));
    }

    #[test]
    fn display_names() {
        assert_eq!(validate_display_name(" Alice B. ").unwrap().as_str(), "Alice B.");
        assert_eq!(validate_display_name("😀 Zoë").unwrap().as_str(), "😀 Zoë");
        assert_eq!(validate_display_name("José Ñúñez").unwrap().as_str(), "José Ñúñez");
        assert_eq!(validate_display_name("李小龍").unwrap().as_str(), "李小龍");
        assert_eq!(validate_display_name("عمر").unwrap().as_str(), "عمر");
        assert_eq!(validate_display_name("❤️ Léa").unwrap().as_str(), "❤️ Léa");
        assert_eq!(validate_display_name(&"x".repeat(64)).unwrap().as_str().len(), 64);
        assert_eq!(validate_display_name(""), Err(NameError::DisplayNameLength(0)));
        assert_eq!(validate_display_name(" \t "), Err(NameError::DisplayNameLength(0)));
        assert_eq!(validate_display_name(&"x".repeat(65)), Err(NameError::DisplayNameLength(65)));
    }

    /// The character a display name is refused for, by its U+ code.
    fn refused_for(name: &str) -> u32 {
        match validate_display_name(name) {
            Err(NameError::DisplayNameChar { ch, .. }) => u32::from(ch),
            other => panic!("{name:?} gave {other:?}"),
        }
    }

    #[test]
    fn display_names_may_not_hide_or_reorder_text() {
        let cases: &[(&str, u32)] = &[
            // Bidirectional overrides, embeddings and isolates.
            ("alice\u{202E}txt.exe", 0x202E),
            ("\u{202A}x", 0x202A),
            ("a\u{202B}b", 0x202B),
            ("a\u{202C}b", 0x202C),
            ("a\u{202D}b", 0x202D),
            ("a\u{2066}b", 0x2066),
            ("a\u{2067}b", 0x2067),
            ("a\u{2068}b", 0x2068),
            ("a\u{2069}b", 0x2069),
            ("a\u{200E}b", 0x200E),
            ("a\u{200F}b", 0x200F),
            ("a\u{061C}b", 0x061C),
            // Zero-width characters.
            ("al\u{200B}ice", 0x200B),
            ("al\u{200C}ice", 0x200C),
            ("al\u{200D}ice", 0x200D),
            ("al\u{2060}ice", 0x2060),
            ("\u{FEFF}alice", 0xFEFF),
            ("a\u{180E}b", 0x180E),
            // Line and paragraph separators, controls.
            ("a\u{2028}b", 0x2028),
            ("a\u{2029}b", 0x2029),
            ("a\nb", 0x0A),
            ("a\u{7}", 0x07),
            ("a\u{1B}[31mred", 0x1B),
            ("a\u{85}b", 0x85),
            // Other format characters, fillers, reserved invisibles.
            ("soft\u{AD}hyphen", 0xAD),
            ("a\u{2062}b", 0x2062),
            ("flag\u{E0067}", 0xE0067),
            ("a\u{3164}b", 0x3164),
            ("\u{115F}", 0x115F),
            ("a\u{FFA0}", 0xFFA0),
            ("a\u{2800}", 0x2800),
            ("a\u{2065}b", 0x2065),
            ("a\u{E0FFF}", 0xE0FFF),
        ];
        for &(name, code) in cases {
            assert_eq!(refused_for(name), code, "{name:?}");
        }
        let e = validate_display_name("alice\u{202E}txt").unwrap_err().to_string();
        assert!(e.contains("U+202E") && e.contains("bidirectional"), "{e}");
        let e = validate_display_name("al\u{200B}ice").unwrap_err().to_string();
        assert!(e.contains("U+200B") && e.contains("zero-width"), "{e}");
        let e = validate_display_name("a\u{2028}b").unwrap_err().to_string();
        assert!(e.contains("U+2028") && e.contains("line or paragraph separator"), "{e}");
    }

    #[test]
    fn a_joiner_is_allowed_only_inside_an_emoji() {
        for ok in ["👩\u{200D}💻 Ada", "🏳\u{FE0F}\u{200D}🌈", "👩🏽\u{200D}🚀", "👨\u{200D}👩\u{200D}👧"]
        {
            assert!(validate_display_name(ok).is_ok(), "{ok:?}");
        }
        for bad in
            ["a\u{200D}b", "👩\u{200D}", "\u{200D}💻", "1\u{200D}2", "👩\u{200D}\u{200D}💻", "👩\u{200D} x"]
        {
            assert_eq!(refused_for(bad), 0x200D, "{bad:?}");
        }
    }

    #[test]
    fn a_display_name_must_show_something() {
        for blank in ["\u{301}", "\u{FE0F}", "\u{301} \u{20DD}", "\u{E0100}"] {
            assert_eq!(validate_display_name(blank), Err(NameError::DisplayNameBlank), "{blank:?}");
        }
        assert!(validate_display_name("e\u{301}").is_ok());
        assert!(validate_display_name("\u{3000}x\u{3000}").is_ok());
        assert!(validate_display_name("\u{E000}").is_ok(), "private use is allowed");
        let e = validate_display_name("\u{301}").unwrap_err().to_string();
        assert!(e.contains("visible character"), "{e}");
    }

    #[test]
    fn passwords() {
        assert_eq!(validate_password("short"), Err(NameError::PasswordTooShort));
        assert_eq!(validate_password("12345678"), Ok(()));
        assert_eq!(validate_password(&"p".repeat(1025)), Err(NameError::PasswordTooLong));
    }

    #[test]
    fn clean_names_replace_what_the_rules_refuse() {
        assert_eq!(clean_display_name(" Alice "), "Alice");
        assert_eq!(clean_display_name("alice\u{202E}txt"), "alice\u{FFFD}txt");
        assert_eq!(clean_display_name("a\nb\u{1B}[2J"), "a\u{FFFD}b\u{FFFD}[2J");
        assert_eq!(clean_display_name("👩\u{200D}💻 a\u{200D}b"), "👩\u{200D}💻 a\u{FFFD}b");
        assert_eq!(clean_display_name("\u{200B}\u{200B}"), "");
        assert_eq!(clean_display_name(" \u{301} "), "");
        assert_eq!(clean_display_name(""), "");
        assert_eq!(clean_display_name(&"y".repeat(80)), "y".repeat(80));
    }

    proptest::proptest! {
        /// Any text: cleaning never panics, leaves nothing the rules refuse,
        /// and keeps an accepted name as it is.
        #[test]
        fn cleaning_leaves_nothing_refused(raw in "\\PC{0,20}|[a \u{200B}\u{200D}\u{202E}\u{1F469}\u{1F4BB}\u{301}]{0,10}") {
            let clean = clean_display_name(&raw);
            proptest::prop_assert!(refused_chars(&clean).next().is_none(), "{:?} → {:?}", raw, clean);
            if let Ok(name) = validate_display_name(&raw) {
                proptest::prop_assert_eq!(clean, name.as_str());
            }
        }

        /// Any text: no panic; an accepted name is its own fixpoint, has
        /// something visible and nothing refused but joiners inside emoji.
        #[test]
        fn display_name_rule_holds_for_any_text(
            chars in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::char::any(),
                    proptest::sample::select(vec![
                        ' ', 'a', '\u{200D}', '\u{202E}', '\u{FE0F}', '\u{301}', '👩', '💻', '\u{2028}', '\u{3000}',
                    ]),
                ],
                0..70,
            )
        ) {
            let raw: String = chars.into_iter().collect();
            if let Ok(name) = validate_display_name(&raw) {
                proptest::prop_assert_eq!(validate_display_name(name.as_str()), Ok(name.clone()));
                proptest::prop_assert!(name.as_str().chars().any(is_visible));
                for c in name.as_str().chars() {
                    proptest::prop_assert!(display_name_char_problem(c).is_none() || c == '\u{200D}', "{:?}", c);
                }
            }
        }

        /// A new username is always a valid username, the same one.
        #[test]
        fn new_usernames_are_usernames(raw in "[a-zA-Z0-9._\\-é ]{0,34}") {
            if let Ok(name) = validate_new_username(&raw) {
                proptest::prop_assert_eq!(validate_username(&raw), Ok(name.clone()));
                proptest::prop_assert!(name.as_str().starts_with(|c: char| c.is_ascii_alphanumeric()));
            }
        }
    }
}
