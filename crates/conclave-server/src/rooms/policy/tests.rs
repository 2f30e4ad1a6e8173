//! The commit policy on hand-built facts: no actor, no MLS group, no store.

use std::collections::HashMap;

use conclave_proto::{validate_username, ErrorBody, ErrorCode, Role, Seq};

use super::{check_commit, CommitFacts, CommitPlan, CommitRecord, Joiner, RoomError, RoomView};
use crate::mls::{AddedMember, CommitSender, LeafInfo, ProposalType};
use crate::store::{DeviceAccount, DeviceKey, DeviceNo, RoomId, RoomMember, UserId, WriteOp};

fn key(user: i64, device: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = user as u8;
    k[1] = device as u8;
    k
}

fn device(user: i64, name: &str, device: u32) -> DeviceAccount {
    DeviceAccount {
        user: UserId(user),
        username: validate_username(name).unwrap(),
        display_name: format!("{name} (display)"),
        device: DeviceNo(device),
        key: DeviceKey(key(user, device)),
    }
}

fn leaf(leaf: u32, d: &DeviceAccount) -> LeafInfo {
    LeafInfo { leaf, identity: d.identity(), signature_key: d.key.0.to_vec() }
}

fn added(d: &DeviceAccount) -> AddedMember {
    AddedMember {
        identity: d.identity(),
        signature_key: d.key.0.to_vec(),
        key_package_ref: format!("kp-{}", d.identity()).into_bytes(),
    }
}

/// alice (owner, 1), bob (admin, 2, two devices), carol (member, 3); dave
/// (4) and erin (5) are registered but not in the room.
struct Room {
    members: HashMap<UserId, RoomMember>,
    leaves: Vec<LeafInfo>,
}

fn alice() -> DeviceAccount {
    device(1, "alice", 1)
}
fn bob(n: u32) -> DeviceAccount {
    device(2, "bob", n)
}
fn carol() -> DeviceAccount {
    device(3, "carol", 1)
}
fn dave() -> DeviceAccount {
    device(4, "dave", 1)
}

fn room() -> Room {
    let member = |d: &DeviceAccount, role| RoomMember {
        user: d.user,
        username: d.username.clone(),
        display_name: d.display_name.clone(),
        role,
        joined_seq: Seq::FIRST,
    };
    let members =
        [member(&alice(), Role::Owner), member(&bob(1), Role::Admin), member(&carol(), Role::Member)]
            .into_iter()
            .map(|m| (m.user, m))
            .collect();
    let leaves = vec![leaf(0, &alice()), leaf(1, &bob(1)), leaf(2, &bob(2)), leaf(3, &carol())];
    Room { members, leaves }
}

impl Room {
    fn view(&self) -> RoomView<'_> {
        RoomView { name: "lab", members: &self.members, leaves: &self.leaves }
    }
}

type Recipients = fn() -> Result<Vec<Vec<u8>>, RoomError>;

/// A commit by `from` (at `at`) with these adds, removes and kinds, and a
/// Welcome for every added device.
fn judge(
    from: &DeviceAccount,
    at: u32,
    adds: &[DeviceAccount],
    removes: &[LeafInfo],
    kinds: &[ProposalType],
) -> Result<CommitPlan, RoomError> {
    let r = room();
    let sender = CommitSender::Member(leaf(at, from));
    let add_facts: Vec<AddedMember> = adds.iter().map(added).collect();
    let devices: Vec<Option<DeviceAccount>> = adds.iter().cloned().map(Some).collect();
    let refs: Vec<Vec<u8>> = add_facts.iter().map(|a| a.key_package_ref.clone()).collect();
    let facts = CommitFacts { sender: &sender, adds: &add_facts, removes, kinds };
    check_commit(&r.view(), from, &facts, &devices, Some(move || Ok(refs)))
}

fn denied(result: Result<CommitPlan, RoomError>, why: &str) {
    match result {
        Err(RoomError::PermissionDenied(what)) => assert_eq!(what, why),
        other => panic!("expected permission denied ({why}), got {other:?}"),
    }
}

fn invalid(result: Result<CommitPlan, RoomError>, why: &str) {
    match result {
        Err(RoomError::InvalidCommit(what)) => assert!(what.contains(why), "{what}"),
        other => panic!("expected an invalid commit ({why}), got {other:?}"),
    }
}

