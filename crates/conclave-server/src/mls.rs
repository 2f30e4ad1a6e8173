//! The server's MLS checks: what a keyless Delivery Service can verify about
//! the MLS messages it orders, stores and relays.
//!
//! The server never holds group secrets. Per room it keeps a [`RoomGroup`]: an
//! OpenMLS [`PublicGroup`] (the public ratchet tree, group context and
//! transcript hash) bootstrapped from the creator's GroupInfo. With it the
//! server validates every commit fully (signatures, tree, proposals) before it
//! accepts it for the room's current epoch, maps leaves to
//! `"USERNAME:DEVICE_NO"` identities so that the caller can enforce roles, and
//! checks that the GroupInfo a committer uploads describes the new state, so
//! that external joiners and a restarted server can rely on it.
//!
//! Application messages are PrivateMessages the server cannot open; it only
//! checks their group and epoch. The free functions check what arrives outside
//! any room: KeyPackages ([`check_key_package`]) and the recipients of a
//! Welcome ([`welcome_recipients`]).
//!
//! Everything here takes untrusted bytes and never panics on them: every
//! failure is an [`MlsCheckError`] whose message says what was wrong.
//!
//! Conventions shared with the client engine: ciphersuite [`CIPHERSUITE`];
//! handshake messages are PublicMessages, application messages PrivateMessages;
//! GroupInfos carry the `ratchet_tree` and `external_pub` extensions; a leaf's
//! credential is a BasicCredential whose identity is `"USERNAME:DEVICE_NO"`
//! and whose signature key is the device's Ed25519 key, which does not change
//! while the leaf lives.
//!
//! What the server cannot check without keys: membership tags and
//! confirmation tags of commits, the contents of PrivateMessages and Welcomes,
//! and whether an external commit's `kem_output` matches the group's external
//! key. Members check those when they process the message.

use std::cmp::Ordering;
use std::collections::HashMap;

use conclave_proto::MemberIdentity;
use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _};
use openmls::prelude::{
    Ciphersuite, ContentType, Credential, CredentialType, GroupContext, GroupId, KeyPackage, LeafNode,
    LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, OpenMlsSignaturePublicKey, ProcessedMessageContent,
    Proposal, ProposalStore, ProposalType as MlsProposalType, ProtocolMessage, ProtocolVersion, PublicGroup,
    QueuedProposal, Sender, StagedCommit, Verifiable as _,
};
use openmls_rust_crypto::{MemoryStorage, RustCrypto};

/// The only ciphersuite Conclave rooms use.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Why an MLS object was refused. Each message says what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsCheckError {
    /// The bytes are not a well-formed MLSMessage (or snapshot).
    #[error("not a well-formed MLS message: {0}")]
    Malformed(String),
    /// The message belongs to another MLS group than this room's.
    #[error("the MLS message is for another group than this room's")]
    WrongGroup,
    /// The message was made in an older epoch than the room's current one
    /// (for an application message: older than the accepted window). The
    /// sender should sync the room and redo its operation.
    #[error("made in epoch {got}, but the room is at epoch {current}: sync the room and retry")]
    StaleEpoch {
        /// The room's current epoch.
        current: u64,
        /// The epoch the message was made in.
        got: u64,
    },
    /// The message claims an epoch the room has not reached: the sender's
    /// state is ahead of the server's, which a correct client never is.
    #[error("claims epoch {got}, but the room is only at epoch {current}")]
    FutureEpoch {
        /// The room's current epoch.
        current: u64,
        /// The epoch the message claims.
        got: u64,
    },
    /// A well-formed MLS message of the wrong kind for this request (for
    /// example an encrypted commit, or a KeyPackage where a GroupInfo was
    /// expected).
    #[error("wrong kind of MLS message: {0}")]
    WrongWireFormat(&'static str),
    /// The object uses another ciphersuite than [`CIPHERSUITE`].
    #[error("ciphersuite {0} is not supported: Conclave uses MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519")]
    WrongCiphersuite(String),
    /// A leaf's credential is not a BasicCredential with a
    /// `"USERNAME:DEVICE_NO"` identity.
    #[error("bad credential: {0}")]
    BadCredential(String),
    /// The message parsed but failed validation (signature, tree, proposals,
    /// or a Conclave rule).
    #[error("refused: {0}")]
    Invalid(String),
    /// OpenMLS failed internally; not the sender's fault.
    #[error("internal MLS error: {0}")]
    Internal(String),
}

/// A non-blank leaf of a room's ratchet tree: one device in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The leaf index in the ratchet tree.
    pub leaf: u32,
    /// The credential identity, `"USERNAME:DEVICE_NO"` (e.g. `"alice:1"`).
    pub identity: String,
    /// The device's Ed25519 signature public key (32 bytes).
    pub signature_key: Vec<u8>,
}

