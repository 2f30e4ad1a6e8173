//! KeyPackages over the wire (issue 6): a device may upload only its own
//! KeyPackages (its identity, signed with its device key), each single-use
//! KeyPackage only once, and each is handed out once. Real KeyPackages made by
//! the client's MLS engine, uploaded to a real server over TLS.

use conclave_client::engine::Engine;
use conclave_client::{Chat, ClientError, Connection, DeviceKey, HistoryKind};
use conclave_proto::{
    validate_username, AccountInfo, ErrorCode, MemberIdentity, Password, Request, Response, Seq,
};

use super::{spawn_server, TestServer};

/// A registered device that has uploaded nothing yet, with an MLS engine
/// in its own profile directory.
struct Device {
    key: DeviceKey,
    conn: Connection,
    info: AccountInfo,
    engine: Option<Engine>,
    profile: tempfile::TempDir,
}

async fn device(s: &TestServer, name: &str) -> Device {
    let key = DeviceKey::generate();
    let conn = s.connect().await;
    let info = conn.register(&key, name, Password::new("correct horse battery"), None, None).await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let identity =
        MemberIdentity::new(validate_username(&info.username).unwrap(), info.device_id).to_string();
    let engine = engine(&profile.path().join("mls.db"), &key, &identity);
    Device { key, conn, info, engine: Some(engine), profile }
}

/// An MLS engine signing with `key` under `identity`, whoever they belong to.
fn engine(path: &std::path::Path, key: &DeviceKey, identity: &str) -> Engine {
    Engine::open(path, &key.seed(), &key.public(), identity).unwrap()
}

impl Device {
    fn key_packages(&mut self, n: usize) -> Vec<Vec<u8>> {
        self.engine.as_mut().unwrap().new_key_packages(n).unwrap()
    }

    fn last_resort(&mut self) -> Vec<u8> {
        self.engine.as_mut().unwrap().last_resort_key_package().unwrap()
    }

