//! Property tests of the parsers that take outside text: control request lines, graces, IDs
//! typed by an operator, and configuration files. The properties themselves live in
//! `fuzz/checks.rs`, shared with the cargo-fuzz targets that run them over millions of inputs;
//! here a few thousand generated inputs per property keep every `cargo test` exercising them.
//! Inputs are generated both at random and from the shape of valid input (so that most of them
//! get past the JSON or TOML syntax and reach the checks behind it).

#[path = "../fuzz/checks.rs"]
mod checks;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use sshvisor::daemon::control::{parse_request, COMMANDS};

/// Cases per property: enough to cover every shape below, quick in a debug build.
const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Durations as people write them, valid or nearly so.
fn duration_text() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("ns"),
        Just("ms"),
        Just("s"),
        Just("sec"),
        Just("m"),
        Just("min"),
        Just("h"),
        Just("d"),
        Just("w"),
        Just("M"),
        Just("y"),
        Just(""),
        Just("x"),
    ];
    let part = (0u64..100_000, unit).prop_map(|(n, u)| format!("{n}{u}"));
    prop_oneof![
        4 => prop::collection::vec(part, 1..4).prop_map(|p| p.join(" ")),
        1 => Just("off".to_string()),
        1 => "[0-9a-z .-]{0,12}",
        1 => any::<u64>().prop_map(|n| format!("{n}s")),
    ]
}

/// ID texts as operators type them: prefixes of the live IDs in `checks`, other hex, noise.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(aaaa1111|aaaa2222|bbbb0000)(-0000-4000-8000-00000000000[0-9])?",
        "[ ]?[0-9a-fA-F-]{0,36}[ ]?",
        "aaaa[0-9]{0,4}",
        ".{0,40}",
    ]
}

/// A JSON value of any kind, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A filter object: valid fields mostly, any value sometimes.
fn filter_json() -> impl Strategy<Value = Value> {
    let peer = prop_oneof![
        ("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}", 0u8..40)
            .prop_map(|(a, p)| json!({"addr": a, "prefix": p})),
        (Just("2001:db8::1"), 0u8..140).prop_map(|(a, p)| json!({"addr": a, "prefix": p})),
        any_json(),
    ];
    (
        prop::option::of("[a-z]{1,8}"),
        prop::option::of(peer),
        prop::option::of(any::<u64>()),
        prop::option::of(0u64..10_000_000),
    )
        .prop_map(|(user, peer, older, idle)| {
            let mut m = Map::new();
            if let Some(u) = user {
                m.insert("user".into(), u.into());
            }
            if let Some(p) = peer {
                m.insert("peer".into(), p);
            }
            if let Some(o) = older {
                m.insert("older_than".into(), o.into());
            }
            if let Some(i) = idle {
                m.insert("idle_over".into(), i.into());
            }
            Value::Object(m)
        })
}

