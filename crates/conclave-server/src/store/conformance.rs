//! The conformance suite every [`Store`] implementation must pass.
//!
//! Public behind the `conformance` cargo feature, so that a second engine
//! (in this crate or its own) runs the same story as the SQLite store:
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     conclave_server::store::conformance::run_all(|| MyStore::connect_to_a_fresh_database());
//! }
//! ```
//!
//! [`run_all`] calls the factory once per case, so every case starts from an
//! empty store; a failed case panics with its name, as a test failure.
//! [`CASES`] lists them for an engine that wants one test per case.

// A conformance case is a test: a failed step must fail it, with the step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use conclave_proto::{validate_display_name, validate_username, Seq};

/// One named check, run against a fresh, empty store.
pub struct Case {
    /// What it checks, for the failure message.
    pub name: &'static str,
    /// The check; panics on the first step the store gets wrong.
    pub run: fn(&dyn Store),
}

/// Every case of the suite.
pub const CASES: &[Case] = &[
    Case { name: "accounts_and_devices", run: accounts_and_devices },
    Case { name: "invites", run: invites },
    Case { name: "user_lookups", run: user_lookups },
    Case { name: "key_packages", run: key_packages },
    Case { name: "rooms_and_members", run: rooms_and_members },
    Case { name: "the_log", run: the_log },
    Case { name: "a_failed_job_leaves_the_others", run: a_failed_job_leaves_the_others },
    Case { name: "welcomes", run: welcomes },
    Case { name: "deleting_a_room", run: deleting_a_room },
    Case { name: "disabling_accounts", run: disabling_accounts },
    Case { name: "dropping_used_welcomes", run: dropping_used_welcomes },
];

/// Runs every case of [`CASES`], each against a new store made by
/// `new_store` (which must return an empty one each time). Panics, naming
/// the case, at the first step a store gets wrong.
pub fn run_all<S: Store>(mut new_store: impl FnMut() -> S) {
    for case in CASES {
        run_case(case, &new_store());
    }
}

/// Runs one case against `store` (fresh and empty); a failure panics with
/// the case's name and the failed step.
pub fn run_case(case: &Case, store: &dyn Store) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(store)));
    if let Err(panic) = outcome {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        panic!("store conformance case `{}` failed: {why}", case.name);
    }
}

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

