//! Adapts the protocol crate's codec to a TLS stream: a frame reader for the
//! read half, and a writer task that drains a bounded queue of encoded frames.
//!
//! Frames are encoded once (`Bytes`) and may be shared between many
//! connections' queues. The writer batches whatever is queued into one write.
//!
//! The queue is bounded twice: in frames and in bytes (`Config::outbound_queue`
//! and `Config::outbound_bytes`). The two kinds of frame meet its bounds
//! differently:
//!
//! - **events** (pushed by rooms) are refused past either bound: the client
//!   is not reading fast enough, so the connection is closed with
//!   `slow_consumer` (the room log is the truth: it re-syncs when it comes
//!   back) instead of letting memory grow;
//! - **answers** to the connection's own requests are always queued, and the
//!   session stops reading requests while the queue holds more than half of
//!   either bound ([`Outbox::room_for_answers`]): backpressure, so a client
//!   that pipelines requests without reading their answers only fills its
//!   own TCP window. The other half stays free for events.

use bytes::{Buf, Bytes, BytesMut};
use conclave_proto::{decode, encode_to_bytes, ClientFrame, DecodeError, ServerFrame};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

/// Bytes handed to the stream in one write at most.
const WRITE_BATCH: usize = 64 * 1024;

/// Bytes a closing connection still reads (and discards) after its last
/// word, so that a client that wrote an oversized frame whole, or requests
/// after the close, gets the error frame instead of a TCP reset: closing a
/// socket with unread data resets it, and the reset makes the peer's kernel
/// drop what it had not yet handed to the client (docs/PROTOCOL.md §2.2).
pub const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// Reads and discards from `rd` until it ends, fails, or `max` bytes were
/// read. The caller bounds it in time.
pub async fn linger<R: AsyncRead + Unpin>(rd: &mut R, max: usize) {
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < max {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

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
        // Allocated as frames arrive, given back while waiting between them
        // (BENCHMARKS.md, memory).
        Self { inner, buf: BytesMut::new(), max_len }
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<ClientFrame>, ReadError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, self.max_len)? {
                return Ok(Some(frame));
            }
            let read = if self.buf.is_empty() {
                std::future::poll_fn(|cx| self.poll_between_frames(cx)).await?
            } else {
                if self.buf.capacity() - self.buf.len() < 512 {
                    self.buf.reserve(1024.max(self.buf.len()));
                }
                self.inner.read_buf(&mut self.buf).await?
            };
            if read == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ReadError::Truncated) };
            }
        }
    }

    /// Reads and discards what the peer still sends, as [`linger`] does,
    /// after giving back the read buffer.
    pub async fn linger(&mut self, max: usize) {
        self.buf = BytesMut::new();
        linger(&mut self.inner, max).await;
    }

    /// Reads between frames, when nothing is buffered: into a chunk on the
    /// stack, so that a connection waiting for its next frame (most of them,
    /// most of the time) holds no read buffer; it is given back on waiting.
    fn poll_between_frames(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); 4096];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(())) => {
                self.buf.extend_from_slice(chunk.filled());
                Poll::Ready(Ok(chunk.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.buf.capacity() > 0 {
                    self.buf = BytesMut::new();
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(any(test, feature = "bench"))]
/// Default byte budget of one queue when none is given (the benchmarks'
/// queues); the server's comes from `Config::outbound_bytes`.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// A figure over every outbound queue of one server: what operators (and
/// the tests) can watch to see that memory stays bounded. Only the peak is
/// kept: it changes rarely, so the queues of many connections do not all
/// write one shared counter on every push.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// The most bytes one connection's queue has held at once.
    peak: AtomicUsize,
}

impl QueueStats {
    /// The most bytes one connection's queue has held at once since the
    /// server started (frames queued and those taken by its writer but not
    /// written yet).
    pub fn peak_queued_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// A connection's outbound queue: frames in order, and the last word, which
/// goes ahead of them. Its storage grows with what is queued and is given
/// back once drained, so an idle connection keeps almost nothing here
/// (`tokio::sync::mpsc` would keep a block of 32 slots, ~1.4 KiB a
/// connection; BENCHMARKS.md, memory).
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer: something was queued, or the last outbox dropped.
    ready: Notify,
    /// Wakes a session waiting for room for answers: the writer wrote, or
    /// the queue closed.
    drained: Notify,
    /// Frames at most (events are refused past it).
    capacity: usize,
    /// Bytes at most (events are refused past it, unless the queue is empty).
    budget: usize,
    stats: Arc<QueueStats>,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Bytes>,
    /// The connection's last word, once given.
    last: Option<Bytes>,
    /// No more frames are taken: the last word was given, or the writer is
    /// gone.
    closed: bool,
    /// Live `Outbox` clones; the writer finishes when none is left.
    senders: usize,
    /// Bytes of the frames queued and of those the writer took but has not
    /// written yet.
    bytes: usize,
    /// The most `bytes` has been (reported to [`QueueStats`] when it grows).
    peak: usize,
    /// A session waits in [`Outbox::room_for_answers`].
    answers_waiting: bool,
}

impl QueueState {
    /// Whether answers may be queued without waiting: at most half of each
    /// bound is used.
    fn has_room_for_answers(&self, queue: &Queue) -> bool {
        self.closed || (self.bytes <= queue.budget / 2 && self.frames.len() <= queue.capacity / 2)
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves the state consistent (every
        // change is one assignment or push), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `added` more bytes in `state`.
    fn grow(&self, state: &mut QueueState, added: usize) {
        state.bytes += added;
        if state.bytes > state.peak {
            state.peak = state.bytes;
            self.stats.peak.fetch_max(state.bytes, Ordering::Relaxed);
        }
    }

    /// Counts `removed` bytes as gone from `state` (written or dropped), and
    /// wakes a session waiting for room.
    fn shrink(&self, state: &mut QueueState, removed: usize) {
        let removed = removed.min(state.bytes);
        state.bytes -= removed;
        if state.answers_waiting && state.has_room_for_answers(self) {
            state.answers_waiting = false;
            self.drained.notify_one();
        }
    }
}

fn total_len(frames: &VecDeque<Bytes>) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// The sending side of a connection's outbound queue.
pub struct Outbox {
    queue: Arc<Queue>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.queue.lock().senders += 1;
        Self { queue: self.queue.clone() }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let last = {
            let mut state = self.queue.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.queue.ready.notify_one();
        }
    }
}

/// The frame could not be queued: the connection is closing, or its queue is
/// full because the client does not read.
#[derive(Debug, thiserror::Error)]
#[error("connection queue is closed or full")]
pub struct QueueFull;

impl Outbox {
    #[cfg(any(test, feature = "bench"))]
    /// A queue of at most `capacity` frames and [`DEFAULT_QUEUE_BYTES`], and
    /// the receiving end a writer drains.
    pub(crate) fn new(capacity: usize) -> (Self, Frames) {
        Self::bounded(capacity, DEFAULT_QUEUE_BYTES, Arc::default())
    }

    /// A queue of at most `capacity` frames and `budget` bytes, counted in
    /// `stats`, and the receiving end a writer drains.
    pub(crate) fn bounded(capacity: usize, budget: usize, stats: Arc<QueueStats>) -> (Self, Frames) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState { senders: 1, ..QueueState::default() }),
            ready: Notify::new(),
            drained: Notify::new(),
            capacity: capacity.max(1),
            budget: budget.max(1),
            stats,
        });
        (Self { queue: queue.clone() }, Frames { queue, spare: VecDeque::new(), taken_bytes: 0 })
    }

    /// Queues an already-encoded event without waiting.
    pub fn push(&self, frame: Bytes) -> Result<(), QueueFull> {
        self.push_all(std::slice::from_ref(&frame))
    }

    /// Queues already-encoded events, in order, without waiting: all of them
    /// under one lock with one wake-up (a room fans out a whole batch of
    /// messages to each subscriber so), or none if they do not all fit in
    /// the queue's frame and byte bounds. Frames that alone are larger than
    /// the byte budget still go into an empty queue.
    pub fn push_all(&self, frames: &[Bytes]) -> Result<(), QueueFull> {
        {
            let mut state = self.queue.lock();
            let added: usize = frames.iter().map(Bytes::len).sum();
            if state.closed
                || state.frames.len() + frames.len() > self.queue.capacity
                || (state.bytes > 0 && state.bytes + added > self.queue.budget)
            {
                return Err(QueueFull);
            }
            state.frames.extend(frames.iter().cloned());
            self.queue.grow(&mut state, added);
        }
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Queues the answer to one of the connection's own requests: never
    /// refused for the queue's bounds (the session waits in
    /// [`Outbox::room_for_answers`] before reading the next request), only
    /// once the connection is closing.
    pub fn answer(&self, frame: &ServerFrame) -> Result<(), QueueFull> {
        let bytes = match encode_to_bytes(frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Our own frame types always encode; log rather than panic.
                tracing::error!(error = %e, "cannot encode a server frame");
                return Ok(());
            }
        };
        {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(QueueFull);
            }
            let added = bytes.len();
            state.frames.push_back(bytes);
            self.queue.grow(&mut state, added);
        }
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Waits until the queue holds at most half of its frame and byte bounds
    /// (or is closing): a session calls it before reading a request, so the
    /// answers it queues stay bounded however many requests a client
    /// pipelines without reading.
    pub async fn room_for_answers(&self) {
        loop {
            {
                let mut state = self.queue.lock();
                if state.has_room_for_answers(&self.queue) {
                    return;
                }
                state.answers_waiting = true;
            }
            // `notify_one` keeps a permit for a waiter that is not polled
            // yet, so a wake-up between the check and here is not lost.
            self.queue.drained.notified().await;
        }
    }

    #[cfg(any(test, feature = "bench"))]
    /// Bytes queued now (and taken by the writer but not written yet).
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Whether a final frame was queued already ([`Outbox::close_with`]).
    pub fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// Sends a final frame ahead of whatever is queued (which is dropped: a
    /// closing connection's client re-syncs anyway), then closes. Works even
    /// when the queue is full.
    pub fn close_with(&self, frame: &ServerFrame) {
        let Ok(bytes) = encode_to_bytes(frame) else { return };
        {
            let mut state = self.queue.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            state.last = Some(bytes);
            let dropped = total_len(&state.frames);
            state.frames = VecDeque::new();
            self.queue.shrink(&mut state, dropped);
            self.queue.drained.notify_one();
        }
        self.queue.ready.notify_one();
    }

    #[cfg(any(test, feature = "bench"))]
    /// Encodes and queues one event.
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

