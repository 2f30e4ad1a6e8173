//! Adapts the protocol crate's codec to a TLS stream: a frame reader for the
//! read half, and a writer task that drains a bounded queue of encoded frames.
//!
//! Frames are encoded once (`Bytes`) and may be shared between many
//! connections' queues. The writer batches whatever is queued into one write.
//! A full queue means the client is not reading fast enough: the connection is
//! closed (the room log is the truth, so it re-syncs when it comes back)
//! instead of letting memory grow.

use bytes::{Bytes, BytesMut};
use conclave_proto::{decode, encode_to_bytes, ClientFrame, DecodeError, ServerFrame};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::sync::{mpsc, oneshot};

/// Bytes gathered into one write at most.
const WRITE_BATCH: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is too large or malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
}

/// Reads client frames from one half of a stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader accepting frames up to `max_len` bytes.
    pub fn new(inner: R, max_len: usize) -> Self {
        // Small: an idle connection keeps this buffer (BENCHMARKS.md, memory).
        // A frame longer than it grows it as it arrives.
        Self { inner, buf: BytesMut::with_capacity(1024), max_len }
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<ClientFrame>, ReadError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, self.max_len)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(1024.max(self.buf.len()));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ReadError::Truncated) };
            }
        }
    }
}

/// The sending side of a connection's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    /// The connection's last word: written ahead of anything still queued.
    last: Arc<Mutex<Option<oneshot::Sender<Bytes>>>>,
}

/// The frame could not be queued: the connection is closing, or its queue is
/// full because the client does not read.
#[derive(Debug, thiserror::Error)]
#[error("connection queue is closed or full")]
pub struct QueueFull;

impl Outbox {
    /// A queue of `capacity` frames, with the receivers a writer drains: the
    /// frames, and the last word.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Bytes>, oneshot::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel::<Bytes>(capacity.max(1));
        let (last_tx, last_rx) = oneshot::channel::<Bytes>();
        (Self { tx, last: Arc::new(Mutex::new(Some(last_tx))) }, rx, last_rx)
    }

    /// Queues an already-encoded frame without waiting.
    pub fn push(&self, frame: Bytes) -> Result<(), QueueFull> {
        self.tx.try_send(frame).map_err(|_| QueueFull)
    }

    /// Sends a final frame ahead of whatever is queued (which is dropped: a
    /// closing connection's client re-syncs anyway), then closes. Works even
    /// when the queue is full.
    pub fn close_with(&self, frame: &ServerFrame) {
        let Ok(bytes) = encode_to_bytes(frame) else { return };
        if let Some(last) = self.last.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = last.send(bytes);
        }
    }

    /// Encodes and queues one frame.
    pub fn send(&self, frame: &ServerFrame) -> Result<(), QueueFull> {
        match encode_to_bytes(frame) {
            Ok(bytes) => self.push(bytes),
            Err(e) => {
                // Our own frame types always encode; log rather than panic.
                tracing::error!(error = %e, "cannot encode a server frame");
                Ok(())
            }
        }
    }
}

/// Starts the writer task for `wr`, returning its queue. The task ends, after
/// flushing and closing the stream, when every `Outbox` is dropped.
pub fn spawn_writer<W>(
    mut wr: W,
    capacity: usize,
    tracker: &tokio_util::task::TaskTracker,
) -> (Outbox, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, mut rx, last_rx) = Outbox::new(capacity);
    let handle = tracker.spawn(async move {
        let mut batch = BytesMut::new();
        let mut last_rx = Some(last_rx);
        loop {
            let last_word = async {
                match last_rx.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                biased;
                word = last_word => {
                    match word {
                        Some(word) => {
                            let _ = wr.write_all(&word).await;
                            let _ = wr.flush().await;
                            break;
                        }
                        // Every outbox is gone without a last word.
                        None => {
                            last_rx = None;
                            continue;
                        }
                    }
                }
                frame = rx.recv() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
            };
            let result = if rx.is_empty() {
                wr.write_all(&first).await
            } else {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                wr.write_all(&batch).await
            };
            if result.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        // Best effort: sends TLS close_notify and FIN.
        let _ = wr.shutdown().await;
    });
    (outbox, handle)
}
