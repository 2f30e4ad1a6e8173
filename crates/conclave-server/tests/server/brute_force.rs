//! Password guessing from many source addresses (issue 6). Fifty loopback
//! addresses (127.0.0.10 … 127.0.0.59; all of 127.0.0.0/8 is loopback on
//! Linux) guess one account's password at once, each fewer times than the
//! per-address allowance, over real TLS to a real server. The per-account
//! throttle must stop the guessing anyway, and nobody else may suffer for it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conclave_client::DeviceKey;
use conclave_proto::{
    auth_message, AccountInfo, ClientFrame, ClientHello, ErrorBody, ErrorCode, Login, Password, Request,
    RequestId, Response, ServerFrame, PROTOCOL_VERSION,
};

use super::{spawn_server, RawTls, TestServer};

/// Source addresses the guesses come from.
const ADDRESSES: u8 = 50;
/// Guesses from each address: fewer than the free failures, so no address
/// alone is ever throttled.
const GUESSES_PER_ADDRESS: usize = 3;
/// Failures allowed per account and per address before backoff.
const FREE: u32 = 5;
const PASSWORD: &str = "correct horse battery";

fn storm_address(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i))
}

/// TLS, `Hello` and a `Login` as a fresh device, from `source`.
async fn login_from(
    s: &TestServer,
    source: IpAddr,
    username: &str,
    password: &str,
) -> Result<AccountInfo, ErrorBody> {
    let device = DeviceKey::generate();
    let mut raw = RawTls::connect_from(s, source).await;
    raw.send(&ClientFrame::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION,
        client: "guesser".into(),
    }))
    .await;
    let Some(ServerFrame::Hello(hello)) = raw.recv().await else { panic!("no Hello from the server") };
    let proof = device.sign(&auth_message(&hello.auth_nonce, &raw.exporter()));
    raw.send(&ClientFrame::Request {
        id: RequestId(1),
        body: Request::Login(Login {
            username: username.into(),
            password: Password::new(password),
            device_key: device.public().to_vec(),
            signature: proof.to_vec(),
        }),
    })
    .await;
    match raw.recv().await {
        Some(ServerFrame::Response { id: RequestId(1), body: Response::Authenticated(info) }) => Ok(info),
        Some(ServerFrame::Error { id: Some(RequestId(1)), error }) => Err(error),
        other => panic!("unexpected answer to a login: {other:?}"),
    }
}

fn assert_throttled(e: &ErrorBody) {
    assert_eq!(e.code, ErrorCode::THROTTLED, "{e:?}");
    let secs = e.retry_after_secs.unwrap_or_else(|| panic!("no retry-after: {e:?}"));
    assert!(secs >= 1, "{e:?}");
    assert_eq!(e.message, format!("too many attempts, retry in {secs} s"));
}

#[tokio::test]
async fn guesses_from_many_addresses_are_throttled_per_account_while_others_are_served() {
    // A long first wait, so that no wait can end while the test runs: every
    // count below is then exact, whatever the machine's speed.
    let s = spawn_server(|c| {
        c.free_login_failures = FREE;
        c.login_backoff = Duration::from_secs(600);
    })
    .await;
    let owner = s.register("dave").await;
    s.register("erin").await;
    let frank = s.register("frank").await;
    let bystander = s.connect().await;
    bystander.authenticate(&frank).await.unwrap();
    assert!((GUESSES_PER_ADDRESS as u32) < FREE);

    // Every address guesses at once (its own guesses one after another).
    let done = AtomicBool::new(false);
    let storm = async {
        let answers = futures::future::join_all((0..ADDRESSES).map(|i| {
            let s = &s;
            async move {
                let mut answers = Vec::new();
                for g in 0..GUESSES_PER_ADDRESS {
                    answers.push(login_from(s, storm_address(i), "dave", &format!("guess {i}-{g}")).await);
                }
                answers
            }
        }))
        .await;
        done.store(true, Ordering::SeqCst);
        answers
    };
    // Meanwhile another account logs in, and a connected client is served.
    let meanwhile = async {
        let info = login_from(&s, "127.0.0.200".parse().unwrap(), "erin", PASSWORD).await.unwrap();
        assert_eq!(info.username, "erin");
        let mut answered = 0;
        while !done.load(Ordering::SeqCst) || answered == 0 {
            assert_eq!(bystander.request(Request::Ping).await.unwrap(), Response::Pong);
            assert_eq!(bystander.whoami().await.unwrap().username, "frank");
            answered += 1;
        }
        answered
    };
    let (answers, answered) = tokio::join!(storm, meanwhile);

    let answers: Vec<Result<AccountInfo, ErrorBody>> = answers.into_iter().flatten().collect();
    let total = answers.len();
    let mut guessed = 0;
    for answer in &answers {
        match answer {
            Ok(info) => panic!("a guess logged in: {info:?}"),
            Err(e) if e.code == ErrorCode::INVALID_CREDENTIALS => guessed += 1,
            Err(e) => assert_throttled(e),
        }
    }
    println!(
        "{total} guesses from {ADDRESSES} addresses: {guessed} checked, {} throttled; \
         the bystander was answered {answered} times meanwhile",
        total - guessed
    );
    // Only the free failures were ever checked against the password: the
    // guesses that arrived together did not all slip past the throttle.
    assert_eq!(guessed, FREE as usize, "guesses checked against the password");

    // No address was throttled by its own record: one of the guessing
    // addresses still logs in to another account.
    let info = login_from(&s, storm_address(0), "erin", PASSWORD).await.unwrap();
    assert_eq!(info.username, "erin");

    // The owner: the right password is refused too while the account is
    // throttled (the throttle is checked before any hashing, so that a
    // throttled guess costs the server nothing and reveals nothing)…
    let e = login_from(&s, "127.0.0.250".parse().unwrap(), "dave", PASSWORD).await.unwrap_err();
    assert_throttled(&e);
    // …but the owner's enrolled devices sign in with their keys, which the
    // password throttle does not touch.
    let conn = s.connect().await;
    assert_eq!(conn.authenticate(&owner).await.unwrap().username, "dave");
    s.stop().await;
}

#[tokio::test]
async fn the_owner_logs_in_once_the_wait_is_over() {
    let s = spawn_server(|c| {
        c.free_login_failures = FREE;
        c.login_backoff = Duration::from_secs(1);
    })
    .await;
    s.register("dave").await;
    let storm = futures::future::join_all(
        (0..ADDRESSES).map(|i| login_from(&s, storm_address(i), "dave", "a wrong guess")),
    )
    .await;
    assert!(storm.iter().all(|a| a.is_err()));
    assert!(storm.iter().any(|a| a.as_ref().is_err_and(|e| e.code == ErrorCode::THROTTLED)));

    // The owner waits as told and gets in; no attacker is guessing any more.
    let mut tries = 0;
    let info = loop {
        tries += 1;
        match login_from(&s, "127.0.0.250".parse().unwrap(), "dave", PASSWORD).await {
            Ok(info) => break info,
            Err(e) => {
                assert_throttled(&e);
                assert!(tries < 20, "still throttled after {tries} waits");
                tokio::time::sleep(Duration::from_secs(e.retry_after_secs.unwrap().into())).await;
            }
        }
    };
    assert_eq!(info.username, "dave");
    // A successful login clears the account's record: one more wrong guess
    // is checked (and fails) instead of being throttled.
    let e = login_from(&s, "127.0.0.251".parse().unwrap(), "dave", "one more guess").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID_CREDENTIALS);
    s.stop().await;
}
