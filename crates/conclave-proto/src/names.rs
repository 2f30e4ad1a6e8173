//! The rules for usernames, display names and passwords, shared by client
//! and server so that both give the same clear error.

use serde::{Deserialize, Serialize};

/// Longest username, in bytes (all allowed characters are ASCII).
pub const MAX_USERNAME_LEN: usize = 32;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes: bounds the work one login can cost.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A valid username: 1–32 of `a-z 0-9 . _ -`, stored lowercase.
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

/// A valid display name.
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
    /// Display name empty, too long or with control characters.
    #[error("display name must be 1 to {MAX_DISPLAY_NAME_CHARS} printable characters")]
    DisplayName,
    /// Password too short.
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    /// Password too long.
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
}

/// Checks a username. Uppercase ASCII letters are folded to lowercase, so
/// usernames are unique case-insensitively: `Alice` and `alice` are one name.
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

/// Checks a display name: 1–64 characters after trimming, no control characters.
pub fn validate_display_name(raw: &str) -> Result<DisplayName, NameError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(NameError::DisplayName);
    }
    Ok(DisplayName(name.to_owned()))
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
    }

    #[test]
    fn display_names() {
        assert_eq!(validate_display_name(" Alice B. ").unwrap().as_str(), "Alice B.");
        assert_eq!(validate_display_name("😀 Zoë").unwrap().as_str(), "😀 Zoë");
        assert!(validate_display_name("").is_err());
        assert!(validate_display_name("a\nb").is_err());
        assert!(validate_display_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn passwords() {
        assert_eq!(validate_password("short"), Err(NameError::PasswordTooShort));
        assert_eq!(validate_password("12345678"), Ok(()));
        assert_eq!(validate_password(&"p".repeat(1025)), Err(NameError::PasswordTooLong));
    }
}
