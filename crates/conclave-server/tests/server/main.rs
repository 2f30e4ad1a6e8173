//! End-to-end tests of the server: a real server on a loopback port with
//! real TLS and a real SQLite file in a temp dir, driven by the client
//! library and by raw sockets where a test needs to misbehave.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use conclave_client::{connect_tls, Chat, ClientError, Connection, DeviceKey, HistoryKind, ServerAddr};
use conclave_proto::{
    decode, encode_to_bytes, ClientFrame, ClientHello, ErrorCode, Password, Seq, ServerFrame,
    PROTOCOL_VERSION,
};
use conclave_server::{Config, RegistrationPolicy, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A running server on 127.0.0.1, port 0, with its data in a temp dir.
struct TestServer {
    addr: ServerAddr,
    socket: SocketAddr,
    fingerprint: String,
    /// Bytes queued for the server's connections.
    queue_stats: Arc<conclave_server::QueueStats>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

mod brute_force;
mod key_packages;
mod limits;
mod rooms;

async fn spawn_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    spawn_server_with(dir, tweak).await
}

/// A server whose data lives in `dir/data`, which the caller keeps (to restart on it).
async fn spawn_server_in(dir: &std::path::Path) -> TestServer {
    let keep = tempfile::tempdir_in(dir).unwrap();
    let mut config = Config::new(dir.join("data"));
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.argon2_threads = 2;
    start(config, keep).await
}

async fn spawn_server_with(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::new(dir.path().join("data"));
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.argon2_threads = 2;
    tweak(&mut config);
    start(config, dir).await
}

async fn start(config: Config, dir: tempfile::TempDir) -> TestServer {
    let server = Server::bind(config).await.unwrap();
    let socket = server.local_addrs()[0];
    let fingerprint = server.fingerprint().to_owned();
    let queue_stats = server.queue_stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    TestServer {
        addr: ServerAddr::parse(&socket.to_string()).unwrap(),
        socket,
        fingerprint,
        queue_stats,
        shutdown,
        handle,
        _dir: dir,
    }
}

impl TestServer {
    async fn connect(&self) -> Connection {
        connect_tls(&self.addr, Some(&self.fingerprint)).await.unwrap().hello().await.unwrap()
    }

    async fn register(&self, name: &str) -> DeviceKey {
        let device = DeviceKey::generate();
        let conn = self.connect().await;
        conn.register(&device, name, Password::new("correct horse battery"), None, None).await.unwrap();
        device
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

/// A registered user with a profile directory and an open, caught-up `Chat`.
struct User {
    name: String,
    device: DeviceKey,
    profile: tempfile::TempDir,
    chat: Chat,
}

async fn user(s: &TestServer, name: &str) -> User {
    let device = DeviceKey::generate();
    let conn = s.connect().await;
    let info =
        conn.register(&device, name, Password::new("correct horse battery"), None, None).await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut chat = Chat::open(profile.path(), &device, conn, info).unwrap();
    chat.catch_up().await.unwrap();
    User { name: name.to_owned(), device, profile, chat }
}

impl User {
    /// A fresh connection and engine, as after a restart of the client.
    async fn reconnect(&mut self, s: &TestServer) {
        let conn = s.connect().await;
        let info = conn.authenticate(&self.device).await.unwrap();
        self.chat = Chat::open(self.profile.path(), &self.device, conn, info).unwrap();
        self.chat.catch_up().await.unwrap();
    }

    /// (kind, sender, text) of the room's local history.
    async fn history(&mut self, room: &str) -> Vec<(HistoryKind, String, String)> {
        self.chat.sync_room(room).await.unwrap();
        self.chat
            .history(room, Seq::ZERO, 10_000)
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.sender, r.text))
            .collect()
    }

    async fn messages(&mut self, room: &str) -> Vec<String> {
        self.history(room)
            .await
            .into_iter()
            .filter(|(k, _, _)| *k == HistoryKind::Message)
            .map(|(_, s, t)| format!("{s}: {t}"))
            .collect()
    }
}

/// Registers each of `names`, in order, each with its own `Chat`.
async fn users<const N: usize>(s: &TestServer, names: [&str; N]) -> [User; N] {
    let mut out = Vec::with_capacity(N);
    for name in names {
        out.push(user(s, name).await);
    }
    match out.try_into() {
        Ok(all) => all,
        Err(_) => unreachable!("one user per name"),
    }
}

/// The usual scene: registers `members`; the first creates `room` and adds
/// the others, who then catch up (so each has joined from its Welcome).
async fn in_room<const N: usize>(s: &TestServer, room: &str, members: [&str; N]) -> [User; N] {
    let mut all = users(s, members).await;
    let (owner, others) = all.split_first_mut().expect("a room needs its creator");
    owner.chat.create_room(room).await.unwrap();
    if !others.is_empty() {
        let names: Vec<String> = others.iter().map(|u| u.name.clone()).collect();
        owner.chat.add(room, &names).await.unwrap();
    }
    for u in others {
        u.chat.catch_up().await.unwrap();
    }
    all
}

fn server_code(e: &ClientError) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

/// What a client refused for a limit gets: an error where the server's
/// `Hello` would be (PROTOCOL.md §1.4).
async fn refused(s: &TestServer) -> ClientError {
    match connect_tls(&s.addr, Some(&s.fingerprint)).await.unwrap().hello().await {
        Ok(_) => panic!("expected a refusal; the connection was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn register_then_authenticate_and_whoami() {
    let s = spawn_server(|_| {}).await;
    let device = DeviceKey::generate();
    let conn = s.connect().await;
    let info = conn
        .register(&device, "Alice", Password::new("correct horse"), Some("Alice A.".into()), None)
        .await
        .unwrap();
    assert_eq!(
        (info.username.as_str(), info.display_name.as_str(), info.device_id),
        ("alice", "Alice A.", 1)
    );

    let again = s.connect().await;
    let info = again.authenticate(&device).await.unwrap();
    assert_eq!(info.username, "alice");
    assert_eq!(again.whoami().await.unwrap(), info);

    // The name is taken, whatever its case.
    let taken = s
        .connect()
        .await
        .register(&DeviceKey::generate(), "ALICE", Password::new("another password"), None, None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&taken), ErrorCode::USERNAME_TAKEN);
    s.stop().await;
}

#[tokio::test]
async fn a_second_device_enrols_by_login() {
    let s = spawn_server(|_| {}).await;
    s.register("bob").await;
    let laptop = DeviceKey::generate();
    let info = s.connect().await.login(&laptop, "bob", Password::new("correct horse battery")).await.unwrap();
    assert_eq!(info.device_id, 2);
    let info = s.connect().await.authenticate(&laptop).await.unwrap();
    assert_eq!((info.username.as_str(), info.device_id), ("bob", 2));
    s.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let s = spawn_server(|_| {}).await;
    s.register("carol").await;
    let wrong = s
        .connect()
        .await
        .login(&DeviceKey::generate(), "carol", Password::new("not her password"))
        .await
        .unwrap_err();
    let unknown = s
        .connect()
        .await
        .login(&DeviceKey::generate(), "nobody", Password::new("not her password"))
        .await
        .unwrap_err();
    let (ClientError::Server(a), ClientError::Server(b)) = (&wrong, &unknown) else {
        panic!("expected server errors: {wrong} / {unknown}");
    };
    assert_eq!(a, b);
    assert_eq!(a.message, "invalid username or password");
    assert_eq!(a.code, ErrorCode::INVALID_CREDENTIALS);
    s.stop().await;
}

#[tokio::test]
async fn the_throttle_engages_after_repeated_failures() {
    let s = spawn_server(|c| c.free_login_failures = 3).await;
    s.register("dave").await;
    let conn = s.connect().await;
    for _ in 0..3 {
        let e = conn.login(&DeviceKey::generate(), "dave", Password::new("guess guess")).await.unwrap_err();
        assert_eq!(server_code(&e), ErrorCode::INVALID_CREDENTIALS);
    }
    // Even the right password is refused while the account is throttled.
    let e =
        conn.login(&DeviceKey::generate(), "dave", Password::new("correct horse battery")).await.unwrap_err();
    let ClientError::Server(body) = &e else { panic!("{e}") };
    assert_eq!(body.code, ErrorCode::THROTTLED);
    assert!(body.message.starts_with("too many attempts, retry in "), "{}", body.message);
    assert!(body.retry_after_secs.unwrap() >= 1);
    // Another account from the same address is throttled too (per address).
    let e = s
        .connect()
        .await
        .login(&DeviceKey::generate(), "erin", Password::new("guess guess"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::THROTTLED);
    s.stop().await;
}

#[tokio::test]
async fn registration_policies() {
    let closed = spawn_server(|c| c.registration = RegistrationPolicy::Closed).await;
    let e = closed
        .connect()
        .await
        .register(&DeviceKey::generate(), "frank", Password::new("correct horse"), None, None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::REGISTRATION_CLOSED);
    closed.stop().await;

    let token = spawn_server(|c| c.registration = RegistrationPolicy::Token).await;
    let e = token
        .connect()
        .await
        .register(&DeviceKey::generate(), "frank", Password::new("correct horse"), None, None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_TOKEN);
    let invite = conclave_server::create_invite(&token._dir.path().join("data")).unwrap();
    let conn = token.connect().await;
    conn.register(
        &DeviceKey::generate(),
        "frank",
        Password::new("correct horse"),
        None,
        Some(invite.clone()),
    )
    .await
    .unwrap();
    let e = token
        .connect()
        .await
        .register(&DeviceKey::generate(), "gina", Password::new("correct horse"), None, Some(invite))
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_TOKEN, "a token works once");
    token.stop().await;
}

#[tokio::test]
async fn bad_names_passwords_and_keys_are_refused() {
    let s = spawn_server(|_| {}).await;
    let conn = s.connect().await;
    let d = DeviceKey::generate();
    let e = conn.register(&d, "no spaces", Password::new("correct horse"), None, None).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_USERNAME);
    let e = conn.register(&d, &"x".repeat(33), Password::new("correct horse"), None, None).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_USERNAME);
    let e = conn.register(&d, "henry", Password::new("short"), None, None).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::WEAK_PASSWORD);
    let e = conn
        .register(&d, "henry", Password::new("correct horse"), Some("\u{7}".into()), None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_DISPLAY_NAME);
    // A device nobody enrolled.
    let e = conn.authenticate(&DeviceKey::generate()).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::UNKNOWN_DEVICE);
    s.stop().await;
}