/// A new account `name` whose first device has key `[key; 32]`.
fn account(store: &dyn Store, name: &str, key: u8) -> DeviceAccount {
    let username = validate_username(name).unwrap();
    let display = validate_display_name(name).unwrap();
    store.create_account(new(&username, &display, &DeviceKey([key; 32]), None)).unwrap()
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

fn user_lookups(store: &dyn Store) {
    let frank = account(store, "frank", 10);
    store.add_device(frank.user, &DeviceKey([11; 32])).unwrap();
    let name = validate_username("frank").unwrap();
    assert_eq!(store.user_by_name(&name).unwrap(), Some((frank.user, "frank".to_owned())));
    assert!(store.user_by_name(&validate_username("nobody").unwrap()).unwrap().is_none());

    store.set_display_name(frank.user, &validate_display_name("Frank F.").unwrap()).unwrap();
    assert_eq!(store.user_by_name(&name).unwrap(), Some((frank.user, "Frank F.".to_owned())));
    let device = store.device_by_key(&DeviceKey([11; 32])).unwrap().unwrap();
    assert_eq!(device.display_name, "Frank F.", "every device sees the new display name");

    let devices = store.devices_of(frank.user).unwrap();
    assert_eq!(devices, [(DeviceNo(1), DeviceKey([10; 32])), (DeviceNo(2), DeviceKey([11; 32]))]);
    assert!(store.devices_of(UserId(frank.user.0 + 1000)).unwrap().is_empty());
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

/// A room `name` owned by `owner`, with its `created` entry at seq 1.
fn room(store: &dyn Store, name: &str, group_id: &[u8], owner: UserId) -> Result<RoomId, StoreError> {
    store.create_room(NewRoom {
        name,
        group_id,
        group_info: b"gi-0",
        owner,
        created_entry: b"created",
        time_ms: 1,
    })
}

fn write_one(store: &dyn Store, job: Vec<WriteOp>) -> Result<(), StoreError> {
    let mut results = store.write_batch(&[job]);
    assert_eq!(results.len(), 1, "one result per job");
    results.remove(0)
}

fn append(
    room: RoomId,
    seq: u64,
    sender: Option<(UserId, DeviceNo)>,
    id: Option<u64>,
    entry: &[u8],
) -> WriteOp {
    WriteOp::Append {
        room,
        seq: Seq::new(seq),
        time_ms: seq,
        sender,
        client_msg_id: id,
        entry: entry.to_vec(),
    }
}

fn rooms_and_members(store: &dyn Store) {
    let owner = account(store, "olga", 20);
    let bob = account(store, "bob", 21);
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let same_name = room(store, "lab", b"group-other", owner.user);
    assert!(matches!(same_name, Err(StoreError::RoomExists)), "{same_name:?}");
    let same_group = room(store, "other", b"group-lab", owner.user);
    assert!(matches!(same_group, Err(StoreError::RoomExists)), "{same_group:?}");
    assert!(store.room_by_name("other").unwrap().is_none(), "a refused room leaves nothing behind");

    let record = store.room_by_name("lab").unwrap().unwrap();
    assert_eq!((record.id, record.name.as_str(), &record.group_id[..]), (lab, "lab", &b"group-lab"[..]));
    assert_eq!((record.epoch, &record.group_info[..], record.head_seq), (0, &b"gi-0"[..], Seq::FIRST));
    assert!(record.group_state.is_none());
    let members = store.room_members(lab).unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].user, members[0].role, members[0].joined_seq),
        (owner.user, Role::Owner, Seq::FIRST)
    );
    assert_eq!(members[0].username.as_str(), "olga");

    // A commit: the entry, the new epoch, the new member, in one job.
    write_one(
        store,
        vec![
            append(lab, 2, Some((owner.user, owner.device)), None, b"commit"),
            WriteOp::SetEpoch {
                room: lab,
                epoch: 1,
                group_info: b"gi-1".to_vec(),
                group_state: b"st-1".to_vec(),
            },
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(2) },
        ],
    )
    .unwrap();
    let record = store.room_by_name("lab").unwrap().unwrap();
    assert_eq!((record.epoch, &record.group_info[..], record.head_seq), (1, &b"gi-1"[..], Seq::new(2)));
    assert_eq!(record.group_state.as_deref(), Some(&b"st-1"[..]));
    let members = store.room_members(lab).unwrap();
    let names: Vec<_> = members.iter().map(|m| (m.username.as_str(), m.role, m.joined_seq)).collect();
    assert_eq!(
        names,
        [("bob", Role::Member, Seq::new(2)), ("olga", Role::Owner, Seq::FIRST)],
        "members in username order"
    );
    assert_eq!(store.rooms_of_user(bob.user).unwrap(), ["lab"]);

    room(store, "annex", b"group-annex", bob.user).unwrap();
    assert_eq!(store.rooms_of_user(bob.user).unwrap(), ["annex", "lab"], "rooms in name order");

    write_one(store, vec![WriteOp::SetRole { room: lab, user: bob.user, role: Role::Admin }]).unwrap();
    assert_eq!(store.room_members(lab).unwrap()[0].role, Role::Admin);
    write_one(store, vec![WriteOp::RemoveMember { room: lab, user: bob.user }]).unwrap();
    assert_eq!(store.room_members(lab).unwrap().len(), 1);
    assert_eq!(store.rooms_of_user(bob.user).unwrap(), ["annex"]);
    // Added again later: the membership starts at the new entry.
    write_one(
        store,
        vec![
            append(lab, 3, Some((owner.user, owner.device)), None, b"commit 2"),
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(3) },
        ],
    )
    .unwrap();
    let bob_again = store.room_members(lab).unwrap().into_iter().find(|m| m.user == bob.user).unwrap();
    assert_eq!((bob_again.role, bob_again.joined_seq), (Role::Member, Seq::new(3)));
}

