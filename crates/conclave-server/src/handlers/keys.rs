//! KeyPackages: a device uploads a batch (and one last-resort package) for
//! others to add it to rooms; each is served once. A single-use KeyPackage is
//! accepted only once, ever (until it expires): uploaded twice, or again
//! after it was claimed, it would be handed out twice, and two Welcomes would
//! then be encrypted to the same init key.

use std::sync::Arc;

use conclave_proto::{ErrorBody, ErrorCode, Response};

use crate::mls::KeyPackageInfo;
use crate::store::{DeviceAccount, NewKeyPackage};
use crate::Shared;

/// Most KeyPackages accepted in one upload.
pub const MAX_UPLOAD: usize = 200;

/// `UploadKeyPackages`: each must be a valid KeyPackage of this very device.
pub async fn upload(
    shared: &Arc<Shared>,
    from: &DeviceAccount,
    key_packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<Response, ErrorBody> {
    if key_packages.len() > MAX_UPLOAD {
        return Err(ErrorBody::new(
            ErrorCode::LIMIT_REACHED,
            format!("upload at most {MAX_UPLOAD} KeyPackages at once"),
        ));
    }
    let check = |bytes: &[u8], want_last_resort: bool| -> Result<KeyPackageInfo, ErrorBody> {
        let info = crate::mls::check_key_package(bytes)
            .map_err(|e| ErrorBody::new(ErrorCode::INVALID_MLS, format!("a KeyPackage was refused: {e}")))?;
        if info.identity != from.identity() {
            return Err(ErrorBody::new(
                ErrorCode::INVALID_MLS,
                format!(
                    "a KeyPackage belongs to {}, not to this device ({})",
                    info.identity,
                    from.identity()
                ),
            ));
        }
        if info.signature_key != from.key.0 {
            return Err(ErrorBody::new(
                ErrorCode::INVALID_MLS,
                format!("a KeyPackage for {} is signed with another key than this device's", info.identity),
            ));
        }
        if info.last_resort != want_last_resort {
            return Err(ErrorBody::new(
                ErrorCode::INVALID_MLS,
                "a KeyPackage's last-resort flag is wrong for its slot",
            ));
        }
        Ok(info)
    };
    let mut packages = Vec::with_capacity(key_packages.len());
    for data in key_packages {
        let info = check(&data, false)?;
        packages.push(NewKeyPackage {
            data,
            key_package_ref: info.key_package_ref,
            not_after: info.not_after,
        });
    }
    if let Some(lr) = &last_resort {
        check(lr, true)?;
    }
    let store = shared.store.clone();
    let (user, device) = (from.user, from.device);
    let max = shared.config.max_key_packages;
    let available = crate::blocking::run(move || {
        let have = store.key_package_count(user, device)?;
        if have as usize + packages.len() > max as usize {
            return Ok(Err(have));
        }
        store.store_key_packages(user, device, &packages, last_resort.as_deref()).map(Ok)
    })
    .await?
    .map_err(super::store_error)?
    .map_err(|have| {
        ErrorBody::new(
            ErrorCode::LIMIT_REACHED,
            format!("this device already has {have} KeyPackages on the server (limit {max})"),
        )
    })?;
    Ok(Response::KeyPackageCount { available })
}

/// `KeyPackageCount`.
pub async fn count(shared: &Arc<Shared>, from: &DeviceAccount) -> Result<Response, ErrorBody> {
    let store = shared.store.clone();
    let (user, device) = (from.user, from.device);
    let available = crate::blocking::run(move || store.key_package_count(user, device))
        .await?
        .map_err(super::store_error)?;
    Ok(Response::KeyPackageCount { available })
}

/// `PendingWelcomes`.
pub async fn welcomes(shared: &Arc<Shared>, from: &DeviceAccount) -> Result<Response, ErrorBody> {
    let store = shared.store.clone();
    let (user, device) = (from.user, from.device);
    let list =
        crate::blocking::run(move || store.welcomes_for(user, device)).await?.map_err(super::store_error)?;
    Ok(Response::Welcomes(
        list.into_iter()
            .map(|w| conclave_proto::WelcomeItem {
                room: w.room,
                group_id: w.group_id,
                joined_seq: w.seq,
                welcome: w.welcome,
            })
            .collect(),
    ))
}
