//! `mde X` and the library step X are the same code: run both on the same inputs and compare
//! the files they write byte for byte.
//!
//! Evaluate: `mde eval` against `mde_eval::step::evaluate` (what the loop's evaluation steps,
//! `mde train`'s validation and the examples call), with the tiny fixture model on the MMBench
//! fixture. The prediction store and every official prediction file must be identical.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use mde_eval::runner::{load_items_for, Benchmark, ImageLoader, LoadPurpose, RunConfig};
use mde_eval::step::{evaluate, EvalDir};
use minigpt4::eval_adapter::{EvalModelConfig, MiniGpt4Eval};

mod support;
use support::eval_fx;

/// Every file below `dir` (relative path -> bytes).
fn files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.insert(
                    p.strip_prefix(root)?.display().to_string(),
                    std::fs::read(&p)?,
                );
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

#[test]
fn mde_eval_equals_the_evaluate_step() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model_toml = tmp.path().join("model.toml");
    std::fs::write(&model_toml, support::tiny_model_toml())?;
    let data = eval_fx().join("mmbench/MMBench_DEV_EN.tsv");
    let limit = 3;

    // 1. The CLI.
    let cli_out = tmp.path().join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(["eval", "mmbench", "--quiet", "--limit", &limit.to_string()])
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(&model_toml)
        .arg("--out")
        .arg(&cli_out)
        .output()?;
    ensure!(
        o.status.success(),
        "mde eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // 2. The library step, configured as `mde eval` configures it by default.
    let mut cfg: EvalModelConfig = toml::from_str(&std::fs::read_to_string(&model_toml)?)?;
    cfg.resolve_paths(tmp.path());
    let mut model = MiniGpt4Eval::load(&cfg)?;
    let root = data.parent().context("data folder")?.to_path_buf();
    let items = load_items_for(
        Benchmark::MMBench,
        &data,
        Some(&root),
        LoadPurpose::Evaluation,
    )?;
    let mut rc = RunConfig::new(Benchmark::MMBench);
    rc.limit = Some(limit);
    rc.progress = false;
    let lib_out = tmp.path().join("lib");
    let ev = evaluate(
        &mut model,
        Benchmark::MMBench,
        &data,
        &items,
        &rc,
        &ImageLoader::new(Some(root)),
        &EvalDir::new(&lib_out),
    )?;
    ensure!(ev.scored.is_ok(), "scoring failed: {:?}", ev.scored.err());
    ensure!(
        ev.outcome.predictions.len() == limit.min(ev.selected.len()) && !ev.selected.is_empty(),
        "predictions"
    );

    // 3. The step's files, byte for byte.
    let (cli, lib) = (files(&cli_out)?, files(&lib_out)?);
    ensure!(!lib.is_empty(), "the step wrote nothing");
    for (rel, bytes) in &lib {
        let other = cli
            .get(rel)
            .with_context(|| format!("mde eval did not write {rel}"))?;
        ensure!(
            other == bytes,
            "{rel} differs between mde eval and the step"
        );
    }
    ensure!(
        lib.contains_key("predictions.jsonl"),
        "no predictions.jsonl"
    );
    ensure!(
        lib.keys().any(|k| k.starts_with("official/")),
        "no official prediction file"
    );
    Ok(())
}
