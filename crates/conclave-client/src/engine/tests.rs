//! Engine tests: real SQLite files in temp dirs, several devices, and a tiny
//! in-memory room log standing in for the server.

use std::path::{Path, PathBuf};

use super::*;
use crate::DeviceKey;

const ROOM: &str = "general";
const GROUP_ID: &[u8] = b"0123456789abcdef";

/// One device: its key, its database file, its engine.
struct Dev {
    key: DeviceKey,
    path: PathBuf,
    identity: String,
    e: Engine,
}

impl Dev {
    fn new(dir: &Path, identity: &str) -> Self {
        Self::with_key(dir, identity, DeviceKey::generate(), "mls.db")
    }

    fn with_key(dir: &Path, identity: &str, key: DeviceKey, file: &str) -> Self {
        let profile = dir.join(identity.replace(':', "-"));
        std::fs::create_dir_all(&profile).unwrap();
        let path = profile.join(file);
        let e = Engine::open(&path, &key.seed(), &key.public(), identity).unwrap();
        Self { key, path, identity: identity.to_owned(), e }
    }

    /// Drops the engine and opens the file again.
    fn reopen(self) -> Self {
        let Dev { key, path, identity, e } = self;
        drop(e);
        let e = Engine::open(&path, &key.seed(), &key.public(), &identity).unwrap();
        Dev { key, path, identity, e }
    }

    fn kp(&mut self) -> Vec<u8> {
        self.e.new_key_packages(1).unwrap().remove(0)
    }
}

enum Body {
    Commit(Vec<u8>),
    Message(Vec<u8>),
    Notice,
}

struct Entry {
    meta: Meta,
    sender_identity: String,
    body: Body,
}

/// The server's log of one room, and the GroupInfo it keeps.
#[derive(Default)]
struct Log {
    entries: Vec<Entry>,
    group_info: Vec<u8>,
}

impl Log {
    fn push(&mut self, sender: &str, body: Body, text: Option<&str>, client_msg_id: Option<u64>) -> Seq {
        let seq = self.head().next();
        let user = username_of(sender);
        let meta = Meta {
            seq,
            time_ms: 1_700_000_000_000 + seq.get(),
            sender_display: format!("{user} (display)"),
            sender: user,
            kind: HistoryKind::Notice,
            text: text.map(str::to_owned),
            own_client_msg_id: client_msg_id,
        };
        self.entries.push(Entry { meta, sender_identity: sender.to_owned(), body });
        seq
    }

    /// The server accepts a commit: it is logged, and its GroupInfo kept.
    fn commit(&mut self, sender: &Dev, out: &Outgoing) -> Seq {
        self.group_info = out.group_info.clone();
        self.push(&sender.identity, Body::Commit(out.commit.clone()), None, None)
    }

    /// Same, with a notice the server attaches to the entry.
    fn commit_noted(&mut self, sender: &Dev, out: &Outgoing, text: &str) -> Seq {
        self.group_info = out.group_info.clone();
        self.push(&sender.identity, Body::Commit(out.commit.clone()), Some(text), None)
    }

    /// `sender` sends `text` as message `client_msg_id`.
    fn send(&mut self, sender: &mut Dev, client_msg_id: u64, text: &str) -> Seq {
        sender.e.queue_outgoing(ROOM, client_msg_id, text).unwrap();
        let ct = sender.e.encrypt(ROOM, text.as_bytes()).unwrap();
        self.push(&sender.identity.clone(), Body::Message(ct), None, Some(client_msg_id))
    }

    fn notice(&mut self, text: &str) -> Seq {
        self.push("", Body::Notice, Some(text), None)
    }

    /// The newest entry's number.
    fn head(&self) -> Seq {
        Seq::new(self.entries.len() as u64)
    }

    fn entry(&self, seq: Seq) -> &Entry {
        &self.entries[(seq.get() - 1) as usize]
    }

    fn item<'a>(&'a self, seq: Seq, for_identity: &str) -> (Meta, Item<'a>) {
        let entry = self.entry(seq);
        let own = entry.sender_identity == for_identity;
        let mut meta = entry.meta.clone();
        if !own {
            meta.own_client_msg_id = None;
        }
        let item = match &entry.body {
            Body::Commit(b) => Item::Commit(b),
            Body::Message(_) if own => Item::Skip,
            Body::Message(b) => Item::Message(b),
            Body::Notice => Item::Skip,
        };
        (meta, item)
    }

    /// Applies every entry after the device's last_seq, as the sync layer would.
    fn sync(&self, dev: &mut Dev) -> Vec<Applied> {
        let from = dev.e.last_seq(ROOM).unwrap();
        (from.get() + 1..=self.head().get())
            .map(|seq| {
                let (meta, item) = self.item(Seq::new(seq), &dev.identity);
                dev.e.apply(ROOM, &meta, item).unwrap()
            })
            .collect()
    }
}

fn texts(dev: &Dev) -> Vec<(HistoryKind, String, String)> {
    dev.e.history(ROOM, Seq::ZERO, 1000).unwrap().into_iter().map(|r| (r.kind, r.sender, r.text)).collect()
}

fn row(kind: HistoryKind, sender: &str, text: &str) -> (HistoryKind, String, String) {
    (kind, sender.to_owned(), text.to_owned())
}

fn message(text: &str, from: &str) -> Applied {
    Applied::Message { text: text.into(), sender_identity: from.into() }
}

