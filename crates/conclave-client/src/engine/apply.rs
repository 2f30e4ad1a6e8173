//! Applying a room's log in order: one entry, or a batch of them, in one
//! transaction with `last_seq` and the history it produces.
//!
//! A batch is one transaction for many entries: it commits whole or rolls
//! back whole (the group cache dropped with it), so the MLS state and
//! `last_seq` still move together. Inside it, a failed decryption is still
//! undone with its own savepoint and recorded as undecryptable.

use openmls::prelude::tls_codec::DeserializeBytes as _;
use openmls::prelude::{ContentType, MlsGroup, MlsMessageIn, ProcessedMessageContent, ProtocolMessage};

use super::store::{self, NewRow, PendingKind};
use super::{identity_string, username_of, Applied, Engine, EngineError, HistoryKind, Item, Meta, Tx};

impl Engine {
    /// Processes one log entry of `room`, in sequence order, atomically with
    /// `last_seq` and history:
    ///
    /// - `meta.seq <= last_seq(room)`: [`Applied::Duplicate`], nothing changes
    ///   (a ciphertext is never decrypted twice).
    /// - [`Item::Commit`]: our own pending commit echoed back is merged; a commit
    ///   of an epoch already passed (our own, merged on the server's ack) is
    ///   [`Applied::Skipped`]; any other is processed and merged, reporting
    ///   whether it removed this device (the group is then unusable). A commit
    ///   that cannot be applied returns [`EngineError::OutOfStep`] (or
    ///   [`EngineError::Evicted`]) and does not advance `last_seq`: the device
    ///   must rejoin by external commit. A proposal is skipped (proposals are
    ///   not stored yet).
    /// - [`Item::Message`]: decrypted, written to history as "message". A
    ///   message that cannot be decrypted (from before this device joined,
    ///   after its removal, damaged) is [`Applied::Undecryptable`] with a history
    ///   row "undecryptable", and `last_seq` still advances.
    /// - [`Item::Skip`]: if `meta.own_client_msg_id` names a queued outgoing
    ///   message, it moves to history; otherwise `meta.text`, if any, is written
    ///   as a notice of kind `meta.kind`.
    ///
    /// Commits also write `meta.text`, if any, as a notice.
    pub fn apply(&mut self, room: &str, meta: &Meta, item: Item<'_>) -> Result<Applied, EngineError> {
        let mut applied = self.apply_entries(room, std::iter::once((meta, item)), "applying a log entry")?;
        Ok(applied.pop().unwrap_or(Applied::Duplicate))
    }

    /// Processes consecutive log entries of `room`, in order, in **one**
    /// transaction: each as [`Engine::apply`] would, with one write of
    /// `last_seq` at the end. A catch-up pays one commit per batch instead of
    /// one per entry.
    ///
    /// Returns what was done with each entry, in order. It stops after a
    /// commit that removed this device (the last result is then
    /// `Applied::Commit { self_removed: true, .. }`, and the entries after it
    /// were not processed). An error rolls the whole batch back (MLS state,
    /// history and `last_seq`, as if it was never given) and drops the group
    /// cache: process the entries one at a time with [`Engine::apply`] to find
    /// and handle the one that failed (an [`EngineError::OutOfStep`] commit
    /// means rejoining by external commit).
    pub fn apply_batch(
        &mut self,
        room: &str,
        entries: &[(Meta, Item<'_>)],
    ) -> Result<Vec<Applied>, EngineError> {
        self.apply_entries(room, entries.iter().map(|(meta, item)| (meta, *item)), "applying log entries")
    }

    fn apply_entries<'m, 'i>(
        &mut self,
        room: &str,
        entries: impl Iterator<Item = (&'m Meta, Item<'i>)>,
        doing: &str,
    ) -> Result<Vec<Applied>, EngineError> {
        self.txn(doing, |tx| {
            let row =
                store::room_row(tx.conn, room)?.ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))?;
            let mut last_seq = row.last_seq;
            let mut out = Vec::with_capacity(entries.size_hint().0);
            for (meta, item) in entries {
                if meta.seq <= last_seq {
                    out.push(Applied::Duplicate);
                    continue;
                }
                let applied = match item {
                    Item::Skip => apply_skip(tx, room, meta)?,
                    Item::Message(bytes) => apply_message(tx, room, meta, bytes)?,
                    Item::Commit(bytes) => apply_commit(tx, room, meta, bytes)?,
                };
                last_seq = meta.seq;
                let removed = matches!(applied, Applied::Commit { self_removed: true, .. });
                out.push(applied);
                if removed {
                    break;
                }
            }
            if last_seq != row.last_seq {
                store::set_last_seq(tx.conn, room, last_seq)?;
            }
            Ok(out)
        })
    }
}

