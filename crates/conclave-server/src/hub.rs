//! Who is connected: the live (subscribed) sessions of each user.
//!
//! Room actors ask the hub for a user's sessions when the user joins a room
//! (to start delivering to them) and whether a user is online. A user is
//! online while at least one of their sessions is subscribed. The map is
//! behind a mutex held only for short, await-free sections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::conn::Outbox;
use crate::store::{DeviceNo, UserId};

/// A connection's id, unique for the server's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// A live session, as rooms see it.
#[derive(Clone)]
pub struct SessionHandle {
    /// The connection.
    pub conn: ConnId,
    /// Its user.
    pub user: UserId,
    /// Its device.
    pub device: DeviceNo,
    /// Where its frames go.
    pub outbox: Outbox,
    /// Cancelled to disconnect it (for example when its queue is full).
    pub kick: CancellationToken,
}

/// The registry.
#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<UserId, Vec<SessionHandle>>>,
    next: AtomicU64,
}

impl Hub {
    /// A fresh connection id.
    pub fn next_conn(&self) -> ConnId {
        ConnId(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<SessionHandle>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a live session; true if its user just came online.
    pub fn register(&self, session: SessionHandle) -> bool {
        let mut map = self.lock();
        let list = map.entry(session.user).or_default();
        list.push(session);
        list.len() == 1
    }

    /// Removes a session; true if its user just went offline.
    pub fn unregister(&self, user: UserId, conn: ConnId) -> bool {
        let mut map = self.lock();
        let Some(list) = map.get_mut(&user) else { return false };
        let before = list.len();
        list.retain(|s| s.conn != conn);
        let removed = list.len() < before;
        if list.is_empty() {
            map.remove(&user);
            return removed;
        }
        false
    }

    /// A user's live sessions.
    pub fn sessions_of(&self, user: UserId) -> Vec<SessionHandle> {
        self.lock().get(&user).cloned().unwrap_or_default()
    }

    /// Whether a user has a live session.
    pub fn is_online(&self, user: UserId) -> bool {
        self.lock().contains_key(&user)
    }
}