/// Who made a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitSender {
    /// A device already in the room, at this leaf (looked up before the
    /// commit applies).
    Member(LeafInfo),
    /// A device joining by itself with an external commit. The caller decides
    /// whether it may (Conclave: a device of a user who is a member).
    NewMember {
        /// The joiner's `"USERNAME:DEVICE_NO"`.
        identity: String,
        /// The joiner's Ed25519 signature public key.
        signature_key: Vec<u8>,
    },
}

/// A device added by an Add proposal, as its KeyPackage describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedMember {
    /// The added device's `"USERNAME:DEVICE_NO"`.
    pub identity: String,
    /// The added device's Ed25519 signature public key.
    pub signature_key: Vec<u8>,
    /// The hash reference of the KeyPackage used, as [`check_key_package`]
    /// reported it at upload and as the Welcome names it.
    pub key_package_ref: Vec<u8>,
}

/// A commit that [`RoomGroup::check_commit`] validated against the room's
/// current state, with what it does. Pass it to [`RoomGroup::apply`] once the
/// caller has accepted it (roles, identities, storage).
#[derive(Debug)]
pub struct CheckedCommit {
    /// The epoch the commit was made in (the room's epoch when checked).
    pub epoch: u64,
    /// Who made it.
    pub sender: CommitSender,
    /// Devices it adds, in proposal order.
    pub adds: Vec<AddedMember>,
    /// Leaves it removes (Remove and SelfRemove proposals), with their
    /// identities looked up in the tree before the commit. For an external
    /// commit this can only be the joiner's own old leaf (a resync).
    pub removes: Vec<LeafInfo>,
    /// Whether the commit carries an update path (new keys for the sender).
    pub has_update_path: bool,
    /// Every proposal the commit covers, by kind, in order.
    proposal_kinds: Vec<ProposalType>,
    /// The group state this commit was checked against.
    base: GroupContext,
    staged: StagedCommit,
}

impl CheckedCommit {
    /// The epoch the room moves to when this commit is applied.
    pub fn new_epoch(&self) -> u64 {
        self.staged.epoch().as_u64()
    }

    /// The kinds of all proposals this commit covers, in order. Lets the
    /// caller refuse what its policy does not allow (for example group context
    /// changes by non-admins).
    pub fn proposal_kinds(&self) -> &[ProposalType] {
        &self.proposal_kinds
    }
}

/// The kind of one proposal, as MLS types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProposalType {
    /// Adds a device.
    Add,
    /// New keys for the sender's own leaf.
    Update,
    /// Removes a leaf.
    Remove,
    /// The sender removes its own leaf.
    SelfRemove,
    /// Injects a pre-shared key.
    PreSharedKey,
    /// Re-initialises the group (new version or ciphersuite).
    ReInit,
    /// The joiner's part of an external commit.
    ExternalInit,
    /// Changes the group context's extensions.
    GroupContextExtensions,
    /// Any other (custom or future) proposal type.
    Other,
}

impl ProposalType {
    fn of(proposal: &Proposal) -> Self {
        match proposal.proposal_type() {
            MlsProposalType::Add => Self::Add,
            MlsProposalType::Update => Self::Update,
            MlsProposalType::Remove => Self::Remove,
            MlsProposalType::SelfRemove => Self::SelfRemove,
            MlsProposalType::PreSharedKey => Self::PreSharedKey,
            MlsProposalType::Reinit => Self::ReInit,
            MlsProposalType::ExternalInit => Self::ExternalInit,
            MlsProposalType::GroupContextExtensions => Self::GroupContextExtensions,
            _ => Self::Other,
        }
    }
}

/// What a standalone proposal does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposalKind {
    /// Proposes to add this device.
    Add(AddedMember),
    /// Proposes to remove this leaf (for a self-removal, the sender's own).
    Remove(LeafInfo),
    /// The sender proposes new keys for its own leaf.
    Update,
    /// Any other proposal.
    Other(ProposalType),
}

/// A standalone proposal (PublicMessage) that [`RoomGroup::check_proposal`]
/// validated. A later commit may cover it by reference only if the room's
/// group has it queued: pass it to [`RoomGroup::queue_proposal`].
#[derive(Debug)]
pub struct CheckedProposal {
    /// The epoch the proposal was made in (the room's epoch when checked).
    pub epoch: u64,
    /// The member who proposed it.
    pub sender: LeafInfo,
    /// What it proposes.
    pub kind: ProposalKind,
    base: GroupContext,
    queued: QueuedProposal,
}

