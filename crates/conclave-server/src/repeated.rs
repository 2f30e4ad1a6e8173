//! Aggregates repeated warnings, so that a flood from one peer is a few log
//! lines, not one per event.
//!
//! The first occurrence of a kind from a peer is logged in full; later ones
//! within the window are only counted, and when the window ends one line
//! says how many there were ("refused 15,000 connections from 127.0.0.1 in
//! the last 60 s: too many from this address"). The clock is an argument
//! (`now`), so the tests need no sleeps; the server calls [`Repeated::flush`]
//! from a ticking task.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long occurrences are counted before their total is logged.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Peers tracked at once; occurrences from further peers are counted
/// together, so a flood from many addresses cannot grow the table.
pub const MAX_PEERS: usize = 10_000;

/// What the caller should log for one occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occurrence {
    /// The first of its kind from this peer in a window: log it in full.
    First,
    /// Counted; log nothing now.
    Counted,
}

/// A window that ended with occurrences beyond its first: log its total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<K> {
    /// The kind and peer; `None` for the peers past [`MAX_PEERS`].
    pub key: Option<K>,
    /// Occurrences in the window, the first included.
    pub count: u64,
    /// How long the window lasted.
    pub over: Duration,
}

struct Window {
    since: Instant,
    count: u64,
}

/// Counts occurrences per key (a warning's kind and its peer).
pub struct Repeated<K> {
    window: Duration,
    max_keys: usize,
    state: Mutex<State<K>>,
}

struct State<K> {
    windows: HashMap<K, Window>,
    /// Occurrences from keys that found the table full, and since when.
    overflow: Option<Window>,
}

impl<K: Hash + Eq + Clone> Repeated<K> {
    /// Windows of `window`, at most `max_keys` keys tracked.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self { window, max_keys, state: Mutex::new(State { windows: HashMap::new(), overflow: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // Only counters and map inserts happen under the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one occurrence of `key` at `now`. A window that has ended is
    /// summed up by [`Repeated::flush`], which the caller runs as time
    /// passes; an occurrence after the end of its key's window (before a
    /// flush) starts a new window and returns its summary too.
    pub fn record(&self, key: K, now: Instant) -> (Occurrence, Option<Summary<K>>) {
        let mut state = self.lock();
        let window = self.window;
        let full = state.windows.len() >= self.max_keys;
        match state.windows.get_mut(&key) {
            Some(w) if now.saturating_duration_since(w.since) < window => {
                w.count += 1;
                (Occurrence::Counted, None)
            }
            Some(w) => {
                let ended =
                    Summary { key: Some(key), count: w.count, over: now.saturating_duration_since(w.since) };
                *w = Window { since: now, count: 1 };
                (Occurrence::First, (ended.count > 1).then_some(ended))
            }
            None if full => {
                let overflow = state.overflow.get_or_insert(Window { since: now, count: 0 });
                overflow.count += 1;
                (if overflow.count == 1 { Occurrence::First } else { Occurrence::Counted }, None)
            }
            None => {
                state.windows.insert(key, Window { since: now, count: 1 });
                (Occurrence::First, None)
            }
        }
    }

    /// Ends every window older than the window length at `now`: the
    /// summaries of those that counted more than their first occurrence.
    /// Forgets the keys, so the table holds only recent peers.
    pub fn flush(&self, now: Instant) -> Vec<Summary<K>> {
        self.end_windows(now, self.window)
    }

    /// Ends every window, however young (the server is stopping): the
    /// summaries of those that counted more than their first occurrence.
    pub fn finish(&self, now: Instant) -> Vec<Summary<K>> {
        self.end_windows(now, Duration::ZERO)
    }

    fn end_windows(&self, now: Instant, window: Duration) -> Vec<Summary<K>> {
        let mut state = self.lock();
        let mut out = Vec::new();
        state.windows.retain(|key, w| {
            let over = now.saturating_duration_since(w.since);
            if over < window {
                return true;
            }
            if w.count > 1 {
                out.push(Summary { key: Some(key.clone()), count: w.count, over });
            }
            false
        });
        if let Some(w) = &state.overflow {
            let over = now.saturating_duration_since(w.since);
            if over >= window {
                if w.count > 1 {
                    out.push(Summary { key: None, count: w.count, over });
                }
                state.overflow = None;
            }
        }
        out
    }
}

/// The kinds of per-peer warning the server aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Warning {
    /// Refused: the server holds its most connections.
    ServerFull,
    /// Refused: too many connections from the address.
    TooManyFromAddress,
    /// Refused: too many unauthenticated connections from the address.
    TooManyUnauthenticated,
    /// An unauthenticated connection was closed to make room for a newer one.
    Evicted,
    /// The TLS handshake failed or did not finish in time.
    TlsHandshake,
    /// `Hello` and authentication did not finish in time.
    HandshakeDeadline,
    /// Disconnected for not reading its events.
    SlowConsumer,
    /// Closed for a frame that breaks the protocol: too large, undecodable,
    /// out of place, or of another protocol version.
    ProtocolError,
    /// A password login failed (wrong password, or no such user).
    LoginFailed,
    /// A password login was refused by the throttle.
    LoginThrottled,
}

