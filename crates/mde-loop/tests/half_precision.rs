//! A loop round with a real-checkpoint model in f16: the tiny MiniGPT-4 fixture
//! (MDE_GOLDEN_DIR, the real on-disk layouts) loaded in half precision, evaluated, trained in
//! `lora+fc` with f32 master weights and dynamic loss scaling, and evaluated again, on the
//! tiny world of `configs/loop-tiny.toml`. The full modes, which train the base weights
//! themselves, are refused for a half-precision model before any work.

use std::path::{Path, PathBuf};

use mde_loop::config::LoopConfig;
use mde_loop::run::LoopRun;

fn golden() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

/// `configs/loop-tiny.toml` with the fixture checkpoint as `[model]` in `dtype`.
fn config(cache: &Path, dtype: &str, mode: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/loop-tiny.toml");
    let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(path)?)?;
    let g = golden();
    let mut m = toml::Table::new();
    m.insert("kind".into(), "minigpt4".into());
    for (k, rel) in [
        ("blip2", "blip2"),
        ("vicuna", "vicuna"),
        ("projector", "minigpt4/pretrained_minigpt4.pth"),
    ] {
        m.insert(k.into(), g.join(rel).display().to_string().into());
    }
    m.insert("dtype".into(), dtype.into());
    t.insert("model".into(), m.into());
    // A real checkpoint is already trained: no base build.
    t.remove("base");
    let run = t
        .get_mut("run")
        .and_then(|r| r.as_table_mut())
        .ok_or_else(|| anyhow::anyhow!("[run]"))?;
    run.insert("cache_dir".into(), cache.display().to_string().into());
    let train = t
        .get_mut("train")
        .and_then(|r| r.as_table_mut())
        .ok_or_else(|| anyhow::anyhow!("[train]"))?;
    train.insert("mode".into(), mode.into());
    // The fixture's LLaMA has q/k/v/o and MLP projections like the real one.
    train.insert("steps".into(), 3.into());
    Ok(toml::to_string(&t)?)
}

#[test]
fn an_f16_round_on_the_fixture_checkpoint_runs_end_to_end() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let text = config(&tmp.path().join("cache"), "f16", "lora+fc")?;
    let cfg = LoopConfig::parse(&text, None)?;
    let out = tmp.path().join("run");
    let mut run = LoopRun::new(cfg, &out)?;
    run.set_progress(false);
    let report = run.run()?;
    assert_eq!(report.rounds.len(), 2);
    let train = report.rounds[1].train.as_ref().expect("round 1 trained");
    assert_eq!(train.steps, 3);
    for l in [train.first_loss, train.final_loss] {
        let l = l.expect("a logged loss");
        assert!(l.is_finite() && l > 0.0, "loss {l}");
    }
    for r in &report.rounds {
        let m = r.mine.as_ref().expect("mining evaluation");
        assert!(m.items > 0 && (0.0..=100.0).contains(&m.overall));
    }
    // The round's trained weights: f32 masters, exported as such.
    assert!(out.join("round_1/train/final").is_dir());
    Ok(())
}

#[test]
fn full_modes_are_refused_for_a_half_precision_model() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    for (dtype, mode) in [("f16", "llm+fc"), ("bf16", "full"), ("f16", "frozen-vit")] {
        let text = config(&tmp.path().join("cache"), dtype, mode)?;
        let e = LoopConfig::parse(&text, None).unwrap_err().to_string();
        assert!(
            e.contains("[train] mode") && e.contains(mode) && e.contains("dtype"),
            "{dtype} {mode}: {e}"
        );
    }
    // lora+fc, lora and fc are accepted in every dtype.
    for (dtype, mode) in [("f16", "lora+fc"), ("bf16", "lora"), ("f16", "fc")] {
        LoopConfig::parse(&config(&tmp.path().join("cache"), dtype, mode)?, None)?;
    }
    Ok(())
}
