//! `conclave room …`, `send` and `tail`: rooms and messages from the command line.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use chrono::TimeZone;
use conclave_client::{Chat, HistoryRow, RoomNames, Update};
use conclave_proto::Role;

use crate::account::authenticated;
use crate::cli::{Cli, RoomCommand, SendArgs, TailArgs};
use crate::connect::open_profile;

/// Connects, authenticates, opens the MLS engine and catches up.
pub(crate) async fn open_chat(cli: &Cli) -> anyhow::Result<(Chat, Vec<Update>)> {
    let profile = open_profile(cli)?;
    let (_, conn) = authenticated(cli, &profile).await?;
    let account = conn.whoami().await?;
    let Some(device) = profile.device_key()? else {
        bail!("this profile has no device key; run `conclave register USER` or `conclave login USER`")
    };
    let mut chat = Chat::open(profile.dir(), &device, conn, account)?;
    let updates = chat.catch_up().await.context("cannot catch up with the server")?;
    chat.resend_pending().await.context("cannot send queued messages")?;
    Ok((chat, updates))
}

/// Runs a `room` subcommand.
pub async fn room(cli: &Cli, cmd: &RoomCommand) -> anyhow::Result<()> {
    let (mut chat, _) = open_chat(cli).await?;
    match cmd {
        RoomCommand::Create { room } => {
            let summary = chat.create_room(room).await.context("cannot create the room")?;
            println!("created #{}; you are its owner", summary.name);
        }
        RoomCommand::Add { room, users } => {
            chat.add(room, users).await.with_context(|| format!("cannot add to #{}", bare(room)))?;
            println!("added {} to #{}", users.join(", "), bare(room));
        }
        RoomCommand::Remove { room, users } => {
            chat.remove(room, users).await.with_context(|| format!("cannot remove from #{}", bare(room)))?;
            println!("removed {} from #{}", users.join(", "), bare(room));
        }
        RoomCommand::Leave { room } => {
            chat.leave(room).await.with_context(|| format!("cannot leave #{}", bare(room)))?;
            println!("left #{}", bare(room));
        }
        RoomCommand::List => {
            let rooms = chat.list_rooms().await?;
            if rooms.is_empty() {
                println!("no rooms yet; create one with `conclave room create NAME`");
            }
            for r in rooms {
                println!(
                    "#{:<24} {:<7} {:>4} member{}",
                    r.name,
                    r.role.as_str(),
                    r.members,
                    plural(r.members)
                );
            }
        }
        RoomCommand::Members { room } => {
            let members = chat.members(room).await.with_context(|| format!("cannot list #{}", bare(room)))?;
            let names = RoomNames::of_members(&members);
            for m in &members {
                let name = names.show(&m.username, &m.display_name).to_string();
                println!("{name:<40} {:<7} {}", m.role.as_str(), if m.online { "online" } else { "offline" });
            }
        }
        RoomCommand::Role { room, user, role } => {
            let Some(parsed) = Role::parse(role).filter(|r| *r != Role::Owner) else {
                bail!("the role must be admin or member, not {role:?}")
            };
            chat.set_role(room, user, parsed)
                .await
                .with_context(|| format!("cannot change roles in #{}", bare(room)))?;
            println!("{user} is now {role} of #{}", bare(room));
        }
    }
    Ok(())
}

/// `conclave send ROOM [TEXT…]`, or the text from standard input.
pub async fn send(cli: &Cli, args: &SendArgs) -> anyhow::Result<()> {
    let text = if args.text.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!("no message: give it as arguments, or pipe it in (echo text | conclave send ROOM)");
        }
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf).context("standard input is not UTF-8 text")?;
        buf.trim_end_matches('\n').to_owned()
    } else {
        args.text.join(" ")
    };
    let (mut chat, _) = open_chat(cli).await?;
    chat.send(&args.room, &text).await.with_context(|| format!("cannot send to #{}", bare(&args.room)))?;
    Ok(())
}

