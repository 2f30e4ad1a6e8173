//! A password in transit: redacted in `Debug`, wiped from memory on drop.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A password as sent to register or to enrol a device. Its `Debug` output is
/// `Password(<redacted>)`, so it cannot reach a log line by accident, and its
/// bytes are zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for hashing or verifying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Password::new("hunter22hunter22");
        assert!(!format!("{p:?}").contains("hunter"));
        assert_eq!(p.expose(), "hunter22hunter22");
    }
}
