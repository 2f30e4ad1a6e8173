//! A bench room: M accounts connected, one room holding all of them as real
//! MLS members. The first few members run the full client (`Chat`: they
//! create the room, add the others, join from their Welcomes, encrypt and
//! decrypt); the rest only upload a KeyPackage so they can be added, then
//! count what the server delivers to them.

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use conclave_client::Chat;
use conclave_proto::{Event, Request, Seq};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::client::connect_all;
use crate::lean::Lean;
use crate::target::{Account, Target};

/// Members added per commit: keeps each commit and Welcome well under the
/// frame limit at 1000 members.
const ADD_BATCH: usize = 100;

/// A room ready for traffic.
pub struct Room {
    /// Its name.
    pub name: String,
    /// Members `0..chats.len()`: full clients.
    pub chats: Vec<Chat>,
    /// The other members: lean clients that only count.
    pub plain: Vec<Lean>,
    /// The full clients' event streams, by member index.
    pub events: Vec<UnboundedReceiver<Event>>,
    /// Every member's username, by member index.
    pub usernames: Vec<String>,
    /// The room's last sequence number after setup.
    pub head_seq: Seq,
}

/// Sets up room `name` with the accounts in `range`; the first `full` of
/// them run the full client, with their MLS state under `dir`.
pub async fn setup(
    target: &Arc<Target>,
    accounts: &Arc<Vec<Account>>,
    range: std::ops::Range<usize>,
    full: usize,
    concurrency: usize,
    dir: &Path,
    name: &str,
) -> Result<Room> {
    ensure!(full >= 1 && full <= range.len(), "a room needs at least one full client");
    let first = range.start;
    let connected =
        connect_all(target, accounts, first..first + full, concurrency, "connecting clients").await?;
    let usernames: Vec<String> = range.clone().map(|i| accounts[i].username.clone()).collect();
    let mut chats = Vec::new();
    let mut events = Vec::new();
    for (j, c) in connected.into_iter().enumerate() {
        let account = &accounts[first + j];
        events.push(c.conn.take_events().context("events already taken")?);
        let dir = dir.join(&account.username);
        std::fs::create_dir_all(&dir)?;
        let mut chat = Chat::open(&dir, &account.device, c.conn, c.account)?;
        chat.ensure_key_packages().await?;
        chats.push(chat);
    }
    let mut plain = connect_lean(target, accounts, first + full..range.end, concurrency, dir).await?;
    let creator = &mut chats[0];
    creator.create_room(name).await.with_context(|| format!("creating room {name}"))?;
    let others = &usernames[1..];
    let bar = crate::progress(others.len() as u64, "adding members");
    for batch in others.chunks(ADD_BATCH) {
        creator.add(name, batch).await.context("adding members")?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    for chat in chats.iter_mut().skip(1) {
        chat.catch_up().await.context("joining from the Welcome")?;
    }
    let mut head_seq = Seq::ZERO;
    for chat in &chats {
        for room in chat.subscribe().await? {
            if room.name == name {
                head_seq = room.head_seq;
            }
        }
    }
    // All at once on the server's side; the answers are read one member
    // after another.
    let mut ids = Vec::with_capacity(plain.len());
    for c in plain.iter_mut() {
        ids.push(c.start(Request::Subscribe).await?);
    }
    for (c, id) in plain.iter_mut().zip(ids) {
        c.answer(id).await?;
    }
    Ok(Room { name: name.to_owned(), chats, plain, events, usernames, head_seq })
}

/// Connects lean members, each with one KeyPackage uploaded; at most
/// `concurrency` at once.
async fn connect_lean(
    target: &Arc<Target>,
    accounts: &Arc<Vec<Account>>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    dir: &Path,
) -> Result<Vec<Lean>> {
    let (target, accounts, dir) = (target.clone(), accounts.clone(), dir.to_owned());
    crate::client::bounded(range, concurrency, "connecting members", move |i| {
        let (target, accounts) = (target.clone(), accounts.clone());
        let dir = dir.join(&accounts[i].username);
        async move {
            let account = &accounts[i];
            std::fs::create_dir_all(&dir)?;
            let mut lean = Lean::connect(&target, account)
                .await
                .with_context(|| format!("connecting {}", account.username))?;
            lean.upload_key_package(account, &dir).await?;
            Ok(lean)
        }
    })
    .await
}
