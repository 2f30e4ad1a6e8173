//! What a device signs to prove itself on a connection.
//!
//! The server's `Hello` carries a fresh random nonce. The device signs
//! `AUTH_CONTEXT ‖ nonce ‖ exporter`, where `exporter` is the TLS exporter
//! value (RFC 8446 §7.5) for [`EXPORTER_LABEL`] on this very connection. The
//! exporter binds the signature to this TLS session, so a signature replayed on
//! another connection (or relayed by a man in the middle, who has a different
//! TLS session on each side) does not verify.

/// Length of the server's authentication nonce, in bytes.
pub const NONCE_LEN: usize = 32;

/// TLS exporter label for device authentication.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-conclave-device-auth-v1";

/// Length of the exported keying material, in bytes.
pub const EXPORTER_LEN: usize = 32;

/// Domain separation: no other Conclave signature starts with these bytes.
pub const AUTH_CONTEXT: &[u8] = b"conclave device auth v1\0";

/// The exact bytes a device signs with its Ed25519 key to authenticate.
pub fn auth_message(nonce: &[u8; NONCE_LEN], exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(AUTH_CONTEXT.len() + NONCE_LEN + EXPORTER_LEN);
    msg.extend_from_slice(AUTH_CONTEXT);
    msg.extend_from_slice(nonce);
    msg.extend_from_slice(exporter);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_context_nonce_exporter() {
        let msg = auth_message(&[1; NONCE_LEN], &[2; EXPORTER_LEN]);
        assert!(msg.starts_with(AUTH_CONTEXT));
        assert_eq!(msg.len(), AUTH_CONTEXT.len() + 64);
        assert_eq!(msg[AUTH_CONTEXT.len()], 1);
        assert_eq!(msg[msg.len() - 1], 2);
    }
}
