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
    /// The payload is not a valid encoding of the expected frame type.
    #[error("malformed frame: {0}")]
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
    match postcard::take_from_bytes(bytes) {
        Ok((entry, [])) => Ok(entry),
        Ok((_, rest)) => {
            Err(DecodeError::Malformed(format!("{} bytes left over after the entry", rest.len())))
        }
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
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
    match postcard::take_from_bytes(&payload) {
        Ok((msg, [])) => Ok(Some(msg)),
        Ok((_, rest)) => {
            Err(DecodeError::Malformed(format!("{} bytes left over after the payload", rest.len())))
        }
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
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
}
