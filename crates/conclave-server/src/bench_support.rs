//! Hooks for the crate's criterion benchmarks (`benches/message_path.rs`):
//! a room's actor and the connections' outbound queues, driven in-process
//! without a network. Hidden from the docs and not a stable API: nothing but
//! the benchmarks should use it. Compiled only with the crate's `bench`
//! feature, which the crate's dev-dependency on itself turns on for its
//! benches and tests.

use std::sync::Arc;

use conclave_proto::ErrorBody;
use tokio_util::sync::CancellationToken;

pub use crate::conn::{Frames, Outbox, QueueFull};
use crate::hub::SessionHandle;
use crate::rooms::{RoomCmd, RoomHandle};
use crate::store::{DeviceAccount, DeviceNo, Store, UserId};
use crate::{Config, Server, ServerError, Shared};

/// An outbound queue of `capacity` frames with no writer task behind it: the
/// caller takes the frames off the receiver.
pub fn outbox(capacity: usize) -> (Outbox, Frames) {
    Outbox::new(capacity)
}

/// A server's state (database, log writer, room registry), set up exactly as
/// [`Server::bind`] sets it up, with no session and no accept loop.
pub struct Harness {
    shared: Arc<Shared>,
}

impl Harness {
    /// Sets up the server of `config`. Its listeners are closed at once, so
    /// give it a loopback address with port 0.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let server = Server::bind(config).await?;
        Ok(Self { shared: server.shared().clone() })
    }

    /// The server's store, for creating accounts and rooms.
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }

    /// Room `name`'s actor, started from storage as a session's first request
    /// to the room starts it; `None` if there is no such room.
    pub async fn room(&self, name: &str) -> Result<Option<Room>, ErrorBody> {
        let handle = self.shared.rooms.get(&self.shared, name).await?;
        Ok(handle.map(|handle| Room { handle, shared: self.shared.clone() }))
    }
}

/// A running room actor.
pub struct Room {
    handle: RoomHandle,
    shared: Arc<Shared>,
}

impl Room {
    /// Subscribes a live session of `user`'s `device`, whose outbound queue
    /// holds `capacity` frames; the caller drains the returned receiver. As
    /// for a real session, the room ignores it unless `user` is a member.
    pub async fn subscribe(
        &self,
        user: UserId,
        device: DeviceNo,
        capacity: usize,
    ) -> Result<Frames, ErrorBody> {
        let (outbox, frames) = outbox(capacity);
        let conn = self.shared.hub.next_conn();
        let session = SessionHandle { conn, user, device, outbox, kick: CancellationToken::new() };
        self.handle.send(RoomCmd::Subscribe(session)).await?;
        Ok(frames)
    }

    /// Sends a message as the `Send` request's handler does: answers its
    /// sequence number once it is on disk; the fan-out follows the answer.
    pub async fn send(
        &self,
        from: &DeviceAccount,
        client_msg_id: u64,
        ciphertext: Vec<u8>,
    ) -> Result<conclave_proto::Seq, ErrorBody> {
        self.handle.ask(|reply| RoomCmd::Send { from: from.clone(), client_msg_id, ciphertext, reply }).await
    }
}
