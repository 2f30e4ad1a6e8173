//! Standard output for the commands that print. A reader that goes away
//! (`conclave tail lab | head -1`) ends the command quietly and successfully,
//! as in ripgrep: the reader had all it wanted, which is no failure of the
//! command's. (`cat` and `git log` end the same way, killed by SIGPIPE; Rust
//! ignores SIGPIPE, so here the write fails with `EPIPE` instead.) Only a
//! closed standard output counts: a broken pipe elsewhere (a socket) is an
//! error as usual.

use std::io::{self, StdoutLock, Write};

/// Standard output, locked for one line or a batch of lines.
pub struct Out(StdoutLock<'static>);

/// Standard output; a write to a closed one fails with [`StdoutClosed`].
pub fn stdout() -> Out {
    Out(io::stdout().lock())
}

/// The error inside the `io::Error` of a write to a closed standard output.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed (its reader went away)")
    }
}

impl std::error::Error for StdoutClosed {}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` is (or was caused by) a write to a closed standard output.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<StdoutClosed>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// `println!` that returns the error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        ::std::io::Write::write_fmt(&mut $crate::output::stdout(), format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_counts() {
        let closed = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(is_stdout_closed(&closed.context("cannot print")));
        let socket = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_stdout_closed(&socket), "a broken pipe elsewhere is an error");
        let other = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::PermissionDenied)));
        assert!(!is_stdout_closed(&other));
    }
}
