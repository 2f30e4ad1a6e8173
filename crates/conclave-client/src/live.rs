//! Staying connected: a session that owns a [`Chat`], keeps it connected,
//! and talks to a front end through a command channel and an event stream.
//!
//! Every front end that stays open while the network comes and goes uses
//! this module: `conclave tail --follow`, the terminal UI, and the local
//! web UI to come. None of them touches the connection: they send
//! [`Command`]s and show [`LiveEvent`]s, which name rooms, rows and people,
//! never terminals or sockets.
//!
//! The session is a loop of two states:
//!
//! - **online**: it subscribes, hands over the local history, catches up
//!   (Welcomes, external joins, every room's log), sends the offline queue,
//!   lists rooms and members, says [`LiveEvent::Connected`], then runs one
//!   `select!` over commands and the server's pushed events. After every
//!   change it reads the rooms' local history past what it already handed
//!   over: the engine's history is the truth, so each row reaches the front
//!   end once and in log order, whichever path brought it in.
//! - **offline**: the connection is gone. A message sent now goes into the
//!   engine's on-disk outgoing queue (so not even a restart loses it); other
//!   commands are refused with a clear line. It reconnects with exponential
//!   backoff ([`BACKOFF_START`] doubling up to [`BACKOFF_MAX`]) through its
//!   [`Dialer`], which trusts only the certificate the first connection
//!   trusted, and keeps its engine (one per profile and process). An
//!   attempt that fails for a reason retrying cannot cure (a changed
//!   certificate, a device or account gone from the server, an unreadable
//!   profile: not [`ClientError::is_transient`]) ends the session with
//!   [`LiveEvent::Stopped`], which says what to do.
//!
//! Every message is written to the on-disk queue **before** any network
//! work, and the queue is what gets sent. Stopping the session (dropping
//! or [`LiveHandle::shutdown`]) abandons the operation in progress at its
//! next `await` (every engine change is one SQLite transaction, so this is
//! no worse than a crash, which the engine is built to survive) and queues
//! the messages still waiting in the command channel. A message being sent
//! when the session stopped therefore stays queued and goes out, once, on
//! the next start (the server recognises a repeated `client_msg_id`).
//!
//! The session's future is not `Send` (the engine's SQLite handles are not
//! `Sync`), so it runs on one thread: [`Session::spawn`] gives it a thread
//! with a single-threaded runtime, or a caller awaits [`Session::run`] on
//! its own.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use conclave_proto::{AccountInfo, Event as ServerEvent, MemberInfo, Role, RoomSummary, Seq};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{connect_tls, Chat, ClientError, Connection, DeviceKey, HistoryRow, Profile, ServerAddr, Update};

/// The first wait before reconnecting; doubled after each failed attempt.
pub const BACKOFF_START: Duration = Duration::from_millis(500);

/// The longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// History rows read from the engine per [`LiveEvent::Rows`].
const HISTORY_PAGE: usize = 500;

/// How to reach the server again without asking anyone: the profile, the
/// server, and the certificate fingerprint to insist on.
#[derive(Debug, Clone)]
pub struct Dialer {
    profile_dir: PathBuf,
    server: ServerAddr,
    fingerprint: String,
}

impl Dialer {
    /// Dials `server` for the device of the profile in `profile_dir`,
    /// accepting only the certificate whose fingerprint is `fingerprint`
    /// (the one the first connection was trusted with).
    pub fn new(profile_dir: impl Into<PathBuf>, server: ServerAddr, fingerprint: impl Into<String>) -> Self {
        Self { profile_dir: profile_dir.into(), server, fingerprint: fingerprint.into() }
    }

    /// The server dialed.
    pub fn server(&self) -> &ServerAddr {
        &self.server
    }

    /// Connects, authenticates as the profile's device and opens its
    /// engine. Catching up is the caller's next step. A session reconnects
    /// with [`Dialer::connect`] instead, keeping its engine.
    pub async fn dial(&self) -> Result<Chat, ClientError> {
        let (profile, device) = self.device()?;
        let (conn, account) = self.authenticate(&device).await?;
        Chat::open(profile.dir(), &device, conn, account)
    }

    /// Connects and authenticates as the profile's device, without opening
    /// its engine (the caller already has it open: see [`Chat::reconnected`]).
    pub async fn connect(&self) -> Result<(Connection, AccountInfo), ClientError> {
        let (_, device) = self.device()?;
        self.authenticate(&device).await
    }

