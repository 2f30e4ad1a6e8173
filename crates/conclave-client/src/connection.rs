//! A connection to a server: TLS with pinning, `Hello`, then requests
//! multiplexed by id.
//!
//! [`connect_tls`] does the TLS handshake only and sends nothing, so the
//! caller can decide whether to trust a new server before any byte of the
//! protocol leaves. [`TlsConnected::hello`] then greets the server and starts
//! a reader task that routes each response to the request that awaits it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use conclave_proto::{
    auth_message, clean_display_name, decode, encode_to_bytes, validate_username, AccountInfo, Authenticate,
    ClientFrame, ClientHello, ErrorBody, Event, Login, Password, Register, Request, RequestId, Response,
    ServerFrame, CLIENT_MAX_FRAME_LEN, EXPORTER_LABEL, EXPORTER_LEN, NONCE_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;

use crate::tls::PinVerifier;
use crate::{ClientError, DeviceKey, ServerAddr};

/// Requests a client may have outstanding before `request` waits.
const OUTBOUND_QUEUE: usize = 256;

/// Bytes read from the socket in one system call at most. rustls asks for
/// 4 KiB at a time; a burst of events (a busy room, a catch-up) arrives
/// much faster than that, so the socket is read through a buffer this big
/// and rustls is served from memory. 64 KiB per connection: a client holds
/// one or a few (the benchmark's idle scenario holds 19,000: up to 1.2 GiB).
pub const SOCKET_READ_BUFFER: usize = 64 * 1024;

/// The client's TLS stream: TLS over a buffered TCP socket.
pub type ClientStream = TlsStream<BufReader<TcpStream>>;

/// A finished TLS handshake, before any protocol byte was sent.
pub struct TlsConnected {
    stream: ClientStream,
    fingerprint: String,
}

/// Connects to `addr` and completes a TLS 1.3 handshake. With `pinned`, any
/// other certificate is refused with [`ClientError::CertificateChanged`];
/// without, any certificate is accepted and its fingerprint is returned for
/// the caller to judge.
pub async fn connect_tls(addr: &ServerAddr, pinned: Option<&str>) -> Result<TlsConnected, ClientError> {
    let address = addr.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinVerifier::new(pinned.map(str::to_owned), provider.clone());
    let offered = verifier.offered();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(addr.host.clone()).map_err(|_| {
        ClientError::BadAddress { address: address.clone(), why: "the host name is not valid".into() }
    })?;

    let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| ClientError::Connect { address: address.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let offered_fp = || offered.lock().ok().and_then(|s| s.clone());
    match connector.connect(server_name, BufReader::with_capacity(SOCKET_READ_BUFFER, tcp)).await {
        Ok(stream) => {
            let fingerprint =
                offered_fp().ok_or_else(|| ClientError::Protocol("no server certificate".into()))?;
            Ok(TlsConnected { stream, fingerprint })
        }
        Err(source) => match (pinned, offered_fp()) {
            (Some(pin), Some(seen)) if pin != seen => {
                Err(ClientError::CertificateChanged { address, pinned: pin.to_owned(), offered: seen })
            }
            _ => Err(ClientError::Tls { address, source: explain_handshake_failure(source) }),
        },
    }
}

/// A handshake that ended because the server closed the connection says
/// only "tls handshake eof"; a server refusing connections for a limit with
/// no room to say so closes them so (docs/PROTOCOL.md §1.4). Say what that
/// likely means.
fn explain_handshake_failure(source: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            std::io::Error::new(
                source.kind(),
                "the server closed the connection during the TLS handshake: it may be refusing connections \
                 for a limit (it is full, or has too many connections from this address), or it is not a \
                 Conclave server; try again in a few seconds",
            )
        }
        _ => source,
    }
}

impl TlsConnected {
    /// `SHA256:<hex>` of the certificate the server presented.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The pinned TLS stream itself, for a caller that speaks the protocol
    /// on its own (the benchmark's lean members).
    pub fn into_stream(self) -> ClientStream {
        self.stream
    }

