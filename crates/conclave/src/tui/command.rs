//! Slash commands typed in the input line: one table of names, usages and
//! argument counts, parsed once into a [`Command`] (or a one-line error that
//! says what was expected).

use conclave_proto::Role;

/// A parsed slash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/create ROOM`: create a room and switch to it.
    Create(String),
    /// `/add USER…`: add users to the current room.
    Add(Vec<String>),
    /// `/remove USER…`: remove users from the current room.
    Remove(Vec<String>),
    /// `/leave [ROOM]`: leave the current (or the named) room.
    Leave(Option<String>),
    /// `/role USER admin|member`.
    Role {
        /// The member.
        user: String,
        /// The new role (never owner).
        role: Role,
    },
    /// `/nick NAME…`: change your display name.
    Nick(String),
    /// `/who`: list the current room's members.
    Who,
    /// `/rooms`: list your rooms.
    Rooms,
    /// `/switch ROOM|N`: go to a room by name or by its number in the list.
    Switch(String),
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
}

/// One command's name, usage and description: the help text and the
/// parser's error messages both come from here.
pub struct Spec {
    /// The name, without the slash.
    pub name: &'static str,
    /// How to call it.
    pub usage: &'static str,
    /// What it does.
    pub about: &'static str,
}

/// Every command, in the order `/help` lists them.
pub const COMMANDS: &[Spec] = &[
    Spec { name: "create", usage: "/create ROOM", about: "create a room (you own it) and switch to it" },
    Spec { name: "add", usage: "/add USER…", about: "add users to this room (owners and admins)" },
    Spec {
        name: "remove", usage: "/remove USER…", about: "remove users from this room (owners and admins)"
    },
    Spec { name: "leave", usage: "/leave [ROOM]", about: "leave this room (or ROOM)" },
    Spec { name: "role", usage: "/role USER admin|member", about: "change a member's role (the owner)" },
    Spec { name: "nick", usage: "/nick NAME", about: "change your display name" },
    Spec { name: "who", usage: "/who", about: "list this room's members" },
    Spec { name: "rooms", usage: "/rooms", about: "list your rooms" },
    Spec { name: "switch", usage: "/switch ROOM|N", about: "go to a room (also Alt+1..9, Ctrl+N/Ctrl+P)" },
    Spec { name: "help", usage: "/help", about: "this list" },
    Spec { name: "quit", usage: "/quit", about: "leave the chat (also Ctrl+C)" },
];

/// What an input line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message to send (a leading `//` stands for a literal `/`).
    Message(String),
    /// A command.
    Command(Command),
}

/// Parses a submitted line. `Err` is one line for the status area.
pub fn parse(line: &str) -> Result<Input, String> {
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Input::Message(format!("/{rest}")));
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Input::Message(line.to_owned()));
    };
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or("").to_ascii_lowercase();
    let args: Vec<String> = words.map(str::to_owned).collect();
    let Some(spec) = COMMANDS.iter().find(|c| c.name == name) else {
        return Err(if name.is_empty() {
            "a lone / is not a command; /help lists them (start a message with // to send a /)".to_owned()
        } else {
            format!("unknown command /{name}; /help lists them")
        });
    };
    let usage = || format!("usage: {}", spec.usage);
    let exactly = |n: usize| if args.len() == n { Ok(()) } else { Err(usage()) };
    let cmd = match spec.name {
        "create" => {
            exactly(1)?;
            Command::Create(bare(&args[0]))
        }
        "add" | "remove" => {
            if args.is_empty() {
                return Err(usage());
            }
            let users = args.iter().map(|u| u.trim_start_matches('@').to_owned()).collect();
            if spec.name == "add" {
                Command::Add(users)
            } else {
                Command::Remove(users)
            }
        }
        "leave" => match args.as_slice() {
            [] => Command::Leave(None),
            [room] => Command::Leave(Some(bare(room))),
            _ => return Err(usage()),
        },
        "role" => {
            exactly(2)?;
            let role = match Role::parse(&args[1].to_ascii_lowercase()) {
                Some(r @ (Role::Admin | Role::Member)) => r,
                _ => return Err(format!("the role must be admin or member, not {:?}; {}", args[1], usage())),
            };
            Command::Role { user: args[0].trim_start_matches('@').to_owned(), role }
        }
        "nick" => {
            if args.is_empty() {
                return Err(usage());
            }
            Command::Nick(args.join(" "))
        }
        "switch" => {
            exactly(1)?;
            Command::Switch(bare(&args[0]))
        }
        "who" | "rooms" | "help" | "quit" => {
            exactly(0)?;
            match spec.name {
                "who" => Command::Who,
                "rooms" => Command::Rooms,
                "help" => Command::Help,
                _ => Command::Quit,
            }
        }
        // The table and this match list the same names.
        _ => return Err(format!("unknown command /{name}; /help lists them")),
    };
    Ok(Input::Command(cmd))
}

