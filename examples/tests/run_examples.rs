//! Every example runs (CI builds and runs them through this test).
use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let o = Command::new(bin).args(args).output().expect("run example");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{bin} failed:\n{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn score_only_prints_the_official_numbers() {
    let out = run(env!("CARGO_BIN_EXE_score_only"), &[]);
    assert!(
        out.contains("MMBench circular") && out.contains("circular Overall: Some("),
        "{out}"
    );
}

#[test]
fn embedded_sampler_builds_queries() {
    let out = run(env!("CARGO_BIN_EXE_embedded_sampler"), &[]);
    let n = out.lines().filter(|l| l.starts_with('{')).count();
    assert!(n > 0, "{out}");
    for l in out.lines() {
        let q: mde_core::records::GenQuery = serde_json::from_str(l).expect("a GenQuery");
        assert!(!q.boxes.is_empty());
    }
}

#[test]
fn full_loop_runs_one_round() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run(env!("CARGO_BIN_EXE_full_loop"), &[out.to_str().unwrap()]);
    assert!(out.is_dir());
}