#[tokio::test]
async fn names_that_hide_or_impersonate_are_refused_at_registration_and_on_change() {
    let s = spawn_server(|_| {}).await;
    let conn = s.connect().await;
    let register = |name: &'static str, display: Option<&'static str>| {
        let conn = &conn;
        async move {
            conn.register(
                &DeviceKey::generate(),
                name,
                Password::new("correct horse"),
                display.map(str::to_owned),
                None,
            )
            .await
            .unwrap_err()
        }
    };
    for bad in [".", "..", "-", ".hidden", "_x"] {
        let e = register(bad, None).await;
        assert_eq!(server_code(&e), ErrorCode::INVALID_USERNAME, "{bad:?}");
        assert!(e.to_string().contains("must start with a letter or a digit"), "{bad:?}: {e}");
    }
    for (bad, code) in [
        ("alice\u{202E}txt.exe", "U+202E"),
        ("\u{2066}alice", "U+2066"),
        ("ali\u{200B}ce", "U+200B"),
        ("ali\u{200D}ce", "U+200D"),
        ("alice\u{2060}", "U+2060"),
        ("\u{FEFF}alice", "U+FEFF"),
        ("two\u{2028}lines", "U+2028"),
        ("two\u{2029}paragraphs", "U+2029"),
        ("soft\u{AD}hyphen", "U+00AD"),
    ] {
        let e = register("henry", Some(bad)).await;
        assert_eq!(server_code(&e), ErrorCode::INVALID_DISPLAY_NAME, "{bad:?}");
        assert!(e.to_string().contains(code), "{bad:?}: {e}");
    }
    for blank in ["\u{301}", "\u{3164}"] {
        let e = register("henry", Some(blank)).await;
        assert_eq!(server_code(&e), ErrorCode::INVALID_DISPLAY_NAME, "{blank:?}");
    }
    // An emoji joined by U+200D is a name, not a trick.
    let info = conn
        .register(
            &DeviceKey::generate(),
            "henry",
            Password::new("correct horse"),
            Some("👩\u{200D}💻".into()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.display_name, "👩\u{200D}💻");

    // Changing the display name goes through the same gate.
    let change =
        |name: &str| conn.request(conclave_proto::Request::SetDisplayName { display_name: name.into() });
    let e = change("henry\u{202E}").await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_DISPLAY_NAME);
    assert!(e.to_string().contains("U+202E") && e.to_string().contains("bidirectional"), "{e}");
    let e = change("\u{200B}").await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_DISPLAY_NAME);
    let Ok(conclave_proto::Response::WhoAmI(info)) = change(" Henry ").await else { panic!("a plain name") };
    assert_eq!(info.display_name, "Henry");
    s.stop().await;
}

