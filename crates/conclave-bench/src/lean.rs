//! Lean members: a member that only counts what the server delivers speaks
//! the protocol itself on the pinned TLS stream, and reads each `Entry`
//! event's few fields straight out of the frame (postcard's wire format:
//! varints and length-prefixed bytes) without building the whole frame.
//! So the load generator spends little per delivery, and the server is what
//! gets measured. The full clients (senders, decrypting members) use the
//! client library as `conclave` does.

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use conclave_client::{connect_tls, engine::Engine, ClientStream};
use conclave_proto::{
    auth_message, decode, encode_to_bytes, validate_username, Authenticate, ClientFrame, ClientHello,
    MemberIdentity, Request, RequestId, Response, Seq, ServerFrame, CLIENT_MAX_FRAME_LEN, EXPORTER_LABEL,
    EXPORTER_LEN, PROTOCOL_VERSION,
};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::target::{Account, Target};

/// A connected, authenticated member that only reads.
pub struct Lean {
    stream: ClientStream,
    buf: BytesMut,
    next_id: u64,
    /// The username.
    pub username: String,
    /// The device number.
    pub device_id: u32,
}

/// What a lean member sees.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A message entry.
    Message {
        /// Its sequence number.
        seq: Seq,
        /// Its sender's username.
        sender: &'a str,
        /// The sender's id for it.
        client_msg_id: u64,
        /// Its MLS ciphertext.
        ciphertext: &'a [u8],
    },
    /// Any other frame.
    Other,
    /// The server closed the connection with an error.
    Closed,
}

impl Lean {
    /// Connects, greets and authenticates `account`'s device.
    pub async fn connect(target: &Target, account: &Account) -> Result<Lean> {
        let mut stream = connect_tls(&target.addr, Some(&target.fingerprint)).await?.into_stream();
        let mut exporter = [0u8; EXPORTER_LEN];
        stream
            .get_ref()
            .1
            .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .map_err(|e| anyhow::anyhow!("TLS exporter: {e}"))?;
        let hello = ClientFrame::Hello(ClientHello {
            protocol_version: PROTOCOL_VERSION,
            client: "conclave-bench".into(),
        });
        stream.write_all(&encode_to_bytes(&hello)?).await?;
        stream.flush().await?;
        let mut lean = Lean {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            next_id: 1,
            username: String::new(),
            device_id: 0,
        };
        let nonce = match lean.frame().await? {
            ServerFrame::Hello(h) => h.auth_nonce,
            other => bail!("expected Hello, got {other:?}"),
        };
        let signature = account.device.sign(&auth_message(&nonce, &exporter)).to_vec();
        let auth =
            Request::Authenticate(Authenticate { device_key: account.device.public().to_vec(), signature });
        match lean.request(auth).await? {
            Response::Authenticated(info) => {
                lean.username = info.username;
                lean.device_id = info.device_id;
            }
            other => bail!("expected Authenticated, got {other:?}"),
        }
        Ok(lean)
    }

    /// Uploads one KeyPackage made by a fresh client engine in `dir`, so the
    /// member can be added to a room.
    pub async fn upload_key_package(&mut self, account: &Account, dir: &std::path::Path) -> Result<()> {
        let identity = MemberIdentity::new(validate_username(&self.username)?, self.device_id).to_string();
        let mut engine =
            Engine::open(&dir.join("mls.db"), &account.device.seed(), &account.device.public(), &identity)?;
        let key_packages = engine.new_key_packages(1)?;
        match self.request(Request::UploadKeyPackages { key_packages, last_resort: None }).await? {
            Response::KeyPackageCount { .. } => Ok(()),
            other => bail!("unexpected answer to UploadKeyPackages: {other:?}"),
        }
    }

    /// Sends a request and waits for its answer, skipping events.
    pub async fn request(&mut self, body: Request) -> Result<Response> {
        let id = self.start(body).await?;
        self.answer(id).await
    }

