//! Abuse limits that need state: connections per source address, and token
//! buckets for request and message rates. The numbers themselves are
//! settings in [`crate::config::Config`]; docs/LIMITS.md lists each with its
//! default and the reason for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Open connections per source address.
#[derive(Default)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one of an address's connection slots until dropped.
pub struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a slot for `ip`, unless it already has `max` connections open.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { table: self.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
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

    #[test]
    fn address_slots_are_counted_and_released() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = table.try_acquire(ip, 2).unwrap();
        let _b = table.try_acquire(ip, 2).unwrap();
        assert!(table.try_acquire(ip, 2).is_none());
        assert!(table.try_acquire("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(table.try_acquire(ip, 2).is_some());
    }
}
