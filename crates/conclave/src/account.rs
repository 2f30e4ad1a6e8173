//! `conclave register`, `login` and `whoami`.

use crate::output::say;
use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};
use conclave_client::{AccountRecord, Chat, Connection, Profile};
use conclave_proto::{
    validate_display_name, validate_new_username, validate_password, validate_username, AccountInfo, Password,
};

use crate::cli::{GlobalOpts, LoginArgs, RegisterArgs};
use crate::connect::{connect, open_profile, remember};

/// Creates an account whose first device is this profile.
pub async fn register(opts: &GlobalOpts, args: &RegisterArgs) -> anyhow::Result<()> {
    let mut profile = open_profile(opts)?;
    refuse_second_account(&profile)?;
    let username = validate_new_username(&args.username).context("cannot register")?;
    if let Some(d) = &args.display_name {
        validate_display_name(d).context("cannot register")?;
    }
    let password = read_password(args.password_stdin, true)?;
    validate_password(password.expose()).context("cannot register")?;

    let device = profile.device_key_or_create()?;
    let (addr, conn) = connect(opts, &profile).await?;
    let info = conn
        .register(&device, username.as_str(), password, args.display_name.clone(), args.token.clone())
        .await
        .context("registration failed")?;
    save_account(&mut profile, &addr, &conn, &info)?;
    // Upload KeyPackages now, so that others can add this user to rooms.
    let mut chat = Chat::open(profile.dir(), &device, conn, info.clone())?;
    chat.catch_up()
        .await
        .context("registered, but could not upload KeyPackages; run `conclave room list` to retry")?;
    say!("registered {} ({}), device {} on {addr}", info.username, info.display_name, info.device_id)?;
    Ok(())
}

/// Enrols this profile as a new device of an existing account.
pub async fn login(opts: &GlobalOpts, args: &LoginArgs) -> anyhow::Result<()> {
    let mut profile = open_profile(opts)?;
    refuse_second_account(&profile)?;
    let username = validate_username(&args.username).context("cannot log in")?;
    let password = read_password(args.password_stdin, false)?;
    let device = profile.device_key_or_create()?;
    let (addr, conn) = connect(opts, &profile).await?;
    let info = conn.login(&device, username.as_str(), password).await.context("login failed")?;
    save_account(&mut profile, &addr, &conn, &info)?;
    // Upload KeyPackages and join the account's rooms by external commit.
    let mut chat = Chat::open(profile.dir(), &device, conn, info.clone())?;
    chat.catch_up()
        .await
        .context("logged in, but could not join the account's rooms; run `conclave room list` to retry")?;
    say!(
        "logged in as {} ({}): this profile is device {} on {addr}",
        info.username,
        info.display_name,
        info.device_id
    )?;
    Ok(())
}

/// Prints who this profile is.
pub async fn whoami(opts: &GlobalOpts) -> anyhow::Result<()> {
    let mut profile = open_profile(opts)?;
    let (addr, conn, info) = authenticated(opts, &profile).await?;
    save_account(&mut profile, &addr, &conn, &info)?;
    say!(
        "{} ({}), device {}, server {addr} {}",
        info.username,
        info.display_name,
        info.device_id,
        conn.fingerprint()
    )?;
    Ok(())
}

/// Connects and authenticates as this profile's device.
pub async fn authenticated(
    opts: &GlobalOpts,
    profile: &Profile,
) -> anyhow::Result<(conclave_client::ServerAddr, Connection, AccountInfo)> {
    let Some(device) = profile.device_key()? else {
        bail!(
            "this profile ({}) has no account yet; run `conclave register USER` or `conclave login USER`",
            profile.dir().display()
        )
    };
    if profile.state.account.is_none() {
        bail!(
            "this profile ({}) has no account yet; run `conclave register USER` or `conclave login USER`",
            profile.dir().display()
        );
    }
    let (addr, conn) = connect(opts, profile).await?;
    let info = conn.authenticate(&device).await.context("authentication failed")?;
    Ok((addr, conn, info))
}

fn refuse_second_account(profile: &Profile) -> anyhow::Result<()> {
    if let Some(a) = &profile.state.account {
        bail!(
            "this profile ({}) already holds {} on {}; use --profile DIR for another account or device",
            profile.dir().display(),
            a.username,
            a.server
        );
    }
    Ok(())
}

fn save_account(
    profile: &mut Profile,
    addr: &conclave_client::ServerAddr,
    conn: &Connection,
    info: &AccountInfo,
) -> anyhow::Result<()> {
    remember(profile, addr, conn);
    profile.state.account = Some(AccountRecord {
        server: addr.to_string(),
        username: info.username.clone(),
        display_name: info.display_name.clone(),
        device_id: info.device_id,
    });
    profile.save()?;
    Ok(())
}

fn read_password(from_stdin: bool, confirm: bool) -> anyhow::Result<Password> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            bail!("standard input held no password; pipe one line, e.g. `printf '%s\\n' \"$PW\" | conclave ...`");
        }
        return Ok(Password::new(password));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; pass --password-stdin and pipe it in");
    }
    let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    if confirm {
        let second = rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
        if first != second {
            bail!("the two passwords differ; nothing was changed");
        }
    }
    Ok(Password::new(first))
}
