//! Framing: a 4-byte big-endian length, then a postcard payload.
//!
//! [`decode`] is incremental and never panics on input: it returns `Ok(None)`
//! until a whole frame is buffered, refuses a length prefix over the limit
//! before buffering the body, and reports a payload that does not decode.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be decoded. After either error the connection is
/// out of step and must be closed (after an error frame, on the server).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The payload is not a valid encoding of the expected type. The
    /// message names the type, the byte of the payload where decoding
    /// failed (counted from 0, after the length prefix), and what was
    /// expected there.
    #[error("{0}")]
    Malformed(String),
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde could not encode the value (does not happen for this crate's types).
    #[error("cannot encode frame: {0}")]
    Serialize(#[from] postcard::Error),
    /// The encoded payload exceeds what a 4-byte prefix can carry.
    #[error("frame of {0} bytes is too large to encode")]
    TooLarge(usize),
}

/// Appends one frame (length prefix and payload) to `dst`.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let payload = postcard::to_stdvec(msg)?;
    let len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge(payload.len()))?;
    dst.reserve(LEN_PREFIX + payload.len());
    dst.put_u32(len);
    dst.extend_from_slice(&payload);
    Ok(())
}

/// Encodes one frame into its own buffer, ready to be shared between writers.
pub fn encode_to_bytes<T: Serialize>(msg: &T) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// Encodes a log entry as the server stores it (postcard, no length prefix).
pub fn encode_entry(entry: &crate::LogEntry) -> Result<Vec<u8>, EncodeError> {
    Ok(postcard::to_stdvec(entry)?)
}

/// Decodes a stored log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<crate::LogEntry, DecodeError> {
    decode_exact(bytes, "log entry")
}

