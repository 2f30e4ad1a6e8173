//! The input line: a small line editor (insert, delete, cursor moves by
//! character, word and line ends), its history (Up/Down), and the display
//! columns of the cursor so wide characters and emoji stay aligned.
//!
//! Text may hold newlines (a multi-line paste is one message); they are
//! shown as `↵` and sent as they are.

use unicode_width::UnicodeWidthChar;

/// Lines kept in the input history.
const HISTORY_MAX: usize = 500;

/// What stands for a newline on the one-line input.
pub const NEWLINE_MARK: char = '↵';

/// The editor's state.
#[derive(Debug, Default, Clone)]
pub struct Input {
    /// The text, as characters (the cursor indexes this).
    chars: Vec<char>,
    /// The cursor, 0..=chars.len().
    cursor: usize,
    /// Lines submitted, oldest first.
    history: Vec<String>,
    /// While browsing history: the index shown, and the draft set aside.
    browsing: Option<(usize, String)>,
}

/// The display width of one character (control characters and newlines are
/// shown as one column).
pub fn char_width(c: char) -> usize {
    if c == '\n' || c.is_control() {
        1
    } else {
        c.width().unwrap_or(0)
    }
}

impl Input {
    /// The text.
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Whether the line is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The cursor as a character index.
    #[cfg(test)]
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The cursor's display column from the start of the text.
    pub fn cursor_column(&self) -> usize {
        self.chars[..self.cursor].iter().map(|c| char_width(*c)).sum()
    }

    /// Inserts a character at the cursor.
    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// Inserts text at the cursor (a paste): `\r\n` and `\r` become `\n`,
    /// other control characters except tabs (made spaces) are dropped.
    pub fn insert_str(&mut self, s: &str) {
        let normalized = s.replace("\r\n", "\n").replace('\r', "\n");
        for c in normalized.chars() {
            match c {
                '\n' => self.insert('\n'),
                '\t' => self.insert(' '),
                c if c.is_control() => {}
                c => self.insert(c),
            }
        }
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
    }

