//! Rooms from the client's side: the MLS engine and the server connection
//! working together.
//!
//! [`Chat`] keeps the engine (MLS state and local history in the profile)
//! in step with the server's room logs: it joins rooms from Welcomes or by
//! external commit, replays each log in order, commits membership changes
//! and retries them when another commit won the epoch, and sends messages.
//! Every operation first catches up, so it acts on the room's current epoch.

use std::collections::HashMap;
use std::path::Path;

use conclave_proto::{
    validate_room_name, validate_username, AccountInfo, ClaimedKeyPackage, EntryBody, ErrorCode, Event,
    LogEntry, MemberIdentity, MemberInfo, Request, Response, Role, RoomSummary, Seq, MAX_MESSAGE_BYTES,
};

use crate::engine::{username_of, Applied, Engine, EngineError, HistoryKind, HistoryRow, Item, Meta};
use crate::{ClientError, Connection, DeviceKey};

/// Attempts at a commit that keeps losing the race for an epoch.
const COMMIT_ATTEMPTS: usize = 8;

/// KeyPackages kept on the server; topped up below [`KEY_PACKAGES_LOW`].
pub const KEY_PACKAGES_TARGET: u32 = 20;

/// Below this many KeyPackages on the server, upload more.
pub const KEY_PACKAGES_LOW: u32 = 10;

/// Entries asked for per `Sync` request: the most the server gives in one
/// answer (it also stops at about 1 MiB).
const SYNC_PAGE: u32 = 1000;

/// What happened to a room while catching up, for a front end to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new history row (a message or a notice).
    Row(HistoryRow),
    /// You are no longer a member of this room.
    Removed {
        /// The room.
        room: String,
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
}

/// A connected, authenticated device with its MLS engine.
pub struct Chat {
    conn: Connection,
    engine: Engine,
    account: AccountInfo,
    /// Display names by username, per room, as last seen.
    names: HashMap<String, String>,
}

fn mls(e: EngineError) -> ClientError {
    ClientError::Invalid(e.to_string())
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {r:?}"))
}

