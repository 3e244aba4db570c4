//! What the parsers that take outside text must hold for ANY input, written once and run two
//! ways: by the cargo-fuzz targets in `fuzz/fuzz_targets/` (millions of inputs, by hand) and by
//! the property tests in `tests/properties.rs` (a few thousand, in every `cargo test`).
//!
//! - A control request line (`control::parse_request`, as the server reads it: bytes, lossy
//!   UTF-8): never a panic; a request that parses prints and parses back to itself, its grace
//!   is parsed or refused with a reason, its target resolves against live IDs consistently; a
//!   line that does not parse gets an error response that is one JSON line, says what is wrong
//!   and echoes the request's `id` when it had a numeric one.
//! - A grace (`control::grace_from_str`): accepted only up to `MAX_GRACE`, and what is accepted
//!   prints and parses back to itself; refused with a sentence that quotes it.
//! - A configuration file (`config::Config::parse`, then the tree's policy from it, as `serve`
//!   and `reload` do): never a panic; an accepted file gives limits the tree takes as they are;
//!   a refused one names the file and the line.

// Each user of this file runs a subset of it.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;
use sshvisor::actors::{resolve_prefix, ConnectionInfo, Target};
use sshvisor::daemon::config::Config;
use sshvisor::daemon::control::{explain, grace_from_str, parse_request, Command, MAX_GRACE};

/// One control request line, as the server turns the socket's bytes into an action.
pub fn control_line(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    match parse_request(&text) {
        Ok(request) => {
            let json = serde_json::to_string(&request).expect("a parsed request prints");
            let again = parse_request(&json)
                .unwrap_or_else(|e| panic!("{json} does not parse back: {:?}", e.error));
            assert_eq!(
                serde_json::to_value(&again).expect("prints"),
                serde_json::to_value(&request).expect("prints"),
                "the request changed on a round trip through {json}"
            );
            assert_eq!(again.id, request.id);
            let (grace, target) = match &request.command {
                Command::Kill { grace, target, .. } => (grace.as_deref(), Some(target.as_str())),
                Command::Show { target } => (None, Some(target.as_str())),
                Command::KillWhere { grace, .. }
                | Command::Drain { grace }
                | Command::KillAll { grace, .. } => (grace.as_deref(), None),
                _ => (None, None),
            };
            if let Some(grace) = grace {
                grace_text(grace);
            }
            if let Some(target) = target {
                target_text(target);
            }
        }
        Err(response) => {
            assert!(!response.ok, "an error response says not ok");
            assert!(response.result.is_none(), "an error response has no result");
            let error = response
                .error
                .as_deref()
                .expect("an error response says why");
            assert!(
                error.starts_with("malformed") || error.starts_with("unknown command"),
                "an unclear error: {error:?}"
            );
            let line = serde_json::to_string(&response).expect("an error response prints");
            assert!(
                !line.contains('\n'),
                "an error response is one line: {line}"
            );
            let sent_id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_u64));
            if let Some(id) = sent_id {
                assert_eq!(response.id, id, "the error does not echo the request's id");
            }
        }
    }
}

/// One grace text, as `kill --grace`, a request's `grace` or `--kill-grace` give it.
pub fn grace_text(text: &str) {
    match grace_from_str(text) {
        Ok(grace) => {
            assert!(
                grace <= MAX_GRACE,
                "{text:?} gave {grace:?}, over the maximum"
            );
            let printed = humantime::format_duration(grace).to_string();
            assert_eq!(
                grace_from_str(&printed),
                Ok(grace),
                "{text:?} gave {grace:?}, printed {printed:?}, which does not parse back"
            );
        }
        Err(why) => {
            assert!(
                why.starts_with(&format!("invalid grace {text:?}"))
                    || why.starts_with(&format!("grace {text:?} is too long")),
                "an unclear error for {text:?}: {why:?}"
            );
        }
    }
}

/// The live IDs an operator's text is resolved against: two connections whose IDs share a
/// prefix, each with a session, one session's ID sharing a prefix with a connection's.
fn live() -> Vec<ConnectionInfo> {
    let conn = |id: &str, session: &str| {
        serde_json::from_value::<ConnectionInfo>(serde_json::json!({
            "id": id,
            "user": "alice",
            "peer": "192.0.2.1:50000",
            "client_version": null,
            "auth_method": "publickey",
            "started": "2026-01-01T00:00:00.000Z",
            "state": "authenticated",
            "sessions": [{
                "id": session,
                "kind": "exec",
                "command": "true",
                "started": "2026-01-01T00:00:01.000Z",
            }],
        }))
        .expect("a connection snapshot")
    };
    vec![
        conn(
            "aaaa1111-0000-4000-8000-000000000001",
            "bbbb0000-0000-4000-8000-000000000003",
        ),
        conn(
            "aaaa2222-0000-4000-8000-000000000002",
            "aaaa1111-9999-4000-8000-000000000004",
        ),
    ]
}

/// One target text, resolved against [`live`]: what it names starts with it, and every
/// refusal says why.
pub fn target_text(text: &str) {
    let all = live();
    let ids: Vec<(String, Target)> = all
        .iter()
        .flat_map(|c| {
            std::iter::once((c.id.to_string(), Target::Connection(c.id))).chain(
                c.sessions
                    .iter()
                    .map(|s| (s.id.to_string(), Target::Session(s.id))),
            )
        })
        .collect();
    let wanted = text.trim().to_ascii_lowercase();
    let matching: Vec<Target> = ids
        .iter()
        .filter(|(id, _)| !wanted.is_empty() && id.starts_with(&wanted))
        .map(|(_, t)| *t)
        .collect();
    // The tree resolves with `resolve_prefix` over its live IDs; `explain` words the outcome.
    match explain(text, resolve_prefix(text, ids.iter().cloned())) {
        Ok(target) => {
            let exact = ids.iter().any(|(id, t)| *id == wanted && *t == target);
            assert!(
                exact || matching == [target],
                "{text:?} resolved to {target}, but it names {matching:?}"
            );
        }
        Err(why) => {
            assert!(
                matching.len() != 1,
                "{text:?} names only {matching:?}, yet: {why}"
            );
            assert!(
                why.contains("no live connection or session") || why.contains("is ambiguous"),
                "an unclear error for {text:?}: {why}"
            );
        }
    }
}

/// One configuration file's text, as `serve --config` and `reload` read it.
pub fn config_text(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let path = Path::new("fuzz.toml");
    match Config::parse(&text, path) {
        Ok(config) => {
            let policy = config.timeouts.policy(&config.limits);
            let limits = &policy.limits;
            assert!(limits.prefix_v4 <= 32 && limits.prefix_v6 <= 128);
            assert_eq!(
                limits.max_connections,
                config.limits.max_connections as usize
            );
            assert_eq!(limits.max_per_user, config.limits.max_per_user as usize);
            assert_eq!(
                limits.max_sessions_per_connection,
                config.limits.max_sessions_per_connection as usize
            );
            assert_eq!(policy.login_grace, Some(config.timeouts.login_grace));
            assert_eq!(policy.idle, config.timeouts.idle);
            assert_eq!(policy.kill_grace, config.timeouts.kill_grace);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz.toml: ") && message.contains("line "),
                "an error that does not name the file and the line: {message:?}"
            );
        }
    }
}
