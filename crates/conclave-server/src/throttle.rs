//! Failed-login throttling, per account and per source address.
//!
//! Each key may fail `free` times; after that every further failure doubles
//! the wait before the next attempt (`first_wait`, then twice that, … up to
//! 15 minutes). An account's record is cleared by a successful login; an
//! address's record is not (an attacker with one valid account could
//! otherwise reset it) and expires after a quiet period instead. The table is
//! bounded.
//!
//! An attempt holds a slot on each of its keys from [`Throttle::begin`] until
//! its password has been checked. A key lets at most as many attempts be in
//! flight as it has free failures left, and one at a time once those are used
//! up. Without that, guesses sent at once over many connections would all
//! pass the check before the first of them had failed, and a parallel
//! attacker would get as many guesses as it could open connections.

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
    /// Attempts let through and not yet resolved.
    in_flight: u32,
    blocked_until: Instant,
    last_failure: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self { failures: 0, in_flight: 0, blocked_until: now, last_failure: now }
    }
}

/// The throttle table.
pub struct Throttle {
    free: u32,
    first_wait: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// An attempt the throttle let through, holding a slot on each of its keys.
/// Resolve it with [`Attempt::failed`] or [`Attempt::succeeded`]. Dropped
/// unresolved (an error, or the connection went away before the answer), it
/// gives its slots back without counting a failure: nobody learnt whether
/// the password was right.
#[must_use = "an attempt holds its keys' slots until it is resolved"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    keys: Vec<Key>,
    resolved: bool,
}

impl Attempt<'_> {
    /// The password was wrong: records a failure against each key.
    pub fn failed(mut self, now: Instant) {
        self.throttle.resolve(&self.keys, Some(now));
        self.resolved = true;
    }

    /// The password was right: clears the account's record (`account`), and
    /// gives the other keys their slots back. An address's failures stay.
    pub fn succeeded(mut self, account: &Key) {
        self.throttle.resolve(&self.keys, None);
        self.throttle.clear(account);
        self.resolved = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.throttle.resolve(&self.keys, None);
        }
    }
}

impl Throttle {
    /// A throttle allowing `free` failures per key before backoff, which
    /// starts at `first_wait`.
    pub fn new(free: u32, first_wait: Duration) -> Self {
        Self { free: free.max(1), first_wait, entries: Mutex::new(HashMap::new()) }
    }

