//! Arbitrary bytes into `conclave_proto`'s decoders: the incremental frame
//! decoder for client frames and for server frames (the stream fed whole and
//! cut into arbitrary chunks), and the log-entry decoder.
//!
//! Input: `[kind, chunk_seed, bytes…]`. `kind & 3` picks the decoder (0
//! client frames, 1 server frames, 2 or 3 a log entry); `(kind >> 2) & 3` the
//! frame limit (0: 64 bytes, 1: 4 KiB, else the real one); `chunk_seed` how
//! the stream is cut (see `common::chunks`). Checks: no panic; the stream decodes
//! to the same frames and the same end however it is cut; "need more bytes"
//! leaves the buffer untouched; everything decoded re-encodes and decodes to
//! the same value.

#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use conclave_proto::{
    decode, decode_entry, encode, encode_entry, ClientFrame, DecodeError, ServerFrame, CLIENT_MAX_FRAME_LEN,
    DEFAULT_MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [kind, seed, stream @ ..] = data else { return };
    let limit = |real: usize| match (kind >> 2) & 3 {
        0 => 64,
        1 => 4096,
        _ => real,
    };
    match kind & 3 {
        0 => frames::<ClientFrame>(stream, *seed, limit(DEFAULT_MAX_FRAME_LEN)),
        1 => frames::<ServerFrame>(stream, *seed, limit(CLIENT_MAX_FRAME_LEN)),
        _ => entry(stream),
    }
});

/// The frames a stream decodes to, and how it ended.
#[derive(Debug, PartialEq)]
struct Outcome<T> {
    frames: Vec<T>,
    /// Bytes left buffered (an incomplete frame), or the error that stopped decoding.
    end: Result<usize, DecodeError>,
}

fn frames<T>(stream: &[u8], seed: u8, max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let whole = decode_all::<T>(&[stream], max);
    let cut = decode_all::<T>(&common::chunks(stream, seed), max);
    assert_eq!(whole, cut, "the same bytes cut differently decode differently");
    for frame in &whole.frames {
        let mut buf = BytesMut::new();
        encode(frame, &mut buf).expect("a decoded frame encodes");
        let again = decode::<T>(&mut buf, usize::MAX).expect("a re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(frame), "a frame changed in a round trip");
        assert!(buf.is_empty(), "a re-encoded frame left bytes behind");
    }
}

fn decode_all<T: DeserializeOwned>(chunks: &[&[u8]], max: usize) -> Outcome<T> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode::<T>(&mut buf, max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert_eq!(buf, before, "`Ok(None)` changed the buffer");
                    break;
                }
                Err(e) => return Outcome { frames, end: Err(e) },
            }
        }
    }
    Outcome { frames, end: Ok(buf.len()) }
}

fn entry(bytes: &[u8]) {
    if let Ok(entry) = decode_entry(bytes) {
        let encoded = encode_entry(&entry).expect("a decoded entry encodes");
        assert_eq!(decode_entry(&encoded).as_ref(), Ok(&entry), "an entry changed in a round trip");
    }
}
