//! Room requests: create, list, and everything that a room's actor answers
//! (send, commit, claim, members, roles, leave, group info), plus reading
//! the log for `Sync`.

use std::sync::Arc;

use conclave_proto::{
    decode_entry, encode_entry, validate_new_room_name, validate_room_name, ClaimedKeyPackage, ErrorBody,
    ErrorCode, LogEntry, MemberInfo, Response, Role, RoomSummary, Seq, MAX_ROOM_NAME_LEN,
};

use crate::mls::RoomGroup;
use crate::rooms::{RoomCmd, RoomHandle};
use crate::store::{DeviceAccount, NewRoom, WriteOp};
use crate::Shared;

/// Most entries one `Sync` answer carries.
pub const SYNC_MAX_ENTRIES: u32 = 1000;

/// About how many bytes of entries one `Sync` answer carries.
pub const SYNC_MAX_BYTES: usize = 1 << 20;

fn not_a_member(room: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::NOT_A_MEMBER, format!("not a member of #{room}"))
}

/// The actor of a room by name, for a room the caller knows it is in (its
/// own rooms, a room it just created); unknown rooms look like rooms the
/// caller is not in. Requests that name a room use [`open`].
pub async fn room(shared: &Arc<Shared>, raw: &str) -> Result<(String, RoomHandle), ErrorBody> {
    let name = room_name(raw)?;
    match shared.rooms.get(shared, &name).await? {
        Some(handle) => Ok((name, handle)),
        None => Err(not_a_member(&name)),
    }
}

/// The room a request from `from` names, normalised, and the actor to ask
/// with [`RoomHandle::ask_as`]: a missing room and a room `from` is not in
/// get the same answer at the same cost (see [`crate::rooms::Rooms::open`]).
async fn open(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    raw: &str,
) -> Result<(String, RoomHandle), ErrorBody> {
    let name = room_name(raw)?;
    let handle = shared.rooms.open(shared, from.user, &name).await?;
    Ok((name, handle))
}

/// A room name, normalised; one that breaks the rule names no room.
fn room_name(raw: &str) -> Result<String, ErrorBody> {
    let shown: String = raw.strip_prefix('#').unwrap_or(raw).chars().take(MAX_ROOM_NAME_LEN + 1).collect();
    validate_room_name(raw).map_err(|_| not_a_member(&shown))
}

/// `CreateRoom`: checks the creator's GroupInfo and records the room.
pub async fn create(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: String,
    group_id: Vec<u8>,
    group_info: Vec<u8>,
) -> Result<Response, ErrorBody> {
    let name = validate_new_room_name(&name).map_err(|e| ErrorBody::new(ErrorCode::INVALID_ROOM_NAME, e))?;
    if group_id.is_empty() || group_id.len() > 64 {
        return Err(ErrorBody::new(ErrorCode::INVALID_REQUEST, "a group id is 1 to 64 bytes"));
    }
    let group = RoomGroup::from_group_info(&group_info, &group_id).map_err(|e| {
        ErrorBody::new(ErrorCode::INVALID_MLS, format!("the room's GroupInfo was refused: {e}"))
    })?;
    let members = group.members();
    let only = match members.as_slice() {
        [only] if group.epoch() == 0 => only,
        _ => {
            return Err(ErrorBody::new(
                ErrorCode::INVALID_MLS,
                "a new room's group must be at epoch 0 with its creator as the only member",
            ))
        }
    };
    if only.identity != from.identity() || only.signature_key != from.key.0 {
        return Err(ErrorBody::new(ErrorCode::INVALID_MLS, "the group's only member must be this device"));
    }
    let store = shared.store.clone();
    let user = from.user;
    let rooms_now =
        crate::blocking::run(move || store.rooms_of_user(user)).await?.map_err(super::store_error)?;
    if rooms_now.len() >= shared.config.max_rooms_per_user {
        return Err(ErrorBody::new(
            ErrorCode::LIMIT_REACHED,
            format!("you are in {} rooms, the most this server allows; leave one first", rooms_now.len()),
        ));
    }
    let created = conclave_proto::LogEntry {
        seq: Seq::FIRST,
        time_ms: now_ms(),
        sender: from.username.to_string(),
        sender_device: from.device.0,
        body: conclave_proto::EntryBody::Created,
    };
    let entry = encode_entry(&created)
        .map_err(|e| ErrorBody::new(ErrorCode::INTERNAL, format!("cannot encode entry: {e}")))?;
    let store = shared.store.clone();
    let owner = from.user;
    let room_name = name.clone();
    crate::blocking::run(move || {
        store.create_room(NewRoom {
            name: &room_name,
            group_id: &group_id,
            group_info: &group_info,
            owner,
            created_entry: &entry,
            time_ms: created.time_ms,
        })
    })
    .await?
    .map_err(|e| match e {
        crate::store::StoreError::RoomExists => {
            ErrorBody::new(ErrorCode::ROOM_EXISTS, format!("#{name} already exists; choose another name"))
        }
        other => super::store_error(other),
    })?;
    tracing::info!(room = %name, owner = %from.username, "room created");
    let (_, handle) = room(shared, &name).await?;
    for session in shared.hub.sessions_of(from.user) {
        handle.send(RoomCmd::Subscribe(session)).await?;
    }
    let summary = handle.ask(|reply| RoomCmd::Summary { from: from.clone(), reply }).await?;
    Ok(Response::Room(summary))
}

