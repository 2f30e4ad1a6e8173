//! Certificate pinning, like SSH's `known_hosts`.
//!
//! Conclave servers usually have self-signed certificates, so there is no CA
//! to ask. Instead the client pins the certificate's SHA-256 fingerprint on
//! first contact (after a person or a flag says yes) and from then on refuses
//! any other certificate for that server. The TLS 1.3 handshake signature is
//! still verified against the presented certificate, so only the holder of
//! the pinned certificate's private key can pass.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// `SHA256:<lowercase hex>` of a certificate's DER encoding.
pub fn fingerprint(cert: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(cert)))
}

/// Normalises a fingerprint typed by a person: optional `SHA256:` prefix,
/// any case, optional `:` separators. `None` if it is not 32 bytes of hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    // `get` rather than `[..7]`: a person may type anything, and byte 7 need
    // not fall between two characters ("ééééééé").
    let hexpart = match (s.get(..7), s.get(7..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("sha256:") => rest,
        _ => s,
    };
    let hexpart: String = hexpart.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hexpart.len() == 64 && hexpart.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("SHA256:{hexpart}"))
}

/// Accepts the pinned certificate only, or — with no pin — any certificate,
/// recording its fingerprint for the caller to decide on.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pinned: Option<String>,
    offered: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub(crate) fn new(pinned: Option<String>, provider: Arc<CryptoProvider>) -> Self {
        Self { pinned, offered: Arc::new(Mutex::new(None)), provider }
    }

    /// Where the presented certificate's fingerprint is recorded.
    pub(crate) fn offered(&self) -> Arc<Mutex<Option<String>>> {
        self.offered.clone()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered = fingerprint(end_entity.as_ref());
        if let Ok(mut slot) = self.offered.lock() {
            *slot = Some(offered.clone());
        }
        match &self.pinned {
            Some(pin) if *pin != offered => {
                Err(rustls::Error::General("server certificate does not match the pin".into()))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let hex64 = "ab".repeat(32);
        let want = format!("SHA256:{hex64}");
        assert_eq!(normalize_fingerprint(&want).as_deref(), Some(&*want));
        assert_eq!(normalize_fingerprint(&hex64.to_uppercase()).as_deref(), Some(&*want));
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", "AB:".repeat(31) + "AB")).as_deref(),
            Some(&*want)
        );
        assert_eq!(normalize_fingerprint("SHA256:abc"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn non_ascii_fingerprints_are_refused_not_a_panic() {
        // Byte 7 falls inside the fourth "é": this used to panic.
        assert_eq!(normalize_fingerprint("ééééééé"), None);
        assert_eq!(normalize_fingerprint("sha256é"), None);
        assert_eq!(normalize_fingerprint("SHA256:"), None);
        assert_eq!(normalize_fingerprint(&format!("SHA256:{}é", "ab".repeat(32))), None);
        assert_eq!(normalize_fingerprint(&format!("ＳＨＡ256:{}", "ab".repeat(32))), None);
    }

    proptest::proptest! {
        /// Whatever is typed: no panic, and an answer is always a well-formed
        /// fingerprint.
        #[test]
        fn any_typed_fingerprint_normalises_or_is_refused(
            typed in "\\PC{0,80}|(?i:sha256:)?[0-9a-fA-F:é]{0,70}",
        ) {
            if let Some(fp) = normalize_fingerprint(&typed) {
                let hexpart = fp.strip_prefix("SHA256:").unwrap_or("");
                proptest::prop_assert_eq!(hexpart.len(), 64);
                proptest::prop_assert!(hexpart.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            }
        }
    }
}
