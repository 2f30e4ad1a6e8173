//! `conclave admin`: operator commands that work on the server's data
//! directory directly (safe while the server runs: SQLite WAL).

use crate::output::say;
use anyhow::Context;

/// Prints a new single-use invitation token.
pub fn invite(data: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let token =
        conclave_server::create_invite(&data_dir(data.as_deref())?).context("cannot create an invitation")?;
    say!("{token}")?;
    Ok(())
}

/// `--data DIR`, or the default data directory.
fn data_dir(data: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    data.map_or_else(crate::cli::default_data_dir, |d| Ok(d.to_path_buf()))
}

fn store(data: Option<&std::path::Path>) -> anyhow::Result<conclave_server::store::sqlite::SqliteStore> {
    conclave_server::open_store(&data_dir(data)?).context("cannot open the server's database")
}

/// A time in milliseconds since the Unix epoch, in UTC, or "-".
fn when_ms(ms: Option<u64>) -> String {
    ms.and_then(|ms| chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?))
        .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

fn when_secs(secs: u64) -> String {
    when_ms(secs.checked_mul(1000))
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let width = |i: usize| {
        rows.iter()
            .map(|r| unicode_width::UnicodeWidthStr::width(r[i].as_str()))
            .chain([header[i].len()])
            .max()
    };
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - unicode_width::UnicodeWidthStr::width(*c).min(*w))))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    say!("{}", line(header.to_vec()))?;
    for row in rows {
        say!("{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `conclave admin stats`.
pub fn stats(args: &crate::cli::AdminReportArgs) -> anyhow::Result<()> {
    let s = store(args.data.as_deref())?.stats().context("cannot read the server's database")?;
    if args.json {
        let v = serde_json::json!({
            "users": s.users, "devices": s.devices, "rooms": s.rooms,
            "log_entries": s.log_entries, "database_bytes": s.database_bytes,
        });
        say!("{v}")?;
        return Ok(());
    }
    let rows = [
        ("users", s.users.to_string()),
        ("devices", s.devices.to_string()),
        ("rooms", s.rooms.to_string()),
        ("log entries", s.log_entries.to_string()),
        ("database", format!("{:.1} MiB ({} bytes)", s.database_bytes as f64 / 1048576.0, s.database_bytes)),
    ];
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect();
    table(&["what", "count"], &rows)
}

/// `conclave admin users`.
pub fn users(args: &crate::cli::AdminReportArgs) -> anyhow::Result<()> {
    let users = store(args.data.as_deref())?.user_reports().context("cannot read the server's database")?;
    if args.json {
        let v: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "username": u.username, "display_name": u.display_name, "devices": u.devices,
                    "rooms": u.rooms, "created_at": u.created_at, "last_active_ms": u.last_active_ms,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(v))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.username.clone(),
                conclave_proto::clean_display_name(&u.display_name),
                u.devices.to_string(),
                u.rooms.to_string(),
                when_secs(u.created_at),
                when_ms(u.last_active_ms),
            ]
        })
        .collect();
    table(&["username", "display name", "devices", "rooms", "created", "last wrote to a room"], &rows)
}

/// `conclave admin rooms`.
pub fn rooms(args: &crate::cli::AdminReportArgs) -> anyhow::Result<()> {
    let rooms = store(args.data.as_deref())?.room_reports().context("cannot read the server's database")?;
    if args.json {
        let v: Vec<serde_json::Value> = rooms
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "members": r.members, "log_entries": r.log_entries, "epoch": r.epoch,
                    "created_at": r.created_at, "last_activity_ms": r.last_activity_ms,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(v))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.name),
                r.members.to_string(),
                r.log_entries.to_string(),
                r.epoch.to_string(),
                when_secs(r.created_at),
                when_ms(r.last_activity_ms),
            ]
        })
        .collect();
    table(&["room", "members", "log entries", "epoch", "created", "last activity"], &rows)
}

/// `conclave admin disable USER` and `enable USER`.
pub fn set_disabled(args: &crate::cli::AdminUserArgs, disabled: bool) -> anyhow::Result<()> {
    use conclave_server::store::Store as _;
    let name = conclave_proto::validate_username(&args.user).context("no such account")?;
    let store = store(args.data.as_deref())?;
    let found = store.set_disabled(&name, disabled).context("cannot write to the server's database")?;
    anyhow::ensure!(found, "no account is named {name} on this server (see `conclave admin users`)");
    if disabled {
        say!("disabled {name}: a running server closes its sessions within a second, and it cannot sign in until `conclave admin enable {name}`")?;
    } else {
        say!("enabled {name}: it can sign in again")?;
    }
    Ok(())
}