/// A KeyPackage a device uploaded, as [`check_key_package`] verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The device's `"USERNAME:DEVICE_NO"`.
    pub identity: String,
    /// The device's Ed25519 signature public key.
    pub signature_key: Vec<u8>,
    /// The KeyPackage's hash reference: how Welcomes and Add proposals name it.
    pub key_package_ref: Vec<u8>,
    /// Whether the device marked it last-resort (may be handed out again when
    /// the device has no other left).
    pub last_resort: bool,
    /// When it stops being valid (seconds since the Unix epoch): no one may
    /// use it after that, so the server may forget it then.
    pub not_after: u64,
}

/// One room's keyless MLS state: the public part of the group, enough to
/// validate handshake messages. Owned by the room's task; every check is
/// synchronous CPU work (a commit to a 1000-member room costs milliseconds).
pub struct RoomGroup {
    group: PublicGroup,
    storage: MemoryStorage,
    crypto: RustCrypto,
}

// The room's task owns its group and may move between runtime threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<RoomGroup>();
    assert_send::<CheckedCommit>();
    assert_send::<CheckedProposal>();
};

impl std::fmt::Debug for RoomGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomGroup")
            .field("group_id", &self.group.group_id())
            .field("epoch", &self.epoch())
            .field("members", &self.group.members().count())
            .finish_non_exhaustive()
    }
}

