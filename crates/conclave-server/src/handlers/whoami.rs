//! `WhoAmI`: the account and device this connection is authenticated as.

use conclave_proto::Response;

use crate::store::DeviceAccount;

/// Answers from the session's own state; no storage needed.
pub fn handle(account: &DeviceAccount) -> Response {
    Response::WhoAmI(super::account_info(account))
}
