//! `full`, `frozen-vit` and `llm+fc` training on the tiny fixture model: which parameters train, exact
//! resume, caches that do not change results, weight-decay groups and the export.
mod common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use mde_train::trainer::{load_model_varmap, ImageMode, OptimSettings};
use mde_train::{RunOptions, TrainConfig, TrainMode, Trainer};

fn config(mode: TrainMode, image_mode: ImageMode) -> TrainConfig {
    TrainConfig {
        mode,
        optim: OptimSettings {
            init_lr: 1e-3,
            warmup_steps: 1,
            ..Default::default()
        },
        batch_size: 2,
        accum_steps: 2,
        max_epoch: 1,
        iters_per_epoch: 4,
        checkpoint_every: 2,
        seed: 11,
        grad_clip: Some(1.0),
        image_mode,
        ..Default::default()
    }
}

fn trainer(run: &Path, cfg: TrainConfig) -> Result<Trainer> {
    let (m, vm, tok) = load_model_varmap(&common::golden_paths(), &Device::Cpu)?;
    Ok(Trainer::new_full(
        m,
        vm,
        tok,
        common::caption_datasets()?,
        cfg,
        run,
    )?)
}

/// Bits of every trainable tensor, by name.
fn snapshot(t: &Trainer) -> Result<HashMap<String, Vec<u32>>> {
    Ok(common::snapshot(t)?.into_iter().collect())
}

/// Run straight through vs. killed after 3 steps (checkpoint at 2) and resumed: same losses
/// and the same weights bit for bit. Returns the straight run's trainer.
fn resume_is_bit_exact(mode: TrainMode, image_mode: ImageMode) -> Result<(Trainer, PathBuf)> {
    let cfg = config(mode, image_mode);
    let run_a = tempfile::tempdir()?.keep();
    let mut a = trainer(&run_a, cfg.clone())?;
    let init = snapshot(&a)?;
    let rep_a = a.run(None, RunOptions::default())?;
    assert_eq!(a.step(), cfg.total_steps());
    let fin_a = snapshot(&a)?;
    for (n, v) in &fin_a {
        assert_ne!(&init[n], v, "{}: {n} did not change", mode.name());
    }

    let run_b = tempfile::tempdir()?;
    let mut b = trainer(run_b.path(), cfg.clone())?;
    b.run(
        None,
        RunOptions {
            stop_after: Some(3),
            progress: false,
        },
    )?;
    drop(b);
    let mut b = trainer(run_b.path(), cfg.clone())?;
    assert!(b.resumed_from().is_some(), "did not resume");
    assert_eq!(b.step(), 2);
    let rep_b = b.run(None, RunOptions::default())?;
    let la: Vec<_> = rep_a
        .iter()
        .filter(|r| r.step > 2)
        .map(|r| (r.step, r.loss.to_bits()))
        .collect();
    let lb: Vec<_> = rep_b.iter().map(|r| (r.step, r.loss.to_bits())).collect();
    assert_eq!(la, lb, "{}: losses after resume differ", mode.name());
    let fin_b = snapshot(&b)?;
    assert_eq!(fin_a.len(), fin_b.len());
    for (n, v) in &fin_a {
        assert!(v == &fin_b[n], "{}: {n} differs after resume", mode.name());
    }
    Ok((a, run_a))
}

#[test]
fn full_mode_trains_everything_and_resumes_bit_exact() -> Result<()> {
    let (a, run) = resume_is_bit_exact(TrainMode::Full, ImageMode::Train)?;
    let names: Vec<&str> = a.trainable().iter().map(|(n, _)| n.as_str()).collect();
    for pre in [
        "vision_model.",
        "qformer.",
        "query_tokens",
        "llama_proj.",
        "llama_model.",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(pre)),
            "nothing under {pre} trains"
        );
    }
    // The export holds every trained tensor under its root name, with the trained values.
    let exp = mde_train::io::load_safetensors(&run.join("final/model.safetensors"), &Device::Cpu)?;
    assert_eq!(exp.len(), a.trainable().len());
    for (n, v) in a.trainable() {
        let t = exp.get(n).with_context(|| format!("export lacks {n}"))?;
        let d = (t - v.as_tensor())?.abs()?.flatten_all()?.max(0)?;
        assert_eq!(d.to_scalar::<f32>()?, 0.0, "{n}");
    }
    std::fs::remove_dir_all(&run)?;
    Ok(())
}