impl RoomGroup {
    /// Builds the room's state from a GroupInfo (MLSMessage bytes) that
    /// carries the `ratchet_tree` and `external_pub` extensions.
    ///
    /// Checks that it parses, is a GroupInfo of our ciphersuite for
    /// `expected_group_id`, that its signature verifies against the signer's
    /// leaf, that the tree matches the group context and that every leaf is
    /// valid (signatures, lifetimes, `"USERNAME:DEVICE_NO"` credentials).
    ///
    /// Used for a new room (the caller then also checks `epoch() == 0` and
    /// one member, its creator's device) and to rebuild after a restart from
    /// the latest stored GroupInfo. Note that OpenMLS also checks the
    /// lifetimes of leaves that never committed since they were added
    /// (default 12 weeks): a rebuild of a room with such a stale leaf fails.
    /// [`RoomGroup::to_snapshot`] / [`RoomGroup::from_snapshot`] (restart)
    /// and [`RoomGroup::try_clone`] (rollback) avoid that.
    pub fn from_group_info(group_info: &[u8], expected_group_id: &[u8]) -> Result<Self, MlsCheckError> {
        let vgi = match parse(group_info)? {
            MlsMessageBodyIn::GroupInfo(vgi) => vgi,
            _ => return Err(MlsCheckError::WrongWireFormat("expected a GroupInfo")),
        };
        check_ciphersuite(vgi.ciphersuite())?;
        if vgi.group_id().as_slice() != expected_group_id {
            return Err(MlsCheckError::WrongGroup);
        }
        if vgi.extensions().external_pub().is_none() {
            return Err(MlsCheckError::Invalid(
                "the GroupInfo has no external_pub extension, so no device could join by external commit"
                    .into(),
            ));
        }
        let tree = vgi
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| MlsCheckError::Invalid("the GroupInfo has no ratchet_tree extension".into()))?
            .ratchet_tree()
            .clone();
        let crypto = RustCrypto::default();
        let storage = MemoryStorage::default();
        let (group, _) = guarded("a GroupInfo", || {
            PublicGroup::from_external(&crypto, &storage, tree, vgi, ProposalStore::new())
                .map_err(|e| MlsCheckError::Invalid(format!("GroupInfo refused: {e}")))
        })?;
        let room = Self { group, storage, crypto };
        room.check_all_credentials()?;
        Ok(room)
    }

    /// The room's current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The MLS group id (the client chose it; the server stores it per room).
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The devices in the room now, by leaf index.
    pub fn members(&self) -> Vec<LeafInfo> {
        self.group
            .members()
            .map(|m| LeafInfo {
                leaf: m.index.u32(),
                // Every leaf's identity was checked to be UTF-8 when it
                // entered the tree, so this never replaces anything.
                identity: String::from_utf8_lossy(m.credential.serialized_content()).into_owned(),
                signature_key: m.signature_key,
            })
            .collect()
    }

    /// The device at `leaf`, if that leaf is not blank.
    pub fn member(&self, leaf: u32) -> Option<LeafInfo> {
        let node = self.group.leaf(LeafNodeIndex::new(leaf))?;
        Some(LeafInfo {
            leaf,
            identity: String::from_utf8_lossy(node.credential().serialized_content()).into_owned(),
            signature_key: node.signature_key().as_slice().to_vec(),
        })
    }

    /// Validates a commit (MLSMessage bytes) without changing the state.
    ///
    /// It must be a PublicMessage with content type commit for this group,
    /// made in the current epoch (else [`MlsCheckError::StaleEpoch`]). Then
    /// OpenMLS validates it fully: the sender's signature, the proposals
    /// (key packages, removals, key uniqueness, capabilities) and the update
    /// path. On top, Conclave rules: every new leaf has a
    /// `"USERNAME:DEVICE_NO"` BasicCredential; a member's update path or
    /// Update proposal keeps its identity and signature key; an external
    /// commit removes at most the joiner's own old leaf.
    ///
    /// Membership and confirmation tags need group secrets and are left to
    /// the members.
    pub fn check_commit(&self, commit: &[u8]) -> Result<CheckedCommit, MlsCheckError> {
        let message = self.parse_handshake(commit, ContentType::Commit)?;
        let epoch = message.epoch().as_u64();
        let processed = guarded("a commit", || {
            self.group
                .process_message(&self.crypto, message)
                .map_err(|e| MlsCheckError::Invalid(format!("commit refused: {e}")))
        })?;
        let sender = processed.sender().clone();
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            _ => return Err(MlsCheckError::Internal("a commit was not processed as a commit".into())),
        };

        let path_leaf = staged.update_path_leaf_node();
        let sender = match sender {
            Sender::Member(index) => {
                let before = self.leaf_info(index)?;
                if let Some(new_leaf) = path_leaf {
                    check_same_device(&before, new_leaf, "the committer's update path")?;
                }
                CommitSender::Member(before)
            }
            Sender::NewMemberCommit => {
                let leaf = path_leaf.ok_or_else(|| {
                    MlsCheckError::Invalid("an external commit must carry an update path".into())
                })?;
                CommitSender::NewMember {
                    identity: identity_of(leaf.credential())?,
                    signature_key: leaf.signature_key().as_slice().to_vec(),
                }
            }
            Sender::External(_) | Sender::NewMemberProposal => {
                return Err(MlsCheckError::Invalid(
                    "only members and joining devices (external commit) may commit".into(),
                ))
            }
        };

        let mut adds = Vec::new();
        let mut removes: Vec<LeafInfo> = Vec::new();
        let mut proposal_kinds = Vec::new();
        for queued in staged.queued_proposals() {
            proposal_kinds.push(ProposalType::of(queued.proposal()));
            match queued.proposal() {
                Proposal::Add(add) => adds.push(self.added_member(add.key_package())?),
                Proposal::Remove(remove) => {
                    let removed = self.leaf_info(remove.removed())?;
                    if !removes.contains(&removed) {
                        removes.push(removed);
                    }
                }
                Proposal::SelfRemove => {
                    if let Sender::Member(index) = queued.sender() {
                        let removed = self.leaf_info(*index)?;
                        if !removes.contains(&removed) {
                            removes.push(removed);
                        }
                    }
                }
                Proposal::Update(update) => {
                    let Sender::Member(index) = queued.sender() else {
                        return Err(MlsCheckError::Invalid("an Update proposal not sent by a member".into()));
                    };
                    check_same_device(&self.leaf_info(*index)?, update.leaf_node(), "an Update proposal")?;
                }
                _ => {}
            }
        }
        if let CommitSender::NewMember { identity, .. } = &sender {
            if let Some(other) = removes.iter().find(|r| &r.identity != identity) {
                return Err(MlsCheckError::Invalid(format!(
                    "an external commit by {identity} may only remove its own old leaf, not {} (leaf {})",
                    other.identity, other.leaf
                )));
            }
        }

        Ok(CheckedCommit {
            epoch,
            sender,
            adds,
            removes,
            has_update_path: path_leaf.is_some(),
            proposal_kinds,
            base: self.group.group_context().clone(),
            staged,
        })
    }

    /// Applies a commit checked by [`RoomGroup::check_commit`]: the epoch
    /// advances and the tree changes. Fails, changing nothing, if the state
    /// moved since the check (another commit was applied first).
    pub fn apply(&mut self, checked: CheckedCommit) -> Result<(), MlsCheckError> {
        self.expect_base(&checked.base, checked.epoch)?;
        self.group
            .merge_commit(&self.storage, checked.staged)
            .map_err(|e| MlsCheckError::Internal(format!("merging a checked commit failed: {e}")))
    }

    /// Validates a standalone proposal (MLSMessage bytes, a PublicMessage of
    /// content type proposal, current epoch, sent by a member) without
    /// changing the state, with the same Conclave rules as
    /// [`RoomGroup::check_commit`]. Conclave uses this for a member leaving
    /// (it proposes its own removal; another member commits it).
    pub fn check_proposal(&self, proposal: &[u8]) -> Result<CheckedProposal, MlsCheckError> {
        let message = self.parse_handshake(proposal, ContentType::Proposal)?;
        let epoch = message.epoch().as_u64();
        let processed = guarded("a proposal", || {
            self.group
                .process_message(&self.crypto, message)
                .map_err(|e| MlsCheckError::Invalid(format!("proposal refused: {e}")))
        })?;
        let queued = match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(queued) => *queued,
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                return Err(MlsCheckError::Invalid(
                    "external join proposals are not accepted: join by external commit".into(),
                ))
            }
            _ => return Err(MlsCheckError::Internal("a proposal was not processed as a proposal".into())),
        };
        let Sender::Member(index) = queued.sender() else {
            return Err(MlsCheckError::Invalid("only members may send proposals".into()));
        };
        let sender = self.leaf_info(*index)?;
        let kind = match queued.proposal() {
            Proposal::Add(add) => ProposalKind::Add(self.added_member(add.key_package())?),
            Proposal::Remove(remove) => ProposalKind::Remove(self.leaf_info(remove.removed())?),
            Proposal::SelfRemove => ProposalKind::Remove(sender.clone()),
            Proposal::Update(update) => {
                check_same_device(&sender, update.leaf_node(), "an Update proposal")?;
                ProposalKind::Update
            }
            other => ProposalKind::Other(ProposalType::of(other)),
        };
        Ok(CheckedProposal { epoch, sender, kind, base: self.group.group_context().clone(), queued })
    }

    /// Queues a proposal checked by [`RoomGroup::check_proposal`], so that a
    /// commit covering it by reference validates. The queue empties at the
    /// next commit. It is not part of the GroupInfo: after rebuilding with
    /// [`RoomGroup::from_group_info`], queue the current epoch's stored
    /// proposals again.
    pub fn queue_proposal(&mut self, checked: CheckedProposal) -> Result<(), MlsCheckError> {
        self.expect_base(&checked.base, checked.epoch)?;
        self.group
            .add_proposal(&self.storage, checked.queued)
            .map_err(|e| MlsCheckError::Internal(format!("queueing a proposal failed: {e}")))
    }

    /// Checks an application message (MLSMessage bytes): a PrivateMessage of
    /// content type application for this group, made in an epoch within
    /// `[current - window, current]`. Returns that epoch. Handshake messages
    /// in PrivateMessage form are refused: Conclave sends them in the clear
    /// so that the server can validate them.
    pub fn check_application(&self, msg: &[u8], window: u64) -> Result<u64, MlsCheckError> {
        let message =
            match parse(msg)? {
                MlsMessageBodyIn::PrivateMessage(m) => ProtocolMessage::from(m),
                MlsMessageBodyIn::PublicMessage(_) => return Err(MlsCheckError::WrongWireFormat(
                    "a PublicMessage is not an application message: application messages must be encrypted",
                )),
                _ => {
                    return Err(MlsCheckError::WrongWireFormat(
                        "expected an application message (PrivateMessage)",
                    ))
                }
            };
        if message.content_type() != ContentType::Application {
            return Err(MlsCheckError::WrongWireFormat(
                "encrypted handshake message: commits and proposals must be sent as PublicMessage",
            ));
        }
        if message.group_id() != self.group.group_id() {
            return Err(MlsCheckError::WrongGroup);
        }
        let got = message.epoch().as_u64();
        let current = self.epoch();
        if got > current {
            return Err(MlsCheckError::FutureEpoch { current, got });
        }
        if got < current.saturating_sub(window) {
            return Err(MlsCheckError::StaleEpoch { current, got });
        }
        Ok(got)
    }

    /// Checks that a GroupInfo (MLSMessage bytes) describes the room's current
    /// state; call it after [`RoomGroup::apply`] with the GroupInfo the
    /// committer uploaded. This is what the server keeps, to serve external
    /// joiners and to rebuild after a restart.
    ///
    /// It must parse, be for this group and the current epoch (older:
    /// [`MlsCheckError::StaleEpoch`]), have exactly this room's group context
    /// and confirmation tag, carry `external_pub` and a `ratchet_tree` equal
    /// to this room's tree, and be signed by the member at its signer leaf.
    /// Costs one signature verification and one tree serialization.
    pub fn check_group_info(&self, group_info: &[u8]) -> Result<(), MlsCheckError> {
        let vgi = match parse(group_info)? {
            MlsMessageBodyIn::GroupInfo(vgi) => vgi,
            _ => return Err(MlsCheckError::WrongWireFormat("expected a GroupInfo")),
        };
        check_ciphersuite(vgi.ciphersuite())?;
        if vgi.group_id() != self.group.group_id() {
            return Err(MlsCheckError::WrongGroup);
        }
        self.expect_current_epoch(vgi.epoch().as_u64())?;
        if vgi.group_context() != self.group.group_context() {
            return Err(MlsCheckError::Invalid(
                "the GroupInfo's group context (tree hash, transcript or extensions) differs from the room's"
                    .into(),
            ));
        }
        if vgi.extensions().external_pub().is_none() {
            return Err(MlsCheckError::Invalid("the GroupInfo has no external_pub extension".into()));
        }
        let tree = vgi
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| MlsCheckError::Invalid("the GroupInfo has no ratchet_tree extension".into()))?
            .ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| MlsCheckError::Malformed(e.to_string()))?;
        let ours = self
            .group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| MlsCheckError::Internal(e.to_string()))?;
        if tree != ours {
            return Err(MlsCheckError::Invalid(
                "the GroupInfo's ratchet tree differs from the room's".into(),
            ));
        }

        // GroupInfoTBS is group_context || extensions || confirmation_tag ||
        // signer (u32). OpenMLS keeps the signer and the confirmation tag
        // crate-private, so read them from the signed bytes' tail.
        let payload = vgi.unsigned_payload().map_err(|e| MlsCheckError::Malformed(e.to_string()))?;
        let Some((head, signer)) = payload.split_last_chunk::<4>() else {
            return Err(MlsCheckError::Malformed("GroupInfo too short".into()));
        };
        let tag = self
            .group
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(|e| MlsCheckError::Internal(e.to_string()))?;
        if !head.ends_with(&tag) {
            return Err(MlsCheckError::Invalid(
                "the GroupInfo's confirmation tag differs from the room's last commit".into(),
            ));
        }
        let signer = u32::from_be_bytes(*signer);
        let leaf = self.group.leaf(LeafNodeIndex::new(signer)).ok_or_else(|| {
            MlsCheckError::Invalid(format!("the GroupInfo is signed by leaf {signer}, which is blank"))
        })?;
        let key = OpenMlsSignaturePublicKey::from_signature_key(
            leaf.signature_key().clone(),
            CIPHERSUITE.signature_algorithm(),
        );
        vgi.verify_no_out(&self.crypto, &key).map_err(|_| {
            MlsCheckError::Invalid(format!("the GroupInfo's signature does not verify against leaf {signer}"))
        })
    }

    /// Serializes the room's whole state (including queued proposals), for
    /// [`RoomGroup::from_snapshot`]. Unlike a rebuild from GroupInfo, a
    /// restore re-validates nothing, so leaves whose lifetime has expired
    /// since they joined do not stop it. The format is OpenMLS's internal
    /// storage format: fall back to [`RoomGroup::from_group_info`] if a
    /// snapshot from another OpenMLS version does not load.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, MlsCheckError> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| MlsCheckError::Internal("MLS storage lock poisoned".into()))?;
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        put_len(&mut out, entries.len())?;
        for (key, value) in entries {
            put_len(&mut out, key.len())?;
            out.extend_from_slice(key);
            put_len(&mut out, value.len())?;
            out.extend_from_slice(value);
        }
        Ok(out)
    }

    /// A copy of this state, for example to roll back an applied commit whose
    /// storage failed. It copies the serialized state (a few times the size
    /// of the ratchet tree) and parses it; unlike a rebuild from GroupInfo it
    /// re-validates nothing, so it also works for rooms with expired leaves.
    pub fn try_clone(&self) -> Result<Self, MlsCheckError> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| MlsCheckError::Internal("MLS storage lock poisoned".into()))?
            .clone();
        Self::from_storage(values, self.group_id())
    }

    /// Restores a room's state saved by [`RoomGroup::to_snapshot`], for the
    /// group `expected_group_id`.
    pub fn from_snapshot(snapshot: &[u8], expected_group_id: &[u8]) -> Result<Self, MlsCheckError> {
        let bad = |what: &str| MlsCheckError::Malformed(format!("room snapshot: {what}"));
        let mut rest = snapshot.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| bad("unknown format"))?;
        let count = take_len(&mut rest).ok_or_else(|| bad("truncated"))?;
        let mut values = HashMap::new();
        for _ in 0..count {
            let key = take_bytes(&mut rest).ok_or_else(|| bad("truncated"))?;
            let value = take_bytes(&mut rest).ok_or_else(|| bad("truncated"))?;
            values.insert(key.to_vec(), value.to_vec());
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Self::from_storage(values, expected_group_id)
    }

    /// Loads the group `group_id` from the contents of a [`MemoryStorage`].
    fn from_storage(values: HashMap<Vec<u8>, Vec<u8>>, group_id: &[u8]) -> Result<Self, MlsCheckError> {
        let storage = MemoryStorage::default();
        *storage.values.write().map_err(|_| MlsCheckError::Internal("MLS storage lock poisoned".into()))? =
            values;
        let group = PublicGroup::load(&storage, &GroupId::from_slice(group_id))
            .map_err(|e| MlsCheckError::Malformed(format!("room snapshot: {e}")))?
            .ok_or(MlsCheckError::WrongGroup)?;
        check_ciphersuite(group.ciphersuite())?;
        let room = Self { group, storage, crypto: RustCrypto::default() };
        room.check_all_credentials()?;
        Ok(room)
    }

    /// Parses a handshake message for this room: a PublicMessage of
    /// `content_type` for this group and the current epoch.
    fn parse_handshake(
        &self,
        bytes: &[u8],
        content_type: ContentType,
    ) -> Result<ProtocolMessage, MlsCheckError> {
        let message = match parse(bytes)? {
            MlsMessageBodyIn::PublicMessage(m) => m,
            MlsMessageBodyIn::PrivateMessage(_) => {
                return Err(MlsCheckError::WrongWireFormat(
                    "encrypted handshake message: commits and proposals must be sent as PublicMessage",
                ))
            }
            _ => return Err(MlsCheckError::WrongWireFormat("expected a handshake message (PublicMessage)")),
        };
        if message.content_type() != content_type {
            return Err(MlsCheckError::WrongWireFormat(match content_type {
                ContentType::Commit => "expected a commit",
                _ => "expected a proposal",
            }));
        }
        if message.group_id() != self.group.group_id() {
            return Err(MlsCheckError::WrongGroup);
        }
        self.expect_current_epoch(message.epoch().as_u64())?;
        Ok(ProtocolMessage::from(message))
    }

    fn expect_current_epoch(&self, got: u64) -> Result<(), MlsCheckError> {
        let current = self.epoch();
        match got.cmp(&current) {
            Ordering::Less => Err(MlsCheckError::StaleEpoch { current, got }),
            Ordering::Greater => Err(MlsCheckError::FutureEpoch { current, got }),
            Ordering::Equal => Ok(()),
        }
    }

    /// Refuses to apply something checked against another state than the
    /// current one.
    fn expect_base(&self, base: &GroupContext, epoch: u64) -> Result<(), MlsCheckError> {
        self.expect_current_epoch(epoch)?;
        if base != self.group.group_context() {
            return Err(MlsCheckError::Invalid(
                "checked against another state of the room: check it again".into(),
            ));
        }
        Ok(())
    }

    fn leaf_info(&self, index: LeafNodeIndex) -> Result<LeafInfo, MlsCheckError> {
        let leaf = self
            .group
            .leaf(index)
            .ok_or_else(|| MlsCheckError::Invalid(format!("leaf {} is blank", index.u32())))?;
        Ok(LeafInfo {
            leaf: index.u32(),
            identity: identity_of(leaf.credential())?,
            signature_key: leaf.signature_key().as_slice().to_vec(),
        })
    }

    fn added_member(&self, key_package: &KeyPackage) -> Result<AddedMember, MlsCheckError> {
        let leaf = key_package.leaf_node();
        Ok(AddedMember {
            identity: identity_of(leaf.credential())?,
            signature_key: leaf.signature_key().as_slice().to_vec(),
            key_package_ref: key_package
                .hash_ref(&self.crypto)
                .map_err(|e| MlsCheckError::Internal(e.to_string()))?
                .as_slice()
                .to_vec(),
        })
    }

    /// Every leaf must carry a Conclave identity: [`RoomGroup::members`]
    /// relies on it.
    fn check_all_credentials(&self) -> Result<(), MlsCheckError> {
        for member in self.group.members() {
            identity_of(&member.credential)?;
        }
        Ok(())
    }
}

