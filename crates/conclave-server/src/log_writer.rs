//! The log writer: one thread that applies every durable room change, many
//! at a time, in one SQLite transaction (group commit).
//!
//! Room actors send jobs (lists of [`WriteOp`]s) over a bounded channel and
//! await the result. The thread takes the first job, gathers whatever else is
//! already queued (up to [`MAX_BATCH`]), writes them all in one transaction
//! with one fsync, and answers each job. Under load, batches grow by
//! themselves: durability costs one fsync per batch, not per message.

use std::sync::Arc;

use conclave_proto::{ErrorBody, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError, WriteOp};

/// Jobs written in one transaction at most.
pub const MAX_BATCH: usize = 1024;

/// Jobs queued before senders wait.
const QUEUE: usize = 4096;

struct Job {
    ops: Vec<WriteOp>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle room actors write through.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Job>,
}

impl LogWriter {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn spawn(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new().name("conclave-log-writer".into()).spawn(move || {
            let mut jobs: Vec<Job> = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                jobs.push(first);
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let ops: Vec<Vec<WriteOp>> = jobs.iter_mut().map(|j| std::mem::take(&mut j.ops)).collect();
                let results = store.write_batch(&ops);
                tracing::trace!(jobs = jobs.len(), "log batch written");
                for (job, result) in jobs.drain(..).zip(results) {
                    let _ = job.done.send(result);
                }
            }
        })?;
        Ok(Self { tx })
    }

    /// Writes one job durably; returns once it is on disk.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), ErrorBody> {
        self.submit(ops).await?.await
    }

    /// Queues one job and returns what to await for its result: jobs are
    /// written in the order they were submitted, so a room can prepare its
    /// next batch while this one is on its way to disk.
    pub async fn submit(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<impl std::future::Future<Output = Result<(), ErrorBody>> + Send + 'static, ErrorBody> {
        let (done, result) = oneshot::channel();
        if self.tx.send(Job { ops, done }).await.is_err() {
            tracing::error!("log writer is gone");
            return Err(failed());
        }
        Ok(async move { outcome(result.await) })
    }
}

fn failed() -> ErrorBody {
    ErrorBody::new(ErrorCode::INTERNAL, "internal server error; the server log has details")
}

fn outcome(result: Result<Result<(), StoreError>, oneshot::error::RecvError>) -> Result<(), ErrorBody> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "log write failed");
            Err(failed())
        }
        Err(_) => {
            tracing::error!("log writer dropped a job");
            Err(failed())
        }
    }
}
