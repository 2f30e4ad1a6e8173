//! Tests for the server's MLS checks, driven by real OpenMLS clients built
//! here the way Conclave's client engine builds them (in-memory providers).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::{
    check_key_package, guarded, welcome_recipients, CheckedCommit, CommitSender, LeafInfo, MlsCheckError,
    ProposalKind, ProposalType, RoomGroup, CIPHERSUITE,
};

const GROUP_ID: &[u8] = b"room-0123456789a";

/// One client device: its own in-memory MLS provider and Ed25519 key.
struct Device {
    identity: String,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Device {
    fn new(identity: &str) -> Self {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        Self::with_signer(identity, signer)
    }

    fn with_signer(identity: &str, signer: SignatureKeyPair) -> Self {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self { identity: identity.into(), provider: OpenMlsRustCrypto::default(), signer, credential }
    }

    /// The same identity and signature key with fresh MLS state, as after
    /// a device lost its database but kept its key.
    fn same_key(&self, identity: &str) -> Self {
        self.signer.store(self.provider.storage()).unwrap();
        let copy = SignatureKeyPair::read(
            self.provider.storage(),
            self.signer.public(),
            self.signer.signature_scheme(),
        )
        .unwrap();
        Self::with_signer(identity, copy)
    }

    fn key(&self) -> Vec<u8> {
        self.signer.to_public_vec()
    }

    fn leaf(&self, leaf: u32) -> LeafInfo {
        LeafInfo { leaf, identity: self.identity.clone(), signature_key: self.key() }
    }

    fn key_package(&self) -> KeyPackage {
        self.key_package_with(KeyPackage::builder())
    }

    fn key_package_with(&self, builder: KeyPackageBuilder) -> KeyPackage {
        builder
            .build(CIPHERSUITE, &self.provider, &self.signer, self.credential.clone())
            .unwrap()
            .key_package()
            .clone()
    }

    fn create_group(&self, group_id: &[u8], policy: WireFormatPolicy) -> MlsGroup {
        MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(CIPHERSUITE)
            .with_wire_format_policy(policy)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(5)
            .build(&self.provider, &self.signer, self.credential.clone())
            .unwrap()
    }

    fn group_info(&self, group: &MlsGroup) -> Vec<u8> {
        wire(&group.export_group_info(self.provider.crypto(), &self.signer, true).unwrap())
    }

    fn join(&self, welcome: &[u8]) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact_bytes(welcome).unwrap().extract()
        else {
            panic!("not a welcome")
        };
        StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .unwrap()
            .into_group(&self.provider)
            .unwrap()
    }

    /// Joins by external commit from a stored GroupInfo; returns the group,
    /// the commit and the GroupInfo it produced.
    fn join_external(&self, group_info: &[u8]) -> (MlsGroup, Vec<u8>, Option<Vec<u8>>) {
        let MlsMessageBodyIn::GroupInfo(group_info) =
            MlsMessageIn::tls_deserialize_exact_bytes(group_info).unwrap().extract()
        else {
            panic!("not a group info")
        };
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(&self.provider, group_info, self.credential.clone())
            .unwrap()
            .load_psks(self.provider.storage())
            .unwrap()
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .unwrap()
            .finalize(&self.provider)
            .unwrap();
        let (commit, _, group_info) = bundle.into_messages();
        (group, wire(&commit), group_info.map(|gi| wire(&gi)))
    }

    /// Processes someone else's commit and merges it.
    fn receive_commit(&self, group: &mut MlsGroup, commit: &[u8]) {
        let processed = group.process_message(&self.provider, protocol(commit)).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("not a commit")
        };
        group.merge_staged_commit(&self.provider, *staged).unwrap();
    }

    fn self_update(&self, group: &mut MlsGroup) -> Vec<u8> {
        let bundle = group.self_update(&self.provider, &self.signer, LeafNodeParameters::default()).unwrap();
        wire(bundle.commit())
    }

    fn send(&self, group: &mut MlsGroup, text: &str) -> Vec<u8> {
        wire(&group.create_message(&self.provider, &self.signer, text.as_bytes()).unwrap())
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
    message.tls_serialize_detached().unwrap()
}

fn protocol(bytes: &[u8]) -> ProtocolMessage {
    MlsMessageIn::tls_deserialize_exact_bytes(bytes).unwrap().try_into_protocol_message().unwrap()
}

