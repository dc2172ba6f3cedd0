//! Data-parallel shards (`TrainConfig::shards`): sharded gradients equal the unsharded ones
//! up to float summation order in every kind of mode, and a sharded LoRA run with dropout
//! resumes bit-exact.
mod common;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use mde_train::trainer::{load_model, load_model_varmap, ImageMode, LoraSettings, OptimSettings};
use mde_train::{RunOptions, TrainConfig, TrainMode, Trainer};

fn config(mode: TrainMode, image_mode: ImageMode, shards: usize) -> TrainConfig {
    TrainConfig {
        mode,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: ["q_proj", "v_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
        optim: OptimSettings {
            init_lr: 1e-3,
            warmup_steps: 1,
            ..Default::default()
        },
        // Odd on purpose: two shards of unequal size.
        batch_size: 3,
        accum_steps: 2,
        max_epoch: 1,
        iters_per_epoch: 4,
        checkpoint_every: 2,
        seed: 5,
        grad_clip: Some(1.0),
        image_mode,
        shards,
        ..Default::default()
    }
}

fn trainer(run: &Path, cfg: TrainConfig) -> Result<Trainer> {
    let dev = Device::Cpu;
    Ok(if cfg.mode.needs_varmap() {
        let (m, vm, tok) = load_model_varmap(&common::golden_paths(), &dev)?;
        Trainer::new_full(m, vm, tok, common::caption_datasets()?, cfg, run)?
    } else {
        let (m, tok) = load_model(&common::golden_paths(), DType::F32, &dev)?;
        Trainer::new(m, tok, common::caption_datasets()?, cfg, run)?
    })
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

#[test]
fn sharded_gradients_match_unsharded() -> Result<()> {
    for (mode, image_mode) in [
        (TrainMode::LoraFc, ImageMode::Train),
        (TrainMode::Full, ImageMode::Train),
        // Eval preprocessing with a frozen vision side: the Q-Former feature cache is sliced.
        (TrainMode::LlmFc, ImageMode::Eval),
    ] {
        let mut got = Vec::new();
        for shards in [1, 2] {
            let run = tempfile::tempdir()?;
            let mut t = trainer(run.path(), config(mode, image_mode, shards))?;
            got.push(t.loss_and_gradients()?);
        }
        let (l1, g1) = &got[0];
        let (l2, g2) = &got[1];
        let name = mode.name();
        assert!(l1.is_finite(), "{name}: loss {l1}");
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs(),
            "{name}: loss {l1} (1 shard) vs {l2} (2 shards)"
        );
        assert!(!g1.is_empty(), "{name}: no gradient");
        let g2: HashMap<&str, &Tensor> = g2.iter().map(|(n, g)| (n.as_str(), g)).collect();
        assert_eq!(g1.len(), g2.len(), "{name}: gradient sets differ");
        // Whole-gradient check, then per tensor. Some gradients are zero in exact arithmetic
        // (e.g. attention key biases: softmax ignores a per-query shift) and hold only
        // rounding noise; per tensor they are compared against 1% of the whole norm.
        let mut diffs = Vec::new();
        for (n, a) in g1 {
            let b = g2
                .get(n.as_str())
                .ok_or_else(|| anyhow::anyhow!("{name}: no sharded gradient for {n}"))?;
            diffs.push((n, norm(a)?, norm(&(a - *b)?)?));
        }
        let total = diffs.iter().map(|d| d.1 * d.1).sum::<f64>().sqrt();
        let total_diff = diffs.iter().map(|d| d.2 * d.2).sum::<f64>().sqrt();
        assert!(
            total > 0.0 && total_diff <= 1e-5 * total,
            "{name}: |g1 - g2| = {total_diff:e}, |g1| = {total:e}"
        );
        let mut nonzero = 0;
        for (n, na, nd) in diffs {
            assert!(
                nd <= 1e-5 * na.max(1e-2 * total),
                "{name}: {n}: |g1 - g2| = {nd:e}, |g1| = {na:e}"
            );
            nonzero += usize::from(na > 1e-2 * total);
        }
        assert!(nonzero > 0, "{name}: all gradients are zero");
    }
    Ok(())
}

#[test]
fn sharded_lora_dropout_run_resumes_bit_exact() -> Result<()> {
    let mut cfg = config(TrainMode::LoraFc, ImageMode::Train, 2);
    cfg.lora.dropout = 0.1;
    let total = cfg.total_steps();
    let half = total / 2;
    cfg.checkpoint_every = half;

    let run_a = tempfile::tempdir()?;
    let mut a = trainer(run_a.path(), cfg.clone())?;
    let init = common::snapshot(&a)?;
    let rep_a = a.run(None, RunOptions::default())?;
    assert_eq!(a.step(), total);
    let fin_a = common::snapshot(&a)?;
    assert_ne!(init, fin_a, "training changed nothing");

    let run_b = tempfile::tempdir()?;
    let mut b = trainer(run_b.path(), cfg.clone())?;
    b.run(
        None,
        RunOptions {
            stop_after: Some(half),
            progress: false,
        },
    )?;
    drop(b);
    let mut b = trainer(run_b.path(), cfg.clone())?;
    assert!(b.resumed_from().is_some(), "did not resume");
    assert_eq!(b.step(), half);
    let rep_b = b.run(None, RunOptions::default())?;
    let la: Vec<_> = rep_a
        .iter()
        .filter(|r| r.step > half)
        .map(|r| (r.step, r.loss.to_bits()))
        .collect();
    let lb: Vec<_> = rep_b.iter().map(|r| (r.step, r.loss.to_bits())).collect();
    assert_eq!(la, lb, "losses after resume differ");
    assert!(
        common::snapshot(&b)? == fin_a,
        "resumed weights differ from the straight run"
    );

    // The same sharded run without dropout trains differently: dropout really runs in the
    // shards (their LLaMA replicas carry the adapters' dropout).
    let run_c = tempfile::tempdir()?;
    let mut no_drop = cfg.clone();
    no_drop.lora.dropout = 0.0;
    let rep_c = trainer(run_c.path(), no_drop)?.run(None, RunOptions::default())?;
    assert_ne!(
        rep_a.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>(),
        rep_c.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn shards_field_is_optional_and_checked() -> Result<()> {
    let old: TrainConfig = serde_json::from_str(r#"{"batch_size": 4, "mode": "lora+fc"}"#)?;
    assert_eq!(old.shards, 1);
    let new: TrainConfig = serde_json::from_str(r#"{"shards": 2}"#)?;
    assert_eq!(new.shards, 2);
    assert!(serde_json::from_str::<TrainConfig>(r#"{"shardz": 2}"#).is_err());
    let run = tempfile::tempdir()?;
    let bad = config(TrainMode::LoraFc, ImageMode::Train, 0);
    let err = trainer(run.path(), bad).err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("shards")),
        "{err:?}"
    );
    Ok(())
}
