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
        // Brackets only ever wrap an IPv6 address; inside a host they would
        // make the address print as something that parses differently.
        if host.is_empty()
            || host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '[' | ']'))
        {
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
        // These printed as an address that does not parse back to them.
        for bad in ["a:b]:c", "]:80", "x[:1", "[[::1]]:9", "a\u{0}b:1", "é]:80"] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_ascii_addresses_parse_without_panicking() {
        assert_eq!(ServerAddr::parse("chât.example:7000").unwrap().host, "chât.example");
        assert_eq!(ServerAddr::parse("[fe80::1%eth0]:9").unwrap().to_string(), "[fe80::1%eth0]:9");
        assert!(ServerAddr::parse("ééé:ééé").is_err());
        assert!(ServerAddr::parse("[é]:٣").is_err(), "the port is ASCII digits only");
    }

    proptest::proptest! {
        /// Any text: no panic, and an address prints as text that parses
        /// back to it (the profile keys its pins by that text).
        #[test]
        fn parsing_never_panics_and_round_trips(
            s in "\\PC{0,24}|[\\[\\]:a-z0-9.é%]{0,16}",
        ) {
            if let Ok(addr) = ServerAddr::parse(&s) {
                proptest::prop_assert_eq!(ServerAddr::parse(&addr.to_string()).ok(), Some(addr.clone()), "from {:?}", s);
            }
        }
    }
}