/// Takes one frame off the front of `src` if it is complete.
///
/// Returns `Ok(None)` when more bytes are needed; `src` is then untouched.
/// A frame whose prefix exceeds `max_len` is refused as soon as the prefix is
/// read. A malformed payload is consumed before the error is returned.
pub fn decode<T: DeserializeOwned>(src: &mut BytesMut, max_len: usize) -> Result<Option<T>, DecodeError> {
    if src.len() < LEN_PREFIX {
        return Ok(None);
    }
    let mut prefix = [0u8; LEN_PREFIX];
    prefix.copy_from_slice(&src[..LEN_PREFIX]);
    // u32 always fits in usize on the 32- and 64-bit targets we build for.
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_len {
        return Err(DecodeError::TooLarge { len, max: max_len });
    }
    if src.len() < LEN_PREFIX + len {
        src.reserve(LEN_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    let payload = src.split_to(len);
    decode_exact(&payload, "frame").map(Some)
}

/// Decodes `bytes` as exactly one `T`, with an error that says where and
/// why it is not one (`what` names the kind of thing for the message).
fn decode_exact<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DecodeError> {
    let mut de = postcard::Deserializer::from_flavor(Tracked { bytes, pos: 0, last: 0 });
    let value = T::deserialize(&mut de);
    // `Tracked::finalize` cannot fail: it hands the position back.
    let at = de.finalize().unwrap_or(Tracked { bytes, pos: 0, last: 0 });
    let ty = type_name::<T>();
    let len = bytes.len();
    match value {
        Ok(value) if at.pos == len => Ok(value),
        Ok(_) => Err(DecodeError::Malformed(format!(
            "malformed {what}, not a valid {ty}: the {ty} ends at byte {} of the {len}-byte payload, and {} \
             bytes are left over: the payload must be exactly one {ty} (check the length prefix and each \
             field's length)",
            at.pos,
            len - at.pos
        ))),
        Err(e) => Err(DecodeError::Malformed(format!(
            "malformed {what}, not a valid {ty}: {}",
            explain(&e, &at, ty)
        ))),
    }
}

/// The last segment of `T`'s path: `ClientFrame`, not `conclave_proto::frame::ClientFrame`.
fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// What went wrong at `at`, for a person writing a client from docs/PROTOCOL.md.
fn explain(e: &postcard::Error, at: &Tracked<'_>, ty: &str) -> String {
    use postcard::Error as E;
    let len = at.bytes.len();
    let last = at.last;
    let byte = at.bytes.get(last).map_or_else(String::new, |b| format!(" ({b:02x})"));
    match e {
        E::DeserializeUnexpectedEnd => format!(
            "the {len}-byte payload ends before the {ty} does: the value at byte {} needs more bytes \
             (a string, byte string or list length claims more bytes than are left, or fields are missing; \
             see docs/PROTOCOL.md §3)",
            at.pos
        ),
        E::DeserializeBadVarint => format!(
            "the varint ending at byte {last}{byte} of the {len}-byte payload is too long or too large for its \
             type (at most 3 bytes for a u16, 5 for a u32 or an enum variant index, 10 for a u64 or a \
             length; the last byte has its high bit clear; docs/PROTOCOL.md §3.1)"
        ),
        E::DeserializeBadBool => {
            format!("byte {last}{byte} of the {len}-byte payload is a bool, which must be 00 or 01")
        }
        E::DeserializeBadOption => format!(
            "byte {last}{byte} of the {len}-byte payload is an Option tag, which must be 00 (None) or 01 (Some)"
        ),
        E::DeserializeBadUtf8 | E::DeserializeBadChar => format!(
            "the string at byte {last} of the {len}-byte payload is not valid UTF-8 \
             (a string is a varint byte length, then that many bytes of UTF-8)"
        ),
        E::DeserializeBadEnum => format!(
            "the enum variant index ending at byte {last}{byte} of the {len}-byte payload does not fit in a u32"
        ),
        // serde's derived code refuses an unknown variant index through a
        // custom error; postcard keeps no message for it.
        E::SerdeDeCustom => format!(
            "the value at byte {last}{byte} of the {len}-byte payload is not one its type allows: most often an \
             enum variant index past the type's last variant (the variants of every type, with their indices, \
             are in docs/PROTOCOL.md §3.3)"
        ),
        other => format!("at byte {last} of the {len}-byte payload: {other}"),
    }
}

/// A postcard input that remembers how far decoding got: `pos`, the bytes
/// consumed, and `last`, where the last read began (a failed check is about
/// the bytes from there).
struct Tracked<'de> {
    bytes: &'de [u8],
    pos: usize,
    last: usize,
}

impl<'de> postcard::de_flavors::Flavor<'de> for Tracked<'de> {
    type Remainder = Tracked<'de>;
    type Source = &'de [u8];

    fn pop(&mut self) -> postcard::Result<u8> {
        let byte = *self.bytes.get(self.pos).ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.last = self.pos;
        self.pos += 1;
        Ok(byte)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len() - self.pos)
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        let taken = self
            .pos
            .checked_add(ct)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.last = self.pos;
        self.pos += ct;
        Ok(taken)
    }

    fn finalize(self) -> postcard::Result<Tracked<'de>> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, ClientHello, Password, Register, Request, RequestId};

    fn sample() -> ClientFrame {
        ClientFrame::Request {
            id: RequestId(7),
            body: Request::Register(Register {
                username: "alice".into(),
                password: Password::new("correct horse"),
                display_name: Some("Alice".into()),
                token: None,
                device_key: vec![9; 32],
                signature: vec![1; 64],
            }),
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf).unwrap();
        let hello = ClientFrame::Hello(ClientHello { protocol_version: 1, client: "t".into() });
        encode(&hello, &mut buf).unwrap();
        assert_eq!(decode::<ClientFrame>(&mut buf, 1024).unwrap(), Some(sample()));
        assert_eq!(decode::<ClientFrame>(&mut buf, 1024).unwrap(), Some(hello));
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let whole = encode_to_bytes(&sample()).unwrap();
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode::<ClientFrame>(&mut buf, 1024).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "a partial frame is left in place");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x01][..]);
        assert_eq!(
            decode::<ClientFrame>(&mut buf, 1 << 20),
            Err(DecodeError::TooLarge { len: (1 << 20) + 1, max: 1 << 20 })
        );
    }

    #[test]
    fn garbage_is_malformed_and_consumed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode::<ClientFrame>(&mut buf, 1024), Err(DecodeError::Malformed(_))));
        assert!(buf.is_empty());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let whole = encode_to_bytes(&sample()).unwrap();
        let mut bytes = whole.to_vec();
        bytes.push(0);
        let len = (bytes.len() - LEN_PREFIX) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(decode::<ClientFrame>(&mut buf, 1024), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn truncated_payload_is_malformed() {
        let whole = encode_to_bytes(&sample()).unwrap();
        // Claim a shorter payload than the frame really has.
        let mut bytes = whole.to_vec();
        let short = (whole.len() - LEN_PREFIX - 10) as u32;
        bytes[..4].copy_from_slice(&short.to_be_bytes());
        bytes.truncate(LEN_PREFIX + short as usize);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(decode::<ClientFrame>(&mut buf, 1024), Err(DecodeError::Malformed(_))));
    }

    /// The message of decoding `payload` (without its length prefix) as a `ClientFrame`.
    fn malformed(payload: &[u8]) -> String {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.extend_from_slice(payload);
        match decode::<ClientFrame>(&mut buf, 1024) {
            Err(DecodeError::Malformed(message)) => message,
            other => panic!("{payload:02x?} decoded as {other:?}"),
        }
    }

    fn assert_says(message: &str, parts: &[&str]) {
        assert!(message.starts_with("malformed frame, not a valid ClientFrame: "), "{message}");
        for part in parts {
            assert!(message.contains(part), "{message:?} does not say {part:?}");
        }
        assert!(!message.contains("Serde") && !message.contains("platform"), "library text: {message}");
    }

    #[test]
    fn an_unknown_variant_is_named_with_its_byte() {
        // ClientFrame has two variants; 05 is none of them.
        let message = malformed(&[0x05]);
        assert_says(&message, &["byte 0 (05) of the 1-byte payload", "variant index", "§3.3"]);
        // Request::Ping is [4]; [99] is past the last request.
        let message = malformed(&[0x01, 0x07, 0x63]);
        assert_says(&message, &["byte 2 (63) of the 3-byte payload", "variant index"]);
    }

    #[test]
    fn a_varint_overflow_says_varint_not_platform() {
        // A request id (u64) of ten bytes, the last still with its high bit set.
        let mut payload = vec![0x01];
        payload.extend([0xff; 10]);
        let message = malformed(&payload);
        assert_says(
            &message,
            &["the varint ending at byte 10 (ff) of the 11-byte payload", "too long or too large"],
        );
        // A protocol version (u32) of six bytes.
        let message = malformed(&[0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_says(&message, &["the varint ending at byte 5 (80)", "5 for a u32"]);
    }

    #[test]
    fn invalid_utf8_names_the_string() {
        // Hello { protocol_version: 1, client: one byte ff }.
        let message = malformed(&[0x00, 0x01, 0x01, 0xff]);
        assert_says(&message, &["the string at byte 3 of the 4-byte payload is not valid UTF-8"]);
    }

    #[test]
    fn a_bad_option_tag_is_named() {
        // UploadKeyPackages { key_packages: [], last_resort: tag 02 }.
        let message = malformed(&[0x01, 0x07, 0x05, 0x00, 0x02]);
        assert_says(
            &message,
            &["byte 4 (02) of the 5-byte payload is an Option tag", "00 (None) or 01 (Some)"],
        );
    }

    #[test]
    fn a_length_past_the_end_says_where_the_value_starts() {
        // Hello { protocol_version: 1, client: 16 bytes claimed, 1 sent }.
        let message = malformed(&[0x00, 0x01, 0x10, b'a']);
        assert_says(&message, &["the 4-byte payload ends before the ClientFrame does", "value at byte 3"]);
    }

    #[test]
    fn left_over_bytes_are_counted() {
        let mut payload = encode_to_bytes(&sample()).unwrap()[LEN_PREFIX..].to_vec();
        let end = payload.len();
        payload.extend([0, 0]);
        let message = malformed(&payload);
        assert_says(
            &message,
            &[
                &format!("the ClientFrame ends at byte {end} of the {}-byte payload", end + 2),
                "2 bytes are left over",
            ],
        );
    }

    #[test]
    fn a_malformed_log_entry_says_so() {
        let err = decode_entry(&[0xff, 0xff]).unwrap_err().to_string();
        assert!(err.starts_with("malformed log entry, not a valid LogEntry: "), "{err}");
    }
}
