//! One room's actor: the single owner of the room's keyless MLS group, its
//! members, its next sequence number and its live subscribers.
//!
//! Every change follows the same steps: check, build the durable writes,
//! hand them to the log writer and wait until they are on disk, then update
//! memory, answer, and fan the entry out (encoded once, shared by every
//! recipient). Consecutive `Send`s are taken as one batch, so a busy room
//! costs one fsync per batch. A subscriber whose queue is full is
//! disconnected; it re-syncs from the log. Who may change the room is
//! decided by [`super::policy`]; this file gathers the facts and carries
//! the plan out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use conclave_proto::{
    decode_entry, encode_entry, encode_to_bytes, validate_username, ClaimedKeyPackage, EntryBody, ErrorBody,
    ErrorCode, Event, LogEntry, MemberInfo, Role, RoomSummary, Seq, ServerFrame, WelcomeItem,
    MAX_MESSAGE_BYTES,
};
use tokio::sync::mpsc;

use super::policy::{self, CommitFacts, CommitRecord, RoomError, RoomView};
use super::{Reply, RoomCmd};
use crate::hub::{ConnId, SessionHandle};
use crate::mls::{AddedMember, RoomGroup};
use crate::store::{DeviceAccount, DeviceKey, DeviceNo, RoomId, RoomMember, UserId, WriteOp};
use crate::Shared;

/// Sends handled as one batch at most.
const SEND_BATCH: usize = 1024;

/// Batches of sends on their way to disk at once, per room.
const WRITES_IN_FLIGHT: usize = 4;

/// A batch of sends handed to the log writer, answered when durable.
struct InFlight {
    done: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ErrorBody>> + Send>>,
    waiting: Vec<(Reply<Seq>, Seq)>,
    frames: Vec<Bytes>,
    new_ids: Vec<((UserId, DeviceNo, u64), Seq)>,
    error: Option<RoomError>,
    /// The next sequence number after this batch.
    end_seq: Seq,
}

/// Message ids remembered per room for deduplicating retries.
pub const RECENT_IDS: usize = 100_000;

/// Past epochs whose application messages are still accepted: a message in
/// flight across a commit is not lost (clients keep as many past epochs).
pub const EPOCH_WINDOW: u64 = 5;

/// Ciphertext allowed for one message: the text limit plus MLS overhead.
const MAX_CIPHERTEXT: usize = MAX_MESSAGE_BYTES + 4096;

/// KeyPackages below which a device is told to upload more.
pub const KEY_PACKAGES_LOW: u32 = 5;

pub struct RoomActor {
    shared: Arc<Shared>,
    id: RoomId,
    name: String,
    group_id: Vec<u8>,
    group: RoomGroup,
    group_info: Vec<u8>,
    members: HashMap<UserId, RoomMember>,
    next_seq: Seq,
    recent: HashMap<(UserId, DeviceNo, u64), Seq>,
    recent_order: VecDeque<(UserId, DeviceNo, u64)>,
    subscribers: HashMap<ConnId, SessionHandle>,
    /// Sequence numbers below this are on disk.
    durable_next: Seq,
    /// The last member left and the room was deleted: the actor takes no
    /// more commands (the registry starts afresh for the name).
    deleted: bool,
}

