//! `Login`: enrol a new device on an account with its password.
//!
//! A wrong password and an unknown user get exactly the same answer, after the
//! same work (a dummy hash is verified for unknown users). Failures are
//! throttled per account and per source address before any hashing is done;
//! while an account is throttled, even its right password is refused (its
//! enrolled devices still authenticate with their keys).

use std::time::Instant;

use conclave_proto::{validate_username, ErrorBody, ErrorCode, Login, MAX_PASSWORD_BYTES};

use crate::repeated::{self, Warning};
use crate::session::ConnInfo;
use crate::store::DeviceAccount;
use crate::throttle::Key;
use crate::Shared;

/// The one answer for every failed login.
pub const INVALID: &str = "invalid username or password";

fn invalid() -> ErrorBody {
    ErrorBody::new(ErrorCode::INVALID_CREDENTIALS, INVALID)
}

/// Checks the throttle, the device signature and the password, then adds the device.
pub async fn handle(shared: &Shared, info: &ConnInfo, req: Login) -> Result<DeviceAccount, ErrorBody> {
    let key = super::verify_device(info, &req.device_key, &req.signature)?;
    let account_key = Key::Account(req.username.to_ascii_lowercase());
    let keys = [account_key.clone(), Key::address(info.peer.ip())];
    // Held until the password is checked, so that guesses sent at once over
    // many connections cannot all get past the throttle before one fails.
    let attempt = shared.throttle.begin(&keys, Instant::now()).map_err(|wait| {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
        let message = format!("login throttled: too many failed logins; retry in {secs} s");
        repeated::note(&shared.warnings, Warning::LoginThrottled, info.peer, &message);
        ErrorBody {
            code: ErrorCode::THROTTLED,
            message: format!("too many attempts, retry in {secs} s"),
            retry_after_secs: Some(secs),
        }
    })?;

    // An overlong password cannot match (registration refuses them); it is
    // not hashed, so it cannot be used to make logins expensive.
    let plausible = req.password.expose().len() <= MAX_PASSWORD_BYTES;
    let credential = match validate_username(&req.username) {
        Ok(name) if plausible => {
            let store = shared.store.clone();
            crate::blocking::run(move || store.credential(&name)).await?.map_err(super::store_error)?
        }
        _ => None,
    };
    let user = credential.as_ref().map(|c| c.user);
    let ok = plausible && shared.hasher.verify(req.password, credential.map(|c| c.password_hash)).await?;
    let Some(user) = user.filter(|_| ok) else {
        attempt.failed(Instant::now());
        repeated::note(
            &shared.warnings,
            Warning::LoginFailed,
            info.peer,
            "login failed: invalid username or password",
        );
        return Err(invalid());
    };
    attempt.succeeded(&account_key);
    shared.refuse_disabled(user).await?;

    let store = shared.store.clone();
    let account =
        crate::blocking::run(move || store.add_device(user, &key)).await?.map_err(super::store_error)?;
    tracing::info!(user = %account.username, device = account.device.0, "device enrolled by login");
    Ok(account)
}
