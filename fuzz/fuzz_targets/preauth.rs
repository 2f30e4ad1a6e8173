//! The server's pre-authentication path: a real server (its SQLite store in a
//! temporary directory, its rooms, throttle, Argon2 pool and log writer, all
//! made once per process) serves each input as one connection, through the
//! same session state machine and frame reader as a TLS connection. The
//! stream is an in-memory pipe instead of TLS
//! (`Server::serve_plaintext_for_fuzzing`, feature `fuzzing`), with a fixed
//! nonce and exporter value so that inputs can carry valid device signatures
//! (devices `common::DEVICE_SEEDS`).
//!
//! Input: `[flags, peer, bytes…]`. With `flags` bit 0 clear the bytes are the
//! stream; set, the stream is built with `arbitrary` from Hello, Register,
//! Login and Authenticate frames (signed validly or not), other requests and
//! raw bytes. `flags >> 1` seeds how the stream is cut into writes; `peer` is
//! the last byte of the client's address (the throttle counts per address).
//!
//! Checks: no panic anywhere in the server (its tasks included); the session
//! ends once the client has sent everything and closed; everything the
//! server sends decodes; its first frame is `Hello` or a connection error; a
//! connection error is the last frame; at most one `Hello` and one
//! `Authenticated`; **no successful answer before `Authenticated`**; until
//! then the answers carry the ids of the requests in order, and after it no
//! request is answered twice and nothing unasked is.

#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::BytesMut;
use conclave_proto::{
    auth_message, decode, encode, Authenticate, ClientFrame, ClientHello, Login, Password, Register, Request,
    RequestId, Response, ServerFrame, CLIENT_MAX_FRAME_LEN, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use conclave_server::{Config, Server};
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../common.rs"]
mod common;

/// How long one input may take before the session counts as hung.
const SESSION_LIMIT: Duration = Duration::from_secs(60);

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Server,
    /// Kept for the life of the process (libFuzzer exits without dropping it,
    /// so the directory stays behind in the system's temporary directory).
    _data: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let data = tempfile::Builder::new().prefix("conclave-fuzz-preauth-").tempdir().expect("a temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut config = Config::new(data.path());
    // Bound but never accepted on: sessions come from serve_plaintext_for_fuzzing.
    config.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.argon2_threads = 1;
    let server = runtime.block_on(Server::bind(config)).expect("the server starts");
    Harness { runtime, server, _data: data }
});

fuzz_target!(
    init: {
        LazyLock::force(&HARNESS);
    },
    |data: &[u8]| {
        let [flags, peer, rest @ ..] = data else { return };
        let stream = if flags & 1 == 0 {
            rest.to_vec()
        } else {
            match session(&mut Unstructured::new(rest)) {
                Ok(stream) => stream,
                Err(_) => return,
            }
        };
        let peer = SocketAddr::from(([127, 0, 1, *peer], 40_000));
        let replies = HARNESS.runtime.block_on(async {
            tokio::time::timeout(SESSION_LIMIT, serve(&stream, flags >> 1, peer))
                .await
                .expect("the session ends after the client closes")
        });
        check(&stream, &replies);
    }
);

