//! The staying-connected session against a real server on a loopback port
//! (real TLS, real SQLite files in temp dirs, real MLS): the server is
//! stopped and started again on the same port and data directory, and the
//! session reconnects, catches up and sends the line queued meanwhile.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conclave_client::live::{Command, Dialer, LiveEvent, Options, Session};
use conclave_client::{connect_tls, Chat, HistoryKind, Profile, ServerAddr};
use conclave_proto::{Password, Seq};
use conclave_server::{Config, Server};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// How long any one wait may take before the test fails (slow CI machines).
const PATIENCE: Duration = Duration::from_secs(60);

/// A server on `listen` with its data in `data`.
struct Running {
    socket: SocketAddr,
    fingerprint: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start(data: &Path, listen: SocketAddr) -> Running {
    let mut config = Config::new(data);
    config.listen = vec![listen];
    config.argon2_threads = 1;
    let server = Server::bind(config).await.unwrap();
    let socket = server.local_addrs()[0];
    let fingerprint = server.fingerprint().to_owned();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    Running { socket, fingerprint, shutdown, handle }
}

impl Running {
    fn addr(&self) -> ServerAddr {
        ServerAddr::parse(&self.socket.to_string()).unwrap()
    }

    fn dialer(&self, profile: &Path) -> Dialer {
        Dialer::new(profile, self.addr(), self.fingerprint.clone())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

/// Registers `name` with a fresh profile in `dir/name`; returns the profile.
async fn register(s: &Running, dir: &Path, name: &str) -> PathBuf {
    let profile_dir = dir.join(name);
    let profile = Profile::open(&profile_dir).unwrap();
    let device = profile.device_key_or_create().unwrap();
    let conn = connect_tls(&s.addr(), Some(&s.fingerprint)).await.unwrap().hello().await.unwrap();
    let info =
        conn.register(&device, name, Password::new("correct horse battery"), None, None).await.unwrap();
    let mut chat = Chat::open(profile.dir(), &device, conn, info).unwrap();
    chat.catch_up().await.unwrap();
    profile_dir
}

/// A connected, caught-up `Chat` for the profile.
async fn chat(s: &Running, profile: &Path) -> Chat {
    let mut chat = s.dialer(profile).dial().await.unwrap();
    chat.catch_up().await.unwrap();
    chat
}

/// The next event that `pick` accepts; the ones before it are passed over.
async fn until<T>(
    events: &mut UnboundedReceiver<LiveEvent>,
    what: &str,
    pick: impl Fn(&LiveEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let event = events.recv().await.unwrap_or_else(|| panic!("the session ended before {what}"));
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The texts of `room`'s messages in `chat`'s local history, in log order.
fn messages(chat: &Chat, room: &str) -> Vec<String> {
    chat.history(room, Seq::ZERO, 10_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == HistoryKind::Message)
        .map(|r| r.text)
        .collect()
}

/// Alice and bob registered in `dir`, both in #lab (alice owns it), and a
/// session for alice, not started yet.
async fn alice_and_bob_in_lab(
    s: &Running,
    dir: &Path,
) -> (PathBuf, PathBuf, Session, UnboundedReceiver<LiveEvent>) {
    let alice = register(s, dir, "alice").await;
    let bob = register(s, dir, "bob").await;
    let mut a = chat(s, &alice).await;
    a.create_room("lab").await.unwrap();
    a.add("lab", &["bob".to_owned()]).await.unwrap();
    drop(a);
    let (session, events) =
        Session::new(s.dialer(&alice), s.dialer(&alice).dial().await.unwrap(), Options::default());
    (alice, bob, session, events)
}

#[tokio::test]
async fn reconnects_catches_up_and_sends_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let (_alice, bob, session, mut events) = alice_and_bob_in_lab(&s, dir.path()).await;
    let handle = session.spawn().unwrap();
    until(&mut events, "catching up", |e| matches!(e, LiveEvent::CatchingUp(_)).then_some(())).await;
    let rooms = until(&mut events, "the room list", |e| match e {
        LiveEvent::Rooms { rooms, .. } => Some(rooms.iter().map(|r| r.name.clone()).collect::<Vec<_>>()),
        _ => None,
    })
    .await;
    assert_eq!(rooms, ["lab"]);
    until(&mut events, "connected", |e| matches!(e, LiveEvent::Connected(_)).then_some(())).await;

    // The server goes away: the session says so, and a line sent now waits
    // in the on-disk queue.
    let socket = s.socket;
    s.stop().await;
    until(&mut events, "the loss", |e| matches!(e, LiveEvent::Disconnected { .. }).then_some(())).await;
    assert!(handle.send(Command::Send { local_id: 7, room: "lab".into(), text: "typed while away".into() }));
    until(&mut events, "the line queued", |e| matches!(e, LiveEvent::Queued { local_id: 7 }).then_some(()))
        .await;

    // Back on the same port and data: bob says something, the session
    // reconnects, catches up (bob's line) and sends the queued one.
    let s = start(&data, socket).await;
    chat(&s, &bob).await.send("lab", "bob said this meanwhile").await.unwrap();
    let mut seen = Vec::new();
    let mut sent = false;
    let wait = async {
        let has = |seen: &[String], text: &str| seen.iter().any(|t| t == text);
        while !(sent && has(&seen, "typed while away") && has(&seen, "bob said this meanwhile")) {
            match events.recv().await.expect("the session ended") {
                LiveEvent::Rows { room, rows, .. } if room == "lab" => {
                    seen.extend(rows.into_iter().filter(|r| r.kind == HistoryKind::Message).map(|r| r.text));
                }
                LiveEvent::Sent { local_id: 7 } => sent = true,
                LiveEvent::SendFailed { error, .. } => panic!("refused: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.expect("timed out waiting for the reconnect");
    assert!(handle.shutdown(PATIENCE).await, "the session stops");
    // Each line once (the queued one was not sent twice), and the session
    // handed them over in the log's order (which depends on who was first).
    let log = messages(&chat(&s, &bob).await, "lab");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(seen, log, "each row once, in log order");
    s.stop().await;
}

/// Stopping the session while a line is on its way: the line stays in the
/// on-disk queue and the next start sends it, once.
#[tokio::test]
async fn stopping_keeps_an_unsent_line_queued() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"), "127.0.0.1:0".parse().unwrap()).await;
    let (alice, bob, session, mut events) = alice_and_bob_in_lab(&s, dir.path()).await;
    let handle = session.spawn().unwrap();
    until(&mut events, "connected", |e| matches!(e, LiveEvent::Connected(_)).then_some(())).await;
    assert!(handle.send(Command::Send { local_id: 1, room: "lab".into(), text: "last words".into() }));
    assert!(handle.shutdown(PATIENCE).await, "the session stops");

    // Whether it went out before the stop or not, the next start makes sure.
    let mut a = chat(&s, &alice).await;
    a.resend_pending().await.unwrap();
    assert!(a.pending_ids("lab").unwrap().is_empty());
    let b = chat(&s, &bob).await;
    assert_eq!(messages(&b, "lab"), ["last words"]);
    s.stop().await;
}

/// Issue 14 review, live.rs: a reconnect that fails for a reason retrying
/// cannot cure ends the session with one clear event, instead of "reconnect
/// failed" every 30 seconds forever. Here the server comes back on the same
/// port with another certificate (a new data directory): the pin refuses it.
#[tokio::test]
async fn a_changed_certificate_stops_the_session_instead_of_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"), "127.0.0.1:0".parse().unwrap()).await;
    let (_alice, _bob, session, mut events) = alice_and_bob_in_lab(&s, dir.path()).await;
    let handle = session.spawn().unwrap();
    until(&mut events, "connected", |e| matches!(e, LiveEvent::Connected(_)).then_some(())).await;
    let socket = s.socket;
    let pinned = s.fingerprint.clone();
    s.stop().await;
    until(&mut events, "the loss", |e| matches!(e, LiveEvent::Disconnected { .. }).then_some(())).await;

    let other = start(&dir.path().join("other-data"), socket).await;
    assert_ne!(other.fingerprint, pinned, "a new data directory makes a new certificate");
    let error = until(&mut events, "the session to stop", |e| match e {
        LiveEvent::Stopped { error } => Some(error.clone()),
        LiveEvent::Reconnecting { error, .. } if error.contains("certificate") => {
            panic!("retried a changed certificate: {error}")
        }
        _ => None,
    })
    .await;
    assert!(error.contains(&other.fingerprint) && error.contains("forget-server"), "{error}");
    // Nothing follows: the session has ended.
    let rest = tokio::time::timeout(PATIENCE, events.recv()).await.expect("the event stream ends");
    assert!(rest.is_none(), "nothing after Stopped: {rest:?}");
    assert!(handle.shutdown(PATIENCE).await);
    other.stop().await;
}

/// A session started offline (the server down, as `conclave chat` does):
/// what its first connection catches up on is history, not news; only what
/// arrives after that is live.
#[tokio::test]
async fn an_offline_start_catches_up_as_history_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let (alice, bob, session, _events) = alice_and_bob_in_lab(&s, dir.path()).await;
    drop(session);
    chat(&s, &bob).await.send("lab", "said while alice was away").await.unwrap();
    let (socket, fingerprint) = (s.socket, s.fingerprint.clone());
    s.stop().await;

    let profile = Profile::open(&alice).unwrap();
    let device = profile.device_key().unwrap().unwrap();
    let account =
        conclave_proto::AccountInfo { username: "alice".into(), display_name: "alice".into(), device_id: 1 };
    let offline =
        Chat::open(&alice, &device, conclave_client::Connection::never_opened(&fingerprint), account)
            .unwrap();
    let dialer = Dialer::new(&alice, ServerAddr::parse(&socket.to_string()).unwrap(), fingerprint);
    let (session, mut events) = Session::offline(dialer, offline, Options::default(), "server down".into());
    let handle = session.spawn().unwrap();
    until(&mut events, "the offline start", |e| matches!(e, LiveEvent::Disconnected { .. }).then_some(()))
        .await;

    let s = start(&data, socket).await;
    let caught_up = until(&mut events, "bob's line", |e| match e {
        LiveEvent::Rows { rows, live, .. } if rows.iter().any(|r| r.text == "said while alice was away") => {
            Some(*live)
        }
        _ => None,
    })
    .await;
    assert!(!caught_up, "the first catch-up after an offline start is history, not news");
    until(&mut events, "connected", |e| matches!(e, LiveEvent::Connected(_)).then_some(())).await;
    chat(&s, &bob).await.send("lab", "and now live").await.unwrap();
    let live = until(&mut events, "the live line", |e| match e {
        LiveEvent::Rows { rows, live, .. } if rows.iter().any(|r| r.text == "and now live") => Some(*live),
        _ => None,
    })
    .await;
    assert!(live, "what arrives once connected is news");
    assert!(handle.shutdown(PATIENCE).await);
    s.stop().await;
}
