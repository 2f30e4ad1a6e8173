//! The client's MLS engine: owns this device's MLS state (one group per room)
//! and its decrypted local history, in one SQLite file in the profile.
//!
//! The engine is synchronous and does no I/O besides that file: the sync layer
//! runs it on one dedicated thread, hands it the bytes the server sends (log
//! entries, Welcomes, GroupInfos, KeyPackages) and sends the bytes it returns.
//! Every MLS object in and out is a TLS-serialized `MLSMessage`.
//!
//! # Atomicity
//!
//! Each state-changing call runs in one SQLite transaction (`BEGIN IMMEDIATE`)
//! that holds both OpenMLS's writes and the engine's bookkeeping (`last_seq`,
//! history, the pending commit). An error rolls all of it back, so a crash or a
//! failure never leaves the MLS state and `last_seq` out of step, and the same
//! log entry can be applied again. [`Engine::apply_batch`] applies many log
//! entries in one such transaction (a catch-up pays one commit per page of
//! the log), which commits or rolls back whole. Groups are cached in memory
//! between calls; a rolled-back call drops the cache, which is reloaded from
//! the file.
//!
//! # Commits and the server
//!
//! [`Engine::add_members`], [`Engine::remove_leaves`], [`Engine::self_update`]
//! and [`Engine::join_external`] leave their commit pending: the server may
//! refuse it (another commit won the epoch). [`Engine::merge_pending`] applies it
//! once the server accepted; [`Engine::discard_pending`] drops it. The commit
//! echoed back in the room's log is recognised (byte for byte, or by OpenMLS as
//! `OwnPendingCommit`) and merged if that was not done yet, or skipped if it was.
//!
//! # Storage layout
//!
//! OpenMLS's own tables (`openmls_sqlite_storage`, values encoded as CBOR), plus
//! `room_state(room, group_id, last_seq)`, `history(room, seq, ...)`,
//! `outgoing(client_msg_id, room, text, created_ms)`, `pending_commit(room,
//! kind, commit_bytes)` and `meta` (the identity the file belongs to).
//!
//! # Files
//!
//! This file holds the types, opening, key packages, sending and the local
//! queries; `group.rs` a group's life (create, commit, merge or discard, join);
//! `apply.rs` the processing of the room log; `store.rs` the SQLite side.

mod apply;
mod error;
mod group;
mod kind;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use conclave_proto::{IdentityError, MemberIdentity, Seq};
use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, Credential, CredentialWithKey, ExtensionType, GroupId,
    KeyPackage, MlsGroup, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsProvider as _,
    SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use rusqlite::{params, Connection, TransactionBehavior};

pub use error::EngineError;
pub use kind::{HistoryKind, UnknownHistoryKind};
use store::{sql, PendingKind, Provider, RoomRow};

/// The one ciphersuite Conclave rooms use.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs' message secrets a group keeps, so that a message
/// encrypted just before a commit still decrypts after it.
pub const MAX_PAST_EPOCHS: usize = 5;

/// The most KeyPackages [`Engine::new_key_packages`] makes in one call.
pub const MAX_KEY_PACKAGES_PER_CALL: usize = 1000;

/// A commit to send to the server, with what goes along with it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The commit (`MLSMessage`, a PublicMessage).
    pub commit: Vec<u8>,
    /// The Welcome for the members it adds, if it adds any.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the epoch the commit creates, with the ratchet tree and
    /// the external public key, for the server to keep and serve to joiners.
    pub group_info: Vec<u8>,
}