/// What the writer takes off the queue next.
pub enum Next {
    /// Frames, in order (the receiver's own buffer: drain it).
    Frames,
    /// The last word: write it, then close.
    Last(Bytes),
    /// Everything queued was taken and no more will come: every outbox is
    /// gone, or the last word was taken.
    Done,
}

/// The receiving end of a connection's outbound queue. Dropping it closes
/// the queue: later pushes fail, as for a connection whose writer is gone.
pub struct Frames {
    queue: Arc<Queue>,
    /// Frames taken off the queue in one go, in order.
    spare: VecDeque<Bytes>,
    /// Bytes of `spare` still counted in the queue's `bytes`.
    taken_bytes: usize,
}

impl Frames {
    /// Waits for what there is to write; frames land in [`Frames::taken`].
    /// Their bytes count against the queue's budget until the next call (or
    /// [`Frames::written`]) says they are gone: call it once they are written.
    pub async fn next(&mut self) -> Next {
        if !self.spare.is_empty() {
            return Next::Frames;
        }
        loop {
            {
                let mut state = self.queue.lock();
                if self.taken_bytes > 0 {
                    let written = std::mem::take(&mut self.taken_bytes);
                    self.queue.shrink(&mut state, written);
                }
                if let Some(last) = state.last.take() {
                    return Next::Last(last);
                }
                if !state.frames.is_empty() {
                    // Swap whole buffers: the lock is held for a moment only.
                    std::mem::swap(&mut state.frames, &mut self.spare);
                    self.taken_bytes = total_len(&self.spare);
                    return Next::Frames;
                }
                if state.senders == 0 || state.closed {
                    return Next::Done;
                }
                // Give back room a burst needed once it is drained.
                if state.frames.capacity() > SMALL_QUEUE {
                    state.frames = VecDeque::new();
                }
            }
            if self.spare.capacity() > SMALL_QUEUE {
                self.spare = VecDeque::new();
            }
            self.queue.ready.notified().await;
        }
    }

