//! Every `Request` payload through the server's checks that need no I/O:
//! the name rules (`validate_username`, `validate_new_username`,
//! `validate_display_name` with `clean_display_name`, `validate_password`,
//! `validate_room_name`), the device-key and signature
//! shapes, and the MLS checks of `conclave_server::mls` against a real room
//! (`fixtures/room.snapshot`: four devices at epoch 1) — `check_key_package`,
//! `RoomGroup::from_group_info`, `check_commit` then `apply` and
//! `check_group_info` on a copy, `check_proposal` then `queue_proposal`,
//! `check_application`, `welcome_recipients`, and snapshots.
//!
//! Input: `[mode, bytes…]`. An even `mode` decodes the bytes as a postcard
//! `Request` (the seeds are real requests with valid MLS payloads); an odd
//! one builds a request of any variant from them with `arbitrary`, splicing
//! in the fixtures' valid MLS messages, whole, cut or with a byte flipped.
//! Checks: no panic, except OpenMLS panics that the server catches (reported,
//! see `common::tolerate_guarded_panics`); every validator is a fixpoint of
//! its own output; what a check accepts, the next step accepts too (an
//! accepted commit applies to a copy and advances the epoch by one; an
//! accepted proposal queues); a snapshot restores the same room.

#![no_main]

use std::sync::LazyLock;

use conclave_proto::{
    auth_message, validate_display_name, validate_password, validate_room_name, validate_username,
    Authenticate, Login, Password, Register, Request, Role,
};
use conclave_server::mls::{check_key_package, split_identity, welcome_recipients, RoomGroup};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../common.rs"]
mod common;

/// The room every commit, proposal and message is checked against.
static ROOM: LazyLock<RoomGroup> = LazyLock::new(|| {
    RoomGroup::from_snapshot(include_bytes!("../fixtures/room.snapshot"), common::GROUP_ID)
        .expect("fixtures/room.snapshot loads (rerun seedgen if the MLS version changed)")
});

/// Valid MLS messages for the room above (see `seedgen`).
const FIXTURES: &[&[u8]] = &[
    include_bytes!("../fixtures/commit_update.bin"),
    include_bytes!("../fixtures/group_info_update.bin"),
    include_bytes!("../fixtures/commit_add.bin"),
    include_bytes!("../fixtures/welcome_add.bin"),
    include_bytes!("../fixtures/group_info_add.bin"),
    include_bytes!("../fixtures/commit_remove.bin"),
    include_bytes!("../fixtures/group_info_remove.bin"),
    include_bytes!("../fixtures/commit_external.bin"),
    include_bytes!("../fixtures/group_info_external.bin"),
    include_bytes!("../fixtures/proposal_leave.bin"),
    include_bytes!("../fixtures/message.bin"),
    include_bytes!("../fixtures/key_package.bin"),
    include_bytes!("../fixtures/key_package_last_resort.bin"),
    include_bytes!("../fixtures/group_info_new_room.bin"),
];

/// The server's window for application messages (`rooms/actor.rs`).
const EPOCH_WINDOW: u64 = 2;

fuzz_target!(
    init: {
        common::tolerate_guarded_panics();
        LazyLock::force(&ROOM);
    },
    |data: &[u8]| {
        let Some((mode, rest)) = data.split_first() else { return };
        let request = if mode & 1 == 0 {
            match postcard::from_bytes::<Request>(rest) {
                Ok(request) => request,
                Err(_) => return,
            }
        } else {
            match request(&mut Unstructured::new(rest)) {
                Ok(request) => request,
                Err(_) => return,
            }
        };
        check(request);
    }
);

