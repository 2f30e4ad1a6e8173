//! Abuse limits that need state: connections per source address, and token
//! buckets for request and message rates. The numbers themselves are
//! settings in [`crate::config::Config`]; docs/LIMITS.md lists each with its
//! default and the reason for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket allowing `per_second` on average and bursts of twice that.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        Self { rate, burst: rate * 2.0, tokens: rate * 2.0, last: now }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per source address, and of them those that have not
/// authenticated yet.
///
/// An address may hold `max` connections, of which at most `max_waiting`
/// unauthenticated (in the TLS handshake, or between `Hello` and
/// authentication). A connection counts as unauthenticated from accept until
/// it authenticates ([`Waiting`] dropped). When an address is at its
/// unauthenticated cap, a new connection closes the address's oldest
/// unauthenticated one if that one is older than `grace` (a real client
/// authenticates in milliseconds; one that sits there is the likelier
/// attacker), and is refused otherwise. So connections that never sign in
/// cannot keep the users behind the same address (a NAT, an office) out.
#[derive(Default)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, Address>>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Address {
    open: usize,
    /// Unauthenticated connections, oldest first.
    waiting: std::collections::VecDeque<WaitingEntry>,
}

struct WaitingEntry {
    id: u64,
    since: Instant,
    heard: Heard,
    evict: CancellationToken,
}

/// What the server has heard from an unauthenticated connection's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Not looked yet (its task has not run since accept).
    Unknown,
    /// Looked, and nothing had arrived.
    Nothing,
    /// It has sent something (its ClientHello, usually).
    Spoke,
}

/// The caps [`PerAddress::admit`] applies.
#[derive(Debug, Clone, Copy)]
pub struct AddressCaps {
    /// Connections from one address.
    pub max: usize,
    /// Unauthenticated connections from one address.
    pub max_waiting: usize,
    /// Age past which an unauthenticated connection may be closed to make room.
    pub grace: Duration,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds `max` connections.
    TooMany {
        /// The cap.
        max: usize,
    },
    /// The address holds `max` unauthenticated connections, all younger than the grace.
    TooManyWaiting {
        /// The cap.
        max: usize,
    },
}

/// Holds one of an address's connection slots until dropped, or until the
/// connection is closed to make room (it is on its way out: its slot is
/// given back at once, so that connections reopened as fast as they are
/// closed do not fill the address's cap with ones still closing).
pub struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
    /// Cancelled when the slot was given back on eviction.
    released: CancellationToken,
}

/// Counts a connection as unauthenticated until dropped (it authenticated,
/// or closed).
pub struct Waiting {
    table: Arc<PerAddress>,
    ip: IpAddr,
    id: u64,
    /// Cancelled when a newer connection from the address takes this one's place.
    pub evicted: CancellationToken,
}

/// The address a connection counts under: an IPv6 address by its /64 (one
/// host usually owns a whole /64, so its 2^64 addresses do not each get the
/// caps), as the login throttle groups them.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match crate::throttle::Key::address(ip) {
        crate::throttle::Key::Address(grouped) => grouped,
        crate::throttle::Key::Account(_) => ip,
    }
}

