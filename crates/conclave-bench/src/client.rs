//! Bench clients: TLS to the pinned server, `Hello`, then the device proves
//! itself (`Authenticate`) or registers — the same calls `conclave` makes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conclave_client::{connect_tls, Connection};
use conclave_proto::{AccountInfo, Password};
use tokio::sync::Semaphore;

use crate::target::{Account, Target, BENCH_PASSWORD};

/// An authenticated connection and how long it took to set up.
pub struct Connected {
    /// The connection.
    pub conn: Connection,
    /// The account as the server sees it.
    pub account: AccountInfo,
    /// TCP + TLS + Hello + Authenticate.
    pub took: Duration,
}

/// Connects and authenticates one account's device.
pub async fn connect(target: &Target, account: &Account) -> Result<Connected> {
    let start = Instant::now();
    let conn = connect_tls(&target.addr, Some(&target.fingerprint)).await?.hello().await?;
    let info = conn.authenticate(&account.device).await?;
    Ok(Connected { conn, account: info, took: start.elapsed() })
}

/// Connects every account, at most `concurrency` attempts in flight, in
/// account order. Fails on the first failure, naming the account.
pub async fn connect_all(
    target: &Arc<Target>,
    accounts: &Arc<Vec<crate::target::Account>>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    what: &str,
) -> Result<Vec<Connected>> {
    let (target, accounts) = (target.clone(), accounts.clone());
    bounded(range, concurrency, what, move |i| {
        let (target, accounts) = (target.clone(), accounts.clone());
        async move {
            connect(&target, &accounts[i])
                .await
                .with_context(|| format!("connecting {}", accounts[i].username))
        }
    })
    .await
}

/// Runs `job(i)` for every `i` in `range`, at most `concurrency` at once,
/// with a progress bar; the results in order, or the first failure.
pub async fn bounded<T, F, Fut>(
    range: std::ops::Range<usize>,
    concurrency: usize,
    what: &str,
    job: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let bar = crate::progress(range.len() as u64, what);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let (permits, bar, work) = (permits.clone(), bar.clone(), job(i));
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let out = work.await?;
            bar.inc(1);
            anyhow::Ok(out)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Registers the accounts on an external server through the protocol (each
/// costs the server one Argon2 hash).
pub async fn register_all(target: &Target, accounts: &[Account]) -> Result<()> {
    let bar = crate::progress(accounts.len() as u64, "registering accounts");
    for a in accounts {
        let conn = connect_tls(&target.addr, Some(&target.fingerprint)).await?.hello().await?;
        conn.register(&a.device, &a.username, Password::new(BENCH_PASSWORD), None, None)
            .await
            .with_context(|| format!("registering {} on {}", a.username, target.addr))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