/// alice creates the room and adds bob and carol in one commit; both join.
fn three(dir: &Path) -> (Dev, Dev, Dev, Log) {
    let mut alice = Dev::new(dir, "alice:1");
    let mut bob = Dev::new(dir, "bob:1");
    let mut carol = Dev::new(dir, "carol:1");
    let mut log = Log { group_info: alice.e.create_group(ROOM, GROUP_ID).unwrap(), ..Log::default() };
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 0);
    let kps = vec![bob.kp(), carol.kp()];
    let out = alice.e.add_members(ROOM, &kps).unwrap();
    assert!(out.welcome.is_some());
    // Still pending: the group is at epoch 0 until the server accepts.
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 0);
    let seq = log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 1);
    let welcome = out.welcome.unwrap();
    bob.e.join_from_welcome(ROOM, &welcome, seq).unwrap();
    carol.e.join_from_welcome(ROOM, &welcome, seq).unwrap();
    // alice's own commit, echoed: merged already on the ack, so skipped.
    assert_eq!(log.sync(&mut alice), [Applied::Skipped]);
    (alice, bob, carol, log)
}

fn leaf_of(dev: &mut Dev, identity: &str) -> u32 {
    dev.e.members(ROOM).unwrap().into_iter().find(|(_, id)| id == identity).unwrap().0
}

#[test]
fn create_add_join_and_talk_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    for d in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(d.e.epoch(ROOM).unwrap(), 1);
        assert_eq!(d.e.last_seq(ROOM).unwrap(), Seq::new(1), "{}", d.identity);
        let members: Vec<String> = d.e.members(ROOM).unwrap().into_iter().map(|m| m.1).collect();
        assert_eq!(members, ["alice:1", "bob:1", "carol:1"]);
        assert!(d.e.has_group(ROOM));
        assert_eq!(d.e.rooms().unwrap(), [ROOM]);
    }
    assert_eq!(alice.e.own_leaf(ROOM).unwrap(), 0);
    assert_eq!(bob.e.own_leaf(ROOM).unwrap(), 1);

    log.send(&mut alice, 1, "hello room");
    log.send(&mut bob, 7, "hi alice");
    log.notice("carol is online");
    log.send(&mut carol, 1, "héllo ✓");

    assert_eq!(alice.e.pending_outgoing(ROOM).unwrap(), [(1, "hello room".to_owned())]);
    assert_eq!(
        log.sync(&mut alice),
        [Applied::Skipped, message("hi alice", "bob:1"), Applied::Skipped, message("héllo ✓", "carol:1")]
    );
    assert!(alice.e.pending_outgoing(ROOM).unwrap().is_empty());
    assert_eq!(
        log.sync(&mut bob),
        [message("hello room", "alice:1"), Applied::Skipped, Applied::Skipped, message("héllo ✓", "carol:1")]
    );
    log.sync(&mut carol);

    let expected = [
        row(HistoryKind::Message, "alice", "hello room"),
        row(HistoryKind::Message, "bob", "hi alice"),
        row(HistoryKind::Notice, "", "carol is online"),
        row(HistoryKind::Message, "carol", "héllo ✓"),
    ];
    for d in [&alice, &bob, &carol] {
        assert_eq!(texts(d), expected, "{}", d.identity);
        assert_eq!(d.e.last_seq(ROOM).unwrap(), Seq::new(5));
    }
    // The commit before the join is not in the joiners' history; alice has
    // no row for it either (it was merged on the ack and skipped in the log).
    let h = alice.e.history(ROOM, Seq::ZERO, 10).unwrap();
    assert_eq!(h[0].seq, Seq::new(2));
    assert_eq!(h[0].sender_display, "alice (display)");
    assert_eq!(h[0].time_ms, 1_700_000_000_002);
    assert_eq!(alice.e.history(ROOM, Seq::new(3), 1).unwrap()[0].seq, Seq::new(4));
    // Past what SQLite's i64 holds (`tail --since 18446744073709551615`): nothing, not an error.
    assert!(alice.e.history(ROOM, Seq::new(u64::MAX), 10).unwrap().is_empty());
    assert!(alice.e.history(ROOM, Seq::new(i64::MAX as u64 + 1), 10).unwrap().is_empty());
}

#[test]
fn duplicate_seq_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    let seq = log.send(&mut alice, 1, "once");
    log.sync(&mut bob);
    let (meta, item) = log.item(seq, &bob.identity);
    // The same ciphertext again would be a SecretReuseError: it is never decrypted.
    assert_eq!(bob.e.apply(ROOM, &meta, item).unwrap(), Applied::Duplicate);
    let (meta, item) = log.item(Seq::FIRST, &bob.identity);
    assert_eq!(bob.e.apply(ROOM, &meta, item).unwrap(), Applied::Duplicate);
    assert_eq!(texts(&bob), [row(HistoryKind::Message, "alice", "once")]);
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), seq);
}

#[test]
fn own_message_shows_once_after_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, _bob, _carol, mut log) = three(dir.path());
    alice.e.queue_outgoing(ROOM, 41, "not acked yet").unwrap();
    let seq = log.send(&mut alice, 42, "mine");
    assert_eq!(alice.e.pending_outgoing(ROOM).unwrap().len(), 2);
    assert!(texts(&alice).is_empty());
    log.sync(&mut alice);
    let (meta, item) = log.item(seq, &alice.identity);
    assert_eq!(alice.e.apply(ROOM, &meta, item).unwrap(), Applied::Duplicate);
    assert_eq!(texts(&alice), [row(HistoryKind::Message, "alice", "mine")]);
    assert_eq!(alice.e.pending_outgoing(ROOM).unwrap(), [(41, "not acked yet".to_owned())]);
    // A Skip with neither a queued message nor a text writes nothing.
    let meta = Meta { seq: seq.next(), own_client_msg_id: Some(999), ..Meta::default() };
    assert_eq!(alice.e.apply(ROOM, &meta, Item::Skip).unwrap(), Applied::Skipped);
    assert_eq!(texts(&alice).len(), 1);
    assert_eq!(alice.e.last_seq(ROOM).unwrap(), seq.next());
}