impl PerAddress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Address>> {
        // Every change under this lock is a counter or a list operation that
        // cannot panic half-way; a poisoned lock is used as is.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` (grouped by [`source_key`]) as
    /// unauthenticated, or says why not; `spoke` if its client has already
    /// sent something (see [`Waiting::spoke`]).
    /// Closing an older connection to make room cancels its
    /// [`Waiting::evicted`] token.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        caps: AddressCaps,
        now: Instant,
        spoke: bool,
    ) -> Result<(AddressSlot, Waiting), Refusal> {
        let ip = source_key(ip);
        let mut open = self.lock();
        let entry = open.entry(ip).or_default();
        if entry.open >= caps.max {
            return Err(Refusal::TooMany { max: caps.max });
        }
        if entry.waiting.len() >= caps.max_waiting.max(1) {
            // Silent ones seen to be silent first, then those not looked at
            // yet (a newcomer's task may not have run), oldest first.
            let silent = entry
                .waiting
                .iter()
                .position(|w| w.heard == Heard::Nothing)
                .or_else(|| entry.waiting.iter().position(|w| w.heard == Heard::Unknown));
            let past_grace = entry
                .waiting
                .front()
                .filter(|oldest| now.saturating_duration_since(oldest.since) >= caps.grace)
                .map(|_| 0);
            match silent.or(past_grace) {
                Some(at) => {
                    if let Some(evicted) = entry.waiting.remove(at) {
                        evicted.evict.cancel();
                        entry.open = entry.open.saturating_sub(1);
                    }
                }
                None => {
                    if entry.open == 0 {
                        open.remove(&ip);
                    }
                    return Err(Refusal::TooManyWaiting { max: caps.max_waiting });
                }
            }
        }
        entry.open += 1;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = CancellationToken::new();
        entry.waiting.push_back(WaitingEntry {
            id,
            since: now,
            heard: if spoke { Heard::Spoke } else { Heard::Unknown },
            evict: evicted.clone(),
        });
        let slot = AddressSlot { table: self.clone(), ip, released: evicted.clone() };
        Ok((slot, Waiting { table: self.clone(), ip, id, evicted }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(entry) = open.get_mut(&self.ip) {
            if !self.released.is_cancelled() {
                entry.open = entry.open.saturating_sub(1);
            }
            if entry.open == 0 && entry.waiting.is_empty() {
                open.remove(&self.ip);
            }
        }
    }
}

impl Waiting {
    /// Records that the client has sent its first bytes: from now on it is
    /// closed to make room only once it is older than the grace.
    pub fn spoke(&self) {
        self.heard(Heard::Spoke);
    }

    /// Records that the server looked and the client had sent nothing yet:
    /// it is the first to make room for a newer connection.
    pub fn silent(&self) {
        self.heard(Heard::Nothing);
    }

    fn heard(&self, heard: Heard) {
        let mut open = self.table.lock();
        if let Some(entry) = open.get_mut(&self.ip) {
            if let Some(w) = entry.waiting.iter_mut().find(|w| w.id == self.id) {
                w.heard = heard;
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(entry) = open.get_mut(&self.ip) {
            // Gone already if it was evicted.
            if let Some(at) = entry.waiting.iter().position(|w| w.id == self.id) {
                entry.waiting.remove(at);
            }
            if entry.open == 0 && entry.waiting.is_empty() {
                open.remove(&self.ip);
            }
        }
    }
}

/// One rate limit per key (for example per user), created on first use.
pub struct Keyed<K> {
    per_second: u32,
    buckets: Mutex<HashMap<K, RateLimit>>,
}

impl<K: std::hash::Hash + Eq> Keyed<K> {
    /// Buckets of `per_second`.
    pub fn new(per_second: u32) -> Self {
        Self { per_second, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token from `key`'s bucket if there is one.
    pub fn allow(&self, key: K, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.entry(key).or_insert_with(|| RateLimit::new(self.per_second, now)).allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, t0);
        assert_eq!((0..25).filter(|_| r.allow(t0)).count(), 20, "a burst of twice the rate");
        assert!(!r.allow(t0));
        assert_eq!((0..25).filter(|_| r.allow(t0 + Duration::from_millis(500))).count(), 5);
    }

    const CAPS: AddressCaps = AddressCaps { max: 10, max_waiting: 2, grace: Duration::from_secs(1) };

    #[test]
    fn address_slots_are_counted_and_released() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let caps = AddressCaps { max_waiting: 10, max: 2, ..CAPS };
        let t0 = Instant::now();
        let a = table.admit(ip, caps, t0, false).unwrap();
        let _b = table.admit(ip, caps, t0, false).unwrap();
        assert_eq!(table.admit(ip, caps, t0, false).err(), Some(Refusal::TooMany { max: 2 }));
        assert!(table.admit("127.0.0.2".parse().unwrap(), caps, t0, false).is_ok());
        drop(a);
        assert!(table.admit(ip, caps, t0, false).is_ok());
        assert!(
            table.lock().get(&"127.0.0.2".parse().unwrap()).is_none(),
            "an address with nothing open is forgotten"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let table = Arc::new(PerAddress::default());
        let caps = AddressCaps { max_waiting: 10, max: 2, ..CAPS };
        let t0 = Instant::now();
        let _a = table.admit("2001:db8:1:2::1".parse().unwrap(), caps, t0, false).unwrap();
        let _b = table.admit("2001:db8:1:2:ffff::9".parse().unwrap(), caps, t0, false).unwrap();
        let third = table.admit("2001:db8:1:2:1234:5678:9abc:def0".parse().unwrap(), caps, t0, false);
        assert_eq!(third.err(), Some(Refusal::TooMany { max: 2 }), "the same /64");
        assert!(table.admit("2001:db8:1:3::1".parse().unwrap(), caps, t0, false).is_ok(), "another /64");
    }

    #[test]
    fn unauthenticated_connections_have_their_own_cap_and_the_oldest_makes_room() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let (_slot_a, a) = table.admit(ip, CAPS, t0, false).unwrap();
        let (_slot_b, b) = table.admit(ip, CAPS, t0 + Duration::from_millis(100), false).unwrap();
        a.spoke();
        b.spoke();
        // Both young: refused.
        let early = t0 + Duration::from_millis(500);
        assert_eq!(table.admit(ip, CAPS, early, false).err(), Some(Refusal::TooManyWaiting { max: 2 }));
        // Authenticated connections do not count against it.
        drop(b);
        let (_slot_c, c) = table.admit(ip, CAPS, early, false).unwrap();
        c.spoke();
        // The oldest, past the grace, makes room for a newcomer.
        let late = t0 + Duration::from_millis(1_200);
        let (_slot_d, d) = table.admit(ip, CAPS, late, false).unwrap();
        d.spoke();
        assert!(a.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled());
        drop(a);
        // c (0.5 s) and d (1.2 s) are young at 1.3 s: refused.
        let refused = table.admit(ip, CAPS, t0 + Duration::from_millis(1_300), false);
        assert_eq!(refused.err(), Some(Refusal::TooManyWaiting { max: 2 }));
        // Once both are past the grace, c (the oldest) makes room.
        let (_slot_e, _e) = table.admit(ip, CAPS, t0 + Duration::from_secs(3), false).unwrap();
        assert!(c.evicted.is_cancelled());
    }

    /// The finding behind it: 300 bare connections from one address,
    /// each reopened as soon as it closed (20,000 in 25 s), kept every
    /// connection from that address young, so a real client's was refused.
    #[test]
    fn connections_that_say_nothing_make_room_at_once_for_one_that_speaks() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let caps = AddressCaps { max_waiting: 3, ..CAPS };
        let mut held: Vec<_> = (0..3).map(|_| table.admit(ip, caps, t0, false).unwrap()).collect();
        held[1].1.silent();
        // A real client: admitted (the oldest silent one makes room), and it speaks.
        let (_slot, real) = table.admit(ip, caps, t0, false).unwrap();
        assert!(held[1].1.evicted.is_cancelled(), "the one seen to be silent made room first");
        assert!(!held[0].1.evicted.is_cancelled(), "before the older one not looked at yet");
        // It gave its slot back at once, though its task still holds it.
        assert_eq!(table.lock()[&source_key(ip)].open, 3);
        real.spoke();
        held.remove(1);
        // A churn of silent newcomers, all within the grace: each takes a
        // silent one's place, never the one that spoke.
        for _ in 0..1_000 {
            held.push(table.admit(ip, caps, t0 + Duration::from_millis(10), false).unwrap());
            held.retain(|(_, w)| !w.evicted.is_cancelled());
        }
        assert!(!real.evicted.is_cancelled(), "a connection that spoke is not closed within the grace");
        // Once every one has spoken and is young, a newcomer is refused.
        for (_, w) in &held {
            w.spoke();
        }
        let refused = table.admit(ip, caps, t0 + Duration::from_millis(20), false);
        assert_eq!(refused.err(), Some(Refusal::TooManyWaiting { max: 3 }));
    }
}