/// Sends `stream` cut into writes, closes, and returns everything the server
/// sent until it closed.
async fn serve(stream: &[u8], seed: u8, peer: SocketAddr) -> Vec<u8> {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(client);
    let session =
        HARNESS.server.serve_plaintext_for_fuzzing(server_end, peer, common::NONCE, common::EXPORTER);
    let send = async move {
        for chunk in common::chunks(stream, seed) {
            if wr.write_all(chunk).await.is_err() {
                return; // the server closed: the rest goes unread, as over TCP
            }
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let receive = async move {
        let mut replies = Vec::new();
        let _ = rd.read_to_end(&mut replies).await;
        replies
    };
    let ((), (), replies) = tokio::join!(session, send, receive);
    replies
}

/// The properties every connection's answers must have.
fn check(stream: &[u8], replies: &[u8]) {
    let sent = request_ids(stream);
    let mut buf = BytesMut::from(replies);
    let mut frames = Vec::new();
    loop {
        match decode::<ServerFrame>(&mut buf, CLIENT_MAX_FRAME_LEN) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => panic!("the server sent an undecodable frame: {e}"),
        }
    }
    assert!(buf.is_empty(), "the server's last frame is cut short");

    if let Some(first) = frames.first() {
        assert!(
            matches!(first, ServerFrame::Hello(_) | ServerFrame::Error { id: None, .. }),
            "the first frame is {first:?}"
        );
    }
    let mut hellos = 0;
    let mut authenticated = false;
    // Answers up to authentication, then after it.
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for (i, frame) in frames.iter().enumerate() {
        let answered = if authenticated { &mut after } else { &mut before };
        match frame {
            ServerFrame::Hello(_) => hellos += 1,
            ServerFrame::Error { id: None, .. } => {
                assert_eq!(i + 1, frames.len(), "a connection error is the last frame")
            }
            ServerFrame::Error { id: Some(id), .. } => answered.push(*id),
            ServerFrame::Response { id, body } => {
                answered.push(*id);
                if let Response::Authenticated(_) = body {
                    assert!(!authenticated, "authenticated twice on one connection");
                    authenticated = true;
                } else {
                    assert!(authenticated, "answered {body:?} before authentication");
                }
            }
            ServerFrame::Event(_) => assert!(authenticated, "an event before authentication"),
        }
    }
    assert!(hellos <= 1, "{hellos} Hellos");
    // Before authentication every request is answered in turn. After it, a
    // stored `Send` is answered when its room has written it (pipelined), so
    // only which requests were answered is checked.
    assert!(before.len() <= sent.len(), "{} answers to {} requests", before.len(), sent.len());
    assert_eq!(before[..], sent[..before.len()], "answers out of order before authentication");
    let mut unanswered: HashMap<RequestId, usize> = HashMap::new();
    for id in &sent[before.len()..] {
        *unanswered.entry(*id).or_default() += 1;
    }
    for id in after {
        let left = unanswered.get_mut(&id).filter(|n| **n > 0);
        *left.unwrap_or_else(|| panic!("an answer to {id:?}, which was not asked (or not again)")) -= 1;
    }
}

/// The ids of the requests in the client's stream, in order, as the server
/// would decode them (up to the first frame it cannot).
fn request_ids(stream: &[u8]) -> Vec<RequestId> {
    let mut buf = BytesMut::from(stream);
    let mut ids = Vec::new();
    while let Ok(Some(frame)) = decode::<ClientFrame>(&mut buf, DEFAULT_MAX_FRAME_LEN) {
        if let ClientFrame::Request { id, .. } = frame {
            ids.push(id);
        }
    }
    ids
}

/// A connection's worth of frames, built from the input.
fn session(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    let mut next_id = 0u64;
    for _ in 0..u.int_in_range(1..=8u8)? {
        let body = match u.int_in_range(0..=6u8)? {
            0 => {
                let protocol_version = if u.ratio(1, 8)? { u32::arbitrary(u)? } else { PROTOCOL_VERSION };
                let hello =
                    ClientFrame::Hello(ClientHello { protocol_version, client: String::arbitrary(u)? });
                encode(&hello, &mut out).map_err(|_| arbitrary::Error::IncorrectFormat)?;
                continue;
            }
            1 => {
                let (device_key, signature) = device(u)?;
                Request::Register(Register {
                    username: name(u)?,
                    password: password(u)?,
                    display_name: Option::arbitrary(u)?,
                    token: Option::arbitrary(u)?,
                    device_key,
                    signature,
                })
            }
            2 => {
                let (device_key, signature) = device(u)?;
                Request::Login(Login { username: name(u)?, password: password(u)?, device_key, signature })
            }
            3 | 4 => {
                let (device_key, signature) = device(u)?;
                Request::Authenticate(Authenticate { device_key, signature })
            }
            5 => {
                let room = name(u)?;
                u.choose(&[
                    Request::WhoAmI,
                    Request::Ping,
                    Request::KeyPackageCount,
                    Request::ListRooms,
                    Request::PendingWelcomes,
                    Request::Subscribe,
                    Request::Members { room: room.clone() },
                    Request::GetGroupInfo { room: room.clone() },
                    Request::Sync { room: room.clone(), after_seq: 0, limit: 10 },
                    Request::Leave { room },
                ])?
                .clone()
            }
            _ => {
                out.extend_from_slice(&Vec::<u8>::arbitrary(u)?);
                continue;
            }
        };
        let id = if u.ratio(1, 8)? { u64::arbitrary(u)? } else { next_id };
        next_id += 1;
        encode(&ClientFrame::Request { id: RequestId(id), body }, &mut out)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?;
    }
    Ok(out.to_vec())
}

/// A device key and signature: often one of the known devices signing this
/// connection, else near misses and noise.
fn device(u: &mut Unstructured) -> arbitrary::Result<(Vec<u8>, Vec<u8>)> {
    let key = SigningKey::from_bytes(&[*u.choose(&common::DEVICE_SEEDS)?; 32]);
    let public = key.verifying_key().to_bytes().to_vec();
    let signature = key.sign(&auth_message(&common::NONCE, &common::EXPORTER)).to_bytes().to_vec();
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => (public, signature),
        2 => {
            let mut signature = signature;
            let at = u.choose_index(signature.len())?;
            signature[at] ^= u8::arbitrary(u)?.max(1);
            (public, signature)
        }
        _ => (Vec::arbitrary(u)?, Vec::arbitrary(u)?),
    })
}

fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    if u.ratio(1, 4)? {
        return String::arbitrary(u);
    }
    Ok(u.choose(&["alice", "bob", "Carol", "dave", "", "x.y_z-0", "#lab", "émile"])?.to_string())
}

fn password(u: &mut Unstructured) -> arbitrary::Result<Password> {
    Ok(Password::new(if u.ratio(1, 4)? { String::arbitrary(u)? } else { "correct horse battery".to_owned() }))
}
