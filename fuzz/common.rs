//! What the fuzz targets and `seedgen` must agree on: the input layouts'
//! fixed values, and how an input is cut into chunks. Included by path
//! (`#[path = "../common.rs"] mod common;`) so that `seedgen` does not link
//! libFuzzer.

#![allow(dead_code)] // each includer uses a part of it

/// The nonce the `preauth` server puts in its `Hello`.
pub const NONCE: [u8; conclave_proto::NONCE_LEN] = [0x4e; conclave_proto::NONCE_LEN];

/// The TLS exporter value the `preauth` server pretends its connection has.
pub const EXPORTER: [u8; conclave_proto::EXPORTER_LEN] = [0x58; conclave_proto::EXPORTER_LEN];

/// Ed25519 secret keys of the devices the inputs may sign with: device `i`
/// has the secret key `[DEVICE_SEEDS[i]; 32]`.
pub const DEVICE_SEEDS: [u8; 4] = [1, 2, 3, 4];

/// The MLS group id of the room in `fixtures/room.snapshot`.
pub const GROUP_ID: &[u8] = b"fuzz-room-0123456789abcdef";

/// The epoch of the room in `fixtures/room.snapshot`.
pub const ROOM_EPOCH: u64 = 1;

/// Splits `data` into chunks whose sizes follow `seed` (1 to 64 bytes each,
/// or the whole input at once when `seed` is 0), so that a decoder sees
/// frames cut at arbitrary places.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32: cheap, deterministic, good enough to vary the cuts.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64) as usize + 1;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// Makes a panic that `conclave_server::mls::guarded` catches (an OpenMLS
/// panic on hostile input, which the server turns into an error) a reported
/// event instead of a crash: its location is printed once, prefixed
/// `conclave-fuzz: guarded panic`. Every other panic still aborts through
/// libFuzzer's hook, which must already be installed (call this from the
/// target's `init`).
pub fn tolerate_guarded_panics() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        if !trace.contains("conclave_server::mls::guarded") {
            return abort(info);
        }
        let place = info.location().map_or_else(|| "?".to_owned(), |l| l.to_string());
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(place.clone()) {
            eprintln!("conclave-fuzz: guarded panic at {place}: {info}");
        }
    }));
}
