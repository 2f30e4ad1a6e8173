//! The client task: it owns the [`Chat`] (connection, MLS engine, local
//! history) and does all network and MLS work, so the UI never waits on it.
//!
//! The UI sends [`Request`]s over an unbounded channel (bounded in practice
//! by what a person types) and gets [`Event`]s back. The task is a loop of
//! two states:
//!
//! - **online**: one `select!` over requests and the connection's pushed
//!   events. After every change it reads the rooms' local history past what
//!   it already showed (the engine's history is the truth: rows reach the UI
//!   once each, in log order, whichever path brought them in).
//! - **offline**: the connection is gone. Messages typed now go into the
//!   engine's on-disk outgoing queue (so not even a restart loses them);
//!   other requests are refused with a clear line. It reconnects with
//!   exponential backoff; connecting catches up, sends the queue, and the
//!   task goes back online, showing what arrived meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use conclave_client::{Chat, ClientError, HistoryRow, Update};
use conclave_proto::{AccountInfo, Event as ServerEvent, MemberInfo, Role, RoomSummary};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::cli::Cli;

/// The first wait before reconnecting; doubled after each failed attempt.
const BACKOFF_START: Duration = Duration::from_millis(500);

/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// History rows read from the engine per call.
const HISTORY_PAGE: usize = 500;

/// What the UI asks of the client task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Send a message; `local_id` names its pending line in the UI.
    Send {
        /// The UI's id for the pending line.
        local_id: u64,
        /// The room.
        room: String,
        /// The text.
        text: String,
    },
    /// Create a room.
    Create(String),
    /// Add users to a room.
    Add {
        /// The room.
        room: String,
        /// Usernames.
        users: Vec<String>,
    },
    /// Remove users from a room.
    Remove {
        /// The room.
        room: String,
        /// Usernames.
        users: Vec<String>,
    },
    /// Leave a room.
    Leave(String),
    /// Change a member's role.
    Role {
        /// The room.
        room: String,
        /// The member.
        user: String,
        /// The role.
        role: Role,
    },
    /// Change the display name.
    Nick(String),
    /// List a room's members (shown in the conversation).
    Who(String),
    /// List the rooms (shown in the conversation).
    Rooms,
}

/// What the client task tells the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Online (again).
    Connected(AccountInfo),
    /// The connection is gone; reconnecting.
    Disconnected {
        /// Why.
        error: String,
    },
    /// A reconnection attempt failed; the next one follows after `delay`.
    Reconnecting {
        /// Attempts so far.
        attempt: u32,
        /// Until the next one.
        delay: Duration,
        /// Why the last one failed.
        error: String,
    },
    /// The rooms this user is in.
    Rooms {
        /// The rooms.
        rooms: Vec<RoomSummary>,
        /// Also list them in the conversation (`/rooms`).
        show: bool,
    },
    /// A room's members.
    Members {
        /// The room.
        room: String,
        /// Its members.
        members: Vec<MemberInfo>,
        /// Also list them in the conversation (`/who`).
        show: bool,
    },
    /// History rows of a room, in log order, each sent once.
    Rows {
        /// The room.
        room: String,
        /// The rows.
        rows: Vec<HistoryRow>,
        /// New since the chat opened (count as unread, may ring the bell).
        live: bool,
    },
    /// A member came online or went offline.
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// Online now?
        online: bool,
    },
    /// This user is no longer in a room.
    Gone {
        /// The room.
        room: String,
        /// What happened, for the status line.
        why: String,
    },
    /// A room was created here; switch to it.
    Created(String),
    /// The server acknowledged a message (its row was sent before this).
    Sent {
        /// The UI's id for the line.
        local_id: u64,
    },
    /// Offline: the message waits in the on-disk queue for the reconnect.
    Queued {
        /// The UI's id for the line.
        local_id: u64,
    },
    /// The message was refused and will not be sent.
    SendFailed {
        /// The UI's id for the line.
        local_id: u64,
        /// Why.
        error: String,
    },
    /// The display name changed.
    Account(AccountInfo),
    /// A request succeeded: one line for the status area.
    Info(String),
    /// A request failed: one line for the status area.
    Failed(String),
}

