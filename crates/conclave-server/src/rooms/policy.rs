//! A room's rules, without I/O: who may change the room's membership and
//! group, judged on a commit the MLS layer has already validated, and the
//! plan of what accepting it means (members who join and leave, the Welcome's
//! recipients, the durable writes).
//!
//! The actor gathers the facts (the checked commit, the registered device
//! behind each added leaf, the members and their roles, the group's leaves)
//! and carries the plan out: it writes, then updates memory and delivers.
//! Every refusal is a [`RoomError`], turned into a wire error in one place
//! (`From<RoomError> for ErrorBody`).

use std::collections::{HashMap, HashSet};

use conclave_proto::{ErrorBody, ErrorCode, MemberIdentity, Role, Seq, Username, MAX_MESSAGE_BYTES};

use crate::mls::{AddedMember, CheckedCommit, CommitSender, LeafInfo, MlsCheckError, ProposalType};
use crate::store::{DeviceAccount, DeviceNo, RoomId, RoomMember, UserId, WriteOp};

/// Why a room refused a request. Each message says what was wrong and, where
/// the client can do something, what.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The caller is not a member (or the room does not exist: the same answer).
    #[error("not a member of #{room}")]
    NotAMember {
        /// The room as named.
        room: String,
    },
    /// The commit is for an older (or newer) epoch than the room's.
    #[error("stale epoch: the commit is for epoch {got} but the room is at epoch {current}; sync and retry")]
    StaleEpoch {
        /// The room's epoch.
        current: u64,
        /// The commit's.
        got: u64,
    },
    /// The MLS layer refused a message.
    #[error("the MLS message was refused: {0}")]
    Mls(String),
    /// A commit that is valid MLS but not acceptable here.
    #[error("{0}")]
    InvalidCommit(String),
    /// The caller's role does not allow it.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// A user to add is already in the room.
    #[error("{user} is already a member of #{room}")]
    AlreadyMember {
        /// The user.
        user: Username,
        /// The room.
        room: String,
    },
    /// The room would grow past the server's limit.
    #[error("#{room} would have more than {max} members, the most this server allows")]
    RoomFull {
        /// The room.
        room: String,
        /// `max_members_per_room`.
        max: usize,
    },
    /// A user to add is in as many rooms as the server allows.
    #[error("{user} is in {max} rooms, the most this server allows")]
    TooManyRooms {
        /// The user.
        user: Username,
        /// `max_rooms_per_user`.
        max: usize,
    },
    /// A user to add does not exist.
    #[error("there is no user named {0}")]
    NoSuchUser(Username),
    /// A user to add has no KeyPackage left on the server.
    #[error("{0} has no device ready to join (no KeyPackages on the server); they must connect once first")]
    NoKeyPackages(String),
    /// A username that breaks the naming rule.
    #[error("{0}")]
    InvalidUsername(String),
    /// A message over the size limit.
    #[error("message too large: at most {MAX_MESSAGE_BYTES} bytes of text")]
    MessageTooLarge,
    /// `SetRole` to owner.
    #[error("the role must be admin or member")]
    InvalidRole,
    /// `SetRole` for someone outside the room.
    #[error("{user} is not a member of #{room}")]
    TargetNotAMember {
        /// The user as named.
        user: String,
        /// The room.
        room: String,
    },
    /// Something failed inside the server; the server log has the details.
    #[error("internal server error; the server log has details")]
    Internal,
    /// The server could not do it (storage, shutdown): already logged, and
    /// already worded for the client.
    #[error("{}", .0.message)]
    Unavailable(ErrorBody),
}

impl From<MlsCheckError> for RoomError {
    fn from(e: MlsCheckError) -> Self {
        match e {
            MlsCheckError::StaleEpoch { current, got } => RoomError::StaleEpoch { current, got },
            other => RoomError::Mls(other.to_string()),
        }
    }
}

impl From<ErrorBody> for RoomError {
    fn from(e: ErrorBody) -> Self {
        RoomError::Unavailable(e)
    }
}