/// Checks a KeyPackage a device uploads (MLSMessage bytes): it parses as a
/// KeyPackage of our ciphersuite, its leaf and KeyPackage signatures verify,
/// its lifetime is current and no longer than OpenMLS accepts for a leaf
/// (about 12 weeks), and its credential is a `"USERNAME:DEVICE_NO"`
/// BasicCredential. The caller checks that identity and key are the
/// uploading device's.
pub fn check_key_package(bytes: &[u8]) -> Result<KeyPackageInfo, MlsCheckError> {
    let key_package = match parse(bytes)? {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(MlsCheckError::WrongWireFormat("expected a KeyPackage")),
    };
    let crypto = RustCrypto::default();
    let key_package = guarded("a KeyPackage", || {
        key_package
            .validate(&crypto, ProtocolVersion::Mls10)
            .map_err(|e| MlsCheckError::Invalid(format!("KeyPackage refused: {e}")))
    })?;
    check_ciphersuite(key_package.ciphersuite())?;
    // A bounded lifetime lets the server forget a used KeyPackage once it
    // has expired, and still refuse it if it comes back before.
    if !key_package.life_time().has_acceptable_range() {
        return Err(MlsCheckError::Invalid("the KeyPackage's lifetime is longer than 12 weeks".into()));
    }
    let leaf = key_package.leaf_node();
    Ok(KeyPackageInfo {
        identity: identity_of(leaf.credential())?,
        signature_key: leaf.signature_key().as_slice().to_vec(),
        key_package_ref: key_package
            .hash_ref(&crypto)
            .map_err(|e| MlsCheckError::Internal(e.to_string()))?
            .as_slice()
            .to_vec(),
        last_resort: key_package.last_resort(),
        not_after: key_package.life_time().not_after(),
    })
}