    fn device(&self) -> Result<(Profile, DeviceKey), ClientError> {
        let profile = Profile::open(&self.profile_dir)?;
        let Some(device) = profile.device_key()? else {
            return Err(ClientError::Invalid(format!(
                "the profile {} has no device key; run `conclave register USER` or `conclave login USER`",
                self.profile_dir.display()
            )));
        };
        Ok((profile, device))
    }

    async fn authenticate(&self, device: &DeviceKey) -> Result<(Connection, AccountInfo), ClientError> {
        let conn = connect_tls(&self.server, Some(&self.fingerprint)).await?.hello().await?;
        let account = conn.authenticate(device).await?;
        Ok((conn, account))
    }
}

/// What a front end asks of the session. Serialisable (JSON: `{"type":
/// "send", "data": {...}}`) for front ends in another process, such as the
/// local web UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Command {
    /// Send a message; `local_id` is the front end's name for it, used in
    /// [`LiveEvent::Sent`], [`LiveEvent::Queued`] and [`LiveEvent::SendFailed`].
    Send {
        /// The front end's id for the message.
        local_id: u64,
        /// The room.
        room: String,
        /// The text.
        text: String,
    },
    /// Create a room.
    CreateRoom(String),
    /// Add users (every device of each) to a room.
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
    /// Change a member's role (owner only).
    SetRole {
        /// The room.
        room: String,
        /// The member.
        user: String,
        /// The role.
        role: Role,
    },
    /// Change this user's display name.
    SetDisplayName(String),
    /// List a room's members ([`LiveEvent::Members`] with `requested`).
    Members(String),
    /// List the rooms ([`LiveEvent::Rooms`] with `requested`).
    Rooms,
}

/// What the session tells the front end. Serialisable like [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LiveEvent {
    /// Connected and authenticated; catching up on the rooms now. The
    /// rows already on this device have been handed over; newer ones follow.
    CatchingUp(AccountInfo),
    /// Caught up and live: rooms and members are listed, history is current.
    Connected(AccountInfo),
    /// The connection is gone; reconnecting.
    Disconnected {
        /// Why.
        error: String,
    },
    /// The session stopped for good: reconnecting failed for a reason that
    /// retrying cannot cure (the server's certificate changed, this device
    /// or account is no longer on the server, the profile cannot be read).
    /// Nothing more follows. Messages sent from now on are not queued;
    /// those already queued stay on disk for the next start.
    Stopped {
        /// What is wrong and what to do, in a sentence or two.
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
        /// In answer to [`Command::Rooms`].
        requested: bool,
    },
    /// A room's members.
    Members {
        /// The room.
        room: String,
        /// Its members.
        members: Vec<MemberInfo>,
        /// In answer to [`Command::Members`].
        requested: bool,
    },
    /// History rows of a room, in log order, each handed over once.
    Rows {
        /// The room.
        room: String,
        /// The rows.
        rows: Vec<HistoryRow>,
        /// New since the session started (unread, may deserve a bell), as
        /// opposed to history that was already on this device or arrived
        /// while catching up on the first connection.
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
        /// What happened, in a sentence.
        why: String,
    },
    /// A room was created by [`Command::CreateRoom`].
    Created(String),
    /// The server stored a message (its row was handed over before this).
    Sent {
        /// The front end's id for it.
        local_id: u64,
    },
    /// Offline: the message waits in the on-disk queue for the reconnect.
    Queued {
        /// The front end's id for it.
        local_id: u64,
    },
    /// The message was refused and will not be sent.
    SendFailed {
        /// The front end's id for it.
        local_id: u64,
        /// Why.
        error: String,
    },
    /// This user's account changed (a new display name).
    Account(AccountInfo),
    /// A command succeeded: one line to show.
    Info(String),
    /// A command failed: one line to show.
    Failed(String),
}

/// Which history the session hands over.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these rooms' rows (every room when `None`).
    pub only_rooms: Option<BTreeSet<String>>,
    /// Rows up to this sequence number, by room, are not handed over (the
    /// front end already showed them).
    pub shown: HashMap<String, Seq>,
}

/// Why the online loop ended.
enum Exit {
    /// The front end is gone.
    Quit,
    /// The connection is gone, with the reason.
    Lost(String),
}

