//! Writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) and the
//! MLS fixtures (`fuzz/fixtures/`) that `request_payload` checks against.
//!
//! Run it from `fuzz/`: `cargo run -p conclave-fuzz-seedgen`. The MLS keys are
//! random, so every run writes different (equally valid) bytes: rerun it only
//! to refresh the fixtures, for instance when the KeyPackages in the seeds
//! have expired (OpenMLS gives them about 12 weeks).
//!
//! The room: alice:1 created it (epoch 0) and added bob:1, carol:1 and erin:1
//! in one commit; the server's state at epoch 1 is `fixtures/room.snapshot`.
//! Alternative next steps, each valid at epoch 1 on its own, are the fixtures
//! `commit_*.bin` (with their GroupInfos and Welcome), `proposal_leave.bin`
//! and `message.bin`.

use std::path::{Path, PathBuf};

use conclave_proto::{
    auth_message, encode, encode_entry, AccountInfo, Authenticate, ClaimedKeyPackage, ClientFrame,
    ClientHello, EntryBody, ErrorBody, ErrorCode, Event, LogEntry, Login, MemberInfo, Password, Register,
    Request, RequestId, Response, Role, RoomSummary, ServerFrame, ServerHello, WelcomeItem, PROTOCOL_VERSION,
};
use conclave_server::mls::{RoomGroup, CIPHERSUITE};
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

#[path = "../../common.rs"]
mod common;

/// One device with its own in-memory MLS provider, as the client engine has.
struct Device {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Device {
    fn new(identity: &str) -> Self {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("a key pair");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self { provider: OpenMlsRustCrypto::default(), signer, credential }
    }

    fn key_package(&self, last_resort: bool) -> KeyPackage {
        let mut builder = KeyPackage::builder();
        if last_resort {
            builder = builder.mark_as_last_resort().leaf_node_capabilities(
                Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build(),
            );
        }
        builder
            .build(CIPHERSUITE, &self.provider, &self.signer, self.credential.clone())
            .expect("a KeyPackage")
            .key_package()
            .clone()
    }

    fn create_group(&self, group_id: &[u8]) -> MlsGroup {
        MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(CIPHERSUITE)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(5)
            .build(&self.provider, &self.signer, self.credential.clone())
            .expect("a group")
    }

    fn group_info(&self, group: &MlsGroup) -> Vec<u8> {
        wire(&group.export_group_info(self.provider.crypto(), &self.signer, true).expect("a GroupInfo"))
    }