fn the_log(store: &dyn Store) {
    let owner = account(store, "olga", 30);
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let from = Some((owner.user, owner.device));
    let jobs: Vec<Vec<WriteOp>> =
        (2..=11u64).map(|seq| vec![append(lab, seq, from, Some(seq * 100), &[seq as u8; 10])]).collect();
    for result in store.write_batch(&jobs) {
        result.unwrap();
    }
    assert_eq!(store.room_by_name("lab").unwrap().unwrap().head_seq, Seq::new(11));

    let (all, more) = store.read_log(lab, Seq::new(0), 100, usize::MAX).unwrap();
    assert!(!more);
    assert_eq!(all.len(), 11);
    assert_eq!(all[0], b"created");
    assert_eq!(all[10], [11u8; 10]);

    let (page, more) = store.read_log(lab, Seq::new(1), 3, usize::MAX).unwrap();
    assert_eq!((page, more), (vec![vec![2u8; 10], vec![3; 10], vec![4; 10]], true), "limit, then more");
    let (page, more) = store.read_log(lab, Seq::new(8), 3, usize::MAX).unwrap();
    assert_eq!((page.len(), more), (3, false), "exactly the rest: no more");
    let (page, more) = store.read_log(lab, Seq::new(1), 100, 25).unwrap();
    assert_eq!((page.len(), more), (2, true), "about max_bytes: 2 entries of 10 bytes fit in 25");
    let (page, more) = store.read_log(lab, Seq::new(1), 100, 1).unwrap();
    assert_eq!((page.len(), more), (1, true), "always at least one entry");
    let (page, more) = store.read_log(lab, Seq::new(11), 100, usize::MAX).unwrap();
    assert!(page.is_empty() && !more, "nothing after the head");

    let recent = store.recent_client_ids(lab, 3).unwrap();
    let key = |seq: u64| ((owner.user, owner.device, seq * 100), Seq::new(seq));
    assert_eq!(recent, [key(11), key(10), key(9)], "the newest ids, newest first");

    // A repeated message id from the same device is refused (the room
    // answers retries from `recent_client_ids` before it gets here).
    let twice = write_one(store, vec![append(lab, 12, from, Some(1100), b"again")]);
    assert!(twice.is_err(), "a message id stored twice");
    // ...but the same id from another device, or no id, is another message.
    let other = store.add_device(owner.user, &DeviceKey([31; 32])).unwrap();
    write_one(store, vec![append(lab, 12, Some((owner.user, other.device)), Some(1100), b"b")]).unwrap();
    write_one(store, vec![append(lab, 13, None, None, b"notice")]).unwrap();
    assert_eq!(
        store.read_log(lab, Seq::new(11), 100, usize::MAX).unwrap().0,
        [b"b".to_vec(), b"notice".to_vec()]
    );
    // A sequence number is taken once.
    assert!(write_one(store, vec![append(lab, 13, None, None, b"dup")]).is_err());
}

fn a_failed_job_leaves_the_others(store: &dyn Store) {
    let owner = account(store, "olga", 40);
    let bob = account(store, "bob", 41);
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let jobs = vec![
        vec![append(lab, 2, None, None, b"two")],
        // Fails on its second op (seq 1 is taken); its first op and its
        // membership change must roll back with it.
        vec![
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(3) },
            append(lab, 3, None, None, b"three"),
            append(lab, 1, None, None, b"clash"),
        ],
        vec![append(lab, 4, None, None, b"four")],
    ];
    let results = store.write_batch(&jobs);
    assert_eq!(results.iter().map(Result::is_ok).collect::<Vec<_>>(), [true, false, true]);
    let (entries, _) = store.read_log(lab, Seq::new(0), 100, usize::MAX).unwrap();
    assert_eq!(entries, [b"created".to_vec(), b"two".to_vec(), b"four".to_vec()]);
    assert_eq!(store.room_members(lab).unwrap().len(), 1, "the failed job's member is not added");
}

fn welcomes(store: &dyn Store) {
    let owner = account(store, "olga", 50);
    let bob = account(store, "bob", 51);
    let bob2 = store.add_device(bob.user, &DeviceKey([52; 32])).unwrap();
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let welcome = |device: DeviceNo, data: &[u8]| WriteOp::Welcome {
        room: lab,
        user: bob.user,
        device,
        seq: Seq::new(2),
        welcome: data.to_vec(),
    };
    write_one(
        store,
        vec![
            append(lab, 2, None, None, b"commit"),
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(2) },
            welcome(bob.device, b"w1"),
            welcome(bob2.device, b"w2"),
        ],
    )
    .unwrap();
    let got = store.welcomes_for(bob.user, bob.device).unwrap();
    assert_eq!(got.len(), 1, "each device gets its own Welcome");
    assert!(store.has_welcome(bob.user, bob.device, lab).unwrap());
    assert!(!store.has_welcome(owner.user, owner.device, lab).unwrap());
    assert_eq!(
        (got[0].room.as_str(), &got[0].group_id[..], got[0].seq),
        ("lab", &b"group-lab"[..], Seq::new(2))
    );
    assert_eq!(got[0].welcome, b"w1");
    assert_eq!(store.welcomes_for(bob.user, bob2.device).unwrap()[0].welcome, b"w2");
    assert!(store.welcomes_for(owner.user, owner.device).unwrap().is_empty());

    // A user removed from the room no longer gets its Welcomes.
    write_one(store, vec![WriteOp::RemoveMember { room: lab, user: bob.user }]).unwrap();
    assert!(store.welcomes_for(bob.user, bob.device).unwrap().is_empty());
}