    /// Sends a request without waiting for its answer.
    pub async fn start(&mut self, body: Request) -> Result<RequestId> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.stream.write_all(&encode_to_bytes(&ClientFrame::Request { id, body })?).await?;
        // A TLS stream may keep the record buffered (for instance when the
        // task's I/O budget ran out mid-write): flush, or it may never leave.
        self.stream.flush().await?;
        Ok(id)
    }

    /// Waits for the answer to request `id`, skipping events.
    pub async fn answer(&mut self, id: RequestId) -> Result<Response> {
        loop {
            match self.frame().await? {
                ServerFrame::Response { id: got, body } if got == id => return Ok(body),
                ServerFrame::Error { id: got, error } if got == Some(id) || got.is_none() => {
                    bail!("server: {}", error.message)
                }
                _ => {}
            }
        }
    }

    async fn frame(&mut self) -> Result<ServerFrame> {
        loop {
            if let Some(frame) = decode::<ServerFrame>(&mut self.buf, CLIENT_MAX_FRAME_LEN)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }

    /// Reads whatever arrives and calls `f` for each frame, with the moment
    /// the read that brought it returned (one clock reading a read, not one
    /// a frame: the load generator is not what is measured), until `f`
    /// returns false or the connection ends.
    pub async fn for_each(&mut self, mut f: impl FnMut(Seen<'_>, Instant) -> bool) -> Result<()> {
        let mut read_at = Instant::now();
        loop {
            while self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len > CLIENT_MAX_FRAME_LEN {
                    bail!("frame of {len} bytes from the server");
                }
                if self.buf.len() < 4 + len {
                    break;
                }
                let seen = parse(&self.buf[4..4 + len]).context("an undecodable frame")?;
                if !f(seen, read_at) {
                    return Ok(());
                }
                self.buf.advance(4 + len);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                f(Seen::Closed, Instant::now());
                return Ok(());
            }
            read_at = Instant::now();
        }
    }
}

/// Reads what a lean member needs from one frame's payload.
pub fn parse(payload: &[u8]) -> Option<Seen<'_>> {
    let mut r = Reader(payload);
    match r.varint()? {
        // ServerFrame::Error
        2 => return Some(if r.byte()? == 0 { Seen::Closed } else { Seen::Other }),
        // ServerFrame::Event
        3 => {}
        _ => return Some(Seen::Other),
    }
    // Event::Entry { room, entry }
    if r.varint()? != 0 {
        return Some(Seen::Other);
    }
    let _room = r.bytes()?;
    let seq = Seq::new(r.varint()?);
    let _time_ms = r.varint()?;
    let sender = std::str::from_utf8(r.bytes()?).ok()?;
    let _device = r.varint()?;
    // EntryBody::Message { client_msg_id, ciphertext }
    if r.varint()? != 2 {
        return Some(Seen::Other);
    }
    let client_msg_id = r.varint()?;
    let ciphertext = r.bytes()?;
    Some(Seen::Message { seq, sender, client_msg_id, ciphertext })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::{encode, EntryBody, ErrorBody, ErrorCode, Event, LogEntry};

    fn payload(frame: &ServerFrame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(frame, &mut buf).unwrap();
        buf[4..].to_vec()
    }

    #[test]
    fn reads_message_entries_as_the_codec_writes_them() {
        for (seq, id, size) in [(1u64, 1u64, 0usize), (300, u64::MAX, 200), (u64::MAX / 3, 128, 70_000)] {
            let frame = ServerFrame::Event(Event::Entry {
                room: "bench".into(),
                entry: LogEntry {
                    seq: Seq::new(seq),
                    time_ms: 1_795_580_000_000,
                    sender: "f12".into(),
                    sender_device: 3,
                    body: EntryBody::Message { client_msg_id: id, ciphertext: vec![7; size] },
                },
            });
            let bytes = payload(&frame);
            assert_eq!(
                parse(&bytes),
                Some(Seen::Message {
                    seq: Seq::new(seq),
                    sender: "f12",
                    client_msg_id: id,
                    ciphertext: &vec![7; size][..]
                })
            );
        }
    }

    #[test]
    fn other_frames_and_closes() {
        let notice = ServerFrame::Event(Event::Entry {
            room: "bench".into(),
            entry: LogEntry {
                seq: Seq::new(5),
                time_ms: 0,
                sender: "a".into(),
                sender_device: 1,
                body: EntryBody::Created,
            },
        });
        assert_eq!(parse(&payload(&notice)), Some(Seen::Other));
        let presence =
            ServerFrame::Event(Event::Presence { room: "r".into(), user: "u".into(), online: true });
        assert_eq!(parse(&payload(&presence)), Some(Seen::Other));
        let pong = ServerFrame::Response { id: RequestId(9), body: Response::Pong };
        assert_eq!(parse(&payload(&pong)), Some(Seen::Other));
        let bye =
            ServerFrame::Error { id: None, error: ErrorBody::new(ErrorCode::SLOW_CONSUMER, "too slow") };
        assert_eq!(parse(&payload(&bye)), Some(Seen::Closed));
        let refused = ServerFrame::Error {
            id: Some(RequestId(2)),
            error: ErrorBody::new(ErrorCode::SLOW_CONSUMER, "x"),
        };
        assert_eq!(parse(&payload(&refused)), Some(Seen::Other));
        assert_eq!(parse(&[3, 0, 200]), None);
    }
}