/// The KeyPackageRefs a Welcome (MLSMessage bytes) is addressed to, in order:
/// the server delivers it to the devices that uploaded those KeyPackages. The
/// rest of a Welcome is encrypted; compare these with the commit's
/// [`AddedMember::key_package_ref`]s.
pub fn welcome_recipients(welcome: &[u8]) -> Result<Vec<Vec<u8>>, MlsCheckError> {
    let welcome = match parse(welcome)? {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => return Err(MlsCheckError::WrongWireFormat("expected a Welcome")),
    };
    check_ciphersuite(welcome.ciphersuite())?;
    if welcome.secrets().is_empty() {
        return Err(MlsCheckError::Invalid("the Welcome is addressed to no one".into()));
    }
    Ok(welcome.secrets().iter().map(|s| s.new_member().as_slice().to_vec()).collect())
}

const SNAPSHOT_MAGIC: &[u8] = b"conclave-room-mls-v1\0";

fn parse(bytes: &[u8]) -> Result<MlsMessageBodyIn, MlsCheckError> {
    guarded("an MLS message", || {
        MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .map(MlsMessageIn::extract)
            .map_err(|e| MlsCheckError::Malformed(e.to_string()))
    })
}

/// Runs an OpenMLS parse or validation of untrusted input, turning a panic
/// inside OpenMLS into an error: it has had such bugs, and one must not take
/// the room's task down. Only used around calls that change no room's state
/// (at most a fresh one that is then dropped), so nothing is left half-done:
/// hence the `AssertUnwindSafe`.
fn guarded<T>(what: &str, check: impl FnOnce() -> Result<T, MlsCheckError>) -> Result<T, MlsCheckError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or_else(|_| {
        tracing::error!("OpenMLS panicked while checking {what}");
        Err(MlsCheckError::Internal(format!("OpenMLS failed while checking {what}")))
    })
}