/// A fresh model from the golden fixture and the fixture's `pixel_values`: what a frozen part
/// of a trained model must still reproduce.
fn fresh_model_and_pixels() -> Result<(minigpt4::MiniGpt4, candle_core::Tensor)> {
    let (fresh, _, _) = load_model_varmap(&common::golden_paths(), &Device::Cpu)?;
    let px = candle_core::safetensors::load(
        common::golden_dir().join("expected/forward.safetensors"),
        &Device::Cpu,
    )?
    .remove("pixel_values")
    .context("no pixel_values in the fixture")?;
    Ok((fresh, px))
}

fn max_diff(x: candle_core::Tensor, y: candle_core::Tensor) -> Result<f32> {
    Ok((x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn llm_fc_freezes_vision_and_resumes_bit_exact() -> Result<()> {
    let (a, run) = resume_is_bit_exact(TrainMode::LlmFc, ImageMode::Eval)?;
    for (n, _) in a.trainable() {
        assert!(
            n.starts_with("llama_model.") || n.starts_with("llama_proj."),
            "{n} trains in llm+fc"
        );
    }
    // Vision and Q-Former weights are untouched: features equal a fresh model's.
    let (fresh, px) = fresh_model_and_pixels()?;
    let d = max_diff(
        a.model().qformer_features(&px)?,
        fresh.qformer_features(&px)?,
    )?;
    assert_eq!(d, 0.0, "frozen vision/Q-Former changed");
    // The feature cache was used (eval preprocessing, frozen vision).
    assert!(a.cache_sizes().1 > 0);
    std::fs::remove_dir_all(&run)?;
    Ok(())
}

#[test]
fn frozen_vit_trains_all_but_the_tower_and_resumes_bit_exact() -> Result<()> {
    let (a, run) = resume_is_bit_exact(TrainMode::FrozenVit, ImageMode::Train)?;
    let names: Vec<&str> = a.trainable().iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| !n.starts_with("vision_model.")));
    for pre in ["qformer.", "query_tokens", "llama_proj.", "llama_model."] {
        assert!(
            names.iter().any(|n| n.starts_with(pre)),
            "nothing under {pre} trains"
        );
    }
    // The tower is untouched: its output equals a fresh model's; the Q-Former's does not.
    let (fresh, px) = fresh_model_and_pixels()?;
    let tower = max_diff(a.model().vision.forward(&px)?, fresh.vision.forward(&px)?)?;
    assert_eq!(tower, 0.0, "the frozen tower changed");
    let qf = max_diff(
        a.model().qformer_features(&px)?,
        fresh.qformer_features(&px)?,
    )?;
    assert!(qf > 0.0, "the Q-Former did not train");
    // Nothing is cached as features: the Q-Former trains.
    assert_eq!(a.cache_sizes().1, 0);
    std::fs::remove_dir_all(&run)?;
    Ok(())
}

fn losses(mode: TrainMode, image_mode: ImageMode, caching: bool) -> Result<Vec<f32>> {
    let run = tempfile::tempdir()?;
    let mut t = trainer(run.path(), config(mode, image_mode))?;
    t.set_caching(caching);
    let r = t.run(
        None,
        RunOptions {
            stop_after: Some(3),
            progress: false,
        },
    )?;
    let sizes = t.cache_sizes();
    if caching {
        assert!(sizes.0 + sizes.1 > 0, "caches unused");
    } else {
        assert_eq!(sizes, (0, 0));
    }
    Ok(r.iter().map(|r| r.loss).collect())
}

#[test]
fn caches_do_not_change_results() -> Result<()> {
    // Image cache only (full mode trains the vision side): bit-identical.
    let a = losses(TrainMode::Full, ImageMode::Train, true)?;
    let b = losses(TrainMode::Full, ImageMode::Train, false)?;
    assert_eq!(a, b);
    // Feature cache (per-image encoding vs. batched): equal up to float rounding.
    let a = losses(TrainMode::LlmFc, ImageMode::Eval, true)?;
    let b = losses(TrainMode::LlmFc, ImageMode::Eval, false)?;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "cached {x} vs uncached {y}"
        );
    }
    Ok(())
}

