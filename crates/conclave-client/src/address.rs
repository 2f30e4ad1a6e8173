//! Parsing `HOST:PORT` server addresses.

use std::fmt;

use conclave_proto::DEFAULT_PORT;

use crate::ClientError;

/// A server address as the user wrote it: a host name or IP, and a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// Parses `HOST:PORT`, `[IPv6]:PORT`, or a bare host (port 7667).
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadAddress { address: s.to_owned(), why: why.to_owned() };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?)),
            }
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 address without a port.
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("the host name is not valid"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => {
                p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1-65535"))?
            }
        };
        Ok(Self { host: host.to_owned(), port })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(ServerAddr::parse("chat.example.org:7000").unwrap().to_string(), "chat.example.org:7000");
        assert_eq!(ServerAddr::parse("localhost").unwrap().to_string(), "localhost:7667");
        assert_eq!(ServerAddr::parse("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert_eq!(ServerAddr::parse("::1").unwrap().to_string(), "[::1]:7667");
        assert_eq!(ServerAddr::parse("127.0.0.1:1").unwrap().host, "127.0.0.1");
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", ":80", "host:0", "host:99999", "host:http", "[::1", "[::1]x", "a b:1"] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