    /// The frames the last [`Next::Frames`] took, oldest first.
    pub fn taken(&mut self) -> &mut VecDeque<Bytes> {
        &mut self.spare
    }

    #[cfg(any(test, feature = "bench"))]
    /// Says that every frame [`Frames::taken`] held was written: their bytes
    /// leave the queue's budget (a session waiting for room may read on).
    pub fn written(&mut self) {
        if self.taken_bytes > 0 {
            let written = std::mem::take(&mut self.taken_bytes);
            let mut state = self.queue.lock();
            self.queue.shrink(&mut state, written);
        }
    }

    #[cfg(any(test, feature = "bench"))]
    /// Takes the front frame of `spare`, out of the budget.
    fn pop(&mut self) -> Option<Bytes> {
        let frame = self.spare.pop_front()?;
        let len = frame.len().min(self.taken_bytes);
        if len > 0 {
            self.taken_bytes -= len;
            let mut state = self.queue.lock();
            self.queue.shrink(&mut state, len);
        }
        Some(frame)
    }

    /// One frame, waiting for it; `None` once every outbox is gone or the
    /// last word was given (which this returns first).
    #[cfg(any(test, feature = "bench"))] // the benches and tests take frames one by one
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pop() {
                return Some(frame);
            }
            match self.next().await {
                Next::Frames => {}
                Next::Last(word) => return Some(word),
                Next::Done => return None,
            }
        }
    }

    /// One frame if one is queued.
    #[cfg(any(test, feature = "bench"))] // the benches and tests take frames one by one
    pub fn try_recv(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.pop() {
            return Some(frame);
        }
        let mut state = self.queue.lock();
        std::mem::swap(&mut state.frames, &mut self.spare);
        self.taken_bytes += total_len(&self.spare);
        drop(state);
        self.pop()
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.closed = true;
        let dropped = total_len(&state.frames) + self.taken_bytes;
        state.frames = VecDeque::new();
        self.queue.shrink(&mut state, dropped);
        drop(state);
        // A session waiting for room reads on (and finds the queue closed).
        self.queue.drained.notify_one();
    }
}

