//! Rooms: each room is owned by one task (its actor), which orders the
//! room's log and serialises its commits, so no lock is shared across rooms.
//!
//! [`Rooms`] finds a room's actor, starting it on first use from storage.
//! Sessions talk to actors with [`RoomCmd`]s and await the answers. What a
//! member may do to the room's group is decided by [`policy`], and every
//! refusal is a [`RoomError`].
//!
//! A non-member must not learn whether a room exists, not even from how long
//! the answer takes: [`Rooms::open`] and [`RoomHandle::ask_as`] give a missing
//! room, a room the asker is not in (running or not) the same work: one
//! registry look-up, one store look-up of the asker's rooms and one round
//! trip to an actor (the room's, or the *absent room*: an actor that refuses
//! everything).

mod actor;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use conclave_proto::{ClaimedKeyPackage, ErrorBody, ErrorCode, MemberInfo, Role, RoomSummary, Seq};
use tokio::sync::{mpsc, oneshot};

pub use self::policy::RoomError;
use crate::hub::{ConnId, SessionHandle};
use crate::store::{DeviceAccount, RoomId, UserId};
use crate::Shared;

/// Commands queued for one room before senders wait.
const ROOM_QUEUE: usize = 4096;

/// Where a command's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

/// What a room actor can be asked.
pub enum RoomCmd {
    /// Store and relay an application message.
    Send {
        /// The sending device.
        from: DeviceAccount,
        /// Its id for the message.
        client_msg_id: u64,
        /// The MLS PrivateMessage.
        ciphertext: Vec<u8>,
        /// Answered with the sequence number.
        reply: Reply<Seq>,
    },
    /// Check, store and relay a commit.
    Commit {
        /// The committing device.
        from: DeviceAccount,
        /// The MLS commit.
        commit: Vec<u8>,
        /// The Welcome for added devices.
        welcome: Option<Vec<u8>>,
        /// The new epoch's GroupInfo.
        group_info: Vec<u8>,
        /// Answered with the sequence number.
        reply: Reply<Seq>,
    },
    /// Claim KeyPackages of users about to be added.
    Claim {
        /// The admin asking.
        from: DeviceAccount,
        /// Users to add.
        users: Vec<String>,
        /// Answered with one package per device.
        reply: Reply<Vec<ClaimedKeyPackage>>,
    },
    /// List members.
    Members {
        /// Who asks.
        from: DeviceAccount,
        /// Answered with the members.
        reply: Reply<Vec<MemberInfo>>,
    },
    /// The room as `from` sees it.
    Summary {
        /// Who asks.
        from: DeviceAccount,
        /// Answered with the summary.
        reply: Reply<RoomSummary>,
    },
    /// Check that `from` may read the log; answers the room id and the
    /// sequence number they joined at.
    ReadAccess {
        /// Who asks.
        from: DeviceAccount,
        /// Answered with (room, joined_seq).
        reply: Reply<(RoomId, Seq)>,
    },
    /// The latest GroupInfo, for an external join.
    GroupInfo {
        /// Who asks.
        from: DeviceAccount,
        /// Answered with (epoch, GroupInfo).
        reply: Reply<(u64, Vec<u8>)>,
    },
    /// Change a member's role (owner only).
    SetRole {
        /// The owner.
        from: DeviceAccount,
        /// The member.
        user: String,
        /// The new role.
        role: Role,
        /// Answered with the sequence number of the notice.
        reply: Reply<Seq>,
    },
    /// Leave the room.
    Leave {
        /// Who leaves.
        from: DeviceAccount,
        /// Answered with the sequence number of the notice.
        reply: Reply<Seq>,
    },
    /// Deliver live events to this session (ignored unless its user is a member).
    Subscribe(SessionHandle),
    /// Stop delivering to this connection.
    Unsubscribe(ConnId),
    /// A member came online or went offline.
    Presence {
        /// Who.
        user: UserId,
        /// Online now?
        online: bool,
    },
}

/// A handle to a room's actor (or to the absent room's, see [`Rooms::open`]).
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCmd>,
    /// The absent room: its refusals name no room, the caller's name is put in.
    absent: bool,
}

impl RoomHandle {
    /// Queues a command, waiting if the room is busy.
    pub async fn send(&self, cmd: RoomCmd) -> Result<(), ErrorBody> {
        self.tx.send(cmd).await.map_err(|_| gone())
    }

