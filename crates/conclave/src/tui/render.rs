//! Drawing the [`App`] with ratatui: room list left, conversation middle,
//! members right, the status line and the input line at the bottom.
//!
//! The conversation is wrapped here (not by ratatui) so that scrolling
//! counts the same lines that are drawn, and so wide characters are measured
//! with `unicode-width` consistently with the input line.

use chrono::TimeZone;
use conclave_client::{HistoryKind, RoomNames, ShownName};
use conclave_proto::AccountInfo;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::app::{App, Conn, Entry, PendingState, RoomView};
use super::input::char_width;

/// Colours for names, picked by a hash of the username.
const NAME_COLOURS: [Color; 10] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightMagenta,
    Color::LightCyan,
];

/// The width of "HH:MM:SS ", by which wrapped lines are indented.
const TIME_WIDTH: usize = 9;

/// A stable colour for a username (FNV-1a: the same on every run and build).
pub fn name_colour(username: &str) -> Color {
    let mut hash: u32 = 0x811c_9dc5;
    for b in username.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    NAME_COLOURS[hash as usize % NAME_COLOURS.len()]
}

/// Wraps `text` to lines of at most `first` columns (the first line) and
/// `rest` columns (the others), at spaces where it can and inside a word
/// where it must; newlines in the text start new lines.
pub fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_w = 0;
    let mut limit = first.max(1);
    let rest = rest.max(1);
    for para in text.split('\n') {
        for token in tokens(para) {
            let tw: usize = token.chars().map(char_width).sum();
            let space = token.starts_with(char::is_whitespace);
            if cur_w + tw <= limit {
                cur.push_str(token);
                cur_w += tw;
            } else if space {
                lines.push(std::mem::take(&mut cur).trim_end().to_owned());
                cur_w = 0;
                limit = rest;
            } else if cur_w > 0 && tw <= rest {
                lines.push(std::mem::take(&mut cur).trim_end().to_owned());
                limit = rest;
                cur.push_str(token);
                cur_w = tw;
            } else {
                for c in token.chars() {
                    let cw = char_width(c);
                    if cur_w + cw > limit && cur_w > 0 {
                        lines.push(std::mem::take(&mut cur));
                        cur_w = 0;
                        limit = rest;
                    }
                    cur.push(c);
                    cur_w += cw;
                }
            }
        }
        lines.push(std::mem::take(&mut cur));
        cur_w = 0;
        limit = rest;
    }
    lines
}

/// Splits into runs of whitespace and runs of anything else.
fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        if prev.is_some_and(|p| p != ws) {
            out.push(&s[start..i]);
            start = i;
        }
        prev = Some(ws);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn clock(time_ms: u64) -> String {
    chrono::Local
        .timestamp_millis_opt(i64::try_from(time_ms).unwrap_or(0))
        .single()
        .map_or_else(|| "--:--:--".to_owned(), |t| t.format("%H:%M:%S").to_string())
}

/// Shortens `s` to at most `width` columns, with "…" if cut.
fn fit(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// One conversation entry as styled visual lines, `width` columns wide.
fn entry_lines(
    time_ms: u64,
    prefix: Vec<Span<'static>>,
    text: &str,
    text_style: Style,
    width: usize,
) -> Vec<Line<'static>> {
    let time = Span::styled(format!("{} ", clock(time_ms)), Style::default().fg(Color::DarkGray));
    let indent = if width > TIME_WIDTH + 10 { TIME_WIDTH } else { 0 };
    let used = TIME_WIDTH + prefix.iter().map(|s| s.content.width()).sum::<usize>();
    let first = width.saturating_sub(used).max(1);
    let mut out = Vec::new();
    for (i, part) in wrap(text, first, width - indent).into_iter().enumerate() {
        if i == 0 {
            let mut spans = vec![time.clone()];
            spans.extend(prefix.iter().cloned());
            spans.push(Span::styled(part, text_style));
            out.push(Line::from(spans));
        } else {
            out.push(Line::from(vec![Span::raw(" ".repeat(indent)), Span::styled(part, text_style)]));
        }
    }
    out
}

