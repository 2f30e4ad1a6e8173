//! One file per request kind; [`crate::session`] dispatches to them after
//! checking each request's precondition.

pub mod authenticate;
pub mod keys;
pub mod login;
pub mod register;
pub mod rooms;
pub mod whoami;

use conclave_proto::{auth_message, AccountInfo, ErrorBody, ErrorCode};
use ed25519_dalek::{Signature, VerifyingKey};

use crate::session::ConnInfo;
use crate::store::{DeviceAccount, DeviceKey, StoreError};

/// The wire form of an account and device.
pub fn account_info(a: &DeviceAccount) -> AccountInfo {
    AccountInfo {
        username: a.username.as_str().to_owned(),
        display_name: a.display_name.clone(),
        device_id: a.device.0,
    }
}

/// Checks that `signature` is `device_key`'s signature of this connection's
/// authentication message, and returns the key.
pub fn verify_device(info: &ConnInfo, device_key: &[u8], signature: &[u8]) -> Result<DeviceKey, ErrorBody> {
    let key: [u8; 32] = device_key
        .try_into()
        .map_err(|_| ErrorBody::new(ErrorCode::INVALID_REQUEST, "a device key is 32 bytes (Ed25519)"))?;
    let sig: [u8; 64] = signature.try_into().map_err(|_| {
        ErrorBody::new(ErrorCode::INVALID_REQUEST, "a device signature is 64 bytes (Ed25519)")
    })?;
    let bad = || ErrorBody::new(ErrorCode::BAD_SIGNATURE, "the device signature does not verify");
    let verifying = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
    verifying
        .verify_strict(&auth_message(&info.nonce, &info.exporter), &Signature::from_bytes(&sig))
        .map_err(|_| bad())?;
    Ok(DeviceKey(key))
}

/// Maps a storage failure to what the client is told.
pub fn store_error(e: StoreError) -> ErrorBody {
    match e {
        StoreError::UsernameTaken => {
            ErrorBody::new(ErrorCode::USERNAME_TAKEN, "that username is taken; choose another")
        }
        StoreError::DeviceKeyInUse => ErrorBody::new(
            ErrorCode::DEVICE_KEY_IN_USE,
            "this device key is already registered; use a new profile for a new device",
        ),
        StoreError::InvalidToken => ErrorBody::new(
            ErrorCode::INVALID_TOKEN,
            "the invitation token is invalid or already used; ask the operator for a new one",
        ),
        StoreError::KeyPackageReused => ErrorBody::new(
            ErrorCode::INVALID_MLS,
            "a KeyPackage was uploaded more than once; each may be used only once, so make new ones",
        ),
        other => {
            tracing::error!(error = %other, "storage failed");
            ErrorBody::new(ErrorCode::INTERNAL, "internal server error; the server log has details")
        }
    }
}