fn apply_skip(tx: &mut Tx<'_>, room: &str, meta: &Meta) -> Result<Applied, EngineError> {
    if own_message_to_history(tx, room, meta)?.is_none() {
        notice_to_history(tx, room, meta)?;
    }
    Ok(Applied::Skipped)
}

/// Moves our queued message named by `meta.own_client_msg_id` to history.
fn own_message_to_history(tx: &mut Tx<'_>, room: &str, meta: &Meta) -> Result<Option<String>, EngineError> {
    let Some(id) = meta.own_client_msg_id else { return Ok(None) };
    let Some(text) = store::take_outgoing(tx.conn, room, id)? else { return Ok(None) };
    let username = username_of(tx.identity);
    let username = username.as_str();
    let display = if meta.sender_display.is_empty() { username } else { &meta.sender_display };
    let row = NewRow {
        seq: meta.seq,
        time_ms: meta.time_ms,
        sender: username,
        sender_display: display,
        kind: HistoryKind::Message,
        text: &text,
    };
    store::put_history(tx.conn, room, &row)?;
    Ok(Some(text))
}

/// Writes `meta.text`, if any, as a notice.
fn notice_to_history(tx: &mut Tx<'_>, room: &str, meta: &Meta) -> Result<(), EngineError> {
    let Some(text) = &meta.text else { return Ok(()) };
    let row = NewRow {
        seq: meta.seq,
        time_ms: meta.time_ms,
        sender: &meta.sender,
        sender_display: &meta.sender_display,
        kind: meta.kind,
        text,
    };
    store::put_history(tx.conn, room, &row)
}

fn apply_message(tx: &mut Tx<'_>, room: &str, meta: &Meta, bytes: &[u8]) -> Result<Applied, EngineError> {
    let (_, mut group) = tx.take(room)?;
    match decrypt(tx, room, meta, &mut group, bytes)? {
        Ok(applied) => {
            tx.keep(room, group);
            Ok(applied)
        }
        Err(reason) => {
            // The group is not kept: the next call reloads what is stored.
            let row = NewRow {
                seq: meta.seq,
                time_ms: meta.time_ms,
                sender: &meta.sender,
                sender_display: &meta.sender_display,
                kind: HistoryKind::Undecryptable,
                text: &reason,
            };
            store::put_history(tx.conn, room, &row)?;
            tracing::debug!(room, seq = %meta.seq, reason, "undecryptable message");
            Ok(Applied::Undecryptable(reason))
        }
    }
}

/// Decrypts one message into history. The inner `Err` is why it could not be
/// decrypted; the outer one a storage failure.
fn decrypt(
    tx: &mut Tx<'_>,
    room: &str,
    meta: &Meta,
    group: &mut MlsGroup,
    bytes: &[u8],
) -> Result<Result<Applied, String>, EngineError> {
    if !group.is_active() {
        return Ok(Err("this device was removed from the room".into()));
    }
    let message = match protocol_message(bytes) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    if message.content_type() != ContentType::Application {
        return Ok(Err("not an application message".into()));
    }
    if message.group_id() != group.group_id() {
        return Ok(Err("the message belongs to another group".into()));
    }
    // A failed decryption must leave no trace in OpenMLS's state, while the
    // entry's bookkeeping is still committed: hence a savepoint.
    // (Prepared once: a catch-up runs these for every message.)
    store::run_cached(tx.conn, "SAVEPOINT decrypt").map_err(store::sql("starting to decrypt"))?;
    let processed = group.process_message(&tx.provider, message);
    let processed = match processed {
        Ok(p) => {
            store::run_cached(tx.conn, "RELEASE decrypt").map_err(store::sql("finishing a decryption"))?;
            p
        }
        Err(e) => {
            tx.conn
                .execute_batch("ROLLBACK TO decrypt; RELEASE decrypt")
                .map_err(store::sql("undoing a failed decryption"))?;
            return Ok(Err(e.to_string()));
        }
    };
    let sender_identity = identity_string(processed.credential());
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(m) => {
            let text = String::from_utf8_lossy(&m.into_bytes()).into_owned();
            let username = username_of(&sender_identity);
            let username = username.as_str();
            if !meta.sender.is_empty() && meta.sender != username {
                tracing::warn!(room, seq = %meta.seq, server = %meta.sender, mls = %sender_identity,
                    "the server attributes a message to another user than its MLS sender");
            }
            let display = if meta.sender == username && !meta.sender_display.is_empty() {
                &meta.sender_display
            } else {
                username
            };
            let row = NewRow {
                seq: meta.seq,
                time_ms: meta.time_ms,
                sender: username,
                sender_display: display,
                kind: HistoryKind::Message,
                text: &text,
            };
            store::put_history(tx.conn, room, &row)?;
            Ok(Ok(Applied::Message { text, sender_identity }))
        }
        // Our own message echoed back: MLS cannot decrypt it for its sender.
        ProcessedMessageContent::OwnPrivateMessage => match own_message_to_history(tx, room, meta)? {
            Some(text) => Ok(Ok(Applied::Message { text, sender_identity: tx.identity.to_owned() })),
            None => Ok(Err("sent by this device; its text is not kept".into())),
        },
        _ => Ok(Err("not an application message".into())),
    }
}