#[test]
fn own_message_handed_as_ciphertext_uses_the_queued_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, _bob, _carol, mut log) = three(dir.path());
    alice.e.queue_outgoing(ROOM, 5, "echo").unwrap();
    let ct = alice.e.encrypt(ROOM, b"echo").unwrap();
    let seq = log.push("alice:1", Body::Message(ct.clone()), None, Some(5));
    let meta = Meta { own_client_msg_id: Some(5), ..log.entry(seq).meta.clone() };
    assert_eq!(alice.e.apply(ROOM, &meta, Item::Message(&ct)).unwrap(), message("echo", "alice:1"));
    assert_eq!(texts(&alice), [row(HistoryKind::Message, "alice", "echo")]);
}

#[test]
fn removed_member_cannot_read_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    let bob_leaf = leaf_of(&mut alice, "bob:1");
    assert!(matches!(alice.e.remove_leaves(ROOM, &[0]), Err(EngineError::Invalid(_))));
    assert!(matches!(alice.e.remove_leaves(ROOM, &[9]), Err(EngineError::Invalid(_))));
    let out = alice.e.remove_leaves(ROOM, &[bob_leaf]).unwrap();
    assert!(out.welcome.is_none());
    log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    let secret = log.send(&mut alice, 1, "bob is gone");

    assert_eq!(
        log.sync(&mut carol),
        [Applied::Commit { epoch: 2, self_removed: false }, message("bob is gone", "alice:1")]
    );
    assert_eq!(carol.e.members(ROOM).unwrap().len(), 2);

    let applied = log.sync(&mut bob);
    assert_eq!(applied[0], Applied::Commit { epoch: applied_epoch(&applied[0]), self_removed: true });
    assert!(matches!(&applied[1], Applied::Undecryptable(_)), "{applied:?}");
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), secret);
    let h = bob.e.history(ROOM, Seq::ZERO, 10).unwrap();
    assert_eq!(h.last().unwrap().kind, HistoryKind::Undecryptable);
    assert!(!h.iter().any(|r| r.text.contains("bob is gone")));
    assert!(matches!(bob.e.encrypt(ROOM, b"hello?"), Err(EngineError::Evicted(_))));
    assert!(matches!(bob.e.remove_leaves(ROOM, &[0]), Err(EngineError::Evicted(_))));
    // Handed the ciphertext again under a new number, it still cannot be read.
    let Body::Message(ct) = &log.entry(secret).body else { panic!() };
    let meta = Meta { seq: Seq::new(secret.get() + 1), ..Meta::default() };
    assert!(matches!(bob.e.apply(ROOM, &meta, Item::Message(ct)).unwrap(), Applied::Undecryptable(_)));
    // Even after a restart.
    let mut bob = bob.reopen();
    let meta = Meta { seq: Seq::new(secret.get() + 2), ..Meta::default() };
    assert!(matches!(bob.e.apply(ROOM, &meta, Item::Message(ct)).unwrap(), Applied::Undecryptable(_)));
    // Later commits are refused as evicted, without advancing.
    let out = alice.e.self_update(ROOM).unwrap();
    log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    let meta = Meta { seq: Seq::new(secret.get() + 3), ..Meta::default() };
    assert!(matches!(bob.e.apply(ROOM, &meta, Item::Commit(&out.commit)), Err(EngineError::Evicted(_))));
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), Seq::new(secret.get() + 2));
    bob.e.forget_room(ROOM).unwrap();
    assert!(!bob.e.has_group(ROOM));
    assert!(bob.e.rooms().unwrap().is_empty());
    assert!(matches!(bob.e.last_seq(ROOM), Err(EngineError::NoSuchRoom(_))));
    assert!(!bob.e.history(ROOM, Seq::ZERO, 10).unwrap().is_empty(), "history is kept");
}

fn applied_epoch(a: &Applied) -> u64 {
    match a {
        Applied::Commit { epoch, .. } => *epoch,
        other => panic!("not a commit: {other:?}"),
    }
}

#[test]
fn concurrent_commits_loser_discards_applies_winner_and_redoes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    let mut dave = Dev::new(dir.path(), "dave:1");
    let dave_kp = dave.kp();

    // alice, bob and carol all commit at epoch 1; the server takes alice's.
    let winner = alice.e.self_update(ROOM).unwrap();
    let bob_try = bob.e.self_update(ROOM).unwrap();
    let carol_try = carol.e.add_members(ROOM, std::slice::from_ref(&dave_kp)).unwrap();
    assert!(matches!(carol.e.self_update(ROOM), Err(EngineError::CommitPending(_))));
    log.commit(&alice, &winner);

    // alice applies the echo of her own commit before the ack: merged from the log.
    assert_eq!(log.sync(&mut alice), [Applied::Commit { epoch: 2, self_removed: false }]);
    alice.e.merge_pending(ROOM).unwrap(); // the ack, late: nothing left to do
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 2);

    // carol hears "stale epoch" first: discards, syncs, redoes with the same KeyPackage.
    carol.e.discard_pending(ROOM).unwrap();
    assert_eq!(log.sync(&mut carol), [Applied::Commit { epoch: 2, self_removed: false }]);
    let carol_redo = carol.e.add_members(ROOM, &[dave_kp]).unwrap();
    assert_ne!(carol_redo.commit, carol_try.commit);
    let dave_seq = log.commit(&carol, &carol_redo);
    carol.e.merge_pending(ROOM).unwrap();
    dave.e.join_from_welcome(ROOM, carol_redo.welcome.as_ref().unwrap(), dave_seq).unwrap();

    // bob applies the winner while his own commit is pending: OpenMLS drops his.
    assert_eq!(
        log.sync(&mut bob),
        [
            Applied::Commit { epoch: 2, self_removed: false },
            Applied::Commit { epoch: 3, self_removed: false }
        ]
    );
    bob.e.discard_pending(ROOM).unwrap(); // the refusal, late: nothing left to drop
    let bob_redo = bob.e.self_update(ROOM).unwrap();
    assert_ne!(bob_redo.commit, bob_try.commit);
    log.commit(&bob, &bob_redo);
    bob.e.merge_pending(ROOM).unwrap();

    log.sync(&mut alice);
    log.sync(&mut carol);
    log.sync(&mut dave);
    for d in [&mut alice, &mut bob, &mut carol, &mut dave] {
        assert_eq!(d.e.epoch(ROOM).unwrap(), 4, "{}", d.identity);
        assert_eq!(d.e.members(ROOM).unwrap().len(), 4);
    }
    log.send(&mut dave, 1, "hi all");
    log.send(&mut bob, 1, "welcome dave");
    for d in [&mut alice, &mut bob, &mut carol, &mut dave] {
        log.sync(d);
        let h = texts(d);
        assert_eq!(
            h[h.len() - 2..],
            [row(HistoryKind::Message, "dave", "hi all"), row(HistoryKind::Message, "bob", "welcome dave")]
        );
    }
}