/// What the server checks of each request before any I/O, and the
/// properties those checks must have.
fn check(request: Request) {
    match request {
        Request::Register(r) => {
            if let Ok(user) = username(&r.username) {
                let _ = display_name(r.display_name.as_deref().unwrap_or(user.as_str()));
            }
            let _ = validate_password(r.password.expose());
            device(&r.device_key, &r.signature);
        }
        Request::Login(r) => {
            let _ = username(&r.username);
            device(&r.device_key, &r.signature);
        }
        Request::Authenticate(r) => device(&r.device_key, &r.signature),
        Request::UploadKeyPackages { key_packages, last_resort } => {
            for kp in key_packages.iter().take(8).chain(last_resort.as_ref()) {
                key_package(kp);
            }
        }
        Request::CreateRoom { name, group_id, group_info } => {
            let _ = room_name(&name);
            if (1..=64).contains(&group_id.len()) {
                if let Ok(room) = RoomGroup::from_group_info(&group_info, &group_id) {
                    assert_eq!(room.group_id(), &group_id[..]);
                    same_after_snapshot(&room);
                }
            }
        }
        Request::ClaimKeyPackages { room, users } => {
            let _ = room_name(&room);
            for user in users.iter().take(16) {
                let _ = username(user);
            }
        }
        Request::Commit { room, commit, welcome, group_info } => {
            let _ = room_name(&room);
            self::commit(&commit, &group_info);
            proposal(&commit);
            if let Some(welcome) = welcome {
                if let Ok(recipients) = welcome_recipients(&welcome) {
                    assert!(!recipients.is_empty());
                }
            }
        }
        Request::Send { room, ciphertext, .. } => {
            let _ = room_name(&room);
            let current = ROOM.epoch();
            if let Ok(epoch) = ROOM.check_application(&ciphertext, EPOCH_WINDOW) {
                assert!(epoch <= current && epoch + EPOCH_WINDOW >= current, "epoch {epoch} accepted");
            }
        }
        Request::SetRole { room, user, role } => {
            let _ = room_name(&room);
            let _ = username(&user);
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        Request::GetGroupInfo { room }
        | Request::Members { room }
        | Request::Leave { room }
        | Request::Sync { room, .. } => {
            let _ = room_name(&room);
        }
        Request::SetDisplayName { display_name: name } => {
            let _ = display_name(&name);
        }
        Request::WhoAmI
        | Request::Ping
        | Request::KeyPackageCount
        | Request::ListRooms
        | Request::PendingWelcomes
        | Request::Subscribe => {}
    }
}

fn username(raw: &str) -> Result<conclave_proto::Username, ()> {
    let new = conclave_proto::validate_new_username(raw).ok();
    let Ok(user) = validate_username(raw) else {
        assert!(new.is_none(), "a new username that is not a username: {raw:?}");
        return Err(());
    };
    if let Some(new) = new {
        assert_eq!(new, user, "new username {raw:?}");
        assert!(new.as_str().starts_with(|c: char| c.is_ascii_alphanumeric()), "new username {raw:?}");
    }
    assert_eq!(validate_username(user.as_str()).as_ref(), Ok(&user), "username {raw:?}");
    assert!(user.as_str().len() <= conclave_proto::MAX_USERNAME_LEN);
    Ok(user)
}

fn display_name(raw: &str) -> Result<(), ()> {
    let clean = conclave_proto::clean_display_name(raw);
    let name = validate_display_name(raw).map_err(|_| ())?;
    assert_eq!(validate_display_name(name.as_str()).as_ref(), Ok(&name), "display name {raw:?}");
    assert_eq!(clean, name.as_str(), "a valid display name is its own clean form: {raw:?}");
    Ok(())
}

fn room_name(raw: &str) -> Result<(), ()> {
    let name = validate_room_name(raw).map_err(|_| ())?;
    assert_eq!(validate_room_name(&name).as_ref(), Ok(&name), "room name {raw:?}");
    assert!(name.len() <= conclave_proto::MAX_ROOM_NAME_LEN);
    Ok(())
}

/// `handlers::verify_device`: a 32-byte Ed25519 key and a 64-byte signature
/// of this connection's authentication message.
fn device(key: &[u8], signature: &[u8]) {
    let (Ok(key), Ok(signature)) = (<[u8; 32]>::try_from(key), <[u8; 64]>::try_from(signature)) else {
        return;
    };
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) {
        let message = auth_message(&common::NONCE, &common::EXPORTER);
        let _ = key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature));
    }
}

fn key_package(bytes: &[u8]) {
    if let Ok(info) = check_key_package(bytes) {
        assert!(split_identity(&info.identity).is_some(), "identity {:?}", info.identity);
        assert_eq!(info.signature_key.len(), 32, "an Ed25519 key");
        assert!(!info.key_package_ref.is_empty());
    }
}

/// The room actor's commit path: check, apply to a copy, check the new GroupInfo.
fn commit(commit: &[u8], group_info: &[u8]) {
    let Ok(checked) = ROOM.check_commit(commit) else { return };
    assert_eq!(checked.epoch, ROOM.epoch());
    assert_eq!(checked.new_epoch(), ROOM.epoch() + 1);
    let members = ROOM.members();
    for removed in &checked.removes {
        assert!(members.contains(removed), "removed {removed:?} is not a member");
    }
    for added in &checked.adds {
        assert!(split_identity(&added.identity).is_some(), "added identity {:?}", added.identity);
    }
    let mut copy = ROOM.try_clone().expect("the room copies");
    copy.apply(checked).expect("a checked commit applies to the state it was checked against");
    assert_eq!(copy.epoch(), ROOM.epoch() + 1);
    assert_eq!(ROOM.epoch(), common::ROOM_EPOCH, "the shared room never moves");
    for member in copy.members() {
        assert!(split_identity(&member.identity).is_some(), "member identity {:?}", member.identity);
    }
    let _ = copy.check_group_info(group_info);
    same_after_snapshot(&copy);
}

