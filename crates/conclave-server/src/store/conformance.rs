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
