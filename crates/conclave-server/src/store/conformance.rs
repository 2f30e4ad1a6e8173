//! The conformance suite every [`Store`] implementation must pass.

use super::*;
use conclave_proto::{validate_display_name, validate_username};

fn new<'a>(
    username: &'a Username,
    display: &'a DisplayName,
    key: &'a DeviceKey,
    token: Option<&'a str>,
) -> NewAccount<'a> {
    NewAccount {
        username,
        display_name: display,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        device_key: key,
        invite_token: token,
    }
}

/// Runs every check against a fresh, empty store.
pub fn run_all(store: &dyn Store) {
    accounts_and_devices(store);
    invites(store);
    key_packages(store);
}

fn accounts_and_devices(store: &dyn Store) {
    let alice = validate_username("alice").unwrap();
    let display = validate_display_name("Alice").unwrap();
    let k1 = DeviceKey([1; 32]);
    let created = store.create_account(new(&alice, &display, &k1, None)).unwrap();
    assert_eq!(created.device, DeviceNo(1));
    assert_eq!(created.display_name, "Alice");

    let again = store.create_account(new(&alice, &display, &DeviceKey([2; 32]), None));
    assert!(matches!(again, Err(StoreError::UsernameTaken)), "{again:?}");

    let other = validate_username("bob").unwrap();
    let dup_key = store.create_account(new(&other, &display, &k1, None));
    assert!(matches!(dup_key, Err(StoreError::DeviceKeyInUse)), "{dup_key:?}");
    assert!(store.credential(&other).unwrap().is_none(), "a failed create leaves nothing behind");

    let cred = store.credential(&alice).unwrap().unwrap();
    assert_eq!(cred.user, created.user);
    assert!(cred.password_hash.starts_with("$argon2id$"));

    let second = store.add_device(cred.user, &DeviceKey([3; 32])).unwrap();
    assert_eq!(second.device, DeviceNo(2));
    assert!(matches!(store.add_device(cred.user, &k1), Err(StoreError::DeviceKeyInUse)));

    let found = store.device_by_key(&DeviceKey([3; 32])).unwrap().unwrap();
    assert_eq!(found, second);
    assert!(store.device_by_key(&DeviceKey([9; 32])).unwrap().is_none());
}

fn invites(store: &dyn Store) {
    let carol = validate_username("carol").unwrap();
    let display = validate_display_name("Carol").unwrap();
    let bad = store.create_account(new(&carol, &display, &DeviceKey([4; 32]), Some("nope")));
    assert!(matches!(bad, Err(StoreError::InvalidToken)), "{bad:?}");

    store.create_invite("tok-1").unwrap();
    store.create_account(new(&carol, &display, &DeviceKey([4; 32]), Some("tok-1"))).unwrap();
    let dave = validate_username("dave").unwrap();
    let reused = store.create_account(new(&dave, &display, &DeviceKey([5; 32]), Some("tok-1")));
    assert!(matches!(reused, Err(StoreError::InvalidToken)), "a token is used once");
}

fn key_packages(store: &dyn Store) {
    let erin = validate_username("erin").unwrap();
    let display = validate_display_name("Erin").unwrap();
    let account = store.create_account(new(&erin, &display, &DeviceKey([6; 32]), None)).unwrap();
    let (user, device) = (account.user, account.device);
    let far = 4_000_000_000; // seconds since the Unix epoch: in 2096
    let kp = |n: u8| NewKeyPackage { data: vec![n; 8], key_package_ref: vec![n; 32], not_after: far };
    let last_resort = [9u8; 8];

    let twice = store.store_key_packages(user, device, &[kp(1), kp(1)], Some(&last_resort));
    assert!(matches!(twice, Err(StoreError::KeyPackageReused)), "{twice:?}");
    assert_eq!(store.key_package_count(user, device).unwrap(), 0, "a refused upload stores nothing");
    assert!(matches!(store.claim_key_packages(&[user]), Err(StoreError::NoKeyPackages(_))));

    assert_eq!(store.store_key_packages(user, device, &[kp(1), kp(2)], Some(&last_resort)).unwrap(), 2);
    let again = store.store_key_packages(user, device, &[kp(3), kp(2)], None);
    assert!(matches!(again, Err(StoreError::KeyPackageReused)), "{again:?}");
    assert_eq!(store.key_package_count(user, device).unwrap(), 2);

    // Each single-use package is handed out once, then the last-resort one.
    let mut claimed = Vec::new();
    for _ in 0..4 {
        claimed.push(store.claim_key_packages(&[user]).unwrap().remove(0).2);
    }
    assert_eq!(claimed, [vec![1; 8], vec![2; 8], last_resort.to_vec(), last_resort.to_vec()]);
    // A claimed package cannot come back; a new one can, and so can the
    // last-resort one.
    let back = store.store_key_packages(user, device, &[kp(1)], None);
    assert!(matches!(back, Err(StoreError::KeyPackageReused)), "{back:?}");
    assert_eq!(store.store_key_packages(user, device, &[kp(3)], Some(&last_resort)).unwrap(), 1);

    // An expired package's reference is forgotten (it is refused on upload anyway).
    let expired = NewKeyPackage { not_after: 1, ..kp(4) };
    assert_eq!(store.store_key_packages(user, device, std::slice::from_ref(&expired), None).unwrap(), 2);
    assert_eq!(store.store_key_packages(user, device, &[expired], None).unwrap(), 3);
}