/// One entry of a room's log, as far as MLS is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A commit (`MLSMessage`).
    Commit(&'a [u8]),
    /// An application message (`MLSMessage`, a PrivateMessage).
    Message(&'a [u8]),
    /// Nothing for MLS: this device's own message (see [`Meta::own_client_msg_id`])
    /// or a notice (see [`Meta::text`]).
    Skip,
}

/// What the server says about a log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The entry's sequence number in the room's log.
    pub seq: Seq,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The username of the sender, as the server attributes it, or "".
    pub sender: String,
    /// The sender's display name.
    pub sender_display: String,
    /// The kind of history row for notices (messages are always
    /// [`HistoryKind::Message`]).
    pub kind: HistoryKind,
    /// The text of a notice, written to history for commits and skipped entries.
    pub text: Option<String>,
    /// Set when the entry is this device's own message, with the id it was sent with.
    pub own_client_msg_id: Option<u64>,
}

/// What [`Engine::apply`] did with a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The entry's sequence number was already processed: nothing done.
    Duplicate,
    /// A message was decrypted (and written to history).
    Message {
        /// The text (invalid UTF-8 replaced).
        text: String,
        /// The sender's MLS identity, "USERNAME:DEVICE_NO" (authenticated by MLS).
        sender_identity: String,
    },
    /// A commit was merged.
    Commit {
        /// The group's epoch now.
        epoch: u64,
        /// The commit removed this device: the room is now unusable on it.
        self_removed: bool,
    },
    /// Nothing to do for MLS (own message, notice, an old commit already merged).
    Skipped,
    /// A message could not be decrypted (sent before this device joined, after
    /// it was removed, or damaged). The log still moves on; history says so.
    Undecryptable(String),
}

/// One row of local history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryRow {
    /// The room.
    pub room: String,
    /// The log sequence number.
    pub seq: Seq,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The sender's username, or "" for the server.
    pub sender: String,
    /// The sender's display name.
    pub sender_display: String,
    /// A message, an undecryptable message, or a notice kind; serialised as
    /// `"message"`, `"undecryptable"`, `"join"`... (see [`HistoryKind`]).
    pub kind: HistoryKind,
    /// The text (for [`HistoryKind::Undecryptable`], why).
    pub text: String,
}

/// This device's MLS engine. See the module documentation.
pub struct Engine {
    conn: Connection,
    crypto: RustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    identity: String,
    /// Groups as last committed to the file, by room.
    groups: HashMap<String, MlsGroup>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// The state of one transaction: the provider over it, and what operations need.
struct Tx<'a> {
    conn: &'a Connection,
    provider: Provider<'a>,
    signer: &'a SignatureKeyPair,
    credential: &'a CredentialWithKey,
    identity: &'a str,
    cache: &'a mut HashMap<String, MlsGroup>,
}

impl Tx<'_> {
    /// The room's state and group. The group is taken out of the cache: put it
    /// back with [`Tx::keep`] once the operation succeeded (a failed one drops it).
    fn take(&mut self, room: &str) -> Result<(RoomRow, MlsGroup), EngineError> {
        let row =
            store::room_row(self.conn, room)?.ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))?;
        let group = match self.cache.remove(room) {
            Some(g) if g.group_id().as_slice() == row.group_id.as_slice() => g,
            _ => load_group(&self.provider, room, &row.group_id)?,
        };
        Ok((row, group))
    }

    fn keep(&mut self, room: &str, group: MlsGroup) {
        self.cache.insert(room.to_owned(), group);
    }

    /// Deletes the stored group with this id, if any.
    fn delete_group(&mut self, group_id: &GroupId) -> Result<(), EngineError> {
        let storage = self.provider.storage();
        if let Some(mut old) = MlsGroup::load(storage, group_id).map_err(sql("loading an old group"))? {
            old.delete(storage).map_err(sql("deleting an old group"))?;
        }
        self.cache.retain(|_, g| g.group_id() != group_id);
        Ok(())
    }
}