/// A message in the engine's queue whose delivery the front end awaits.
struct Queued {
    local_id: u64,
    room: String,
    client_msg_id: u64,
}

/// A session: see the module documentation.
pub struct Session {
    dialer: Dialer,
    chat: Chat,
    options: Options,
    tx: mpsc::UnboundedSender<LiveEvent>,
    /// The rooms the server last listed.
    rooms: BTreeSet<String>,
    /// The last history sequence number handed over, by room.
    shown: HashMap<String, Seq>,
    /// Messages in the engine's queue whose delivery the front end awaits.
    queued: Vec<Queued>,
    /// Rows read from now on are news.
    live: bool,
    /// Started offline ([`Session::offline`]): why the first connection
    /// failed.
    offline: Option<String>,
}

/// The front end's end of a session started by [`Session::spawn`].
/// Dropping it stops the session too, without waiting for it.
pub struct LiveHandle {
    commands: mpsc::UnboundedSender<Command>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl LiveHandle {
    /// Hands a command to the session. False if the session has ended.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Stops the session: the operation in progress is abandoned, messages
    /// not yet sent stay in the on-disk queue. Waits at most `grace` for the
    /// session to put them there; true if it finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.done.take() {
            Some(done) => tokio::time::timeout(grace, done).await.is_ok(),
            None => true,
        }
    }
}

impl Session {
    /// A session around `chat` (connected and authenticated, not
    /// necessarily caught up) that reconnects with `dialer`. Events go to
    /// the returned receiver.
    pub fn new(
        dialer: Dialer,
        chat: Chat,
        options: Options,
    ) -> (Session, mpsc::UnboundedReceiver<LiveEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shown = options.shown.clone();
        let session = Session {
            dialer,
            chat,
            options,
            tx,
            rooms: BTreeSet::new(),
            shown,
            queued: Vec::new(),
            live: false,
            offline: None,
        };
        (session, rx)
    }

    /// A session that starts offline: `chat` holds the profile's engine
    /// over a connection that never opened ([`Connection::never_opened`]),
    /// because the server could not be reached (`error`, a passing
    /// failure). It hands over the local history, says
    /// [`LiveEvent::Disconnected`], queues messages on disk, and connects
    /// with backoff as after a loss.
    pub fn offline(
        dialer: Dialer,
        chat: Chat,
        options: Options,
        error: String,
    ) -> (Session, mpsc::UnboundedReceiver<LiveEvent>) {
        let (mut session, rx) = Session::new(dialer, chat, options);
        session.offline = Some(error);
        (session, rx)
    }