fn hash_ref(device: &Device, key_package: &KeyPackage) -> Vec<u8> {
    key_package.hash_ref(device.provider.crypto()).unwrap().as_slice().to_vec()
}

/// The server's view and its clients: alice:1 created the room, added bob:1
/// and carol:1 in one commit; everyone (server included) is at epoch 1.
struct Room {
    server: RoomGroup,
    alice: Device,
    bob: Device,
    carol: Device,
    alice_group: MlsGroup,
    bob_group: MlsGroup,
    carol_group: MlsGroup,
    /// The creator's GroupInfo for epoch 0.
    first_group_info: Vec<u8>,
    /// The committer's GroupInfo for the current epoch (what the server keeps).
    group_info: Vec<u8>,
    add_commit: CheckedCommitSummary,
    welcome: Vec<u8>,
    refs: Vec<Vec<u8>>,
}

/// What the add commit reported, kept for assertions.
struct CheckedCommitSummary {
    epoch: u64,
    new_epoch: u64,
    sender: CommitSender,
    adds: Vec<(String, Vec<u8>, Vec<u8>)>,
    removes: Vec<LeafInfo>,
    has_update_path: bool,
    kinds: Vec<ProposalType>,
}

impl From<&CheckedCommit> for CheckedCommitSummary {
    fn from(c: &CheckedCommit) -> Self {
        Self {
            epoch: c.epoch,
            new_epoch: c.new_epoch(),
            sender: c.sender.clone(),
            adds: c
                .adds
                .iter()
                .map(|a| (a.identity.clone(), a.signature_key.clone(), a.key_package_ref.clone()))
                .collect(),
            removes: c.removes.clone(),
            has_update_path: c.has_update_path,
            kinds: c.proposal_kinds().to_vec(),
        }
    }
}

impl Room {
    fn new() -> Self {
        let alice = Device::new("alice:1");
        let bob = Device::new("bob:1");
        let carol = Device::new("carol:1");
        let mut alice_group = alice.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
        let first_group_info = alice.group_info(&alice_group);
        let mut server = RoomGroup::from_group_info(&first_group_info, GROUP_ID).unwrap();

        let (bob_kp, carol_kp) = (bob.key_package(), carol.key_package());
        let refs = vec![hash_ref(&bob, &bob_kp), hash_ref(&carol, &carol_kp)];
        let (commit, welcome, group_info) =
            alice_group.add_members(&alice.provider, &alice.signer, &[bob_kp, carol_kp]).unwrap();
        let checked = server.check_commit(&wire(&commit)).unwrap();
        let add_commit = CheckedCommitSummary::from(&checked);
        server.apply(checked).unwrap();
        alice_group.merge_pending_commit(&alice.provider).unwrap();

        let welcome = wire(&welcome);
        let bob_group = bob.join(&welcome);
        let carol_group = carol.join(&welcome);
        let group_info = wire(&MlsMessageOut::from(group_info.expect("add_members returns a GroupInfo")));
        Self {
            server,
            alice,
            bob,
            carol,
            alice_group,
            bob_group,
            carol_group,
            first_group_info,
            group_info,
            add_commit,
            welcome,
            refs,
        }
    }

    /// The server checks and applies a commit; every other client merges it.
    fn commit_everywhere(&mut self, commit: &[u8], by: &str) {
        let checked = self.server.check_commit(commit).unwrap();
        self.server.apply(checked).unwrap();
        for (device, group) in [
            (&self.alice, &mut self.alice_group),
            (&self.bob, &mut self.bob_group),
            (&self.carol, &mut self.carol_group),
        ] {
            if device.identity == by {
                group.merge_pending_commit(&device.provider).unwrap();
            } else if group.is_active() {
                device.receive_commit(group, commit);
            }
        }
    }
}

#[test]
fn bootstraps_from_the_creators_group_info() {
    let alice = Device::new("alice:1");
    let group = alice.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let group_info = alice.group_info(&group);

    let room = RoomGroup::from_group_info(&group_info, GROUP_ID).unwrap();
    assert_eq!(room.epoch(), 0);
    assert_eq!(room.group_id(), GROUP_ID);
    assert_eq!(room.members(), vec![alice.leaf(0)]);
    assert_eq!(room.member(0), Some(alice.leaf(0)));
    assert_eq!(room.member(1), None);
    assert_eq!(alice.key().len(), 32);

    assert!(matches!(
        RoomGroup::from_group_info(&group_info, b"another room"),
        Err(MlsCheckError::WrongGroup)
    ));
}