/// The first-character rule is for new names: an account named before it
/// (as `.oldtimer` could be) keeps working.
#[tokio::test]
async fn an_account_named_before_the_first_character_rule_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let s = spawn_server_in(dir.path()).await;
    let phone = s.register("oldtimer").await;
    s.stop().await;
    // What a server before the rule accepted: rename the account in its database.
    let db = rusqlite::Connection::open(dir.path().join("data/server.db")).unwrap();
    let renamed =
        db.execute("UPDATE users SET username = '.oldtimer' WHERE username = 'oldtimer'", []).unwrap();
    assert_eq!(renamed, 1);
    drop(db);

    let s = spawn_server_in(dir.path()).await;
    let info = s.connect().await.authenticate(&phone).await.unwrap();
    assert_eq!(info.username, ".oldtimer");
    let laptop = DeviceKey::generate();
    let info =
        s.connect().await.login(&laptop, ".oldtimer", Password::new("correct horse battery")).await.unwrap();
    assert_eq!((info.username.as_str(), info.device_id), (".oldtimer", 2));
    // Nobody can take such a name now.
    let e = s
        .connect()
        .await
        .register(&DeviceKey::generate(), ".newcomer", Password::new("correct horse"), None, None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::INVALID_USERNAME);
    s.stop().await;
}