/// The summaries of every room of `from`.
pub async fn summaries(shared: &Arc<Shared>, from: &DeviceAccount) -> Result<Vec<RoomSummary>, ErrorBody> {
    let store = shared.store.clone();
    let user = from.user;
    let names = crate::blocking::run(move || store.rooms_of_user(user)).await?.map_err(super::store_error)?;
    let mut out = Vec::new();
    for name in names {
        if let Ok((_, handle)) = room(shared, &name).await {
            if let Ok(summary) = handle.ask(|reply| RoomCmd::Summary { from: from.clone(), reply }).await {
                out.push(summary);
            }
        }
    }
    Ok(out)
}

/// `Send`, started: the message is queued at the room in arrival order, and
/// the returned future answers once it is stored. The session does not wait
/// for it before reading its next request, so one connection can have many
/// sends in flight and the room commits them together.
pub async fn start_send(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    client_msg_id: u64,
    ciphertext: Vec<u8>,
) -> Result<impl std::future::Future<Output = Result<Response, ErrorBody>>, ErrorBody> {
    if !shared.message_rates.allow(from.user, std::time::Instant::now()) {
        let limit = shared.config.messages_per_second;
        return Err(ErrorBody::new(
            ErrorCode::LIMIT_REACHED,
            format!("too many messages: at most {limit} a second from one user; slow down"),
        ));
    }
    let (name, handle) = open(shared, from, name).await?;
    let (user, from) = (from.user, from.clone());
    let stored = handle
        .start_as(shared, user, name, move |reply| RoomCmd::Send { from, client_msg_id, ciphertext, reply })
        .await?;
    Ok(async move { stored.await.map(|seq| Response::Accepted { seq }) })
}

/// `Commit`.
pub async fn commit(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
    group_info: Vec<u8>,
) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let seq = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::Commit {
            from: from.clone(),
            commit,
            welcome,
            group_info,
            reply,
        })
        .await?;
    Ok(Response::Accepted { seq })
}

/// `ClaimKeyPackages`.
pub async fn claim(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    users: Vec<String>,
) -> Result<Response, ErrorBody> {
    if users.is_empty() || users.len() > 100 {
        return Err(ErrorBody::new(ErrorCode::INVALID_REQUEST, "name 1 to 100 users to add at once"));
    }
    let (name, handle) = open(shared, from, name).await?;
    let packages: Vec<ClaimedKeyPackage> = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::Claim { from: from.clone(), users, reply })
        .await?;
    Ok(Response::KeyPackages(packages))
}

/// `Members`.
pub async fn members(shared: &Arc<Shared>, from: &DeviceAccount, name: &str) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let list: Vec<MemberInfo> = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::Members { from: from.clone(), reply })
        .await?;
    Ok(Response::Members(list))
}

/// `SetRole`.
pub async fn set_role(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    user: String,
    role: Role,
) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let seq = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::SetRole { from: from.clone(), user, role, reply })
        .await?;
    Ok(Response::Accepted { seq })
}

/// `Leave`.
pub async fn leave(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    conn: crate::hub::ConnId,
) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let seq =
        handle.ask_as(shared, from.user, name, |reply| RoomCmd::Leave { from: from.clone(), reply }).await?;
    let _ = handle.send(RoomCmd::Unsubscribe(conn)).await;
    Ok(Response::Accepted { seq })
}

/// `GetGroupInfo`.
pub async fn group_info(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let (epoch, group_info) = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::GroupInfo { from: from.clone(), reply })
        .await?;
    Ok(Response::GroupInfo { epoch, group_info })
}

/// `Sync`: the log after `after_seq`, never from before the caller joined.
pub async fn sync(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    name: &str,
    after_seq: Seq,
    limit: u32,
) -> Result<Response, ErrorBody> {
    let (name, handle) = open(shared, from, name).await?;
    let (room_id, joined_seq) = handle
        .ask_as(shared, from.user, name, |reply| RoomCmd::ReadAccess { from: from.clone(), reply })
        .await?;
    let after = after_seq.max(joined_seq.prev());
    let limit = limit.clamp(1, SYNC_MAX_ENTRIES) as usize;
    let store = shared.store.clone();
    let (user, device) = (from.user, from.device);
    let (raw, more, welcomed) = crate::blocking::run(move || {
        let (raw, more) = store.read_log(room_id, after, limit, SYNC_MAX_BYTES)?;
        Ok::<_, crate::store::StoreError>((raw, more, store.has_welcome(user, device, room_id)?))
    })
    .await?
    .map_err(super::store_error)?;
    if welcomed {
        // A device that reads a room's log has joined it (a client joins from
        // its Welcome before it syncs): the Welcome is used up. Dropped with
        // the next group commit; the answer does not wait for it.
        let drop = WriteOp::DropWelcomes { room: room_id, user, device };
        if let Ok(done) = shared.log_writer.submit(vec![drop]).await {
            shared.tracker.spawn(async move {
                if let Err(e) = done.await {
                    tracing::warn!(error = %e.message, "cannot drop a used Welcome; it is dropped at the next sync");
                }
            });
        }
    }
    let entries: Vec<LogEntry> =
        raw.iter().map(|bytes| decode_entry(bytes)).collect::<Result<_, _>>().map_err(|e| {
            ErrorBody::new(ErrorCode::INTERNAL, format!("a stored entry does not decode: {e}"))
        })?;
    Ok(Response::Log { entries, more })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