/// `conclave tail ROOM [--since SEQ] [--follow] [--json]`.
pub async fn tail(cli: &Cli, args: &TailArgs) -> anyhow::Result<()> {
    let (mut chat, _) = open_chat(cli).await?;
    let room = conclave_proto::validate_room_name(&args.room).map_err(anyhow::Error::msg)?;
    let rooms = chat.list_rooms().await?;
    let member = rooms.iter().any(|r| r.name == room);
    if !member && chat.history(&room, 0, 1)?.is_empty() {
        bail!("not a member of #{room}");
    }
    let names =
        if member { RoomNames::of_members(&chat.members(&room).await?) } else { RoomNames::default() };
    let mut last = args.since.unwrap_or(0);
    let mut out = std::io::stdout().lock();
    loop {
        let rows = chat.history(&room, last, 1000)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            print_row(&mut out, row, args.json, &names)?;
            last = row.seq;
        }
    }
    out.flush()?;
    drop(out);
    if !member {
        bail!("you are no longer a member of #{room}; the lines above are this device's own history");
    }
    if !args.follow {
        return Ok(());
    }
    follow(cli, chat, &room, last, args.json, names).await
}

async fn follow(
    cli: &Cli,
    mut chat: Chat,
    room: &str,
    mut last: u64,
    json: bool,
    mut names: RoomNames,
) -> anyhow::Result<()> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        let mut events = chat.connection().take_events().context("events already taken")?;
        chat.subscribe().await?;
        // Anything that arrived between catching up and subscribing.
        for update in chat.sync_room(room).await? {
            last = emit(room, update, last, json, &names)?;
        }
        while let Some(event) = events.recv().await {
            for update in chat.handle_event(event).await? {
                if matches!(&update, Update::Row(row) if row.room == room && row.kind != "message") {
                    // Someone joined or left: who shares a name may have changed.
                    // (After our own removal there is no list: keep the old names.)
                    if let Ok(list) = chat.members(room).await {
                        names = RoomNames::of_members(&list);
                    }
                }
                last = emit(room, update, last, json, &names)?;
            }
        }
        eprintln!("* connection lost; reconnecting");
        loop {
            tokio::time::sleep(backoff).await;
            match open_chat(cli).await {
                Ok((mut fresh, updates)) => {
                    if let Ok(list) = fresh.members(room).await {
                        names = RoomNames::of_members(&list);
                    }
                    chat = fresh;
                    for update in updates {
                        last = emit(room, update, last, json, &names)?;
                    }
                    backoff = std::time::Duration::from_millis(500);
                    break;
                }
                Err(e) => {
                    eprintln!("* reconnect failed: {e:#}");
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }
}

fn emit(room: &str, update: Update, last: u64, json: bool, names: &RoomNames) -> anyhow::Result<u64> {
    let mut out = std::io::stdout().lock();
    match update {
        Update::Row(row) if row.room == room && row.seq > last => {
            print_row(&mut out, &row, json, names)?;
            out.flush()?;
            return Ok(row.seq);
        }
        Update::Presence { room: r, user, online } if r == room => {
            let state = if online { "online" } else { "offline" };
            if json {
                let v = serde_json::json!({"room": r, "kind": "presence", "sender": user, "text": state});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "* {user} is {state}")?;
            }
        }
        Update::Removed { room: r } if r == room => {
            bail!("you are no longer a member of #{r}");
        }
        _ => {}
    }
    out.flush()?;
    Ok(last)
}

fn print_row(out: &mut impl Write, row: &HistoryRow, json: bool, names: &RoomNames) -> anyhow::Result<()> {
    let time = chrono::Local
        .timestamp_millis_opt(row.time_ms as i64)
        .single()
        .unwrap_or_else(|| chrono::Local.timestamp_millis_opt(0).single().unwrap_or_default());
    if json {
        let v = serde_json::json!({
            "room": row.room,
            "seq": row.seq,
            "time": time.to_rfc3339(),
            "kind": row.kind,
            "sender": row.sender,
            "text": row.text,
        });
        writeln!(out, "{v}")?;
    } else if row.kind == "message" {
        let sender = names.show(&row.sender, &row.sender_display);
        writeln!(out, "{} <{sender}> {}", time.format("%H:%M:%S"), row.text)?;
    } else {
        writeln!(out, "{} * {}", time.format("%H:%M:%S"), row.text)?;
    }
    Ok(())
}

fn bare(room: &str) -> &str {
    room.strip_prefix('#').unwrap_or(room)
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