/// A request line in the protocol's shape: a known command (or not) with its fields (valid
/// ones mostly, any sometimes, and an unknown field now and then).
fn request_json() -> impl Strategy<Value = Value> {
    let cmd = prop_oneof![
        8 => prop::sample::select(COMMANDS).prop_map(Value::from),
        1 => ".{0,10}".prop_map(Value::from),
        1 => any_json(),
    ];
    let field = |valid: BoxedStrategy<Value>| {
        prop::option::weighted(0.6, prop_oneof![6 => valid, 1 => any_json()])
    };
    (
        prop::option::weighted(0.9, any::<u64>()),
        prop::option::weighted(0.95, cmd),
        field(id_text().prop_map(Value::from).boxed()),
        field(".{0,20}".prop_map(Value::from).boxed()),
        field(duration_text().prop_map(Value::from).boxed()),
        field(filter_json().boxed()),
        field(any::<bool>().prop_map(Value::from).boxed()),
        prop::option::weighted(0.05, ("[a-z]{1,6}", any_json())),
    )
        .prop_map(|(id, cmd, target, reason, grace, filter, dry, extra)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            };
            put("id", id.map(Value::from));
            put("cmd", cmd);
            put("target", target);
            put("reason", reason);
            put("grace", grace);
            put("filter", filter);
            put("dry_run", dry);
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

/// A configuration file in TOML's shape: known keys mostly, with valid or wrong values.
fn config_toml() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..200).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("\"many\"".to_string()),
        Just("1.5".to_string()),
    ];
    let top = prop_oneof![
        prop_oneof![
            Just("\"127.0.0.1:2222\""),
            Just("\"[::1]:22\""),
            Just("\"localhost\""),
            Just("2222"),
        ]
        .prop_map(|v| format!("listen = {v}")),
        "[a-z./]{0,12}".prop_map(|v| format!("state_dir = {v:?}")),
        "[a-z./]{0,12}".prop_map(|v| format!("authorized_keys = {v:?}")),
        prop::collection::vec("[A-Z_]{1,8}", 0..3).prop_map(|v| format!("accept_env = {v:?}")),
        "[a-z./]{0,12}".prop_map(|v| format!("sftp_server = {v:?}")),
        Just("listen_address = \"x\"".to_string()),
    ];
    let timeouts = prop_oneof![
        prop::sample::select(vec![
            "login_grace",
            "idle",
            "max_lifetime",
            "session_idle",
            "keepalive_interval",
            "kill_grace",
        ])
        .prop_flat_map(|k| duration_text().prop_map(move |d| format!("{k} = {d:?}"))),
        number
            .clone()
            .prop_map(|n| format!("keepalive_count = {n}")),
    ];
    let limits = (
        prop::sample::select(vec![
            "max_connections",
            "max_per_source",
            "max_per_prefix",
            "prefix_v4",
            "prefix_v6",
            "max_per_user",
            "max_unauthenticated",
            "max_sessions_per_connection",
            "max_everything",
        ]),
        number,
    )
        .prop_map(|(k, n)| format!("{k} = {n}"));
    (
        prop::collection::vec(top, 0..3),
        prop::option::of(prop::collection::vec(timeouts, 0..4)),
        prop::option::of(prop::collection::vec(limits, 0..4)),
        prop::option::weighted(0.05, ".{0,20}"),
    )
        .prop_map(|(top, timeouts, limits, noise)| {
            let mut text = top.join("\n");
            if let Some(t) = timeouts {
                text.push_str("\n[timeouts]\n");
                text.push_str(&t.join("\n"));
            }
            if let Some(l) = limits {
                text.push_str("\n[limits]\n");
                text.push_str(&l.join("\n"));
            }
            if let Some(n) = noise {
                text.push_str(&n);
            }
            text.push('\n');
            text
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_on_the_control_socket_are_parsed_or_explained(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        checks::control_line(&bytes);
    }

    #[test]
    fn requests_in_the_protocols_shape_parse_and_round_trip_or_are_explained(
        request in request_json(),
    ) {
        checks::control_line(request.to_string().as_bytes());
    }

    #[test]
    fn graces_and_ids_an_operator_types_are_parsed_or_explained(
        grace in duration_text(),
        id in id_text(),
    ) {
        checks::grace_text(&grace);
        checks::target_text(&id);
    }

    #[test]
    fn any_configuration_text_is_accepted_whole_or_refused_with_the_file_and_line(
        text in prop_oneof![config_toml(), ".{0,200}"],
    ) {
        checks::config_text(text.as_bytes());
    }
}

/// Valid requests of every command parse (so the round trip in `checks` is exercised for each
/// of them, not only for what random generation happens to make valid).
#[test]
fn every_command_parses_in_its_documented_form() {
    let lines = [
        r#"{"id":1,"cmd":"ls"}"#,
        r#"{"id":2,"cmd":"ls","filter":{"user":"alice","peer":{"addr":"10.0.0.0","prefix":8}}}"#,
        r#"{"id":3,"cmd":"show","target":"aaaa1111"}"#,
        r#"{"id":4,"cmd":"kill","target":"aaaa2","reason":"maintenance","grace":"5s"}"#,
        r#"{"id":5,"cmd":"kill_where","filter":{"user":"bob"},"grace":"500ms","dry_run":true}"#,
        r#"{"id":6,"cmd":"kill_all","reason":"bye","grace":"1h"}"#,
        r#"{"id":7,"cmd":"drain","grace":"2s"}"#,
        r#"{"id":8,"cmd":"watch"}"#,
        r#"{"id":9,"cmd":"reload"}"#,
        r#"{"id":10,"cmd":"stats"}"#,
        r#"{"id":11,"cmd":"penalties"}"#,
        r#"{"id":12,"cmd":"penalties","clear":"10.0.0.0/8"}"#,
        r#"{"id":13,"cmd":"nodes"}"#,
        r#"{"id":14,"cmd":"ls","fleet":true,"timeout":"2s"}"#,
        r#"{"id":15,"cmd":"kill_where","filter":{"user":"bob"},"fleet":true,"timeout":"1s"}"#,
        r#"{"id":16,"cmd":"watch","fleet":true}"#,
        r#"{"id":17,"cmd":"kill","target":"aaaa2","reason":"maintenance","warn":"60s"}"#,
        r#"{"id":18,"cmd":"cancel","target":"aaaa2"}"#,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let request = parse_request(line).unwrap_or_else(|e| panic!("{line}: {:?}", e.error));
        let value = serde_json::to_value(&request).expect("prints");
        seen.insert(value["cmd"].as_str().expect("a cmd").to_string());
        checks::control_line(line.as_bytes());
    }
    let all: std::collections::BTreeSet<String> = COMMANDS.iter().map(|c| c.to_string()).collect();
    assert_eq!(seen, all, "a command without a documented form here");
}

/// The generators reach past the syntax: a fair share of what they make is valid, so the
/// properties of valid input (round trips, the policy from a file) are really exercised.
#[test]
fn the_generators_make_valid_input_often_enough_to_exercise_its_properties() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let share = |runner: &mut TestRunner, valid: &dyn Fn(&mut TestRunner) -> bool| {
        (0..1000).filter(|_| valid(runner)).count()
    };
    let requests = share(&mut runner, &|r| {
        let line = request_json().new_tree(r).expect("a value").current();
        parse_request(&line.to_string()).is_ok()
    });
    let configs = share(&mut runner, &|r| {
        let text = config_toml().new_tree(r).expect("a value").current();
        sshvisor::daemon::config::Config::parse(&text, std::path::Path::new("x.toml")).is_ok()
    });
    println!("valid: {requests} of 1000 requests, {configs} of 1000 configurations");
    assert!(requests >= 100, "only {requests} of 1000 requests parse");
    assert!(
        configs >= 100,
        "only {configs} of 1000 configurations parse"
    );
}