#[test]
fn message_from_the_previous_epoch_still_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    // bob encrypts at epoch 1; alice's commit reaches the log first.
    let in_flight = bob.e.encrypt(ROOM, b"sent at epoch 1").unwrap();
    let out = alice.e.self_update(ROOM).unwrap();
    log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    log.push("bob:1", Body::Message(in_flight), None, None);
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 2);
    assert_eq!(log.sync(&mut alice), [Applied::Skipped, message("sent at epoch 1", "bob:1")]);
    assert_eq!(
        log.sync(&mut carol),
        [Applied::Commit { epoch: 2, self_removed: false }, message("sent at epoch 1", "bob:1")]
    );
    assert_eq!(log.sync(&mut bob)[0], Applied::Commit { epoch: 2, self_removed: false });
}

#[test]
fn reopened_engine_continues_with_its_keys_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Dev::new(dir.path(), "alice:1");
    let mut bob = Dev::new(dir.path(), "bob:1");
    let mut log = Log { group_info: alice.e.create_group(ROOM, GROUP_ID).unwrap(), ..Log::default() };
    // bob's KeyPackage private keys survive a restart.
    let bob_kp = bob.kp();
    let mut bob = bob.reopen();
    let mut alice = alice.reopen();
    let out = alice.e.add_members(ROOM, &[bob_kp]).unwrap();
    // ... and so does a pending commit.
    let mut alice = alice.reopen();
    let seq = log.commit(&alice, &out);
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 0);
    alice.e.merge_pending(ROOM).unwrap();
    bob.e.join_from_welcome(ROOM, out.welcome.as_ref().unwrap(), seq).unwrap();
    log.send(&mut alice, 1, "before restart");
    log.sync(&mut bob);

    let mut alice = alice.reopen();
    let mut bob = bob.reopen();
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), Seq::new(2));
    assert_eq!(bob.e.epoch(ROOM).unwrap(), 1);
    log.send(&mut alice, 2, "after restart");
    log.send(&mut bob, 1, "bob too");
    let out = bob.e.self_update(ROOM).unwrap();
    log.commit(&bob, &out);
    let mut bob = bob.reopen();
    log.sync(&mut bob); // merges his own commit from the log, after a restart
    log.send(&mut bob, 2, "new epoch");
    log.sync(&mut alice);
    log.sync(&mut bob);
    assert_eq!(alice.e.epoch(ROOM).unwrap(), 2);
    let expected = [
        row(HistoryKind::Message, "alice", "before restart"),
        row(HistoryKind::Message, "alice", "after restart"),
        row(HistoryKind::Message, "bob", "bob too"),
        row(HistoryKind::Message, "bob", "new epoch"),
    ];
    assert_eq!(texts(&alice)[..], expected);
    assert_eq!(texts(&bob)[..], expected);
}

#[test]
fn rolled_back_entry_changes_nothing_and_can_be_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, _bob, mut carol, mut log) = three(dir.path());
    let out = alice.e.self_update(ROOM).unwrap();
    let seq = log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    let next = log.send(&mut alice, 1, "after the commit");

    let (meta, _) = log.item(seq, &carol.identity);
    let mut corrupt = out.commit.clone();
    let n = corrupt.len();
    corrupt[n - 10] ^= 0x55; // inside the signature / confirmation tag
    let before = carol.e.epoch(ROOM).unwrap();
    let err = carol.e.apply(ROOM, &meta, Item::Commit(&corrupt)).unwrap_err();
    assert!(matches!(err, EngineError::OutOfStep { seq: s, .. } if s == seq), "{err}");
    assert_eq!(carol.e.last_seq(ROOM).unwrap(), seq.prev());
    assert_eq!(carol.e.epoch(ROOM).unwrap(), before);
    // Garbage, and a commit from the future, are refused the same way.
    assert!(matches!(carol.e.apply(ROOM, &meta, Item::Commit(b"junk")), Err(EngineError::OutOfStep { .. })));
    assert_eq!(carol.e.last_seq(ROOM).unwrap(), seq.prev());

    // A crash after OpenMLS has merged the commit but before the bookkeeping is
    // written: the whole transaction is rolled back, MLS state included.
    crash_when_last_seq_becomes(&carol, seq);
    let (meta, item) = log.item(seq, &carol.identity);
    let err = carol.e.apply(ROOM, &meta, item).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(carol.e.epoch(ROOM).unwrap(), before);
    assert_eq!(carol.e.last_seq(ROOM).unwrap(), seq.prev());

    // The rollback also holds across a restart: the valid entries then apply.
    let mut carol = carol.reopen();
    assert_eq!(
        log.sync(&mut carol),
        [Applied::Commit { epoch: before + 1, self_removed: false }, message("after the commit", "alice:1")]
    );
    assert_eq!(carol.e.last_seq(ROOM).unwrap(), next);
}

