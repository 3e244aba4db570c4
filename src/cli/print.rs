//! What `sshvisor ctl` prints for people: the `ls` table, one connection in detail, kill
//! reports, events and stats; and the one way every command prints its kill reports (a line
//! each, or JSON lines with `--json`).

use std::time::{Duration, SystemTime};

use sshvisor::fleet::{FleetKill, FleetListing, Located, NodeOutcome};
use sshvisor_actors::{ConnectionInfo, Credential, KillReport, Target};

/// Prints kill reports as they are printed everywhere in `ctl`: one line each for people, one
/// JSON object per line with `json`.
pub fn reports(reports: &[KillReport], json: bool) -> serde_json::Result<()> {
    for report in reports {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", format_report(report));
        }
    }
    Ok(())
}

fn age(since: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A byte count for people: 512B, 3.2K, 14M, 2.1G.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64;
    for unit in UNITS {
        value /= 1024.0;
        if value < 1024.0 || unit == "T" {
            return if value < 10.0 {
                format!("{value:.1}{unit}")
            } else {
                format!("{value:.0}{unit}")
            };
        }
    }
    format!("{n}B")
}

fn or_dash(text: Option<&str>) -> &str {
    match text {
        Some(t) if !t.is_empty() => t,
        _ => "-",
    }
}

/// How long a connection has been idle, whole seconds, as `ls` and `show` print it.
fn idle(c: &ConnectionInfo) -> String {
    c.idle_ms
        .map(|ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string())
        .unwrap_or_else(|| "-".into())
}

/// A connection's bytes in and out (`1.2K/3.4M`), as `ls` and `show` print them.
fn in_out(c: &ConnectionInfo) -> String {
    match (c.bytes_in, c.bytes_out) {
        (Some(i), Some(o)) => format!("{}/{}", bytes(i), bytes(o)),
        _ => "-".into(),
    }
}

/// The `ls` table: one row per connection, its sessions indented beneath it.
pub fn format_table(all: &[ConnectionInfo]) -> String {
    table(all, None)
}

/// A connection's state, with the announced kill it waits for (`kill --warn`).
fn state_with_pending(c: &ConnectionInfo) -> String {
    let state = format!("{:?}", c.state).to_lowercase();
    match &c.pending_kill {
        Some(pending) => {
            let left = pending
                .at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            format!(
                "{state}, killed in {}: {}",
                humantime::format_duration(Duration::from_secs(left.as_secs())),
                pending.reason
            )
        }
        None => state,
    }
}

/// The table, with a NODE column first when `nodes` names each connection's node.
fn table(all: &[ConnectionInfo], nodes: Option<&[String]>) -> String {
    let mut rows: Vec<Vec<String>> = vec![vec![
        "ID".into(),
        "USER".into(),
        "PEER".into(),
        "AGE".into(),
        "STATE".into(),
        "IDLE".into(),
        "IN/OUT".into(),
        "SESSIONS".into(),
    ]];
    for c in all {
        rows.push(vec![
            c.id.to_string(),
            or_dash(c.user.as_deref()).to_string(),
            c.peer.to_string(),
            age(c.started),
            state_with_pending(c),
            idle(c),
            in_out(c),
            c.sessions.len().to_string(),
        ]);
    }
    if let Some(nodes) = nodes {
        rows[0].insert(0, "NODE".into());
        for (row, node) in rows[1..].iter_mut().zip(nodes) {
            row.insert(0, node.clone());
        }
    }
    let mut widths = vec![0usize; rows[0].len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(widths.iter())
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if let Some(key) = i.checked_sub(1).and_then(|c| credential(&all[c])) {
            out.push_str(&format!("  key {key}\n"));
        }
        if i > 0 {
            for s in &all[i - 1].sessions {
                let kind = format!("{:?}", s.kind).to_lowercase();
                let what = match &s.command {
                    Some(cmd) => format!("{kind} {cmd}"),
                    None => kind,
                };
                let pty = match &s.pty {
                    Some(p) => format!("pty {}x{}", p.cols, p.rows),
                    None => "no pty".into(),
                };
                let procs = s
                    .processes
                    .map(|n| format!("{n} proc{}", if n == 1 { "" } else { "s" }))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  └ {}  {}  {}  {}  {}\n",
                    s.id,
                    age(s.started),
                    what,
                    pty,
                    procs
                ));
            }
        }
    }
    if all.is_empty() {
        out.push_str("(no connections)\n");
    }
    out
}