    async fn upload(
        &self,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u32, ClientError> {
        match self.conn.request(Request::UploadKeyPackages { key_packages, last_resort }).await? {
            Response::KeyPackageCount { available } => Ok(available),
            other => panic!("unexpected answer to an upload: {other:?}"),
        }
    }

    async fn count(&self) -> u32 {
        match self.conn.request(Request::KeyPackageCount).await.unwrap() {
            Response::KeyPackageCount { available } => available,
            other => panic!("{other:?}"),
        }
    }
}

/// Asserts an upload was refused as invalid MLS with a message containing `why`.
fn refused(result: Result<u32, ClientError>, why: &str) {
    let e = result.expect_err("the upload must be refused");
    assert_eq!(e.code(), Some(ErrorCode::INVALID_MLS), "{e}");
    assert!(e.to_string().contains(why), "expected {why:?} in: {e}");
}

#[tokio::test]
async fn key_packages_of_another_identity_or_key_are_refused() {
    let s = spawn_server(|_| {}).await;
    let mut alice = device(&s, "alice").await;
    let mut bob = device(&s, "bob").await;
    let scratch = tempfile::tempdir().unwrap();

    // Bob's own, genuine KeyPackage, uploaded by alice.
    let bobs = bob.key_packages(1);
    refused(alice.upload(bobs, None).await, "a KeyPackage belongs to bob:1, not to this device (alice:1)");

    // Bob's identity, signed with alice's very device key.
    let mut forged = engine(&scratch.path().join("forged.db"), &alice.key, "bob:1");
    let kp = forged.new_key_packages(1).unwrap();
    refused(alice.upload(kp, None).await, "a KeyPackage belongs to bob:1, not to this device (alice:1)");
    // Another device number of her own account, which does not exist.
    let mut second = engine(&scratch.path().join("second.db"), &alice.key, "alice:2");
    let kp = second.new_key_packages(1).unwrap();
    refused(alice.upload(kp, None).await, "a KeyPackage belongs to alice:2, not to this device (alice:1)");

    // Alice's identity, signed with a key that is not her device's.
    let stranger = DeviceKey::generate();
    let mut wrong_key = engine(&scratch.path().join("wrong-key.db"), &stranger, "alice:1");
    let kp = wrong_key.new_key_packages(1).unwrap();
    refused(
        alice.upload(kp, None).await,
        "a KeyPackage for alice:1 is signed with another key than this device's",
    );
    // The same, as a last-resort KeyPackage.
    let lr = wrong_key.last_resort_key_package().unwrap();
    refused(
        alice.upload(vec![], Some(lr)).await,
        "a KeyPackage for alice:1 is signed with another key than this device's",
    );

    // Garbage, and packages in the wrong slot.
    refused(alice.upload(vec![vec![0, 1, 0, 5, 1, 2, 3]], None).await, "a KeyPackage was refused");
    let lr = alice.last_resort();
    refused(alice.upload(vec![lr.clone()], None).await, "last-resort flag is wrong for its slot");
    let single = alice.key_packages(1);
    refused(alice.upload(vec![], Some(single[0].clone())).await, "last-resort flag is wrong for its slot");

    // One bad package fails the whole upload: nothing of it is stored.
    let mut batch = alice.key_packages(3);
    batch.extend(bob.key_packages(1));
    refused(alice.upload(batch, Some(lr.clone())).await, "belongs to bob:1");
    assert_eq!(alice.count().await, 0, "nothing of a refused upload is kept");

    // Her own are accepted, and the connection was usable all along.
    let own = alice.key_packages(3);
    assert_eq!(alice.upload(own, Some(lr)).await.unwrap(), 3);
    assert_eq!(alice.conn.whoami().await.unwrap(), alice.info);
    s.stop().await;
}

#[tokio::test]
async fn a_key_package_is_stored_once_and_handed_out_once() {
    let s = spawn_server(|_| {}).await;
    // Alice adds people: a full client with a room.
    let alice_key = DeviceKey::generate();
    let conn = s.connect().await;
    let info =
        conn.register(&alice_key, "alice", Password::new("correct horse battery"), None, None).await.unwrap();
    let alice_dir = tempfile::tempdir().unwrap();
    let mut alice = Chat::open(alice_dir.path(), &alice_key, conn, info).unwrap();
    alice.catch_up().await.unwrap();
    alice.create_room("lab").await.unwrap();
    let mut bob = device(&s, "bob").await;
    let kp = bob.key_packages(1).remove(0);
    let lr = bob.last_resort();

    // The same KeyPackage twice in one upload.
    refused(bob.upload(vec![kp.clone(), kp.clone()], Some(lr.clone())).await, "uploaded more than once");
    assert_eq!(bob.count().await, 0);
    assert_eq!(bob.upload(vec![kp.clone()], Some(lr.clone())).await.unwrap(), 1);
    // Again, while the server still holds it.
    refused(bob.upload(vec![kp.clone()], None).await, "uploaded more than once");
    assert_eq!(bob.count().await, 1);

    let claim = || async {
        let answer = alice
            .connection()
            .request(Request::ClaimKeyPackages { room: "lab".into(), users: vec!["bob".into()] })
            .await
            .unwrap();
        let Response::KeyPackages(mut list) = answer else { panic!("{answer:?}") };
        assert_eq!(list.len(), 1, "bob has one device");
        let claimed = list.remove(0);
        assert_eq!((claimed.username.as_str(), claimed.device_id), ("bob", 1));
        claimed.key_package
    };
    // Claimed once: the single-use package.
    assert!(claim().await == kp, "the first claim gets the single-use KeyPackage");
    assert_eq!(bob.count().await, 0);
    // Claimed again: not the same one, but the last-resort package, as often as needed.
    assert!(claim().await == lr, "the second claim gets the last-resort KeyPackage");
    assert!(claim().await == lr, "the last-resort KeyPackage is reused");

    // Once claimed, it cannot be put back to be handed out again.
    refused(bob.upload(vec![kp.clone()], None).await, "uploaded more than once");
    assert_eq!(bob.count().await, 0);
    assert!(claim().await == lr);
    // A last-resort package may be uploaded again: it is reused by design.
    assert_eq!(bob.upload(vec![], Some(lr.clone())).await.unwrap(), 0);

    // Bob really can join with what was handed out last (his last-resort
    // package): alice adds him, his client takes the Welcome, they talk.
    drop(bob.engine.take());
    let Device { key, conn, info, profile, .. } = bob;
    let mut bob = Chat::open(profile.path(), &key, conn, info).unwrap();
    alice.add("lab", &["bob".into()]).await.unwrap();
    bob.catch_up().await.unwrap();
    alice.send("lab", "welcome, bob").await.unwrap();
    bob.sync_room("lab").await.unwrap();
    let rows = bob.history("lab", Seq::ZERO, 100).unwrap();
    assert!(rows.iter().any(|r| r.kind == HistoryKind::Message && r.text == "welcome, bob"), "{rows:?}");
    s.stop().await;
}
