//! A room's group over its life: creating it, changing its membership by
//! commit, the pending commit and the server's answer, and joining (from a
//! Welcome, or by external commit).

use conclave_proto::Seq;
use openmls::prelude::{
    GroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageOut, OpenMlsProvider as _, ProcessedWelcome, ProtocolVersion,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::RustCrypto;

use super::store::{self, sql, PendingKind};
use super::{
    check_identity, identity_string, parse_message, serialize, Engine, EngineError, Outgoing, Tx,
    CIPHERSUITE, MAX_PAST_EPOCHS,
};

impl Engine {
    /// Creates the group for `room` (epoch 0, just this device) with the given
    /// group id, and returns its GroupInfo (with the ratchet tree).
    pub fn create_group(&mut self, room: &str, group_id: &[u8]) -> Result<Vec<u8>, EngineError> {
        if group_id.is_empty() {
            return Err(EngineError::Invalid("a group id cannot be empty".into()));
        }
        self.txn("creating a group", |tx| {
            if store::room_row(tx.conn, room)?.is_some() {
                return Err(EngineError::RoomExists(room.to_owned()));
            }
            let group = MlsGroup::builder()
                .with_group_id(GroupId::from_slice(group_id))
                .ciphersuite(CIPHERSUITE)
                .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .build(&tx.provider, tx.signer, tx.credential.clone())
                .map_err(|e| EngineError::Mls(format!("cannot create the group for {room}: {e}")))?;
            let group_info = export_group_info(tx, &group, room)?;
            store::put_room(tx.conn, room, group_id, Seq::ZERO)?;
            tx.keep(room, group);
            Ok(group_info)
        })
    }

    /// One commit adding the device of every KeyPackage (MLSMessage bytes as
    /// served by the server; each is validated), plus the Welcome for them.
    /// The commit stays pending until [`Engine::merge_pending`].
    pub fn add_members(&mut self, room: &str, key_packages: &[Vec<u8>]) -> Result<Outgoing, EngineError> {
        if key_packages.is_empty() {
            return Err(EngineError::Invalid("no KeyPackages to add".into()));
        }
        let mut validated = Vec::with_capacity(key_packages.len());
        let mut identities: Vec<String> = Vec::with_capacity(key_packages.len());
        for (i, bytes) in key_packages.iter().enumerate() {
            let kp = parse_key_package(&self.crypto, bytes).map_err(|e| match e {
                EngineError::Malformed(m) => EngineError::Malformed(format!("KeyPackage {}: {m}", i + 1)),
                other => other,
            })?;
            let identity = identity_string(kp.leaf_node().credential());
            if identities.contains(&identity) {
                return Err(EngineError::Invalid(format!("two KeyPackages for {identity}")));
            }
            identities.push(identity);
            validated.push(kp);
        }
        self.txn("adding members", |tx| {
            let (_, mut group) = tx.take(room)?;
            check_can_commit(tx, room, &group)?;
            for member in group.members() {
                let identity = identity_string(&member.credential);
                if identities.contains(&identity) {
                    return Err(EngineError::Invalid(format!(
                        "{identity} is already a member of {room} (leaf {}); remove that leaf first",
                        member.index.u32()
                    )));
                }
            }
            let fail =
                |e: &dyn std::fmt::Display| EngineError::Mls(format!("cannot add members to {room}: {e}"));
            let bundle = group
                .commit_builder()
                .propose_adds(validated)
                .force_self_update(true)
                .load_psks(tx.provider.storage())
                .map_err(|e| fail(&e))?
                .build(tx.provider.rand(), tx.provider.crypto(), tx.signer, |_| true)
                .map_err(|e| fail(&e))?
                .stage_commit(&tx.provider)
                .map_err(|e| fail(&e))?;
            let out = outgoing(bundle.into_messages(), room)?;
            if out.welcome.is_none() {
                return Err(EngineError::Mls(format!("adding members to {room} made no Welcome")));
            }
            store::put_pending(tx.conn, room, PendingKind::Member, &out.commit)?;
            tx.keep(room, group);
            Ok(out)
        })
    }

    /// One commit removing these leaves (pending until [`Engine::merge_pending`]).
    /// A device cannot remove itself this way.
    pub fn remove_leaves(&mut self, room: &str, leaves: &[u32]) -> Result<Outgoing, EngineError> {
        let mut leaves = leaves.to_vec();
        leaves.sort_unstable();
        leaves.dedup();
        if leaves.is_empty() {
            return Err(EngineError::Invalid("no leaves to remove".into()));
        }
        self.txn("removing members", |tx| {
            let (_, mut group) = tx.take(room)?;
            check_can_commit(tx, room, &group)?;
            for &leaf in &leaves {
                if leaf == group.own_leaf_index().u32() {
                    return Err(EngineError::Invalid(format!(
                        "a device cannot remove itself from {room} with a commit; leave the room instead"
                    )));
                }
                if group.member_at(LeafNodeIndex::new(leaf)).is_none() {
                    return Err(EngineError::Invalid(format!("leaf {leaf} is not a member of {room}")));
                }
            }
            let fail =
                |e: &dyn std::fmt::Display| EngineError::Mls(format!("cannot remove members of {room}: {e}"));
            let bundle = group
                .commit_builder()
                .propose_removals(leaves.iter().map(|&l| LeafNodeIndex::new(l)))
                .load_psks(tx.provider.storage())
                .map_err(|e| fail(&e))?
                .build(tx.provider.rand(), tx.provider.crypto(), tx.signer, |_| true)
                .map_err(|e| fail(&e))?
                .stage_commit(&tx.provider)
                .map_err(|e| fail(&e))?;
            let out = outgoing(bundle.into_messages(), room)?;
            store::put_pending(tx.conn, room, PendingKind::Member, &out.commit)?;
            tx.keep(room, group);
            Ok(out)
        })
    }

    /// One commit that only refreshes this device's leaf (new keys, new
    /// lifetime): for post-compromise security, and so that a device that is
    /// idle for weeks does not hold a leaf whose lifetime runs out. Pending
    /// until [`Engine::merge_pending`].
    pub fn self_update(&mut self, room: &str) -> Result<Outgoing, EngineError> {
        self.txn("updating own leaf", |tx| {
            let (_, mut group) = tx.take(room)?;
            check_can_commit(tx, room, &group)?;
            let bundle = group
                .self_update(&tx.provider, tx.signer, LeafNodeParameters::default())
                .map_err(|e| EngineError::Mls(format!("cannot update this device's leaf in {room}: {e}")))?;
            let out = outgoing(bundle.into_messages(), room)?;
            store::put_pending(tx.conn, room, PendingKind::Member, &out.commit)?;
            tx.keep(room, group);
            Ok(out)
        })
    }

    /// The server accepted our pending commit: merge it. Nothing happens if it
    /// was merged already (the echo in the log came first).
    pub fn merge_pending(&mut self, room: &str) -> Result<(), EngineError> {
        self.txn("merging the pending commit", |tx| {
            let (_, mut group) = tx.take(room)?;
            match store::pending(tx.conn, room)? {
                // OpenMLS 0.9 merges an external commit as it makes it.
                Some((PendingKind::External, _)) => {}
                Some((PendingKind::Member, _)) | None => {
                    if group.pending_commit().is_some() {
                        group.merge_pending_commit(&tx.provider).map_err(|e| {
                            EngineError::Mls(format!("cannot merge the commit for {room}: {e}"))
                        })?;
                    }
                }
            }
            store::clear_pending(tx.conn, room)?;
            tx.keep(room, group);
            Ok(())
        })
    }

    /// The server refused our pending commit (another one won the epoch): drop
    /// it. For an external join this forgets the half-joined group and the
    /// room's state (its history stays). Nothing happens if nothing is pending.
    pub fn discard_pending(&mut self, room: &str) -> Result<(), EngineError> {
        self.txn("discarding the pending commit", |tx| {
            match store::pending(tx.conn, room)? {
                Some((PendingKind::External, _)) => {
                    let row = store::room_row(tx.conn, room)?
                        .ok_or_else(|| EngineError::NoSuchRoom(room.to_owned()))?;
                    tx.delete_group(&GroupId::from_slice(&row.group_id))?;
                    tx.cache.remove(room);
                    store::delete_room(tx.conn, room)?;
                }
                Some((PendingKind::Member, _)) | None => {
                    let (_, mut group) = tx.take(room)?;
                    group
                        .clear_pending_commit(tx.provider.storage())
                        .map_err(sql("clearing the pending commit"))?;
                    store::clear_pending(tx.conn, room)?;
                    tx.keep(room, group);
                }
            }
            Ok(())
        })
    }

    /// Joins `room` from a Welcome (MLSMessage bytes) and records
    /// `last_seq = joined_seq` (the sequence number of the commit that added
    /// this device) in the same transaction. A failed attempt changes nothing:
    /// the KeyPackage OpenMLS consumes is restored with the rollback, so the
    /// Welcome can be tried again.
    pub fn join_from_welcome(
        &mut self,
        room: &str,
        welcome: &[u8],
        joined_seq: Seq,
    ) -> Result<(), EngineError> {
        let welcome = match parse_message(welcome, "Welcome")? {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => return Err(EngineError::Malformed("expected a Welcome, got another MLS message".into())),
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(EngineError::Malformed(format!(
                "the Welcome uses ciphersuite {:?}, not {CIPHERSUITE:?}",
                welcome.ciphersuite()
            )));
        }
        self.txn("joining from a Welcome", |tx| {
            let fail = |e: &dyn std::fmt::Display| {
                EngineError::Mls(format!("cannot join {room} from this Welcome: {e}"))
            };
            let processed = ProcessedWelcome::new_from_welcome(&tx.provider, &join_config(), welcome)
                .map_err(|e| fail(&e))?;
            let info = processed.unverified_group_info();
            let group_id = info.group_id().clone();
            let epoch = info.epoch().as_u64();
            if let Some(old) =
                MlsGroup::load(tx.provider.storage(), &group_id).map_err(sql("loading the group"))?
            {
                if old.is_active() && old.epoch().as_u64() >= epoch {
                    return Err(EngineError::Invalid(format!(
                        "this device is already in {room} at epoch {}; the Welcome (epoch {epoch}) is stale",
                        old.epoch().as_u64()
                    )));
                }
            }
            tx.delete_group(&group_id)?;
            if let Some(row) = store::room_row(tx.conn, room)? {
                tx.delete_group(&GroupId::from_slice(&row.group_id))?;
            }
            let group = processed
                .into_staged_welcome(&tx.provider, None)
                .map_err(|e| fail(&e))?
                .into_group(&tx.provider)
                .map_err(|e| fail(&e))?;
            store::put_room(tx.conn, room, group_id.as_slice(), joined_seq)?;
            store::clear_pending(tx.conn, room)?;
            tracing::debug!(room, epoch, %joined_seq, "joined from a Welcome");
            tx.keep(room, group);
            Ok(())
        })
    }

    /// Joins `room` by external commit from its latest GroupInfo (bytes as
    /// served by the server), replacing any state this device had for it (a
    /// device that lost its state rejoins this way; its old leaf, found by this
    /// device's signature key, is removed in the same commit).
    ///
    /// The commit is pending: [`Engine::merge_pending`] when the server accepts
    /// it, then [`Engine::set_last_seq`] to its sequence number, so that earlier
    /// entries (which this device cannot read) are not replayed;
    /// [`Engine::discard_pending`] if the server refuses it, which forgets the
    /// half-joined group. `last_seq` is kept from the old state, or 0.
    pub fn join_external(&mut self, room: &str, group_info: &[u8]) -> Result<Outgoing, EngineError> {
        let info = match parse_message(group_info, "GroupInfo")? {
            MlsMessageBodyIn::GroupInfo(i) => i,
            _ => return Err(EngineError::Malformed("expected a GroupInfo, got another MLS message".into())),
        };
        if info.ciphersuite() != CIPHERSUITE {
            return Err(EngineError::Malformed(format!(
                "the GroupInfo uses ciphersuite {:?}, not {CIPHERSUITE:?}",
                info.ciphersuite()
            )));
        }
        self.txn("joining by external commit", |tx| {
            let group_id = info.group_id().clone();
            let old_row = store::room_row(tx.conn, room)?;
            if let Some(row) = &old_row {
                tx.delete_group(&GroupId::from_slice(&row.group_id))?;
            }
            tx.delete_group(&group_id)?;
            tx.cache.remove(room);
            let fail = |e: &dyn std::fmt::Display| {
                EngineError::Mls(format!("cannot join {room} by external commit: {e}"))
            };
            let (group, bundle) = MlsGroup::external_commit_builder()
                .with_config(join_config())
                .build_group(&tx.provider, info, tx.credential.clone())
                .map_err(|e| fail(&e))?
                .load_psks(tx.provider.storage())
                .map_err(|e| fail(&e))?
                .build(tx.provider.rand(), tx.provider.crypto(), tx.signer, |_| true)
                .map_err(|e| fail(&e))?
                .finalize(&tx.provider)
                .map_err(|e| fail(&e))?;
            let (commit, welcome, group_info) = bundle.into_messages();
            let group_info = match group_info {
                Some(gi) => serialize(&gi, "GroupInfo")?,
                // finalize() has already merged the commit: this is the new epoch.
                None => export_group_info(tx, &group, room)?,
            };
            let out = Outgoing {
                commit: serialize(&commit, "commit")?,
                welcome: welcome.map(|w| serialize(&w, "Welcome")).transpose()?,
                group_info,
            };
            // OpenMLS removes our old leaf when it has our signature key; a leaf
            // with our identity and another key (a re-made device key) stays.
            let own = group.own_leaf_index();
            if group.members().any(|m| m.index != own && identity_string(&m.credential) == tx.identity) {
                tracing::warn!(
                    room,
                    identity = tx.identity,
                    "another leaf with this identity stays in the group"
                );
            }
            let last_seq = old_row.map_or(Seq::ZERO, |r| r.last_seq);
            store::put_room(tx.conn, room, group_id.as_slice(), last_seq)?;
            store::put_pending(tx.conn, room, PendingKind::External, &out.commit)?;
            tracing::debug!(room, epoch = group.epoch().as_u64(), "external commit made");
            tx.keep(room, group);
            Ok(out)
        })
    }
}

/// The join configuration every group uses (creation uses the same settings).
fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// Refuses a new commit while one is pending, or after eviction.
fn check_can_commit(tx: &Tx<'_>, room: &str, group: &MlsGroup) -> Result<(), EngineError> {
    if !group.is_active() {
        return Err(EngineError::Evicted(room.to_owned()));
    }
    if group.pending_commit().is_some() || store::pending(tx.conn, room)?.is_some() {
        return Err(EngineError::CommitPending(room.to_owned()));
    }
    Ok(())
}

fn export_group_info(tx: &Tx<'_>, group: &MlsGroup, room: &str) -> Result<Vec<u8>, EngineError> {
    let info = group
        .export_group_info(tx.provider.crypto(), tx.signer, true)
        .map_err(|e| EngineError::Mls(format!("cannot export the GroupInfo of {room}: {e}")))?;
    serialize(&info, "GroupInfo")
}

/// The serialized messages of a commit bundle; the GroupInfo must be there.
fn outgoing(
    (commit, welcome, group_info): (MlsMessageOut, Option<MlsMessageOut>, Option<MlsMessageOut>),
    room: &str,
) -> Result<Outgoing, EngineError> {
    let group_info = group_info
        .ok_or_else(|| EngineError::Mls(format!("the commit for {room} came without a GroupInfo")))?;
    Ok(Outgoing {
        commit: serialize(&commit, "commit")?,
        welcome: welcome.map(|w| serialize(&w, "Welcome")).transpose()?,
        group_info: serialize(&group_info, "GroupInfo")?,
    })
}

/// Parses and validates a KeyPackage as served by the server.
pub(super) fn parse_key_package(crypto: &RustCrypto, bytes: &[u8]) -> Result<KeyPackage, EngineError> {
    let MlsMessageBodyIn::KeyPackage(kp) = parse_message(bytes, "KeyPackage")? else {
        return Err(EngineError::Malformed("expected a KeyPackage, got another MLS message".into()));
    };
    let kp = kp
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| EngineError::Malformed(format!("invalid KeyPackage: {e}")))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(EngineError::Malformed(format!(
            "the KeyPackage uses ciphersuite {:?}, not {CIPHERSUITE:?}",
            kp.ciphersuite()
        )));
    }
    let identity = identity_string(kp.leaf_node().credential());
    check_identity(&identity).map_err(|e| EngineError::Malformed(format!("in the KeyPackage, {e}")))?;
    Ok(kp)
}