fn deleting_a_room(store: &dyn Store) {
    let owner = account(store, "olga", 60);
    let bob = account(store, "bob", 61);
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let other = room(store, "other", b"group-other", owner.user).unwrap();
    write_one(
        store,
        vec![
            append(lab, 2, Some((owner.user, owner.device)), Some(7), b"commit"),
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(2) },
            WriteOp::Welcome {
                room: lab,
                user: bob.user,
                device: bob.device,
                seq: Seq::new(2),
                welcome: b"w".to_vec(),
            },
        ],
    )
    .unwrap();
    write_one(store, vec![WriteOp::DeleteRoom { room: lab }]).unwrap();
    assert!(store.room_by_name("lab").unwrap().is_none(), "the room is gone");
    assert_eq!(store.rooms_of_user(owner.user).unwrap(), ["other"], "and its memberships");
    assert!(store.rooms_of_user(bob.user).unwrap().is_empty());
    assert!(store.welcomes_for(bob.user, bob.device).unwrap().is_empty(), "and its Welcomes");
    assert!(store.read_log(lab, Seq::ZERO, 100, usize::MAX).unwrap().0.is_empty(), "and its log");
    // The name and the group id are free again; the other room is untouched.
    let again = room(store, "lab", b"group-lab", bob.user).unwrap();
    assert_ne!(again, lab);
    assert_eq!(store.read_log(again, Seq::ZERO, 100, usize::MAX).unwrap().0, [b"created".to_vec()]);
    assert_eq!(store.read_log(other, Seq::ZERO, 100, usize::MAX).unwrap().0, [b"created".to_vec()]);
}

fn disabling_accounts(store: &dyn Store) {
    let olga = account(store, "olga", 70);
    let bob = account(store, "bob", 71);
    assert!(store.disabled_users().unwrap().is_empty());
    assert!(store.set_disabled(&olga.username, true).unwrap());
    assert!(store.set_disabled(&olga.username, true).unwrap(), "disabling twice is no error");
    assert_eq!(store.disabled_users().unwrap(), [olga.user]);
    // The account, its devices and its name stay; only the flag is set.
    assert_eq!(store.device_by_key(&DeviceKey([70; 32])).unwrap().map(|a| a.user), Some(olga.user));
    let nobody = validate_username("nobody").unwrap();
    assert!(!store.set_disabled(&nobody, true).unwrap(), "no such account");
    assert!(store.set_disabled(&olga.username, false).unwrap());
    assert!(store.disabled_users().unwrap().is_empty());
    assert!(store.set_disabled(&bob.username, true).unwrap());
    assert_eq!(store.disabled_users().unwrap(), [bob.user]);
}

fn dropping_used_welcomes(store: &dyn Store) {
    let owner = account(store, "olga", 80);
    let bob = account(store, "bob", 81);
    let bob2 = store.add_device(bob.user, &DeviceKey([82; 32])).unwrap();
    let lab = room(store, "lab", b"group-lab", owner.user).unwrap();
    let annex = room(store, "annex", b"group-annex", owner.user).unwrap();
    let welcome = |room: RoomId, device: DeviceNo| WriteOp::Welcome {
        room,
        user: bob.user,
        device,
        seq: Seq::new(2),
        welcome: b"w".to_vec(),
    };
    write_one(
        store,
        vec![
            append(lab, 2, None, None, b"commit"),
            append(annex, 2, None, None, b"commit"),
            WriteOp::AddMember { room: lab, user: bob.user, role: Role::Member, joined_seq: Seq::new(2) },
            WriteOp::AddMember { room: annex, user: bob.user, role: Role::Member, joined_seq: Seq::new(2) },
            welcome(lab, bob.device),
            welcome(annex, bob.device),
            welcome(lab, bob2.device),
        ],
    )
    .unwrap();
    write_one(store, vec![WriteOp::DropWelcomes { room: lab, user: bob.user, device: bob.device }]).unwrap();
    assert!(!store.has_welcome(bob.user, bob.device, lab).unwrap(), "the used one is gone");
    assert!(store.has_welcome(bob.user, bob.device, annex).unwrap(), "its Welcome into another room stays");
    assert!(store.has_welcome(bob.user, bob2.device, lab).unwrap(), "another device's stays");
    let rooms: Vec<String> =
        store.welcomes_for(bob.user, bob.device).unwrap().into_iter().map(|w| w.room).collect();
    assert_eq!(rooms, ["annex"]);
    // Dropping what is not there is no error.
    write_one(store, vec![WriteOp::DropWelcomes { room: lab, user: bob.user, device: bob.device }]).unwrap();
}