#[tokio::test]
async fn a_signature_from_another_connection_does_not_verify() {
    let s = spawn_server(|_| {}).await;
    let device = s.register("ivan").await;
    // Sign with the right key but for a different nonce/exporter: forge the
    // request by hand on a raw TLS connection.
    let mut raw = RawTls::connect(&s).await;
    raw.send(&ClientFrame::Hello(ClientHello { protocol_version: PROTOCOL_VERSION, client: "t".into() }))
        .await;
    let ServerFrame::Hello(hello) = raw.recv().await.unwrap() else { panic!() };
    let stale = conclave_proto::auth_message(&hello.auth_nonce, &[0u8; 32]);
    raw.send(&ClientFrame::Request {
        id: conclave_proto::RequestId(1),
        body: conclave_proto::Request::Authenticate(conclave_proto::Authenticate {
            device_key: device.public().to_vec(),
            signature: device.sign(&stale).to_vec(),
        }),
    })
    .await;
    let ServerFrame::Error { id: Some(_), error } = raw.recv().await.unwrap() else { panic!() };
    assert_eq!(error.code, ErrorCode::BAD_SIGNATURE);
    s.stop().await;
}

#[tokio::test]
async fn requests_before_hello_or_authentication_are_refused() {
    let s = spawn_server(|_| {}).await;
    let mut raw = RawTls::connect(&s).await;
    raw.send(&ClientFrame::Hello(ClientHello { protocol_version: PROTOCOL_VERSION, client: "t".into() }))
        .await;
    assert!(matches!(raw.recv().await, Some(ServerFrame::Hello(_))));
    raw.send(&ClientFrame::Request {
        id: conclave_proto::RequestId(5),
        body: conclave_proto::Request::WhoAmI,
    })
    .await;
    let Some(ServerFrame::Error { id, error }) = raw.recv().await else { panic!() };
    assert_eq!(id, Some(conclave_proto::RequestId(5)));
    assert_eq!(error.code, ErrorCode::UNEXPECTED_FRAME);

    let mut raw = RawTls::connect(&s).await;
    raw.send(&ClientFrame::Request { id: conclave_proto::RequestId(1), body: conclave_proto::Request::Ping })
        .await;
    let Some(ServerFrame::Error { id: None, error }) = raw.recv().await else { panic!() };
    assert_eq!(error.code, ErrorCode::UNEXPECTED_FRAME);
    assert!(raw.recv().await.is_none(), "closed after the error");
    s.stop().await;
}

