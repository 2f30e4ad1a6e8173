//! `conclave room …`, `send` and `tail`: rooms and messages from the command line.

use crate::output::say;
use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};
use chrono::TimeZone;
use conclave_client::live::{Dialer, LiveEvent, Options, Session};
use conclave_client::{Chat, ClientError, Connection, HistoryKind, HistoryRow, RoomNames};
use conclave_proto::{AccountInfo, Role, Seq};

use crate::account::authenticated;
use crate::cli::{GlobalOpts, RoomCommand, SendArgs, TailArgs};
use crate::connect::open_profile;

/// How long `tail --follow` waits for its session to stop once it is done.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Connects, authenticates and opens the MLS engine, without catching up;
/// the [`Dialer`] reconnects to the same server with the same certificate.
pub(crate) async fn connect_chat(opts: &GlobalOpts) -> anyhow::Result<(Chat, Dialer)> {
    let profile = open_profile(opts)?;
    let (addr, conn, account) = authenticated(opts, &profile).await?;
    let Some(device) = profile.device_key()? else {
        bail!("this profile has no device key; run `conclave register USER` or `conclave login USER`")
    };
    let dialer = Dialer::new(profile.dir(), addr, conn.fingerprint());
    let chat = Chat::open(profile.dir(), &device, conn, account)?;
    Ok((chat, dialer))
}

/// [`connect_chat`], or, when the server cannot be reached for a passing
/// reason (it is down, the network is), the profile's engine over a
/// connection that never opened, with the reason: the caller starts its
/// session offline (local history, messages queued on disk, reconnecting).
/// Only for a profile that has an account and a pinned certificate for the
/// server: first contact needs the server.
pub(crate) async fn connect_chat_or_offline(
    opts: &GlobalOpts,
) -> anyhow::Result<(Chat, Dialer, Option<String>)> {
    let error = match connect_chat(opts).await {
        Ok((chat, dialer)) => return Ok((chat, dialer, None)),
        Err(e) => e,
    };
    let transient =
        error.chain().any(|c| c.downcast_ref::<ClientError>().is_some_and(ClientError::is_transient));
    if !transient {
        return Err(error);
    }
    let profile = open_profile(opts)?;
    let addr = crate::connect::server_addr(opts, &profile)?;
    let (Some(pin), Some(device), Some(record)) =
        (profile.pin(&addr).map(str::to_owned), profile.device_key()?, profile.state.account.clone())
    else {
        return Err(error);
    };
    let account = AccountInfo {
        username: record.username,
        display_name: record.display_name,
        device_id: record.device_id,
    };
    let chat = Chat::open(profile.dir(), &device, Connection::never_opened(&pin), account)?;
    let dialer = Dialer::new(profile.dir(), addr, pin);
    Ok((chat, dialer, Some(crate::one_line(&error))))
}

/// Connects, authenticates, opens the MLS engine, catches up and sends
/// what was queued.
pub(crate) async fn open_chat(opts: &GlobalOpts) -> anyhow::Result<(Chat, Dialer)> {
    let (mut chat, dialer) = connect_chat(opts).await?;
    chat.catch_up().await.context("cannot catch up with the server")?;
    chat.resend_pending().await.context("cannot send queued messages")?;
    Ok((chat, dialer))
}

/// Runs a `room` subcommand.
pub async fn room(opts: &GlobalOpts, cmd: &RoomCommand) -> anyhow::Result<()> {
    let (mut chat, _) = open_chat(opts).await?;
    match cmd {
        RoomCommand::Create { room } => {
            let summary = chat.create_room(room).await.context("cannot create the room")?;
            say!("created #{}; you are its owner", summary.name)?;
        }
        RoomCommand::Add { room, users } => {
            chat.add(room, users).await.with_context(|| format!("cannot add to #{}", bare(room)))?;
            say!("added {} to #{}", users.join(", "), bare(room))?;
        }
        RoomCommand::Remove { room, users } => {
            chat.remove(room, users).await.with_context(|| format!("cannot remove from #{}", bare(room)))?;
            say!("removed {} from #{}", users.join(", "), bare(room))?;
        }
        RoomCommand::Leave { room } => {
            chat.leave(room).await.with_context(|| format!("cannot leave #{}", bare(room)))?;
            say!("left #{}", bare(room))?;
        }
        RoomCommand::List => {
            let rooms = chat.list_rooms().await?;
            if rooms.is_empty() {
                say!("no rooms yet; create one with `conclave room create NAME`")?;
            }
            for r in rooms {
                say!("#{:<24} {:<7} {:>4} member{}", r.name, r.role.as_str(), r.members, plural(r.members))?;
            }
        }
        RoomCommand::Members { room } => {
            let members = chat.members(room).await.with_context(|| format!("cannot list #{}", bare(room)))?;
            let names = RoomNames::of_members(&members);
            let me = chat.account().username.clone();
            for m in &members {
                let name = names.show(&m.username, &m.display_name).to_string();
                // The server counts a user online while one of its devices
                // is subscribed to live events; this command is not, but
                // the one asking is online all the same.
                let online = m.online || m.username == me;
                say!("{name:<40} {:<7} {}", m.role.as_str(), if online { "online" } else { "offline" })?;
            }
        }
        RoomCommand::Role { room, user, role } => {
            let Some(parsed) = Role::parse(role).filter(|r| *r != Role::Owner) else {
                bail!("the role must be admin or member, not {role:?}")
            };
            chat.set_role(room, user, parsed)
                .await
                .with_context(|| format!("cannot change roles in #{}", bare(room)))?;
            say!("{user} is now {role} of #{}", bare(room))?;
        }
    }
    Ok(())
}