#[test]
fn an_admin_adds_a_user_and_the_plan_routes_the_welcome() {
    let plan = judge(&bob(1), 1, &[dave()], &[], &[ProposalType::Add]).unwrap();
    assert_eq!(
        plan.joined,
        [Joiner { user: UserId(4), username: dave().username, display_name: "dave (display)".into() }]
    );
    assert!(plan.left.is_empty());
    assert_eq!(plan.welcomes, [(UserId(4), DeviceNo(1))]);
    assert_eq!(plan.names(), (vec!["dave".to_owned()], vec![]));

    let from = bob(1);
    const NINE: Seq = Seq::new(9);
    let ops = plan.writes(CommitRecord {
        room: RoomId(7),
        seq: NINE,
        time_ms: 5,
        from: &from,
        entry: b"entry".to_vec(),
        epoch: 3,
        group_info: b"gi".to_vec(),
        group_state: b"state".to_vec(),
        welcome: Some(b"welcome"),
    });
    assert!(matches!(&ops[0], WriteOp::Append { seq: NINE, sender: Some((UserId(2), DeviceNo(1))), .. }));
    assert!(matches!(&ops[1], WriteOp::SetEpoch { epoch: 3, .. }));
    assert!(matches!(
        &ops[2],
        WriteOp::AddMember { user: UserId(4), role: Role::Member, joined_seq: NINE, .. }
    ));
    assert!(
        matches!(&ops[3], WriteOp::Welcome { user: UserId(4), device: DeviceNo(1), seq: NINE, welcome, .. } if welcome == b"welcome")
    );
    assert_eq!(ops.len(), 4);
    let m: Vec<RoomMember> = plan.new_members(NINE).collect();
    assert_eq!((m[0].username.as_str(), m[0].role, m[0].joined_seq), ("dave", Role::Member, NINE));
}

#[test]
fn a_new_device_of_a_member_gets_the_welcome_but_joins_no_one() {
    let plan = judge(&alice(), 0, &[bob(3)], &[], &[ProposalType::Add]).unwrap();
    assert!(plan.joined.is_empty());
    assert_eq!(plan.welcomes, [(UserId(2), DeviceNo(3))]);
}

#[test]
fn a_plain_member_may_not_add_remove_others_or_change_settings() {
    denied(
        judge(&carol(), 3, &[dave()], &[], &[ProposalType::Add]),
        "only owners and admins can add members",
    );
    denied(
        judge(&carol(), 3, &[], &[leaf(1, &bob(1)), leaf(2, &bob(2))], &[ProposalType::Remove; 2]),
        "only owners and admins can remove members",
    );
    for kind in [ProposalType::GroupContextExtensions, ProposalType::PreSharedKey, ProposalType::ReInit] {
        denied(
            judge(&carol(), 3, &[], &[], &[kind]),
            "only owners and admins can change the group's settings",
        );
    }
    // An update of their own leaf is fine, and so is an admin's settings change.
    assert!(judge(&carol(), 3, &[], &[], &[ProposalType::Update]).is_ok());
    assert!(judge(&bob(1), 1, &[], &[], &[ProposalType::GroupContextExtensions]).is_ok());
}

#[test]
fn the_owner_cannot_be_removed() {
    denied(
        judge(&bob(1), 1, &[], &[leaf(0, &alice())], &[ProposalType::Remove]),
        "the owner cannot be removed",
    );
}

#[test]
fn a_user_leaves_when_their_last_device_does() {
    // One of bob's two devices: bob stays.
    let plan = judge(&alice(), 0, &[], &[leaf(2, &bob(2))], &[ProposalType::Remove]).unwrap();
    assert!(plan.left.is_empty());
    // Both: bob leaves, once.
    let plan =
        judge(&alice(), 0, &[], &[leaf(1, &bob(1)), leaf(2, &bob(2))], &[ProposalType::Remove; 2]).unwrap();
    assert_eq!(plan.left, [(UserId(2), bob(1).username)]);
    assert_eq!(plan.names(), (vec![], vec!["bob".to_owned()]));
}

#[test]
fn anyone_may_clean_up_leaves_of_departed_users_and_drop_their_own_devices() {
    let gone = device(9, "zed", 1);
    let plan = judge(&carol(), 3, &[], &[leaf(4, &gone)], &[ProposalType::Remove]).unwrap();
    assert!(plan.left.is_empty());
    let plan = judge(&bob(1), 1, &[], &[leaf(2, &bob(2))], &[ProposalType::SelfRemove]).unwrap();
    assert!(plan.left.is_empty());
}

#[test]
fn the_commit_must_come_from_this_device() {
    let r = room();
    let from = carol();
    let sender = CommitSender::Member(leaf(0, &alice()));
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &[], kinds: &[] };
    invalid(
        check_commit(&r.view(), &from, &facts, &[], None::<Recipients>),
        "the commit is signed by alice:1, not by this device (carol:1)",
    );
    // Same identity, another key.
    let mut forged = leaf(3, &carol());
    forged.signature_key[5] ^= 1;
    let sender = CommitSender::Member(forged);
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &[], kinds: &[] };
    invalid(check_commit(&r.view(), &from, &facts, &[], None::<Recipients>), "not by this device");
}