    /// Moves one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Moves one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
    }

    /// Moves to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves to the end.
    pub fn end(&mut self) {
        self.cursor = self.chars.len();
    }

    /// Moves to the start of the previous word.
    pub fn word_left(&mut self) {
        while self.cursor > 0 && self.chars[self.cursor - 1].is_whitespace() {
            self.cursor -= 1;
        }
        while self.cursor > 0 && !self.chars[self.cursor - 1].is_whitespace() {
            self.cursor -= 1;
        }
    }

    /// Moves past the end of the next word.
    pub fn word_right(&mut self) {
        let n = self.chars.len();
        while self.cursor < n && self.chars[self.cursor].is_whitespace() {
            self.cursor += 1;
        }
        while self.cursor < n && !self.chars[self.cursor].is_whitespace() {
            self.cursor += 1;
        }
    }

    /// Deletes the word before the cursor (Ctrl+W).
    pub fn delete_word(&mut self) {
        let end = self.cursor;
        self.word_left();
        self.chars.drain(self.cursor..end);
    }

    /// Deletes from the start to the cursor (Ctrl+U).
    pub fn kill_to_start(&mut self) {
        self.chars.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Deletes from the cursor to the end (Ctrl+K).
    pub fn kill_to_end(&mut self) {
        self.chars.truncate(self.cursor);
    }

    /// Takes the line for sending: clears it and records it in the history.
    pub fn submit(&mut self) -> String {
        let text = self.text();
        self.chars.clear();
        self.cursor = 0;
        self.browsing = None;
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            self.history.push(text.clone());
            if self.history.len() > HISTORY_MAX {
                self.history.remove(0);
            }
        }
        text
    }

    /// Shows the previous history line (Up); the draft is kept for Down.
    pub fn history_up(&mut self) {
        let next = match &self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.browsing = Some((self.history.len() - 1, self.text()));
                self.history.len() - 1
            }
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
        };
        if let Some((i, _)) = &mut self.browsing {
            *i = next;
        }
        self.set(self.history[next].clone());
    }

    /// Shows the next history line, or the draft after the newest (Down).
    pub fn history_down(&mut self) {
        let Some((i, draft)) = self.browsing.take() else { return };
        if i + 1 < self.history.len() {
            self.browsing = Some((i + 1, draft));
            self.set(self.history[i + 1].clone());
        } else {
            self.set(draft);
        }
    }

    fn set(&mut self, text: String) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
    }

    /// What to show in `width` columns so the cursor is visible: the text
    /// (newlines as [`NEWLINE_MARK`]) and the cursor's column within it.
    pub fn view(&self, width: usize) -> (String, usize) {
        let width = width.max(2);
        let col = self.cursor_column();
        // Scroll so the cursor sits at most at the last column.
        let mut skip_cols = col.saturating_sub(width - 1);
        let mut start = 0;
        while skip_cols > 0 && start < self.chars.len() {
            let w = char_width(self.chars[start]);
            start += 1;
            skip_cols = skip_cols.saturating_sub(w);
        }
        let shown_before: usize = self.chars[..start].iter().map(|c| char_width(*c)).sum();
        let mut out = String::new();
        let mut used = 0;
        for &c in &self.chars[start..] {
            let w = char_width(c);
            if used + w > width {
                break;
            }
            out.push(match c {
                '\n' => NEWLINE_MARK,
                c if c.is_control() => ' ',
                c => c,
            });
            used += w;
        }
        (out, col - shown_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Input {
        let mut i = Input::default();
        for c in s.chars() {
            i.insert(c);
        }
        i
    }

    #[test]
    fn insert_and_delete() {
        let mut i = typed("helo");
        i.left();
        i.insert('l');
        assert_eq!(i.text(), "hello");
        assert_eq!(i.cursor(), 4);
        i.backspace();
        assert_eq!(i.text(), "helo");
        i.home();
        i.backspace();
        assert_eq!(i.text(), "helo", "backspace at the start does nothing");
        i.delete();
        assert_eq!(i.text(), "elo");
        i.end();
        i.delete();
        assert_eq!(i.text(), "elo", "delete at the end does nothing");
        i.right();
        assert_eq!(i.cursor(), 3);
    }

    #[test]
    fn cursor_moves_over_wide_characters_by_whole_characters() {
        // 日本 are two columns each, 🎉 is two, é is one.
        let mut i = typed("a日本🎉é");
        assert_eq!(i.cursor(), 5);
        assert_eq!(i.cursor_column(), 1 + 2 + 2 + 2 + 1);
        i.left();
        assert_eq!(i.cursor_column(), 7);
        i.left();
        assert_eq!(i.cursor_column(), 5);
        i.backspace();
        assert_eq!(i.text(), "a日🎉é");
        assert_eq!(i.cursor_column(), 3);
        i.insert('中');
        assert_eq!(i.text(), "a日中🎉é");
        assert_eq!(i.cursor_column(), 5);
    }

    #[test]
    fn words_and_kills() {
        let mut i = typed("one two  three");
        i.word_left();
        assert_eq!(i.cursor(), 9);
        i.word_left();
        assert_eq!(i.cursor(), 4);
        i.word_right();
        assert_eq!(i.cursor(), 7);
        i.delete_word();
        assert_eq!(i.text(), "one   three");
        i.kill_to_end();
        assert_eq!(i.text(), "one ");
        i.kill_to_start();
        assert_eq!(i.text(), "");
    }

    #[test]
    fn paste_keeps_newlines_and_drops_controls() {
        let mut i = typed(">");
        i.insert_str("line one\r\nline two\rthree\tx\u{1b}[");
        assert_eq!(i.text(), ">line one\nline two\nthree x[");
        let (shown, _) = i.view(80);
        assert_eq!(shown, ">line one↵line two↵three x[");
    }

    #[test]
    fn history_up_down_keeps_the_draft() {
        let mut i = typed("first");
        assert_eq!(i.submit(), "first");
        for c in "second".chars() {
            i.insert(c);
        }
        i.submit();
        i.insert_str("draft");
        i.history_up();
        assert_eq!(i.text(), "second");
        i.history_up();
        assert_eq!(i.text(), "first");
        i.history_up();
        assert_eq!(i.text(), "first", "stops at the oldest");
        i.history_down();
        assert_eq!(i.text(), "second");
        i.history_down();
        assert_eq!(i.text(), "draft");
        i.history_down();
        assert_eq!(i.text(), "draft");
        // Empty and repeated lines are not recorded.
        i.submit();
        i.submit();
        i.insert_str("draft");
        i.submit();
        i.history_up();
        i.history_up();
        assert_eq!(i.text(), "second");
    }

    #[test]
    fn view_scrolls_to_keep_the_cursor_visible() {
        let i = typed("abcdefghij");
        assert_eq!(i.view(20), ("abcdefghij".to_owned(), 10));
        let (shown, col) = i.view(5);
        assert_eq!((shown.as_str(), col), ("ghij", 4));
        // Wide characters: never half a character at the left edge.
        let i = typed("日本語テキスト");
        let (shown, col) = i.view(6);
        assert_eq!(shown, "スト");
        assert_eq!(col, 4);
        let mut i = typed("日本語");
        i.home();
        assert_eq!(i.view(4), ("日本".to_owned(), 0));
    }

    /// One editing step for the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(char),
        Paste(String),
        Backspace,
        Delete,
        Left,
        Right,
        Home,
        End,
        WordLeft,
        WordRight,
        DeleteWord,
        KillToStart,
        KillToEnd,
        Submit,
        Up,
        Down,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop_oneof![any::<char>(), proptest::sample::select(vec!['中', '🎉', '\u{301}', '\u{200D}', ' ', '\n', '\t', '\u{7}'])].prop_map(Op::Insert),
            1 => "\\PC{0,6}|[a\r\n\t中]{0,6}".prop_map(Op::Paste),
            8 => proptest::sample::select(vec![
                Op::Backspace, Op::Delete, Op::Left, Op::Right, Op::Home, Op::End, Op::WordLeft, Op::WordRight,
                Op::DeleteWord, Op::KillToStart, Op::KillToEnd, Op::Submit, Op::Up, Op::Down,
            ]),
        ]
    }

    proptest::proptest! {
        /// Any sequence of edits over any characters: no panic, the cursor
        /// stays in the text, and the view keeps it within the width.
        #[test]
        fn any_edits_keep_the_cursor_in_the_text(ops in proptest::collection::vec(op(), 0..60), width in 0usize..12) {
            let mut i = Input::default();
            for op in ops {
                match op {
                    Op::Insert(c) => i.insert(c),
                    Op::Paste(s) => i.insert_str(&s),
                    Op::Backspace => i.backspace(),
                    Op::Delete => i.delete(),
                    Op::Left => i.left(),
                    Op::Right => i.right(),
                    Op::Home => i.home(),
                    Op::End => i.end(),
                    Op::WordLeft => i.word_left(),
                    Op::WordRight => i.word_right(),
                    Op::DeleteWord => i.delete_word(),
                    Op::KillToStart => i.kill_to_start(),
                    Op::KillToEnd => i.kill_to_end(),
                    Op::Submit => {
                        i.submit();
                    }
                    Op::Up => i.history_up(),
                    Op::Down => i.history_down(),
                }
                proptest::prop_assert!(i.cursor() <= i.text().chars().count());
                let (shown, col) = i.view(width);
                proptest::prop_assert!(col <= width.max(2), "column {} of {}", col, width);
                proptest::prop_assert!(shown.chars().map(char_width).sum::<usize>() <= width.max(2));
            }
        }
    }
}
