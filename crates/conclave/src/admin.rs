//! `conclave admin`: operator commands that work on the server's data
//! directory directly (safe while the server runs: SQLite WAL).

use crate::output::say;
use anyhow::Context;

/// Prints a new single-use invitation token.
pub fn invite(data: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let data = match data {
        Some(d) => d,
        None => crate::cli::default_data_dir()?,
    };
    let token = conclave_server::create_invite(&data).context("cannot create an invitation")?;
    say!("{token}")?;
    Ok(())
}