fn apply_commit(tx: &mut Tx<'_>, room: &str, meta: &Meta, bytes: &[u8]) -> Result<Applied, EngineError> {
    let (_, mut group) = tx.take(room)?;
    if !group.is_active() {
        return Err(EngineError::Evicted(room.to_owned()));
    }
    let out_of_step =
        |reason: String| EngineError::OutOfStep { room: room.to_owned(), seq: meta.seq, reason };

    // Our own pending commit, echoed by the server.
    if let Some((kind, pending)) = store::pending(tx.conn, room)? {
        if pending == bytes {
            if kind == PendingKind::Member {
                group.merge_pending_commit(&tx.provider).map_err(|e| out_of_step(e.to_string()))?;
            }
            store::clear_pending(tx.conn, room)?;
            notice_to_history(tx, room, meta)?;
            let epoch = group.epoch().as_u64();
            tx.keep(room, group);
            return Ok(Applied::Commit { epoch, self_removed: false });
        }
    }

    let message = protocol_message(bytes).map_err(out_of_step)?;
    match message.content_type() {
        ContentType::Commit => {}
        ContentType::Proposal => {
            tracing::warn!(room, seq = %meta.seq, "skipping a proposal: proposals are not supported yet");
            tx.keep(room, group);
            return Ok(Applied::Skipped);
        }
        ContentType::Application => {
            return Err(EngineError::Invalid(format!(
                "entry {} of {room} is an application message, not a commit",
                meta.seq
            )))
        }
    }
    if message.group_id() != group.group_id() {
        return Err(out_of_step("the commit belongs to another group".into()));
    }
    let (theirs, ours) = (message.epoch().as_u64(), group.epoch().as_u64());
    if theirs < ours {
        // Already merged (our own commit, merged on the server's ack).
        notice_to_history(tx, room, meta)?;
        tx.keep(room, group);
        return Ok(Applied::Skipped);
    }
    if theirs > ours {
        return Err(out_of_step(format!("it is for epoch {theirs}, and this device is at epoch {ours}")));
    }
    let processed = group.process_message(&tx.provider, message).map_err(|e| out_of_step(e.to_string()))?;
    let self_removed = match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let self_removed = staged.self_removed();
            group.merge_staged_commit(&tx.provider, *staged).map_err(|e| out_of_step(e.to_string()))?;
            self_removed
        }
        ProcessedMessageContent::OwnPendingCommit => {
            group.merge_pending_commit(&tx.provider).map_err(|e| out_of_step(e.to_string()))?;
            false
        }
        _ => return Err(out_of_step("not a commit".into())),
    };
    // Merging any commit drops a pending one of ours (OpenMLS does so silently).
    store::clear_pending(tx.conn, room)?;
    notice_to_history(tx, room, meta)?;
    let epoch = group.epoch().as_u64();
    if self_removed {
        tracing::info!(room, epoch, "this device was removed from the room");
    }
    tx.keep(room, group);
    Ok(Applied::Commit { epoch, self_removed })
}

fn protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, String> {
    MlsMessageIn::tls_deserialize_exact_bytes(bytes)
        .map_err(|e| format!("not a valid MLS message: {e}"))?
        .try_into_protocol_message()
        .map_err(|e| format!("not a handshake or application message: {e}"))
}