#[tokio::test]
async fn version_mismatch_names_both_versions() {
    let s = spawn_server(|_| {}).await;
    let mut raw = RawTls::connect(&s).await;
    raw.send(&ClientFrame::Hello(ClientHello { protocol_version: 99, client: "future".into() })).await;
    let Some(ServerFrame::Error { id: None, error }) = raw.recv().await else { panic!() };
    assert_eq!(error.code, ErrorCode::VERSION_MISMATCH);
    assert!(
        error.message.contains("99") && error.message.contains(&PROTOCOL_VERSION.to_string()),
        "{}",
        error.message
    );
    assert!(raw.recv().await.is_none());
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_gets_an_error_and_a_close() {
    let s = spawn_server(|c| c.max_frame_len = 4096).await;
    let mut raw = RawTls::connect(&s).await;
    // Announce 1 MiB; the server refuses on the prefix alone.
    raw.stream.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    raw.stream.flush().await.unwrap();
    let Some(ServerFrame::Error { id: None, error }) = raw.recv().await else { panic!() };
    assert_eq!(error.code, ErrorCode::FRAME_TOO_LARGE);
    assert!(error.message.contains("4096"), "{}", error.message);
    assert!(raw.recv().await.is_none(), "closed after the error");

    // Garbage that is not a frame at all.
    let mut raw = RawTls::connect(&s).await;
    raw.stream.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    raw.stream.flush().await.unwrap();
    let Some(ServerFrame::Error { id: None, error }) = raw.recv().await else { panic!() };
    assert_eq!(error.code, ErrorCode::MALFORMED_FRAME);
    assert!(raw.recv().await.is_none());

    // And the server still serves.
    s.register("judy").await;
    s.stop().await;
}

#[tokio::test]
async fn the_handshake_deadline_closes_idle_connections() {
    let s = spawn_server(|c| c.handshake_timeout = Duration::from_millis(500)).await;
    // Idle after TLS: an error frame, then a close.
    let mut raw = RawTls::connect(&s).await;
    let frame = tokio::time::timeout(Duration::from_secs(30), raw.recv()).await.unwrap();
    let Some(ServerFrame::Error { id: None, error }) = frame else { panic!("{frame:?}") };
    assert_eq!(error.code, ErrorCode::HANDSHAKE_TIMEOUT);
    // Idle before TLS: closed without a word.
    let mut tcp = TcpStream::connect(s.socket).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed");
    // Authenticated connections are not subject to it.
    let device = s.register("kim").await;
    let conn = s.connect().await;
    conn.authenticate(&device).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    conn.whoami().await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn plaintext_and_tls12_clients_are_refused_while_others_are_served() {
    let s = spawn_server(|_| {}).await;
    let device = s.register("leo").await;

    // Plaintext: the server expects a TLS ClientHello and gives up.
    let mut tcp = TcpStream::connect(s.socket).await.unwrap();
    tcp.write_all(b"\x00\x00\x00\x05hello plaintext\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf)).await.unwrap();
    assert!(!buf.windows(5).any(|w| w == b"hello"), "no protocol answer in plaintext");

    // A TLS 1.2-only client cannot agree on a version.
    let config = accept_anything(&rustls::version::TLS12);
    let tcp = TcpStream::connect(s.socket).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect_err("a TLS 1.2 handshake must fail");
    assert!(err.to_string().to_lowercase().contains("version") || err.to_string().contains("alert"), "{err}");

    // Meanwhile, a proper client is served.
    s.connect().await.authenticate(&device).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn two_hundred_clients_connect_and_authenticate_at_once() {
    // All 200 are in their handshake at once, from one address: more than
    // the default cap of unauthenticated connections per address.
    let s = spawn_server(|c| c.max_unauthenticated_per_address = 200).await;
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(Arc::new(s.register(&format!("user{i}")).await));
    }
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let addr = s.addr.clone();
            let pin = s.fingerprint.clone();
            let device = devices[i % 4].clone();
            tokio::spawn(async move {
                let conn = connect_tls(&addr, Some(&pin)).await?.hello().await?;
                let info = conn.authenticate(&device).await?;
                assert_eq!(info.username, format!("user{}", i % 4));
                Ok::<_, ClientError>(conn)
            })
        })
        .collect();
    let conns: Vec<Connection> =
        futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    // All 200 are held at once and still answer.
    for conn in &conns {
        conn.whoami().await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn the_connection_cap_refuses_extra_connections() {
    let s = spawn_server(|c| c.max_connections = 2).await;
    let device = s.register("mia").await;
    let a = s.connect().await;
    let b = s.connect().await;
    a.authenticate(&device).await.unwrap();
    b.authenticate(&device).await.unwrap();
    // A third is refused, told why; the two held are unaffected.
    assert_eq!(server_code(&refused(&s).await), ErrorCode::SERVER_FULL);
    a.whoami().await.unwrap();
    drop(b);
    drop(a);
    s.stop().await;
}

#[tokio::test]
async fn accounts_and_certificate_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let boot = |data: std::path::PathBuf| async move {
        let mut config = Config::new(data);
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        Server::bind(config).await.unwrap()
    };
    let first = boot(data.clone()).await;
    let fp = first.fingerprint().to_owned();
    let addr = ServerAddr::parse(&first.local_addrs()[0].to_string()).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(first.run(stop.clone()));
    let device = DeviceKey::generate();
    let conn = connect_tls(&addr, Some(&fp)).await.unwrap().hello().await.unwrap();
    conn.register(&device, "nina", Password::new("correct horse"), None, None).await.unwrap();
    stop.cancel();
    run.await.unwrap();

    let second = boot(data).await;
    assert_eq!(second.fingerprint(), fp, "the certificate is kept");
    let addr = ServerAddr::parse(&second.local_addrs()[0].to_string()).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(second.run(stop.clone()));
    let conn = connect_tls(&addr, Some(&fp)).await.unwrap().hello().await.unwrap();
    assert_eq!(conn.authenticate(&device).await.unwrap().username, "nina");
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test]
async fn a_pinned_client_refuses_a_changed_certificate() {
    let a = spawn_server(|_| {}).await;
    let b = spawn_server(|_| {}).await;
    // Pretend b's address was pinned to a's certificate.
    let err = connect_tls(&b.addr, Some(&a.fingerprint)).await.err().unwrap();
    match err {
        ClientError::CertificateChanged { pinned, offered, .. } => {
            assert_eq!(pinned, a.fingerprint);
            assert_eq!(offered, b.fingerprint);
        }
        other => panic!("expected CertificateChanged, got {other}"),
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn shutdown_tells_connected_clients() {
    let s = spawn_server(|_| {}).await;
    let device = s.register("olga").await;
    let conn = s.connect().await;
    conn.authenticate(&device).await.unwrap();
    s.stop().await;
    let e = conn.whoami().await.unwrap_err();
    assert!(matches!(e, ClientError::Closed(_)), "{e}");
    if let ClientError::Closed(Some(body)) = &e {
        assert_eq!(body.code, ErrorCode::SHUTTING_DOWN);
    }
}

/// A raw TLS connection that can send any bytes.
struct RawTls {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: BytesMut,
}

impl RawTls {
    async fn connect(s: &TestServer) -> Self {
        Self::over(TcpStream::connect(s.socket).await.unwrap()).await
    }

    /// A connection whose socket is bound to `source` first (any address of
    /// 127.0.0.0/8 is loopback on Linux), so the server sees it come from there.
    async fn connect_from(s: &TestServer, source: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Self::over(socket.connect(s.socket).await.unwrap()).await
    }

    async fn over(tcp: TcpStream) -> Self {
        let config = accept_anything(&rustls::version::TLS13);
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        Self { stream, buf: BytesMut::new() }
    }

    /// This connection's TLS exporter value for device authentication.
    fn exporter(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.stream
            .get_ref()
            .1
            .export_keying_material(&mut out, conclave_proto::EXPORTER_LABEL, None)
            .unwrap();
        out
    }

    async fn send(&mut self, frame: &ClientFrame) {
        self.stream.write_all(&encode_to_bytes(frame).unwrap()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next frame, or `None` once the server has closed.
    async fn recv(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(f) = decode(&mut self.buf, 1 << 24).unwrap() {
                return Some(f);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A client config for one TLS version that accepts any certificate.
fn accept_anything(version: &'static rustls::SupportedProtocolVersion) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth()
}

/// Accepts any certificate: only for tests that poke at the server's edges.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