    fn join(&self, welcome: &[u8]) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact_bytes(welcome).expect("a message").extract()
        else {
            panic!("not a Welcome")
        };
        StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .expect("a staged Welcome")
            .into_group(&self.provider)
            .expect("a group")
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(5)
        .build()
}

fn wire(message: &MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().expect("an MLS message encodes")
}

/// The commit, Welcome and GroupInfo of a commit bundle.
fn parts(bundle: CommitMessageBundle) -> (Vec<u8>, Option<Vec<u8>>, Vec<u8>) {
    let (commit, welcome, group_info) = bundle.into_messages();
    (wire(&commit), welcome.map(|w| wire(&w)), wire(&group_info.expect("a GroupInfo")))
}

/// The MLS objects the seeds and `request_payload` use.
struct Mls {
    snapshot: Vec<u8>,
    /// bob:1 updates his leaf.
    update: (Vec<u8>, Vec<u8>),
    /// alice:1 adds dave:1.
    add: (Vec<u8>, Vec<u8>, Vec<u8>),
    /// carol:1 removes erin:1.
    remove: (Vec<u8>, Vec<u8>),
    /// frank:1 joins by external commit.
    external: (Vec<u8>, Vec<u8>),
    /// erin:1 proposes to leave.
    leave: Vec<u8>,
    /// alice:1 says hello (a PrivateMessage of epoch 1).
    message: Vec<u8>,
    /// dave:1's KeyPackage, and a last-resort one of gina:1.
    key_package: Vec<u8>,
    last_resort: Vec<u8>,
    /// gina:1's new room at epoch 0, group id `new-room`.
    new_room_group_info: Vec<u8>,
}

fn mls() -> Mls {
    let [alice, bob, carol, erin] = ["alice:1", "bob:1", "carol:1", "erin:1"].map(Device::new);
    let mut alice_group = alice.create_group(common::GROUP_ID);
    let mut server = RoomGroup::from_group_info(&alice.group_info(&alice_group), common::GROUP_ID)
        .expect("the server takes the new room");
    let kps = [&bob, &carol, &erin].map(|d| d.key_package(false));
    let (commit, welcome, _) = alice_group.add_members(&alice.provider, &alice.signer, &kps).expect("an add");
    let checked = server.check_commit(&wire(&commit)).expect("the server takes the add");
    server.apply(checked).expect("applied");
    alice_group.merge_pending_commit(&alice.provider).expect("merged");
    assert_eq!(server.epoch(), common::ROOM_EPOCH);
    let welcome = wire(&welcome);
    let mut bob_group = bob.join(&welcome);
    let mut carol_group = carol.join(&welcome);
    let mut erin_group = erin.join(&welcome);
    let epoch1_group_info = alice.group_info(&alice_group);

    // Each of these is valid against epoch 1 on its own.
    let message =
        wire(&alice_group.create_message(&alice.provider, &alice.signer, b"hello").expect("a message"));
    let (commit, _, gi) = parts(
        bob_group.self_update(&bob.provider, &bob.signer, LeafNodeParameters::default()).expect("update"),
    );
    let update = (commit, gi);
    let dave = Device::new("dave:1");
    let (commit, welcome, gi) = parts(
        alice_group
            .commit_builder()
            .propose_adds([dave.key_package(false)])
            .force_self_update(true)
            .load_psks(alice.provider.storage())
            .expect("psks")
            .build(alice.provider.rand(), alice.provider.crypto(), &alice.signer, |_| true)
            .expect("an add commit")
            .stage_commit(&alice.provider)
            .expect("staged"),
    );
    let add = (commit, welcome.expect("a Welcome"), gi);
    let erin_leaf = erin_group.own_leaf_index();
    let (commit, _, gi) = parts(
        carol_group
            .commit_builder()
            .propose_removals([erin_leaf])
            .load_psks(carol.provider.storage())
            .expect("psks")
            .build(carol.provider.rand(), carol.provider.crypto(), &carol.signer, |_| true)
            .expect("a remove commit")
            .stage_commit(&carol.provider)
            .expect("staged"),
    );
    let remove = (commit, gi);
    let leave = wire(&erin_group.leave_group(&erin.provider, &erin.signer).expect("a leave proposal"));
    let frank = Device::new("frank:1");
    let MlsMessageBodyIn::GroupInfo(vgi) =
        MlsMessageIn::tls_deserialize_exact_bytes(&epoch1_group_info).expect("a message").extract()
    else {
        panic!("not a GroupInfo")
    };
    let (_, bundle) = MlsGroup::external_commit_builder()
        .with_config(join_config())
        .build_group(&frank.provider, vgi, frank.credential.clone())
        .expect("an external join")
        .load_psks(frank.provider.storage())
        .expect("psks")
        .build(frank.provider.rand(), frank.provider.crypto(), &frank.signer, |_| true)
        .expect("an external commit")
        .finalize(&frank.provider)
        .expect("finalized");
    let (commit, _, gi) = parts(bundle);
    let external = (commit, gi);

    // Check that the server takes every one of them.
    for (commit, gi) in
        [(&update.0, &update.1), (&add.0, &add.2), (&remove.0, &remove.1), (&external.0, &external.1)]
    {
        let mut copy = server.try_clone().expect("a copy");
        let checked = copy.check_commit(commit).expect("the server takes the commit");
        copy.apply(checked).expect("applied");
        copy.check_group_info(gi).expect("the server takes the GroupInfo");
    }
    server.check_proposal(&leave).expect("the server takes the proposal");
    server.check_application(&message, 0).expect("the server takes the message");

    let gina = Device::new("gina:1");
    let new_room = gina.create_group(b"new-room");
    Mls {
        snapshot: server.to_snapshot().expect("a snapshot"),
        update,
        add,
        remove,
        external,
        leave,
        message,
        key_package: wire(&MlsMessageOut::from(dave.key_package(false))),
        last_resort: wire(&MlsMessageOut::from(gina.key_package(true))),
        new_room_group_info: gina.group_info(&new_room),
    }
}

/// Device `i`'s public key and its signature of the fuzzers' connection.
fn device(i: usize) -> (Vec<u8>, Vec<u8>) {
    let key = SigningKey::from_bytes(&[common::DEVICE_SEEDS[i]; 32]);
    let signature = key.sign(&auth_message(&common::NONCE, &common::EXPORTER));
    (key.verifying_key().to_bytes().to_vec(), signature.to_bytes().to_vec())
}

fn register(username: &str, i: usize) -> Request {
    let (device_key, signature) = device(i);
    Request::Register(Register {
        username: username.into(),
        password: Password::new("correct horse battery"),
        display_name: Some("Alice A.".into()),
        token: None,
        device_key,
        signature,
    })
}

fn login(username: &str, i: usize) -> Request {
    let (device_key, signature) = device(i);
    Request::Login(Login {
        username: username.into(),
        password: Password::new("correct horse battery"),
        device_key,
        signature,
    })
}

fn authenticate(i: usize) -> Request {
    let (device_key, signature) = device(i);
    Request::Authenticate(Authenticate { device_key, signature })
}

fn requests(m: &Mls) -> Vec<(&'static str, Request)> {
    let room = || "lab".to_string();
    vec![
        ("register", register("alice", 0)),
        ("login", login("alice", 1)),
        ("authenticate", authenticate(0)),
        ("whoami", Request::WhoAmI),
        ("ping", Request::Ping),
        (
            "upload_key_packages",
            Request::UploadKeyPackages {
                key_packages: vec![m.key_package.clone()],
                last_resort: Some(m.last_resort.clone()),
            },
        ),
        ("key_package_count", Request::KeyPackageCount),
        (
            "create_room",
            Request::CreateRoom {
                name: "#Lab".into(),
                group_id: b"new-room".to_vec(),
                group_info: m.new_room_group_info.clone(),
            },
        ),
        ("list_rooms", Request::ListRooms),
        (
            "claim_key_packages",
            Request::ClaimKeyPackages { room: room(), users: vec!["bob".into(), "Carol".into()] },
        ),
        (
            "commit_update",
            Request::Commit {
                room: room(),
                commit: m.update.0.clone(),
                welcome: None,
                group_info: m.update.1.clone(),
            },
        ),
        (
            "commit_add",
            Request::Commit {
                room: room(),
                commit: m.add.0.clone(),
                welcome: Some(m.add.1.clone()),
                group_info: m.add.2.clone(),
            },
        ),
        (
            "commit_remove",
            Request::Commit {
                room: room(),
                commit: m.remove.0.clone(),
                welcome: None,
                group_info: m.remove.1.clone(),
            },
        ),
        (
            "commit_external",
            Request::Commit {
                room: room(),
                commit: m.external.0.clone(),
                welcome: None,
                group_info: m.external.1.clone(),
            },
        ),
        (
            "commit_proposal",
            Request::Commit { room: room(), commit: m.leave.clone(), welcome: None, group_info: Vec::new() },
        ),
        ("get_group_info", Request::GetGroupInfo { room: room() }),
        ("send", Request::Send { room: room(), client_msg_id: 42, ciphertext: m.message.clone() }),
        ("sync", Request::Sync { room: room(), after_seq: 3, limit: 100 }),
        ("members", Request::Members { room: room() }),
        ("set_role", Request::SetRole { room: room(), user: "bob".into(), role: Role::Admin }),
        ("leave", Request::Leave { room: room() }),
        ("pending_welcomes", Request::PendingWelcomes),
        ("subscribe", Request::Subscribe),
        ("set_display_name", Request::SetDisplayName { display_name: " Zoë 😀 ".into() }),
    ]
}

fn entries(m: &Mls) -> Vec<LogEntry> {
    let entry = |seq, sender: &str, body| LogEntry {
        seq,
        time_ms: 1_764_000_000_000 + seq,
        sender: sender.into(),
        sender_device: 1,
        body,
    };
    vec![
        entry(1, "alice", EntryBody::Created),
        entry(
            2,
            "alice",
            EntryBody::Commit { commit: m.add.0.clone(), added: vec!["dave".into()], removed: vec![] },
        ),
        entry(3, "alice", EntryBody::Message { client_msg_id: 7, ciphertext: m.message.clone() }),
        entry(4, "erin", EntryBody::Left { user: "erin".into() }),
        entry(5, "alice", EntryBody::RoleChanged { user: "bob".into(), role: Role::Admin }),
    ]
}

fn server_frames(m: &Mls) -> Vec<ServerFrame> {
    let account = AccountInfo { username: "alice".into(), display_name: "Alice".into(), device_id: 1 };
    let summary = RoomSummary {
        name: "lab".into(),
        group_id: common::GROUP_ID.to_vec(),
        role: Role::Owner,
        members: 3,
        head_seq: 5,
        joined_seq: 1,
    };
    let welcome = WelcomeItem {
        room: "lab".into(),
        group_id: common::GROUP_ID.to_vec(),
        joined_seq: 2,
        welcome: m.add.1.clone(),
    };
    let id = |n| RequestId(n);
    vec![
        ServerFrame::Hello(ServerHello {
            protocol_version: PROTOCOL_VERSION,
            server: "conclave 0.1.0".into(),
            auth_nonce: common::NONCE,
        }),
        ServerFrame::Response { id: id(1), body: Response::Authenticated(account.clone()) },
        ServerFrame::Response { id: id(2), body: Response::WhoAmI(account) },
        ServerFrame::Response { id: id(3), body: Response::Pong },
        ServerFrame::Response { id: id(4), body: Response::KeyPackageCount { available: 99 } },
        ServerFrame::Response { id: id(5), body: Response::Room(summary.clone()) },
        ServerFrame::Response { id: id(6), body: Response::Rooms(vec![summary]) },
        ServerFrame::Response {
            id: id(7),
            body: Response::KeyPackages(vec![ClaimedKeyPackage {
                username: "dave".into(),
                device_id: 1,
                key_package: m.key_package.clone(),
            }]),
        },
        ServerFrame::Response { id: id(8), body: Response::Accepted { seq: 6 } },
        ServerFrame::Response {
            id: id(9),
            body: Response::GroupInfo { epoch: 1, group_info: m.add.2.clone() },
        },
        ServerFrame::Response { id: id(10), body: Response::Log { entries: entries(m), more: true } },
        ServerFrame::Response {
            id: id(11),
            body: Response::Members(vec![MemberInfo {
                username: "bob".into(),
                display_name: "Bob".into(),
                role: Role::Member,
                online: true,
            }]),
        },
        ServerFrame::Response { id: id(12), body: Response::Welcomes(vec![welcome.clone()]) },
        ServerFrame::Response { id: id(13), body: Response::Done },
        ServerFrame::Error {
            id: Some(id(14)),
            error: ErrorBody::new(ErrorCode::NOT_A_MEMBER, "you are not a member of lab"),
        },
        ServerFrame::Error {
            id: Some(id(15)),
            error: ErrorBody {
                code: ErrorCode::THROTTLED,
                message: "too many attempts, retry in 4 s".into(),
                retry_after_secs: Some(4),
            },
        },
        ServerFrame::Event(Event::Entry { room: "lab".into(), entry: entries(m).remove(2) }),
        ServerFrame::Event(Event::Welcome(welcome)),
        ServerFrame::Event(Event::Presence { room: "lab".into(), user: "bob".into(), online: false }),
        ServerFrame::Event(Event::KeyPackagesLow { available: 3 }),
        ServerFrame::Error {
            id: None,
            error: ErrorBody::new(ErrorCode::SHUTTING_DOWN, "server shutting down; reconnect later"),
        },
    ]
}

fn frames<T: serde::Serialize>(frames: &[T]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    for frame in frames {
        encode(frame, &mut buf).expect("a frame encodes");
    }
    buf.to_vec()
}

fn hello(version: u32) -> ClientFrame {
    ClientFrame::Hello(ClientHello { protocol_version: version, client: "conclave-fuzz".into() })
}

fn request(id: u64, body: Request) -> ClientFrame {
    ClientFrame::Request { id: RequestId(id), body }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = mls();

    let fixtures = root.join("fixtures");
    std::fs::create_dir_all(&fixtures).expect("fixtures/");
    for (name, bytes) in [
        ("room.snapshot", &m.snapshot),
        ("commit_update.bin", &m.update.0),
        ("group_info_update.bin", &m.update.1),
        ("commit_add.bin", &m.add.0),
        ("welcome_add.bin", &m.add.1),
        ("group_info_add.bin", &m.add.2),
        ("commit_remove.bin", &m.remove.0),
        ("group_info_remove.bin", &m.remove.1),
        ("commit_external.bin", &m.external.0),
        ("group_info_external.bin", &m.external.1),
        ("proposal_leave.bin", &m.leave),
        ("message.bin", &m.message),
        ("key_package.bin", &m.key_package),
        ("key_package_last_resort.bin", &m.last_resort),
        ("group_info_new_room.bin", &m.new_room_group_info),
    ] {
        write(&fixtures, name, bytes);
    }

    let requests = requests(&m);
    let seeds = |target: &str| {
        let dir = root.join("seeds").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("seeds/");
        dir
    };

    // request_payload: [0, postcard(Request)].
    let dir = seeds("request_payload");
    for (name, req) in &requests {
        let mut bytes = vec![0];
        bytes.extend(postcard::to_stdvec(req).expect("a request encodes"));
        write(&dir, name, &bytes);
    }

    // frame_decode: [kind, chunk seed, stream]; kind 8 = client frames, 9 =
    // server frames (real limits), 2 = one log entry, 0 = client frames
    // against a 64-byte limit.
    let dir = seeds("frame_decode");
    let mut client = vec![hello(PROTOCOL_VERSION)];
    client.extend(requests.iter().enumerate().map(|(i, (_, r))| request(i as u64, r.clone())));
    for (name, kind, seed, stream) in [
        ("client_stream_whole", 8, 0, frames(&client)),
        ("client_stream_cut", 8, 77, frames(&client)),
        ("client_small_limit", 0, 3, frames(&client[..6])),
        ("server_stream_whole", 9, 0, frames(&server_frames(&m))),
        ("server_stream_cut", 9, 200, frames(&server_frames(&m))),
    ] {
        let mut bytes = vec![kind, seed];
        bytes.extend(stream);
        write(&dir, name, &bytes);
    }
    for (i, entry) in entries(&m).iter().enumerate() {
        let mut bytes = vec![2, 0];
        bytes.extend(encode_entry(entry).expect("an entry encodes"));
        write(&dir, &format!("entry_{i}"), &bytes);
    }

    // preauth: [flags, peer, stream]; flags bit 0 clear = raw stream, the
    // other bits seed the cuts.
    let dir = seeds("preauth");
    let h = hello(PROTOCOL_VERSION);
    let bad_sig = {
        let (device_key, mut signature) = device(2);
        signature[5] ^= 1;
        Request::Authenticate(Authenticate { device_key, signature })
    };
    let bad_register = Request::Register(Register {
        username: "Not Valid!".into(),
        password: Password::new("short"),
        display_name: Some("\u{7}".into()),
        token: Some("00ff".into()),
        device_key: vec![1; 31],
        signature: vec![2; 63],
    });
    let sessions: Vec<(&str, Vec<u8>)> = vec![
        (
            "register_then_use",
            frames(&[
                h.clone(),
                request(1, register("alice", 0)),
                request(2, Request::WhoAmI),
                request(3, Request::ListRooms),
                request(4, Request::Ping),
            ]),
        ),
        (
            "authenticate",
            frames(&[
                h.clone(),
                request(1, authenticate(0)),
                request(2, Request::WhoAmI),
                request(3, Request::Subscribe),
            ]),
        ),
        ("login", frames(&[h.clone(), request(9, login("alice", 1)), request(10, Request::KeyPackageCount)])),
        ("unknown_device", frames(&[h.clone(), request(1, authenticate(3))])),
        ("bad_signature", frames(&[h.clone(), request(1, bad_sig)])),
        ("bad_register", frames(&[h.clone(), request(1, bad_register)])),
        (
            "unauthenticated_requests",
            frames(&[
                h.clone(),
                request(1, Request::WhoAmI),
                request(2, Request::ListRooms),
                request(3, requests[10].1.clone()),
            ]),
        ),
        ("request_before_hello", frames(&[request(1, Request::Ping)])),
        ("wrong_version", frames(&[hello(PROTOCOL_VERSION + 1)])),
        ("hello_twice", frames(&[h.clone(), h.clone()])),
        (
            "register_twice",
            frames(&[h.clone(), request(1, register("bob", 1)), request(2, register("carol", 2))]),
        ),
        ("oversized_prefix", vec![0x7f, 0xff, 0xff, 0xff, 0]),
        (
            "garbage_after_hello",
            [frames(std::slice::from_ref(&h)), vec![0, 0, 0, 3, 0xff, 0xff, 0xff]].concat(),
        ),
        ("truncated", frames(&[h.clone(), request(1, authenticate(0))])[..40].to_vec()),
    ];
    for (i, (name, stream)) in sessions.into_iter().enumerate() {
        let mut bytes = vec![(i as u8 % 8) << 1, i as u8];
        bytes.extend(stream);
        write(&dir, name, &bytes);
    }
    println!("wrote fixtures/ and seeds/ under {}", root.display());
}