/// A sender's name as spans: the display name (cut to 16 columns) in bold,
/// then the username whole when it must show (see [`RoomNames::show`]), then ": ".
fn sender_spans(shown: ShownName, style: Style) -> Vec<Span<'static>> {
    let mut spans = vec![Span::styled(fit(&shown.name, 16), style.add_modifier(Modifier::BOLD))];
    if let Some(username) = shown.username {
        spans.push(Span::styled(format!(" ({username})"), style));
    }
    spans.push(Span::styled(": ", style.add_modifier(Modifier::BOLD)));
    spans
}

/// Every visual line of a room's conversation at `width` columns.
pub fn conversation_lines(room: &RoomView, me: &AccountInfo, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let dim = Style::default().fg(Color::DarkGray);
    let names = RoomNames::of_members(&room.members);
    let mut lines = Vec::new();
    for entry in &room.entries {
        match entry {
            Entry::Row(row) if row.kind == HistoryKind::Message => {
                let name = sender_spans(
                    names.show(&row.sender, &row.sender_display),
                    Style::default().fg(name_colour(&row.sender)),
                );
                lines.extend(entry_lines(row.time_ms, name, &row.text, Style::default(), width));
            }
            Entry::Row(row) if row.kind == HistoryKind::Undecryptable => {
                let text = format!("cannot decrypt a message from {}: {}", row.sender, row.text);
                let style = Style::default().fg(Color::Red);
                lines.extend(entry_lines(row.time_ms, vec![Span::styled("! ", style)], &text, style, width));
            }
            Entry::Row(row) => {
                lines.extend(entry_lines(row.time_ms, vec![Span::styled("* ", dim)], &row.text, dim, width));
            }
            Entry::Local { time_ms, text } => {
                let style = Style::default().fg(Color::Gray).add_modifier(Modifier::ITALIC);
                lines.extend(entry_lines(*time_ms, vec![Span::styled("- ", style)], text, style, width));
            }
        }
    }
    for p in &room.pending {
        let (mark, style) = match &p.state {
            PendingState::Sending => (" (sending…)".to_owned(), dim),
            PendingState::Queued => (" (queued: offline)".to_owned(), Style::default().fg(Color::Yellow)),
            PendingState::Failed(e) => (format!(" (not sent: {e})"), Style::default().fg(Color::Red)),
        };
        let name = sender_spans(names.show(&me.username, &me.display_name), dim);
        let text = format!("{}{mark}", p.text);
        lines.extend(entry_lines(p.time_ms, name, &text, style, width));
    }
    lines
}

/// Draws the whole screen. Takes `&mut` to clamp the scroll position to the
/// conversation's length and to record the page size for PgUp/PgDn.
pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    let [main, status, input] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let side = if area.width >= 110 { 24 } else { 18 };
    let [rooms, conversation, members] =
        Layout::horizontal([Constraint::Length(side), Constraint::Min(20), Constraint::Length(side)])
            .areas(main);
    draw_rooms(f, app, rooms);
    draw_conversation(f, app, conversation);
    draw_members(f, app, members);
    draw_status(f, app, status);
    draw_input(f, app, input);
}

fn draw_rooms(f: &mut Frame, app: &App, area: Rect) {
    let inner = area.width.saturating_sub(2) as usize;
    let lines: Vec<Line> = app
        .rooms
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let number = if i < 9 { format!("{} ", i + 1) } else { "  ".to_owned() };
            let unread = if r.unread > 0 { format!(" {}", r.unread) } else { String::new() };
            let name = fit(&format!("#{}", r.name), inner.saturating_sub(number.width() + unread.width()));
            let pad = inner.saturating_sub(number.width() + name.width() + unread.width());
            let mut style = Style::default();
            if r.unread > 0 {
                style = style.add_modifier(Modifier::BOLD).fg(Color::White);
            }
            if app.current.as_deref() == Some(r.name.as_str()) {
                style = style.bg(Color::Blue).fg(Color::White);
            }
            Line::from(vec![
                Span::styled(number, style.fg(Color::DarkGray)),
                Span::styled(name, style),
                Span::styled(" ".repeat(pad), style),
                Span::styled(unread, style.fg(Color::Yellow).add_modifier(Modifier::BOLD)),
            ])
        })
        .collect();
    let block = Block::default().borders(Borders::ALL).title(" Rooms ");
    let body = if lines.is_empty() {
        vec![Line::styled("(none)", Style::default().fg(Color::DarkGray))]
    } else {
        lines
    };
    f.render_widget(Paragraph::new(body).block(block), area);
}