    /// Sends a command built around a reply channel and awaits the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> RoomCmd) -> Result<T, ErrorBody> {
        self.start(make).await?.await
    }

    /// Queues a command built around a reply channel, in order, and returns
    /// the answer to await later: commands started one after another are
    /// handled in that order, while the caller goes on.
    pub async fn start<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> RoomCmd,
    ) -> Result<impl std::future::Future<Output = Result<T, ErrorBody>>, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        Ok(async move { rx.await.map_err(|_| gone())?.map_err(ErrorBody::from) })
    }

    /// [`Self::start`] for a handle from [`Rooms::open`], asked by `user` about
    /// `room`: a refusal as a non-member costs the same from a real room as
    /// from the absent one (which did its look-up of the asker's rooms before
    /// its round trip; a real room does it after), and says the same: it is
    /// named here with the caller's `room`, as the absent room knows no name.
    pub async fn start_as<T>(
        &self,
        shared: &Arc<Shared>,
        user: UserId,
        room: String,
        make: impl FnOnce(Reply<T>) -> RoomCmd,
    ) -> Result<impl std::future::Future<Output = Result<T, ErrorBody>>, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        let (shared, absent) = (shared.clone(), self.absent);
        Ok(async move {
            match rx.await.map_err(|_| gone())? {
                Ok(answer) => Ok(answer),
                Err(RoomError::NotAMember { .. }) => {
                    if !absent {
                        // The absent room's look-up, so the two cost the same.
                        let _ = user_rooms(&shared, user).await;
                    }
                    Err(RoomError::NotAMember { room }.into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// [`Self::start_as`], awaited.
    pub async fn ask_as<T>(
        &self,
        shared: &Arc<Shared>,
        user: UserId,
        room: String,
        make: impl FnOnce(Reply<T>) -> RoomCmd,
    ) -> Result<T, ErrorBody> {
        self.start_as(shared, user, room, make).await?.await
    }
}

/// The rooms `user` is a member of, from the store.
async fn user_rooms(shared: &Arc<Shared>, user: UserId) -> Result<Vec<String>, ErrorBody> {
    let store = shared.store.clone();
    crate::blocking::run(move || store.rooms_of_user(user)).await?.map_err(crate::handlers::store_error)
}

fn gone() -> ErrorBody {
    ErrorBody::new(ErrorCode::SHUTTING_DOWN, "the room is shutting down; reconnect and retry")
}

/// The registry of running room actors.
#[derive(Default)]
pub struct Rooms {
    map: tokio::sync::Mutex<Registry>,
    /// Set at shutdown: no room is started again.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Registry {
    rooms: HashMap<String, RoomHandle>,
    /// The absent room's actor, started on first use.
    absent: Option<RoomHandle>,
}

impl Rooms {
    /// The actor of room `name`, started from storage if needed; `None` if
    /// there is no such room. For rooms the caller knows it is in; requests
    /// that name a room use [`Self::open`].
    pub async fn get(&self, shared: &Arc<Shared>, name: &str) -> Result<Option<RoomHandle>, ErrorBody> {
        let mut map = self.map.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(gone());
        }
        if let Some(h) = map.rooms.get(name) {
            if !h.tx.is_closed() {
                return Ok(Some(h.clone()));
            }
        }
        let Some(actor) = actor::RoomActor::load(shared.clone(), name.to_owned()).await? else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        shared.tracker.spawn(actor.run(rx));
        let handle = RoomHandle { tx, absent: false };
        map.rooms.insert(name.to_owned(), handle.clone());
        Ok(Some(handle))
    }

    /// The actor that answers `user`'s request about room `name`: the room's
    /// if it is running; else, if `user` is a member, the room's, started from
    /// storage; else the absent room's, which refuses everything as
    /// `not_a_member`. Use [`RoomHandle::ask_as`] on it. A room that is not
    /// running is not loaded for a non-member, and whether it exists costs
    /// nothing to find out: both come down to the store look-up of the
    /// asker's rooms, which depends on the asker only.
    pub async fn open(
        &self,
        shared: &Arc<Shared>,
        user: UserId,
        name: &str,
    ) -> Result<RoomHandle, ErrorBody> {
        let absent = {
            let mut map = self.map.lock().await;
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(gone());
            }
            if let Some(h) = map.rooms.get(name).filter(|h| !h.tx.is_closed()) {
                return Ok(h.clone());
            }
            map.absent_room(shared)
        };
        if user_rooms(shared, user).await?.iter().any(|r| r == name) {
            if let Some(room) = self.get(shared, name).await? {
                return Ok(room);
            }
        }
        Ok(absent)
    }

    /// Stops every actor (they finish what is queued first).
    pub async fn close_all(&self) {
        let mut map = self.map.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        map.rooms.clear();
        map.absent = None;
    }
}

impl Registry {
    /// The absent room's handle, its actor started if need be.
    fn absent_room(&mut self, shared: &Arc<Shared>) -> RoomHandle {
        if let Some(h) = self.absent.as_ref().filter(|h| !h.tx.is_closed()) {
            return h.clone();
        }
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        shared.tracker.spawn(actor::absent_room(rx));
        let handle = RoomHandle { tx, absent: true };
        self.absent = Some(handle.clone());
        handle
    }
}