/// Makes the next write of `last_seq = seq` fail, as a crash at that point would.
fn crash_when_last_seq_becomes(dev: &Dev, seq: Seq) {
    dev.e
        .conn
        .execute_batch(&format!(
            "CREATE TEMP TRIGGER crash BEFORE UPDATE OF last_seq ON room_state WHEN NEW.last_seq = {seq}
             BEGIN SELECT RAISE(ABORT, 'simulated crash'); END;"
        ))
        .unwrap();
}

#[test]
fn crash_after_decrypting_lets_the_message_be_decrypted_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    let seq = log.send(&mut alice, 1, "decrypted twice, stored once");
    crash_when_last_seq_becomes(&bob, seq);
    let (meta, item) = log.item(seq, &bob.identity);
    assert!(bob.e.apply(ROOM, &meta, item).is_err());
    assert!(texts(&bob).is_empty());
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), seq.prev());
    bob.e.conn.execute_batch("DROP TRIGGER crash").unwrap();
    // Had the ratchet step survived the rollback, this would be a SecretReuseError.
    assert_eq!(log.sync(&mut bob), [message("decrypted twice, stored once", "alice:1")]);
}

#[test]
fn undecryptable_entries_do_not_disturb_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    let commit = log.entries[0].meta.clone();
    let Body::Commit(add) = &log.entries[0].body else { panic!() };
    let add = add.clone();
    for (i, junk) in [b"junk".to_vec(), add].iter().enumerate() {
        let seq = log.notice("placeholder");
        let meta = Meta { seq, ..commit.clone() };
        let applied = bob.e.apply(ROOM, &meta, Item::Message(junk)).unwrap();
        assert!(matches!(applied, Applied::Undecryptable(_)), "{i}: {applied:?}");
    }
    log.send(&mut alice, 1, "still fine");
    let applied = log.sync(&mut bob);
    assert_eq!(applied.last().unwrap(), &message("still fine", "alice:1"));
    let kinds: Vec<HistoryKind> =
        bob.e.history(ROOM, Seq::ZERO, 10).unwrap().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [HistoryKind::Undecryptable, HistoryKind::Undecryptable, HistoryKind::Message]);
}

impl Log {
    /// The entries after the device's last_seq, as one batch.
    fn batch(&self, dev: &Dev) -> Vec<(Meta, Item<'_>)> {
        let from = dev.e.last_seq(ROOM).unwrap();
        (from.get() + 1..=self.head().get()).map(|seq| self.item(Seq::new(seq), &dev.identity)).collect()
    }
}

/// Makes the next history row written for `seq` fail, as a fault at that point would.
fn fault_when_history_gets(dev: &Dev, seq: Seq) {
    dev.e
        .conn
        .execute_batch(&format!(
            "CREATE TEMP TRIGGER fault BEFORE INSERT ON history WHEN NEW.seq = {seq}
             BEGIN SELECT RAISE(ABORT, 'simulated fault'); END;"
        ))
        .unwrap();
}

#[test]
fn batch_applies_like_one_entry_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    log.send(&mut alice, 1, "one");
    log.notice("a notice");
    let out = alice.e.self_update(ROOM).unwrap();
    log.commit_noted(&alice, &out, "alice updated");
    alice.e.merge_pending(ROOM).unwrap();
    log.send(&mut alice, 2, "two, in the new epoch");
    log.send(&mut carol, 1, "from carol");

    let one_by_one = log.sync(&mut carol);
    let batch = log.batch(&bob);
    let applied = bob.e.apply_batch(ROOM, &batch).unwrap();
    assert_eq!(
        applied,
        [
            message("one", "alice:1"),
            Applied::Skipped,
            Applied::Commit { epoch: 2, self_removed: false },
            message("two, in the new epoch", "alice:1"),
            message("from carol", "carol:1"),
        ]
    );
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), log.head());
    assert_eq!(bob.e.epoch(ROOM).unwrap(), 2);
    // carol's own message is Skipped for her, a message for bob; the rest match.
    assert_eq!(one_by_one.len(), applied.len());
    let bob_rows: Vec<_> = texts(&bob).into_iter().map(|(k, _, t)| (k, t)).collect();
    let carol_rows: Vec<_> = texts(&carol).into_iter().map(|(k, _, t)| (k, t)).collect();
    assert_eq!(bob_rows, carol_rows);
    // Given again, every entry is a duplicate and nothing changes.
    let again: Vec<(Meta, Item<'_>)> =
        (2..=log.head().get()).map(|s| log.item(Seq::new(s), &bob.identity)).collect();
    assert!(bob.e.apply_batch(ROOM, &again).unwrap().iter().all(|a| *a == Applied::Duplicate));
    assert_eq!(texts(&bob).len(), 5);
    // An empty batch changes nothing either.
    assert!(bob.e.apply_batch(ROOM, &[]).unwrap().is_empty());
}