/// The one place where a room's refusals become wire errors.
impl From<RoomError> for ErrorBody {
    fn from(e: RoomError) -> Self {
        let code = match &e {
            RoomError::NotAMember { .. } | RoomError::TargetNotAMember { .. } => ErrorCode::NOT_A_MEMBER,
            RoomError::StaleEpoch { .. } => ErrorCode::STALE_EPOCH,
            RoomError::Mls(_) | RoomError::InvalidCommit(_) => ErrorCode::INVALID_MLS,
            RoomError::PermissionDenied(_) => ErrorCode::PERMISSION_DENIED,
            RoomError::AlreadyMember { .. } => ErrorCode::ALREADY_MEMBER,
            RoomError::RoomFull { .. } | RoomError::TooManyRooms { .. } => ErrorCode::LIMIT_REACHED,
            RoomError::NoSuchUser(_) => ErrorCode::NO_SUCH_USER,
            RoomError::NoKeyPackages(_) | RoomError::InvalidRole => ErrorCode::INVALID_REQUEST,
            RoomError::InvalidUsername(_) => ErrorCode::INVALID_USERNAME,
            RoomError::MessageTooLarge => ErrorCode::MESSAGE_TOO_LARGE,
            RoomError::Internal => ErrorCode::INTERNAL,
            RoomError::Unavailable(body) => return body.clone(),
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// What the policy needs to know of a commit (from a [`CheckedCommit`]).
pub struct CommitFacts<'a> {
    /// Who made it.
    pub sender: &'a CommitSender,
    /// The devices it adds, in order.
    pub adds: &'a [AddedMember],
    /// The leaves it removes.
    pub removes: &'a [LeafInfo],
    /// Every proposal it covers.
    pub kinds: &'a [ProposalType],
}

impl<'a> CommitFacts<'a> {
    /// The facts of a checked commit.
    pub fn of(commit: &'a CheckedCommit) -> Self {
        Self {
            sender: &commit.sender,
            adds: &commit.adds,
            removes: &commit.removes,
            kinds: commit.proposal_kinds(),
        }
    }
}

/// The room as the policy sees it, before the commit.
pub struct RoomView<'a> {
    /// Its name, for messages.
    pub name: &'a str,
    /// Its members and their roles.
    pub members: &'a HashMap<UserId, RoomMember>,
    /// The group's leaves.
    pub leaves: &'a [LeafInfo],
}

/// A user who becomes a member with the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    /// The user.
    pub user: UserId,
    /// Their username.
    pub username: Username,
    /// Their display name when added.
    pub display_name: String,
}

/// What accepting a commit means. Nothing in it can fail to carry out once
/// the writes are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPlan {
    /// Users who become members, in the order they were added.
    pub joined: Vec<Joiner>,
    /// Users who stop being members: none of their devices stays in the group.
    pub left: Vec<(UserId, Username)>,
    /// Each added device gets the commit's Welcome.
    pub welcomes: Vec<(UserId, DeviceNo)>,
}

/// Judges a commit that the MLS layer validated, made by `from` (a member),
/// against the room's rules. `devices` holds the registered device behind
/// each added leaf, in order (`None`: no such device). `welcome` lists the
/// KeyPackages the commit's Welcome is addressed to (called only when the
/// commit adds devices; `None`: no Welcome was sent).
///
/// The rules: the commit is signed by this very device; every added leaf is
/// a registered device whose identity matches its key; only owners and
/// admins add members, remove other users, or change anything but their own
/// leaf and departed members' leaves; the owner cannot be removed; an
/// external commit adds no one and removes only its own user's devices; a
/// user leaves only when none of their devices stays; the Welcome covers
/// every added device.
pub fn check_commit<W>(
    room: &RoomView<'_>,
    from: &DeviceAccount,
    commit: &CommitFacts<'_>,
    devices: &[Option<DeviceAccount>],
    welcome: Option<W>,
) -> Result<CommitPlan, RoomError>
where
    W: FnOnce() -> Result<Vec<Vec<u8>>, RoomError>,
{
    let me =
        room.members.get(&from.user).ok_or_else(|| RoomError::NotAMember { room: room.name.to_owned() })?;
    let bad = RoomError::InvalidCommit;

    // The committer must be this very device.
    let (sender_identity, sender_key, external) = match commit.sender {
        CommitSender::Member(leaf) => (&leaf.identity, &leaf.signature_key, false),
        CommitSender::NewMember { identity, signature_key } => (identity, signature_key, true),
    };
    if *sender_identity != from.identity() || sender_key.as_slice() != from.key.0 {
        return Err(bad(format!(
            "the commit is signed by {sender_identity}, not by this device ({})",
            from.identity()
        )));
    }

    // Adds: every added leaf must be a real device of a real user.
    let mut added: Vec<(&DeviceAccount, &AddedMember)> = Vec::with_capacity(commit.adds.len());
    for (i, add) in commit.adds.iter().enumerate() {
        if add.signature_key.len() != 32 {
            return Err(bad("an added device key is not an Ed25519 key".into()));
        }
        let device = devices
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| bad(format!("{} is not a registered device", add.identity)))?;
        if device.identity() != add.identity {
            return Err(bad(format!("the added identity {} does not match its device key", add.identity)));
        }
        added.push((device, add));
    }
    if external && !added.is_empty() {
        return Err(bad("an external commit may not add anyone".into()));
    }
    if !added.is_empty() && !me.role.can_manage() {
        return Err(RoomError::PermissionDenied("only owners and admins can add members"));
    }
    // Plain members may update their own leaf and clean up departed
    // members' leaves; anything else (group context, PSKs, reinit) is for
    // owners and admins.
    let plain_may = |k: &ProposalType| {
        matches!(k, ProposalType::Update | ProposalType::Remove | ProposalType::SelfRemove)
            || (external && *k == ProposalType::ExternalInit)
    };
    if !me.role.can_manage() && !commit.kinds.iter().all(plain_may) {
        return Err(RoomError::PermissionDenied("only owners and admins can change the group's settings"));
    }

    // Removes: map leaves to users.
    let mut left: Vec<(UserId, Username)> = Vec::new();
    for leaf in commit.removes {
        let name = leaf
            .identity
            .parse::<MemberIdentity>()
            .map_err(|e| bad(format!("a removed leaf has an unknown identity: {e}")))?
            .username;
        match room.members.values().find(|m| m.username == name) {
            // Leaves of users who already left (or were removed) may be
            // cleaned up by any member; a user may drop their own devices.
            None => {}
            Some(m) if m.user == from.user => {}
            Some(m) => {
                if !me.role.can_manage() {
                    return Err(RoomError::PermissionDenied("only owners and admins can remove members"));
                }
                if m.role == Role::Owner {
                    return Err(RoomError::PermissionDenied("the owner cannot be removed"));
                }
                if external {
                    return Err(bad("an external commit may only remove its own user's devices".into()));
                }
                if !left.iter().any(|(u, _)| *u == m.user) {
                    left.push((m.user, m.username.clone()));
                }
            }
        }
    }
    // A user stays a member while any of their devices stays in the group.
    let removed_leaves: HashSet<u32> = commit.removes.iter().map(|l| l.leaf).collect();
    left.retain(|(_, name)| {
        !room.leaves.iter().any(|l| {
            !removed_leaves.contains(&l.leaf)
                && l.identity.parse::<MemberIdentity>().is_ok_and(|id| id.username == *name)
        })
    });

    // Welcome routing: each added device gets the Welcome naming its KeyPackage.
    let mut welcomes = Vec::with_capacity(added.len());
    if !added.is_empty() {
        let recipients =
            welcome.ok_or_else(|| bad("a commit that adds devices needs its Welcome".into()))?()?;
        for (device, add) in &added {
            if !recipients.contains(&add.key_package_ref) {
                return Err(bad("the Welcome does not cover every added device".into()));
            }
            welcomes.push((device.user, device.device));
        }
    }

    let mut seen = HashSet::new();
    let joined = added
        .iter()
        .filter(|(d, _)| !room.members.contains_key(&d.user) && seen.insert(d.user))
        .map(|(d, _)| Joiner {
            user: d.user,
            username: d.username.clone(),
            display_name: d.display_name.clone(),
        })
        .collect();
    Ok(CommitPlan { joined, left, welcomes })
}