fn internal(what: impl std::fmt::Display) -> RoomError {
    tracing::error!(%what, "room failure");
    RoomError::Internal
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RoomActor {
    /// Loads a room from storage; `None` if it does not exist.
    pub async fn load(shared: Arc<Shared>, name: String) -> Result<Option<Self>, RoomError> {
        let store = shared.store.clone();
        let lookup = name.clone();
        let loaded = crate::blocking::run(move || {
            let Some(record) = store.room_by_name(&lookup)? else { return Ok(None) };
            let members = store.room_members(record.id)?;
            let recent = store.recent_client_ids(record.id, RECENT_IDS)?;
            Ok(Some((record, members, recent)))
        })
        .await?
        .map_err(|e: crate::store::StoreError| internal(e))?;
        let Some((record, members, recent)) = loaded else { return Ok(None) };
        // The saved state is preferred: rebuilding from the GroupInfo fails
        // once a member's leaf has outlived its lifetime without an update.
        let group = match &record.group_state {
            Some(state) => RoomGroup::from_snapshot(state, &record.group_id),
            None => RoomGroup::from_group_info(&record.group_info, &record.group_id),
        }
        .map_err(|e| internal(format!("room {name}: cannot restore its group: {e}")))?;
        let mut recent_order = VecDeque::with_capacity(recent.len());
        let mut recent_map = HashMap::with_capacity(recent.len());
        for (key, seq) in recent.into_iter().rev() {
            recent_order.push_back(key);
            recent_map.insert(key, seq);
        }
        Ok(Some(Self {
            shared,
            id: record.id,
            name,
            group_id: record.group_id,
            group,
            group_info: record.group_info,
            members: members.into_iter().map(|m| (m.user, m)).collect(),
            next_seq: record.head_seq.next(),
            recent: recent_map,
            recent_order,
            subscribers: HashMap::new(),
            durable_next: record.head_seq.next(),
            deleted: false,
        }))
    }

    /// Serves commands until every handle is gone.
    ///
    /// Consecutive `Send`s are taken as one batch and handed to the log
    /// writer; while up to [`WRITES_IN_FLIGHT`] batches are on their way to
    /// disk the next one is prepared, and each is answered and fanned out
    /// when it is durable, in order. Any other command first waits for every
    /// write in flight. A failed write refuses everything in flight and
    /// reloads the room from storage in place, keeping its subscribers (see
    /// [`Self::reload`]), so nothing is answered from a state the disk does
    /// not have and no member silently stops receiving the room.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        let mut deferred = None;
        let mut writing: VecDeque<InFlight> = VecDeque::new();
        loop {
            let cmd = match deferred.take() {
                Some(cmd) => cmd,
                None => {
                    let next = tokio::select! {
                        biased;
                        result = async {
                            match writing.front_mut() {
                                Some(w) => (&mut w.done).await,
                                None => std::future::pending().await,
                            }
                        }, if !writing.is_empty() => Err(result),
                        cmd = rx.recv(), if writing.len() < WRITES_IN_FLIGHT => Ok(cmd),
                    };
                    match next {
                        Err(result) => {
                            let Some(w) = writing.pop_front() else { continue };
                            if !self.finish(w, result, &mut writing) && !self.reload(&mut writing).await {
                                return;
                            }
                            continue;
                        }
                        Ok(Some(cmd)) => cmd,
                        Ok(None) => break,
                    }
                }
            };
            if let RoomCmd::Send { .. } = cmd {
                let mut batch = vec![cmd];
                while batch.len() < SEND_BATCH {
                    match rx.try_recv() {
                        Ok(more @ RoomCmd::Send { .. }) => batch.push(more),
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                match self.sends(batch).await {
                    Ok(Some(w)) => writing.push_back(w),
                    Ok(None) => {}
                    Err(w) => {
                        self.fail_all(w, &mut writing);
                        if !self.reload(&mut writing).await {
                            return;
                        }
                    }
                }
            } else {
                // A non-member is answered at once: not after the writes in
                // flight, which would tell them the room exists and is busy.
                let Some(cmd) = self.refuse_outsider(cmd) else { continue };
                if !self.drain(&mut writing).await && !self.reload(&mut writing).await {
                    return;
                }
                self.handle(cmd).await;
                // Whatever it wrote, it waited for.
                self.durable_next = self.next_seq;
                if self.deleted {
                    // Handles now find the room stopped, and the registry
                    // looks the name up afresh; what is queued is refused
                    // (no members are left).
                    rx.close();
                }
            }
        }
        if self.drain(&mut writing).await {
            tracing::debug!(room = %self.name, "room actor stopped");
        }
    }

    /// Answers a command from a user who is not a member (what the absent
    /// room would answer); gives back any other command.
    fn refuse_outsider(&self, cmd: RoomCmd) -> Option<RoomCmd> {
        let from = match &cmd {
            RoomCmd::Commit { from, .. }
            | RoomCmd::Claim { from, .. }
            | RoomCmd::Members { from, .. }
            | RoomCmd::Summary { from, .. }
            | RoomCmd::ReadAccess { from, .. }
            | RoomCmd::GroupInfo { from, .. }
            | RoomCmd::SetRole { from, .. }
            | RoomCmd::Leave { from, .. } => from,
            RoomCmd::Send { .. }
            | RoomCmd::Subscribe(_)
            | RoomCmd::Unsubscribe(_)
            | RoomCmd::Presence { .. } => return Some(cmd),
        };
        if self.members.contains_key(&from.user) {
            return Some(cmd);
        }
        // Unnamed, as the absent room's: `RoomHandle::start_as` names it.
        refuse(cmd, RoomError::NotAMember { room: String::new() });
        None
    }

    /// Waits for every write in flight, answering and fanning out each in
    /// order. Returns false if one failed (everything in flight is refused,
    /// and left in `writing` for [`Self::reload`] to wait for).
    async fn drain(&mut self, writing: &mut VecDeque<InFlight>) -> bool {
        while let Some(mut w) = writing.pop_front() {
            let result = (&mut w.done).await;
            if !self.finish(w, result, writing) {
                return false;
            }
        }
        true
    }

    /// A batch is durable (or not): answer it and fan it out. Returns false
    /// if it failed (it and everything after it are refused; the later
    /// batches stay in `later`, still on their way to disk).
    fn finish(&mut self, w: InFlight, result: Result<(), ErrorBody>, later: &mut VecDeque<InFlight>) -> bool {
        if let Err(e) = result {
            let mut w = w;
            w.error = Some(RoomError::Unavailable(e));
            self.fail_all(w, later);
            return false;
        }
        self.durable_next = self.durable_next.max(w.end_seq);
        for (key, seq) in w.new_ids {
            self.remember(key, seq);
        }
        for (reply, seq) in w.waiting {
            let _ = reply.send(Ok(seq));
        }
        self.fan_out_all(&w.frames);
        true
    }

    /// Refuses a failed batch and everything written after it. Later batches
    /// may reach the disk all the same: their senders retry, and the
    /// reloaded room answers the retries from the log. They stay in `later`
    /// (answered), for [`Self::reload`] to wait for.
    fn fail_all(&mut self, w: InFlight, later: &mut VecDeque<InFlight>) {
        let error = w.error.clone().unwrap_or_else(|| internal("log write failed"));
        tracing::error!(room = %self.name, "a log write failed; the room reloads from storage");
        for (reply, _) in w.waiting {
            let _ = reply.send(Err(error.clone()));
        }
        for l in later.iter_mut() {
            for (reply, _) in std::mem::take(&mut l.waiting) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    /// After a failed write: waits for the batches still on their way to
    /// disk (`writing`, already refused), then reloads the room's state from
    /// storage in place (the same task, queue and subscribers), so that the
    /// room goes on from what the disk has: a batch that lands after the
    /// reload would take sequence numbers the room hands out again. Entries
    /// that reached the disk but were never fanned out (batches after the
    /// failed one) are sent to the subscribers now.
    /// Returns false if the room cannot be loaded: then every subscriber is
    /// disconnected (its client reconnects and re-syncs from the log) and the
    /// actor stops; the registry starts a fresh one on next use.
    async fn reload(&mut self, writing: &mut VecDeque<InFlight>) -> bool {
        while let Some(mut w) = writing.pop_front() {
            let _ = (&mut w.done).await;
        }
        let fresh = match Self::load(self.shared.clone(), self.name.clone()).await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => {
                tracing::error!(room = %self.name, "the room is gone from storage; disconnecting its subscribers");
                self.kick_all("could not be reloaded from storage");
                return false;
            }
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "cannot reload the room; disconnecting its subscribers");
                self.kick_all("could not be reloaded from storage");
                return false;
            }
        };
        let missed_from = self.durable_next;
        let subscribers = std::mem::take(&mut self.subscribers);
        *self = fresh;
        self.subscribers =
            subscribers.into_iter().filter(|(_, s)| self.members.contains_key(&s.user)).collect();
        tracing::info!(room = %self.name, subscribers = self.subscribers.len(), "room reloaded after a failed write");
        if missed_from < self.next_seq {
            self.replay(missed_from).await;
        }
        true
    }

    /// Fans out the stored entries from `from` on (after a reload). If they
    /// cannot be read, the subscribers are disconnected so they re-sync.
    async fn replay(&mut self, from: Seq) {
        let store = self.shared.store.clone();
        let (room, end) = (self.id, self.next_seq.get());
        let read = crate::blocking::run(move || {
            let mut raw = Vec::new();
            let mut after = from.prev().get();
            while after + 1 < end {
                let (batch, _) = store.read_log(
                    room,
                    Seq::new(after),
                    (end - after) as usize,
                    crate::handlers::rooms::SYNC_MAX_BYTES,
                )?;
                if batch.is_empty() {
                    break;
                }
                after += batch.len() as u64;
                raw.extend(batch);
            }
            Ok::<_, crate::store::StoreError>(raw)
        })
        .await;
        let frames: Result<Vec<Bytes>, String> = match read {
            Ok(Ok(raw)) => raw
                .iter()
                .map(|bytes| {
                    let entry = decode_entry(bytes).map_err(|e| e.to_string())?;
                    let event = ServerFrame::Event(Event::Entry { room: self.name.clone(), entry });
                    encode_to_bytes(&event).map_err(|e| e.to_string())
                })
                .collect(),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.message),
        };
        match frames {
            Ok(frames) => self.fan_out_all(&frames),
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "cannot replay entries; disconnecting subscribers");
                self.kick_all("could not read back its entries from storage");
            }
        }
    }

    /// Disconnects every subscriber, telling it why (`INTERNAL`, the room
    /// and `what` failed, then "reconnect"): its client reconnects and re-syncs.
    fn kick_all(&mut self, what: &str) {
        let message =
            format!("room #{} {what} after a failed write; reconnect and sync from the log", self.name);
        let last = ServerFrame::Error { id: None, error: ErrorBody::new(ErrorCode::INTERNAL, message) };
        for (_, s) in self.subscribers.drain() {
            // The first last word wins: the session's own (slow consumer) is dropped.
            s.outbox.close_with(&last);
            s.kick.cancel();
        }
    }

    fn not_a_member(&self) -> RoomError {
        RoomError::NotAMember { room: self.name.clone() }
    }

    fn member(&self, from: &DeviceAccount) -> Result<&RoomMember, RoomError> {
        self.members.get(&from.user).ok_or_else(|| self.not_a_member())
    }

    fn entry(&self, seq: Seq, time_ms: u64, from: &DeviceAccount, body: EntryBody) -> LogEntry {
        LogEntry { seq, time_ms, sender: from.username.to_string(), sender_device: from.device.0, body }
    }

    fn encode_entry(&self, entry: LogEntry) -> Result<(Vec<u8>, Bytes), RoomError> {
        let stored = encode_entry(&entry).map_err(internal)?;
        let frame = encode_to_bytes(&ServerFrame::Event(Event::Entry { room: self.name.clone(), entry }))
            .map_err(internal)?;
        Ok((stored, frame))
    }

    /// Pushes a frame to every subscriber; one that cannot keep up is kicked.
    fn fan_out(&mut self, frame: &Bytes) {
        self.fan_out_all(std::slice::from_ref(frame));
    }

    /// Pushes frames, in order, to every subscriber (each subscriber's queue
    /// takes them all at once); one that cannot keep up is kicked.
    fn fan_out_all(&mut self, frames: &[Bytes]) {
        let mut dropped = Vec::new();
        for (conn, s) in &self.subscribers {
            if s.outbox.push_all(frames).is_err() {
                tracing::info!(room = %self.name, conn = conn.0, "subscriber too slow or gone; disconnecting it");
                s.kick.cancel();
                dropped.push(*conn);
            }
        }
        for conn in dropped {
            self.subscribers.remove(&conn);
        }
    }

    /// Checks and numbers a batch of sends and submits it to the log
    /// writer. `Ok(None)`: nothing to write (all refused or duplicates of
    /// durable messages, answered). `Err`: the submission failed.
    async fn sends(&mut self, batch: Vec<RoomCmd>) -> Result<Option<InFlight>, InFlight> {
        let time_ms = now_ms();
        let mut ops = Vec::new();
        let mut frames = Vec::new();
        let mut waiting: Vec<(Reply<Seq>, Seq)> = Vec::new();
        let mut new_ids = Vec::new();
        let mut in_batch: HashMap<(UserId, DeviceNo, u64), Seq> = HashMap::new();
        for cmd in batch {
            let RoomCmd::Send { from, client_msg_id, ciphertext, reply } = cmd else { continue };
            if self.member(&from).is_err() {
                let _ = reply.send(Err(self.not_a_member()));
                continue;
            }
            let key = (from.user, from.device, client_msg_id);
            if let Some(seq) = self.recent.get(&key).or_else(|| in_batch.get(&key)) {
                // A retry after a lost ack: answer with the original number,
                // once it is durable (it may be in a batch still in flight).
                if *seq < self.durable_next {
                    let _ = reply.send(Ok(*seq));
                } else {
                    waiting.push((reply, *seq));
                }
                continue;
            }
            if ciphertext.len() > MAX_CIPHERTEXT {
                let _ = reply.send(Err(RoomError::MessageTooLarge));
                continue;
            }
            if let Err(e) = self.group.check_application(&ciphertext, EPOCH_WINDOW) {
                let _ = reply.send(Err(e.into()));
                continue;
            }
            let seq = self.next_seq;
            let entry = self.entry(seq, time_ms, &from, EntryBody::Message { client_msg_id, ciphertext });
            let (stored, frame) = match self.encode_entry(entry) {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            self.next_seq = self.next_seq.next();
            ops.push(WriteOp::Append {
                room: self.id,
                seq,
                time_ms,
                sender: Some((from.user, from.device)),
                client_msg_id: Some(client_msg_id),
                entry: stored,
            });
            frames.push(frame);
            in_batch.insert(key, seq);
            new_ids.push((key, seq));
            waiting.push((reply, seq));
        }
        let mut w = InFlight {
            done: Box::pin(std::future::ready(Ok(()))),
            waiting,
            frames,
            new_ids,
            error: None,
            end_seq: self.next_seq,
        };
        if ops.is_empty() {
            if w.waiting.is_empty() {
                return Ok(None);
            }
            // Only retries of messages still in flight: answer with their batch.
            return Ok(Some(w));
        }
        // Remembered now, so that a retry arriving while this batch is in
        // flight is recognised; forgotten with the actor if the write fails.
        for (key, seq) in &w.new_ids {
            self.recent.insert(*key, *seq);
        }
        match self.shared.log_writer.submit(ops).await {
            Ok(done) => {
                w.done = Box::pin(done);
                Ok(Some(w))
            }
            Err(e) => {
                w.error = Some(RoomError::Unavailable(e));
                Err(w)
            }
        }
    }

    fn remember(&mut self, key: (UserId, DeviceNo, u64), seq: Seq) {
        self.recent.insert(key, seq);
        self.recent_order.push_back(key);
        if self.recent_order.len() > RECENT_IDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Send { .. } => {}
            RoomCmd::Commit { from, commit, welcome, group_info, reply } => {
                let result = self.commit(&from, commit, welcome, group_info).await;
                let _ = reply.send(result);
            }
            RoomCmd::Claim { from, users, reply } => {
                let _ = reply.send(self.claim(&from, users).await);
            }
            RoomCmd::Members { from, reply } => {
                if self.member(&from).is_ok() {
                    // Display names change outside the room: read them fresh.
                    let store = self.shared.store.clone();
                    let id = self.id;
                    if let Ok(Ok(fresh)) = crate::blocking::run(move || store.room_members(id)).await {
                        for m in fresh {
                            if let Some(mine) = self.members.get_mut(&m.user) {
                                mine.display_name = m.display_name;
                            }
                        }
                    }
                }
                let result = self.member(&from).map(|_| ()).map(|()| {
                    let mut list: Vec<MemberInfo> = self
                        .members
                        .values()
                        .map(|m| MemberInfo {
                            username: m.username.to_string(),
                            display_name: m.display_name.clone(),
                            role: m.role,
                            online: self.shared.hub.is_online(m.user),
                        })
                        .collect();
                    list.sort_by(|a, b| a.username.cmp(&b.username));
                    list
                });
                let _ = reply.send(result);
            }
            RoomCmd::Summary { from, reply } => {
                let result = self.member(&from).map(|m| RoomSummary {
                    name: self.name.clone(),
                    group_id: self.group_id.clone(),
                    role: m.role,
                    members: self.members.len() as u32,
                    head_seq: self.next_seq.prev(),
                    joined_seq: m.joined_seq,
                });
                let _ = reply.send(result);
            }
            RoomCmd::ReadAccess { from, reply } => {
                let _ = reply.send(self.member(&from).map(|m| (self.id, m.joined_seq)));
            }
            RoomCmd::GroupInfo { from, reply } => {
                let result = self.member(&from).map(|_| (self.group.epoch(), self.group_info.clone()));
                let _ = reply.send(result);
            }
            RoomCmd::SetRole { from, user, role, reply } => {
                let _ = reply.send(self.set_role(&from, &user, role).await);
            }
            RoomCmd::Leave { from, reply } => {
                let _ = reply.send(self.leave(&from).await);
            }
            RoomCmd::Subscribe(session) => {
                if self.members.contains_key(&session.user) {
                    self.subscribers.insert(session.conn, session);
                }
            }
            RoomCmd::Unsubscribe(conn) => {
                self.subscribers.remove(&conn);
            }
            RoomCmd::Presence { user, online } => {
                if let Some(m) = self.members.get(&user) {
                    let event =
                        Event::Presence { room: self.name.clone(), user: m.username.to_string(), online };
                    if let Ok(frame) = encode_to_bytes(&ServerFrame::Event(event)) {
                        self.fan_out(&frame);
                    }
                }
            }
        }
    }

    /// Appends one notice entry (and `more` ops with it) durably, then fans it out.
    async fn notice(
        &mut self,
        from: &DeviceAccount,
        body: EntryBody,
        more: Vec<WriteOp>,
    ) -> Result<Seq, RoomError> {
        let seq = self.next_seq;
        let time_ms = now_ms();
        let (stored, frame) = self.encode_entry(self.entry(seq, time_ms, from, body))?;
        let mut ops = vec![WriteOp::Append {
            room: self.id,
            seq,
            time_ms,
            sender: Some((from.user, from.device)),
            client_msg_id: None,
            entry: stored,
        }];
        ops.extend(more);
        self.shared.log_writer.write(ops).await?;
        self.next_seq = self.next_seq.next();
        self.fan_out(&frame);
        Ok(seq)
    }

    async fn set_role(&mut self, from: &DeviceAccount, user: &str, role: Role) -> Result<Seq, RoomError> {
        let me = self.member(from)?;
        if me.role != Role::Owner {
            return Err(RoomError::PermissionDenied("only the owner can change roles"));
        }
        if role == Role::Owner {
            return Err(RoomError::InvalidRole);
        }
        let target = self
            .members
            .values()
            .find(|m| m.username.as_str() == user.to_ascii_lowercase())
            .map(|m| (m.user, m.role, m.username.to_string()))
            .ok_or_else(|| RoomError::TargetNotAMember { user: user.to_owned(), room: self.name.clone() })?;
        if target.1 == Role::Owner {
            return Err(RoomError::PermissionDenied("the owner's role is fixed"));
        }
        let op = WriteOp::SetRole { room: self.id, user: target.0, role };
        let seq = self.notice(from, EntryBody::RoleChanged { user: target.2, role }, vec![op]).await?;
        if let Some(m) = self.members.get_mut(&target.0) {
            m.role = role;
        }
        Ok(seq)
    }

    async fn leave(&mut self, from: &DeviceAccount) -> Result<Seq, RoomError> {
        let me = self.member(from)?.clone();
        if self.members.len() == 1 {
            // The last member: nobody is left to read the room. It is
            // deleted, log and all, and its name is free again.
            self.shared.log_writer.write(vec![WriteOp::DeleteRoom { room: self.id }]).await?;
            tracing::info!(room = %self.name, by = %from.username, "the last member left; room deleted");
            self.members.clear();
            self.subscribers.clear();
            self.deleted = true;
            return Ok(self.next_seq);
        }
        let mut ops = vec![WriteOp::RemoveMember { room: self.id, user: from.user }];
        // An owner who leaves hands the room on: to an admin, else to the
        // longest-standing member.
        let mut heir = None;
        if me.role == Role::Owner {
            heir = self
                .members
                .values()
                .filter(|m| m.user != from.user)
                .min_by_key(|m| (m.role != Role::Admin, m.joined_seq))
                .map(|m| m.user);
            if let Some(h) = heir {
                ops.push(WriteOp::SetRole { room: self.id, user: h, role: Role::Owner });
            }
        }
        let seq = self.notice(from, EntryBody::Left { user: from.username.to_string() }, ops).await?;
        self.members.remove(&from.user);
        if let Some(h) = heir.and_then(|h| self.members.get_mut(&h)) {
            h.role = Role::Owner;
            let body = EntryBody::RoleChanged { user: h.username.to_string(), role: Role::Owner };
            // The role is already stored with the departure; this tells the room.
            if let Err(e) = self.notice(from, body, Vec::new()).await {
                tracing::error!(room = %self.name, error = %e, "cannot log the new owner");
            }
        }
        self.subscribers.retain(|_, s| s.user != from.user);
        Ok(seq)
    }

    async fn claim(
        &mut self,
        from: &DeviceAccount,
        users: Vec<String>,
    ) -> Result<Vec<ClaimedKeyPackage>, RoomError> {
        if !self.member(from)?.role.can_manage() {
            return Err(RoomError::PermissionDenied("only owners and admins can add members"));
        }
        let mut names = Vec::new();
        for raw in &users {
            let name = validate_username(raw).map_err(|e| RoomError::InvalidUsername(e.to_string()))?;
            if self.members.values().any(|m| m.username == name) {
                return Err(RoomError::AlreadyMember { user: name, room: self.name.clone() });
            }
            names.push(name);
        }
        let max_members = self.shared.config.max_members_per_room;
        if self.members.len() + names.len() > max_members {
            return Err(RoomError::RoomFull { room: self.name.clone(), max: max_members });
        }
        let max_rooms = self.shared.config.max_rooms_per_user;
        let store = self.shared.store.clone();
        let claimed = crate::blocking::run(move || {
            let mut ids = Vec::new();
            for name in &names {
                match store.user_by_name(name)? {
                    Some((id, _)) if store.rooms_of_user(id)?.len() >= max_rooms => {
                        return Ok(Err(RoomError::TooManyRooms { user: name.clone(), max: max_rooms }));
                    }
                    Some((id, _)) => ids.push((id, name.clone())),
                    None => return Ok(Err(RoomError::NoSuchUser(name.clone()))),
                }
            }
            let packages = match store.claim_key_packages(&ids.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            {
                Ok(packages) => packages,
                Err(crate::store::StoreError::NoKeyPackages(user)) => {
                    let name = ids
                        .iter()
                        .find(|(id, _)| *id == user)
                        .map(|(_, n)| n.to_string())
                        .unwrap_or_default();
                    return Ok(Err(RoomError::NoKeyPackages(name)));
                }
                Err(e) => return Err(e),
            };
            let mut counts = Vec::new();
            for (user, device, _) in &packages {
                counts.push((*user, *device, store.key_package_count(*user, *device)?));
            }
            Ok(Ok((ids, packages, counts)))
        })
        .await?
        .map_err(|e: crate::store::StoreError| internal(e))?;
        let (ids, packages, counts) = claimed?;
        for (user, device, available) in counts {
            if available < KEY_PACKAGES_LOW {
                let event = ServerFrame::Event(Event::KeyPackagesLow { available });
                if let Ok(frame) = encode_to_bytes(&event) {
                    for s in self.shared.hub.sessions_of(user).into_iter().filter(|s| s.device == device) {
                        if s.outbox.push(frame.clone()).is_err() {
                            // It checks its KeyPackage count when it reconnects.
                            s.kick.cancel();
                        }
                    }
                }
            }
        }
        let username =
            |id: UserId| ids.iter().find(|(u, _)| *u == id).map(|(_, n)| n.to_string()).unwrap_or_default();
        Ok(packages
            .into_iter()
            .map(|(user, device, key_package)| ClaimedKeyPackage {
                username: username(user),
                device_id: device.0,
                key_package,
            })
            .collect())
    }

    /// The registered device behind each added leaf, in order (`None`: no
    /// such device, or a key that is not Ed25519), in one store call.
    async fn added_devices(&self, adds: &[AddedMember]) -> Result<Vec<Option<DeviceAccount>>, RoomError> {
        if adds.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Option<DeviceKey>> = adds
            .iter()
            .map(|a| <[u8; 32]>::try_from(a.signature_key.as_slice()).ok().map(DeviceKey))
            .collect();
        let store = self.shared.store.clone();
        crate::blocking::run(move || {
            keys.iter()
                .map(|k| k.as_ref().map_or(Ok(None), |k| store.device_by_key(k)))
                .collect::<Result<Vec<_>, crate::store::StoreError>>()
        })
        .await?
        .map_err(internal)
    }

    /// Checks a commit (MLS, then the room's policy), makes it durable with
    /// everything it changes, then updates memory and delivers. Everything
    /// that can fail happens before the write; after it, nothing may.
    async fn commit(
        &mut self,
        from: &DeviceAccount,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Vec<u8>,
    ) -> Result<Seq, RoomError> {
        self.member(from)?;
        let checked = self.group.check_commit(&commit)?;
        let devices = self.added_devices(&checked.adds).await?;
        let leaves = self.group.members();
        let plan = {
            let room = RoomView { name: &self.name, members: &self.members, leaves: &leaves };
            let recipients = welcome.as_deref().map(|w| move || Ok(crate::mls::welcome_recipients(w)?));
            policy::check_commit(&room, from, &CommitFacts::of(&checked), &devices, recipients)?
        };
        let seq = self.next_seq;
        let time_ms = now_ms();
        let (added, removed) = plan.names();
        let (stored, frame) =
            self.encode_entry(self.entry(seq, time_ms, from, EntryBody::Commit { commit, added, removed }))?;
        // The Welcome's event, made now so that nothing is left to fail once
        // the commit is stored.
        let welcome = if plan.welcomes.is_empty() { None } else { welcome };
        let welcome_frame = match &welcome {
            Some(w) => Some(
                encode_to_bytes(&ServerFrame::Event(Event::Welcome(WelcomeItem {
                    room: self.name.clone(),
                    group_id: self.group_id.clone(),
                    joined_seq: seq,
                    welcome: w.clone(),
                })))
                .map_err(internal)?,
            ),
            None => None,
        };

        // Apply in memory, check the committer's GroupInfo for the new epoch,
        // and roll back to the copy taken here if anything fails before the
        // commit is on disk. (A copy, not a rebuild from the GroupInfo:
        // OpenMLS refuses to rebuild a group whose idle leaves have expired.)
        let old_epoch = self.group.epoch();
        let backup = self.group.try_clone()?;
        self.group.apply(checked)?;
        let snapshot = match self.group.check_group_info(&group_info).and_then(|()| self.group.to_snapshot())
        {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.group = backup;
                return Err(e.into());
            }
        };
        let ops = plan.writes(CommitRecord {
            room: self.id,
            seq,
            time_ms,
            from,
            entry: stored,
            epoch: self.group.epoch(),
            group_info: group_info.clone(),
            group_state: snapshot,
            welcome: welcome.as_deref(),
        });
        if let Err(e) = self.shared.log_writer.write(ops).await {
            self.group = backup;
            return Err(e.into());
        }

        // Durable: from here on nothing can fail.
        tracing::debug!(room = %self.name, %seq, from = old_epoch, to = self.group.epoch(), "commit accepted");
        self.next_seq = self.next_seq.next();
        self.group_info = group_info;
        // The removed get the commit as their last event, then nothing more.
        self.fan_out(&frame);
        for (user, _) in &plan.left {
            self.members.remove(user);
            self.subscribers.retain(|_, s| s.user != *user);
        }
        // New members: record them, then start delivering to their live sessions.
        for member in plan.new_members(seq) {
            self.members.insert(member.user, member);
        }
        if let Some(frame) = welcome_frame {
            for (user, device) in &plan.welcomes {
                for s in self.shared.hub.sessions_of(*user) {
                    if s.device == *device {
                        // Dropped if its queue is full: the device fetches
                        // its stored Welcomes when it reconnects.
                        let _ = s.outbox.push(frame.clone());
                    }
                    if self.members.contains_key(user) {
                        self.subscribers.insert(s.conn, s);
                    }
                }
            }
        }
        Ok(seq)
    }
}

