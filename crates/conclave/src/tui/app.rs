//! The UI's state and its reducer: terminal input and client-task events
//! go in, requests for the client task come out. No I/O here, so every
//! behaviour can be tested by feeding events and looking at the state.

use std::time::{Duration, Instant};

use conclave_client::{HistoryKind, HistoryRow};
use conclave_proto::{AccountInfo, MemberInfo, Role, RoomSummary, Seq};
use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

use super::command::{self, Command, COMMANDS};
use super::input::Input;
// The session's commands and events, named for what they are to the UI.
use conclave_client::live::{Command as Request, LiveEvent as Event};

/// Lines kept per room in memory; older ones stay in the local history.
const ROOM_LINES_MAX: usize = 5_000;

/// How long a success line stays in the status area (errors stay until replaced).
const INFO_TTL: Duration = Duration::from_secs(10);

/// Lines the mouse wheel scrolls.
const WHEEL_LINES: usize = 3;

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// Connected, still catching up on the rooms (history and members may
    /// be incomplete until then).
    CatchingUp {
        /// After the connection was lost (so "reconnected" follows).
        after_loss: bool,
    },
    /// Online and caught up.
    Connected,
    /// Lost; reconnecting.
    Reconnecting {
        /// Failed attempts so far.
        attempt: u32,
        /// Why it was lost, or why the last attempt failed.
        error: String,
    },
    /// The session stopped for good (reconnecting cannot help): what is
    /// wrong and what to do. The history stays readable until /quit.
    Stopped {
        /// The session's sentence.
        error: String,
    },
}

/// One line in the status area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// An error (shown in red, kept until replaced)?
    pub error: bool,
    /// When it was set.
    pub at: Instant,
}

/// One entry of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// From the room's log.
    Row(HistoryRow),
    /// Shown by this client only (`/who`, `/help`, ...).
    Local {
        /// When.
        time_ms: u64,
        /// What.
        text: String,
    },
}

/// Where a message typed here is on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingState {
    /// Handed to the client task.
    Sending,
    /// Offline: waiting in the on-disk queue for the reconnect.
    Queued,
    /// Refused; will not be sent.
    Failed(String),
}

/// A message typed here that the server has not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The UI's id for it.
    pub local_id: u64,
    /// When it was typed.
    pub time_ms: u64,
    /// The text.
    pub text: String,
    /// Its state.
    pub state: PendingState,
}

/// One room as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    /// The name.
    pub name: String,
    /// Your role, once the server listed it.
    pub role: Option<Role>,
    /// Messages from others since you last looked.
    pub unread: u32,
    /// The conversation, in log order.
    pub entries: Vec<Entry>,
    /// Your messages not yet acknowledged, shown after the entries.
    pub pending: Vec<Pending>,
    /// Members, as last listed.
    pub members: Vec<MemberInfo>,
    /// Lines scrolled up from the bottom (0: following new messages).
    pub scroll: usize,
    /// The last log sequence number shown.
    pub last_seq: Seq,
}

impl RoomView {
    fn new(name: &str) -> Self {
        RoomView {
            name: name.to_owned(),
            role: None,
            unread: 0,
            entries: Vec::new(),
            pending: Vec::new(),
            members: Vec::new(),
            scroll: 0,
            last_seq: Seq::ZERO,
        }
    }

    fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
        if self.entries.len() > ROOM_LINES_MAX {
            let excess = self.entries.len() - ROOM_LINES_MAX;
            self.entries.drain(..excess);
        }
    }
}

