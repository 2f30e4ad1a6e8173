//! `conclave chat`: the full-screen terminal client.
//!
//! Concurrency design (habit 11): the UI task runs one `select!` over
//! terminal events (crossterm's `EventStream`), events from the client task,
//! and a slow tick; it redraws only after something changed. The client task
//! ([`worker`]) owns the `Chat` and does every network and MLS operation;
//! the two talk over two unbounded channels, so the UI never waits on the
//! network. The state and its reducer live in [`app`], drawing in
//! [`render`], the line editor in [`input`], the slash commands in
//! [`command`].
//!
//! The terminal is put back as it was (raw mode off, main screen, no mouse
//! capture, no bracketed paste) when the loop ends for any reason, on
//! SIGTERM/SIGHUP, and by a panic hook.

pub mod app;
pub mod command;
pub mod input;
pub mod render;
pub mod worker;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, EventStream,
};
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc;

use crate::cli::{ChatArgs, Cli, Command};

/// How often the UI wakes without input (to expire old status lines).
const TICK: Duration = Duration::from_millis(500);

/// How long quitting waits for the client task to finish what it is doing
/// (a message being sent), after the terminal is restored.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// Runs `conclave chat [ROOM]`.
pub async fn run(cli: &Cli, args: &ChatArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`conclave chat` needs a terminal; in scripts use `conclave send` and `conclave tail`");
    }
    // Connect before taking over the terminal, so a first-contact question
    // or a failure is an ordinary prompt or one line on stderr.
    let (chat, _) = crate::rooms::open_chat(cli).await?;
    let me = chat.account().clone();
    // What the client task needs to reconnect: the global options.
    let reconnect = Cli {
        profile: cli.profile.clone(),
        server: cli.server.clone(),
        fingerprint: cli.fingerprint.clone(),
        accept_new_server: cli.accept_new_server,
        command: Command::Whoami,
    };
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    // The `Chat` (SQLite inside) is `Send` but not `Sync`, so its futures
    // cannot move between a multi-threaded runtime's workers: the client
    // task gets a thread with a runtime of its own.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("conclave-client".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(worker::run(reconnect, chat, req_rx, ev_tx)),
                Err(e) => tracing::error!(error = %e, "cannot start the client task's runtime"),
            }
            let _ = done_tx.send(());
        })
        .context("cannot start the client task")?;

    let mut app = app::App::new(me, args.room.clone(), !args.no_bell);
    let result = {
        let mut term = Screen::enter()?;
        event_loop(&mut term, &mut app, &req_tx, &mut ev_rx).await
        // `term` is dropped here: the terminal is restored.
    };
    drop(req_tx);
    if tokio::time::timeout(QUIT_GRACE, done_rx).await.is_err() {
        tracing::warn!("the client task did not finish in time");
    }
    result
}

/// The terminal in chat mode; dropping it restores the terminal.
struct Screen {
    terminal: Terminal<CrosstermBackend<std::io::Stdout>>,
}

/// Puts the terminal back as it was. Safe to call more than once.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        let setup = || -> anyhow::Result<Screen> {
            enable_raw_mode().context("cannot put the terminal in raw mode")?;
            crossterm::execute!(
                std::io::stdout(),
                EnterAlternateScreen,
                EnableMouseCapture,
                EnableBracketedPaste
            )
            .context("cannot set up the terminal")?;
            let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
            Ok(Screen { terminal })
        };
        setup().inspect_err(|_| restore_terminal())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Ends on /quit or Ctrl+C (`Ok`), or when the terminal or the client task fails.
async fn event_loop(
    screen: &mut Screen,
    app: &mut app::App,
    requests: &mpsc::UnboundedSender<worker::Request>,
    events: &mut mpsc::UnboundedReceiver<worker::Event>,
) -> anyhow::Result<()> {
    let mut terminal_events = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    #[cfg(unix)]
    let mut term_signals = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
    );
    let mut dirty = true;
    loop {
        if app.quit {
            return Ok(());
        }
        if dirty {
            screen.terminal.draw(|f| render::draw(f, app)).context("cannot draw")?;
            dirty = false;
        }
        if app.take_bell() {
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|()| out.flush());
        }
        #[cfg(unix)]
        let signalled = async {
            tokio::select! {
                _ = term_signals.0.recv() => {}
                _ = term_signals.1.recv() => {}
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        tokio::select! {
            event = terminal_events.next() => match event {
                Some(Ok(event)) => {
                    for req in app.on_terminal(event) {
                        if requests.send(req).is_err() {
                            bail!("the client task stopped");
                        }
                    }
                    dirty = true;
                }
                Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                None => return Ok(()),
            },
            event = events.recv() => {
                let Some(event) = event else { bail!("the client task stopped") };
                app.on_worker(event);
                // A burst (catching up): apply it all, then draw once.
                while let Ok(event) = events.try_recv() {
                    app.on_worker(event);
                }
                dirty = true;
            }
            _ = tick.tick() => dirty |= app.on_tick(),
            () = signalled => return Ok(()),
        }
    }
}
