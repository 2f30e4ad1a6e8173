//! Failed-login throttling, per account and per source address.
//!
//! Each key may fail `free` times; after that every further failure doubles
//! the wait before the next attempt (1 s, 2 s, 4 s, … up to 15 minutes). An
//! account's record is cleared by a successful login; an address's record is
//! not (an attacker with one valid account could otherwise reset it) and
//! expires after a quiet period instead. The table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest wait imposed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// A record is forgotten after this long without a failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

/// Records kept at most; past this, expired and then oldest records go.
pub const MAX_ENTRIES: usize = 100_000;

/// What a throttle is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A username (as typed, lowercased; unknown users are throttled too).
    Account(String),
    /// A source address. IPv6 addresses are grouped by /64, since one host
    /// usually owns a whole /64.
    Address(IpAddr),
}

impl Key {
    /// The key for a source address.
    pub fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::Address(IpAddr::V4(v4)),
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    Key::Address(IpAddr::from(seg))
                }
            },
            v4 => Key::Address(v4),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Instant,
    last_failure: Instant,
}

/// The throttle table.
pub struct Throttle {
    free: u32,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    /// A throttle allowing `free` failures per key before backoff.
    pub fn new(free: u32) -> Self {
        Self { free, entries: Mutex::new(HashMap::new()) }
    }

    /// If any key is blocked at `now`, how long until it is not.
    pub fn check(&self, keys: &[Key], now: Instant) -> Option<Duration> {
        let entries = self.lock();
        keys.iter()
            .filter_map(|k| entries.get(k))
            .filter(|e| e.blocked_until > now)
            .map(|e| e.blocked_until - now)
            .max()
    }

    /// Records a failure against each key.
    pub fn fail(&self, keys: &[Key], now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now.duration_since(e.last_failure) < FORGET_AFTER);
            if entries.len() >= MAX_ENTRIES {
                // Still full of fresh records: drop the oldest half.
                let mut ages: Vec<Instant> = entries.values().map(|e| e.last_failure).collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                entries.retain(|_, e| e.last_failure > cutoff);
            }
        }
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                blocked_until: now,
                last_failure: now,
            });
            if now.duration_since(entry.last_failure) >= FORGET_AFTER {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= self.free {
                let exp = (entry.failures - self.free).min(20);
                let wait = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
                entry.blocked_until = now + wait;
            }
        }
    }

    /// Clears a key's record (an account after a successful login).
    pub fn clear(&self, key: &Key) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // The map stays consistent at every await-free step; poison is harmless.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_free_failures() {
        let t = Throttle::new(3);
        let key = [Key::Account("alice".into())];
        let now = Instant::now();
        t.fail(&key, now);
        t.fail(&key, now);
        assert_eq!(t.check(&key, now), None, "two failures are free");
        t.fail(&key, now);
        assert_eq!(t.check(&key, now), Some(Duration::from_secs(1)));
        t.fail(&key, now);
        assert_eq!(t.check(&key, now), Some(Duration::from_secs(2)));
        t.fail(&key, now);
        assert_eq!(t.check(&key, now), Some(Duration::from_secs(4)));
        assert_eq!(t.check(&key, now + Duration::from_secs(5)), None, "the wait ends");
        t.clear(&key[0]);
        assert_eq!(t.check(&key, now), None);
    }

    #[test]
    fn backoff_is_capped_and_forgotten() {
        let t = Throttle::new(1);
        let key = [Key::address("10.0.0.1".parse().unwrap())];
        let now = Instant::now();
        for _ in 0..100 {
            t.fail(&key, now);
        }
        assert_eq!(t.check(&key, now), Some(MAX_BACKOFF));
        let later = now + FORGET_AFTER;
        t.fail(&key, later);
        assert_eq!(t.check(&key, later), Some(Duration::from_secs(1)), "old failures expire");
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let a = Key::address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Key::address("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        let mapped = Key::address("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(mapped, Key::address("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn table_is_bounded() {
        let t = Throttle::new(5);
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            t.fail(&[Key::Account(i.to_string())], now + Duration::from_nanos(i as u64));
        }
        assert!(t.lock().len() <= MAX_ENTRIES);
    }
}
