//! Sharded evaluation: `mde eval --shard I/4` in four processes (run at the same time), then
//! `--merge`, writes the same files as one `mde eval` into a fresh folder, byte for byte; a
//! shard killed midway (its store cut inside a record, as a killed writer leaves it) resumes on
//! re-run, and the merge then neither loses nor duplicates an item.
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};

mod support;
use support::eval_fx;

fn eval(data: &Path, model: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mde"));
    c.args([
        "eval",
        "mmbench",
        "--quiet",
        "--limit",
        "14",
        "--batch-size",
        "2",
    ])
    .arg("--data")
    .arg(data)
    .arg("--model")
    .arg(model)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env("NO_COLOR", "1");
    c
}

fn run(mut c: Command) -> Result<String> {
    let o = c.output()?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(o.status.success(), "mde eval failed: {err}");
    Ok(err)
}

#[test]
fn four_shards_merged_equal_one_process() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let model = d.join("model.toml");
    std::fs::write(&model, support::tiny_model_toml())?;
    let data = eval_fx().join("mmbench/MMBench_DEV_EN.tsv");

    let single = d.join("single");
    run(eval(&data, &model, &single, &[]))?;

    // Four shard processes at once, into one folder.
    let sharded = d.join("sharded");
    let children: Vec<_> = (0..4)
        .map(|i| {
            eval(&data, &model, &sharded, &["--shard", &format!("{i}/4")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for c in children {
        let o = c.wait_with_output()?;
        ensure!(
            o.status.success(),
            "shard: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Merging needs every shard complete: cut shard 2's store inside its last record, as a
    // process killed mid-append leaves it.
    let store = sharded.join("shards/2-of-4/predictions.jsonl");
    let text = std::fs::read(&store)?;
    ensure!(!text.is_empty(), "shard 2 wrote nothing");
    let keep = text.len() - text.len() / 3;
    std::fs::write(&store, &text[..keep])?;
    let o = eval(&data, &model, &sharded, &["--merge"]).output()?;
    ensure!(
        !o.status.success(),
        "merge of an incomplete shard succeeded"
    );
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("shard 2/4 is incomplete"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The re-run shard resumes (only its missing items), then the merge equals one process.
    run(eval(&data, &model, &sharded, &["--shard", "2/4"]))?;
    run(eval(&data, &model, &sharded, &["--merge"]))?;
    let (a, b) = (
        support::files(&single, &[])?,
        support::files(&sharded, &["shards"])?,
    );
    ensure!(
        a.keys().collect::<Vec<_>>() == b.keys().collect::<Vec<_>>(),
        "different files: {:?} vs {:?}",
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>()
    );
    for (k, v) in &a {
        if k == "report.md" {
            // The report names its own folder; the numbers in it are scores.json's.
            continue;
        }
        ensure!(
            &b[k] == v,
            "{k} differs between the merged shards and one process"
        );
    }
    let preds = String::from_utf8(b["predictions.jsonl"].clone())?;
    ensure!(
        preds.lines().count() == 14,
        "{} predictions",
        preds.lines().count()
    );
    Ok(())
}

#[test]
fn bad_shard_specs_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("model.toml");
    std::fs::write(&model, support::tiny_model_toml())?;
    let data = eval_fx().join("mmbench/MMBench_DEV_EN.tsv");
    for (spec, want) in [
        ("4/4", "0 <= I < N"),
        ("a/2", "not a whole number"),
        ("2", "I/N"),
    ] {
        let o = eval(&data, &model, &tmp.path().join("x"), &["--shard", spec]).output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        ensure!(!o.status.success() && err.contains(want), "{spec}: {err}");
    }
    let o = eval(&data, &model, &tmp.path().join("y"), &["--shard", "auto"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("neither RANK"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // RANK/WORLD_SIZE pick the shard.
    let out = tmp.path().join("z");
    let o = eval(&data, &model, &out, &["--shard", "auto"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "3")
        .output()?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ensure!(out.join("shards/1-of-3/predictions.jsonl").is_file());
    Ok(())
}