/// What the commit's writes need besides the plan.
pub struct CommitRecord<'a> {
    /// The room.
    pub room: RoomId,
    /// The commit's sequence number.
    pub seq: Seq,
    /// When it was accepted.
    pub time_ms: u64,
    /// The committing device.
    pub from: &'a DeviceAccount,
    /// The encoded log entry.
    pub entry: Vec<u8>,
    /// The new epoch.
    pub epoch: u64,
    /// Its GroupInfo.
    pub group_info: Vec<u8>,
    /// The server's group state at that epoch.
    pub group_state: Vec<u8>,
    /// The Welcome, if the commit adds devices.
    pub welcome: Option<&'a [u8]>,
}

impl CommitPlan {
    /// The log entry's `added` and `removed` names.
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        (
            self.joined.iter().map(|j| j.username.to_string()).collect(),
            self.left.iter().map(|(_, n)| n.to_string()).collect(),
        )
    }

    /// The durable writes of the commit, as one log-writer job: the entry,
    /// the new epoch, memberships, and a Welcome per added device.
    pub fn writes(&self, c: CommitRecord<'_>) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(2 + self.joined.len() + self.left.len() + self.welcomes.len());
        ops.push(WriteOp::Append {
            room: c.room,
            seq: c.seq,
            time_ms: c.time_ms,
            sender: Some((c.from.user, c.from.device)),
            client_msg_id: None,
            entry: c.entry,
        });
        ops.push(WriteOp::SetEpoch {
            room: c.room,
            epoch: c.epoch,
            group_info: c.group_info,
            group_state: c.group_state,
        });
        for j in &self.joined {
            ops.push(WriteOp::AddMember {
                room: c.room,
                user: j.user,
                role: Role::Member,
                joined_seq: c.seq,
            });
        }
        for (user, _) in &self.left {
            ops.push(WriteOp::RemoveMember { room: c.room, user: *user });
        }
        if let Some(welcome) = c.welcome {
            for (user, device) in &self.welcomes {
                ops.push(WriteOp::Welcome {
                    room: c.room,
                    user: *user,
                    device: *device,
                    seq: c.seq,
                    welcome: welcome.to_vec(),
                });
            }
        }
        ops
    }

    /// The member records of the users who join at `seq`.
    pub fn new_members(&self, seq: Seq) -> impl Iterator<Item = RoomMember> + '_ {
        self.joined.iter().map(move |j| RoomMember {
            user: j.user,
            username: j.username.clone(),
            display_name: j.display_name.clone(),
            role: Role::Member,
            joined_seq: seq,
        })
    }
}

#[cfg(test)]
mod tests;
