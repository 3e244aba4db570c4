//! The control socket's fleet requests: `ls --fleet`, a kill of an ID held by another node,
//! `kill_where --fleet`, `nodes` and `watch --fleet`, each through the node's
//! [`Fleet`](crate::fleet::Fleet). A server that is not in a fleet (or a build without the
//! `fleet` feature) answers each with an error that says how to join one.

use std::time::Duration;

use serde_json::value::RawValue;
use sshvisor_actors::Filter;

use super::{raw, Reach};

/// The answer to a fleet request on a server that is in none.
pub(super) const NOT_IN_A_FLEET: &str =
    "this server is not in a fleet: start it with --fleet-listen (see docs/FLEET.md)";

/// How long each node may take, from the request's `timeout` (humantime).
pub(super) fn node_timeout(text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(crate::fleet::view::DEFAULT_NODE_TIMEOUT),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("invalid timeout {text:?}: {e} (use e.g. \"2s\", \"500ms\")")),
    }
}

fn fleet(reach: &Reach) -> Result<crate::fleet::Fleet, String> {
    reach
        .server
        .fleet()
        .ok_or_else(|| NOT_IN_A_FLEET.to_string())
}

/// Whether this server is in a fleet.
pub(super) fn in_a_fleet(reach: &Reach) -> bool {
    reach.server.fleet().is_some()
}

/// `ls --fleet`: every node's connections, each tagged with its node, and every node with how
/// it answered.
pub(super) async fn list(
    reach: &Reach,
    filter: Filter,
    within: Duration,
) -> Result<Box<RawValue>, String> {
    raw(&fleet(reach)?.list(filter, within).await)
}

/// `kill_where --fleet`: one answer once every node has reported or timed out.
pub(super) async fn kill_where(
    reach: &Reach,
    filter: Filter,
    reason: &str,
    grace: Duration,
    by: Option<String>,
    dry_run: bool,
    within: Duration,
) -> Result<Box<RawValue>, String> {
    let outcome = fleet(reach)?
        .kill_where(filter, reason, grace, by, dry_run, within)
        .await;
    raw(&outcome)
}

/// An announced kill on every node of the connections `filter` selects: one answer at the
/// deadline.
pub(super) async fn kill_warned(
    reach: &Reach,
    filter: Filter,
    reason: &str,
    notice: Duration,
    grace: Duration,
    by: Option<String>,
    within: Duration,
) -> Result<Box<RawValue>, String> {
    let outcome = fleet(reach)?
        .kill_warned(filter, reason, notice, grace, by, within)
        .await;
    raw(&outcome)
}

/// A kill of an ID this node does not hold: found on whichever node does.
pub(super) async fn kill(
    reach: &Reach,
    text: &str,
    reason: &str,
    grace: Duration,
    by: Option<String>,
    within: Duration,
) -> Result<Box<RawValue>, String> {
    let report = fleet(reach)?
        .kill(text, reason, grace, by, within)
        .await
        .map_err(|e| e.to_string())?;
    raw(&report)
}

/// A dry-run kill of an ID this node does not hold: which node holds what.
pub(super) async fn resolve(
    reach: &Reach,
    text: &str,
    within: Duration,
) -> Result<Box<RawValue>, String> {
    let found = fleet(reach)?
        .resolve(text, within)
        .await
        .map_err(|e| e.to_string())?;
    raw(&found)
}

/// `nodes`.
pub(super) fn nodes(reach: &Reach) -> Result<Box<RawValue>, String> {
    raw(&fleet(reach)?.nodes())
}

/// `watch --fleet`: each node's events as JSON, tagged with the node and the time.
pub(super) fn watch(
    reach: &Reach,
) -> Result<tokio::sync::mpsc::Receiver<serde_json::Value>, String> {
    use crate::fleet::Watched;
    let mut events = fleet(reach)?.watch();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = tx.closed() => return,
            };
            let Some(event) = event else { return };
            let mut value = match event.what {
                Watched::Event(e) => serde_json::to_value(&e).unwrap_or_default(),
                Watched::Missed(count) => serde_json::json!({"event": "missed", "count": count}),
                Watched::Unreachable => serde_json::json!({"event": "node_unreachable"}),
                Watched::Up => serde_json::json!({"event": "node_up"}),
            };
            if let Some(map) = value.as_object_mut() {
                map.insert("node".into(), event.node.into());
                map.insert(
                    "at".into(),
                    humantime::format_rfc3339_millis(event.at)
                        .to_string()
                        .into(),
                );
            }
            if tx.send(value).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