/// The absent room: answers every request as a room whose asker is not a
/// member would (the caller puts the room's name in), so that a missing room
/// costs a round trip to an actor like an existing one. Runs until its
/// handles are gone.
pub async fn absent_room(mut rx: mpsc::Receiver<RoomCmd>) {
    while let Some(cmd) = rx.recv().await {
        refuse(cmd, RoomError::NotAMember { room: String::new() });
    }
}

/// Answers a command with `error` (commands without an answer are dropped).
fn refuse(cmd: RoomCmd, error: RoomError) {
    fn no<T>(reply: Reply<T>, error: RoomError) {
        let _ = reply.send(Err(error));
    }
    match cmd {
        RoomCmd::Send { reply, .. } | RoomCmd::Commit { reply, .. } => no(reply, error),
        RoomCmd::SetRole { reply, .. } | RoomCmd::Leave { reply, .. } => no(reply, error),
        RoomCmd::Claim { reply, .. } => no(reply, error),
        RoomCmd::Members { reply, .. } => no(reply, error),
        RoomCmd::Summary { reply, .. } => no(reply, error),
        RoomCmd::ReadAccess { reply, .. } => no(reply, error),
        RoomCmd::GroupInfo { reply, .. } => no(reply, error),
        RoomCmd::Subscribe(_) | RoomCmd::Unsubscribe(_) | RoomCmd::Presence { .. } => {}
    }
}