    /// Exchanges `Hello` and starts the connection's reader and writer tasks.
    pub async fn hello(self) -> Result<Connection, ClientError> {
        let mut exporter = [0u8; EXPORTER_LEN];
        self.stream
            .get_ref()
            .1
            .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .map_err(|e| ClientError::Protocol(format!("TLS exporter: {e}")))?;
        let (mut rd, mut wr) = tokio::io::split(self.stream);
        let hello = ClientFrame::Hello(ClientHello {
            protocol_version: PROTOCOL_VERSION,
            client: format!("conclave {}", env!("CARGO_PKG_VERSION")),
        });
        let bytes = encode_to_bytes(&hello).map_err(|e| ClientError::Protocol(e.to_string()))?;
        wr.write_all(&bytes).await.map_err(closed)?;
        let mut buf = BytesMut::new();
        let nonce = match read_frame(&mut rd, &mut buf).await? {
            Some(ServerFrame::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => h.auth_nonce,
            Some(ServerFrame::Hello(h)) => {
                return Err(ClientError::Protocol(format!(
                    "protocol version mismatch: this client speaks {PROTOCOL_VERSION}, the server speaks {}; \
                     use a matching conclave",
                    h.protocol_version
                )))
            }
            Some(ServerFrame::Error { error, .. }) => return Err(ClientError::Server(error)),
            Some(other) => return Err(ClientError::Protocol(format!("expected Hello, got {other:?}"))),
            None => return Err(ClientError::Closed(None)),
        };

        let pending: Pending = Arc::new(Mutex::new(PendingState::default()));
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        // Unbounded, so that a slow consumer of events never stalls the
        // answers to requests behind them. Front ends must drain it; `Chat`
        // does, one event at a time.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(wr, rx));
        tokio::spawn(read_loop(rd, buf, pending.clone(), events_tx));
        Ok(Connection {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            nonce,
            exporter,
            fingerprint: self.fingerprint,
            events: Mutex::new(Some(events_rx)),
        })
    }
}

#[derive(Default)]
struct PendingState {
    waiting: HashMap<RequestId, oneshot::Sender<Result<Response, ErrorBody>>>,
    /// Set once the connection is gone, with the server's last word if any.
    closed: Option<Option<ErrorBody>>,
}

type Pending = Arc<Mutex<PendingState>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, PendingState> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A greeted connection. Requests may be sent from several tasks at once.
pub struct Connection {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    nonce: [u8; NONCE_LEN],
    exporter: [u8; EXPORTER_LEN],
    fingerprint: String,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl Connection {
    /// A connection that never opened: every request fails at once with
    /// [`ClientError::Closed`], and [`Connection::closed`] says so. For a
    /// front end that starts offline with the profile's engine (its local
    /// history and outgoing queue) and connects later; `fingerprint` is
    /// the certificate pinned for the server.
    pub fn never_opened(fingerprint: &str) -> Connection {
        let (tx, _) = mpsc::channel(1);
        let pending = PendingState { closed: Some(None), ..PendingState::default() };
        Connection {
            tx,
            pending: Arc::new(Mutex::new(pending)),
            next_id: AtomicU64::new(1),
            nonce: [0; NONCE_LEN],
            exporter: [0; EXPORTER_LEN],
            fingerprint: fingerprint.to_owned(),
            events: Mutex::new(None),
        }
    }

    /// The server's pushed events (after `Subscribe`). The stream ends when
    /// the connection closes. Can be taken once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.lock().ok().and_then(|mut e| e.take())
    }

    /// Whether the connection has closed, and the server's last word if any.
    pub fn closed(&self) -> Option<Option<ErrorBody>> {
        lock(&self.pending).closed.clone()
    }

    /// `SHA256:<hex>` of the server's certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&self, body: Request) -> Result<Response, ClientError> {
        self.start_request(body).await?.answer().await
    }

    /// Sends a request and returns without waiting for its answer: requests
    /// started one after another reach the server in that order, so a sender
    /// can keep many in flight (the benchmark's senders do). Await
    /// [`Answer::answer`] for the response.
    pub async fn start_request(&self, body: Request) -> Result<Answer, ClientError> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (done, answer) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(last) = &p.closed {
                return Err(ClientError::Closed(last.clone()));
            }
            p.waiting.insert(id, done);
        }
        let frame = encode_to_bytes(&ClientFrame::Request { id, body })
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if self.tx.send(frame).await.is_err() {
            lock(&self.pending).waiting.remove(&id);
        }
        Ok(Answer { answer, pending: self.pending.clone() })
    }

    fn proof(&self, device: &DeviceKey) -> (Vec<u8>, Vec<u8>) {
        let sig = device.sign(&auth_message(&self.nonce, &self.exporter));
        (device.public().to_vec(), sig.to_vec())
    }

    /// Creates an account with `device` as its first device.
    pub async fn register(
        &self,
        device: &DeviceKey,
        username: &str,
        password: Password,
        display_name: Option<String>,
        token: Option<String>,
    ) -> Result<AccountInfo, ClientError> {
        let (device_key, signature) = self.proof(device);
        let req = Request::Register(Register {
            username: username.to_owned(),
            password,
            display_name,
            token,
            device_key,
            signature,
        });
        authenticated(self.request(req).await?)
    }

    /// Enrols `device` on an existing account with its password.
    pub async fn login(
        &self,
        device: &DeviceKey,
        username: &str,
        password: Password,
    ) -> Result<AccountInfo, ClientError> {
        let (device_key, signature) = self.proof(device);
        let req = Request::Login(Login { username: username.to_owned(), password, device_key, signature });
        authenticated(self.request(req).await?)
    }

    /// Authenticates as an enrolled device.
    pub async fn authenticate(&self, device: &DeviceKey) -> Result<AccountInfo, ClientError> {
        let (device_key, signature) = self.proof(device);
        authenticated(self.request(Request::Authenticate(Authenticate { device_key, signature })).await?)
    }

    /// The account and device this connection is authenticated as.
    pub async fn whoami(&self) -> Result<AccountInfo, ClientError> {
        match self.request(Request::WhoAmI).await? {
            Response::WhoAmI(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }
}

/// The answer to a request sent with [`Connection::start_request`].
pub struct Answer {
    answer: oneshot::Receiver<Result<Response, ErrorBody>>,
    pending: Pending,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer")
    }
}

