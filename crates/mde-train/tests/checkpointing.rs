//! Activation checkpointing (`TrainConfig::checkpointing`): the gradients of a LoRA + projector
//! step with dropout, with and without it, on the tiny fixture model, in f32 and bf16, and in
//! one shard and two; and a checkpointed run trains to the same losses as a plain one.
mod common;

use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use mde_train::trainer::{ImageMode, LoraSettings, OptimSettings};
use mde_train::{RunOptions, TrainConfig, TrainMode, Trainer};

fn config(checkpointing: bool, shards: usize) -> TrainConfig {
    TrainConfig {
        mode: TrainMode::LoraFc,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: minigpt4::llama::LORA_TARGETS.map(String::from).to_vec(),
            ..Default::default()
        },
        optim: OptimSettings {
            init_lr: 1e-3,
            warmup_steps: 1,
            ..Default::default()
        },
        batch_size: 4,
        accum_steps: 2,
        max_epoch: 1,
        iters_per_epoch: 3,
        checkpoint_every: 0,
        seed: 5,
        image_mode: ImageMode::Eval,
        checkpointing,
        shards,
        ..Default::default()
    }
}

fn trainer(cfg: TrainConfig, dtype: DType) -> Result<(Trainer, tempfile::TempDir)> {
    let run = tempfile::tempdir()?;
    let (m, tok) = mde_train::trainer::load_model(&common::golden_paths(), dtype, &Device::Cpu)?;
    let t = Trainer::new(m, tok, common::caption_datasets()?, cfg, run.path())?;
    Ok((t, run))
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() -> Result<()> {
    for (dtype, shards, tol) in [
        (DType::F32, 1, 1e-6f32),
        (DType::F32, 2, 1e-6),
        (DType::BF16, 1, 2e-2),
    ] {
        let (mut plain, _a) = trainer(config(false, shards), dtype)?;
        let (mut ckpt, _b) = trainer(config(true, shards), dtype)?;
        let (l0, g0) = plain.loss_and_gradients()?;
        let (l1, g1) = ckpt.loss_and_gradients()?;
        ensure!(
            (l0 - l1).abs() <= 1e-6 * l0.abs().max(1.0),
            "{dtype:?} x{shards}: loss {l0} vs {l1}"
        );
        ensure!(
            g0.len() == g1.len() && !g0.is_empty(),
            "{dtype:?}: {} vs {} gradients",
            g0.len(),
            g1.len()
        );
        for ((n0, a), (n1, b)) in g0.iter().zip(&g1) {
            ensure!(n0 == n1, "{n0} vs {n1}");
            let scale = a
                .abs()?
                .max_keepdim(0)?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1e-12);
            let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            ensure!(
                d <= tol * scale,
                "{dtype:?} x{shards} {n0}: max diff {d:e} (largest gradient {scale:e})"
            );
        }
    }
    Ok(())
}

#[test]
fn a_checkpointed_run_trains_like_a_plain_one() -> Result<()> {
    let (mut plain, _a) = trainer(config(false, 1), DType::F32)?;
    let (mut ckpt, _b) = trainer(config(true, 1), DType::F32)?;
    let ra = plain.run(None, RunOptions::default())?;
    let rb = ckpt.run(None, RunOptions::default())?;
    ensure!(ra.len() == rb.len());
    for (a, b) in ra.iter().zip(&rb) {
        ensure!(
            (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs(),
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    Ok(())
}

#[test]
fn full_modes_refuse_checkpointing() {
    let cfg = TrainConfig {
        mode: TrainMode::LlmFc,
        ..config(true, 1)
    };
    let run = tempfile::tempdir().unwrap();
    let (m, varmap) =
        minigpt4::MiniGpt4::load_varmap(&common::golden_paths(), DType::F32, &Device::Cpu).unwrap();
    let tok =
        minigpt4::tokenizer::LlamaTokenizer::from_dir(common::golden_dir().join("vicuna")).unwrap();
    let e = Trainer::new_full(
        m,
        varmap,
        tok,
        common::caption_datasets().unwrap(),
        cfg,
        run.path(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("checkpointing supports"), "{e}");
}
