//! Micro-benchmarks of the codec: encoding and decoding a client's `Send`
//! request and the server's `Event::Entry` frame (200-byte and 4 KiB
//! ciphertexts), taking 64 frames off one buffer (whole, and as they arrive
//! in 1,500-byte reads), and the log-entry encoding the server stores.
//!
//! Run with `cargo bench -p conclave-proto`; figures are in BENCHMARKS.md.

// A benchmark whose setup fails is a bug to see at once, not to handle.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use conclave_proto::{
    decode, decode_entry, encode, encode_entry, encode_to_bytes, ClientFrame, EntryBody, Event, LogEntry,
    Request, RequestId, Seq, ServerFrame, DEFAULT_MAX_FRAME_LEN,
};
use criterion::{black_box, criterion_main, BatchSize, Criterion, Throughput};

/// Ciphertext sizes: a short chat line, and a long paste.
const SIZES: [(&str, usize); 2] = [("200B", 200), ("4KiB", 4096)];

/// Frames in the buffer of the incremental-decode benchmark.
const FRAMES: usize = 64;

/// Bytes delivered per read in the chunked variant (about one TCP segment).
const READ: usize = 1500;

/// Ciphertext-like bytes (the codec does not care what they are).
fn ciphertext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn send_request(len: usize) -> ClientFrame {
    ClientFrame::Request {
        id: RequestId(4_211),
        body: Request::Send {
            room: "engineering".into(),
            client_msg_id: 0x9e37_79b9_7f4a_7c15,
            ciphertext: ciphertext(len),
        },
    }
}

fn log_entry(len: usize) -> LogEntry {
    LogEntry {
        seq: Seq::new(1_048_576),
        time_ms: 1_795_000_000_000,
        sender: "alice".into(),
        sender_device: 2,
        body: EntryBody::Message { client_msg_id: 0x9e37_79b9_7f4a_7c15, ciphertext: ciphertext(len) },
    }
}

fn entry_event(len: usize) -> ServerFrame {
    ServerFrame::Event(Event::Entry { room: "engineering".into(), entry: log_entry(len) })
}

fn frames(c: &mut Criterion) {
    for (label, len) in SIZES {
        let send = send_request(len);
        let event = entry_event(len);
        let send_bytes = encode_to_bytes(&send).unwrap();
        let event_bytes = encode_to_bytes(&event).unwrap();

        let mut g = c.benchmark_group(format!("frame/{label}"));
        g.throughput(Throughput::Bytes(send_bytes.len() as u64));
        let mut buf = BytesMut::with_capacity(2 * send_bytes.len());
        g.bench_function("send_request/encode", |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&send), &mut buf).unwrap();
            })
        });
        g.bench_function("send_request/decode", |b| {
            b.iter_batched(
                || BytesMut::from(&send_bytes[..]),
                |mut src| decode::<ClientFrame>(&mut src, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Bytes(event_bytes.len() as u64));
        // What a room actor does once per entry: encode into a shareable `Bytes`.
        g.bench_function("entry_event/encode_to_bytes", |b| {
            b.iter(|| encode_to_bytes(black_box(&event)).unwrap())
        });
        g.bench_function("entry_event/decode", |b| {
            b.iter_batched(
                || BytesMut::from(&event_bytes[..]),
                |mut src| decode::<ServerFrame>(&mut src, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

fn incremental(c: &mut Criterion) {
    let one = encode_to_bytes(&send_request(200)).unwrap();
    let mut stream = BytesMut::new();
    for _ in 0..FRAMES {
        stream.extend_from_slice(&one);
    }
    let stream = stream.freeze();

    let mut g = c.benchmark_group(format!("decode_{FRAMES}_frames/200B"));
    g.throughput(Throughput::Elements(FRAMES as u64));
    // Everything already buffered: decode until `Ok(None)`.
    g.bench_function("whole_buffer", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut src| {
                let mut n = 0;
                while let Some(frame) = decode::<ClientFrame>(&mut src, DEFAULT_MAX_FRAME_LEN).unwrap() {
                    black_box(frame);
                    n += 1;
                }
                assert_eq!(n, FRAMES);
            },
            BatchSize::SmallInput,
        )
    });
    // As the server's frame reader sees them: bytes arrive in 1,500-byte
    // reads, and each read is decoded until a frame is incomplete.
    g.bench_function("1500B_reads", |b| {
        b.iter(|| {
            let mut src = BytesMut::with_capacity(4096);
            let mut n = 0;
            for chunk in stream.chunks(READ) {
                src.extend_from_slice(chunk);
                while let Some(frame) = decode::<ClientFrame>(&mut src, DEFAULT_MAX_FRAME_LEN).unwrap() {
                    black_box(frame);
                    n += 1;
                }
            }
            assert_eq!(n, FRAMES);
        })
    });
    g.finish();
}

fn entries(c: &mut Criterion) {
    for (label, len) in SIZES {
        let entry = log_entry(len);
        let stored = encode_entry(&entry).unwrap();
        let mut g = c.benchmark_group(format!("log_entry/{label}"));
        g.throughput(Throughput::Bytes(stored.len() as u64));
        g.bench_function("encode_entry", |b| b.iter(|| encode_entry(black_box(&entry)).unwrap()));
        g.bench_function("decode_entry", |b| b.iter(|| decode_entry(black_box(&stored)).unwrap()));
        g.finish();
    }
}

// In a private module: the `pub fn` criterion_group! makes has no doc comment.
mod group {
    criterion::criterion_group!(benches, super::frames, super::incremental, super::entries);
}
criterion_main!(group::benches);
