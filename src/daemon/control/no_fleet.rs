//! The control socket's fleet requests in a build without the `fleet` feature: the same
//! functions as `fleet.rs`, each answering that this build has no fleet.

use std::time::Duration;

use serde_json::value::RawValue;
use sshvisor_actors::Filter;

use super::Reach;

/// The answer to every fleet request.
pub(super) const NOT_IN_A_FLEET: &str =
    "this sshvisor was built without the `fleet` feature, so it cannot be in a fleet";

/// How long each node may take: parsed all the same, so a bad value is told as such.
pub(super) fn node_timeout(text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(Duration::from_secs(2)),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("invalid timeout {text:?}: {e} (use e.g. \"2s\", \"500ms\")")),
    }
}

/// Never.
pub(super) fn in_a_fleet(_: &Reach) -> bool {
    false
}

/// Refused.
pub(super) async fn list(_: &Reach, _: Filter, _: Duration) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) async fn kill_where(
    _: &Reach,
    _: Filter,
    _: &str,
    _: Duration,
    _: Option<String>,
    _: bool,
    _: Duration,
) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) async fn kill_warned(
    _: &Reach,
    _: Filter,
    _: &str,
    _: Duration,
    _: Duration,
    _: Option<String>,
    _: Duration,
) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) async fn kill(
    _: &Reach,
    _: &str,
    _: &str,
    _: Duration,
    _: Option<String>,
    _: Duration,
) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) async fn resolve(_: &Reach, _: &str, _: Duration) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) fn nodes(_: &Reach) -> Result<Box<RawValue>, String> {
    Err(NOT_IN_A_FLEET.into())
}

/// Refused.
pub(super) fn watch(_: &Reach) -> Result<tokio::sync::mpsc::Receiver<serde_json::Value>, String> {
    Err(NOT_IN_A_FLEET.into())
}
