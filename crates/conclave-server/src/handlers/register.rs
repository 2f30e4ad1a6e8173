//! `Register`: create an account and its first device.

use conclave_proto::{
    validate_display_name, validate_new_username, validate_password, ErrorBody, ErrorCode, Register,
};

use crate::config::RegistrationPolicy;
use crate::session::ConnInfo;
use crate::store::{DeviceAccount, NewAccount};
use crate::Shared;

/// Checks the policy and every field, then hashes the password and stores
/// the account and device in one transaction.
pub async fn handle(shared: &Shared, info: &ConnInfo, req: Register) -> Result<DeviceAccount, ErrorBody> {
    match shared.config.registration {
        RegistrationPolicy::Open => {}
        RegistrationPolicy::Closed => {
            return Err(ErrorBody::new(
                ErrorCode::REGISTRATION_CLOSED,
                "this server does not accept new accounts; ask its operator",
            ))
        }
        RegistrationPolicy::Token if req.token.is_none() => {
            return Err(ErrorBody::new(
                ErrorCode::INVALID_TOKEN,
                "this server needs an invitation token: ask its operator for one and pass --token",
            ))
        }
        RegistrationPolicy::Token => {}
    }
    // The rules for a new name: stricter than those every stored name meets.
    let username = validate_new_username(&req.username)
        .map_err(|e| ErrorBody::new(ErrorCode::INVALID_USERNAME, e.to_string()))?;
    validate_password(req.password.expose())
        .map_err(|e| ErrorBody::new(ErrorCode::WEAK_PASSWORD, e.to_string()))?;
    let display_name = validate_display_name(req.display_name.as_deref().unwrap_or(username.as_str()))
        .map_err(|e| ErrorBody::new(ErrorCode::INVALID_DISPLAY_NAME, e.to_string()))?;
    let key = super::verify_device(info, &req.device_key, &req.signature)?;
    // Under an open policy a token is not needed, and is ignored.
    let token = match shared.config.registration {
        RegistrationPolicy::Token => req.token.clone(),
        _ => None,
    };

    let hash = shared.hasher.hash(req.password).await?;
    let store = shared.store.clone();
    let created = crate::blocking::run(move || {
        store.create_account(NewAccount {
            username: &username,
            display_name: &display_name,
            password_hash: &hash,
            device_key: &key,
            invite_token: token.as_deref(),
        })
    })
    .await?;
    match created {
        Ok(account) => {
            tracing::info!(user = %account.username, "account registered");
            Ok(account)
        }
        Err(e) => {
            tracing::info!(error = %e, "registration refused");
            Err(super::store_error(e))
        }
    }
}