/// The whole UI state.
#[derive(Debug)]
pub struct App {
    /// Who is chatting.
    pub me: AccountInfo,
    /// Rooms, sorted by name.
    pub rooms: Vec<RoomView>,
    /// The room shown, by name.
    pub current: Option<String>,
    /// The room asked for on the command line, until the room list arrives.
    wanted: Option<String>,
    /// The connection.
    pub conn: Conn,
    /// The status area's line.
    pub notice: Option<Notice>,
    /// The input line.
    pub input: Input,
    /// Ring the bell on a mention?
    pub bell_on_mention: bool,
    /// A mention arrived: ring once.
    ring: bool,
    /// Time to leave.
    pub quit: bool,
    /// Lines in the conversation pane, for PgUp/PgDn (set by drawing).
    pub page: usize,
    /// The server has listed the rooms at least once (until then, no room
    /// shown means "not known yet", not "in no room").
    pub rooms_listed: bool,
    next_local_id: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether `text` mentions `name` as a whole word (case-insensitive).
pub fn mentions(text: &str, name: &str) -> bool {
    let name = name.trim();
    if name.is_empty() {
        return false;
    }
    let text = text.to_lowercase();
    let name = name.to_lowercase();
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(pos) = text[from..].find(&name) {
        let start = from + pos;
        let end = start + name.len();
        if !is_word(text[..start].chars().next_back()) && !is_word(text[end..].chars().next()) {
            return true;
        }
        from = start + name.chars().next().map_or(1, char::len_utf8);
    }
    false
}

impl App {
    /// A new UI for `me`, opening `room` once the room list arrives.
    pub fn new(me: AccountInfo, room: Option<String>, bell_on_mention: bool) -> Self {
        App {
            me,
            rooms: Vec::new(),
            current: None,
            wanted: room.map(|r| r.trim_start_matches('#').to_owned()),
            conn: Conn::CatchingUp { after_loss: false },
            notice: None,
            input: Input::default(),
            bell_on_mention,
            ring: false,
            quit: false,
            page: 10,
            rooms_listed: false,
            next_local_id: 1,
        }
    }

    /// The room shown.
    pub fn current_room(&self) -> Option<&RoomView> {
        let name = self.current.as_deref()?;
        self.rooms.iter().find(|r| r.name == name)
    }

    fn current_mut(&mut self) -> Option<&mut RoomView> {
        let name = self.current.clone()?;
        self.rooms.iter_mut().find(|r| r.name == name)
    }

    fn room_mut(&mut self, name: &str) -> &mut RoomView {
        let idx = match self.rooms.binary_search_by(|r| r.name.as_str().cmp(name)) {
            Ok(i) => i,
            Err(i) => {
                self.rooms.insert(i, RoomView::new(name));
                i
            }
        };
        &mut self.rooms[idx]
    }

    /// True once after a mention arrived (and the bell is on).
    pub fn take_bell(&mut self) -> bool {
        std::mem::take(&mut self.ring)
    }

