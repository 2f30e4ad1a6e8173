//! Runs blocking work (SQLite, Argon2) off the async workers.

use conclave_proto::{ErrorBody, ErrorCode};

/// Runs `f` on tokio's blocking pool and waits for it. A panic inside `f`
/// becomes an internal error for the one request, not a crashed server.
pub async fn run<T, F>(f: F) -> Result<T, ErrorBody>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        ErrorBody::new(ErrorCode::INTERNAL, "internal server error; the server log has details")
    })
}
