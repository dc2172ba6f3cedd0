//! Dynamic loss scaling of an f16 model (`mde_train::scaler`, GradScaler semantics): a step
//! whose gradients overflow is skipped (weights and optimizer untouched) and halves the scale;
//! clean steps grow it; a killed and resumed run scales as an uninterrupted one.
mod common;

use anyhow::Result;
use candle_core::{DType, Device};
use mde_train::scaler::{LossScaleMode, LossScaleSettings};
use mde_train::trainer::StepReport;
use mde_train::trainer::{ImageMode, LoraSettings, OptimSettings};
use mde_train::{RunOptions, TrainConfig, TrainMode, Trainer};

fn trainer(run: &std::path::Path, cfg: TrainConfig, dtype: DType) -> Result<Trainer> {
    let (m, tok) = mde_train::trainer::load_model(&common::golden_paths(), dtype, &Device::Cpu)?;
    Ok(Trainer::new(m, tok, common::caption_datasets()?, cfg, run)?)
}

fn config(loss_scale: LossScaleSettings) -> TrainConfig {
    TrainConfig {
        mode: TrainMode::LoraFc,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        },
        optim: OptimSettings {
            init_lr: 1e-3,
            warmup_steps: 1,
            ..Default::default()
        },
        batch_size: 2,
        max_epoch: 1,
        iters_per_epoch: 4,
        checkpoint_every: 2,
        seed: 3,
        image_mode: ImageMode::Eval,
        loss_scale,
        ..Default::default()
    }
}

#[test]
fn overflowing_steps_are_skipped_and_halve_the_scale() -> Result<()> {
    // 1e9 times the loss overflows f16 (max 65504) in the first backward op below the loss.
    let s = LossScaleSettings {
        init_scale: 1e9,
        ..Default::default()
    };
    let run = tempfile::tempdir()?;
    let mut t = trainer(run.path(), config(s), DType::F16)?;
    let before = common::snapshot(&t)?;
    let reports = t.run(
        None,
        RunOptions {
            stop_after: Some(3),
            progress: false,
        },
    )?;
    assert_eq!(reports.len(), 3);
    for (i, r) in reports.iter().enumerate() {
        assert!(r.skipped, "step {}: not skipped ({r:?})", r.step);
        assert!(r.loss.is_finite(), "the loss itself is finite");
        assert_eq!(r.loss_scale, Some(1e9 / 2f64.powi(i as i32)));
    }
    assert_eq!(
        common::snapshot(&t)?,
        before,
        "a skipped step changed a weight"
    );
    Ok(())
}

#[test]
fn scale_grows_after_clean_steps_and_survives_a_resume() -> Result<()> {
    let s = LossScaleSettings {
        init_scale: 1024.0,
        growth_interval: 1,
        ..Default::default()
    };
    let straight = tempfile::tempdir()?;
    let mut a = trainer(straight.path(), config(s), DType::F16)?;
    let ra = a.run(None, RunOptions::default())?;
    let scales: Vec<Option<f64>> = ra.iter().map(|r| r.loss_scale).collect();
    assert_eq!(
        scales,
        vec![Some(1024.0), Some(2048.0), Some(4096.0), Some(8192.0)],
        "{ra:?}"
    );
    assert!(ra.iter().all(|r| !r.skipped && r.loss.is_finite()));

    // Killed after step 3 (last checkpoint at 2), then resumed: the same scales and losses.
    let killed = tempfile::tempdir()?;
    let mut b = trainer(killed.path(), config(s), DType::F16)?;
    b.run(
        None,
        RunOptions {
            stop_after: Some(3),
            progress: false,
        },
    )?;
    drop(b);
    let mut b = trainer(killed.path(), config(s), DType::F16)?;
    assert_eq!(b.step(), 2);
    let rb = b.run(None, RunOptions::default())?;
    let key = |r: &StepReport| (r.step, r.loss.to_bits(), r.loss_scale.map(f64::to_bits));
    let tail: Vec<_> = ra.iter().filter(|r| r.step > 2).map(key).collect();
    assert_eq!(tail, rb.iter().map(key).collect::<Vec<_>>());
    assert_eq!(common::snapshot(&a)?, common::snapshot(&b)?);
    Ok(())
}

#[test]
fn auto_scales_f16_only() -> Result<()> {
    let auto = LossScaleSettings::default();
    for (dtype, scaled) in [
        (DType::F16, true),
        (DType::BF16, false),
        (DType::F32, false),
    ] {
        let run = tempfile::tempdir()?;
        let mut t = trainer(run.path(), config(auto), dtype)?;
        let r = t.run(
            None,
            RunOptions {
                stop_after: Some(1),
                progress: false,
            },
        )?;
        assert_eq!(r[0].loss_scale.is_some(), scaled, "{dtype:?}");
    }
    let off = LossScaleSettings {
        mode: LossScaleMode::Off,
        ..auto
    };
    let run = tempfile::tempdir()?;
    let r = trainer(run.path(), config(off), DType::F16)?.run(
        None,
        RunOptions {
            stop_after: Some(1),
            progress: false,
        },
    )?;
    assert_eq!(r[0].loss_scale, None);
    Ok(())
}