/// Writes every frame of `taken`, as many at a time as fit in
/// [`WRITE_BATCH`] bytes, handed to the stream as one vectored write: TLS
/// copies them straight into its records, with no gathering copy first.
async fn write_frames<W: AsyncWrite + Unpin>(wr: &mut W, taken: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !taken.is_empty() {
        let mut len = 0;
        let slices: Vec<IoSlice<'_>> = taken
            .iter()
            .take_while(|frame| {
                let fits = len < WRITE_BATCH;
                len += frame.len();
                fits
            })
            .map(|frame| IoSlice::new(frame))
            .collect();
        let mut written = wr.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = taken.front_mut() else { break };
            if written < front.len() {
                front.advance(written);
                break;
            }
            written -= front.len();
            taken.pop_front();
        }
    }
    Ok(())
}

/// Queue capacity (in frames) kept between bursts.
const SMALL_QUEUE: usize = 16;

/// Starts the writer task for `wr`, returning its queue. The task ends, after
/// flushing and closing the stream, when every `Outbox` is dropped, or after
/// writing the last word.
pub fn spawn_writer<W>(
    mut wr: W,
    capacity: usize,
    budget: usize,
    stats: Arc<QueueStats>,
    tracker: &tokio_util::task::TaskTracker,
) -> (Outbox, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, mut frames) = Outbox::bounded(capacity, budget, stats);
    let handle = tracker.spawn(async move {
        loop {
            match frames.next().await {
                Next::Frames => {}
                Next::Last(word) => {
                    let _ = wr.write_all(&word).await;
                    let _ = wr.flush().await;
                    break;
                }
                Next::Done => break,
            }
            if write_frames(&mut wr, frames.taken()).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            // The bytes just written leave the budget when `next` takes the
            // lock again (no extra locking per batch).
        }
        // Best effort: sends TLS close_notify and FIN.
        let _ = wr.shutdown().await;
    });
    (outbox, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::{encode_to_bytes, ClientFrame, Request, RequestId};
    use tokio::io::AsyncWriteExt;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n; 3])
    }

    #[tokio::test]
    async fn frames_leave_in_order_and_a_full_queue_refuses() {
        let (outbox, mut frames) = Outbox::new(3);
        for n in 0..3 {
            outbox.push(frame(n)).unwrap();
        }
        assert!(outbox.push(frame(9)).is_err(), "a fourth frame must not fit");
        assert_eq!(frames.recv().await, Some(frame(0)));
        // Taken off the queue in one go: room again for three.
        for n in 3..6 {
            outbox.push(frame(n)).unwrap();
        }
        for n in 1..6 {
            assert_eq!(frames.recv().await, Some(frame(n)));
        }
        assert_eq!(frames.try_recv(), None);
    }

    #[tokio::test]
    async fn the_last_word_goes_first_and_closes() {
        let (outbox, mut frames) = Outbox::new(8);
        outbox.push(frame(1)).unwrap();
        let bye = ServerFrame::Error {
            id: None,
            error: conclave_proto::ErrorBody::new(conclave_proto::ErrorCode::SHUTTING_DOWN, "bye"),
        };
        outbox.close_with(&bye);
        assert!(outbox.push(frame(2)).is_err(), "nothing is taken after the last word");
        assert_eq!(frames.recv().await, Some(encode_to_bytes(&bye).unwrap()));
        assert_eq!(frames.recv().await, None, "what was queued before it is dropped");
    }

    #[tokio::test]
    async fn the_receiver_ends_when_every_outbox_is_gone() {
        let (outbox, mut frames) = Outbox::new(8);
        let other = outbox.clone();
        outbox.push(frame(1)).unwrap();
        drop(outbox);
        let waiter = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = frames.recv().await {
                got.push(f);
            }
            got
        });
        tokio::task::yield_now().await;
        other.push(frame(2)).unwrap();
        drop(other);
        assert_eq!(waiter.await.unwrap(), vec![frame(1), frame(2)]);
    }

    #[tokio::test]
    async fn frames_pushed_together_fit_together_or_not_at_all() {
        let (outbox, mut frames) = Outbox::new(4);
        outbox.push(frame(0)).unwrap();
        assert!(outbox.push_all(&[frame(1), frame(2), frame(3), frame(4)]).is_err());
        outbox.push_all(&[frame(1), frame(2), frame(3)]).unwrap();
        for n in 0..4 {
            assert_eq!(frames.try_recv(), Some(frame(n)));
        }
        assert_eq!(frames.try_recv(), None);
    }

    /// An answer of about `len` bytes (a `Pong` for 0).
    fn answer(len: usize) -> ServerFrame {
        if len == 0 {
            return ServerFrame::Response { id: RequestId(1), body: conclave_proto::Response::Pong };
        }
        let error = conclave_proto::ErrorBody::new(conclave_proto::ErrorCode::INTERNAL, "x".repeat(len));
        ServerFrame::Error { id: Some(RequestId(1)), error }
    }

    #[tokio::test]
    async fn events_past_the_byte_budget_are_refused_but_one_large_one_fits_an_empty_queue() {
        let stats = Arc::new(QueueStats::default());
        let (outbox, mut frames) = Outbox::bounded(100, 1_000, stats.clone());
        let big = Bytes::from(vec![1; 1_500]);
        outbox.push(big.clone()).unwrap();
        assert!(outbox.push(frame(2)).is_err(), "nothing fits behind a frame over the budget");
        assert_eq!(frames.recv().await, Some(big));
        assert_eq!(outbox.queued_bytes(), 0);
        outbox.push(Bytes::from(vec![3; 600])).unwrap();
        assert!(outbox.push(Bytes::from(vec![4; 401])).is_err(), "601 + 401 > 1,000");
        outbox.push(Bytes::from(vec![4; 400])).unwrap();
        assert_eq!(outbox.queued_bytes(), 1_000);
        assert_eq!(stats.peak_queued_bytes(), 1_500);
        // Answers are never refused for the budget...
        outbox.answer(&answer(2_000)).unwrap();
        assert!(outbox.queued_bytes() > 3_000);
        // ...and what the writer takes counts until it says it was written.
        assert!(matches!(frames.next().await, Next::Frames));
        assert!(outbox.queued_bytes() > 3_000);
        frames.taken().clear();
        frames.written();
        assert_eq!(outbox.queued_bytes(), 0);
        drop(frames);
        assert!(outbox.answer(&answer(0)).is_err(), "a closed queue takes no answer");
    }

    #[tokio::test]
    async fn answers_wait_for_room_until_the_writer_drains_half() {
        let (outbox, mut frames) = Outbox::bounded(1_000, 4_000, Arc::default());
        outbox.room_for_answers().await;
        outbox.answer(&answer(3_000)).unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room_for_answers().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "3,000 of 4,000 bytes queued: over half, the reader waits");
        assert!(matches!(frames.next().await, Next::Frames));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "taken but not written yet still counts");
        frames.written();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();

        // Too many frames, however small, make it wait too; closing wakes it.
        for _ in 0..501 {
            outbox.answer(&answer(0)).unwrap();
        }
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room_for_answers().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "501 of 1,000 frames queued");
        drop(frames);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_frames() {
        let (outbox, frames) = Outbox::new(8);
        drop(frames);
        assert!(outbox.push(frame(1)).is_err());
    }

    #[tokio::test]
    async fn the_writer_writes_everything_queued_then_closes() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let tracker = tokio_util::task::TaskTracker::new();
        let (outbox, writer) = spawn_writer(server, 10_000, usize::MAX, Arc::default(), &tracker);
        let mut expected = Vec::new();
        for n in 0..5_000u32 {
            let bytes = Bytes::from(n.to_le_bytes().repeat(5));
            expected.extend_from_slice(&bytes);
            outbox.push(bytes).unwrap();
            if n % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(outbox);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, expected);
    }

    /// A stream that takes at most a few bytes per write, across slices.
    struct Ragged(Vec<u8>);

    impl AsyncWrite for Ragged {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = 7 + self.0.len() % 11;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                self.0.extend_from_slice(&buf[..take]);
                (room, n) = (room - take, n + take);
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_a_few_bytes_at_a_time_arrive_whole_and_in_order() {
        let frames: Vec<Bytes> =
            (0..300u32).map(|n| Bytes::from(n.to_le_bytes().repeat(1 + n as usize % 9))).collect();
        let mut queue: VecDeque<Bytes> = frames.iter().cloned().collect();
        let mut out = Ragged(Vec::new());
        write_frames(&mut out, &mut queue).await.unwrap();
        assert!(queue.is_empty());
        assert_eq!(out.0, frames.concat());
    }

    fn request(id: u64) -> Vec<u8> {
        encode_to_bytes(&ClientFrame::Request { id: RequestId(id), body: Request::Ping }).unwrap().to_vec()
    }

    #[tokio::test]
    async fn the_reader_takes_frames_in_any_pieces_and_keeps_no_buffer_while_waiting() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, 1 << 20);
        // Two frames in one write, then one split in three.
        let mut both = request(1);
        both.extend(request(2));
        client.write_all(&both).await.unwrap();
        let third = request(3);
        for frame_id in 1..=2 {
            let Some(ClientFrame::Request { id, .. }) = reader.next().await.unwrap() else { panic!() };
            assert_eq!(id, RequestId(frame_id));
        }
        let (a, rest) = third.split_at(1);
        let (b, c) = rest.split_at(rest.len() / 2);
        let feed = async {
            for piece in [a, b, c] {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        };
        let (next, client) = tokio::join!(reader.next(), feed);
        let Some(ClientFrame::Request { id, .. }) = next.unwrap() else { panic!() };
        assert_eq!(id, RequestId(3));

        // Waiting for the next frame: no buffer held.
        let waiting = futures::poll!(Box::pin(reader.next()));
        assert!(waiting.is_pending());
        assert_eq!(reader.buf.capacity(), 0);

        // A clean close between frames, then a close mid-frame.
        drop(client);
        assert!(reader.next().await.unwrap().is_none());
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1 << 20);
        client.write_all(&request(4)[..2]).await.unwrap();
        drop(client);
        assert!(matches!(reader.next().await, Err(ReadError::Truncated)));
    }

    #[tokio::test]
    async fn the_reader_takes_a_frame_larger_than_its_chunk() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, 1 << 20);
        let big = ClientFrame::Request {
            id: RequestId(7),
            body: Request::Send { room: "r".into(), client_msg_id: 1, ciphertext: vec![5; 100_000] },
        };
        let bytes = encode_to_bytes(&big).unwrap();
        let write = async move { client.write_all(&bytes).await.unwrap() };
        let (next, ()) = tokio::join!(reader.next(), write);
        let Some(ClientFrame::Request { body: Request::Send { ciphertext, .. }, .. }) = next.unwrap() else {
            panic!()
        };
        assert_eq!(ciphertext, vec![5; 100_000]);
    }
}