impl Engine {
    /// Opens (or creates, mode 0600) the engine's database at `path` for this
    /// device: its Ed25519 key (32-byte seed and public key, as the profile holds
    /// them) is the MLS signature key, and `identity` ("USERNAME:DEVICE_NO") its
    /// MLS identity. A file made for another identity or key is refused.
    pub fn open(
        path: &Path,
        device_seed: &[u8; 32],
        device_public: &[u8; 32],
        identity: &str,
    ) -> Result<Self, EngineError> {
        check_identity(identity).map_err(|e| EngineError::Invalid(format!("this device's {e}")))?;
        let derived = ed25519_dalek::SigningKey::from_bytes(device_seed).verifying_key().to_bytes();
        if derived != *device_public {
            return Err(EngineError::Invalid(
                "the device public key does not belong to the device seed; the profile's key file is damaged"
                    .into(),
            ));
        }
        let conn = store::open(path, identity, device_public)?;
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            device_seed.to_vec(),
            device_public.to_vec(),
        );
        signer.store(&store::Storage::new(&conn)).map_err(sql("storing the device's signature key"))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: device_public.to_vec().into(),
        };
        tracing::debug!(identity, "MLS engine open");
        Ok(Self {
            conn,
            crypto: RustCrypto::default(),
            signer,
            credential,
            identity: identity.to_owned(),
            groups: HashMap::new(),
        })
    }

    /// This device's MLS identity, "USERNAME:DEVICE_NO".
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `count` fresh KeyPackages (private keys kept in storage), as MLSMessage bytes.
    pub fn new_key_packages(&mut self, count: usize) -> Result<Vec<Vec<u8>>, EngineError> {
        if count > MAX_KEY_PACKAGES_PER_CALL {
            return Err(EngineError::Invalid(format!(
                "at most {MAX_KEY_PACKAGES_PER_CALL} KeyPackages can be made at once, not {count}"
            )));
        }
        self.txn("making KeyPackages", |tx| (0..count).map(|_| make_key_package(tx, false)).collect())
    }

    /// One last-resort KeyPackage (marked so), which the server may hand out
    /// again when the others run out; its private keys are never consumed.
    pub fn last_resort_key_package(&mut self) -> Result<Vec<u8>, EngineError> {
        self.txn("making a last-resort KeyPackage", |tx| make_key_package(tx, true))
    }

    /// Whether this device has an MLS group for `room` (even one it was removed from).
    pub fn has_group(&self, room: &str) -> bool {
        if self.groups.contains_key(room) {
            return true;
        }
        let Ok(Some(row)) = store::room_row(&self.conn, room) else { return false };
        let provider = Provider::new(&self.crypto, &self.conn);
        matches!(MlsGroup::load(provider.storage(), &GroupId::from_slice(&row.group_id)), Ok(Some(_)))
    }

    /// The group's current epoch.
    pub fn epoch(&mut self, room: &str) -> Result<u64, EngineError> {
        self.with_group(room, |g| g.epoch().as_u64())
    }

    /// (leaf index, identity) of every member, in leaf order.
    pub fn members(&mut self, room: &str) -> Result<Vec<(u32, String)>, EngineError> {
        self.with_group(room, |g| {
            g.members().map(|m| (m.index.u32(), identity_string(&m.credential))).collect()
        })
    }

    /// This device's leaf index in the group.
    pub fn own_leaf(&mut self, room: &str) -> Result<u32, EngineError> {
        self.with_group(room, |g| g.own_leaf_index().u32())
    }

    /// Encrypts one application message in the group's current epoch. The
    /// sender ratchet's step is stored before the ciphertext is returned, so a
    /// key is never used twice, even across a crash.
    pub fn encrypt(&mut self, room: &str, plaintext: &[u8]) -> Result<Vec<u8>, EngineError> {
        self.txn("encrypting a message", |tx| {
            let (_, mut group) = tx.take(room)?;
            if !group.is_active() {
                return Err(EngineError::Evicted(room.to_owned()));
            }
            if let Some((PendingKind::External, _)) = store::pending(tx.conn, room)? {
                return Err(EngineError::CommitPending(room.to_owned()));
            }
            let message = group
                .create_message(&tx.provider, tx.signer, plaintext)
                .map_err(|e| EngineError::Mls(format!("cannot encrypt for {room}: {e}")))?;
            let bytes = serialize(&message, "message")?;
            tx.keep(room, group);
            Ok(bytes)
        })
    }

    /// The last log sequence number processed for `room`.
    pub fn last_seq(&self, room: &str) -> Result<Seq, EngineError> {
        Ok(store::room_row(&self.conn, room)?
            .ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))?
            .last_seq)
    }

    /// Sets the last log sequence number processed for `room` (after an
    /// external join, to where this device entered the log).
    pub fn set_last_seq(&mut self, room: &str, seq: Seq) -> Result<(), EngineError> {
        if store::set_last_seq(&self.conn, room, seq)? {
            Ok(())
        } else {
            Err(EngineError::NoSuchRoom(room.to_owned()))
        }
    }

    /// Queues our own message waiting for the server's ack (kept across
    /// restarts so it can be re-sent, and shown once the log says it was stored).
    pub fn queue_outgoing(&mut self, room: &str, client_msg_id: u64, text: &str) -> Result<(), EngineError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO outgoing (client_msg_id, room, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![client_msg_id, room, text, store::now_ms()],
            )
            .map_err(sql("queueing an outgoing message"))?;
        Ok(())
    }

    /// Drops a queued message the server refused for good (it will never be
    /// in the log, and re-sending it would fail again).
    pub fn drop_outgoing(&mut self, client_msg_id: u64) -> Result<(), EngineError> {
        self.conn
            .execute("DELETE FROM outgoing WHERE client_msg_id = ?1", params![client_msg_id])
            .map_err(sql("dropping an outgoing message"))?;
        Ok(())
    }

    /// Our own messages for `room` not yet seen in its log, oldest id first.
    pub fn pending_outgoing(&self, room: &str) -> Result<Vec<(u64, String)>, EngineError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT client_msg_id, text FROM outgoing WHERE room = ?1 ORDER BY client_msg_id")
            .map_err(sql("reading the outgoing queue"))?;
        let rows = stmt
            .query_map([room], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql("reading the outgoing queue"))?;
        rows.collect::<Result<_, _>>().map_err(sql("reading the outgoing queue"))
    }

    /// Up to `limit` history rows of `room` after `after_seq`, in log order.
    pub fn history(&self, room: &str, after_seq: Seq, limit: usize) -> Result<Vec<HistoryRow>, EngineError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // SQLite integers are i64: no row is after a larger number (`tail --since`).
        let Ok(after_seq) = i64::try_from(after_seq.get()) else { return Ok(Vec::new()) };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT room, seq, time_ms, sender, sender_display, kind, text FROM history
                 WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(sql("reading history"))?;
        let rows = stmt
            .query_map(params![room, after_seq, limit], |r| {
                Ok(HistoryRow {
                    room: r.get(0)?,
                    seq: Seq::new(r.get(1)?),
                    time_ms: r.get(2)?,
                    sender: r.get(3)?,
                    sender_display: r.get(4)?,
                    kind: r.get(5)?,
                    text: r.get(6)?,
                })
            })
            .map_err(sql("reading history"))?;
        rows.collect::<Result<_, _>>().map_err(sql("reading history"))
    }

    /// Forgets a room: its MLS group, its state and its unsent messages. Its
    /// history is kept. Nothing happens for a room this device does not know.
    pub fn forget_room(&mut self, room: &str) -> Result<(), EngineError> {
        self.txn("forgetting a room", |tx| {
            if let Some(row) = store::room_row(tx.conn, room)? {
                tx.delete_group(&GroupId::from_slice(&row.group_id))?;
            }
            tx.cache.remove(room);
            store::delete_room(tx.conn, room)?;
            tx.conn
                .execute("DELETE FROM outgoing WHERE room = ?1", [room])
                .map_err(sql("forgetting a room"))?;
            Ok(())
        })
    }

    /// The rooms this device has MLS state for, by name.
    pub fn rooms(&self) -> Result<Vec<String>, EngineError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT room FROM room_state ORDER BY room")
            .map_err(sql("listing rooms"))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(sql("listing rooms"))?;
        rows.collect::<Result<_, _>>().map_err(sql("listing rooms"))
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed if it returns
    /// `Ok`, rolled back (and the group cache dropped) if not.
    fn txn<T>(
        &mut self,
        doing: &str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(doing))?;
        let result = {
            let mut ctx = Tx {
                conn: &tx,
                provider: Provider::new(&self.crypto, &tx),
                signer: &self.signer,
                credential: &self.credential,
                identity: &self.identity,
                cache: &mut self.groups,
            };
            f(&mut ctx)
        };
        match result {
            Ok(value) => match tx.commit() {
                Ok(()) => Ok(value),
                Err(e) => {
                    self.groups.clear();
                    Err(sql(doing)(e))
                }
            },
            Err(e) => {
                if let Err(re) = tx.rollback() {
                    tracing::warn!(error = %re, "rollback failed");
                }
                self.groups.clear();
                Err(e)
            }
        }
    }

    /// Runs `f` on the room's group (cached, or loaded).
    fn with_group<T>(&mut self, room: &str, f: impl FnOnce(&MlsGroup) -> T) -> Result<T, EngineError> {
        if !self.groups.contains_key(room) {
            let row =
                store::room_row(&self.conn, room)?.ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))?;
            let provider = Provider::new(&self.crypto, &self.conn);
            let group = load_group(&provider, room, &row.group_id)?;
            self.groups.insert(room.to_owned(), group);
        }
        self.groups.get(room).map(f).ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))
    }
}