fn check_ciphersuite(ciphersuite: Ciphersuite) -> Result<(), MlsCheckError> {
    if ciphersuite == CIPHERSUITE {
        Ok(())
    } else {
        Err(MlsCheckError::WrongCiphersuite(format!("{ciphersuite:?}")))
    }
}

/// The `"USERNAME:DEVICE_NO"` of a credential, which must be a
/// BasicCredential.
fn identity_of(credential: &Credential) -> Result<String, MlsCheckError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(MlsCheckError::BadCredential(format!(
            "a {:?} credential; Conclave uses BasicCredential",
            credential.credential_type()
        )));
    }
    MemberIdentity::parse(credential.serialized_content())
        .map(|identity| identity.to_string())
        .map_err(|e| MlsCheckError::BadCredential(e.to_string()))
}

/// A leaf may get new encryption keys, but stays the same device: same
/// identity, same signature key.
fn check_same_device(before: &LeafInfo, after: &LeafNode, what: &str) -> Result<(), MlsCheckError> {
    let identity = identity_of(after.credential())?;
    if identity != before.identity {
        return Err(MlsCheckError::Invalid(format!(
            "{what} changes leaf {}'s identity from {} to {identity}",
            before.leaf, before.identity
        )));
    }
    if after.signature_key().as_slice() != before.signature_key.as_slice() {
        return Err(MlsCheckError::Invalid(format!(
            "{what} changes the signature key of {} (leaf {}): a device's key does not change",
            before.identity, before.leaf
        )));
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), MlsCheckError> {
    let len =
        u32::try_from(len).map_err(|_| MlsCheckError::Internal("room state too large to snapshot".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn take_len(rest: &mut &[u8]) -> Option<usize> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    usize::try_from(u32::from_be_bytes(*len)).ok()
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_len(rest)?;
    if rest.len() < len {
        return None;
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Some(bytes)
}

#[cfg(test)]
mod tests;