    fn info(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice { text: text.into(), error: false, at: Instant::now() });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice { text: text.into(), error: true, at: Instant::now() });
    }

    /// Shows lines in the current room (or the status area if there is none).
    fn local(&mut self, lines: Vec<String>) {
        let time_ms = now_ms();
        match self.current_mut() {
            Some(room) => {
                for text in lines {
                    room.push(Entry::Local { time_ms, text });
                }
                room.scroll = 0;
            }
            None => {
                let joined = lines.join("; ");
                self.info(joined);
            }
        }
    }

    /// A tick: true if something must be redrawn (an old success line expired).
    pub fn on_tick(&mut self) -> bool {
        match &self.notice {
            Some(n) if !n.error && n.at.elapsed() >= INFO_TTL => {
                self.notice = None;
                true
            }
            _ => false,
        }
    }

    /// A terminal event: returns requests for the client task.
    pub fn on_terminal(&mut self, event: TermEvent) -> Vec<Request> {
        match event {
            TermEvent::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key),
            TermEvent::Paste(text) => {
                self.input.insert_str(&text);
                Vec::new()
            }
            TermEvent::Mouse(m) => {
                match m.kind {
                    MouseEventKind::ScrollUp => self.scroll_up(WHEEL_LINES),
                    MouseEventKind::ScrollDown => self.scroll_down(WHEEL_LINES),
                    _ => {}
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn scroll_up(&mut self, n: usize) {
        if let Some(room) = self.current_mut() {
            // Drawing clamps it to the conversation's length.
            room.scroll = room.scroll.saturating_add(n);
        }
    }

    fn scroll_down(&mut self, n: usize) {
        if let Some(room) = self.current_mut() {
            room.scroll = room.scroll.saturating_sub(n);
        }
    }

    /// A key: edits the input, moves between rooms, or submits.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Request> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('d') if ctrl && self.input.is_empty() => self.quit = true,
            KeyCode::Char('n') if ctrl => self.step_room(1),
            KeyCode::Char('p') if ctrl => self.step_room(-1),
            KeyCode::Char(d @ '1'..='9') if alt => {
                let n = d as usize - '0' as usize;
                if let Some(name) = self.rooms.get(n - 1).map(|r| r.name.clone()) {
                    self.switch_to(&name);
                }
            }
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char('u') if ctrl => self.input.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.input.kill_to_end(),
            KeyCode::Char('w') if ctrl => self.input.delete_word(),
            KeyCode::Char('l') if ctrl => {}
            KeyCode::Char('b') if alt => self.input.word_left(),
            KeyCode::Char('f') if alt => self.input.word_right(),
            KeyCode::Char(c) if !ctrl && !alt => self.input.insert(c),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left if ctrl => self.input.word_left(),
            KeyCode::Right if ctrl => self.input.word_right(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::Up => self.input.history_up(),
            KeyCode::Down => self.input.history_down(),
            KeyCode::PageUp => self.scroll_up(self.page.saturating_sub(1).max(1)),
            KeyCode::PageDown => self.scroll_down(self.page.saturating_sub(1).max(1)),
            KeyCode::Esc => self.notice = None,
            KeyCode::Enter if alt => self.input.insert('\n'),
            KeyCode::Enter => return self.submit(),
            _ => {}
        }
        Vec::new()
    }

    /// Moves to the next (+1) or previous (-1) room, wrapping around.
    fn step_room(&mut self, by: isize) {
        if self.rooms.is_empty() {
            return;
        }
        let n = self.rooms.len() as isize;
        let at = self
            .current
            .as_deref()
            .and_then(|c| self.rooms.iter().position(|r| r.name == c))
            .map_or(0, |i| i as isize);
        let next = (at + by).rem_euclid(n) as usize;
        let name = self.rooms[next].name.clone();
        self.switch_to(&name);
    }

    /// Shows `name`, clearing its unread count.
    pub fn switch_to(&mut self, name: &str) -> bool {
        let Some(room) = self.rooms.iter_mut().find(|r| r.name == name) else {
            return false;
        };
        room.unread = 0;
        room.scroll = 0;
        self.current = Some(name.to_owned());
        true
    }

    fn submit(&mut self) -> Vec<Request> {
        let line = self.input.submit();
        if line.trim().is_empty() {
            return Vec::new();
        }
        match command::parse(&line) {
            Ok(command::Input::Message(text)) => self.send(text),
            Ok(command::Input::Command(cmd)) => self.command(cmd),
            Err(e) => {
                self.error(e);
                Vec::new()
            }
        }
    }

    fn send(&mut self, text: String) -> Vec<Request> {
        let Some(room) = self.current.clone() else {
            self.error("no room to send to: /create NAME, or ask someone to /add you");
            return Vec::new();
        };
        let local_id = self.next_local_id;
        self.next_local_id += 1;
        let state = match &self.conn {
            Conn::Connected | Conn::CatchingUp { .. } => PendingState::Sending,
            Conn::Reconnecting { .. } => PendingState::Queued,
            Conn::Stopped { error } => {
                let error = format!("not sent: the session has stopped ({error})");
                self.error(error);
                return Vec::new();
            }
        };
        if let Some(view) = self.current_mut() {
            view.pending.push(Pending { local_id, time_ms: now_ms(), text: text.clone(), state });
            view.scroll = 0;
        }
        vec![Request::Send { local_id, room, text }]
    }

    fn command(&mut self, cmd: Command) -> Vec<Request> {
        let here = self.current.clone();
        let need_room = |app: &mut App| {
            if here.is_none() {
                app.error("no room selected: /create NAME or /switch ROOM first");
            }
            here.clone()
        };
        match cmd {
            Command::Quit => self.quit = true,
            Command::Help => {
                let mut lines = vec!["commands:".to_owned()];
                lines.extend(COMMANDS.iter().map(|c| format!("  {:<24} {}", c.usage, c.about)));
                lines.push("  PgUp/PgDn or the mouse wheel scroll; Up/Down recall what you typed".into());
                lines.push("  start a message with // to send one that begins with /".into());
                self.local(lines);
            }
            Command::Switch(target) => {
                let by_number = target.parse::<usize>().ok().and_then(|n| n.checked_sub(1));
                let name = match by_number {
                    Some(i) => self.rooms.get(i).map(|r| r.name.clone()),
                    None => Some(target.clone()),
                };
                match name {
                    Some(name) if self.switch_to(&name) => {}
                    _ => self.error(format!("you are not in a room {target:?}; /rooms lists yours")),
                }
            }
            Command::Create(room) => return vec![Request::CreateRoom(room)],
            Command::Rooms => return vec![Request::Rooms],
            Command::Nick(name) => return vec![Request::SetDisplayName(name)],
            Command::Leave(Some(room)) => return vec![Request::Leave(room)],
            Command::Leave(None) => {
                if let Some(room) = need_room(self) {
                    return vec![Request::Leave(room)];
                }
            }
            Command::Add(users) => {
                if let Some(room) = need_room(self) {
                    return vec![Request::Add { room, users }];
                }
            }
            Command::Remove(users) => {
                if let Some(room) = need_room(self) {
                    return vec![Request::Remove { room, users }];
                }
            }
            Command::Role { user, role } => {
                if let Some(room) = need_room(self) {
                    return vec![Request::SetRole { room, user, role }];
                }
            }
            Command::Who => {
                if let Some(room) = need_room(self) {
                    return vec![Request::Members(room)];
                }
            }
        }
        Vec::new()
    }

    /// An event from the client task.
    pub fn on_worker(&mut self, event: Event) {
        match event {
            Event::CatchingUp(me) => {
                let after_loss = matches!(self.conn, Conn::Reconnecting { .. });
                self.me = me;
                self.conn = Conn::CatchingUp { after_loss };
            }
            Event::Connected(me) => {
                let reconnected =
                    matches!(self.conn, Conn::Reconnecting { .. } | Conn::CatchingUp { after_loss: true });
                self.me = me;
                self.conn = Conn::Connected;
                if reconnected {
                    self.info("reconnected");
                }
            }
            Event::Disconnected { error } => {
                self.conn = Conn::Reconnecting { attempt: 0, error };
            }
            Event::Stopped { error } => {
                self.conn = Conn::Stopped { error };
            }
            Event::Reconnecting { attempt, delay, error } => {
                let secs = delay.as_secs_f32();
                self.conn = Conn::Reconnecting { attempt, error: format!("{error}; next try in {secs:.0}s") };
            }
            Event::Rooms { rooms, requested } => self.set_rooms(rooms, requested),
            Event::Members { room, mut members, requested: show } => {
                members.sort_by(|a, b| {
                    let rank = |r: Role| match r {
                        Role::Owner => 0,
                        Role::Admin => 1,
                        Role::Member => 2,
                    };
                    (rank(a.role), !a.online, &a.username).cmp(&(rank(b.role), !b.online, &b.username))
                });
                if show {
                    let names = conclave_client::RoomNames::of_members(&members);
                    let list: Vec<String> = members
                        .iter()
                        .map(|m| {
                            let state = if m.online { "online" } else { "offline" };
                            let name = names.show(&m.username, &m.display_name);
                            format!("{name}: {}, {state}", m.role.as_str())
                        })
                        .collect();
                    let line = format!("members of #{room}: {}", list.join("; "));
                    self.local(vec![line]);
                }
                self.room_mut(&room).members = members;
            }
            Event::Rows { room, rows, live } => self.rows(&room, rows, live),
            Event::Presence { room, user, online } => {
                if let Some(m) = self.room_mut(&room).members.iter_mut().find(|m| m.username == user) {
                    m.online = online;
                }
            }
            Event::Gone { room, why } => {
                self.rooms.retain(|r| r.name != room);
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = self.rooms.first().map(|r| r.name.clone());
                }
                self.info(why);
            }
            Event::Created(room) => {
                self.room_mut(&room);
                self.switch_to(&room);
            }
            Event::Sent { local_id } => {
                for room in &mut self.rooms {
                    room.pending.retain(|p| p.local_id != local_id);
                }
            }
            Event::Queued { local_id } => self.set_pending(local_id, PendingState::Queued),
            Event::SendFailed { local_id, error } => {
                self.error(format!("not sent: {error}"));
                self.set_pending(local_id, PendingState::Failed(error));
            }
            Event::Account(me) => self.me = me,
            Event::Info(text) => self.info(text),
            Event::Failed(text) => self.error(text),
        }
    }

    fn set_pending(&mut self, local_id: u64, state: PendingState) {
        for room in &mut self.rooms {
            if let Some(p) = room.pending.iter_mut().find(|p| p.local_id == local_id) {
                p.state = state.clone();
            }
        }
    }

    fn set_rooms(&mut self, rooms: Vec<RoomSummary>, show: bool) {
        self.rooms_listed = true;
        self.rooms.retain(|r| rooms.iter().any(|s| s.name == r.name));
        for summary in &rooms {
            self.room_mut(&summary.name).role = Some(summary.role);
        }
        if let Some(wanted) = self.wanted.take() {
            if !self.switch_to(&wanted) {
                self.error(format!("you are not a member of #{wanted}; /rooms lists yours"));
            }
        }
        let current_gone = self.current.as_deref().is_none_or(|c| !self.rooms.iter().any(|r| r.name == c));
        if current_gone {
            self.current = self.rooms.first().map(|r| r.name.clone());
        }
        if show {
            let line = if rooms.is_empty() {
                "no rooms yet; /create NAME makes one".to_owned()
            } else {
                let list: Vec<String> = rooms
                    .iter()
                    .map(|r| format!("#{} ({}, {} members)", r.name, r.role.as_str(), r.members))
                    .collect();
                format!("your rooms: {}", list.join(", "))
            };
            self.local(vec![line]);
        }
    }

    fn rows(&mut self, room: &str, rows: Vec<HistoryRow>, live: bool) {
        // Before the server lists the rooms (offline, or still catching
        // up), the local history shows the room asked for, else the first.
        if self.current.is_none() && !self.rooms_listed && self.wanted.as_deref().is_none_or(|w| w == room) {
            self.current = Some(room.to_owned());
        }
        let is_current = self.current.as_deref() == Some(room);
        let username = self.me.username.clone();
        let display = self.me.display_name.clone();
        let bell = self.bell_on_mention;
        let mut ring = false;
        let view = self.room_mut(room);
        for row in rows {
            if row.seq <= view.last_seq {
                continue;
            }
            view.last_seq = row.seq;
            let from_other = row.kind == HistoryKind::Message && row.sender != username;
            if live && from_other {
                if !is_current {
                    view.unread += 1;
                }
                if bell && (mentions(&row.text, &username) || mentions(&row.text, &display)) {
                    ring = true;
                }
            }
            view.push(Entry::Row(row));
        }
        self.ring |= ring;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::{KeyEvent, KeyEventState};

    fn me() -> AccountInfo {
        AccountInfo { username: "alice".into(), display_name: "Alice".into(), device_id: 1 }
    }

    pub(crate) fn row(room: &str, seq: u64, sender: &str, text: &str) -> HistoryRow {
        HistoryRow {
            room: room.into(),
            seq: Seq::new(seq),
            time_ms: 1_700_000_000_000 + seq * 1000,
            sender: sender.into(),
            sender_display: sender.into(),
            kind: HistoryKind::Message,
            text: text.into(),
        }
    }

    fn summary(name: &str) -> RoomSummary {
        RoomSummary {
            name: name.into(),
            group_id: vec![],
            role: Role::Owner,
            members: 2,
            head_seq: Seq::FIRST,
            joined_seq: Seq::FIRST,
        }
    }

    fn key(code: KeyCode, modifiers: KeyModifiers) -> TermEvent {
        TermEvent::Key(KeyEvent { code, modifiers, kind: KeyEventKind::Press, state: KeyEventState::NONE })
    }

    fn type_line(app: &mut App, s: &str) -> Vec<Request> {
        for c in s.chars() {
            app.on_terminal(key(KeyCode::Char(c), KeyModifiers::NONE));
        }
        app.on_terminal(key(KeyCode::Enter, KeyModifiers::NONE))
    }

    fn app_with_rooms() -> App {
        let mut app = App::new(me(), Some("#lab".into()), true);
        app.on_worker(Event::Rooms {
            rooms: vec![summary("lab"), summary("attic"), summary("zoo")],
            requested: false,
        });
        app
    }

    #[test]
    fn opens_the_room_asked_for_else_the_first() {
        let app = app_with_rooms();
        assert_eq!(app.current.as_deref(), Some("lab"));
        let mut other = App::new(me(), Some("nope".into()), true);
        other.on_worker(Event::Rooms { rooms: vec![summary("lab"), summary("attic")], requested: false });
        assert_eq!(other.current.as_deref(), Some("attic"));
        assert!(other.notice.as_ref().is_some_and(|n| n.error && n.text.contains("#nope")));
    }

    #[test]
    fn a_message_is_pending_until_sent() {
        let mut app = app_with_rooms();
        let reqs = type_line(&mut app, "hello");
        assert_eq!(reqs, vec![Request::Send { local_id: 1, room: "lab".into(), text: "hello".into() }]);
        assert_eq!(app.current_room().unwrap().pending.len(), 1);
        assert_eq!(app.current_room().unwrap().pending[0].state, PendingState::Sending);
        app.on_worker(Event::Rows {
            room: "lab".into(),
            rows: vec![row("lab", 2, "alice", "hello")],
            live: true,
        });
        app.on_worker(Event::Sent { local_id: 1 });
        let lab = app.current_room().unwrap();
        assert!(lab.pending.is_empty());
        assert_eq!(lab.entries.len(), 1);
        assert_eq!(lab.unread, 0);
        assert!(!app.take_bell(), "own message does not ring");
    }

    #[test]
    fn offline_messages_are_queued_and_failures_shown() {
        let mut app = app_with_rooms();
        app.on_worker(Event::Disconnected { error: "the server closed the connection".into() });
        type_line(&mut app, "while away");
        assert_eq!(app.current_room().unwrap().pending[0].state, PendingState::Queued);
        app.on_worker(Event::SendFailed { local_id: 1, error: "not a member of #lab".into() });
        assert!(matches!(app.current_room().unwrap().pending[0].state, PendingState::Failed(_)));
        assert!(app.notice.as_ref().unwrap().error);
        app.on_worker(Event::CatchingUp(me()));
        assert_eq!(app.conn, Conn::CatchingUp { after_loss: true });
        app.on_worker(Event::Connected(me()));
        assert_eq!(app.conn, Conn::Connected);
        assert_eq!(app.notice.as_ref().unwrap().text, "reconnected");
    }

    #[test]
    fn catching_up_until_the_session_says_connected() {
        let mut app = App::new(me(), Some("lab".into()), true);
        assert_eq!(app.conn, Conn::CatchingUp { after_loss: false });
        app.on_worker(Event::CatchingUp(me()));
        app.on_worker(Event::Rooms { rooms: vec![summary("lab")], requested: false });
        assert_eq!(app.conn, Conn::CatchingUp { after_loss: false }, "rooms alone are not caught up");
        app.on_worker(Event::Connected(me()));
        assert_eq!(app.conn, Conn::Connected);
        assert!(app.notice.is_none(), "the first connection is not a reconnection");
    }

    #[test]
    fn unread_counts_and_mentions() {
        let mut app = app_with_rooms();
        let rows = vec![row("zoo", 2, "bob", "hi all"), row("zoo", 3, "bob", "hey ALICE, look")];
        app.on_worker(Event::Rows { room: "zoo".into(), rows, live: true });
        assert_eq!(app.rooms.iter().find(|r| r.name == "zoo").unwrap().unread, 2);
        assert!(app.take_bell());
        assert!(!app.take_bell(), "rings once");
        // Replayed rows are not counted twice; history from before opening is not unread.
        app.on_worker(Event::Rows { room: "zoo".into(), rows: vec![row("zoo", 3, "bob", "x")], live: true });
        app.on_worker(Event::Rows {
            room: "attic".into(),
            rows: vec![row("attic", 2, "bob", "alice")],
            live: false,
        });
        assert_eq!(app.rooms.iter().find(|r| r.name == "zoo").unwrap().unread, 2);
        assert_eq!(app.rooms.iter().find(|r| r.name == "attic").unwrap().unread, 0);
        assert!(!app.take_bell());
        // Switching clears it.
        app.on_terminal(key(KeyCode::Char('3'), KeyModifiers::ALT));
        assert_eq!(app.current.as_deref(), Some("zoo"));
        assert_eq!(app.current_room().unwrap().unread, 0);
        // The bell can be turned off.
        let mut quiet = App::new(me(), None, false);
        quiet.on_worker(Event::Rows {
            room: "zoo".into(),
            rows: vec![row("zoo", 9, "bob", "alice!")],
            live: true,
        });
        assert!(!quiet.take_bell());
    }

    #[test]
    fn mentions_are_whole_words() {
        assert!(mentions("hi alice", "alice"));
        assert!(mentions("Alice: hi", "alice"));
        assert!(mentions("@alice?", "Alice"));
        assert!(!mentions("malice aforethought", "alice"));
        assert!(!mentions("alicent", "alice"));
        assert!(mentions("dear Ann Lee,", "ann lee"));
        assert!(!mentions("anything", ""));
    }

    #[test]
    fn room_keys_and_switch_command() {
        let mut app = app_with_rooms();
        // Sorted: attic, lab, zoo.
        app.on_terminal(key(KeyCode::Char('n'), KeyModifiers::CONTROL));
        assert_eq!(app.current.as_deref(), Some("zoo"));
        app.on_terminal(key(KeyCode::Char('n'), KeyModifiers::CONTROL));
        assert_eq!(app.current.as_deref(), Some("attic"));
        app.on_terminal(key(KeyCode::Char('p'), KeyModifiers::CONTROL));
        assert_eq!(app.current.as_deref(), Some("zoo"));
        type_line(&mut app, "/switch #lab");
        assert_eq!(app.current.as_deref(), Some("lab"));
        type_line(&mut app, "/switch 1");
        assert_eq!(app.current.as_deref(), Some("attic"));
        type_line(&mut app, "/switch nowhere");
        assert_eq!(app.current.as_deref(), Some("attic"));
        assert!(app.notice.as_ref().unwrap().text.contains("nowhere"));
    }

    #[test]
    fn commands_become_requests_and_errors_stay_in_the_status_area() {
        let mut app = app_with_rooms();
        assert_eq!(
            type_line(&mut app, "/add bob carol"),
            vec![Request::Add { room: "lab".into(), users: vec!["bob".into(), "carol".into()] }]
        );
        assert_eq!(type_line(&mut app, "/who"), vec![Request::Members("lab".into())]);
        assert_eq!(type_line(&mut app, "/create new"), vec![Request::CreateRoom("new".into())]);
        assert_eq!(
            type_line(&mut app, "/role bob admin"),
            vec![Request::SetRole { room: "lab".into(), user: "bob".into(), role: Role::Admin }]
        );
        assert!(type_line(&mut app, "/bogus").is_empty());
        assert!(app.notice.as_ref().unwrap().text.contains("unknown command /bogus"));
        type_line(&mut app, "/help");
        assert!(app
            .current_room()
            .unwrap()
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Local { text, .. } if text.contains("/quit"))));
        app.on_worker(Event::Failed("cannot add to #lab: no such user".into()));
        assert!(app.notice.as_ref().unwrap().error);
        assert!(!app.quit);
        type_line(&mut app, "/quit");
        assert!(app.quit);
    }

    #[test]
    fn paste_is_one_message() {
        let mut app = app_with_rooms();
        app.on_terminal(TermEvent::Paste("line one\nline two".into()));
        let reqs = app.on_terminal(key(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(
            reqs,
            vec![Request::Send { local_id: 1, room: "lab".into(), text: "line one\nline two".into() }]
        );
    }

    #[test]
    fn ctrl_c_quits_and_gone_rooms_leave_the_list() {
        let mut app = app_with_rooms();
        app.on_worker(Event::Gone { room: "lab".into(), why: "you left #lab".into() });
        assert_eq!(app.rooms.len(), 2);
        assert_eq!(app.current.as_deref(), Some("attic"));
        app.on_terminal(key(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit);
    }
}