/// Why the online loop ended.
enum Exit {
    /// The UI is gone.
    Quit,
    /// The connection is gone, with the reason.
    Lost(String),
}

/// A message in the engine's queue that the UI shows as pending.
struct Queued {
    local_id: u64,
    room: String,
    client_msg_id: u64,
}

/// The task's state. See the module documentation.
struct Worker {
    cli: Cli,
    chat: Chat,
    tx: UnboundedSender<Event>,
    /// The rooms the server last listed.
    rooms: BTreeSet<String>,
    /// The last history sequence number handed to the UI, by room.
    shown: HashMap<String, u64>,
    /// Messages in the engine's queue whose delivery the UI awaits.
    queued: Vec<Queued>,
    /// Rows read from now on are news to the user.
    live: bool,
}

/// Runs the client task until the UI drops its request sender. `chat` is
/// connected and caught up; `cli` says how to reconnect.
pub async fn run(cli: Cli, chat: Chat, mut requests: UnboundedReceiver<Request>, tx: UnboundedSender<Event>) {
    let mut w = Worker {
        cli,
        chat,
        tx,
        rooms: BTreeSet::new(),
        shown: HashMap::new(),
        queued: Vec::new(),
        live: false,
    };
    loop {
        let error = match w.online(&mut requests).await {
            Exit::Quit => return,
            Exit::Lost(error) => error,
        };
        w.live = true;
        w.emit(Event::Disconnected { error });
        let mut backoff = BACKOFF_START;
        let mut attempt = 0u32;
        loop {
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    req = requests.recv() => match req {
                        Some(req) => w.offline_request(req),
                        None => return,
                    },
                }
            }
            attempt += 1;
            match crate::rooms::open_chat(&w.cli).await {
                Ok((chat, _)) => {
                    w.chat = chat;
                    break;
                }
                Err(e) => {
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    w.emit(Event::Reconnecting { attempt, delay: backoff, error: format!("{e:#}") });
                }
            }
        }
    }
}

impl Worker {
    fn emit(&self, event: Event) {
        // The UI is gone only while quitting; nothing left to tell it then.
        let _ = self.tx.send(event);
    }

    /// The reason, if the connection is gone.
    fn lost(&self) -> Option<String> {
        self.chat.connection().closed().map(|last| ClientError::Closed(last).to_string())
    }

