//! Reaching the server from the CLI: which server, whether to trust its
//! certificate on first contact, and remembering both once a command works.

use crate::output::say;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use conclave_client::{connect_tls, normalize_fingerprint, Connection, Profile, ServerAddr};

use crate::cli::GlobalOpts;

/// Opens the profile named by `--profile` (or the default one).
pub fn open_profile(opts: &GlobalOpts) -> anyhow::Result<Profile> {
    let dir = match &opts.profile {
        Some(d) => d.clone(),
        None => crate::cli::default_profile_dir()?,
    };
    Ok(Profile::open(&dir)?)
}

/// The server to talk to: `--server`, else the profile's.
pub fn server_addr(opts: &GlobalOpts, profile: &Profile) -> anyhow::Result<ServerAddr> {
    let given = opts.server.as_deref().or(profile.state.server.as_deref());
    let Some(s) = given else {
        bail!(
            "no server known for this profile; pass --server HOST:PORT (for example --server localhost:7667)"
        )
    };
    Ok(ServerAddr::parse(s)?)
}

/// Connects, settles trust in the certificate, and exchanges `Hello`.
/// Nothing is sent before the certificate is trusted.
pub async fn connect(opts: &GlobalOpts, profile: &Profile) -> anyhow::Result<(ServerAddr, Connection)> {
    let addr = server_addr(opts, profile)?;
    let expected = match &opts.fingerprint {
        Some(f) => Some(normalize_fingerprint(f).with_context(|| {
            format!("--fingerprint {f:?} is not a SHA-256 fingerprint; copy the SHA256:<64 hex digits> line that `conclave serve` prints")
        })?),
        None => None,
    };
    let pinned = profile.pin(&addr);
    let tls = connect_tls(&addr, pinned).await?;
    if pinned.is_none() {
        let offered = tls.fingerprint();
        match &expected {
            Some(want) if want == offered => {}
            Some(want) => bail!(
                "the server at {addr} presented certificate {offered}, not the {want} you expected; not connecting. \
                 Check the fingerprint with the server's operator"
            ),
            None if opts.accept_new_server => {}
            None => ask_trust(&addr, offered)?,
        }
    }
    Ok((addr, tls.hello().await?))
}

/// Records the server as the profile's default and pins its certificate.
pub fn remember(profile: &mut Profile, addr: &ServerAddr, conn: &Connection) {
    let key = addr.to_string();
    profile.state.known_servers.insert(key.clone(), conn.fingerprint().to_owned());
    profile.state.server = Some(key);
}

fn ask_trust(addr: &ServerAddr, offered: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() || !std::io::stderr().is_terminal() {
        bail!(
            "first contact with {addr}, whose certificate is {offered}: confirm that fingerprint with the \
             server's operator, then pass --fingerprint {offered} (or --accept-new-server to trust it unchecked)"
        );
    }
    let mut err = std::io::stderr();
    write!(
        err,
        "The server at {addr} is new to this profile.\nIts certificate fingerprint is {offered}\n\
         Compare it with the fingerprint `conclave serve` printed.\nTrust this server? (yes/no): "
    )?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        bail!("not trusted; nothing was sent to {addr}")
    }
}

/// `conclave forget-server`: drops a pinned fingerprint.
pub fn forget(opts: &GlobalOpts, server: Option<&str>) -> anyhow::Result<()> {
    let mut profile = open_profile(opts)?;
    let addr = match server {
        Some(s) => ServerAddr::parse(s)?,
        None => server_addr(opts, &profile)?,
    };
    match profile.state.known_servers.remove(&addr.to_string()) {
        Some(fp) => {
            profile.save()?;
            say!("forgot {addr} ({fp}); the next connection asks to trust it again")?;
            Ok(())
        }
        None => bail!("no certificate is pinned for {addr} in this profile"),
    }
}
