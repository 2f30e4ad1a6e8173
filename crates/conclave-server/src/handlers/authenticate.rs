//! `Authenticate`: an enrolled device proves itself by signature, no password.

use conclave_proto::{Authenticate, ErrorBody, ErrorCode};

use crate::session::ConnInfo;
use crate::store::DeviceAccount;
use crate::Shared;

/// Verifies the signature and finds the device's account.
pub async fn handle(shared: &Shared, info: &ConnInfo, req: Authenticate) -> Result<DeviceAccount, ErrorBody> {
    let key = super::verify_device(info, &req.device_key, &req.signature)?;
    let store = shared.store.clone();
    let found = crate::blocking::run(move || store.device_by_key(&key)).await?.map_err(super::store_error)?;
    match found {
        Some(account) => {
            shared.refuse_disabled(account.user).await?;
            tracing::info!(user = %account.username, device = account.device.0, "device authenticated");
            Ok(account)
        }
        None => {
            tracing::info!("unknown device key");
            Err(ErrorBody::new(
                ErrorCode::UNKNOWN_DEVICE,
                "this device is not enrolled on this server; run `conclave login USER` to enrol it",
            ))
        }
    }
}