fn draw_conversation(f: &mut Frame, app: &mut App, area: Rect) {
    let width = area.width.saturating_sub(2) as usize;
    let height = area.height.saturating_sub(2) as usize;
    app.page = height.max(1);
    let me = app.me.clone();
    let Some(name) = app.current.clone() else {
        let hint = match &app.conn {
            // Not listed yet: a fresh device is still joining its rooms.
            Conn::CatchingUp { .. } if !app.rooms_listed => vec![
                Line::from("Catching up: joining your rooms and reading what you missed…"),
                Line::from("/help lists the commands."),
            ],
            Conn::Reconnecting { .. } | Conn::Stopped { .. } if !app.rooms_listed => vec![
                Line::from("Not connected: your rooms show once the server is reached."),
                Line::from("The status line below says why; /quit leaves."),
            ],
            _ => vec![
                Line::from("You are in no room yet."),
                Line::from("/create NAME makes one; someone else can /add you to theirs."),
                Line::from("/help lists the commands."),
            ],
        };
        f.render_widget(Paragraph::new(hint).block(Block::default().borders(Borders::ALL)), area);
        return;
    };
    let Some(room) = app.rooms.iter_mut().find(|r| r.name == name) else { return };
    let lines = conversation_lines(room, &me, width);
    let max_scroll = lines.len().saturating_sub(height);
    room.scroll = room.scroll.min(max_scroll);
    let end = lines.len() - room.scroll;
    let start = end.saturating_sub(height);
    let title = if room.scroll > 0 {
        format!(" #{name} — {} lines up, PgDn to return ", room.scroll)
    } else {
        format!(" #{name} ")
    };
    let visible: Vec<Line> = lines[start..end].to_vec();
    let block = Block::default().borders(Borders::ALL).title(title);
    f.render_widget(Paragraph::new(visible).block(block), area);
}

fn draw_members(f: &mut Frame, app: &App, area: Rect) {
    let inner = area.width.saturating_sub(2) as usize;
    let members = app.current_room().map(|r| r.members.as_slice()).unwrap_or_default();
    let online = members.iter().filter(|m| m.online).count();
    let lines: Vec<Line> = members
        .iter()
        .map(|m| {
            let (dot, dot_style) = if m.online {
                ("● ", Style::default().fg(Color::Green))
            } else {
                ("○ ", Style::default().fg(Color::DarkGray))
            };
            let role = match m.role {
                conclave_proto::Role::Owner => " owner",
                conclave_proto::Role::Admin => " admin",
                conclave_proto::Role::Member => "",
            };
            let name = fit(&m.username, inner.saturating_sub(2 + role.width()));
            let pad = inner.saturating_sub(2 + name.width() + role.width());
            let name_style = if m.online {
                Style::default().fg(name_colour(&m.username))
            } else {
                Style::default().fg(Color::DarkGray)
            };
            Line::from(vec![
                Span::styled(dot, dot_style),
                Span::styled(name, name_style),
                Span::raw(" ".repeat(pad)),
                Span::styled(role, Style::default().fg(Color::DarkGray)),
            ])
        })
        .collect();
    let unknown = match app.conn {
        Conn::CatchingUp { .. } => true,
        Conn::Reconnecting { .. } | Conn::Stopped { .. } => !app.rooms_listed,
        Conn::Connected => false,
    };
    let title = if members.is_empty() && unknown {
        " Members … ".to_owned()
    } else {
        format!(" Members {online}/{} ", members.len())
    };
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)), area);
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let base = Style::default().bg(Color::DarkGray).fg(Color::White);
    let mut spans = match &app.conn {
        Conn::CatchingUp { .. } => {
            let what =
                app.current.as_deref().map_or_else(|| "your rooms".to_owned(), |room| format!("#{room}"));
            vec![Span::styled(format!(" ◌ catching up {what}… "), base.fg(Color::LightCyan))]
        }
        Conn::Connected => {
            vec![Span::styled(format!(" ● connected as {} ", app.me.username), base.fg(Color::LightGreen))]
        }
        Conn::Reconnecting { attempt, error } => {
            let tries = if *attempt > 0 { format!(", attempt {attempt}") } else { String::new() };
            vec![Span::styled(format!(" ◌ reconnecting{tries}: {error} "), base.fg(Color::Yellow))]
        }
        Conn::Stopped { error } => vec![Span::styled(
            format!(" ■ stopped: {error} "),
            base.fg(Color::LightRed).add_modifier(Modifier::BOLD),
        )],
    };
    if let Some(n) = &app.notice {
        let style = if n.error { base.fg(Color::LightRed).add_modifier(Modifier::BOLD) } else { base };
        spans.push(Span::styled("│ ", base));
        spans.push(Span::styled(n.text.replace('\n', " "), style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)).style(base), area);
}