impl Answer {
    /// Waits for the server's answer.
    pub async fn answer(self) -> Result<Response, ClientError> {
        match self.answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(ClientError::Server(error)),
            Err(_) => Err(ClientError::Closed(lock(&self.pending).closed.clone().flatten())),
        }
    }
}

/// The server's word on who this device is, checked once for every front
/// end: a username that breaks the rules is a protocol error (it would name
/// someone else, or print as terminal control codes), and the display name is
/// cleaned as every other name shown (U+FFFD for what may not be shown; the
/// username when nothing visible is left).
fn authenticated(response: Response) -> Result<AccountInfo, ClientError> {
    let mut info = match response {
        Response::Authenticated(info) => info,
        other => return Err(unexpected(other)),
    };
    match validate_username(&info.username) {
        Ok(name) if name.as_str() == info.username => {}
        _ => {
            return Err(ClientError::Protocol(format!(
                "the server named this account {:?}, which is not a valid lowercase username",
                info.username
            )))
        }
    }
    info.display_name = clean_display_name(&info.display_name);
    if info.display_name.is_empty() {
        info.display_name = info.username.clone();
    }
    Ok(info)
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {response:?}"))
}

fn closed(e: std::io::Error) -> ClientError {
    tracing::debug!(error = %e, "connection closed");
    ClientError::Closed(None)
}

async fn read_frame(
    rd: &mut ReadHalf<ClientStream>,
    buf: &mut BytesMut,
) -> Result<Option<ServerFrame>, ClientError> {
    loop {
        match decode::<ServerFrame>(buf, CLIENT_MAX_FRAME_LEN) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            // A peer that closes without close_notify, or resets: treat as closed.
            Err(e) => return Err(closed(e)),
        }
    }
}

/// Bytes gathered into one write at most.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes queued frames, as many as are waiting in one write (one TLS record
/// and one system call for a burst of pipelined requests).
async fn write_loop(mut wr: WriteHalf<ClientStream>, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: ReadHalf<ClientStream>,
    mut buf: BytesMut,
    pending: Pending,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut last_error = None;
    loop {
        match read_frame(&mut rd, &mut buf).await {
            Ok(Some(ServerFrame::Response { id, body })) => {
                if let Some(done) = lock(&pending).waiting.remove(&id) {
                    let _ = done.send(Ok(body));
                }
            }
            Ok(Some(ServerFrame::Error { id: Some(id), error })) => {
                if let Some(done) = lock(&pending).waiting.remove(&id) {
                    let _ = done.send(Err(error));
                }
            }
            Ok(Some(ServerFrame::Error { id: None, error })) => {
                tracing::debug!(%error, "connection-level error from server");
                last_error = Some(error);
            }
            Ok(Some(ServerFrame::Event(event))) => {
                let _ = events.send(event);
            }
            Ok(Some(ServerFrame::Hello(_))) => {
                tracing::warn!("unexpected second Hello from server");
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut p = lock(&pending);
    p.closed = Some(last_error);
    // Dropping the senders wakes every waiter with "closed".
    p.waiting.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_the_server_closed_says_it_may_be_refusing() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        let said = ClientError::Tls { address: "h:1".into(), source: explain_handshake_failure(eof) };
        let said = said.to_string();
        assert!(said.contains("closed the connection during the TLS handshake"), "{said}");
        assert!(said.contains("refusing connections for a limit"), "{said}");
        // Other failures keep their own words.
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad certificate");
        assert_eq!(explain_handshake_failure(other).to_string(), "bad certificate");
    }

    #[test]
    fn the_servers_word_on_who_we_are_is_checked_and_cleaned() {
        let said = |username: &str, display_name: &str| {
            authenticated(Response::Authenticated(AccountInfo {
                username: username.into(),
                display_name: display_name.into(),
                device_id: 1,
            }))
        };
        let info = said("alice", "Alice\u{202E}\x1b[2J").unwrap();
        assert_eq!(info.display_name, "Alice\u{FFFD}\u{FFFD}[2J", "no reordering, no terminal codes");
        assert_eq!(said("alice", "\u{200B}").unwrap().display_name, "alice", "nothing visible: the username");
        assert_eq!(said("bob", "Bob").unwrap().display_name, "Bob");
        for bad in ["Alice", "al ice", "\x1b[31mroot", ""] {
            let e = said(bad, "x").unwrap_err().to_string();
            assert!(e.contains("not a valid lowercase username"), "{bad:?}: {e}");
        }
    }
}
