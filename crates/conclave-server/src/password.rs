//! Argon2id password hashing on a bounded pool.
//!
//! Hashing costs a core for tens of milliseconds and 19 MiB of memory, so it
//! never runs on the async workers: a semaphore admits `argon2_threads` hashes
//! at a time onto the blocking pool, and a login storm queues there while chat
//! traffic keeps flowing. Parameters are the argon2 crate's defaults, which are
//! OWASP's recommendation: Argon2id, m = 19 MiB, t = 2, p = 1.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use conclave_proto::{ErrorBody, ErrorCode, Password};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords, a bounded number at a time.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user is
    /// unknown, so that "no such user" takes as long as "wrong password".
    dummy: String,
}

impl Hasher {
    /// A hasher running at most `threads` hashes at once.
    pub fn new(threads: usize) -> Result<Self, ErrorBody> {
        let dummy = hash_now(&Password::new(hex_random()))?;
        Ok(Self { permits: Arc::new(Semaphore::new(threads.max(1))), dummy })
    }

    /// The PHC string of a new password.
    pub async fn hash(&self, password: Password) -> Result<String, ErrorBody> {
        let _permit = self.permits.acquire().await.map_err(|_| internal("hasher closed"))?;
        crate::blocking::run(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `phc`; with no `phc` (unknown user), checks
    /// against a dummy hash and answers false, taking the same time.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<bool, ErrorBody> {
        let _permit = self.permits.acquire().await.map_err(|_| internal("hasher closed"))?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let ok = crate::blocking::run(move || {
            PasswordHash::new(&phc)
                .map(|parsed| {
                    Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(known && ok)
    }
}

/// The PHC string of `password`, computed on this thread (tens of
/// milliseconds of one core). The server itself goes through [`Hasher`].
pub fn hash_now(password: &Password) -> Result<String, ErrorBody> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| internal(&format!("password hashing failed: {e}")))
}

fn hex_random() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn internal(what: &str) -> ErrorBody {
    tracing::error!(what, "password hasher");
    ErrorBody::new(ErrorCode::INTERNAL, "internal server error; the server log has details")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::new(1).unwrap();
        let phc = hasher.hash(Password::new("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(Password::new("correct horse"), Some(phc.clone())).await.unwrap());
        assert!(!hasher.verify(Password::new("wrong horse"), Some(phc)).await.unwrap());
        assert!(!hasher.verify(Password::new("correct horse"), None).await.unwrap());
    }
}