#[test]
fn constructors_refuse_the_wrong_modes() -> Result<()> {
    let run = tempfile::tempdir()?;
    for mode in [TrainMode::Full, TrainMode::LlmFc, TrainMode::FrozenVit] {
        let (m, tok) =
            mde_train::trainer::load_model(&common::golden_paths(), DType::F32, &Device::Cpu)?;
        let err = Trainer::new(
            m,
            tok,
            common::caption_datasets()?,
            config(mode, ImageMode::Eval),
            run.path(),
        )
        .err()
        .context("Trainer::new accepted a varmap mode")?;
        assert!(err.to_string().contains("new_full"), "{err}");
    }
    let (m, vm, tok) = load_model_varmap(&common::golden_paths(), &Device::Cpu)?;
    let err = Trainer::new_full(
        m,
        vm,
        tok,
        common::caption_datasets()?,
        config(TrainMode::LoraFc, ImageMode::Eval),
        run.path(),
    )
    .err()
    .context("new_full accepted a LoRA mode")?;
    assert!(err.to_string().contains("Trainer::new"), "{err}");
    // serde names
    let m: TrainMode = serde_json::from_str("\"full\"")?;
    assert_eq!(m, TrainMode::Full);
    let m: TrainMode = serde_json::from_str("\"llm+fc\"")?;
    assert_eq!(m, TrainMode::LlmFc);
    let m: TrainMode = serde_json::from_str("\"frozen-vit\"")?;
    assert_eq!(m, TrainMode::FrozenVit);
    Ok(())
}

#[test]
fn full_mode_weight_decay_groups() -> Result<()> {
    let run = tempfile::tempdir()?;
    let t = trainer(run.path(), config(TrainMode::Full, ImageMode::Eval))?;
    let wd = t.config().optim.weight_decay;
    let groups = t.group_summary();
    let decayed = groups
        .iter()
        .find(|g| g.weight_decay == wd)
        .context("no decay group")?;
    let plain = groups
        .iter()
        .find(|g| g.weight_decay == 0.0)
        .context("no 0-decay group")?;
    // Every 1-D tensor (norms, biases) is in the no-decay group; the rest decays.
    let (mut one_d, mut rest) = (0, 0);
    for (n, v) in t.trainable() {
        if v.as_tensor().rank() < 2 || n.contains("bias") {
            one_d += 1;
        } else {
            rest += 1;
        }
    }
    assert_eq!(plain.tensors, one_d);
    assert_eq!(decayed.tensors, rest);
    Ok(())
}

/// After full training, the inference model (rebuilt from detached tensors) computes exactly
/// what the trained model computes, and its forwards record no autograd graph.
#[test]
fn inference_model_after_full_training_is_detached_and_equal() -> Result<()> {
    let run = tempfile::tempdir()?;
    let mut t = trainer(run.path(), config(TrainMode::Full, ImageMode::Train))?;
    t.run(
        None,
        RunOptions {
            stop_after: Some(2),
            progress: false,
        },
    )?;
    let px = candle_core::safetensors::load(
        common::golden_dir().join("expected/forward.safetensors"),
        &Device::Cpu,
    )?
    .remove("pixel_values")
    .context("no pixel_values in the fixture")?;
    let trained = t.model().qformer_features(&px)?;
    let emb = |m: &minigpt4::model::MiniGpt4| -> Result<candle_core::Tensor> {
        Ok(m.llama.embed_ids(&[1, 5, 9])?.unsqueeze(0)?)
    };
    let logits = t
        .model()
        .forward_embeds(&emb(t.model())?, None, None, false)?;
    assert!(logits.track_op(), "a trained model's forward is tracked");
    let m = t.into_inference_model()?;
    let l2 = m.forward_embeds(&emb(&m)?, None, None, false)?;
    assert!(!l2.track_op(), "the inference model still holds Vars");
    let max = |a: candle_core::Tensor| -> Result<f32> {
        Ok(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };
    assert_eq!(max((l2 - logits)?)?, 0.0);
    assert_eq!(max((m.qformer_features(&px)? - trained)?)?, 0.0);
    Ok(())
}