#[test]
fn failed_batch_rolls_back_whole_and_applies_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    for i in 1..=3 {
        log.send(&mut alice, i, &format!("before the commit {i}"));
    }
    let out = alice.e.self_update(ROOM).unwrap();
    log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    let fault_at = log.send(&mut alice, 4, "after the commit");
    log.send(&mut alice, 5, "last");
    let (before_seq, before_epoch) = (bob.e.last_seq(ROOM).unwrap(), bob.e.epoch(ROOM).unwrap());

    let batch = log.batch(&bob);
    // A fault after three decryptions and a merged commit, then one at the
    // very end (the write of last_seq, with the group held in the cache at
    // its new epoch): either way all of it is undone.
    let last = log.head();
    for fault in ["history", "last_seq"] {
        match fault {
            "history" => fault_when_history_gets(&bob, fault_at),
            _ => crash_when_last_seq_becomes(&bob, last),
        }
        let err = bob.e.apply_batch(ROOM, &batch).unwrap_err();
        assert!(err.to_string().contains("simulated"), "{fault}: {err}");
        assert_eq!(bob.e.last_seq(ROOM).unwrap(), before_seq, "{fault}");
        assert_eq!(bob.e.epoch(ROOM).unwrap(), before_epoch, "{fault}: the commit's merge was rolled back");
        assert!(texts(&bob).is_empty(), "{fault}");
        let trigger = if fault == "history" { "fault" } else { "crash" };
        bob.e.conn.execute_batch(&format!("DROP TRIGGER {trigger}")).unwrap();
    }

    // Had the ratchet steps or the merged group survived (on disk, or in the
    // group cache), this would fail: a SecretReuseError, or a commit for a
    // past epoch.
    let applied = bob.e.apply_batch(ROOM, &batch).unwrap();
    assert_eq!(applied.len(), 6);
    assert_eq!(applied[3], Applied::Commit { epoch: before_epoch + 1, self_removed: false });
    assert_eq!(applied[5], message("last", "alice:1"));
    assert_eq!(texts(&bob).len(), 5);
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), log.head());

    // The same holds across a restart: what is on disk is the state before.
    let (mut alice2, mut bob2, _c, mut log2) = {
        let dir2 = dir.path().join("second");
        std::fs::create_dir_all(&dir2).unwrap();
        three(&dir2)
    };
    log2.send(&mut alice2, 1, "first");
    let fault_at = log2.send(&mut alice2, 2, "second");
    fault_when_history_gets(&bob2, fault_at);
    assert!(bob2.e.apply_batch(ROOM, &log2.batch(&bob2)).is_err());
    let mut bob2 = bob2.reopen();
    assert_eq!(bob2.e.apply_batch(ROOM, &log2.batch(&bob2)).unwrap().len(), 2);
    assert_eq!(texts(&bob2).len(), 2);
}

#[test]
fn batch_records_undecryptable_entries_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    log.send(&mut alice, 1, "readable");
    let junk = log.push("alice:1", Body::Message(b"junk".to_vec()), None, None);
    // A real ciphertext handed twice: the second cannot be decrypted again.
    let Body::Message(ct) = &log.entries[1].body else { panic!() };
    let ct = ct.clone();
    log.push("alice:1", Body::Message(ct), None, None);
    log.send(&mut alice, 2, "still readable");
    let applied = bob.e.apply_batch(ROOM, &log.batch(&bob)).unwrap();
    assert_eq!(applied[0], message("readable", "alice:1"));
    assert!(matches!(applied[1], Applied::Undecryptable(_)), "{:?}", applied[1]);
    assert!(matches!(applied[2], Applied::Undecryptable(_)), "{:?}", applied[2]);
    assert_eq!(applied[3], message("still readable", "alice:1"));
    let kinds: Vec<HistoryKind> = texts(&bob).into_iter().map(|r| r.0).collect();
    use HistoryKind::{Message, Undecryptable};
    assert_eq!(kinds, [Message, Undecryptable, Undecryptable, Message]);
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), junk.next().next());
}

#[test]
fn batch_stops_after_the_commit_that_removes_this_device() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    log.send(&mut alice, 1, "before");
    let bob_leaf = leaf_of(&mut alice, "bob:1");
    let out = alice.e.remove_leaves(ROOM, &[bob_leaf]).unwrap();
    let removal = log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();
    log.send(&mut alice, 2, "after");
    let out = alice.e.self_update(ROOM).unwrap();
    log.commit(&alice, &out);
    alice.e.merge_pending(ROOM).unwrap();

    let applied = bob.e.apply_batch(ROOM, &log.batch(&bob)).unwrap();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(matches!(applied[1], Applied::Commit { self_removed: true, .. }));
    assert_eq!(bob.e.last_seq(ROOM).unwrap(), removal);
}

#[test]
fn last_resort_key_package_serves_more_than_one_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Dev::new(dir.path(), "alice:1");
    let mut bob = Dev::new(dir.path(), "bob:1");
    let spare = bob.e.last_resort_key_package().unwrap();
    assert!(group::parse_key_package(&RustCrypto::default(), &spare).unwrap().last_resort());
    for (room, gid) in [("one", b"group one 0000000"), ("two", b"group two 0000000")] {
        alice.e.create_group(room, gid).unwrap();
        let out = alice.e.add_members(room, std::slice::from_ref(&spare)).unwrap();
        alice.e.merge_pending(room).unwrap();
        bob.e.join_from_welcome(room, out.welcome.as_ref().unwrap(), Seq::FIRST).unwrap();
        assert_eq!(bob.e.members(room).unwrap().len(), 2);
    }
    assert_eq!(bob.e.rooms().unwrap(), ["one", "two"]);
}

