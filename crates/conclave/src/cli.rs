//! The command line: global options, subcommands, and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Conclave: self-hosted, end-to-end encrypted group chat.
#[derive(Debug, Parser)]
#[command(name = "conclave", version, about, propagate_version = true)]
pub struct Cli {
    /// The options every client command shares.
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// The global options: which profile, which server, and how to trust it.
/// Passed to the commands that connect; `serve` and `admin` ignore them.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Profile directory: this device's key, account and pinned servers.
    #[arg(long, global = true, env = "CONCLAVE_PROFILE", value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Server to use, HOST:PORT; remembered in the profile after it works once.
    #[arg(long, global = true, env = "CONCLAVE_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Trust the server on first contact only if its certificate has this fingerprint.
    #[arg(long, global = true, value_name = "SHA256:HEX")]
    pub fingerprint: Option<String>,
    /// Trust a server's certificate on first contact without asking. A changed
    /// certificate is refused all the same.
    #[arg(long, global = true)]
    pub accept_new_server: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Create an account on the server; this device becomes its first device.
    Register(RegisterArgs),
    /// Enrol this profile as a new device of an existing account.
    Login(LoginArgs),
    /// Show the account, device and server of this profile.
    Whoami,
    /// Forget a server's pinned certificate (to re-pin it deliberately).
    ForgetServer {
        /// The server, HOST:PORT; defaults to the profile's server.
        server: Option<String>,
    },
    /// Rooms: create, add and remove members, leave, list, roles.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Send a message to a room (the text as arguments, or from standard input).
    Send(SendArgs),
    /// Print a room's messages, decrypted; with --follow, then live.
    Tail(TailArgs),
    /// Chat in a full-screen terminal UI.
    Chat(ChatArgs),
    /// Server administration, run on the server machine.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a shell's completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Install, for example:\n  \
        conclave completions bash > ~/.local/share/bash-completion/completions/conclave\n  \
        conclave completions zsh > \"${fpath[1]}/_conclave\"\n  \
        conclave completions fish > ~/.config/fish/completions/conclave.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page conclave(1); with --dir, write one page per command there.
    Man {
        /// Write conclave.1 and a conclave-COMMAND.1 for each command into this directory
        /// (created if missing) instead of printing conclave(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How `conclave serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people: time, level, the connection's span, the message and its fields.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

/// `conclave serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of settings: each flag below is a key, its name with _ for - (see
    /// docs/conclave.toml). Flags and environment variables override it.
    #[arg(long, env = "CONCLAVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings (the config file, the flags, the environment), print them with
    /// where each came from, and exit without starting the server.
    #[arg(long)]
    pub check_config: bool,
    /// What --check-config prints (filled in by `parse`).
    #[arg(skip)]
    pub effective: String,
    /// The log's form on standard error: text for people, json (one object a line) for a
    /// log collector. Every line about a connection names it: conn=ID and peer=ADDR.
    #[arg(long, value_enum, env = "CONCLAVE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Data directory: database and self-signed certificate.
    #[arg(long, env = "CONCLAVE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address to listen on (repeatable, or comma-separated); default [::]:7667 and 0.0.0.0:7667.
    #[arg(long = "listen", env = "CONCLAVE_LISTEN", value_delimiter = ',', value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain (with --tls-key); default a self-signed one.
    #[arg(long, env = "CONCLAVE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert).
    #[arg(long, env = "CONCLAVE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, env = "CONCLAVE_MAX_FRAME_BYTES", default_value_t = conclave_proto::DEFAULT_MAX_FRAME_LEN, value_parser = clap::value_parser!(usize))]
    pub max_frame_bytes: usize,
    /// Who may create accounts.
    #[arg(long, env = "CONCLAVE_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,
    /// Most connections held at once.
    #[arg(long, env = "CONCLAVE_MAX_CONNECTIONS", default_value_t = conclave_server::config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a new connection has for TLS, Hello and authentication.
    #[arg(long, env = "CONCLAVE_HANDSHAKE_TIMEOUT", default_value_t = conclave_server::config::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), value_name = "SECS")]
    pub handshake_timeout: u64,
    /// Failed logins allowed per account and per address before backoff.
    #[arg(long, env = "CONCLAVE_FREE_LOGIN_FAILURES", default_value_t = conclave_server::config::DEFAULT_FREE_LOGIN_FAILURES)]
    pub free_login_failures: u32,
    /// Most connections from one source address.
    #[arg(long, env = "CONCLAVE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = conclave_server::config::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Most connections from one source address that have not signed in yet.
    #[arg(long, env = "CONCLAVE_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = conclave_server::config::DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS)]
    pub max_unauthenticated_per_address: usize,
    /// Seconds after which a connection that has not signed in may be
    /// closed to make room for a newer one from its address.
    #[arg(long, env = "CONCLAVE_UNAUTHENTICATED_GRACE", default_value_t = conclave_server::config::DEFAULT_UNAUTHENTICATED_GRACE.as_secs(), value_name = "SECS")]
    pub unauthenticated_grace: u64,
    /// Requests per second allowed on one connection (bursts of twice that).
    #[arg(long, env = "CONCLAVE_REQUESTS_PER_SECOND", default_value_t = conclave_server::config::DEFAULT_REQUESTS_PER_SECOND)]
    pub requests_per_second: u32,
    /// Messages per second allowed from one user (bursts of twice that).
    #[arg(long, env = "CONCLAVE_MESSAGES_PER_SECOND", default_value_t = conclave_server::config::DEFAULT_MESSAGES_PER_SECOND)]
    pub messages_per_second: u32,
    /// Rooms one user may be a member of.
    #[arg(long, env = "CONCLAVE_MAX_ROOMS_PER_USER", default_value_t = conclave_server::config::DEFAULT_MAX_ROOMS_PER_USER)]
    pub max_rooms_per_user: usize,
    /// Members one room may have.
    #[arg(long, env = "CONCLAVE_MAX_MEMBERS_PER_ROOM", default_value_t = conclave_server::config::DEFAULT_MAX_MEMBERS_PER_ROOM)]
    pub max_members_per_room: usize,
    /// Single-use KeyPackages kept per device.
    #[arg(long, env = "CONCLAVE_MAX_KEY_PACKAGES", default_value_t = conclave_server::config::DEFAULT_MAX_KEY_PACKAGES)]
    pub max_key_packages: u32,
    /// Frames queued for one connection before it counts as too slow.
    #[arg(long, env = "CONCLAVE_OUTBOUND_QUEUE", default_value_t = conclave_server::config::DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
    /// Bytes queued for one connection: past half, the server stops reading
    /// its requests until it reads its answers; events past all of it
    /// disconnect it as too slow.
    #[arg(long, env = "CONCLAVE_OUTBOUND_BYTES", default_value_t = conclave_server::config::DEFAULT_OUTBOUND_BYTES, value_name = "BYTES")]
    pub outbound_bytes: usize,
    /// Wait for the disk before acknowledging a write (on). `off` is for
    /// measuring what durability costs: a power failure can then lose
    /// acknowledged messages.
    #[arg(long, env = "CONCLAVE_FSYNC", value_enum, default_value_t = OnOff::On, value_name = "on|off")]
    pub fsync: OnOff,
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Registration policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Registration {
    /// Anyone who can reach the server may register.
    Open,
    /// Registration needs a single-use token from `conclave admin invite`.
    Token,
    /// Nobody may register.
    Closed,
}

/// `conclave register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Username: 1-32 of a-z 0-9 . _ -
    pub username: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Display name shown to others (default: the username).
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,
    /// Invitation token, for servers with --registration token.
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
}

/// `conclave login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The account's username.
    pub username: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `conclave room ...`.
#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Create a room; you become its owner.
    Create {
        /// Room name: 1-64 of a-z 0-9 . _ -
        room: String,
    },
    /// Add users (all their devices) to a room (owners and admins).
    Add {
        /// The room.
        room: String,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove users from a room (owners and admins).
    Remove {
        /// The room.
        room: String,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// List your rooms.
    List,
    /// List a room's members, their roles and who is online.
    Members {
        /// The room.
        room: String,
    },
    /// Make a member an admin or a plain member (the owner only).
    Role {
        /// The room.
        room: String,
        /// The member.
        user: String,
        /// admin or member.
        role: String,
    },
}

/// `conclave send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The room.
    pub room: String,
    /// The message; read from standard input if absent.
    pub text: Vec<String>,
}

/// `conclave tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The room.
    pub room: String,
    /// Only entries after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<conclave_proto::Seq>,
    /// Keep printing new messages as they arrive.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object a line: room, seq, time, kind, sender, text.
    #[arg(long)]
    pub json: bool,
}

