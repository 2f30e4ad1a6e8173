//! The WAL checkpointer of the SQLite store.
//!
//! The log writer's commits never checkpoint the WAL themselves: copying a
//! thousand pages into the database file and waiting for the disk twice took
//! a whole group commit a few milliseconds every hundred or so commits, which
//! every recipient of that batch waited for. A thread of its own checkpoints
//! instead, beside the writer (SQLite's PASSIVE mode blocks neither writers
//! nor readers); once it has caught up, the next commit starts the WAL from
//! its beginning again, so the file stops growing and commits overwrite
//! blocks already on disk (cheaper to sync than appended ones). Woken, it
//! waits for a lull in the commits and runs at the lowest priority: on a
//! server with one busy core, a checkpoint started at once, or at normal
//! priority, was seen running into a batch's fan-out.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::rows::db;
use crate::store::StoreError;

/// WAL pages after which a log commit asks the checkpointer to run.
pub(super) const CHECKPOINT_PAGES: i32 = 500;

/// WAL pages after which the log writer checkpoints itself, between two
/// batches: the checkpointer has not caught up (writes never paused, or the
/// CPU was never free for it), and the WAL (and every reader's walk through
/// it) must not grow without bound. 16 MiB: four times SQLite's default, so
/// such a stall is rarer than SQLite's own and about four times as long.
pub(super) const CHECKPOINT_INLINE_PAGES: i32 = 4_000;

/// A woken checkpointer first waits until this long has passed with no log
/// commit: a commit is followed by its fan-out, which wants the CPU more
/// than the checkpoint does.
const CHECKPOINT_LULL: Duration = Duration::from_millis(10);

/// ...but no longer than this: under steady load there is no lull, and the
/// WAL must not grow towards [`CHECKPOINT_INLINE_PAGES`] meanwhile (50 ms
/// of the log writer's fastest appends are a few hundred pages).
const CHECKPOINT_MAX_WAIT: Duration = Duration::from_millis(50);

thread_local! {
    /// Pages in the WAL after this thread's last commit on a connection with
    /// [`count_wal_pages`] as its WAL hook.
    pub(super) static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

pub(super) fn count_wal_pages(_: &rusqlite::hooks::Wal, pages: std::os::raw::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The checkpointer thread and what wakes it. Dropping it waits for the
/// thread to close its connection, so a dropped store has no connection
/// left open (a file renamed or reopened right after sees all it wrote).
pub(super) struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// WAL pages at the last wake-up.
    woken_at: AtomicI32,
    /// Log commits so far; the thread watches it for a lull.
    commits: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts the thread, with its own connection.
    pub(super) fn start(conn: Connection) -> Result<Self, StoreError> {
        let (wake, woken) = sync_channel(1);
        let commits = Arc::new(AtomicU64::new(0));
        let watched = commits.clone();
        let thread = std::thread::Builder::new()
            .name("conclave-checkpoint".into())
            .spawn(move || checkpoint_when_woken(&conn, &woken, &watched))
            .map_err(|e| StoreError::Database(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self { wake: Some(wake), thread: Some(thread), woken_at: AtomicI32::new(0), commits })
    }

    /// A log commit left `pages` in the WAL. Wakes the thread once per
    /// `every` pages of new WAL, not at every commit: each checkpoint costs
    /// an fsync of the database file and CPU that the deliveries want.
    pub(super) fn committed(&self, pages: i32, every: i32) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.wake_per(pages, every);
    }

    fn wake_per(&self, pages: i32, every: i32) {
        let last = self.woken_at.load(Ordering::Relaxed);
        if pages < every {
            // The WAL started over.
            self.woken_at.store(0, Ordering::Relaxed);
            return;
        }
        if pages < last + every && pages >= last {
            return;
        }
        self.woken_at.store(pages, Ordering::Relaxed);
        // Full means it is already woken; it will see these pages too.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One PASSIVE checkpoint: (pages in the WAL, pages now copied into the
/// database). Another checkpoint already running makes this one a no-op.
pub(super) fn checkpoint(conn: &Connection) -> Result<(i64, i64), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?))).map_err(db)
}

/// The checkpointer's loop: one checkpoint per wake-up, until the store is
/// dropped. A failure is logged and retried at the next wake-up; meanwhile
/// the log writer's inline checkpoint bounds the WAL.
fn checkpoint_when_woken(conn: &Connection, wake: &Receiver<()>, commits: &AtomicU64) {
    run_at_lowest_priority();
    while wake.recv().is_ok() {
        wait_for_lull(commits, CHECKPOINT_LULL, CHECKPOINT_MAX_WAIT, std::thread::sleep);
        match checkpoint(conn) {
            Ok((log, done)) => tracing::trace!(log, done, "WAL checkpointed"),
            Err(e) => tracing::warn!(error = %e, "background checkpoint failed; retrying at the next commit"),
        }
    }
}

/// Sleeps (with `sleep`) in steps of `lull` until one passes with no new
/// commit counted in `commits`, or until `max` has been slept. Returns
/// whether the lull came.
fn wait_for_lull(
    commits: &AtomicU64,
    lull: Duration,
    max: Duration,
    mut sleep: impl FnMut(Duration),
) -> bool {
    let mut slept = Duration::ZERO;
    loop {
        let before = commits.load(Ordering::Relaxed);
        sleep(lull);
        slept += lull;
        if commits.load(Ordering::Relaxed) == before {
            return true;
        }
        if slept >= max {
            return false;
        }
    }
}

/// Makes the calling thread the last to get a contended CPU (nice 19): a
/// checkpoint is never urgent, the deliveries waiting for that CPU are. (On
/// one core, a checkpoint at normal priority ran ahead of a batch's fan-out.)
fn run_at_lowest_priority() {
    #[cfg(target_os = "linux")]
    // Linux keeps the nice value per thread: this thread's id changes only it.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(error = %e, "the checkpointer runs at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpointer_is_woken_once_per_500_pages_and_again_after_the_wal_starts_over() {
        let (tx, rx) = sync_channel(100);
        let c = Checkpointer {
            wake: Some(tx),
            thread: None,
            woken_at: AtomicI32::new(0),
            commits: Arc::default(),
        };
        let mut wakes = Vec::new();
        for pages in [9, 400, 499, 500, 510, 999, 1000, 1200, 1499, 1500, 12, 300, 520, 530, 1020] {
            c.wake_per(pages, 500);
            if rx.try_recv().is_ok() {
                wakes.push(pages);
            }
        }
        assert_eq!(wakes, [500, 1000, 1500, 520, 1020]);
    }

    #[test]
    fn the_checkpointer_waits_for_a_lull_in_the_commits_but_not_for_ever() {
        let commits = AtomicU64::new(0);
        let ms = Duration::from_millis;
        // No commit while it waits: one step.
        let mut steps = 0;
        assert!(wait_for_lull(&commits, ms(10), ms(50), |_| steps += 1));
        assert_eq!(steps, 1);
        // Commits during the first two steps, none in the third.
        let mut steps = 0;
        let lull = wait_for_lull(&commits, ms(10), ms(50), |_| {
            steps += 1;
            if steps <= 2 {
                commits.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(lull);
        assert_eq!(steps, 3);
        // Commits never stop: it gives up after 50 ms of steps.
        let mut steps = 0;
        let lull = wait_for_lull(&commits, ms(10), ms(50), |_| {
            steps += 1;
            commits.fetch_add(1, Ordering::Relaxed);
        });
        assert!(!lull);
        assert_eq!(steps, 5);
    }
}