/// `conclave send ROOM [TEXT…]`, or the text from standard input.
pub async fn send(opts: &GlobalOpts, args: &SendArgs) -> anyhow::Result<()> {
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
    let (mut chat, _) = open_chat(opts).await?;
    chat.send(&args.room, &text).await.with_context(|| format!("cannot send to #{}", bare(&args.room)))?;
    Ok(())
}

/// `conclave tail ROOM [--since SEQ] [--follow] [--json]`.
pub async fn tail(opts: &GlobalOpts, args: &TailArgs) -> anyhow::Result<()> {
    let (mut chat, dialer) = open_chat(opts).await?;
    let room = conclave_proto::validate_room_name(&args.room).map_err(anyhow::Error::msg)?;
    let rooms = chat.list_rooms().await?;
    let member = rooms.iter().any(|r| r.name == room);
    if !member && chat.history(&room, Seq::ZERO, 1)?.is_empty() {
        bail!("not a member of #{room}");
    }
    let names =
        if member { RoomNames::of_members(&chat.members(&room).await?) } else { RoomNames::default() };
    let mut last = args.since.unwrap_or(Seq::ZERO);
    let mut out = crate::output::stdout();
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
    follow(chat, dialer, &room, last, args.json, names).await
}

/// Prints the room's new rows as they arrive, staying connected through
/// the client library's session (which reconnects, catches up and resends).
async fn follow(
    chat: Chat,
    dialer: Dialer,
    room: &str,
    last: Seq,
    json: bool,
    mut names: RoomNames,
) -> anyhow::Result<()> {
    let options = Options {
        only_rooms: Some([room.to_owned()].into_iter().collect()),
        shown: [(room.to_owned(), last)].into_iter().collect(),
    };
    let (session, mut events) = Session::new(dialer, chat, options);
    let handle = session.spawn().context("cannot start the client session")?;
    let result = async {
        while let Some(event) = events.recv().await {
            emit(room, event, json, &mut names)?;
        }
        bail!("the client session stopped")
    }
    .await;
    handle.shutdown(STOP_GRACE).await;
    result
}

/// Shows one event of the session: rows and presence on stdout, the
/// connection's state on stderr. A new member list (someone joined or
/// left, or after reconnecting) changes who shares a name.
fn emit(room: &str, event: LiveEvent, json: bool, names: &mut RoomNames) -> anyhow::Result<()> {
    let mut out = crate::output::stdout();
    match event {
        LiveEvent::Members { room: r, members, .. } if r == room => {
            *names = RoomNames::of_members(&members);
        }
        LiveEvent::Rows { room: r, rows, .. } if r == room => {
            for row in &rows {
                print_row(&mut out, row, json, names)?;
            }
        }
        LiveEvent::Presence { room: r, user, online } if r == room => {
            let state = if online { "online" } else { "offline" };
            if json {
                let v = serde_json::json!({"room": r, "kind": "presence", "sender": user, "text": state});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "* {user} is {state}")?;
            }
        }
        LiveEvent::Gone { room: r, .. } if r == room => {
            bail!("you are no longer a member of #{r}");
        }
        LiveEvent::Disconnected { error } => eprintln!("* connection lost ({error}); reconnecting"),
        LiveEvent::Stopped { error } => bail!("{error}"),
        LiveEvent::Reconnecting { error, delay, .. } => {
            eprintln!("* reconnect failed: {error}; next try in {:.0}s", delay.as_secs_f32());
        }
        LiveEvent::Failed(error) => eprintln!("* {error}"),
        _ => {}
    }
    out.flush()?;
    Ok(())
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
    } else if row.kind == HistoryKind::Message {
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