/// The leaves of the room's group whose user matches `wanted`.
fn leaves_of(
    engine: &mut Engine,
    room: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<u32>, EngineError> {
    Ok(engine
        .members(room)?
        .into_iter()
        .filter(|(_, identity)| wanted(&username_of(identity)))
        .map(|(leaf, _)| leaf)
        .collect())
}

/// A message text must be non-blank and at most 64 KiB.
fn check_text(text: &str) -> Result<(), ClientError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ClientError::Invalid(format!(
            "message too large: {} bytes, at most {MAX_MESSAGE_BYTES}",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Err(ClientError::Invalid("the message is empty".into()));
    }
    Ok(())
}

fn room_name(raw: &str) -> Result<String, ClientError> {
    validate_room_name(raw).map_err(ClientError::Invalid)
}

impl Chat {
    /// Opens the engine in `profile_dir` for this device.
    pub fn open(
        profile_dir: &Path,
        device: &DeviceKey,
        conn: Connection,
        account: AccountInfo,
    ) -> Result<Self, ClientError> {
        let username = validate_username(&account.username).map_err(|e| {
            ClientError::Protocol(format!("the server authenticated this device as an invalid username: {e}"))
        })?;
        let identity = MemberIdentity::new(username, account.device_id).to_string();
        let engine = Engine::open(&profile_dir.join("mls.db"), &device.seed(), &device.public(), &identity)
            .map_err(mls)?;
        Ok(Self { conn, engine, account, names: HashMap::new() })
    }

    /// Carries on over a new connection (after the old one was lost) with the
    /// same engine: a profile keeps one engine per process. `account` is
    /// what the new connection authenticated as.
    pub fn reconnected(&mut self, conn: Connection, account: AccountInfo) {
        self.conn = conn;
        self.account = account;
    }

    /// The account.
    pub fn account(&self) -> &AccountInfo {
        &self.account
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// This device's MLS engine (the benchmark encrypts ahead of time with it).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Local history of a room after `after_seq`.
    pub fn history(&self, room: &str, after_seq: Seq, limit: usize) -> Result<Vec<HistoryRow>, ClientError> {
        self.engine.history(&room_name(room)?, after_seq, limit).map_err(mls)
    }

    /// Uploads KeyPackages when the server holds few.
    pub async fn ensure_key_packages(&mut self) -> Result<(), ClientError> {
        let available = match self.conn.request(Request::KeyPackageCount).await? {
            Response::KeyPackageCount { available } => available,
            other => return Err(unexpected(other)),
        };
        if available < KEY_PACKAGES_LOW {
            self.upload_key_packages(KEY_PACKAGES_TARGET - available).await?;
        }
        Ok(())
    }

    async fn upload_key_packages(&mut self, count: u32) -> Result<(), ClientError> {
        let key_packages = self.engine.new_key_packages(count as usize).map_err(mls)?;
        let last_resort = Some(self.engine.last_resort_key_package().map_err(mls)?);
        match self.conn.request(Request::UploadKeyPackages { key_packages, last_resort }).await? {
            Response::KeyPackageCount { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a room owned by this user.
    pub async fn create_room(&mut self, raw: &str) -> Result<RoomSummary, ClientError> {
        let name = conclave_proto::validate_new_room_name(raw).map_err(ClientError::Invalid)?;
        let mut group_id = vec![0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut group_id);
        if self.engine.has_group(&name) {
            self.engine.forget_room(&name).map_err(mls)?;
        }
        let group_info = self.engine.create_group(&name, &group_id).map_err(mls)?;
        match self.conn.request(Request::CreateRoom { name: name.clone(), group_id, group_info }).await {
            Ok(Response::Room(summary)) => {
                self.engine.set_last_seq(&name, Seq::FIRST).map_err(mls)?;
                Ok(summary)
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => {
                let _ = self.engine.forget_room(&name);
                Err(e)
            }
        }
    }

    /// The rooms this user is a member of.
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>, ClientError> {
        match self.conn.request(Request::ListRooms).await? {
            Response::Rooms(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// A room's members, with roles and presence.
    pub async fn members(&mut self, raw: &str) -> Result<Vec<MemberInfo>, ClientError> {
        let room = room_name(raw)?;
        match self.conn.request(Request::Members { room }).await? {
            Response::Members(list) => {
                for m in &list {
                    self.names.insert(m.username.clone(), m.display_name.clone());
                }
                Ok(list)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Joins rooms this device has been added to (Welcomes) and rooms its
    /// user is in but this device is not (by external commit), then catches
    /// up on every room. Returns what changed.
    pub async fn catch_up(&mut self) -> Result<Vec<Update>, ClientError> {
        let mut updates = Vec::new();
        self.ensure_key_packages().await?;
        match self.conn.request(Request::PendingWelcomes).await? {
            Response::Welcomes(list) => {
                for w in list {
                    if !self.engine.has_group(&w.room) {
                        if let Err(e) =
                            self.engine.join_from_welcome(&w.room, &w.welcome, w.joined_seq.prev())
                        {
                            tracing::warn!(room = %w.room, error = %e, "cannot join from Welcome; will join by external commit");
                        }
                    }
                }
            }
            other => return Err(unexpected(other)),
        }
        let rooms = self.list_rooms().await?;
        for summary in &rooms {
            if !self.engine.has_group(&summary.name) {
                self.join_external(&summary.name).await?;
            }
            updates.extend(self.sync_room(&summary.name).await?);
        }
        // Rooms this device still holds but its user left or was removed
        // from while it was away: syncing reads the removal, or learns that
        // the room is gone, and forgets it.
        for room in self.engine.rooms().map_err(mls)? {
            if !rooms.iter().any(|r| r.name == room) && self.engine.has_group(&room) {
                updates.extend(self.sync_room(&room).await?);
            }
        }
        Ok(updates)
    }

    /// Joins a room by external commit from its latest GroupInfo (a new
    /// device of a member, or a device that lost its state).
    async fn join_external(&mut self, room: &str) -> Result<(), ClientError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let group_info = match self.conn.request(Request::GetGroupInfo { room: room.to_owned() }).await? {
                Response::GroupInfo { group_info, .. } => group_info,
                other => return Err(unexpected(other)),
            };
            let out = self.engine.join_external(room, &group_info).map_err(mls)?;
            match self.submit(room, out).await {
                Ok(seq) => {
                    self.engine.set_last_seq(room, seq).map_err(mls)?;
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::STALE_EPOCH) => {}
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Invalid(format!("could not join #{room}: the room kept changing; try again")))
    }

    /// Replays a room's log from where this device left off.
    ///
    /// Pages of [`SYNC_PAGE`] entries are asked for one ahead: the next page
    /// is requested as soon as one arrives, so the server reads it while this
    /// device processes the one in hand. Each page is applied as one batch
    /// (one SQLite transaction, [`Engine::apply_batch`]); a batch that fails
    /// rolls back whole and its page is then applied one entry at a time,
    /// which finds the entry at fault (a commit this device cannot follow
    /// makes it rejoin).
    pub async fn sync_room(&mut self, raw: &str) -> Result<Vec<Update>, ClientError> {
        let room = room_name(raw)?;
        if !self.engine.has_group(&room) {
            return Err(ClientError::Invalid(format!("not a member of #{room}")));
        }
        let mut updates = Vec::new();
        // Fresh display names for the entries about to be shown.
        match self.members(&room).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NOT_A_MEMBER) => {}
            Err(e) => return Err(e),
        }
        let mut after_seq = self.engine.last_seq(&room).map_err(mls)?;
        let mut next = Some(self.start_sync(&room, after_seq).await?);
        while let Some(answer) = next.take() {
            let (entries, more) = match answer.answer().await {
                Ok(Response::Log { entries, more }) => (entries, more),
                Ok(other) => return Err(unexpected(other)),
                Err(e) if e.code() == Some(ErrorCode::NOT_A_MEMBER) && self.engine.has_group(&room) => {
                    // Removed while away.
                    self.engine.forget_room(&room).map_err(mls)?;
                    updates.push(Update::Removed { room: room.clone() });
                    return Ok(updates);
                }
                Err(e) => return Err(e),
            };
            let page_end = entries.last().map_or(after_seq, |e| e.seq);
            if more {
                next = Some(self.start_sync(&room, page_end).await?);
            }
            if self.apply_page(&room, &entries, &mut updates).await? {
                return Ok(updates);
            }
            after_seq = self.engine.last_seq(&room).map_err(mls)?;
            if next.is_some() && after_seq != page_end {
                // A rejoin moved this device elsewhere in the log: the page
                // asked for ahead is not the one that follows now.
                next = Some(self.start_sync(&room, after_seq).await?);
            }
        }
        Ok(updates)
    }

    /// Asks for the page of `room`'s log after `after_seq`, without waiting.
    async fn start_sync(&self, room: &str, after_seq: Seq) -> Result<crate::connection::Answer, ClientError> {
        self.conn.start_request(Request::Sync { room: room.to_owned(), after_seq, limit: SYNC_PAGE }).await
    }

    /// Applies one page of the log as one batch (falling back to one entry
    /// at a time if the batch fails); true if it ended our membership.
    async fn apply_page(
        &mut self,
        room: &str,
        entries: &[LogEntry],
        updates: &mut Vec<Update>,
    ) -> Result<bool, ClientError> {
        let before = self.engine.last_seq(room).map_err(mls)?;
        let batch: Vec<(Meta, Item<'_>)> = entries.iter().map(|e| self.entry_item(room, e)).collect();
        let applied = match self.engine.apply_batch(room, &batch) {
            Ok(applied) => applied,
            Err(e) => {
                // Rolled back whole: find the entry at fault one at a time.
                tracing::debug!(%room, error = %e, "a batch of log entries failed; applying them one by one");
                for entry in entries {
                    if self.apply(room, entry, updates).await? {
                        return Ok(true);
                    }
                }
                return Ok(false);
            }
        };
        let removed_at = match applied.last() {
            Some(Applied::Commit { self_removed: true, .. }) => entries.get(applied.len() - 1).map(|e| e.seq),
            _ => None,
        };
        let last = removed_at.map_or_else(|| self.engine.last_seq(room).map_err(mls), Ok)?;
        if last > before {
            let shown = usize::try_from(last.since(before)).unwrap_or(usize::MAX).min(entries.len());
            let rows = self.engine.history(room, before, shown).map_err(mls)?;
            let wanted = |seq: Seq| seq <= last && Some(seq) != removed_at;
            updates.extend(rows.into_iter().filter(|r| wanted(r.seq)).map(Update::Row));
        }
        if removed_at.is_some() {
            self.engine.forget_room(room).map_err(mls)?;
            updates.push(Update::Removed { room: room.to_owned() });
            return Ok(true);
        }
        Ok(false)
    }

    /// What the engine needs to know about one log entry.
    fn entry_item<'e>(&self, room: &str, entry: &'e LogEntry) -> (Meta, Item<'e>) {
        let me = &self.account;
        let mine = entry.sender == me.username && entry.sender_device == me.device_id;
        let sender_display = self.names.get(&entry.sender).cloned().unwrap_or_else(|| entry.sender.clone());
        let mut meta = Meta {
            seq: entry.seq,
            time_ms: entry.time_ms,
            sender: entry.sender.clone(),
            sender_display,
            kind: HistoryKind::Notice,
            text: None,
            own_client_msg_id: None,
        };
        let item = match &entry.body {
            EntryBody::Created => {
                meta.kind = HistoryKind::Notice;
                meta.text = Some(format!("{} created #{room}", entry.sender));
                Item::Skip
            }
            EntryBody::Commit { commit, added, removed } => {
                let mut notes = Vec::new();
                if !added.is_empty() {
                    notes.push(format!("{} joined #{room}", added.join(", ")));
                }
                if !removed.is_empty() {
                    notes.push(format!("{} removed {}", entry.sender, removed.join(", ")));
                }
                meta.kind = if added.is_empty() && removed.is_empty() {
                    HistoryKind::Commit
                } else if removed.is_empty() {
                    HistoryKind::Join
                } else {
                    HistoryKind::Remove
                };
                meta.text = (!notes.is_empty()).then(|| notes.join("; "));
                Item::Commit(commit)
            }
            EntryBody::Message { client_msg_id, ciphertext } => {
                meta.kind = HistoryKind::Message;
                if mine {
                    meta.own_client_msg_id = Some(*client_msg_id);
                    Item::Skip
                } else {
                    Item::Message(ciphertext)
                }
            }
            EntryBody::Left { user } => {
                meta.kind = HistoryKind::Leave;
                meta.text = Some(format!("{user} left"));
                Item::Skip
            }
            EntryBody::RoleChanged { user, role } => {
                meta.kind = HistoryKind::Role;
                meta.text = Some(format!("{} made {user} {}", entry.sender, role.as_str()));
                Item::Skip
            }
        };
        (meta, item)
    }

    /// Applies one entry; true if it ended our membership.
    async fn apply(
        &mut self,
        room: &str,
        entry: &LogEntry,
        updates: &mut Vec<Update>,
    ) -> Result<bool, ClientError> {
        let (meta, item) = self.entry_item(room, entry);
        let applied = match self.engine.apply(room, &meta, item) {
            Ok(applied) => applied,
            Err(e @ crate::engine::EngineError::OutOfStep { .. }) => {
                // Our group state cannot follow this commit: rejoin the
                // room's current epoch by external commit (which replaces
                // the old state and keeps queued messages).
                tracing::warn!(%room, seq = %entry.seq, error = %e, "cannot process a commit; rejoining");
                self.join_external(room).await?;
                return Ok(false);
            }
            Err(e) => return Err(mls(e)),
        };
        if let Applied::Commit { self_removed: true, .. } = applied {
            self.engine.forget_room(room).map_err(mls)?;
            updates.push(Update::Removed { room: room.to_owned() });
            return Ok(true);
        }
        if !matches!(applied, Applied::Duplicate) {
            if let Some(row) = self
                .engine
                .history(room, entry.seq.prev(), 1)
                .map_err(mls)?
                .into_iter()
                .find(|r| r.seq == entry.seq)
            {
                updates.push(Update::Row(row));
            }
        }
        Ok(false)
    }

    /// Commits the removal of leaves whose users are no longer members (they
    /// left, or were removed while some device of theirs was still in the
    /// group), so nothing is encrypted to them.
    async fn remove_departed(&mut self, room: &str) -> Result<(), ClientError> {
        let members: Vec<String> = self.members(room).await?.into_iter().map(|m| m.username).collect();
        let stale =
            leaves_of(&mut self.engine, room, |user| !members.iter().any(|m| m == user)).map_err(mls)?;
        if stale.is_empty() {
            return Ok(());
        }
        self.commit_with(room, |engine, room| {
            let stale = leaves_of(engine, room, |user| !members.iter().any(|m| m == user))?;
            engine.remove_leaves(room, &stale)
        })
        .await
        .map(drop)
    }

    /// Submits a pending commit: merged when the server accepts it (its
    /// sequence number is returned), dropped when the server refuses it.
    async fn submit(&mut self, room: &str, out: crate::engine::Outgoing) -> Result<Seq, ClientError> {
        let req = Request::Commit {
            room: room.to_owned(),
            commit: out.commit,
            welcome: out.welcome,
            group_info: out.group_info,
        };
        match self.conn.request(req).await {
            Ok(Response::Accepted { seq }) => {
                self.engine.merge_pending(room).map_err(mls)?;
                Ok(seq)
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) if e.code() == Some(ErrorCode::STALE_EPOCH) => {
                self.engine.discard_pending(room).map_err(mls)?;
                Err(e)
            }
            Err(e) => {
                let _ = self.engine.discard_pending(room);
                Err(e)
            }
        }
    }

    /// Makes a commit with `make`, submits it, and retries at the new epoch
    /// when another commit won the race.
    async fn commit_with(
        &mut self,
        room: &str,
        mut make: impl FnMut(&mut Engine, &str) -> Result<crate::engine::Outgoing, crate::engine::EngineError>,
    ) -> Result<Seq, ClientError> {
        for attempt in 0..COMMIT_ATTEMPTS {
            let out = make(&mut self.engine, room).map_err(mls)?;
            match self.submit(room, out).await {
                Ok(seq) => return Ok(seq),
                Err(e) if e.code() == Some(ErrorCode::STALE_EPOCH) => {
                    tracing::debug!(%room, attempt, "commit lost the race; syncing and retrying");
                    self.sync_room(room).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Invalid(format!("#{room} kept changing; the change was not made, try again")))
    }

    /// Adds users (every device of each) to a room.
    pub async fn add(&mut self, raw: &str, users: &[String]) -> Result<Seq, ClientError> {
        let room = room_name(raw)?;
        self.sync_room(&room).await?;
        self.remove_departed(&room).await?;
        let packages: Vec<ClaimedKeyPackage> = match self
            .conn
            .request(Request::ClaimKeyPackages { room: room.clone(), users: users.to_vec() })
            .await?
        {
            Response::KeyPackages(list) => list,
            other => return Err(unexpected(other)),
        };
        let kps: Vec<Vec<u8>> = packages.into_iter().map(|p| p.key_package).collect();
        self.commit_with(&room, |engine, room| engine.add_members(room, &kps)).await
    }

    /// Removes users (every device of each) from a room.
    pub async fn remove(&mut self, raw: &str, users: &[String]) -> Result<Seq, ClientError> {
        let room = room_name(raw)?;
        self.sync_room(&room).await?;
        let users: Vec<String> = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        if users.contains(&self.account.username) {
            return Err(ClientError::Invalid("to remove yourself, leave the room".into()));
        }
        let members = self.members(&room).await?;
        for u in &users {
            if !members.iter().any(|m| m.username == *u) {
                return Err(ClientError::Invalid(format!("{u} is not a member of #{room}")));
            }
        }
        // The leaves are looked up again on every attempt: a lost race may
        // have changed the tree.
        self.commit_with(&room, |engine, room| {
            let leaves = leaves_of(engine, room, |user| users.iter().any(|u| u == user))?;
            if leaves.is_empty() {
                return Err(EngineError::Invalid("none of them has a device in the room's group".into()));
            }
            engine.remove_leaves(room, &leaves)
        })
        .await
    }

    /// Leaves a room.
    pub async fn leave(&mut self, raw: &str) -> Result<Seq, ClientError> {
        let room = room_name(raw)?;
        let seq = match self.conn.request(Request::Leave { room: room.clone() }).await? {
            Response::Accepted { seq } => seq,
            other => return Err(unexpected(other)),
        };
        self.engine.forget_room(&room).map_err(mls)?;
        Ok(seq)
    }

    /// Gives a member a role (owner only).
    pub async fn set_role(&mut self, raw: &str, user: &str, role: Role) -> Result<Seq, ClientError> {
        let room = room_name(raw)?;
        match self.conn.request(Request::SetRole { room, user: user.to_owned(), role }).await? {
            Response::Accepted { seq } => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    /// Encrypts and sends a message; returns its sequence number. A message
    /// that could not be sent stays queued and is sent by [`Chat::resend_pending`].
    pub async fn send(&mut self, raw: &str, text: &str) -> Result<Seq, ClientError> {
        let room = room_name(raw)?;
        check_text(text)?;
        if !self.engine.has_group(&room) {
            self.catch_up().await?;
            if !self.engine.has_group(&room) {
                return Err(ClientError::Invalid(format!("not a member of #{room}")));
            }
        }
        self.sync_room(&room).await?;
        self.remove_departed(&room).await?;
        // 63 random bits: ids are stored as SQLite's signed integers.
        let client_msg_id = rand::Rng::gen::<u64>(&mut rand::rngs::OsRng) >> 1;
        self.engine.queue_outgoing(&room, client_msg_id, text).map_err(mls)?;
        let seq = match self.deliver(&room, client_msg_id, text).await {
            Ok(seq) => seq,
            // Connection trouble: it stays queued and goes out on reconnect.
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // Refused for good: keeping it queued would retry it forever.
                self.engine.drop_outgoing(client_msg_id).map_err(mls)?;
                return Err(e);
            }
        };
        self.sync_room(&room).await?;
        Ok(seq)
    }

    async fn deliver(&mut self, room: &str, client_msg_id: u64, text: &str) -> Result<Seq, ClientError> {
        let ciphertext = self.engine.encrypt(room, text.as_bytes()).map_err(mls)?;
        match self.conn.request(Request::Send { room: room.to_owned(), client_msg_id, ciphertext }).await? {
            Response::Accepted { seq } => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    /// Sends messages queued while offline (or whose ack was lost: the
    /// server recognises the id and stores each once).
    pub async fn resend_pending(&mut self) -> Result<(), ClientError> {
        for room in self.engine.rooms().map_err(mls)? {
            let pending = self.engine.pending_outgoing(&room).map_err(mls)?;
            if pending.is_empty() {
                continue;
            }
            self.sync_room(&room).await?;
            if !self.engine.has_group(&room) {
                // Removed meanwhile: its queue went with the room.
                continue;
            }
            for (id, text) in self.engine.pending_outgoing(&room).map_err(mls)? {
                match self.deliver(&room, id, &text).await {
                    Ok(_) => {}
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "a queued message could not be sent and was dropped");
                        self.engine.drop_outgoing(id).map_err(mls)?;
                    }
                }
            }
            self.sync_room(&room).await?;
        }
        Ok(())
    }

    /// Changes this user's display name. A name the rules refuse is refused
    /// here, with the server's message, before anything is sent.
    pub async fn set_display_name(&mut self, name: &str) -> Result<AccountInfo, ClientError> {
        let name =
            conclave_proto::validate_display_name(name).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let display_name = name.as_str().to_owned();
        match self.conn.request(Request::SetDisplayName { display_name }).await? {
            Response::WhoAmI(info) => {
                self.names.insert(info.username.clone(), info.display_name.clone());
                self.account = info.clone();
                Ok(info)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Asks for live events; returns the rooms.
    pub async fn subscribe(&self) -> Result<Vec<RoomSummary>, ClientError> {
        match self.conn.request(Request::Subscribe).await? {
            Response::Rooms(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Handles one pushed event, returning what changed.
    pub async fn handle_event(&mut self, event: Event) -> Result<Vec<Update>, ClientError> {
        match event {
            Event::Entry { room, entry } => {
                if !self.engine.has_group(&room) {
                    return self.catch_up().await;
                }
                let last = self.engine.last_seq(&room).map_err(mls)?;
                if entry.seq <= last {
                    return Ok(Vec::new());
                }
                if entry.seq == last.next() {
                    let mut updates = Vec::new();
                    self.apply(&room, &entry, &mut updates).await?;
                    Ok(updates)
                } else {
                    // A gap: the log is the truth.
                    self.sync_room(&room).await
                }
            }
            Event::Welcome(w) => {
                if !self.engine.has_group(&w.room) {
                    if let Err(e) = self.engine.join_from_welcome(&w.room, &w.welcome, w.joined_seq.prev()) {
                        tracing::warn!(room = %w.room, error = %e, "cannot join from Welcome; joining by external commit");
                        self.join_external(&w.room).await?;
                    }
                }
                self.sync_room(&w.room).await
            }
            // Our own presence is news to nobody here.
            Event::Presence { user, .. } if user == self.account.username => Ok(Vec::new()),
            Event::Presence { room, user, online } => Ok(vec![Update::Presence { room, user, online }]),
            Event::KeyPackagesLow { .. } => {
                self.ensure_key_packages().await?;
                Ok(Vec::new())
            }
        }
    }
}

/// For front ends that stay open while the network comes and goes (the TUI).
impl Chat {
    /// Queues a message in this device's outgoing queue without touching the
    /// network; [`Chat::resend_pending`] sends it after the next connect. The
    /// queue is on disk, so the message survives a restart too. Ids grow with
    /// time, so messages queued one after another are sent in that order.
    /// Returns the message's client id.
    pub fn queue_message(&mut self, raw: &str, text: &str) -> Result<u64, ClientError> {
        let room = room_name(raw)?;
        check_text(text)?;
        if !self.engine.has_group(&room) {
            return Err(ClientError::Invalid(format!("not a member of #{room}")));
        }
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Milliseconds in the high bits (ordered), 21 random low bits, and
        // 63 bits in all: ids are stored as SQLite's signed integers.
        let random = rand::Rng::gen::<u64>(&mut rand::rngs::OsRng) & ((1 << 21) - 1);
        let client_msg_id = ((millis << 21) | random) & (u64::MAX >> 1);
        self.engine.queue_outgoing(&room, client_msg_id, text).map_err(mls)?;
        Ok(client_msg_id)
    }

    /// Sends this device's queued messages to `room`, oldest first, after
    /// catching up on the room and removing departed members' leaves (as
    /// [`Chat::send`] does). Returns those the server refused for good,
    /// which are dropped from the queue; a connection failure stops it with
    /// the rest still queued.
    pub async fn send_queued(&mut self, raw: &str) -> Result<Vec<(u64, ClientError)>, ClientError> {
        let room = room_name(raw)?;
        let mut refused = Vec::new();
        if self.engine.pending_outgoing(&room).map_err(mls)?.is_empty() {
            return Ok(refused);
        }
        self.sync_room(&room).await?;
        if !self.engine.has_group(&room) {
            // Removed meanwhile: its queue went with the room.
            return Ok(refused);
        }
        self.remove_departed(&room).await?;
        for (id, text) in self.engine.pending_outgoing(&room).map_err(mls)? {
            match self.deliver(&room, id, &text).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.engine.drop_outgoing(id).map_err(mls)?;
                    refused.push((id, e));
                }
            }
        }
        self.sync_room(&room).await?;
        Ok(refused)
    }

    /// Drops a message from the outgoing queue (it will not be sent).
    pub fn drop_queued(&mut self, client_msg_id: u64) -> Result<(), ClientError> {
        self.engine.drop_outgoing(client_msg_id).map_err(mls)
    }

    /// The rooms this device holds MLS state for (no network).
    pub fn local_rooms(&self) -> Result<Vec<String>, ClientError> {
        self.engine.rooms().map_err(mls)
    }

    /// Client ids of this device's messages to `room` not yet seen in its log.
    pub fn pending_ids(&self, raw: &str) -> Result<Vec<u64>, ClientError> {
        let room = room_name(raw)?;
        Ok(self.engine.pending_outgoing(&room).map_err(mls)?.into_iter().map(|(id, _)| id).collect())
    }
}