/// `conclave chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The room to open first (default: the first of your rooms).
    pub room: Option<String>,
    /// Do not ring the terminal bell when a message mentions you.
    #[arg(long)]
    pub no_bell: bool,
    /// Write diagnostics (RUST_LOG levels, default warn) to this file; without
    /// it the chat screen shows none.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// `conclave admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print a single-use invitation token (for --registration token).
    Invite {
        /// The server's data directory.
        #[arg(long, env = "CONCLAVE_DATA", value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Users, devices, rooms, log entries and the database's size.
    Stats(AdminReportArgs),
    /// Every account: its devices, rooms, and when it last wrote to a room.
    Users(AdminReportArgs),
    /// Every room: members, log entries, epoch, and its last activity.
    Rooms(AdminReportArgs),
    /// Disable an account: its sessions close within a second, and it cannot sign in.
    Disable(AdminUserArgs),
    /// Enable a disabled account again.
    Enable(AdminUserArgs),
}

/// The options of the admin commands about one account.
#[derive(Debug, Args)]
pub struct AdminUserArgs {
    /// The account's username.
    pub user: String,
    /// The server's data directory.
    #[arg(long, env = "CONCLAVE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// The options of the admin reports.
#[derive(Debug, Args)]
pub struct AdminReportArgs {
    /// The server's data directory.
    #[arg(long, env = "CONCLAVE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The ids of [`GlobalOpts`]' arguments.
const CLIENT_OPTIONS: [&str; 4] = ["profile", "server", "fingerprint", "accept_new_server"];

/// The subcommands that ignore [`GlobalOpts`]: their help does not list them.
const NOT_CLIENT_COMMANDS: [&str; 4] = ["serve", "admin", "completions", "man"];

/// Parses the command line (exiting with clap's message on an error).
///
/// The client options are `global`, so that they work before or after any
/// client subcommand (`conclave --profile p tail lab`, `conclave tail lab
/// --profile p`). clap copies global arguments into every subcommand when
/// it builds the command tree; after that build, the copies under `serve`
/// and `admin` (which ignore them) are marked hidden, so their `--help`
/// lists only their own options. They are still accepted there, as before.
pub fn parse() -> Cli {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = command().try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
    let (matches, from_file) = crate::config_file::layer(&argv, matches).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Serve(args) = &mut cli.command {
        if args.check_config {
            args.effective = crate::config_file::effective(&matches, &from_file);
        }
    }
    cli
}

/// The command tree, built, with the client options hidden under `serve`
/// and `admin`.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    command.build();
    for sub in command.get_subcommands_mut().filter(|c| NOT_CLIENT_COMMANDS.contains(&c.get_name())) {
        hide_client_options(sub);
    }
    command
}

fn hide_client_options(command: &mut clap::Command) {
    let hidden = std::mem::take(command).mut_args(|a| {
        if CLIENT_OPTIONS.contains(&a.get_id().as_str()) {
            a.hide(true)
        } else {
            a
        }
    });
    *command = hidden;
    for sub in command.get_subcommands_mut() {
        hide_client_options(sub);
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Register(args) => crate::account::register(global, args).await,
        Command::Login(args) => crate::account::login(global, args).await,
        Command::Whoami => crate::account::whoami(global).await,
        Command::Room(cmd) => crate::rooms::room(global, cmd).await,
        Command::Send(args) => crate::rooms::send(global, args).await,
        Command::Tail(args) => crate::rooms::tail(global, args).await,
        Command::Chat(args) => crate::tui::run(global, args).await,
        Command::ForgetServer { server } => crate::connect::forget(global, server.as_deref()),
        Command::Admin(AdminCommand::Invite { data }) => crate::admin::invite(data.clone()),
        Command::Admin(AdminCommand::Stats(args)) => crate::admin::stats(args),
        Command::Admin(AdminCommand::Users(args)) => crate::admin::users(args),
        Command::Admin(AdminCommand::Rooms(args)) => crate::admin::rooms(args),
        Command::Admin(AdminCommand::Disable(args)) => crate::admin::set_disabled(args, true),
        Command::Admin(AdminCommand::Enable(args)) => crate::admin::set_disabled(args, false),
        Command::Completions { shell } => crate::package::completions(*shell),
        Command::Man { dir } => crate::package::man(dir.as_deref()),
    }
}

/// The default server data directory: `$XDG_DATA_HOME/conclave-server`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|d| d.join("conclave-server"))
        .ok_or_else(|| anyhow::anyhow!("cannot find a data directory for this user; pass --data DIR"))
}