    /// Runs the session on a thread of its own (with a single-threaded
    /// runtime: its future is not `Send`).
    pub fn spawn(self) -> std::io::Result<LiveHandle> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new().name("conclave-live".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(self.run(rx, stop_rx)),
                Err(e) => tracing::error!(error = %e, "cannot start the client session's runtime"),
            }
            let _ = done_tx.send(());
        })?;
        Ok(LiveHandle { commands, stop: Some(stop_tx), done: Some(done_rx) })
    }

    /// Runs until `stop` fires (or its sender is dropped) or the command
    /// sender is dropped, then queues the messages still in `commands`.
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) {
        tokio::select! {
            biased;
            _ = &mut stop => {}
            () = self.serve(&mut commands) => {}
        }
        // The operation in progress was dropped with `serve`'s future.
        while let Ok(command) = commands.try_recv() {
            if let Command::Send { local_id, room, text } = command {
                self.queue(local_id, &room, &text);
            }
        }
    }

    fn emit(&self, event: LiveEvent) {
        // The front end is gone only while stopping; nothing left to tell it then.
        let _ = self.tx.send(event);
    }

    /// The reason, if the connection is gone.
    fn lost(&self) -> Option<String> {
        self.chat.connection().closed().map(|last| ClientError::Closed(last).to_string())
    }

    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        loop {
            let error = match self.offline.take() {
                // Started offline: the first connection's catch-up is still
                // history (`live` stays false until it is done).
                Some(error) => {
                    self.flush_local();
                    error
                }
                None => match self.online(commands).await {
                    Exit::Quit => return,
                    Exit::Lost(error) => {
                        // What a reconnect catches up on arrived during the session: news.
                        self.live = true;
                        error
                    }
                },
            };
            self.emit(LiveEvent::Disconnected { error });
            let mut backoff = BACKOFF_START;
            let mut attempt = 0u32;
            loop {
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        command = commands.recv() => match command {
                            Some(command) => self.offline_command(command),
                            None => return,
                        },
                    }
                }
                attempt += 1;
                match self.dialer.connect().await {
                    Ok((conn, account)) => {
                        // The same engine: one per profile and process.
                        self.chat.reconnected(conn, account);
                        break;
                    }
                    Err(e) if !e.is_transient() => {
                        self.emit(LiveEvent::Stopped {
                            error: format!("cannot reconnect, and retrying will not help: {e}"),
                        });
                        return;
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        self.emit(LiveEvent::Reconnecting { attempt, delay: backoff, error: e.to_string() });
                    }
                }
            }
        }
    }

    /// Subscribes, catches up, then serves commands and events.
    async fn online(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Exit {
        let Some(mut events) = self.chat.connection().take_events() else {
            return Exit::Lost("the connection's events were already taken".into());
        };
        self.emit(LiveEvent::CatchingUp(self.chat.account().clone()));
        self.flush_local();
        // Subscribe first, then catch up: nothing falls between the two.
        if let Err(e) = self.catch_up().await {
            if let Some(lost) = self.lost() {
                return Exit::Lost(lost);
            }
            self.emit(LiveEvent::Failed(e.to_string()));
        }
        self.emit(LiveEvent::Connected(self.chat.account().clone()));
        self.live = true;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return Exit::Quit };
                    if let Err(e) = self.command(command).await {
                        if let Some(lost) = self.lost() {
                            return Exit::Lost(lost);
                        }
                        self.emit(LiveEvent::Failed(e));
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
                        self.emit(LiveEvent::Failed(e.to_string()));
                    }
                }
            }
        }
    }

    /// After (re)connecting: subscribe, Welcomes and external joins, every
    /// room's log, the offline queue, rooms, members, history.
    async fn catch_up(&mut self) -> Result<(), ClientError> {
        self.chat.subscribe().await?;
        let updates = self.chat.catch_up().await?;
        self.updates(updates);
        self.refresh_rooms(false).await?;
        for room in self.chat.local_rooms()? {
            let refused = self.chat.send_queued(&room).await?;
            self.refused(refused);
        }
        for room in self.rooms.clone() {
            self.refresh_members(&room, false).await?;
        }
        self.flush_all();
        Ok(())
    }

    /// Hands over what this device already holds, before any network work.
    fn flush_local(&mut self) {
        if let Ok(rooms) = self.chat.local_rooms() {
            for room in rooms {
                self.flush(&room);
            }
        }
    }

    fn wanted(&self, room: &str) -> bool {
        self.options.only_rooms.as_ref().is_none_or(|only| only.contains(room))
    }

    async fn refresh_rooms(&mut self, requested: bool) -> Result<(), ClientError> {
        let rooms = self.chat.list_rooms().await?;
        self.rooms = rooms.iter().map(|r| r.name.clone()).collect();
        self.emit(LiveEvent::Rooms { rooms, requested });
        Ok(())
    }

    async fn refresh_members(&mut self, room: &str, requested: bool) -> Result<(), ClientError> {
        if !requested && !self.wanted(room) {
            return Ok(());
        }
        let members = self.chat.members(room).await?;
        self.emit(LiveEvent::Members { room: room.to_owned(), members, requested });
        Ok(())
    }

    /// Hands over every history row of `room` not handed over yet.
    fn flush(&mut self, room: &str) {
        if !self.wanted(room) {
            return;
        }
        loop {
            let after = self.shown.get(room).copied().unwrap_or(Seq::ZERO);
            let rows = match self.chat.history(room, after, HISTORY_PAGE) {
                Ok(rows) => rows,
                Err(e) => {
                    self.emit(LiveEvent::Failed(format!("cannot read the history of #{room}: {e}")));
                    return;
                }
            };
            let Some(last) = rows.last().map(|r| r.seq) else { return };
            self.shown.insert(room.to_owned(), last);
            self.emit(LiveEvent::Rows { room: room.to_owned(), rows, live: self.live });
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
                Ok(_) if !self.rooms.contains(&q.room) => {
                    // Its queue went with the room.
                    let error = format!("you are no longer a member of #{}", q.room);
                    self.emit(LiveEvent::SendFailed { local_id: q.local_id, error });
                }
                Ok(ids) if !ids.contains(&q.client_msg_id) => {
                    self.flush(&q.room);
                    self.emit(LiveEvent::Sent { local_id: q.local_id });
                }
                _ => still.push(q),
            }
        }
        self.queued = still;
    }

    /// Passes on what the client library reported; returns the rooms whose
    /// membership changed (their member lists are listed again).
    fn updates(&mut self, updates: Vec<Update>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for update in updates {
            match update {
                // Rows are handed over by `flush`, from the engine's history.
                Update::Row(row) => {
                    if row.kind.is_notice() {
                        changed.insert(row.room.clone());
                    }
                }
                Update::Presence { room, user, online } => {
                    if self.wanted(&room) {
                        self.emit(LiveEvent::Presence { room, user, online });
                    }
                }
                Update::Removed { room } => {
                    self.flush(&room);
                    self.rooms.remove(&room);
                    let why = format!("you are no longer a member of #{room}");
                    self.emit(LiveEvent::Gone { room, why });
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

    /// Serves one command while online. `Err` is a line to show.
    async fn command(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Send { local_id, room, text } => self.send(local_id, &room, &text).await,
            Command::CreateRoom(room) => {
                let summary =
                    self.chat.create_room(&room).await.map_err(|e| format!("cannot create #{room}: {e}"))?;
                self.refresh_rooms(false).await.map_err(|e| e.to_string())?;
                self.refresh_members(&summary.name, false).await.map_err(|e| e.to_string())?;
                self.flush_all();
                self.emit(LiveEvent::Created(summary.name.clone()));
                self.emit(LiveEvent::Info(format!("created #{}; you are its owner", summary.name)));
                Ok(())
            }
            Command::Add { room, users } => {
                self.chat.add(&room, &users).await.map_err(|e| format!("cannot add to #{room}: {e}"))?;
                self.after_change(&room, format!("added {} to #{room}", users.join(", "))).await
            }
            Command::Remove { room, users } => {
                self.chat
                    .remove(&room, &users)
                    .await
                    .map_err(|e| format!("cannot remove from #{room}: {e}"))?;
                self.after_change(&room, format!("removed {} from #{room}", users.join(", "))).await
            }
            Command::SetRole { room, user, role } => {
                self.chat
                    .set_role(&room, &user, role)
                    .await
                    .map_err(|e| format!("cannot change roles in #{room}: {e}"))?;
                self.chat.sync_room(&room).await.map_err(|e| e.to_string())?;
                self.after_change(&room, format!("{user} is now {} of #{room}", role.as_str())).await
            }
            Command::Leave(room) => {
                self.chat.leave(&room).await.map_err(|e| format!("cannot leave #{room}: {e}"))?;
                self.rooms.remove(&room);
                self.emit(LiveEvent::Gone { room: room.clone(), why: format!("you left #{room}") });
                self.refresh_rooms(false).await.map_err(|e| e.to_string())
            }
            Command::SetDisplayName(name) => {
                let info = self
                    .chat
                    .set_display_name(&name)
                    .await
                    .map_err(|e| format!("cannot change your name: {e}"))?;
                let shown = info.display_name.clone();
                self.emit(LiveEvent::Account(info));
                for room in self.rooms.clone() {
                    self.refresh_members(&room, false).await.map_err(|e| e.to_string())?;
                }
                self.emit(LiveEvent::Info(format!("you are now known as {shown}")));
                Ok(())
            }
            Command::Members(room) => self
                .refresh_members(&room, true)
                .await
                .map_err(|e| format!("cannot list the members of #{room}: {e}")),
            Command::Rooms => self.refresh_rooms(true).await.map_err(|e| format!("cannot list rooms: {e}")),
        }
    }

    async fn after_change(&mut self, room: &str, done: String) -> Result<(), String> {
        self.flush_all();
        self.refresh_members(room, false).await.map_err(|e| e.to_string())?;
        self.emit(LiveEvent::Info(done));
        Ok(())
    }

    /// Sends one message: on disk first, then out. If the connection fails
    /// on the way, it stays queued and goes out after the reconnect.
    async fn send(&mut self, local_id: u64, room: &str, text: &str) -> Result<(), String> {
        let Some(client_msg_id) = self.queue_quietly(local_id, room, text) else {
            return Ok(());
        };
        match self.chat.send_queued(room).await {
            Ok(refused) => {
                self.refused(refused);
                self.flush_all();
                Ok(())
            }
            Err(e) if self.lost().is_some() || e.is_transient() => {
                if self.queued.iter().any(|q| q.client_msg_id == client_msg_id) {
                    self.emit(LiveEvent::Queued { local_id });
                }
                Err(e.to_string())
            }
            Err(e) => {
                // Not sent, and not for a passing reason: do not retry it forever.
                if let Some(at) = self.queued.iter().position(|q| q.client_msg_id == client_msg_id) {
                    self.queued.remove(at);
                    let _ = self.chat.drop_queued(client_msg_id);
                }
                self.emit(LiveEvent::SendFailed { local_id, error: e.to_string() });
                Ok(())
            }
        }
    }

    /// Reports queued messages the server refused for good.
    fn refused(&mut self, refused: Vec<(u64, ClientError)>) {
        for (id, error) in refused {
            match self.queued.iter().position(|q| q.client_msg_id == id) {
                Some(at) => {
                    let q = self.queued.remove(at);
                    self.emit(LiveEvent::SendFailed { local_id: q.local_id, error: error.to_string() });
                }
                // Queued by an earlier run: the front end never knew it.
                None => {
                    self.emit(LiveEvent::Failed(format!("a message queued earlier was refused: {error}")))
                }
            }
        }
    }

    /// Puts a message in the engine's on-disk queue; its client id, or
    /// `None` after saying why it cannot be sent.
    fn queue_quietly(&mut self, local_id: u64, room: &str, text: &str) -> Option<u64> {
        match self.chat.queue_message(room, text) {
            Ok(client_msg_id) => {
                self.queued.push(Queued { local_id, room: room.to_owned(), client_msg_id });
                Some(client_msg_id)
            }
            Err(e) => {
                self.emit(LiveEvent::SendFailed { local_id, error: e.to_string() });
                None
            }
        }
    }

    /// Queues a message for the reconnect and says so.
    fn queue(&mut self, local_id: u64, room: &str, text: &str) {
        if self.queue_quietly(local_id, room, text).is_some() {
            self.emit(LiveEvent::Queued { local_id });
        }
    }

    /// Serves one command while offline.
    fn offline_command(&mut self, command: Command) {
        match command {
            Command::Send { local_id, room, text } => self.queue(local_id, &room, &text),
            _ => self.emit(LiveEvent::Failed(
                "offline: reconnecting; only messages can be queued until then".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HistoryKind;

    /// Commands and events cross a process boundary as JSON (the web UI of
    /// issue 16): each keeps its meaning there and back.
    #[test]
    fn commands_and_events_round_trip_through_json() {
        let send = Command::Send { local_id: 3, room: "lab".into(), text: "hi".into() };
        let json = serde_json::to_value(&send).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "send", "data": {"local_id": 3, "room": "lab", "text": "hi"}})
        );
        for command in [send, Command::Leave("lab".into()), Command::Rooms] {
            let back: Command = serde_json::from_str(&serde_json::to_string(&command).unwrap()).unwrap();
            assert_eq!(back, command);
        }
        let row = HistoryRow {
            room: "lab".into(),
            seq: Seq::new(2),
            time_ms: 1_700_000_000_000,
            sender: "bob".into(),
            sender_display: "Bob".into(),
            kind: HistoryKind::Message,
            text: "hello".into(),
        };
        let events = [
            LiveEvent::Rows { room: "lab".into(), rows: vec![row], live: true },
            LiveEvent::Reconnecting { attempt: 2, delay: Duration::from_millis(1500), error: "down".into() },
            LiveEvent::Stopped { error: "certificate changed".into() },
            LiveEvent::Info("created #lab".into()),
        ];
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            let back: LiveEvent = serde_json::from_str(&json).unwrap();
            assert_eq!(back, event, "{json}");
        }
        let stopped = serde_json::to_value(LiveEvent::Stopped { error: "x".into() }).unwrap();
        assert_eq!(stopped, serde_json::json!({"type": "stopped", "data": {"error": "x"}}));
    }
}