impl Warning {
    /// What happened, as the summary line says it after a count.
    pub fn what(self) -> &'static str {
        match self {
            Warning::ServerFull => "connections refused (server full)",
            Warning::TooManyFromAddress => "connections refused (too many from this address)",
            Warning::TooManyUnauthenticated => {
                "connections refused (too many from this address not signed in yet)"
            }
            Warning::Evicted => "unauthenticated connections closed to make room for newer ones",
            Warning::TlsHandshake => "TLS handshakes failed or timed out",
            Warning::HandshakeDeadline => "connections closed at the handshake deadline",
            Warning::SlowConsumer => "connections closed for not reading (slow consumer)",
            Warning::ProtocolError => "connections closed for breaking the protocol",
            Warning::LoginFailed => "failed logins",
            Warning::LoginThrottled => "logins refused by the throttle",
        }
    }
}

impl Warning {
    /// Whether it is logged as a warning (refusals, disconnections) or as
    /// information (handshakes that failed: common on the open internet).
    fn is_warning(self) -> bool {
        !matches!(self, Warning::TlsHandshake | Warning::HandshakeDeadline | Warning::ProtocolError)
    }
}

/// Logs one occurrence of `kind` from `peer`: in full if it is the first of
/// its window, else only counted; and the total of a window it ended.
pub fn note(
    r: &Repeated<(Warning, std::net::IpAddr)>,
    kind: Warning,
    peer: std::net::SocketAddr,
    message: &str,
) {
    let (occurrence, ended) = r.record((kind, peer.ip()), Instant::now());
    if let Some(ended) = ended {
        log_summaries(vec![ended]);
    }
    if occurrence == Occurrence::First {
        let secs = WINDOW.as_secs();
        if kind.is_warning() {
            tracing::warn!(%peer, "{message} (more of these from this address are counted for {secs} s)");
        } else {
            tracing::info!(%peer, "{message} (more of these from this address are counted for {secs} s)");
        }
    }
}

/// Logs the summaries of ended windows, one line each.
pub fn log_summaries(summaries: Vec<Summary<(Warning, std::net::IpAddr)>>) {
    for s in summaries {
        let secs = s.over.as_secs();
        match s.key {
            Some((kind, ip)) => {
                tracing::warn!(peer = %ip, count = s.count, "{} {} from {ip} in the last {secs} s", s.count, kind.what());
            }
            None => tracing::warn!(
                count = s.count,
                "{} more warnings from other addresses in the last {secs} s (too many addresses to count each)",
                s.count
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_is_logged_the_rest_counted_then_summed_up() {
        let r = Repeated::new(60 * SEC, 100);
        let t0 = Instant::now();
        assert_eq!(r.record("a", t0), (Occurrence::First, None));
        for i in 1..15_000u32 {
            assert_eq!(r.record("a", t0 + Duration::from_millis(u64::from(i) * 3)).0, Occurrence::Counted);
        }
        // Another key has its own window.
        assert_eq!(r.record("b", t0 + 10 * SEC).0, Occurrence::First);
        assert!(r.flush(t0 + 59 * SEC).is_empty(), "nothing ends before the window does");
        let out = r.flush(t0 + 61 * SEC);
        assert_eq!(out, vec![Summary { key: Some("a"), count: 15_000, over: 61 * SEC }]);
        // "b" had one only: no summary when its window ends, and it is forgotten.
        assert!(r.flush(t0 + 80 * SEC).is_empty());
        assert_eq!(r.record("b", t0 + 81 * SEC).0, Occurrence::First);
        // On stopping, young windows are summed up too.
        r.record("b", t0 + 82 * SEC);
        assert_eq!(r.finish(t0 + 83 * SEC), vec![Summary { key: Some("b"), count: 2, over: 2 * SEC }]);
    }

    #[test]
    fn an_occurrence_after_the_window_starts_a_new_one_and_returns_the_old_total() {
        let r = Repeated::new(60 * SEC, 100);
        let t0 = Instant::now();
        r.record(1, t0);
        r.record(1, t0 + SEC);
        let (first, ended) = r.record(1, t0 + 70 * SEC);
        assert_eq!(first, Occurrence::First);
        assert_eq!(ended, Some(Summary { key: Some(1), count: 2, over: 70 * SEC }));
        assert_eq!(r.record(1, t0 + 71 * SEC).0, Occurrence::Counted);
    }

    #[test]
    fn peers_past_the_table_are_counted_together() {
        let r = Repeated::new(60 * SEC, 2);
        let t0 = Instant::now();
        r.record(1, t0);
        r.record(2, t0);
        assert_eq!(r.record(3, t0).0, Occurrence::First);
        assert_eq!(r.record(4, t0).0, Occurrence::Counted);
        assert_eq!(r.record(5, t0).0, Occurrence::Counted);
        let out = r.flush(t0 + 60 * SEC);
        assert_eq!(out, vec![Summary { key: None, count: 3, over: 60 * SEC }]);
    }
}