/// The key (and certificate) a connection logged in with, in one line: the fingerprint, and
/// for a certificate its key ID, serial and CA.
fn credential(c: &ConnectionInfo) -> Option<String> {
    c.credential.as_ref().map(describe_credential)
}

fn describe_credential(c: &Credential) -> String {
    match &c.certificate {
        None => c.key_fingerprint.clone(),
        Some(cert) => format!(
            "{}  certificate id {:?} serial {} CA {}",
            c.key_fingerprint, cert.key_id, cert.serial, cert.ca_fingerprint
        ),
    }
}

/// One connection in detail.
pub fn format_show(c: &ConnectionInfo) -> String {
    let mut out = format!(
        "connection {}\n  user:     {}\n  peer:     {}\n  client:   {}\n  auth:     {}\n  key:      {}\n  started:  {} ({} ago)\n  state:    {}\n  idle:     {}\n  in/out:   {}\n  sessions: {}\n",
        c.id,
        or_dash(c.user.as_deref()),
        c.peer,
        or_dash(c.client_version.as_deref()),
        or_dash(c.auth_method.as_deref()),
        credential(c).unwrap_or_else(|| "-".into()),
        humantime::format_rfc3339_seconds(c.started),
        age(c.started),
        format!("{:?}", c.state).to_lowercase(),
        idle(c),
        in_out(c),
        c.sessions.len()
    );
    for s in &c.sessions {
        let pty = match &s.pty {
            Some(p) => format!("pty {} {}x{}", p.term, p.cols, p.rows),
            None => "no pty".into(),
        };
        out.push_str(&format!(
            "    {}  {:?}  {}  {}  {} processes  started {} ago\n",
            s.id,
            s.kind,
            or_dash(s.command.as_deref()),
            pty,
            s.processes.unwrap_or(0),
            age(s.started)
        ));
    }
    out
}

/// One kill report as a sentence.
pub fn format_report(report: &KillReport) -> String {
    let whose = match (&report.user, report.peer) {
        (Some(user), Some(peer)) => format!(" of {user} from {peer}"),
        (None, Some(peer)) => format!(" from {peer}"),
        _ => String::new(),
    };
    let what = match report.target {
        Target::Connection(id) => format!(
            "killed connection {id}{whose} ({} session{} closed)",
            report.sessions_closed,
            if report.sessions_closed == 1 { "" } else { "s" }
        ),
        Target::Session(id) => format!("killed session {id}{whose}"),
    };
    let left = match report.processes_left {
        0 => String::new(),
        n => format!(
            "; {n} process{} still running",
            if n == 1 { "" } else { "es" }
        ),
    };
    format!(
        "{what} in {:.1} ms{}{left}",
        report.elapsed.as_secs_f64() * 1e3,
        if report.forced {
            " (forced: the grace ran out)"
        } else {
            ""
        }
    )
}

/// The time an event of `watch` carries (`at`), or now for one that has none (an older server).
pub fn event_time(value: &serde_json::Value) -> SystemTime {
    value["at"]
        .as_str()
        .and_then(|at| humantime::parse_rfc3339(at).ok())
        .unwrap_or_else(SystemTime::now)
}

/// One lifecycle event as a line for people: its time, what, which connection, details.
pub fn format_event(event: &sshvisor_actors::Event, at: SystemTime) -> String {
    use sshvisor_actors::{DisconnectCause, Event};
    let now = humantime::format_rfc3339_millis(at);
    let what = match event {
        Event::Connected { conn, peer } => format!("connected      {conn}  from {peer}"),
        Event::Authenticated {
            conn,
            user,
            method,
            credential,
        } => format!(
            "authenticated  {conn}  user {user} ({method}){}",
            credential
                .as_ref()
                .map(|c| format!("  key {}", describe_credential(c)))
                .unwrap_or_default()
        ),
        Event::SessionOpened { conn, session } => format!("session opened {conn}  {session}"),
        Event::SessionStarted {
            conn,
            session,
            kind,
            command,
            pty,
        } => format!(
            "session start  {conn}  {session}  {}{}{}",
            format!("{kind:?}").to_lowercase(),
            command
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default(),
            if *pty { "  (pty)" } else { "" }
        ),
        Event::SessionClosed {
            conn,
            session,
            exit,
            killed,
        } => format!(
            "session closed {conn}  {session}  {exit:?}{}",
            killed
                .as_deref()
                .map(|r| format!(" (killed: {r})"))
                .unwrap_or_default()
        ),
        Event::Refused {
            peer,
            reason,
            conn,
            user,
        } => match (conn, user) {
            (Some(conn), Some(user)) => {
                format!("refused        {conn}  user {user}  {peer}  {reason}")
            }
            _ => format!("refused        {peer}  {reason}"),
        },
        Event::Stopped => "stopped        (the server's tree; no event follows)".to_string(),
        Event::KillCancelled { conn, by } => format!(
            "kill cancelled {conn}{}",
            by.as_deref()
                .map(|b| format!("  (by {b})"))
                .unwrap_or_default()
        ),
        Event::Disconnected { conn, cause, .. } => {
            let cause = match cause {
                DisconnectCause::ByClient => "by the client".to_string(),
                DisconnectCause::Killed { reason, by } => format!(
                    "killed: {reason}{}",
                    by.as_deref()
                        .map(|b| format!(" (by {b})"))
                        .unwrap_or_default()
                ),
                DisconnectCause::Error { message } => format!("error: {message}"),
            };
            format!("disconnected   {conn}  {cause}")
        }
    };
    format!("{now}  {what}")
}