    /// Lets an attempt on `keys` through, or says how long to wait: until a
    /// blocked key's wait ends, or `first_wait` while a key already has as
    /// many attempts in flight as it may.
    pub fn begin(&self, keys: &[Key], now: Instant) -> Result<Attempt<'_>, Duration> {
        let mut entries = self.lock();
        let mut wait = None;
        for entry in keys.iter().filter_map(|k| entries.get(k)) {
            let blocked = if entry.blocked_until > now {
                Some(entry.blocked_until - now)
            } else if entry.in_flight >= self.free.saturating_sub(entry.failures).max(1) {
                Some(self.first_wait)
            } else {
                None
            };
            wait = wait.max(blocked);
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        make_room(&mut entries, now);
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry::new(now));
            entry.in_flight += 1;
        }
        Ok(Attempt { throttle: self, keys: keys.to_vec(), resolved: false })
    }

    /// Gives back an attempt's slots, recording a failure at `failed_at`.
    fn resolve(&self, keys: &[Key], failed_at: Option<Instant>) {
        let mut entries = self.lock();
        for key in keys {
            // The table may have dropped the record meanwhile (it was full).
            let Some(entry) = entries.get_mut(key) else { continue };
            entry.in_flight = entry.in_flight.saturating_sub(1);
            match failed_at {
                Some(now) => {
                    if now.duration_since(entry.last_failure) >= FORGET_AFTER {
                        entry.failures = 0;
                    }
                    entry.failures = entry.failures.saturating_add(1);
                    entry.last_failure = now;
                    if entry.failures >= self.free {
                        let exp = (entry.failures - self.free).min(20);
                        let wait = self.first_wait.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
                        entry.blocked_until = now + wait;
                    }
                }
                // A record with nothing in it is not kept.
                None if entry.failures == 0 && entry.in_flight == 0 => {
                    entries.remove(key);
                }
                None => {}
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

/// Keeps the table under [`MAX_ENTRIES`] before records are added.
fn make_room(entries: &mut HashMap<Key, Entry>, now: Instant) {
    if entries.len() < MAX_ENTRIES {
        return;
    }
    entries.retain(|_, e| e.in_flight > 0 || now.duration_since(e.last_failure) < FORGET_AFTER);
    if entries.len() >= MAX_ENTRIES {
        // Still full of fresh records: drop the oldest half.
        let mut ages: Vec<Instant> = entries.values().map(|e| e.last_failure).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        entries.retain(|_, e| e.last_failure > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// One wrong password on `keys` at `at`, if the throttle lets it through.
    fn guess(t: &Throttle, keys: &[Key], at: Instant) -> Result<(), Duration> {
        t.begin(keys, at).map(|attempt| attempt.failed(at))
    }

    #[test]
    fn backoff_doubles_after_free_failures() {
        let t = Throttle::new(3, SECOND);
        let key = [Key::Account("alice".into())];
        let now = Instant::now();
        guess(&t, &key, now).unwrap();
        guess(&t, &key, now).unwrap();
        assert!(t.begin(&key, now).is_ok(), "two failures are free");
        guess(&t, &key, now).unwrap();
        assert_eq!(t.begin(&key, now).err(), Some(SECOND));
        let later = now + SECOND;
        guess(&t, &key, later).unwrap();
        assert_eq!(t.begin(&key, later).err(), Some(2 * SECOND));
        let later = later + 2 * SECOND;
        guess(&t, &key, later).unwrap();
        assert_eq!(t.begin(&key, later).err(), Some(4 * SECOND));
        assert!(t.begin(&key, later + 4 * SECOND).is_ok(), "the wait ends");
        t.clear(&key[0]);
        assert!(t.begin(&key, later).is_ok());
    }

    #[test]
    fn the_first_wait_is_configurable() {
        let t = Throttle::new(1, Duration::from_millis(250));
        let key = [Key::Account("alice".into())];
        let now = Instant::now();
        guess(&t, &key, now).unwrap();
        assert_eq!(t.begin(&key, now).err(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn attempts_at_once_count_against_the_free_failures() {
        let t = Throttle::new(3, SECOND);
        let key = [Key::Account("alice".into())];
        let now = Instant::now();
        let (a, b, c) =
            (t.begin(&key, now).unwrap(), t.begin(&key, now).unwrap(), t.begin(&key, now).unwrap());
        assert_eq!(t.begin(&key, now).err(), Some(SECOND), "a fourth guess at once waits");
        a.failed(now);
        assert!(t.begin(&key, now).is_err(), "two left, two in flight");
        drop(b); // unresolved: no failure counted, its slot is free again
        let d = t.begin(&key, now).unwrap();
        c.failed(now);
        d.failed(now);
        assert_eq!(t.begin(&key, now).err(), Some(SECOND), "three failures: blocked");
        // Past the free failures, one attempt at a time after each wait.
        let later = now + SECOND;
        let e = t.begin(&key, later).unwrap();
        assert_eq!(t.begin(&key, later).err(), Some(SECOND));
        e.failed(later);
        assert_eq!(t.begin(&key, later).err(), Some(2 * SECOND));
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let t = Throttle::new(3, SECOND);
        let alice = Key::Account("alice".into());
        let address = Key::address("10.0.0.1".parse().unwrap());
        let keys = [alice.clone(), address.clone()];
        let now = Instant::now();
        guess(&t, &keys, now).unwrap();
        guess(&t, &keys, now).unwrap();
        t.begin(&keys, now).unwrap().succeeded(&alice);
        // alice starts afresh; the address has one free failure left.
        guess(&t, &[Key::Account("bob".into()), address.clone()], now).unwrap();
        assert_eq!(t.begin(&[address], now).err(), Some(SECOND));
        assert!(t.begin(&[alice], now).is_ok());
    }

    #[test]
    fn a_dropped_attempt_leaves_no_record() {
        let t = Throttle::new(3, SECOND);
        let now = Instant::now();
        drop(t.begin(&[Key::Account("alice".into())], now).unwrap());
        assert!(t.lock().is_empty());
    }

    #[test]
    fn backoff_is_capped_and_forgotten() {
        let t = Throttle::new(1, SECOND);
        let key = [Key::address("10.0.0.1".parse().unwrap())];
        let mut at = Instant::now();
        for _ in 0..40 {
            if let Err(wait) = guess(&t, &key, at) {
                at += wait;
                guess(&t, &key, at).unwrap();
            }
        }
        assert_eq!(t.begin(&key, at).err(), Some(MAX_BACKOFF));
        let later = at + FORGET_AFTER;
        guess(&t, &key, later).unwrap();
        assert_eq!(t.begin(&key, later).err(), Some(SECOND), "old failures expire");
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
        let t = Throttle::new(5, SECOND);
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            guess(&t, &[Key::Account(i.to_string())], now + Duration::from_nanos(i as u64)).unwrap();
        }
        assert!(t.lock().len() <= MAX_ENTRIES);
    }
}
