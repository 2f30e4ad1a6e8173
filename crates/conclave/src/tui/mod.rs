//! `conclave chat`: the full-screen terminal client.
//!
//! Concurrency design (habit 11): the UI task runs one `select!` over
//! terminal events (crossterm's `EventStream`), events from the client
//! library's session, and a slow tick; it redraws only after something
//! changed. The session ([`conclave_client::live`], on a thread of its own)
//! owns the `Chat`, does every network and MLS operation and stays
//! connected; the two talk over two unbounded channels, so the UI never
//! waits on the network. The state and its reducer live in [`app`],
//! drawing in [`render`], the line editor in [`input`], the slash commands
//! in [`command`].
//!
//! The terminal is put back as it was (raw mode off, main screen, no mouse
//! capture, no bracketed paste) when the loop ends for any reason, on
//! SIGTERM/SIGHUP, and by a panic hook.

pub mod app;
pub mod command;
pub mod input;
pub mod render;

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

use conclave_client::live::{LiveEvent, LiveHandle, Options, Session};

use crate::cli::{ChatArgs, GlobalOpts};

/// How often the UI wakes without input (to expire old status lines).
const TICK: Duration = Duration::from_millis(500);

/// How long quitting waits at most for the session to stop, after the
/// terminal is restored. The session stops at its next `await` and then
/// puts the messages it had not sent yet in the on-disk queue, which takes
/// milliseconds; the bound only matters if it is stuck in CPU work (a long
/// catch-up), where exiting sooner could lose a line just typed.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// Runs `conclave chat [ROOM]`.
pub async fn run(opts: &GlobalOpts, args: &ChatArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`conclave chat` needs a terminal; in scripts use `conclave send` and `conclave tail`");
    }
    // Connect before taking over the terminal, so a first-contact question
    // or a failure is an ordinary prompt or one line on stderr. Catching up
    // is the session's, with the screen up. A server that cannot be reached
    // now is the session's too: it starts offline and keeps trying.
    let (chat, dialer, offline) = crate::rooms::connect_chat_or_offline(opts).await?;
    let me = chat.account().clone();
    let (session, mut events) = match offline {
        None => Session::new(dialer, chat, Options::default()),
        Some(error) => Session::offline(dialer, chat, Options::default(), error),
    };
    let handle = session.spawn().context("cannot start the client session")?;

    let mut app = app::App::new(me, args.room.clone(), !args.no_bell);
    let result = {
        let mut term = Screen::enter()?;
        event_loop(&mut term, &mut app, &handle, &mut events).await
        // `term` is dropped here: the terminal is restored.
    };
    if !handle.shutdown(QUIT_GRACE).await {
        tracing::warn!("the client session did not stop in time");
    }
    result?;
    // Said on the screen already; said again where it stays readable.
    if let app::Conn::Stopped { error } = &app.conn {
        bail!("{error}");
    }
    Ok(())
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
    session: &LiveHandle,
    events: &mut mpsc::UnboundedReceiver<LiveEvent>,
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
    // After `LiveEvent::Stopped` the session is gone, and the screen stays
    // up (history readable, the reason on the status line) until /quit.
    let mut session_gone = false;
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
                    for command in app.on_terminal(event) {
                        if !session.send(command) && !session_gone {
                            bail!("the client session stopped");
                        }
                    }
                    dirty = true;
                }
                Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                None => return Ok(()),
            },
            event = events.recv(), if !session_gone => {
                let Some(event) = event else {
                    if matches!(app.conn, app::Conn::Stopped { .. }) {
                        session_gone = true;
                        continue;
                    }
                    bail!("the client session stopped")
                };
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
