//! What can go wrong on the client side, each with a message a person can act on.

use std::path::PathBuf;

use conclave_proto::{ErrorBody, ErrorCode};

/// A client failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server address does not parse.
    #[error("bad server address {address:?}: {why}; expected HOST:PORT, for example chat.example.org:7667")]
    BadAddress {
        /// What was given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// The server could not be reached.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The server.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed for a reason other than the pin.
    #[error("TLS handshake with {address} failed: {source}")]
    Tls {
        /// The server.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server presented a different certificate from the pinned one.
    #[error(
        "the server at {address} presented certificate {offered}, but {pinned} is pinned for it \
         in this profile. This may be an attack, or the server's certificate was replaced. \
         Nothing was sent. If the operator confirms the new fingerprint, run \
         `conclave forget-server {address}` and connect again with --fingerprint {offered}"
    )]
    CertificateChanged {
        /// The server.
        address: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint the server presented.
        offered: String,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Server(ErrorBody),
    /// The connection closed, perhaps after a connection-level error.
    #[error("{}", match .0 { Some(e) => format!("the server closed the connection: {e}"), None => "the server closed the connection".to_owned() })]
    Closed(Option<ErrorBody>),
    /// The server sent something this client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A profile file could not be read or written.
    #[error("profile {path}: {message}")]
    Profile {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// The request is not valid (caught before it reached the server).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// Whether retrying later may succeed: the connection failed, not the
    /// request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Tls { .. } | ClientError::Closed(_) => true,
            ClientError::Server(e) => {
                matches!(
                    e.code,
                    ErrorCode::SHUTTING_DOWN
                        | ErrorCode::SLOW_CONSUMER
                        | ErrorCode::INTERNAL
                        | ErrorCode::SERVER_FULL
                        | ErrorCode::TOO_MANY_CONNECTIONS
                        | ErrorCode::HANDSHAKE_TIMEOUT
                )
            }
            _ => false,
        }
    }

    /// The server's error code, if the server refused something.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            ClientError::Closed(Some(e)) => Some(e.code),
            _ => None,
        }
    }
}