#[test]
fn refuses_bad_group_infos_at_bootstrap() {
    let alice = Device::new("alice:1");
    let group = alice.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);

    let no_tree = wire(&group.export_group_info(alice.provider.crypto(), &alice.signer, false).unwrap());
    let err = RoomGroup::from_group_info(&no_tree, GROUP_ID).unwrap_err();
    assert!(matches!(&err, MlsCheckError::Invalid(m) if m.contains("ratchet_tree")), "{err}");

    let mut forged = alice.group_info(&group);
    *forged.last_mut().unwrap() ^= 1; // the signature is the last field
    let err = RoomGroup::from_group_info(&forged, GROUP_ID).unwrap_err();
    assert!(matches!(err, MlsCheckError::Invalid(_)), "{err}");

    let key_package = wire(&MlsMessageOut::from(alice.key_package()));
    assert!(matches!(
        RoomGroup::from_group_info(&key_package, GROUP_ID),
        Err(MlsCheckError::WrongWireFormat(_))
    ));

    let bad_identity = Device::new("alice");
    let group = bad_identity.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let err = RoomGroup::from_group_info(&bad_identity.group_info(&group), GROUP_ID).unwrap_err();
    assert!(matches!(err, MlsCheckError::BadCredential(_)), "{err}");
}

#[test]
fn an_add_commit_reports_the_new_devices_and_advances_the_epoch() {
    let room = Room::new();
    let add = &room.add_commit;
    assert_eq!(add.epoch, 0);
    assert_eq!(add.new_epoch, 1);
    assert_eq!(add.sender, CommitSender::Member(room.alice.leaf(0)));
    assert_eq!(
        add.adds,
        vec![
            ("bob:1".to_string(), room.bob.key(), room.refs[0].clone()),
            ("carol:1".to_string(), room.carol.key(), room.refs[1].clone()),
        ]
    );
    assert!(add.removes.is_empty());
    assert!(add.has_update_path);
    assert_eq!(add.kinds, [ProposalType::Add, ProposalType::Add]);

    assert_eq!(room.server.epoch(), 1);
    assert_eq!(room.server.members(), vec![room.alice.leaf(0), room.bob.leaf(1), room.carol.leaf(2)]);
    // The clients agree with the server.
    assert_eq!(room.bob_group.epoch().as_u64(), 1);
    assert_eq!(room.carol_group.members().count(), 3);
}

#[test]
fn the_second_commit_for_an_epoch_is_stale() {
    let mut room = Room::new();
    let from_bob = room.bob.self_update(&mut room.bob_group);
    let from_carol = room.carol.self_update(&mut room.carol_group);

    // Both are valid against epoch 1 ...
    let checked_bob = room.server.check_commit(&from_bob).unwrap();
    let checked_carol = room.server.check_commit(&from_carol).unwrap();
    assert_eq!(checked_bob.sender, CommitSender::Member(room.bob.leaf(1)));
    assert!(checked_bob.adds.is_empty() && checked_bob.removes.is_empty());
    assert!(checked_bob.proposal_kinds().is_empty());
    // ... the first one applied wins.
    room.server.apply(checked_bob).unwrap();
    assert_eq!(room.server.epoch(), 2);

    let err = room.server.check_commit(&from_carol).unwrap_err();
    assert!(matches!(err, MlsCheckError::StaleEpoch { current: 2, got: 1 }), "{err}");
    assert!(err.to_string().contains("sync"), "{err}");
    let err = room.server.apply(checked_carol).unwrap_err();
    assert!(matches!(err, MlsCheckError::StaleEpoch { current: 2, got: 1 }), "{err}");
    assert_eq!(room.server.epoch(), 2);
    // Applying bob's commit again is impossible as well: it is consumed, and a
    // re-check is stale.
    assert!(matches!(room.server.check_commit(&from_bob), Err(MlsCheckError::StaleEpoch { .. })));
}

#[test]
fn a_remove_commit_reports_the_removed_device() {
    let mut room = Room::new();
    let (commit, _, group_info) = room
        .alice_group
        .remove_members(&room.alice.provider, &room.alice.signer, &[LeafNodeIndex::new(2)])
        .unwrap();
    let checked = room.server.check_commit(&wire(&commit)).unwrap();
    assert_eq!(checked.sender, CommitSender::Member(room.alice.leaf(0)));
    assert_eq!(checked.removes, vec![room.carol.leaf(2)]);
    assert!(checked.adds.is_empty());
    assert_eq!(checked.proposal_kinds(), [ProposalType::Remove]);
    room.server.apply(checked).unwrap();
    room.alice_group.merge_pending_commit(&room.alice.provider).unwrap();

    assert_eq!(room.server.epoch(), 2);
    assert_eq!(room.server.members(), vec![room.alice.leaf(0), room.bob.leaf(1)]);
    let group_info = wire(&MlsMessageOut::from(group_info.unwrap()));
    room.server.check_group_info(&group_info).unwrap();
}