fn bare(room: &str) -> String {
    room.strip_prefix('#').unwrap_or(room).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        match parse(line) {
            Ok(Input::Command(c)) => c,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse(line) {
            Err(e) => e,
            other => panic!("{line:?} should fail, gave {other:?}"),
        }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(cmd("/create lab"), Command::Create("lab".into()));
        assert_eq!(cmd("/create #lab"), Command::Create("lab".into()));
        assert_eq!(cmd("/add bob carol"), Command::Add(vec!["bob".into(), "carol".into()]));
        assert_eq!(cmd("/remove @bob"), Command::Remove(vec!["bob".into()]));
        assert_eq!(cmd("/leave"), Command::Leave(None));
        assert_eq!(cmd("/leave #lab"), Command::Leave(Some("lab".into())));
        assert_eq!(cmd("/role bob admin"), Command::Role { user: "bob".into(), role: Role::Admin });
        assert_eq!(cmd("/role bob Member"), Command::Role { user: "bob".into(), role: Role::Member });
        assert_eq!(cmd("/nick Bob the Builder"), Command::Nick("Bob the Builder".into()));
        assert_eq!(cmd("/who"), Command::Who);
        assert_eq!(cmd("/rooms"), Command::Rooms);
        assert_eq!(cmd("/switch #lab"), Command::Switch("lab".into()));
        assert_eq!(cmd("/switch 2"), Command::Switch("2".into()));
        assert_eq!(cmd("/help"), Command::Help);
        assert_eq!(cmd("/quit"), Command::Quit);
        assert_eq!(cmd("/QUIT"), Command::Quit);
    }

    #[test]
    fn messages_and_escaped_slashes() {
        assert_eq!(parse("hello").unwrap(), Input::Message("hello".into()));
        assert_eq!(parse("//etc/passwd is a file").unwrap(), Input::Message("/etc/passwd is a file".into()));
        assert_eq!(parse("a\nb").unwrap(), Input::Message("a\nb".into()));
    }

    #[test]
    fn wrong_arguments_say_what_was_expected() {
        assert_eq!(err("/create"), "usage: /create ROOM");
        assert_eq!(err("/create a b"), "usage: /create ROOM");
        assert_eq!(err("/add"), "usage: /add USER…");
        assert_eq!(err("/remove"), "usage: /remove USER…");
        assert_eq!(err("/leave a b"), "usage: /leave [ROOM]");
        assert_eq!(err("/role bob"), "usage: /role USER admin|member");
        assert!(err("/role bob owner").contains("admin or member"));
        assert!(err("/role bob king").contains("\"king\""));
        assert_eq!(err("/nick"), "usage: /nick NAME");
        assert_eq!(err("/who now"), "usage: /who");
        assert_eq!(err("/rooms x"), "usage: /rooms");
        assert_eq!(err("/switch"), "usage: /switch ROOM|N");
        assert_eq!(err("/help me"), "usage: /help");
        assert_eq!(err("/quit now"), "usage: /quit");
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(err("/frobnicate x"), "unknown command /frobnicate; /help lists them");
        assert!(err("/").contains("//"));
        assert!(err("/ ").contains("/help"));
    }

    #[test]
    fn every_listed_command_has_a_parser() {
        for spec in COMMANDS {
            let r = parse(&format!("/{}", spec.name));
            assert!(
                !matches!(&r, Err(e) if e.starts_with("unknown")),
                "/{} is listed but not parsed",
                spec.name
            );
        }
    }

    proptest::proptest! {
        /// Any line, commands with any (non-ASCII) arguments included: a
        /// message, a command, or a one-line error; never a panic.
        #[test]
        fn any_line_parses_or_says_why(
            line in "/?\\PC{0,30}|/(create|add|remove|leave|role|nick|who|rooms|switch|help|quit|ｑｕｉｔ)( \\PC{0,8}){0,3}",
        ) {
            match parse(&line) {
                Ok(Input::Message(text)) => proptest::prop_assert!(!line.starts_with('/') || (line.starts_with("//") && text.starts_with('/'))),
                Ok(Input::Command(_)) => proptest::prop_assert!(line.starts_with('/')),
                Err(e) => proptest::prop_assert!(!e.contains('\n') && !e.is_empty()),
            }
        }
    }
}