#[test]
fn added_leaves_must_be_registered_devices_with_their_own_identity() {
    let r = room();
    let from = alice();
    let sender = CommitSender::Member(leaf(0, &from));
    let adds = [added(&dave())];
    let facts = CommitFacts { sender: &sender, adds: &adds, removes: &[], kinds: &[ProposalType::Add] };
    invalid(
        check_commit(&r.view(), &from, &facts, &[None], None::<Recipients>),
        "dave:1 is not a registered device",
    );
    // The key belongs to erin's device.
    let erin = device(5, "erin", 1);
    invalid(
        check_commit(&r.view(), &from, &facts, &[Some(erin)], None::<Recipients>),
        "the added identity dave:1 does not match its device key",
    );
    let mut short = added(&dave());
    short.signature_key.truncate(31);
    let adds = [short];
    let facts = CommitFacts { sender: &sender, adds: &adds, removes: &[], kinds: &[ProposalType::Add] };
    invalid(check_commit(&r.view(), &from, &facts, &[None], None::<Recipients>), "not an Ed25519 key");
}

#[test]
fn the_welcome_must_exist_and_cover_every_added_device() {
    let r = room();
    let from = alice();
    let sender = CommitSender::Member(leaf(0, &from));
    let adds = [added(&dave())];
    let facts = CommitFacts { sender: &sender, adds: &adds, removes: &[], kinds: &[ProposalType::Add] };
    let devices = [Some(dave())];
    invalid(check_commit(&r.view(), &from, &facts, &devices, None::<Recipients>), "needs its Welcome");
    invalid(
        check_commit(&r.view(), &from, &facts, &devices, Some(|| Ok(vec![b"someone else".to_vec()]))),
        "does not cover every added device",
    );
    // A commit without adds never looks at a Welcome.
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &[], kinds: &[ProposalType::Update] };
    let untouched = || -> Result<Vec<Vec<u8>>, RoomError> { panic!("the Welcome was parsed") };
    assert!(check_commit(&r.view(), &from, &facts, &[], Some(untouched)).is_ok());
}

#[test]
fn an_external_commit_adds_no_one_and_removes_only_its_own_users_devices() {
    let r = room();
    let from = carol();
    let sender = CommitSender::NewMember { identity: from.identity(), signature_key: from.key.0.to_vec() };
    let kinds = [ProposalType::ExternalInit, ProposalType::Remove];
    // Its own old leaf: fine, even for a plain member.
    let own = [leaf(3, &carol())];
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &own, kinds: &kinds };
    assert!(check_commit(&r.view(), &from, &facts, &[], None::<Recipients>).is_ok());
    // Adding someone.
    let adds = [added(&dave())];
    let facts =
        CommitFacts { sender: &sender, adds: &adds, removes: &[], kinds: &[ProposalType::ExternalInit] };
    invalid(
        check_commit(&r.view(), &from, &facts, &[Some(dave())], None::<Recipients>),
        "an external commit may not add anyone",
    );
    // An admin's external commit that removes another user.
    let from = bob(1);
    let sender = CommitSender::NewMember { identity: from.identity(), signature_key: from.key.0.to_vec() };
    let theirs = [leaf(3, &carol())];
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &theirs, kinds: &kinds };
    invalid(
        check_commit(&r.view(), &from, &facts, &[], None::<Recipients>),
        "an external commit may only remove its own user's devices",
    );
}

#[test]
fn a_non_member_is_refused_before_anything_else() {
    let r = room();
    let from = dave();
    let sender = CommitSender::Member(leaf(0, &alice()));
    let facts = CommitFacts { sender: &sender, adds: &[], removes: &[], kinds: &[] };
    let e = check_commit(&r.view(), &from, &facts, &[], None::<Recipients>).unwrap_err();
    assert!(matches!(e, RoomError::NotAMember { .. }), "{e:?}");
}

#[test]
fn room_errors_map_to_wire_errors_in_one_place() {
    let cases: Vec<(RoomError, ErrorCode, &str)> = vec![
        (RoomError::NotAMember { room: "lab".into() }, ErrorCode::NOT_A_MEMBER, "not a member of #lab"),
        (
            RoomError::StaleEpoch { current: 4, got: 3 },
            ErrorCode::STALE_EPOCH,
            "stale epoch: the commit is for epoch 3 but the room is at epoch 4; sync and retry",
        ),
        (
            RoomError::PermissionDenied("the owner cannot be removed"),
            ErrorCode::PERMISSION_DENIED,
            "permission denied: the owner cannot be removed",
        ),
        (
            RoomError::RoomFull { room: "lab".into(), max: 2 },
            ErrorCode::LIMIT_REACHED,
            "#lab would have more than 2 members, the most this server allows",
        ),
        (RoomError::NoSuchUser(dave().username), ErrorCode::NO_SUCH_USER, "there is no user named dave"),
        (RoomError::InvalidRole, ErrorCode::INVALID_REQUEST, "the role must be admin or member"),
        (RoomError::Internal, ErrorCode::INTERNAL, "internal server error; the server log has details"),
        (
            RoomError::Unavailable(ErrorBody::new(ErrorCode::SHUTTING_DOWN, "bye")),
            ErrorCode::SHUTTING_DOWN,
            "bye",
        ),
    ];
    for (error, code, message) in cases {
        let body = ErrorBody::from(error);
        assert_eq!((body.code, body.message.as_str()), (code, message));
    }
}
