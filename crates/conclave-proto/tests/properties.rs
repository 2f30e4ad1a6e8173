//! Property tests for the codec: any frame survives a round trip, however
//! its bytes are split across reads, and no input makes the decoder panic.

// A panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use conclave_proto::{
    decode, decode_entry, encode, encode_entry, encode_to_bytes, Authenticate, ClientFrame, ClientHello,
    DecodeError, EntryBody, ErrorBody, ErrorCode, Event, LogEntry, Request, RequestId, Response, Role, Seq,
    ServerFrame,
};
use proptest::prelude::*;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..200)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::WhoAmI),
        Just(Request::ListRooms),
        (bytes(), bytes()).prop_map(|(device_key, signature)| Request::Authenticate(Authenticate {
            device_key,
            signature
        })),
        (".{0,40}", any::<u64>(), bytes()).prop_map(|(room, client_msg_id, ciphertext)| Request::Send {
            room,
            client_msg_id,
            ciphertext
        }),
        (".{0,40}", any::<u64>(), any::<u32>()).prop_map(|(room, after_seq, limit)| Request::Sync {
            room,
            after_seq: Seq::new(after_seq),
            limit
        }),
        (".{0,40}", bytes(), prop::option::of(bytes()), bytes()).prop_map(
            |(room, commit, welcome, group_info)| { Request::Commit { room, commit, welcome, group_info } }
        ),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u32>(), ".{0,40}").prop_map(|(protocol_version, client)| ClientFrame::Hello(ClientHello {
            protocol_version,
            client
        })),
        (any::<u64>(), request()).prop_map(|(id, body)| ClientFrame::Request { id: RequestId(id), body }),
    ]
}

fn entry() -> impl Strategy<Value = LogEntry> {
    let body = prop_oneof![
        Just(EntryBody::Created),
        (any::<u64>(), bytes())
            .prop_map(|(client_msg_id, ciphertext)| EntryBody::Message { client_msg_id, ciphertext }),
        (bytes(), prop::collection::vec("[a-z]{1,8}", 0..4), prop::collection::vec("[a-z]{1,8}", 0..4))
            .prop_map(|(commit, added, removed)| EntryBody::Commit { commit, added, removed }),
        "[a-z]{1,8}".prop_map(|user| EntryBody::Left { user }),
        ("[a-z]{1,8}", prop_oneof![Just(Role::Admin), Just(Role::Member)])
            .prop_map(|(user, role)| EntryBody::RoleChanged { user, role }),
    ];
    (any::<u64>(), any::<u64>(), "[a-z]{0,8}", any::<u32>(), body).prop_map(
        |(seq, time_ms, sender, sender_device, body)| LogEntry {
            seq: Seq::new(seq),
            time_ms,
            sender,
            sender_device,
            body,
        },
    )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(id, seq)| ServerFrame::Response {
            id: RequestId(id),
            body: Response::Accepted { seq: Seq::new(seq) }
        }),
        (prop::option::of(any::<u64>()), any::<u16>(), ".{0,60}", prop::option::of(any::<u32>())).prop_map(
            |(id, code, message, retry_after_secs)| ServerFrame::Error {
                id: id.map(RequestId),
                error: ErrorBody { code: ErrorCode(code), message, retry_after_secs },
            }
        ),
        (".{0,20}", entry()).prop_map(|(room, entry)| ServerFrame::Event(Event::Entry { room, entry })),
        (any::<u64>(), prop::collection::vec(entry(), 0..5), any::<bool>()).prop_map(
            |(id, entries, more)| {
                ServerFrame::Response { id: RequestId(id), body: Response::Log { entries, more } }
            }
        ),
    ]
}

/// Feeds `stream` to the decoder in pieces cut at `cuts`, collecting frames.
fn decode_in_pieces<T: serde::de::DeserializeOwned>(stream: &[u8], cuts: &[usize]) -> Vec<T> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&stream[at..p]);
        at = p;
        while let Some(frame) = decode::<T>(&mut buf, 1 << 24).unwrap() {
            out.push(frame);
        }
    }
    assert!(buf.is_empty(), "nothing left over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_frames_round_trip_however_split(
        frames in prop::collection::vec(client_frame(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, &mut stream).unwrap();
        }
        prop_assert_eq!(decode_in_pieces::<ClientFrame>(&stream, &cuts), frames);
    }

    #[test]
    fn server_frames_round_trip_however_split(
        frames in prop::collection::vec(server_frame(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, &mut stream).unwrap();
        }
        prop_assert_eq!(decode_in_pieces::<ServerFrame>(&stream, &cuts), frames);
    }

    #[test]
    fn stored_entries_round_trip(e in entry()) {
        let bytes = encode_entry(&e).unwrap();
        prop_assert_eq!(decode_entry(&bytes).unwrap(), e);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        // Decode until the input is exhausted or refused: never a panic.
        while let Ok(Some(_)) = decode::<ClientFrame>(&mut buf, 1 << 16) {}
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode::<ServerFrame>(&mut buf, 1 << 16) {}
        let _ = decode_entry(&data);
    }

    #[test]
    fn a_prefix_over_the_limit_is_refused(len in 1025u32.., payload in bytes()) {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        buf.extend_from_slice(&payload);
        let refused = matches!(decode::<ClientFrame>(&mut buf, 1024), Err(DecodeError::TooLarge { .. }));
        prop_assert!(refused);
    }
}

#[test]
fn encode_to_bytes_matches_encode() {
    let f = ClientFrame::Request { id: RequestId(3), body: Request::Ping };
    let mut buf = BytesMut::new();
    encode(&f, &mut buf).unwrap();
    assert_eq!(&buf[..], &encode_to_bytes(&f).unwrap()[..]);
}
