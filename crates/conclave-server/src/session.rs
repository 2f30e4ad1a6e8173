//! One client connection, from TLS accept to close.
//!
//! A session is a state machine, consumed by value on each frame:
//!
//! ```text
//! AwaitingHello --Hello--> AwaitingAuth --Register|Login|Authenticate--> Ready
//! ```
//!
//! The whole climb to `Ready` (TLS handshake included) must finish before the
//! handshake deadline or the connection is closed. Until `Ready` the
//! connection also counts against its address's cap of unauthenticated
//! connections, and may be closed to make room for a newer one
//! ([`crate::limits::PerAddress`]). A request not allowed in the current
//! state is answered with `unexpected_frame`; a frame that does not decode or
//! is too large is answered with an error, then the connection is closed.
//! All requests pass through [`Session::dispatch`], the one request table,
//! which checks each one's precondition once.
//!
//! Every close the server decides on goes out as an error frame first (its
//! last word), is logged once, and is followed by a short linger that reads
//! what the client still sends, so that the client sees the frame rather
//! than a reset. Before reading each request the session waits until the
//! connection's queued answers are under half its outbound bounds
//! ([`Outbox::room_for_answers`]): a client that pipelines requests without
//! reading stops being read.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use conclave_proto::{
    ClientFrame, DecodeError, ErrorBody, ErrorCode, Request, RequestId, Response, ServerFrame, ServerHello,
    EXPORTER_LABEL, EXPORTER_LEN, NONCE_LEN, PROTOCOL_VERSION,
};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::conn::{spawn_writer, FrameReader, Outbox, ReadError};
use crate::handlers;
use crate::hub::{ConnId, SessionHandle};
use crate::limits::Waiting;
use crate::repeated::{self, Warning};
use crate::rooms::RoomCmd;
use crate::store::DeviceAccount;
use crate::Shared;

/// Where a session stands.
enum State {
    /// Nothing received yet.
    AwaitingHello,
    /// `Hello` exchanged; waiting for the device to prove itself.
    AwaitingAuth,
    /// Authenticated as this account and device.
    Ready(DeviceAccount),
}

/// What the connection loop should do after a frame.
enum Flow {
    Continue(State),
    Close(State),
}

/// What a handler needs to know about the connection it serves.
pub struct ConnInfo {
    /// The connection's id, in every log line about it.
    pub conn: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The nonce sent in our `Hello`.
    pub nonce: [u8; NONCE_LEN],
    /// The TLS exporter value of this connection.
    pub exporter: [u8; EXPORTER_LEN],
}

struct Session {
    shared: Arc<Shared>,
    info: ConnInfo,
    outbox: Outbox,
    conn: ConnId,
    /// Cancelled by a room whose events this session cannot keep up with,
    /// and by the server's shutdown (a child of its token).
    kick: CancellationToken,
    /// Set once the session asked for live events.
    subscribed: Option<DeviceAccount>,
    /// Requests per second on this connection.
    requests: crate::limits::RateLimit,
    /// Sends of this connection accepted but not yet answered.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Counts this connection against its address's unauthenticated cap,
    /// until it authenticates.
    waiting: Option<Waiting>,
    /// The session gave its last word (an error frame) and is closing.
    closing: bool,
}

/// How long a closing connection reads what its client still sends
/// (at most [`crate::conn::LINGER_BYTES`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends one connection may have in flight: past this, the session stops
/// reading until the room has stored some (TCP pushes back on the client).
pub const MAX_SENDS_IN_FLIGHT: usize = 1024;

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Serves one accepted TCP connection until it closes. `waiting` counts it
/// as unauthenticated until it authenticates.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    conn: ConnId,
    peer: SocketAddr,
    waiting: Waiting,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    // Boxed: a connection in mid-handshake is large and short-lived; the
    // future an idle connection keeps for its whole life does not make room
    // for it (BENCHMARKS.md, memory).
    let handshake = Box::pin(handshake(&shared, tcp, conn, peer, deadline, &waiting));
    let Some((rd, wr, info)) = handshake.await else { return };
    run(shared, rd, wr, info, Some(waiting), deadline, shutdown).await;
}