/// The table of connections held across the fleet, with their NODE column.
fn located_table(connections: &[Located<ConnectionInfo>]) -> String {
    let (nodes, all): (Vec<String>, Vec<ConnectionInfo>) = connections
        .iter()
        .map(|c| (c.node.clone(), c.item.clone()))
        .unzip();
    table(&all, Some(&nodes))
}

/// `ctl ls --fleet`: the table with a NODE column, then a line for each node.
pub fn format_fleet_listing(listing: &FleetListing) -> String {
    let mut out = located_table(&listing.connections);
    out.push_str(&node_outcomes(&listing.nodes, "listed"));
    out
}

/// `ctl kill --fleet`: each report with its node (or, dry, the table of what would be
/// killed), then each node's part.
pub fn format_fleet_kill(outcome: &FleetKill, dry_run: bool) -> String {
    if dry_run {
        let mut out = located_table(&outcome.would_kill);
        out.push_str(&node_outcomes(&outcome.nodes, "would kill"));
        return out;
    }
    let mut out = String::new();
    for report in &outcome.reports {
        out.push_str(&format!(
            "{}: {}\n",
            report.node,
            format_report(&report.item)
        ));
    }
    out.push_str(&node_outcomes(&outcome.nodes, "killed"));
    out
}

/// One line per node of a fleet answer: how many it `did`, or why it did nothing.
fn node_outcomes(nodes: &[NodeOutcome], did: &str) -> String {
    let mut out = String::new();
    for node in nodes {
        let name = &node.node;
        let error = node.error.as_deref().unwrap_or("no reason given");
        if node.is_answered() {
            out.push_str(&format!("node {name}: {did} {}", node.count.unwrap_or(0)));
            // An answer may come with a note (reports left out of a very big answer).
            if let Some(note) = &node.error {
                out.push_str(&format!(" ({note})"));
            }
            out.push('\n');
            continue;
        }
        let status = serde_json::to_value(node.status)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default();
        if error.starts_with(&status) {
            out.push_str(&format!("node {name}: {error}\n"));
        } else {
            out.push_str(&format!("node {name}: {status} ({error})\n"));
        }
    }
    out
}