#[test]
fn application_messages_are_accepted_within_the_epoch_window() {
    let mut room = Room::new();
    let old = room.alice.send(&mut room.alice_group, "hello at epoch 1");
    assert_eq!(room.server.check_application(&old, 0).unwrap(), 1);

    for _ in 0..3 {
        let commit = room.alice.self_update(&mut room.alice_group);
        room.commit_everywhere(&commit, "alice:1");
    }
    assert_eq!(room.server.epoch(), 4);

    let err = room.server.check_application(&old, 2).unwrap_err();
    assert!(matches!(err, MlsCheckError::StaleEpoch { current: 4, got: 1 }), "{err}");
    assert_eq!(room.server.check_application(&old, 3).unwrap(), 1);
    let new = room.bob.send(&mut room.bob_group, "hello at epoch 4");
    assert_eq!(room.server.check_application(&new, 0).unwrap(), 4);
    // A member within the window still decrypts the old one.
    let processed = room.carol_group.process_message(&room.carol.provider, protocol(&old)).unwrap();
    assert!(matches!(processed.into_content(), ProcessedMessageContent::ApplicationMessage(_)));

    // A room rebuilt at an older epoch sees the new message as from the future.
    let behind = RoomGroup::from_group_info(&room.group_info, GROUP_ID).unwrap();
    let err = behind.check_application(&new, 5).unwrap_err();
    assert!(matches!(err, MlsCheckError::FutureEpoch { current: 1, got: 4 }), "{err}");
}