/// The TLS handshake, bounded by `deadline`: the stream's two halves, and
/// what the session needs to know of it.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    conn: ConnId,
    peer: SocketAddr,
    deadline: Instant,
    waiting: &Waiting,
) -> Option<(ReadHalf<TlsStream>, WriteHalf<TlsStream>, ConnInfo)> {
    let accept = async {
        // A client that has sent its first bytes is no longer the first to
        // make room for a newer connection (`limits::PerAddress`). A peer
        // that closed has not spoken.
        if !crate::server::has_spoken(&tcp) {
            waiting.silent();
            let mut first = [0u8; 1];
            if !matches!(tcp.peek(&mut first).await, Ok(n) if n > 0) {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        waiting.spoke();
        shared.acceptor.accept(tcp).await
    };
    let accept = tokio::select! {
        accepted = timeout_at(deadline, accept) => accepted,
        _ = waiting.evicted.cancelled() => {
            // No TLS yet, so no frame can tell it; counted in the log.
            repeated::note(&shared.warnings, Warning::Evicted, peer,
                "closed a connection still in its TLS handshake to make room for a newer one from its address");
            return None;
        }
    };
    let tls = match accept {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            repeated::note(
                &shared.warnings,
                Warning::TlsHandshake,
                peer,
                &format!("TLS handshake failed: {e}"),
            );
            return None;
        }
        Err(_) => {
            repeated::note(
                &shared.warnings,
                Warning::TlsHandshake,
                peer,
                "TLS handshake did not finish in time",
            );
            return None;
        }
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    if let Err(e) = tls.get_ref().1.export_keying_material(&mut exporter, EXPORTER_LABEL, None) {
        tracing::error!(error = %e, "TLS exporter failed");
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let (rd, wr) = tokio::io::split(tls);
    Some((rd, wr, ConnInfo { conn, peer, nonce, exporter }))
}

/// Runs the state machine over the two halves of an established stream (TLS,
/// or the fuzzer's in-memory pipe) until it closes. `deadline` bounds the
/// climb to `Ready`.
pub async fn run<R, W>(
    shared: Arc<Shared>,
    rd: R,
    wr: W,
    info: ConnInfo,
    waiting: Option<Waiting>,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let config = &shared.config;
    let (outbox, writer) = spawn_writer(
        wr,
        config.outbound_queue,
        config.outbound_bytes,
        shared.queue_stats.clone(),
        &shared.tracker,
    );
    let mut reader = FrameReader::new(rd, shared.config.max_frame_len);
    let conn = info.conn;
    let mut session = Session {
        shared: shared.clone(),
        info,
        outbox,
        conn,
        kick: shutdown.child_token(),
        subscribed: None,
        requests: crate::limits::RateLimit::new(shared.config.requests_per_second, std::time::Instant::now()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        waiting,
        closing: false,
    };
    let mut state = State::AwaitingHello;
    // Until `Ready`, the climb is bounded by the deadline; boxed so that an
    // authenticated connection, which drops it, keeps no room for a timer.
    let mut climb = Some(Box::pin(tokio::time::sleep_until(deadline)));

    loop {
        // Until `Ready`: the deadline, or a newer connection from the same
        // address taking this one's unauthenticated slot.
        let climbing = async {
            match (climb.as_mut(), &session.waiting) {
                (Some(sleep), Some(waiting)) => tokio::select! {
                    _ = sleep => Climb::Deadline,
                    _ = waiting.evicted.cancelled() => Climb::Evicted,
                },
                (Some(sleep), None) => {
                    sleep.await;
                    Climb::Deadline
                }
                (None, _) => std::future::pending().await,
            }
        };
        let outbox = &session.outbox;
        let next = tokio::select! {
            // The kick token is a child of the shutdown token: one waiter for both.
            _ = session.kick.cancelled() => {
                if shutdown.is_cancelled() {
                    // The server logs its shutdown once; each connection's
                    // close is a detail.
                    tracing::debug!("closing: server shutting down");
                    session.close_with(ErrorBody::new(ErrorCode::SHUTTING_DOWN, "server shutting down; reconnect later"));
                } else if session.outbox.is_closed() {
                    // Whoever kicked it gave its last word (a room that
                    // could not be reloaded, say) and logged why.
                    session.closing = true;
                } else {
                    let (frames, bytes) = (config.outbound_queue, config.outbound_bytes);
                    let message = format!(
                        "this connection fell too far behind: more than {frames} frames or {bytes} bytes of \
                         events were waiting for it (--outbound-queue, --outbound-bytes); reconnect and sync from the log"
                    );
                    repeated::note(&shared.warnings, Warning::SlowConsumer, peer, &message);
                    session.close_with(ErrorBody::new(ErrorCode::SLOW_CONSUMER, message));
                }
                break;
            }
            why = climbing => {
                let error = match why {
                    Climb::Deadline => {
                        let secs = config.handshake_timeout.as_secs();
                        let message = format!(
                            "too slow: Hello and authentication must finish within {secs} s of connecting \
                             (--handshake-timeout)"
                        );
                        repeated::note(&shared.warnings, Warning::HandshakeDeadline, peer, &message);
                        ErrorBody::new(ErrorCode::HANDSHAKE_TIMEOUT, message)
                    }
                    Climb::Evicted => {
                        let max = config.max_unauthenticated_per_address;
                        let message = format!(
                            "closed to make room: {max} connections from {} had not signed in yet, the most \
                             allowed (--max-unauthenticated-per-address), and this was the oldest; reconnect and \
                             sign in promptly", peer.ip()
                        );
                        repeated::note(&shared.warnings, Warning::Evicted, peer, &message);
                        ErrorBody::new(ErrorCode::TOO_MANY_CONNECTIONS, message)
                    }
                };
                session.close_with(error);
                break;
            }
            // Backpressure: no new request while its answers would pile up.
            next = async { outbox.room_for_answers().await; reader.next().await } => next,
        };
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(ReadError::Decode(DecodeError::TooLarge { len, max })) => {
                session.close_for_protocol(ErrorBody::new(
                    ErrorCode::FRAME_TOO_LARGE,
                    format!(
                        "frame of {len} bytes exceeds this server's limit of {max} bytes (--max-frame-bytes)"
                    ),
                ));
                break;
            }
            Err(ReadError::Decode(e)) => {
                session
                    .close_for_protocol(ErrorBody::new(ErrorCode::MALFORMED_FRAME, format!("{e}; closing")));
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "read ended");
                break;
            }
        };
        // Boxed: the handling of a request (MLS checks, store calls) needs a
        // large future; boxed, an idle connection does not keep room for it.
        let handling = Box::pin(session.handle(state, frame));
        match handling.await {
            Flow::Continue(next) => {
                if matches!(next, State::Ready(_)) {
                    climb = None;
                }
                state = next;
            }
            Flow::Close(last) => {
                state = last;
                break;
            }
        }
    }
    if let State::Ready(account) = &state {
        tracing::info!(user = %account.username, device = account.device.0, "session ended");
    }
    let unsubscribe = Box::pin(session.unsubscribe());
    unsubscribe.await;
    let closing = session.closing;
    drop(session);
    // Let the writer flush what is queued (the error frame, say), bounded.
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), writer).await.is_err() {
        // A peer that does not read must not keep its socket past its permit.
        abort.abort();
        return;
    }
    if closing {
        // The client may still be writing (an oversized frame, requests
        // after the close): read it briefly, so that the close is not a
        // reset that would destroy the error frame on its way.
        let linger = Box::pin(reader.linger(crate::conn::LINGER_BYTES));
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

/// Why the climb to `Ready` ended early.
enum Climb {
    /// The handshake deadline passed.
    Deadline,
    /// A newer connection from the address took this one's place.
    Evicted,
}

impl Session {
    /// The requests of an authenticated session.
    async fn ready(&mut self, a: &DeviceAccount, request: Request) -> Result<Response, ErrorBody> {
        use handlers::{keys, rooms};
        let shared = &self.shared;
        match request {
            Request::Register(_) | Request::Login(_) | Request::Authenticate(_) => {
                Err(ErrorBody::new(ErrorCode::UNEXPECTED_FRAME, "this connection is already authenticated"))
            }
            Request::WhoAmI => Ok(handlers::whoami::handle(a)),
            Request::Ping => Ok(Response::Pong),
            Request::UploadKeyPackages { key_packages, last_resort } => {
                keys::upload(shared, a, key_packages, last_resort).await
            }
            Request::KeyPackageCount => keys::count(shared, a).await,
            Request::PendingWelcomes => keys::welcomes(shared, a).await,
            Request::CreateRoom { name, group_id, group_info } => {
                rooms::create(shared, a, name, group_id, group_info).await
            }
            Request::ListRooms => rooms::summaries(shared, a).await.map(Response::Rooms),
            Request::ClaimKeyPackages { room, users } => rooms::claim(shared, a, &room, users).await,
            Request::Commit { room, commit, welcome, group_info } => {
                rooms::commit(shared, a, &room, commit, welcome, group_info).await
            }
            Request::GetGroupInfo { room } => rooms::group_info(shared, a, &room).await,
            Request::Send { room, client_msg_id, ciphertext } => {
                rooms::start_send(shared, a, &room, client_msg_id, ciphertext).await?.await
            }
            Request::Sync { room, after_seq, limit } => rooms::sync(shared, a, &room, after_seq, limit).await,
            Request::Members { room } => rooms::members(shared, a, &room).await,
            Request::SetRole { room, user, role } => rooms::set_role(shared, a, &room, user, role).await,
            Request::Leave { room } => rooms::leave(shared, a, &room, self.conn).await,
            Request::Subscribe => self.subscribe(a).await,
            Request::SetDisplayName { display_name } => {
                let name = conclave_proto::validate_display_name(&display_name)
                    .map_err(|e| ErrorBody::new(ErrorCode::INVALID_DISPLAY_NAME, e.to_string()))?;
                let store = shared.store.clone();
                let user = a.user;
                let shown = name.as_str().to_owned();
                crate::blocking::run(move || store.set_display_name(user, &name))
                    .await?
                    .map_err(handlers::store_error)?;
                let mut info = handlers::account_info(a);
                info.display_name = shown;
                Ok(Response::WhoAmI(info))
            }
        }
    }

    /// Starts live delivery for every room of the user; the user is online
    /// from now until the session ends.
    async fn subscribe(&mut self, a: &DeviceAccount) -> Result<Response, ErrorBody> {
        if self.subscribed.is_none() {
            let handle = SessionHandle {
                conn: self.conn,
                user: a.user,
                device: a.device,
                outbox: self.outbox.clone(),
                kick: self.kick.clone(),
            };
            let came_online = self.shared.hub.register(handle.clone());
            self.subscribed = Some(a.clone());
            for name in self.room_names(a).await? {
                if let Ok((_, room)) = handlers::rooms::room(&self.shared, &name).await {
                    room.send(RoomCmd::Subscribe(handle.clone())).await?;
                    if came_online {
                        room.send(RoomCmd::Presence { user: a.user, online: true }).await?;
                    }
                }
            }
        }
        handlers::rooms::summaries(&self.shared, a).await.map(Response::Rooms)
    }

    async fn room_names(&self, a: &DeviceAccount) -> Result<Vec<String>, ErrorBody> {
        let store = self.shared.store.clone();
        let user = a.user;
        crate::blocking::run(move || store.rooms_of_user(user)).await?.map_err(handlers::store_error)
    }

    /// Ends live delivery; the user goes offline with their last session.
    async fn unsubscribe(&mut self) {
        let Some(a) = self.subscribed.take() else { return };
        let went_offline = self.shared.hub.unregister(a.user, self.conn);
        let Ok(names) = self.room_names(&a).await else { return };
        for name in names {
            if let Ok((_, room)) = handlers::rooms::room(&self.shared, &name).await {
                let _ = room.send(RoomCmd::Unsubscribe(self.conn)).await;
                if went_offline {
                    let _ = room.send(RoomCmd::Presence { user: a.user, online: false }).await;
                }
            }
        }
    }

    /// `Send`, answered out of line: the message is queued at its room in
    /// arrival order, and a task answers once it is stored, so the next
    /// request is read meanwhile and the room commits many sends at once.
    /// Returns false when the connection should close.
    async fn pipelined_send(
        &mut self,
        a: &DeviceAccount,
        id: RequestId,
        room: String,
        client_msg_id: u64,
        ciphertext: Vec<u8>,
    ) -> bool {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else { return false };
        match handlers::rooms::start_send(&self.shared, a, &room, client_msg_id, ciphertext).await {
            Ok(stored) => {
                let outbox = self.outbox.clone();
                self.shared.tracker.spawn(async move {
                    let frame = match stored.await {
                        Ok(body) => ServerFrame::Response { id, body },
                        Err(error) => ServerFrame::Error { id: Some(id), error },
                    };
                    // Refused only once the connection is closing; the
                    // session's reads wait for room (backpressure).
                    let _ = outbox.answer(&frame);
                    drop(permit);
                });
                true
            }
            Err(e) => self.reply(id, Err(e)),
        }
    }

    /// Logs (once per kind and address a minute) and queues a
    /// connection-level error for a frame that breaks the protocol; the
    /// caller then closes.
    fn close_for_protocol(&mut self, error: ErrorBody) {
        let message = format!("closing: {} ({})", error.message, error.code);
        repeated::note(&self.shared.warnings, Warning::ProtocolError, self.info.peer, &message);
        self.close_with(error);
    }

    /// Queues a connection-level error; the caller then closes.
    fn close_with(&mut self, error: ErrorBody) {
        self.closing = true;
        self.outbox.close_with(&ServerFrame::Error { id: None, error });
    }

    /// Queues an answer; false once the connection is closing.
    fn reply(&self, id: RequestId, result: Result<Response, ErrorBody>) -> bool {
        let frame = match result {
            Ok(body) => ServerFrame::Response { id, body },
            Err(error) => ServerFrame::Error { id: Some(id), error },
        };
        self.outbox.answer(&frame).is_ok()
    }

    async fn handle(&mut self, state: State, frame: ClientFrame) -> Flow {
        match (state, frame) {
            (state @ State::AwaitingHello, ClientFrame::Hello(hello)) => {
                if hello.protocol_version != PROTOCOL_VERSION {
                    self.close_for_protocol(ErrorBody::new(
                        ErrorCode::VERSION_MISMATCH,
                        format!(
                            "protocol version mismatch: the client speaks {}, this server speaks {}; \
                             use a matching conclave",
                            hello.protocol_version, PROTOCOL_VERSION
                        ),
                    ));
                    return Flow::Close(state);
                }
                tracing::debug!(client = %hello.client, "hello");
                let reply = ServerFrame::Hello(ServerHello {
                    protocol_version: PROTOCOL_VERSION,
                    server: format!("conclave {}", env!("CARGO_PKG_VERSION")),
                    auth_nonce: self.info.nonce,
                });
                if self.outbox.answer(&reply).is_err() {
                    return Flow::Close(state);
                }
                Flow::Continue(State::AwaitingAuth)
            }
            (state @ State::AwaitingHello, ClientFrame::Request { .. }) => {
                self.close_for_protocol(ErrorBody::new(ErrorCode::UNEXPECTED_FRAME, "send Hello first"));
                Flow::Close(state)
            }
            (state, ClientFrame::Hello(_)) => {
                self.close_for_protocol(ErrorBody::new(
                    ErrorCode::UNEXPECTED_FRAME,
                    "Hello was already exchanged",
                ));
                Flow::Close(state)
            }
            (state, ClientFrame::Request { id, body }) => {
                if !self.requests.allow(std::time::Instant::now()) {
                    let limit = self.shared.config.requests_per_second;
                    let error = ErrorBody::new(
                        ErrorCode::LIMIT_REACHED,
                        format!("too many requests: at most {limit} a second on one connection; slow down"),
                    );
                    return if self.reply(id, Err(error)) {
                        Flow::Continue(state)
                    } else {
                        Flow::Close(state)
                    };
                }
                let body = match (&state, body) {
                    (State::Ready(a), Request::Send { room, client_msg_id, ciphertext }) => {
                        let ok = self.pipelined_send(a, id, room, client_msg_id, ciphertext).await;
                        return if ok { Flow::Continue(state) } else { Flow::Close(state) };
                    }
                    (_, body) => body,
                };
                let was_ready = matches!(state, State::Ready(_));
                let (next, result) = self.dispatch(state, body).await;
                if let (false, State::Ready(a)) = (was_ready, &next) {
                    // Authenticated: no longer counts as waiting to sign in,
                    // from before the client can see the answer.
                    self.waiting = None;
                    let active = self.shared.active.load(Ordering::Relaxed);
                    tracing::info!(user = %a.username, device = a.device.0, active, "signed in");
                }
                if self.reply(id, result) {
                    Flow::Continue(next)
                } else {
                    Flow::Close(next)
                }
            }
        }
    }

    /// The request table: each request's precondition is checked here, once.
    async fn dispatch(&mut self, state: State, request: Request) -> (State, Result<Response, ErrorBody>) {
        let shared = &self.shared;
        match (state, request) {
            (State::AwaitingAuth, Request::Register(r)) => {
                authed(handlers::register::handle(shared, &self.info, r).await)
            }
            (State::AwaitingAuth, Request::Login(r)) => {
                authed(handlers::login::handle(shared, &self.info, r).await)
            }
            (State::AwaitingAuth, Request::Authenticate(r)) => {
                authed(handlers::authenticate::handle(shared, &self.info, r).await)
            }
            (State::AwaitingAuth, _) => (
                State::AwaitingAuth,
                Err(ErrorBody::new(
                    ErrorCode::UNEXPECTED_FRAME,
                    "not authenticated: send Register, Login or Authenticate first",
                )),
            ),
            (State::Ready(a), request) => {
                let result = self.ready(&a, request).await;
                (State::Ready(a), result)
            }
            (State::AwaitingHello, _) => {
                (State::AwaitingHello, Err(ErrorBody::new(ErrorCode::UNEXPECTED_FRAME, "send Hello first")))
            }
        }
    }
}

/// Moves to `Ready` on success; stays awaiting authentication on failure.
fn authed(result: Result<DeviceAccount, ErrorBody>) -> (State, Result<Response, ErrorBody>) {
    match result {
        Ok(account) => {
            let info = handlers::account_info(&account);
            (State::Ready(account), Ok(Response::Authenticated(info)))
        }
        Err(e) => (State::AwaitingAuth, Err(e)),
    }
}

/// Counts a connection as active for as long as it lives.
pub struct ActiveGuard {
    shared: Arc<Shared>,
}

impl ActiveGuard {
    /// Counts one more active connection and logs the open.
    pub fn new(shared: Arc<Shared>) -> Self {
        let active = shared.active.fetch_add(1, Ordering::Relaxed) + 1;
        // Per connection: debug only, so that connections that never sign
        // in (a flood, a scanner) cost the log nothing at the default level;
        // a session that authenticates is logged at info.
        tracing::debug!(active, "connection opened");
        Self { shared }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let active = self.shared.active.fetch_sub(1, Ordering::Relaxed) - 1;
        tracing::debug!(active, "connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Server};

    /// Most connections, most of the time, sit waiting for their next frame
    /// inside this future: what it holds inline every idle connection pays
    /// for (BENCHMARKS.md, memory). Large, rare states (the TLS handshake,
    /// handling a request, unsubscribing) are boxed; this catches one that
    /// slips back in.
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        let server = Server::bind(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let peer = tcp.local_addr().unwrap();
        let caps = crate::limits::AddressCaps { max: 1, max_waiting: 1, grace: std::time::Duration::ZERO };
        let per_address = Arc::new(crate::limits::PerAddress::default());
        let Ok((_slot, waiting)) = per_address.admit(peer.ip(), caps, std::time::Instant::now(), false)
        else {
            panic!("a fresh table admits one connection")
        };
        let connection =
            serve(server.shared().clone(), tcp, ConnId(0), peer, waiting, CancellationToken::new());
        let size = std::mem::size_of_val(&connection);
        assert!(size <= 1536, "a connection's future takes {size} bytes; box what made it grow");
    }
}