fn proposal(bytes: &[u8]) {
    if let Ok(checked) = ROOM.check_proposal(bytes) {
        let mut copy = ROOM.try_clone().expect("the room copies");
        copy.queue_proposal(checked).expect("a checked proposal queues");
        same_after_snapshot(&copy);
    }
}

fn same_after_snapshot(room: &RoomGroup) {
    let snapshot = room.to_snapshot().expect("a room snapshots");
    let back = RoomGroup::from_snapshot(&snapshot, room.group_id()).expect("a snapshot restores");
    assert_eq!(back.epoch(), room.epoch());
    assert_eq!(back.members(), room.members());
    assert_eq!(back.to_snapshot().expect("a room snapshots"), snapshot);
}

/// A request of any variant, its byte fields often real MLS messages.
fn request(u: &mut Unstructured) -> arbitrary::Result<Request> {
    Ok(match u.int_in_range(0..=20u8)? {
        0 => Request::Register(Register {
            username: name(u)?,
            password: Password::new(String::arbitrary(u)?),
            display_name: Option::arbitrary(u)?,
            token: Option::arbitrary(u)?,
            device_key: Vec::arbitrary(u)?,
            signature: Vec::arbitrary(u)?,
        }),
        1 => Request::Login(Login {
            username: name(u)?,
            password: Password::new(String::arbitrary(u)?),
            device_key: Vec::arbitrary(u)?,
            signature: Vec::arbitrary(u)?,
        }),
        2 => Request::Authenticate(Authenticate {
            device_key: Vec::arbitrary(u)?,
            signature: Vec::arbitrary(u)?,
        }),
        3 => Request::WhoAmI,
        4 => Request::Ping,
        5 => Request::UploadKeyPackages {
            key_packages: (0..u.int_in_range(0..=3u8)?).map(|_| mls(u)).collect::<Result<_, _>>()?,
            last_resort: if bool::arbitrary(u)? { Some(mls(u)?) } else { None },
        },
        6 => Request::KeyPackageCount,
        7 => Request::CreateRoom {
            name: name(u)?,
            group_id: if bool::arbitrary(u)? { b"new-room".to_vec() } else { Vec::arbitrary(u)? },
            group_info: mls(u)?,
        },
        8 => Request::ListRooms,
        9 => Request::ClaimKeyPackages {
            room: name(u)?,
            users: (0..u.int_in_range(0..=3u8)?).map(|_| name(u)).collect::<Result<_, _>>()?,
        },
        10 => Request::Commit {
            room: name(u)?,
            commit: mls(u)?,
            welcome: if bool::arbitrary(u)? { Some(mls(u)?) } else { None },
            group_info: mls(u)?,
        },
        11 => Request::GetGroupInfo { room: name(u)? },
        12 => Request::Send { room: name(u)?, client_msg_id: u64::arbitrary(u)?, ciphertext: mls(u)? },
        13 => Request::Sync { room: name(u)?, after_seq: u64::arbitrary(u)?, limit: u32::arbitrary(u)? },
        14 => Request::Members { room: name(u)? },
        15 => Request::SetRole {
            room: name(u)?,
            user: name(u)?,
            role: *u.choose(&[Role::Owner, Role::Admin, Role::Member])?,
        },
        16 => Request::Leave { room: name(u)? },
        17 => Request::PendingWelcomes,
        18 => Request::Subscribe,
        19 => Request::SetDisplayName { display_name: name(u)? },
        _ => Request::Commit { room: "lab".into(), commit: mls(u)?, welcome: None, group_info: mls(u)? },
    })
}

/// A name: arbitrary text, or one built from the characters the rules
/// treat specially.
fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    if bool::arbitrary(u)? {
        return String::arbitrary(u);
    }
    let len = u.int_in_range(0..=70usize)?;
    let alphabet = ['a', 'Z', '0', '.', '_', '-', '#', ' ', ':', '\u{7}', 'é', '\u{200b}', '😀', '\t'];
    (0..len).map(|_| u.choose(&alphabet).copied()).collect()
}

/// MLS bytes: a fixture whole, cut or with one byte changed, or arbitrary bytes.
fn mls(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let mut bytes = match u.int_in_range(0..=3u8)? {
        0 => return Vec::arbitrary(u),
        _ => u.choose(FIXTURES)?.to_vec(),
    };
    match u.int_in_range(0..=2u8)? {
        0 => {}
        1 => {
            let at = u.choose_index(bytes.len())?;
            bytes[at] ^= u8::arbitrary(u)?.max(1);
        }
        _ => bytes.truncate(u.choose_index(bytes.len() + 1)?),
    }
    Ok(bytes)
}