/// The default profile directory: `$XDG_DATA_HOME/conclave`.
pub fn default_profile_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|d| d.join("conclave"))
        .ok_or_else(|| anyhow::anyhow!("cannot find a data directory for this user; pass --profile DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(path: &[&str]) -> String {
        let mut command = command();
        let mut at = &mut command;
        for name in path {
            at = at.find_subcommand_mut(name).unwrap();
        }
        at.render_long_help().to_string()
    }

    fn parse_from(args: &[&str]) -> Cli {
        let matches = command().try_get_matches_from(args).unwrap();
        Cli::from_arg_matches(&matches).unwrap()
    }

    /// Issue 14 review: `conclave serve --help` listed --profile, --server,
    /// --fingerprint and --accept-new-server, which serve ignores.
    #[test]
    fn serve_and_admin_help_do_not_list_the_client_options() {
        for path in [&["serve"][..], &["admin"], &["admin", "invite"]] {
            let text = help(path);
            for option in ["--profile", "--server", "--fingerprint", "--accept-new-server"] {
                assert!(!text.contains(option), "{path:?} --help lists {option}:\n{text}");
            }
        }
        assert!(help(&["serve"]).contains("--listen"));
        for path in [&["tail"][..], &["room", "list"], &["chat"], &["whoami"]] {
            let text = help(path);
            assert!(text.contains("--profile") && text.contains("--accept-new-server"), "{path:?}:\n{text}");
        }
        assert!(help(&[]).contains("--profile"), "the top level lists them");
    }

    #[test]
    fn client_options_work_before_or_after_a_subcommand() {
        for args in [
            &["conclave", "--profile", "p", "--server", "h:1", "tail", "lab"][..],
            &["conclave", "tail", "lab", "--profile", "p", "--server", "h:1"],
            &["conclave", "room", "--profile", "p", "list", "--server", "h:1"],
        ] {
            let cli = parse_from(args);
            assert_eq!(cli.global.profile.as_deref(), Some(std::path::Path::new("p")), "{args:?}");
            assert_eq!(cli.global.server.as_deref(), Some("h:1"), "{args:?}");
        }
        // Still accepted (and ignored) by serve, as before.
        let cli = parse_from(&["conclave", "serve", "--profile", "p"]);
        assert!(matches!(cli.command, Command::Serve(_)));
    }
}