fn draw_input(f: &mut Frame, app: &App, area: Rect) {
    let prompt = match &app.current {
        Some(room) => format!("#{}> ", fit(room, 16)),
        None => "> ".to_owned(),
    };
    let avail = (area.width as usize).saturating_sub(prompt.width()).max(2);
    let (shown, col) = app.input.view(avail);
    let line =
        Line::from(vec![Span::styled(prompt.clone(), Style::default().fg(Color::Cyan)), Span::raw(shown)]);
    f.render_widget(Paragraph::new(line), area);
    let x = area.x + (prompt.width() + col).min(area.width.saturating_sub(1) as usize) as u16;
    f.set_cursor_position((x, area.y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::App;
    use conclave_client::live::LiveEvent as Event;
    use conclave_client::HistoryRow;
    use conclave_proto::{AccountInfo, MemberInfo, Role, RoomSummary, Seq};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn wrapping_at_spaces_and_inside_long_words() {
        assert_eq!(wrap("hello world", 20, 20), ["hello world"]);
        assert_eq!(wrap("hello world again", 11, 11), ["hello world", "again"]);
        assert_eq!(wrap("aaaaaaaaaa", 4, 4), ["aaaa", "aaaa", "aa"]);
        assert_eq!(wrap("ab cd", 3, 10), ["ab", "cd"]);
        assert_eq!(wrap("one\ntwo", 10, 10), ["one", "two"]);
        assert_eq!(wrap("", 10, 10), [""]);
        // Wide characters are two columns: never split, never overflow.
        assert_eq!(wrap("日本語テキスト", 5, 5), ["日本", "語テ", "キス", "ト"]);
        assert_eq!(wrap("ok 🎉🎉🎉", 6, 6), ["ok", "🎉🎉🎉"]);
        assert_eq!(wrap("🎉🎉🎉🎉", 5, 5), ["🎉🎉", "🎉🎉"]);
        for line in wrap("混ぜた text と 絵文字 🎉 を 折り返す long enough to wrap twice", 12, 12)
        {
            assert!(line.width() <= 12, "{line:?} is {} wide", line.width());
        }
    }

    #[test]
    fn name_colours_are_stable_and_spread() {
        assert_eq!(name_colour("alice"), name_colour("alice"));
        let names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
        let distinct: std::collections::HashSet<_> =
            names.iter().map(|n| format!("{:?}", name_colour(n))).collect();
        assert!(distinct.len() >= 3, "{distinct:?}");
    }

    fn row(seq: u64, sender: &str, kind: HistoryKind, text: &str) -> HistoryRow {
        HistoryRow {
            room: "lab".into(),
            seq: Seq::new(seq),
            time_ms: 1_700_000_000_000 + seq * 1000,
            sender: sender.into(),
            sender_display: sender.into(),
            kind,
            text: text.into(),
        }
    }

    fn member(name: &str, role: Role, online: bool) -> MemberInfo {
        MemberInfo { username: name.into(), display_name: name.into(), role, online }
    }

    fn sample_app() -> App {
        let me = AccountInfo { username: "alice".into(), display_name: "alice".into(), device_id: 1 };
        let mut app = App::new(me, Some("lab".into()), true);
        let summary = |n: &str| RoomSummary {
            name: n.into(),
            group_id: vec![],
            role: Role::Owner,
            members: 2,
            head_seq: Seq::FIRST,
            joined_seq: Seq::FIRST,
        };
        app.on_worker(Event::Rooms { rooms: vec![summary("lab"), summary("random")], requested: false });
        let loading = screen(&mut app, 80, 24);
        assert!(
            loading[22].contains("◌ catching up #lab…"),
            "until the session is caught up: {}",
            loading[22]
        );
        assert!(loading[0].contains("┌ Members … "), "not 0/0 while loading: {}", loading[0]);
        app.on_worker(Event::Connected(app.me.clone()));
        app.on_worker(Event::Members {
            room: "lab".into(),
            members: vec![member("alice", Role::Owner, true), member("bob", Role::Member, false)],
            requested: false,
        });
        let rows = vec![
            row(2, "", HistoryKind::Join, "bob joined #lab"),
            row(3, "bob", HistoryKind::Message, "こんにちは 🎉 wide"),
            row(4, "alice", HistoryKind::Message, &"long line ".repeat(12)),
        ];
        app.on_worker(Event::Rows { room: "lab".into(), rows, live: false });
        let other = HistoryRow { room: "random".into(), ..row(2, "bob", HistoryKind::Message, "psst") };
        app.on_worker(Event::Rows { room: "random".into(), rows: vec![other], live: true });
        app.on_worker(Event::Failed("cannot add to #lab: no such user zed".into()));
        app
    }

    fn screen(app: &mut App, w: u16, h: u16) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                let mut line = String::new();
                let mut covered = 0;
                for x in 0..w {
                    // Cells under the second half of a wide character: skip
                    // them, as a terminal shows it.
                    if covered > 0 {
                        covered -= 1;
                        continue;
                    }
                    let sym = buf[(x, y)].symbol();
                    line.push_str(sym);
                    covered = sym.width().saturating_sub(1);
                }
                line
            })
            .collect()
    }

    /// Column (in cells) where `needle` starts on `line`, counting wide characters as two.
    fn column(line: &str, needle: &str) -> Option<usize> {
        line.find(needle).map(|i| line[..i].width())
    }

    fn check_layout(w: u16, h: u16) {
        let mut app = sample_app();
        let s = screen(&mut app, w, h);
        let all = s.join("\n");
        let side = if w >= 110 { 24 } else { 18 };
        // Room list on the left: numbered, the unread count of #random.
        assert!(s[0].starts_with("┌ Rooms "), "{all}");
        assert_eq!(column(&s[1], "1 #lab"), Some(1), "{all}");
        assert_eq!(column(&s[2], "2 #random"), Some(1), "{all}");
        let room_list: String = s[2].chars().take(side).collect();
        assert!(room_list.trim_end_matches('│').trim_end().ends_with(" 1"), "unread count: {all}");
        // Conversation in the middle.
        assert_eq!(column(&s[0], "┌ #lab "), Some(side), "{all}");
        let notice = s.iter().find(|l| l.contains("* bob joined #lab")).expect(&all);
        assert_eq!(column(notice, "* bob"), Some(side + 1 + 9));
        let wide = s.iter().find(|l| l.contains("こんにちは")).expect(&all);
        assert_eq!(column(wide, "bob: "), Some(side + 1 + 9));
        assert_eq!(column(wide, "こんにちは"), Some(side + 1 + 9 + 5));
        // The emoji takes two cells: "wide" follows it after one space, and the
        // right border is still in the last column of the middle pane.
        assert_eq!(column(wide, "🎉"), Some(side + 1 + 9 + 5 + 11));
        assert_eq!(column(wide, "wide"), Some(side + 1 + 9 + 5 + 11 + 3));
        let mid_right = w as usize - side - 1;
        let right_border = wide
            .char_indices()
            .filter(|(_, c)| *c == '│')
            .map(|(i, _)| wide[..i].width())
            .collect::<Vec<_>>();
        assert!(right_border.contains(&mid_right), "{right_border:?} in {wide:?}");
        // Long lines wrap, indented under the text.
        let long: Vec<&String> = s.iter().filter(|l| l.contains("long line")).collect();
        assert!(long.len() >= 2, "{all}");
        assert!(s.iter().any(|l| l.contains("alice: long line")));
        // Members on the right: online marker and role.
        assert_eq!(column(&s[0], "┌ Members 1/2 "), Some(w as usize - side), "{all}");
        let alice = s.iter().find(|l| l.contains("● alice")).expect(&all);
        assert_eq!(column(alice, "● alice"), Some(w as usize - side + 1));
        assert!(alice.contains("owner"));
        assert!(s.iter().any(|l| l.contains("○ bob")), "{all}");
        // Status line above the input line, with the connection and the error.
        let status = &s[h as usize - 2];
        assert!(status.contains("● connected as alice"), "{status}");
        assert!(status.contains("no such user zed"), "{status}");
        assert!(s[h as usize - 1].starts_with("#lab> "), "{all}");
    }

    #[test]
    fn layout_at_80x24() {
        check_layout(80, 24);
    }

    #[test]
    fn layout_at_120x40() {
        check_layout(120, 40);
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = sample_app();
        app.input.insert_str("some text 日本語 🎉");
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 10), (79, 23)] {
            screen(&mut app, w, h);
        }
    }

    #[test]
    fn pending_lines_show_their_state() {
        let mut app = sample_app();
        let send = |app: &mut App, text: &str| {
            app.input.insert_str(text);
            app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter))
        };
        send(&mut app, "on its way");
        let s = screen(&mut app, 120, 40).join("\n");
        assert!(s.contains("on its way (sending…)"), "{s}");
        app.on_worker(Event::Disconnected { error: "gone".into() });
        send(&mut app, "later");
        app.on_worker(Event::SendFailed { local_id: 1, error: "too large".into() });
        let s = screen(&mut app, 120, 40).join("\n");
        assert!(s.contains("later (queued: offline)"), "{s}");
        assert!(s.contains("on its way (not sent: too large)"), "{s}");
    }

    #[test]
    fn scrollback_and_reconnecting_status() {
        let mut app = sample_app();
        let rows: Vec<HistoryRow> =
            (10..80).map(|i| row(i, "bob", HistoryKind::Message, &format!("message number {i}"))).collect();
        app.on_worker(Event::Rows { room: "lab".into(), rows, live: false });
        let s = screen(&mut app, 80, 24);
        assert!(s.iter().any(|l| l.contains("message number 79")));
        // PgUp: older lines, a hint in the title; far up is clamped to the top.
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::PageUp));
        let s = screen(&mut app, 80, 24);
        assert!(!s.iter().any(|l| l.contains("message number 79")));
        assert!(s[0].contains("lines up"));
        for _ in 0..50 {
            app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::PageUp));
        }
        let s = screen(&mut app, 80, 24);
        assert!(s.iter().any(|l| l.contains("* bob joined #lab")), "{}", s.join("\n"));
        for _ in 0..60 {
            app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::PageDown));
        }
        let s = screen(&mut app, 80, 24);
        assert!(s.iter().any(|l| l.contains("message number 79")));

        app.on_worker(Event::Disconnected { error: "the server closed the connection".into() });
        let s = screen(&mut app, 80, 24);
        assert!(s[22].contains("reconnecting: the server closed the connection"), "{}", s[22]);
    }

    /// Issue 14 review: a fresh device (`login bob`, then `chat lab`) has
    /// no room until its catch-up has joined them; meanwhile the pane says
    /// so, not "You are in no room yet".
    #[test]
    fn a_device_still_joining_its_rooms_says_it_is_catching_up() {
        let me = AccountInfo { username: "bob".into(), display_name: "bob".into(), device_id: 2 };
        let mut app = App::new(me.clone(), Some("lab".into()), true);
        app.on_worker(Event::CatchingUp(me.clone()));
        let s = screen(&mut app, 80, 24).join("\n");
        assert!(s.contains("Catching up: joining your rooms"), "{s}");
        assert!(!s.contains("no room yet"), "{s}");
        // Offline before the rooms were ever listed: not "no room" either.
        app.on_worker(Event::Disconnected { error: "gone".into() });
        let s = screen(&mut app, 80, 24).join("\n");
        assert!(s.contains("Not connected: your rooms show once"), "{s}");
        assert!(s.contains("┌ Members … "), "not 0/0 while never listed: {s}");
        // Listed, and really in none: now the hint.
        app.on_worker(Event::CatchingUp(me.clone()));
        app.on_worker(Event::Rooms { rooms: vec![], requested: false });
        app.on_worker(Event::Connected(me));
        let s = screen(&mut app, 80, 24).join("\n");
        assert!(s.contains("You are in no room yet."), "{s}");
    }

    /// A session that stopped for good says why on the status line, and a
    /// line typed then is refused rather than shown as sending.
    #[test]
    fn a_stopped_session_says_why_and_refuses_lines() {
        let mut app = sample_app();
        app.on_worker(Event::Stopped { error: "cannot reconnect: certificate changed".into() });
        app.input.insert_str("hello?");
        let sent = app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter));
        assert!(sent.is_empty(), "{sent:?}");
        let s = screen(&mut app, 120, 40);
        let status = &s[38];
        assert!(status.contains("■ stopped: cannot reconnect: certificate changed"), "{status}");
        assert!(status.contains("not sent: the session has stopped"), "{status}");
        assert!(!s.join("\n").contains("hello? (sending"), "{}", s.join("\n"));
    }

    #[test]
    fn senders_who_share_a_display_name_show_their_usernames() {
        let me = AccountInfo { username: "alice".into(), display_name: "Sam".into(), device_id: 1 };
        let mut app = App::new(me, Some("lab".into()), true);
        let summary = RoomSummary {
            name: "lab".into(),
            group_id: vec![],
            role: Role::Owner,
            members: 4,
            head_seq: Seq::FIRST,
            joined_seq: Seq::FIRST,
        };
        app.on_worker(Event::Rooms { rooms: vec![summary], requested: false });
        let named = |user: &str, display: &str| MemberInfo {
            username: user.into(),
            display_name: display.into(),
            role: Role::Member,
            online: true,
        };
        let members =
            vec![named("alice", "Sam"), named("bob", "Sam"), named("carol", "carol"), named("dan", "dan")];
        app.on_worker(Event::Members { room: "lab".into(), members, requested: false });
        let said = |seq, user: &str, display: &str| HistoryRow {
            sender_display: display.into(),
            ..row(seq, user, HistoryKind::Message, &format!("from {user}"))
        };
        let rows = vec![
            said(2, "alice", "Sam"),
            said(3, "bob", "Sam"),
            said(4, "carol", "carol"),
            said(5, "dan", "carol\u{202E}"),
        ];
        app.on_worker(Event::Rows { room: "lab".into(), rows, live: false });
        app.input.insert_str("mine");
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter));
        let s = screen(&mut app, 120, 40).join("\n");
        assert!(s.contains("Sam (alice): from alice"), "{s}");
        assert!(s.contains("Sam (bob): from bob"), "{s}");
        assert!(s.contains(" carol: from carol"), "{s}");
        // A name stored before the rules, hiding a character: cleaned, and
        // not shown alone.
        assert!(s.contains("carol\u{FFFD} (dan): from dan"), "{s}");
        assert!(s.contains("Sam (alice): mine (sending…)"), "{s}");
        // A long display name is cut, never the username.
        let long = HistoryRow {
            sender_display: "Bartholomew the Magnificent".into(),
            ..row(6, "bob", HistoryKind::Message, "hi")
        };
        app.on_worker(Event::Rows { room: "lab".into(), rows: vec![long], live: true });
        let s = screen(&mut app, 120, 40).join("\n");
        assert!(s.contains("Bartholomew the… (bob): hi"), "{s}");
    }
}
