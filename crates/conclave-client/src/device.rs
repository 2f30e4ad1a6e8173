//! The device's Ed25519 key: made once per profile, kept in a 0600 file,
//! wiped from memory when dropped.

use ed25519_dalek::{Signer, SigningKey};
use zeroize::Zeroizing;

/// A device's signing key. `Debug` shows only the public half.
pub struct DeviceKey {
    key: SigningKey,
}

impl DeviceKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self { key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// The key from its 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(seed) }
    }

    /// The 32-byte secret seed, for storing. Wiped when dropped.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The 32-byte public key.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// An Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(public {})", hex::encode(self.public()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};

    #[test]
    fn seed_round_trip_and_signature() {
        let k = DeviceKey::generate();
        let again = DeviceKey::from_seed(&k.seed());
        assert_eq!(k.public(), again.public());
        let sig = again.sign(b"hello");
        VerifyingKey::from_bytes(&k.public())
            .unwrap()
            .verify_strict(b"hello", &Signature::from_bytes(&sig))
            .unwrap();
        assert!(!format!("{k:?}").contains(&hex::encode(*k.seed())));
    }
}
