//! The benchmark script still works: `bench/run.py --smoke` against sshvisor and the bare russh
//! server with this build's `sshvisor-bench`, a few seconds, its report written to a temporary
//! directory (the real figures come from `bench/run.sh`, never from `cargo test`).

use std::process::Command;

#[test]
fn the_benchmark_script_runs_end_to_end_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("BENCHMARKS.md");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let run = Command::new("python3")
        .arg(format!("{root}/bench/run.py"))
        .args(["--smoke", "--servers", "sshvisor,bare", "--bench-bin"])
        .arg(env!("CARGO_BIN_EXE_sshvisor-bench"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench/run.py --smoke failed:\n{log}");
    let report = std::fs::read_to_string(&out).unwrap();
    for heading in [
        "## 1. Kill latency",
        "## 2. Kill-all",
        "## 3. Memory per held connection",
        "## 4. Handshake rate",
    ] {
        assert!(report.contains(heading), "{heading} missing:\n{report}");
    }
    // sshvisor was held, killed one by one and all at once; both servers churned.
    assert!(report.contains("| 10 | sshvisor | "), "{report}");
    assert!(!report.contains("failed)"), "{report}");
    let svg = std::fs::read_to_string(dir.path().join("BENCHMARKS.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}
