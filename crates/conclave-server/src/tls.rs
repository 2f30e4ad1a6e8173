//! The server's TLS 1.3 configuration and certificate.
//!
//! Only TLS 1.3 is offered (no 1.2, no plaintext). The certificate is the
//! operator's PEM files, or a self-signed one made on first start and kept in
//! the data directory, so its fingerprint — which clients pin — survives
//! restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or no private key.
    #[error("{path} contains no {what} in PEM format")]
    Missing {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The self-signed certificate could not be made or saved.
    #[error("cannot create the self-signed certificate in {dir}: {message}")]
    Generate {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the certificate and key (for example, they do not match).
    #[error("the TLS certificate and key are not usable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded certificate chain and key, ready to serve.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// `SHA256:<hex>` of the leaf certificate's DER: what clients pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }

    /// Loads the operator's PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert)?;
        let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Read { path: cert.into(), source })?;
        if chain.is_empty() {
            return Err(TlsError::Missing { path: cert.into(), what: "certificate" });
        }
        let key_pem = read(key)?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|source| TlsError::Read { path: key.into(), source })?
            .ok_or_else(|| TlsError::Missing { path: key.into(), what: "private key" })?;
        Ok(Self { chain, key })
    }

    /// Loads the self-signed certificate kept in `dir`, making it on first use.
    pub fn self_signed_in(dir: &Path) -> Result<Self, TlsError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        if !cert.exists() || !key.exists() {
            let gen_err = |message: String| TlsError::Generate { dir: dir.into(), message };
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            let made = rcgen::generate_simple_self_signed(names).map_err(|e| gen_err(e.to_string()))?;
            crate::fs::create_private_dir(dir).map_err(|e| gen_err(e.to_string()))?;
            // Key first: a crash between the two writes leaves no certificate,
            // so the next start makes a fresh pair instead of a mismatched one.
            crate::fs::write_private_atomic(&key, made.key_pair.serialize_pem().as_bytes())
                .map_err(|e| gen_err(e.to_string()))?;
            crate::fs::write_private_atomic(&cert, made.cert.pem().as_bytes())
                .map_err(|e| gen_err(e.to_string()))?;
        }
        Self::from_pem_files(&cert, &key)
    }

    /// The rustls server configuration: TLS 1.3 only, no client certificates.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })
}

/// `SHA256:<lowercase hex>` of a certificate's DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::self_signed_in(dir.path()).unwrap();
        let second = Identity::self_signed_in(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert!(first.fingerprint().starts_with("SHA256:"));
        assert_eq!(first.fingerprint().len(), 7 + 64);
        first.server_config().unwrap();
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        Identity::self_signed_in(dir.path()).unwrap();
        let cert = dir.path().join("cert.pem");
        let err = Identity::from_pem_files(&cert, &cert).err().unwrap();
        assert!(err.to_string().contains("no private key"), "{err}");
    }
}
