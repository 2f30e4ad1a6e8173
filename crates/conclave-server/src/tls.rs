//! The server's TLS 1.3 configuration and certificate.
//!
//! Only TLS 1.3 is offered (no 1.2, no plaintext). The certificate is the
//! operator's PEM files, or a self-signed one made on first start and kept in
//! the data directory, so its fingerprint — which clients pin — survives
//! restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use sha2::{Digest, Sha256};

/// Why the TLS setup failed. Each names the file and says what to give instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be opened or read. (`error` is in the message,
    /// not a `source`: a caller that prints the chain would say it twice.)
    #[error(
        "cannot read the TLS {what} file {path}: {error}; check the path and that the server may read it"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// A PEM file is not valid PEM (a broken section, bad base64).
    #[error("the TLS {what} file {path} is not valid PEM: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// What was wrong, and where.
        message: String,
    },
    /// A PEM file holds no certificate or no private key.
    #[error("{path} contains no {what} in PEM format: expected {expected}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// The PEM sections that would do.
        expected: &'static str,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in {key} does not match the certificate in {cert}: \
         give the key the certificate was issued for (or the certificate of this key)"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The self-signed certificate could not be made or saved.
    #[error("cannot create the self-signed certificate in {dir}: {message}")]
    Generate {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the certificate or key (for example, a key type it
    /// cannot sign with).
    #[error("the TLS certificate and key are not usable: {0}; use an ECDSA P-256/P-384, Ed25519 or RSA key")]
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

    /// Loads the operator's PEM certificate chain (leaf first) and private
    /// key, and checks that the key belongs to the leaf certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        const CERT: &str = "certificate";
        const KEY: &str = "private key";
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_error(e, cert, CERT))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(e, cert, CERT))?;
        if chain.is_empty() {
            return Err(TlsError::Missing { path: cert.into(), what: CERT, expected: CERT_SECTION });
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(e, key, KEY))?;
        let identity = Self { chain, key: key_der };
        match CertifiedKey::from_der(identity.chain.clone(), identity.key.clone_key(), &provider()) {
            Ok(_) => Ok(identity),
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::KeyMismatch { cert: cert.into(), key: key.into() })
            }
            Err(e) => Err(e.into()),
        }
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
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// The PEM sections a certificate file may hold.
const CERT_SECTION: &str = "a '-----BEGIN CERTIFICATE-----' section (the chain, leaf first)";

/// The PEM sections a key file may hold.
const KEY_SECTION: &str = "a '-----BEGIN PRIVATE KEY-----' (PKCS#8), '-----BEGIN EC PRIVATE KEY-----' \
     (SEC1) or '-----BEGIN RSA PRIVATE KEY-----' (PKCS#1) section";

/// The server's crypto: rustls's ring provider with its defaults (the
/// cipher suites and groups are listed in docs/PROTOCOL.md §1.1).
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A PEM parsing error of the `what` file at `path`, as a [`TlsError`].
fn pem_error(e: pem::Error, path: &Path, what: &'static str) -> TlsError {
    let path = path.to_path_buf();
    let message = match e {
        pem::Error::Io(error) => return TlsError::Read { path, what, error },
        pem::Error::NoItemsFound => {
            let expected = if what == "certificate" { CERT_SECTION } else { KEY_SECTION };
            return TlsError::Missing { path, what, expected };
        }
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(&end_marker);
            format!("its '-----BEGIN {label}-----' section has no '-----END {label}-----' line (is the file cut short?)")
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("a section starts with the malformed line {:?}", String::from_utf8_lossy(&line))
        }
        pem::Error::Base64Decode(e) => format!("a section's base64 does not decode: {e}"),
        other => other.to_string(),
    };
    TlsError::Pem { path, what, message }
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

    /// A directory holding a fresh self-signed `cert.pem` and `key.pem`.
    fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        Identity::self_signed_in(dir.path()).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        (dir, cert, key)
    }

    fn error(cert: &Path, key: &Path) -> String {
        Identity::from_pem_files(cert, key).err().unwrap().to_string()
    }

    #[test]
    fn operator_files_load_and_serve() {
        let (_dir, cert, key) = pair();
        let identity = Identity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(identity.chain.len(), 1);
        identity.server_config().unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let (dir, cert, key) = pair();
        let nowhere = dir.path().join("nowhere.pem");
        let err = error(&nowhere, &key);
        assert!(err.starts_with("cannot read the TLS certificate file"), "{err}");
        assert!(err.contains(&nowhere.display().to_string()) && err.contains("check the path"), "{err}");
        let err = error(&cert, &nowhere);
        assert!(err.starts_with("cannot read the TLS private key file"), "{err}");
        assert!(err.contains(&nowhere.display().to_string()), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate_or_key_says_what_it_needs() {
        let (_dir, cert, key) = pair();
        let err = error(&key, &key);
        assert!(err.contains(&format!("{} contains no certificate", key.display())), "{err}");
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
        let err = error(&cert, &cert);
        assert!(err.contains(&format!("{} contains no private key", cert.display())), "{err}");
        assert!(err.contains("BEGIN PRIVATE KEY"), "{err}");
    }

    #[test]
    fn a_broken_pem_file_is_named() {
        let (dir, _cert, key) = pair();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let err = error(&broken, &key);
        assert!(
            err.contains(&format!("the TLS certificate file {} is not valid PEM", broken.display())),
            "{err}"
        );
        assert!(err.contains("has no '-----END CERTIFICATE-----' line"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let (_a, cert, _) = pair();
        let (_b, _, other_key) = pair();
        let err = error(&cert, &other_key);
        assert!(
            err.contains(&format!(
                "the private key in {} does not match the certificate in {}",
                other_key.display(),
                cert.display()
            )),
            "{err}"
        );
    }

    /// What a client that forgot TLS reads (docs/PROTOCOL.md §1.1): one
    /// alert record in the clear, fatal `decode_error`, then the close. Not
    /// silence, and no frame.
    #[tokio::test]
    async fn a_plaintext_client_gets_a_tls_alert_then_the_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config::new(dir.path());
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        let server = crate::Server::bind(config).await.unwrap();
        let addr = server.local_addrs()[0];
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(server.run(shutdown.clone()));
        for hello in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"\x00\x00\x00\x05hello"] {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(hello).await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(30), tcp.read_to_end(&mut got))
                .await
                .expect("the server closes the connection")
                .unwrap();
            assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], "alert, fatal, decode_error");
        }
        shutdown.cancel();
        running.await.unwrap();
    }
}