/// `ctl nodes`: one row per node.
pub fn format_nodes(value: &serde_json::Value) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "ADDRESS".into(),
        "SSH".into(),
        "STATE".into(),
        "LAST HEARD".into(),
        "CONNS".into(),
        "SESSIONS".into(),
    ]];
    let ago = |v: &serde_json::Value| -> Option<String> {
        let at = serde_json::from_value::<SystemTime>(v.clone()).ok()?;
        Some(format!("{} ago", age(at)))
    };
    let count = |v: &serde_json::Value| v.as_u64().map_or("-".into(), |n| n.to_string());
    for node in value.as_array().into_iter().flatten() {
        let mut name = node["name"].as_str().unwrap_or("?").to_string();
        if node["this"] == true {
            name.push_str(" (this)");
        }
        let state = match node["state"].as_str() {
            Some("unreachable") => format!(
                "unreachable since {}",
                ago(&node["since"]).unwrap_or_else(|| "?".into())
            ),
            other => other.unwrap_or("?").to_string(),
        };
        rows.push([
            name,
            or_dash(node["fleet_addr"].as_str()).to_string(),
            or_dash(node["ssh_addr"].as_str()).to_string(),
            state,
            ago(&node["last_heard"]).unwrap_or_else(|| "never".into()),
            count(&node["connections"]),
            count(&node["sessions"]),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths.iter())
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One event of `ctl watch --fleet` as a line for people: the node first.
pub fn format_fleet_event(value: &serde_json::Value) -> String {
    let node = value["node"].as_str().unwrap_or("?");
    let line = match value["event"].as_str() {
        Some("node_unreachable") => "node unreachable".to_string(),
        Some("node_up") => "node up".to_string(),
        Some("missed") => format!("missed {} event(s)", value["count"]),
        _ => match serde_json::from_value::<sshvisor_actors::Event>(value.clone()) {
            Ok(event) => format_event(&event, event_time(value)),
            Err(_) => value.to_string(),
        },
    };
    format!("[{node}] {line}")
}

/// `ctl stats` as lines for a person.
pub fn format_stats(value: &serde_json::Value) -> String {
    let n = |v: &serde_json::Value| v.as_u64().map_or("?".to_string(), |n| n.to_string());
    let (tree, process) = (&value["tree"], &value["process"]);
    let penalties = &value["penalties"];
    let penalties = if penalties.is_object() {
        if penalties["enabled"].as_bool() == Some(false) {
            "penalties   off\n".to_string()
        } else {
            format!(
                "penalties   {} connections refused, {} sources penalized now ({} tracked)\n",
                n(&penalties["refused"]),
                n(&penalties["penalized"]),
                n(&penalties["tracked"]),
            )
        }
    } else {
        String::new()
    };
    format!(
        "connections {} (actors {})\nsessions    {} (actors {})\nwaiting kills {}\nmemory      PSS {} KiB, RSS {} KiB\nopen fds    {}\nthreads     {}\nprocesses   contained by {}{}\n{penalties}",
        n(&tree["connections"]),
        n(&tree["connection_actors"]),
        n(&tree["sessions"]),
        n(&tree["session_actors"]),
        n(&tree["waiting_kills"]),
        n(&process["pss_kib"]),
        n(&process["rss_kib"]),
        n(&process["open_fds"]),
        n(&process["threads"]),
        process["containment"].as_str().unwrap_or("?"),
        process["containment_location"]
            .as_str()
            .map(|at| format!(" ({at})"))
            .unwrap_or_default(),
    )
}

/// `ctl penalties`: one line per source, longest penalty first.
pub fn format_penalties(value: &serde_json::Value) -> String {
    let rows = value.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        return "no source has penalty time\n".into();
    }
    let mut out = format!(
        "{:<24} {:>8} {:<9} {:>8}  {}\n",
        "SOURCE", "LEFT", "STATE", "OFFENCES", "LAST REASON"
    );
    for row in rows {
        let left = row["left_ms"].as_u64().unwrap_or(0);
        let left = humantime::format_duration(std::time::Duration::from_secs(left.div_ceil(1000)));
        let state = if row["enforced"].as_bool() == Some(true) {
            "refused"
        } else {
            "counting"
        };
        out.push_str(&format!(
            "{:<24} {:>8} {:<9} {:>8}  {}\n",
            row["source"].as_str().unwrap_or("?"),
            left.to_string(),
            state,
            row["offences"].as_u64().unwrap_or(0),
            row["reason"].as_str().unwrap_or("?"),
        ));
    }
    out
}

/// `ctl penalties --clear`: what was removed.
pub fn format_cleared(value: &serde_json::Value) -> String {
    let removed: Vec<&str> = value["removed"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if removed.is_empty() {
        "no penalized source matched: nothing removed\n".into()
    } else {
        format!(
            "removed the penalties of {}: {}\n",
            match removed.len() {
                1 => "1 source".to_string(),
                n => format!("{n} sources"),
            },
            removed.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_says_when_processes_were_left_and_is_quiet_otherwise() {
        let mut report = KillReport {
            target: Target::Connection(sshvisor_actors::ConnId::new_random()),
            sessions_closed: 1,
            elapsed: std::time::Duration::from_millis(3),
            forced: true,
            processes_left: 0,
            user: Some("alice".into()),
            peer: Some("192.0.2.7:50022".parse().unwrap()),
        };
        let text = format_report(&report);
        assert!(
            text.contains("of alice from 192.0.2.7:50022 (1 session closed) in 3.0 ms (forced"),
            "{text}"
        );
        assert!(!text.contains("still running"), "{text}");
        report.processes_left = 2;
        assert!(format_report(&report).ends_with("; 2 processes still running"));
    }
}