#[test]
fn messages_of_the_wrong_kind_are_refused() {
    let mut room = Room::new();
    let app = room.alice.send(&mut room.alice_group, "hi");
    let commit = room.alice.self_update(&mut room.alice_group);

    assert!(matches!(room.server.check_commit(&app), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(room.server.check_application(&commit, 5), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(room.server.check_commit(&room.welcome), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(room.server.check_proposal(&commit), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(room.server.check_group_info(&commit), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(check_key_package(&commit), Err(MlsCheckError::WrongWireFormat(_))));
    assert!(matches!(welcome_recipients(&commit), Err(MlsCheckError::WrongWireFormat(_))));
}

#[test]
fn an_encrypted_handshake_message_is_refused() {
    // A client that ignores the room policy: handshake messages as PrivateMessage.
    let alice = Device::new("alice:1");
    let mut group = alice.create_group(GROUP_ID, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY);
    let server = RoomGroup::from_group_info(&alice.group_info(&group), GROUP_ID).unwrap();
    let commit = alice.self_update(&mut group);
    assert_eq!(
        MlsMessageIn::tls_deserialize_exact_bytes(&commit).unwrap().wire_format(),
        WireFormat::PrivateMessage
    );

    let err = server.check_commit(&commit).unwrap_err();
    assert!(matches!(err, MlsCheckError::WrongWireFormat(m) if m.contains("PublicMessage")), "{err}");
    let err = server.check_application(&commit, 5).unwrap_err();
    assert!(matches!(err, MlsCheckError::WrongWireFormat(m) if m.contains("handshake")), "{err}");
}

#[test]
fn a_commit_for_another_group_is_refused() {
    let room = Room::new();
    let mut other = room.alice.create_group(b"another-room-id!", PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    // Bring the other group to the room's epoch, so that only the group differs.
    room.alice.self_update(&mut other);
    other.merge_pending_commit(&room.alice.provider).unwrap();
    let commit = room.alice.self_update(&mut other);
    assert!(matches!(room.server.check_commit(&commit), Err(MlsCheckError::WrongGroup)));
    let app = room.alice.send(&mut other, "wrong room");
    assert!(matches!(room.server.check_application(&app, 5), Err(MlsCheckError::WrongGroup)));
    assert!(matches!(
        room.server.check_group_info(&room.alice.group_info(&other)),
        Err(MlsCheckError::WrongGroup)
    ));
}

#[test]
fn garbage_is_refused_without_panicking() {
    let mut room = Room::new();
    let commit = room.bob.self_update(&mut room.bob_group);
    let app = room.bob.send(&mut room.bob_group, "x");
    let key_package = wire(&MlsMessageOut::from(room.carol.key_package()));

    for garbage in [&[][..], &[0][..], &[0, 1, 0, 1], &[0xff; 64], b"hello, server"] {
        assert!(matches!(room.server.check_commit(garbage), Err(MlsCheckError::Malformed(_))));
        assert!(room.server.check_application(garbage, 2).is_err());
        assert!(room.server.check_group_info(garbage).is_err());
        assert!(room.server.check_proposal(garbage).is_err());
        assert!(check_key_package(garbage).is_err());
        assert!(welcome_recipients(garbage).is_err());
        assert!(RoomGroup::from_group_info(garbage, GROUP_ID).is_err());
        assert!(RoomGroup::from_snapshot(garbage, GROUP_ID).is_err());
    }

    // Every truncation of a real message is refused.
    for bytes in [&commit, &app, &room.group_info, &room.welcome, &key_package] {
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(room.server.check_commit(cut).is_err());
            assert!(room.server.check_application(cut, 2).is_err());
            assert!(room.server.check_group_info(cut).is_err());
            assert!(check_key_package(cut).is_err());
            assert!(welcome_recipients(cut).is_err());
        }
    }
    // A trailing byte is refused too.
    let mut long = commit.clone();
    long.push(0);
    assert!(matches!(room.server.check_commit(&long), Err(MlsCheckError::Malformed(_))));

    // Flipping any byte of a commit never panics. A commit ends with its
    // signature (2-byte length, 64 bytes), confirmation tag and membership
    // tag (1-byte length, 32 bytes each): a flipped signature is refused.
    for i in 0..commit.len() {
        let mut flipped = commit.clone();
        flipped[i] ^= 0x5a;
        let _ = room.server.check_commit(&flipped);
    }
    // A sender leaf index far outside the tree. The commit starts with
    // version (2), wire format (2), group id (1 + 16), epoch (8), sender type
    // (1) and then the sender's leaf index (4).
    assert_eq!(commit[29], 1, "sender type member");
    for index in [3u32, 1 << 31, u32::MAX] {
        let mut far = commit.clone();
        far[30..34].copy_from_slice(&index.to_be_bytes());
        assert!(room.server.check_commit(&far).is_err(), "leaf {index}");
    }
    assert_eq!(room.server.member(u32::MAX), None);

    let mut forged = commit.clone();
    let signature_byte = forged.len() - 33 - 33 - 10;
    forged[signature_byte] ^= 1;
    assert!(room.server.check_commit(&forged).is_err());

    // Through all of it the state never moved.
    assert_eq!(room.server.epoch(), 1);
    let checked = room.server.check_commit(&commit).unwrap();
    room.server.apply(checked).unwrap();
    assert_eq!(room.server.epoch(), 2);
}

#[test]
fn key_packages_are_verified() {
    let bob = Device::new("bob:1");
    let key_package = bob.key_package();
    let info = check_key_package(&wire(&MlsMessageOut::from(key_package.clone()))).unwrap();
    assert_eq!(info.identity, "bob:1");
    assert_eq!(info.signature_key, bob.key());
    assert_eq!(info.key_package_ref, hash_ref(&bob, &key_package));
    assert!(!info.last_resort);
    assert_eq!(info.not_after, key_package.life_time().not_after());

    // A lifetime longer than OpenMLS accepts for a leaf (about 12 weeks):
    // the server could not forget such a package once it was used.
    let long = bob.key_package_with(KeyPackage::builder().key_package_lifetime(Lifetime::new(365 * 86_400)));
    let err = check_key_package(&wire(&MlsMessageOut::from(long))).unwrap_err();
    assert!(matches!(err, MlsCheckError::Invalid(_)) && err.to_string().contains("12 weeks"), "{err}");

    // OpenMLS 0.9.2 puts the last_resort extension in the KeyPackage but not
    // in the leaf's capabilities, and then refuses its own KeyPackage: the
    // client must list the extension in the capabilities itself.
    let spare = bob.key_package_with(KeyPackage::builder().mark_as_last_resort());
    let err = check_key_package(&wire(&MlsMessageOut::from(spare))).unwrap_err();
    assert!(matches!(err, MlsCheckError::Invalid(_)), "{err}");
    let capabilities = Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
    let spare_kp = bob
        .key_package_with(KeyPackage::builder().leaf_node_capabilities(capabilities).mark_as_last_resort());
    let info = check_key_package(&wire(&MlsMessageOut::from(spare_kp.clone()))).unwrap();
    assert!(info.last_resort);
    assert_eq!(info.identity, "bob:1");
    // Such a KeyPackage can be added to a room.
    let alice = Device::new("alice:1");
    let mut group = alice.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let room = RoomGroup::from_group_info(&alice.group_info(&group), GROUP_ID).unwrap();
    let (commit, _, _) = group.add_members(&alice.provider, &alice.signer, &[spare_kp]).unwrap();
    let checked = room.check_commit(&wire(&commit)).unwrap();
    assert_eq!(checked.adds[0].key_package_ref, info.key_package_ref);

    // The KeyPackage signature is its last field.
    let mut tampered = wire(&MlsMessageOut::from(key_package));
    *tampered.last_mut().unwrap() ^= 1;
    let err = check_key_package(&tampered).unwrap_err();
    assert!(matches!(err, MlsCheckError::Invalid(_)), "{err}");

    for bad in ["bob", "bob:", ":1", "bob:01", "bob:x", "bob:1:2"] {
        let device = Device::new(bad);
        let err = check_key_package(&wire(&MlsMessageOut::from(device.key_package()))).unwrap_err();
        assert!(matches!(err, MlsCheckError::BadCredential(_)), "{bad}: {err}");
    }

    // Another ciphersuite.
    let p256 = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
    let signer = SignatureKeyPair::new(p256.signature_algorithm()).unwrap();
    let provider = OpenMlsRustCrypto::default();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"bob:2".to_vec()).into(),
        signature_key: signer.public().into(),
    };
    let other = KeyPackage::builder().build(p256, &provider, &signer, credential).unwrap();
    let err = check_key_package(&wire(&MlsMessageOut::from(other.key_package().clone()))).unwrap_err();
    assert!(matches!(err, MlsCheckError::WrongCiphersuite(_)), "{err}");
}

#[test]
fn a_welcome_names_the_added_key_packages() {
    let room = Room::new();
    assert_eq!(welcome_recipients(&room.welcome).unwrap(), room.refs);
    let from_commit: Vec<_> = room.add_commit.adds.iter().map(|(_, _, r)| r.clone()).collect();
    assert_eq!(from_commit, room.refs);
}

#[test]
fn only_the_current_group_info_is_accepted() {
    let mut room = Room::new();
    room.server.check_group_info(&room.group_info).unwrap();
    // A member's own export is as good as the committer's.
    room.server.check_group_info(&room.bob.group_info(&room.bob_group)).unwrap();

    let err = room.server.check_group_info(&room.first_group_info).unwrap_err();
    assert!(matches!(err, MlsCheckError::StaleEpoch { current: 1, got: 0 }), "{err}");

    let no_tree = wire(
        &room.alice_group.export_group_info(room.alice.provider.crypto(), &room.alice.signer, false).unwrap(),
    );
    let err = room.server.check_group_info(&no_tree).unwrap_err();
    assert!(matches!(&err, MlsCheckError::Invalid(m) if m.contains("ratchet_tree")), "{err}");

    let mut forged = room.group_info.clone();
    *forged.last_mut().unwrap() ^= 1;
    let err = room.server.check_group_info(&forged).unwrap_err();
    assert!(matches!(&err, MlsCheckError::Invalid(m) if m.contains("signature")), "{err}");

    // The committer's GroupInfo for a commit the server has not applied.
    let bundle = room
        .bob_group
        .self_update(&room.bob.provider, &room.bob.signer, LeafNodeParameters::default())
        .unwrap();
    let ahead = wire(bundle.group_info().map(|gi| MlsMessageOut::from(gi.clone())).as_ref().unwrap());
    let err = room.server.check_group_info(&ahead).unwrap_err();
    assert!(matches!(err, MlsCheckError::FutureEpoch { current: 1, got: 2 }), "{err}");
    room.commit_everywhere(&wire(bundle.commit()), "bob:1");
    room.server.check_group_info(&ahead).unwrap();
    assert!(matches!(room.server.check_group_info(&room.group_info), Err(MlsCheckError::StaleEpoch { .. })));
}

#[test]
fn a_new_device_joins_by_external_commit() {
    let mut room = Room::new();
    let alice2 = Device::new("alice:2");
    let (alice2_group, commit, group_info) = alice2.join_external(&room.group_info);

    let checked = room.server.check_commit(&commit).unwrap();
    assert_eq!(
        checked.sender,
        CommitSender::NewMember { identity: "alice:2".into(), signature_key: alice2.key() }
    );
    assert!(checked.adds.is_empty());
    assert!(checked.removes.is_empty());
    assert!(checked.has_update_path);
    assert_eq!(checked.proposal_kinds(), [ProposalType::ExternalInit]);
    room.server.apply(checked).unwrap();

    assert_eq!(room.server.epoch(), 2);
    assert_eq!(room.server.member(3), Some(alice2.leaf(3)));
    assert_eq!(alice2_group.epoch().as_u64(), 2);
    // The members accept it as the server did.
    room.alice.receive_commit(&mut room.alice_group, &commit);
    assert_eq!(room.alice_group.members().count(), 4);
    // The joiner's commit bundle carries the new GroupInfo (the join config
    // asks for the ratchet tree extension), and it describes the new state.
    room.server.check_group_info(&group_info.expect("external commit bundle has a GroupInfo")).unwrap();
    room.server.check_group_info(&alice2.group_info(&alice2_group)).unwrap();
}

#[test]
fn a_device_that_lost_its_state_rejoins_and_replaces_its_leaf() {
    let mut room = Room::new();
    let bob_again = room.bob.same_key("bob:1");
    let (_, commit, _) = bob_again.join_external(&room.group_info);

    let checked = room.server.check_commit(&commit).unwrap();
    assert_eq!(
        checked.sender,
        CommitSender::NewMember { identity: "bob:1".into(), signature_key: room.bob.key() }
    );
    assert_eq!(checked.removes, vec![room.bob.leaf(1)]);
    assert_eq!(checked.proposal_kinds(), [ProposalType::ExternalInit, ProposalType::Remove]);
    room.server.apply(checked).unwrap();
    let bobs = room.server.members().into_iter().filter(|m| m.identity == "bob:1").count();
    assert_eq!(bobs, 1);
    assert_eq!(room.server.members().len(), 3);
}

#[test]
fn an_external_commit_may_not_remove_another_device() {
    let room = Room::new();
    // mallory holds carol's key (say, stolen) and joins as herself: OpenMLS
    // then removes carol's leaf, which has the same key.
    let mallory = room.carol.same_key("mallory:1");
    let (_, commit, _) = mallory.join_external(&room.group_info);
    let err = room.server.check_commit(&commit).unwrap_err();
    assert!(matches!(&err, MlsCheckError::Invalid(m) if m.contains("own old leaf")), "{err}");
}

#[test]
fn a_commit_may_not_change_a_devices_identity() {
    let mut room = Room::new();
    let mallory = Device::new("mallory:1");
    let bundle = room
        .bob_group
        .self_update_with_new_signer(
            &room.bob.provider,
            &room.bob.signer,
            NewSignerBundle { signer: &mallory.signer, credential_with_key: mallory.credential.clone() },
            LeafNodeParameters::default(),
        )
        .unwrap();
    let err = room.server.check_commit(&wire(bundle.commit())).unwrap_err();
    assert!(matches!(&err, MlsCheckError::Invalid(m) if m.contains("identity")), "{err}");
}

#[test]
fn a_leave_proposal_is_queued_and_then_committed() {
    let mut room = Room::new();
    let leave = wire(&room.bob_group.leave_group(&room.bob.provider, &room.bob.signer).unwrap());

    let checked = room.server.check_proposal(&leave).unwrap();
    assert_eq!(checked.sender, room.bob.leaf(1));
    assert_eq!(checked.kind, ProposalKind::Remove(room.bob.leaf(1)));
    assert_eq!(checked.epoch, 1);
    // A restarted server that has not re-queued it cannot validate the commit.
    let restarted = RoomGroup::from_group_info(&room.group_info, GROUP_ID).unwrap();
    room.server.queue_proposal(checked).unwrap();

    let processed = room.alice_group.process_message(&room.alice.provider, protocol(&leave)).unwrap();
    let ProcessedMessageContent::ProposalMessage(proposal) = processed.into_content() else {
        panic!("not a proposal")
    };
    room.alice_group.store_pending_proposal(room.alice.provider.storage(), *proposal).unwrap();
    let (commit, _, _) =
        room.alice_group.commit_to_pending_proposals(&room.alice.provider, &room.alice.signer).unwrap();
    let commit = wire(&commit);

    assert!(matches!(restarted.check_commit(&commit), Err(MlsCheckError::Invalid(_))));
    let checked = room.server.check_commit(&commit).unwrap();
    assert_eq!(checked.sender, CommitSender::Member(room.alice.leaf(0)));
    assert_eq!(checked.removes, vec![room.bob.leaf(1)]);
    room.server.apply(checked).unwrap();
    assert_eq!(room.server.members(), vec![room.alice.leaf(0), room.carol.leaf(2)]);
}

#[test]
fn a_rebuilt_room_matches_the_original() {
    let mut room = Room::new();
    let commit = room.carol.self_update(&mut room.carol_group);
    room.commit_everywhere(&commit, "carol:1");
    let stored = room.carol.group_info(&room.carol_group);
    room.server.check_group_info(&stored).unwrap();

    let rebuilt = RoomGroup::from_group_info(&stored, GROUP_ID).unwrap();
    let restored = RoomGroup::from_snapshot(&room.server.to_snapshot().unwrap(), GROUP_ID).unwrap();
    for copy in [&rebuilt, &restored] {
        assert_eq!(copy.epoch(), room.server.epoch());
        assert_eq!(copy.group_id(), room.server.group_id());
        assert_eq!(copy.members(), room.server.members());
        copy.check_group_info(&stored).unwrap();
    }

    // All judge the next commit alike.
    let next = room.bob.self_update(&mut room.bob_group);
    let copy = room.server.try_clone().unwrap();
    for other in [&room.server, &rebuilt, &restored, &copy] {
        let checked = other.check_commit(&next).unwrap();
        assert_eq!(checked.sender, CommitSender::Member(room.bob.leaf(1)));
    }
    let checked = room.server.check_commit(&next).unwrap();
    room.server.apply(checked).unwrap();
    assert_eq!(room.server.epoch(), 3);
    // A copy taken before is unaffected: it can stand in to roll back.
    assert_eq!(copy.epoch(), 2);
    copy.check_commit(&next).unwrap();

    assert!(matches!(
        RoomGroup::from_snapshot(&room.server.to_snapshot().unwrap(), b"another room"),
        Err(MlsCheckError::WrongGroup)
    ));
    let snapshot = room.server.to_snapshot().unwrap();
    assert!(RoomGroup::from_snapshot(&snapshot[..snapshot.len() - 1], GROUP_ID).is_err());
}

/// OpenMLS re-checks the lifetime of every leaf that never committed when it
/// builds a group from a GroupInfo; a snapshot restore does not.
#[test]
fn a_snapshot_survives_an_expired_leaf() {
    let alice = Device::new("alice:1");
    let dave = Device::new("dave:1");
    let mut group = alice.create_group(GROUP_ID, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let mut server = RoomGroup::from_group_info(&alice.group_info(&group), GROUP_ID).unwrap();

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expires = now + 2;
    let short_lived =
        dave.key_package_with(KeyPackage::builder().key_package_lifetime(Lifetime::init(now - 60, expires)));
    let (commit, _, group_info) = group.add_members(&alice.provider, &alice.signer, &[short_lived]).unwrap();
    let checked = server.check_commit(&wire(&commit)).unwrap();
    server.apply(checked).unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    let group_info = wire(&MlsMessageOut::from(group_info.unwrap()));
    server.check_group_info(&group_info).unwrap();
    let snapshot = server.to_snapshot().unwrap();

    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = RoomGroup::from_group_info(&group_info, GROUP_ID).unwrap_err();
    assert!(matches!(err, MlsCheckError::Invalid(_)), "{err}");
    let restored = RoomGroup::from_snapshot(&snapshot, GROUP_ID).unwrap();
    assert_eq!(restored.members(), vec![alice.leaf(0), dave.leaf(1)]);
    restored.check_group_info(&group_info).unwrap();
    let copy = server.try_clone().unwrap();
    assert_eq!(copy.members(), restored.members());
    // The room keeps working: the stale leaf is not re-checked.
    let commit = alice.self_update(&mut group);
    server.check_commit(&commit).unwrap();
}

#[test]
fn a_panic_inside_a_check_becomes_an_error() {
    let result: Result<(), _> = guarded("a test", || panic!("a bug in a parser"));
    assert!(matches!(result, Err(MlsCheckError::Internal(m)) if m.contains("a test")));
}