    /// Subscribes, brings the UI up to date, then serves requests and events.
    async fn online(&mut self, requests: &mut UnboundedReceiver<Request>) -> Exit {
        let Some(mut events) = self.chat.connection().take_events() else {
            return Exit::Lost("the connection's events were already taken".into());
        };
        if let Err(e) = self.chat.subscribe().await {
            return Exit::Lost(e.to_string());
        }
        self.emit(Event::Connected(self.chat.account().clone()));
        if let Err(e) = self.refresh().await {
            if let Some(lost) = self.lost() {
                return Exit::Lost(lost);
            }
            self.emit(Event::Failed(e.to_string()));
        }
        self.live = true;
        loop {
            tokio::select! {
                req = requests.recv() => {
                    let Some(req) = req else { return Exit::Quit };
                    if let Err(e) = self.request(req).await {
                        if let Some(lost) = self.lost() {
                            return Exit::Lost(lost);
                        }
                        self.emit(Event::Failed(e));
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else {
                        return Exit::Lost(self.lost().unwrap_or_else(|| "the connection closed".into()));
                    };
                    if let Err(e) = self.event(event).await {
                        if let Some(lost) = self.lost() {
                            return Exit::Lost(lost);
                        }
                        self.emit(Event::Failed(e.to_string()));
                    }
                }
            }
        }
    }

    /// After (re)connecting: rooms, anything that arrived before the
    /// subscription took effect, members, history, delivered messages.
    async fn refresh(&mut self) -> Result<(), ClientError> {
        self.refresh_rooms(false).await?;
        for room in self.rooms.clone() {
            let updates = self.chat.sync_room(&room).await?;
            self.updates(updates);
            self.refresh_members(&room, false).await?;
        }
        self.flush_all();
        Ok(())
    }

    async fn refresh_rooms(&mut self, show: bool) -> Result<(), ClientError> {
        let rooms = self.chat.list_rooms().await?;
        self.rooms = rooms.iter().map(|r| r.name.clone()).collect();
        self.emit(Event::Rooms { rooms, show });
        Ok(())
    }

    async fn refresh_members(&mut self, room: &str, show: bool) -> Result<(), ClientError> {
        let members = self.chat.members(room).await?;
        self.emit(Event::Members { room: room.to_owned(), members, show });
        Ok(())
    }

    /// Hands the UI every history row of `room` it has not had yet.
    fn flush(&mut self, room: &str) {
        loop {
            let after = self.shown.get(room).copied().unwrap_or(0);
            let rows = match self.chat.history(room, after, HISTORY_PAGE) {
                Ok(rows) => rows,
                Err(e) => {
                    self.emit(Event::Failed(format!("cannot read the history of #{room}: {e}")));
                    return;
                }
            };
            let Some(last) = rows.last().map(|r| r.seq) else { return };
            self.shown.insert(room.to_owned(), last);
            self.emit(Event::Rows { room: room.to_owned(), rows, live: self.live });
        }
    }

    /// Flushes every room, then reports queued messages that went out.
    fn flush_all(&mut self) {
        for room in self.rooms.clone() {
            self.flush(&room);
        }
        let mut still = Vec::new();
        for q in std::mem::take(&mut self.queued) {
            match self.chat.pending_ids(&q.room) {
                Ok(ids) if !ids.contains(&q.client_msg_id) => {
                    self.flush(&q.room);
                    self.emit(Event::Sent { local_id: q.local_id });
                }
                _ => still.push(q),
            }
        }
        self.queued = still;
    }

    /// Passes on what the client library reported; membership changes
    /// refresh the member lists afterwards (in [`Worker::event`]).
    fn updates(&mut self, updates: Vec<Update>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for update in updates {
            match update {
                // Rows reach the UI through `flush`, from the engine's history.
                Update::Row(row) => {
                    if row.kind != "message" && row.kind != "undecryptable" {
                        changed.insert(row.room.clone());
                    }
                }
                Update::Presence { room, user, online } => self.emit(Event::Presence { room, user, online }),
                Update::Removed { room } => {
                    self.flush(&room);
                    self.rooms.remove(&room);
                    let why = format!("you are no longer a member of #{room}");
                    self.emit(Event::Gone { room, why });
                }
            }
        }
        changed
    }

    async fn event(&mut self, event: ServerEvent) -> Result<(), ClientError> {
        let new_room = match &event {
            ServerEvent::Welcome(_) => true,
            ServerEvent::Entry { room, .. } => !self.rooms.contains(room),
            _ => false,
        };
        let updates = self.chat.handle_event(event).await?;
        let changed = self.updates(updates);
        if new_room {
            self.refresh_rooms(false).await?;
        }
        self.flush_all();
        for room in changed {
            if self.rooms.contains(&room) {
                self.refresh_members(&room, false).await?;
            }
        }
        Ok(())
    }

    /// Serves one request while online. `Err` is a line for the status area.
    async fn request(&mut self, req: Request) -> Result<(), String> {
        match req {
            Request::Send { local_id, room, text } => self.send(local_id, &room, &text).await,
            Request::Create(room) => {
                let summary =
                    self.chat.create_room(&room).await.map_err(|e| format!("cannot create #{room}: {e}"))?;
                self.refresh_rooms(false).await.map_err(|e| e.to_string())?;
                self.refresh_members(&summary.name, false).await.map_err(|e| e.to_string())?;
                self.flush_all();
                self.emit(Event::Created(summary.name.clone()));
                self.emit(Event::Info(format!("created #{}; you are its owner", summary.name)));
                Ok(())
            }
            Request::Add { room, users } => {
                self.chat.add(&room, &users).await.map_err(|e| format!("cannot add to #{room}: {e}"))?;
                self.after_change(&room, format!("added {} to #{room}", users.join(", "))).await
            }
            Request::Remove { room, users } => {
                self.chat
                    .remove(&room, &users)
                    .await
                    .map_err(|e| format!("cannot remove from #{room}: {e}"))?;
                self.after_change(&room, format!("removed {} from #{room}", users.join(", "))).await
            }
            Request::Role { room, user, role } => {
                self.chat
                    .set_role(&room, &user, role)
                    .await
                    .map_err(|e| format!("cannot change roles in #{room}: {e}"))?;
                self.chat.sync_room(&room).await.map_err(|e| e.to_string())?;
                self.after_change(&room, format!("{user} is now {} of #{room}", role.as_str())).await
            }
            Request::Leave(room) => {
                self.chat.leave(&room).await.map_err(|e| format!("cannot leave #{room}: {e}"))?;
                self.rooms.remove(&room);
                self.emit(Event::Gone { room: room.clone(), why: format!("you left #{room}") });
                self.refresh_rooms(false).await.map_err(|e| e.to_string())
            }
            Request::Nick(name) => {
                let info = self
                    .chat
                    .set_display_name(&name)
                    .await
                    .map_err(|e| format!("cannot change your name: {e}"))?;
                let shown = info.display_name.clone();
                self.emit(Event::Account(info));
                for room in self.rooms.clone() {
                    self.refresh_members(&room, false).await.map_err(|e| e.to_string())?;
                }
                self.emit(Event::Info(format!("you are now known as {shown}")));
                Ok(())
            }
            Request::Who(room) => self
                .refresh_members(&room, true)
                .await
                .map_err(|e| format!("cannot list the members of #{room}: {e}")),
            Request::Rooms => self.refresh_rooms(true).await.map_err(|e| format!("cannot list rooms: {e}")),
        }
    }

    async fn after_change(&mut self, room: &str, done: String) -> Result<(), String> {
        self.flush_all();
        self.refresh_members(room, false).await.map_err(|e| e.to_string())?;
        self.emit(Event::Info(done));
        Ok(())
    }

    /// Sends one message. If the connection fails on the way, the message
    /// ends up in the engine's queue exactly once (whether or not the
    /// library had queued it before failing) and goes out on reconnect.
    async fn send(&mut self, local_id: u64, room: &str, text: &str) -> Result<(), String> {
        let before = self.chat.pending_ids(room).unwrap_or_default();
        match self.chat.send(room, text).await {
            Ok(_) => {
                self.flush_all();
                self.emit(Event::Sent { local_id });
                Ok(())
            }
            Err(e) if self.lost().is_some() => {
                let queued_by_send = self
                    .chat
                    .pending_ids(room)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|id| !before.contains(id));
                match queued_by_send {
                    Some(client_msg_id) => {
                        self.queued.push(Queued { local_id, room: room.to_owned(), client_msg_id });
                        self.emit(Event::Queued { local_id });
                    }
                    None => self.queue(local_id, room, text),
                }
                Err(e.to_string())
            }
            Err(e) => {
                self.emit(Event::SendFailed { local_id, error: e.to_string() });
                Ok(())
            }
        }
    }

    /// Puts a message in the engine's on-disk queue for the reconnect.
    fn queue(&mut self, local_id: u64, room: &str, text: &str) {
        match self.chat.queue_message(room, text) {
            Ok(client_msg_id) => {
                self.queued.push(Queued { local_id, room: room.to_owned(), client_msg_id });
                self.emit(Event::Queued { local_id });
            }
            Err(e) => self.emit(Event::SendFailed { local_id, error: e.to_string() }),
        }
    }

    /// Serves one request while offline.
    fn offline_request(&mut self, req: Request) {
        match req {
            Request::Send { local_id, room, text } => self.queue(local_id, &room, &text),
            _ => self
                .emit(Event::Failed("offline: reconnecting; only messages can be queued until then".into())),
        }
    }
}
