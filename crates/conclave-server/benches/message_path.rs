//! Micro-benchmarks of the server's per-message path, in-process:
//!
//! - `store_write_batch`: appending message entries through the SQLite
//!   store's `write_batch` (what the log-writer thread calls), on a real
//!   database file with the server's pragmas (WAL, `synchronous=FULL`: one
//!   fsync per batch);
//! - `fan_out`: encoding one `Event::Entry` frame and pushing its `Bytes` into
//!   100 subscribers' outbound queues, then draining them;
//! - `room_send`: the room actor's whole `Send` path (membership, dedup, size
//!   and MLS epoch checks, both encodings, the log writer's group commit, the
//!   answer, the fan-out) into a room of 100 subscribed members, driven
//!   through `bench_support` with no network. The message is a real MLS
//!   PrivateMessage of the room's group.
//!
//! Databases live under Cargo's target tmp directory, so on a real disk.
//! Run with `cargo bench -p conclave-server`; figures are in BENCHMARKS.md.

// A benchmark whose setup fails is a bug to see at once, not to handle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use conclave_proto::{
    encode_entry, encode_to_bytes, validate_display_name, validate_username, EntryBody, Event, LogEntry, Seq,
    ServerFrame,
};
use conclave_server::bench_support::{self, Harness};
use conclave_server::mls::CIPHERSUITE;
use conclave_server::store::sqlite::SqliteStore;
use conclave_server::store::{
    DeviceAccount, DeviceKey, DeviceNo, NewAccount, NewRoom, RoomId, Store, WriteOp,
};
use conclave_server::Config;
use criterion::{black_box, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, MlsGroup, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;

/// Subscribers of the fan-out and room benchmarks.
const SUBSCRIBERS: usize = 100;

/// Each subscriber's outbound queue, as `Config::outbound_queue` defaults to.
const QUEUE: usize = 1024;

/// Message entries per `write_batch` call.
const BATCHES: [usize; 3] = [1, 16, 256];

/// Sends in flight at once in the batched room benchmark.
const CONCURRENT_SENDS: usize = 64;

/// A temporary directory on the same disk as the build (not a tmpfs).
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Ciphertext-like bytes, for the benchmarks that never parse them.
fn ciphertext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn message_entry(seq: u64, len: usize) -> LogEntry {
    LogEntry {
        seq: Seq::new(seq),
        time_ms: 1_795_000_000_000,
        sender: "user000".into(),
        sender_device: 1,
        body: EntryBody::Message {
            client_msg_id: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ciphertext: ciphertext(len),
        },
    }
}

/// Creates accounts `user000`, `user001`, …, the first with `first_key`, and
/// returns them.
fn accounts(store: &dyn Store, count: usize, first_key: [u8; 32]) -> Vec<DeviceAccount> {
    let display = validate_display_name("Bench").unwrap();
    (0..count)
        .map(|i| {
            let name = validate_username(&format!("user{i:03}")).unwrap();
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            store
                .create_account(NewAccount {
                    username: &name,
                    display_name: &display,
                    password_hash: "$argon2id$bench",
                    device_key: &DeviceKey(if i == 0 { first_key } else { key }),
                    invite_token: None,
                })
                .unwrap()
        })
        .collect()
}

/// Creates room `name` owned by `members[0]` with the others as members.
fn room(
    store: &dyn Store,
    name: &str,
    group_id: &[u8],
    group_info: &[u8],
    members: &[DeviceAccount],
) -> RoomId {
    let created = LogEntry {
        seq: Seq::FIRST,
        time_ms: 1_795_000_000_000,
        sender: members[0].username.to_string(),
        sender_device: members[0].device.0,
        body: EntryBody::Created,
    };
    let room = store
        .create_room(NewRoom {
            name,
            group_id,
            group_info,
            owner: members[0].user,
            created_entry: &encode_entry(&created).unwrap(),
            time_ms: created.time_ms,
        })
        .unwrap();
    let adds: Vec<WriteOp> = members[1..]
        .iter()
        .map(|m| WriteOp::AddMember {
            room,
            user: m.user,
            role: conclave_proto::Role::Member,
            joined_seq: Seq::FIRST,
        })
        .collect();
    for result in store.write_batch(&[adds]) {
        result.unwrap();
    }
    room
}

/// `write_batch` of `n` message entries (200-byte ciphertexts), as one job
/// (one room actor's batch of sends) and as `n` jobs of one (one send each
/// from `n` rooms, gathered by the log writer).
fn store_write_batch(c: &mut Criterion) {
    let dir = temp_dir();
    let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
    let owner = accounts(&store, 1, [0xaa; 32]);
    let room = room(&store, "bench", b"bench-group", b"gi", &owner);
    let sender = Some((owner[0].user, owner[0].device));
    let entry = encode_entry(&message_entry(2, 200)).unwrap();
    let mut next_seq = 2u64;
    let mut append = move || {
        let seq = next_seq;
        next_seq += 1;
        WriteOp::Append {
            room,
            seq: Seq::new(seq),
            time_ms: 1_795_000_000_000,
            sender,
            client_msg_id: Some(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            entry: entry.clone(),
        }
    };

    let mut g = c.benchmark_group("store_write_batch/200B");
    // Each sample costs at least one fsync: few samples, one call each.
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let mut run = |g: &mut criterion::BenchmarkGroup<_>, id: BenchmarkId, n: usize, one_job: bool| {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(id, |b| {
            b.iter_batched(
                || {
                    let ops: Vec<WriteOp> = (0..n).map(|_| append()).collect();
                    if one_job {
                        vec![ops]
                    } else {
                        ops.into_iter().map(|op| vec![op]).collect()
                    }
                },
                |jobs| {
                    for result in store.write_batch(&jobs) {
                        result.unwrap();
                    }
                },
                BatchSize::PerIteration,
            )
        });
    };
    for n in BATCHES {
        run(&mut g, BenchmarkId::new("one_job", n), n, true);
    }
    let n = BATCHES[BATCHES.len() - 1];
    run(&mut g, BenchmarkId::new("jobs_of_one", n), n, false);
    g.finish();
}

/// What a room actor does after the log write: encode the entry's event
/// once, push the shared `Bytes` to every subscriber (a map, as in the
/// actor), and here also take each frame back off its queue.
fn fan_out(c: &mut Criterion) {
    let (outboxes, mut queues): (HashMap<u64, _>, Vec<_>) = (0..SUBSCRIBERS as u64)
        .map(|conn| {
            let (outbox, frames) = bench_support::outbox(QUEUE);
            ((conn, outbox), frames)
        })
        .unzip();
    let mut g = c.benchmark_group(format!("fan_out/{SUBSCRIBERS}_subscribers"));
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for (label, len) in [("200B", 200), ("4KiB", 4096)] {
        let event = ServerFrame::Event(Event::Entry { room: "bench".into(), entry: message_entry(2, len) });
        g.bench_function(label, |b| {
            b.iter(|| {
                let frame = encode_to_bytes(black_box(&event)).unwrap();
                for outbox in outboxes.values() {
                    outbox.push(frame.clone()).unwrap();
                }
                for queue in &mut queues {
                    black_box(queue.try_recv().unwrap());
                }
            })
        });
    }
    g.finish();
}

/// The owner's MLS device: its group for the room, its GroupInfo, and one
/// real application message of `text_len` bytes of text.
fn mls_room(group_id: &[u8], identity: &str, text_len: usize) -> ([u8; 32], Vec<u8>, Vec<u8>) {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    // As the client engine builds it.
    let mut group = MlsGroup::builder()
        .with_group_id(GroupId::from_slice(group_id))
        .ciphersuite(CIPHERSUITE)
        .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(5)
        .build(&provider, &signer, credential)
        .unwrap();
    let group_info =
        group.export_group_info(provider.crypto(), &signer, true).unwrap().tls_serialize_detached().unwrap();
    let text = vec![b'x'; text_len];
    let message = group.create_message(&provider, &signer, &text).unwrap().tls_serialize_detached().unwrap();
    let key: [u8; 32] = signer.to_public_vec().try_into().unwrap();
    (key, group_info, message)
}

/// One `Send` through the room actor, answered and delivered to all 100
/// subscribers; then 64 at once (the actor takes the sends already queued as
/// one batch, so they share one log write, or a few), per message.
fn room_send(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = temp_dir();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    config.argon2_threads = 1;
    let harness = rt.block_on(Harness::start(config)).unwrap();
    let store = harness.store();

    let group_id = b"bench-room-group";
    let (owner_key, group_info, message) = mls_room(group_id, "user000:1", 200);
    let members = accounts(store.as_ref(), SUBSCRIBERS, owner_key);
    assert_eq!(members[0].identity(), "user000:1");
    room(store.as_ref(), "bench", group_id, &group_info, &members);
    let (room, mut queues) = rt.block_on(async {
        let room = harness.room("bench").await.unwrap().expect("the room exists");
        let mut queues = Vec::new();
        for m in &members {
            queues.push(room.subscribe(m.user, DeviceNo(1), QUEUE).await.unwrap());
        }
        (room, queues)
    });
    let sender = &members[0];
    let mut next_id = 1u64;

    let mut g = c.benchmark_group(format!("room_send/{SUBSCRIBERS}_subscribers"));
    // Each sample costs at least one fsync: few samples, one call each.
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let label = format!("ciphertext_{}B", message.len());
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("one", &label), |b| {
        b.iter(|| {
            rt.block_on(async {
                next_id += 1;
                room.send(sender, next_id, message.clone()).await.unwrap();
                for queue in &mut queues {
                    queue.recv().await.unwrap();
                }
            })
        })
    });
    g.throughput(Throughput::Elements(CONCURRENT_SENDS as u64));
    g.bench_function(BenchmarkId::new(format!("{CONCURRENT_SENDS}_at_once"), &label), |b| {
        b.iter(|| {
            rt.block_on(async {
                let base = next_id;
                let sends =
                    (1..=CONCURRENT_SENDS as u64).map(|i| room.send(sender, base + i, message.clone()));
                next_id += CONCURRENT_SENDS as u64;
                for seq in futures::future::join_all(sends).await {
                    seq.unwrap();
                }
                for queue in &mut queues {
                    for _ in 0..CONCURRENT_SENDS {
                        queue.recv().await.unwrap();
                    }
                }
            })
        })
    });
    g.finish();
    drop(room);
    drop(harness);
    // The actor's task ends with the runtime; the log-writer thread with the process.
    rt.shutdown_timeout(Duration::from_secs(1));
}

// In a private module: the `pub fn` criterion_group! makes has no doc comment.
mod group {
    criterion::criterion_group!(benches, super::store_write_batch, super::fan_out, super::room_send);
}
criterion_main!(group::benches);