#[test]
fn failed_welcome_keeps_the_key_package() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Dev::new(dir.path(), "alice:1");
    let mut bob = Dev::new(dir.path(), "bob:1");
    alice.e.create_group(ROOM, GROUP_ID).unwrap();
    let out = alice.e.add_members(ROOM, &[bob.kp()]).unwrap();
    alice.e.merge_pending(ROOM).unwrap();
    let welcome = out.welcome.unwrap();
    let mut bad = welcome.clone();
    let n = bad.len();
    bad[n - 1] ^= 1; // the encrypted GroupInfo: found the KeyPackage, then failed
    let err = bob.e.join_from_welcome(ROOM, &bad, Seq::FIRST).unwrap_err();
    assert!(matches!(err, EngineError::Mls(_)), "{err}");
    assert!(!bob.e.has_group(ROOM));
    assert!(matches!(bob.e.join_from_welcome(ROOM, b"junk", Seq::FIRST), Err(EngineError::Malformed(_))));
    bob.e.join_from_welcome(ROOM, &welcome, Seq::FIRST).unwrap();
    assert_eq!(bob.e.epoch(ROOM).unwrap(), 1);
    // The same Welcome again is refused (stale), and changes nothing.
    assert!(bob.e.join_from_welcome(ROOM, &welcome, Seq::FIRST).is_err());
    assert_eq!(bob.e.epoch(ROOM).unwrap(), 1);
}

#[test]
fn bad_key_packages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Dev::new(dir.path(), "alice:1");
    let mut bob = Dev::new(dir.path(), "bob:1");
    alice.e.create_group(ROOM, GROUP_ID).unwrap();
    assert!(matches!(alice.e.add_members(ROOM, &[]), Err(EngineError::Invalid(_))));
    assert!(matches!(alice.e.add_members(ROOM, &[b"junk".to_vec()]), Err(EngineError::Malformed(_))));
    let mut kp = bob.kp();
    let n = kp.len();
    kp[n - 5] ^= 1; // breaks the signature
    assert!(matches!(alice.e.add_members(ROOM, &[kp]), Err(EngineError::Malformed(_))));
    let kp = bob.kp();
    assert!(matches!(alice.e.add_members(ROOM, &[kp.clone(), bob.kp()]), Err(EngineError::Invalid(_))));
    assert!(matches!(
        alice.e.add_members("nowhere", std::slice::from_ref(&kp)),
        Err(EngineError::NoSuchRoom(_))
    ));
    // A GroupInfo is not a KeyPackage.
    let gi = alice.e.create_group("other", b"another group id").unwrap();
    assert!(matches!(alice.e.add_members(ROOM, &[gi]), Err(EngineError::Malformed(_))));
    assert!(matches!(alice.e.create_group(ROOM, b"x"), Err(EngineError::RoomExists(_))));
    // Nothing was left pending by the failures.
    alice.e.add_members(ROOM, &[kp]).unwrap();
}

#[test]
fn second_device_joins_by_external_commit_and_talks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut carol, mut log) = three(dir.path());
    log.send(&mut bob, 1, "before alice:2");
    let mut alice2 = Dev::new(dir.path(), "alice:2");
    let out = alice2.e.join_external(ROOM, &log.group_info).unwrap();
    assert!(alice2.e.has_group(ROOM));
    // Nothing to send while the join waits for the server.
    assert!(matches!(alice2.e.encrypt(ROOM, b"x"), Err(EngineError::CommitPending(_))));
    let seq = log.commit_noted(&alice2, &out, "alice joined from a new device");
    // The server accepted: its sync starts at the commit, whose echo completes the join.
    alice2.e.set_last_seq(ROOM, seq.prev()).unwrap();
    assert_eq!(log.sync(&mut alice2), [Applied::Commit { epoch: 2, self_removed: false }]);

    for d in [&mut alice, &mut bob, &mut carol] {
        let applied = log.sync(d);
        assert_eq!(
            applied.last().unwrap(),
            &Applied::Commit { epoch: 2, self_removed: false },
            "{}",
            d.identity
        );
        assert_eq!(leaf_of(d, "alice:2"), 3);
    }
    log.send(&mut alice2, 1, "hello from my phone");
    log.send(&mut bob, 2, "hi phone");
    assert_eq!(log.sync(&mut alice2), [Applied::Skipped, message("hi phone", "bob:1")]);
    assert_eq!(log.sync(&mut bob), [message("hello from my phone", "alice:2"), Applied::Skipped]);
    let joined = row(HistoryKind::Notice, "alice", "alice joined from a new device");
    assert_eq!(
        texts(&alice2),
        [
            joined.clone(),
            row(HistoryKind::Message, "alice", "hello from my phone"),
            row(HistoryKind::Message, "bob", "hi phone")
        ]
    );
    assert!(texts(&bob).contains(&joined));
    // The new GroupInfo (from the joiner) lets a third device join in turn.
    let mut alice3 = Dev::new(dir.path(), "alice:3");
    let out = alice3.e.join_external(ROOM, &log.group_info).unwrap();
    let seq = log.commit(&alice3, &out);
    alice3.e.merge_pending(ROOM).unwrap();
    alice3.e.set_last_seq(ROOM, seq).unwrap();
    log.sync(&mut alice2);
    log.send(&mut alice2, 2, "three devices");
    assert_eq!(log.sync(&mut alice3), [message("three devices", "alice:2")]);
}

#[test]
fn refused_external_join_forgets_the_half_joined_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, _carol, mut log) = three(dir.path());
    let mut alice2 = Dev::new(dir.path(), "alice:2");
    let stale_info = log.group_info.clone();
    let out = bob.e.self_update(ROOM).unwrap();
    log.commit(&bob, &out);
    bob.e.merge_pending(ROOM).unwrap();
    let _refused = alice2.e.join_external(ROOM, &stale_info).unwrap();
    alice2.e.discard_pending(ROOM).unwrap();
    assert!(!alice2.e.has_group(ROOM));
    assert!(alice2.e.rooms().unwrap().is_empty());
    // Retry with the current GroupInfo.
    let out = alice2.e.join_external(ROOM, &log.group_info).unwrap();
    let seq = log.commit(&alice2, &out);
    alice2.e.merge_pending(ROOM).unwrap();
    alice2.e.set_last_seq(ROOM, seq).unwrap();
    log.sync(&mut alice);
    log.send(&mut alice, 1, "hello second device");
    assert_eq!(log.sync(&mut alice2), [message("hello second device", "alice:1")]);
}