fn load_group(provider: &Provider<'_>, room: &str, group_id: &[u8]) -> Result<MlsGroup, EngineError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .map_err(sql("loading the group"))?
        .ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))
}

fn make_key_package(tx: &mut Tx<'_>, last_resort: bool) -> Result<Vec<u8>, EngineError> {
    let mut builder = KeyPackage::builder();
    if last_resort {
        // The leaf must list the extension its KeyPackage carries, or the
        // KeyPackage fails validation (OpenMLS does not add it by itself).
        builder = builder.mark_as_last_resort().leaf_node_capabilities(
            Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build(),
        );
    }
    let bundle = builder
        .build(CIPHERSUITE, &tx.provider, tx.signer, tx.credential.clone())
        .map_err(|e| EngineError::Mls(format!("cannot make a KeyPackage: {e}")))?;
    serialize(&MlsMessageOut::from(bundle.key_package().clone()), "KeyPackage")
}

fn serialize(message: &MlsMessageOut, what: &str) -> Result<Vec<u8>, EngineError> {
    message.tls_serialize_detached().map_err(|e| EngineError::Mls(format!("cannot encode the {what}: {e}")))
}

/// Parses MLSMessage bytes from outside.
fn parse_message(bytes: &[u8], what: &str) -> Result<MlsMessageBodyIn, EngineError> {
    MlsMessageIn::tls_deserialize_exact_bytes(bytes)
        .map(MlsMessageIn::extract)
        .map_err(|e| EngineError::Malformed(format!("the {what} is not a valid MLS message: {e}")))
}

/// The identity of a basic credential, as text.
fn identity_string(credential: &Credential) -> String {
    String::from_utf8_lossy(credential.serialized_content()).into_owned()
}

/// The username part of a "USERNAME:DEVICE_NO" identity, or the whole
/// text if it is not one (so that a strange sender still shows as something).
pub(crate) fn username_of(identity: &str) -> String {
    identity.parse::<MemberIdentity>().map_or_else(|_| identity.to_owned(), |id| id.username.to_string())
}

/// Checks the "USERNAME:DEVICE_NO" form (see [`MemberIdentity`]).
fn check_identity(identity: &str) -> Result<MemberIdentity, IdentityError> {
    identity.parse()
}
