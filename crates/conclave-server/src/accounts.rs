//! Accounts the operator disabled (`conclave admin disable`): the admin
//! command marks them in the database, beside the running server; the server
//! reads the marks every [`DISABLED_POLL`], closes the accounts' sessions with
//! `account_disabled`, and refuses their sign-ins until they are enabled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::{ErrorBody, ErrorCode, ServerFrame};
use tokio_util::sync::CancellationToken;

use crate::store::UserId;
use crate::Shared;

/// How often the server reads which accounts are disabled: the longest a
/// disabled account's sessions stay open.
pub const DISABLED_POLL: Duration = Duration::from_secs(1);

/// What a disabled account is told, at sign-in and when its sessions close.
pub fn disabled_error() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::ACCOUNT_DISABLED,
        "this account is disabled by the server's operator; ask them to enable it again",
    )
}

/// Reads the disabled accounts every [`DISABLED_POLL`] until `stop`, and
/// closes the sessions of each account newly disabled.
pub async fn watch_disabled(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DISABLED_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store = shared.store.clone();
        let now: HashSet<UserId> = match crate::blocking::run(move || store.disabled_users()).await {
            Ok(Ok(users)) => users.into_iter().collect(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the disabled accounts; keeping the last list");
                continue;
            }
            Err(_) => continue,
        };
        let newly: Vec<UserId> = {
            let mut known = shared.disabled.lock().unwrap_or_else(|p| p.into_inner());
            let newly = now.difference(&known).copied().collect();
            *known = now;
            newly
        };
        for user in newly {
            let sessions = shared.hub.sessions_of(user);
            let last = ServerFrame::Error { id: None, error: disabled_error() };
            for s in &sessions {
                s.outbox.close_with(&last);
                s.kick.cancel();
            }
            tracing::info!(user = user.0, sessions = sessions.len(), "account disabled: its sessions closed");
        }
    }
}