#[test]
fn device_that_lost_its_state_rejoins_and_replaces_its_old_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, carol, mut log) = three(dir.path());
    let old_leaf = leaf_of(&mut alice, "carol:1");
    // carol's MLS file is gone; the device key is the same.
    let Dev { key, identity, .. } = carol;
    let mut carol = Dev::with_key(dir.path(), &identity, key, "mls-new.db");
    assert!(!carol.e.has_group(ROOM));
    let out = carol.e.join_external(ROOM, &log.group_info).unwrap();
    let seq = log.commit(&carol, &out);
    carol.e.merge_pending(ROOM).unwrap();
    carol.e.set_last_seq(ROOM, seq).unwrap();
    log.sync(&mut alice);
    log.sync(&mut bob);
    for d in [&mut alice, &mut bob, &mut carol] {
        let members = d.e.members(ROOM).unwrap();
        assert_eq!(members.iter().filter(|m| m.1 == "carol:1").count(), 1, "{members:?}");
        assert_eq!(members.len(), 3);
    }
    assert_eq!(carol.e.own_leaf(ROOM).unwrap(), old_leaf);
    log.send(&mut carol, 1, "back");
    log.send(&mut alice, 1, "welcome back");
    assert_eq!(log.sync(&mut carol), [Applied::Skipped, message("welcome back", "alice:1")]);
    assert_eq!(log.sync(&mut bob), [message("back", "carol:1"), message("welcome back", "alice:1")]);

    // A device with state can also rejoin in place (same file): the old group is replaced.
    let out = bob.e.join_external(ROOM, &log.group_info).unwrap();
    let seq = log.commit(&bob, &out);
    bob.e.merge_pending(ROOM).unwrap();
    bob.e.set_last_seq(ROOM, seq).unwrap();
    log.sync(&mut alice);
    log.send(&mut alice, 2, "still there, bob?");
    assert_eq!(log.sync(&mut bob), [message("still there, bob?", "alice:1")]);
    assert_eq!(bob.e.members(ROOM).unwrap().len(), 3);
}

#[test]
fn files_are_private_and_bound_to_their_device() {
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, _bob, _carol, mut log) = three(dir.path());
    log.send(&mut alice, 1, "x");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = alice.path.as_os_str().to_owned();
            p.push(suffix);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{p:?}");
        }
    }
    let mode: String = alice.e.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let path = alice.path.clone();
    drop(alice);
    let other = DeviceKey::generate();
    let e = Engine::open(&path, &other.seed(), &other.public(), "alice:1").unwrap_err();
    assert!(e.to_string().contains("another device key"), "{e}");
    let e = Engine::open(&path, &other.seed(), &DeviceKey::generate().public(), "alice:1").unwrap_err();
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    let e = Engine::open(&path, &other.seed(), &other.public(), "alice").unwrap_err();
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
    // The client and the server parse identities alike (MemberIdentity): a
    // username with a colon, capitals, or a device number with a leading zero
    // is refused here too, before anything is stored.
    for bad in ["a:b:1", "Alice:1", "alice:01", "alice:99999999999"] {
        let e = Engine::open(&path, &other.seed(), &other.public(), bad).unwrap_err();
        assert!(matches!(e, EngineError::Invalid(_)) && e.to_string().contains(bad), "{bad}: {e}");
    }
}

#[test]
fn engine_is_send() {
    fn send<T: Send>() {}
    send::<Engine>();
}

#[test]
fn history_kinds_keep_their_stored_text_and_old_profiles_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Dev::new(dir.path(), "alice:1");
    // Rows as every earlier version wrote them: the kind is plain text.
    let stored = ["message", "undecryptable", "notice", "join", "remove", "leave", "role", "commit"];
    for (seq, kind) in (1..).zip(stored) {
        alice
            .e
            .conn
            .execute(
                "INSERT INTO history (room, seq, time_ms, sender, sender_display, kind, text)
                 VALUES (?1, ?2, 0, 'bob', 'Bob', ?3, 'x')",
                params![ROOM, seq, kind],
            )
            .unwrap();
    }
    let alice = alice.reopen();
    let kinds: Vec<HistoryKind> =
        alice.e.history(ROOM, Seq::ZERO, 100).unwrap().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, HistoryKind::ALL);

    // What this version writes is the same text, and `tail --json` shows it.
    let row = store::NewRow {
        seq: Seq::new(100),
        time_ms: 0,
        sender: "bob",
        sender_display: "Bob",
        kind: HistoryKind::Undecryptable,
        text: "why",
    };
    store::put_history(&alice.e.conn, ROOM, &row).unwrap();
    let text: String =
        alice.e.conn.query_row("SELECT kind FROM history WHERE seq = 100", [], |r| r.get(0)).unwrap();
    assert_eq!(text, "undecryptable");
    let json = serde_json::to_value(&alice.e.history(ROOM, Seq::new(99), 1).unwrap()[0]).unwrap();
    assert_eq!(json["kind"], "undecryptable");

    // A kind this version does not know is an error that names it.
    alice
        .e
        .conn
        .execute(
            "INSERT INTO history (room, seq, time_ms, sender, sender_display, kind, text)
             VALUES (?1, 200, 0, 'bob', 'Bob', 'poll', 'x')",
            params![ROOM],
        )
        .unwrap();
    let e = alice.e.history(ROOM, Seq::new(199), 1).unwrap_err();
    assert!(e.to_string().contains("\"poll\""), "{e}");
}
