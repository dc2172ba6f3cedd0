//! Step 8, train: the round's model is fine-tuned (mde-train, resumable per optimiser step) on
//! the base data replayed at `[train] replay_ratio` plus every generated round so far.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use mde_train::data::{load_dataset, DatasetFormat, DatasetSpec, RecordKind};
use mde_train::trainer::{
    ImageMode, LoraSettings, OptimSettings, RunOptions, TrainConfig, TrainDataset, Trainer,
};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::{MiniGpt4, ModelPaths};

use crate::config::TrainSection;
use crate::report::TrainSummary;
use crate::{LoopError, Result};

/// The training data of round `k`: base datasets, then one dataset per generated round.
pub struct DataInputs<'a> {
    pub k: usize,
    /// Base replay datasets (their `ratio`, if any, splits the base share).
    pub base: Vec<TrainDataset>,
    /// The GPTVQA v1 file of every generated round `1..=k`, in order.
    pub generated: &'a [PathBuf],
    /// The pool's image folder and file pattern (generated items name COCO ids).
    pub pool_images: &'a Path,
    pub pattern: &'a str,
    /// Supervision format of generated items.
    pub kind: RecordKind,
    /// Share of each batch drawn from the base data.
    pub replay_ratio: f64,
}

/// Loads the generated rounds and splits the batch between base and generated data; empty
/// datasets are left out. An error when there is nothing to train on.
pub fn datasets(inputs: DataInputs) -> Result<Vec<TrainDataset>> {
    let DataInputs { k, mut base, .. } = inputs;
    let mut gen = Vec::new();
    for (j, path) in inputs.generated.iter().enumerate() {
        let spec = DatasetSpec {
            name: format!("generated_r{}", j + 1),
            path: path.clone(),
            format: DatasetFormat::GptvqaV1,
            image_root: Some(inputs.pool_images.to_path_buf()),
            image_pattern: inputs.pattern.to_string(),
            allow_absolute_image_paths: false,
            kind: Some(inputs.kind),
            ratio: None,
        };
        let records = load_dataset(&spec, Path::new("."))?;
        if !records.is_empty() {
            gen.push(TrainDataset {
                name: spec.name,
                ratio: None,
                records,
            });
        }
    }
    let replay = inputs.replay_ratio;
    let share = |ds: &mut Vec<TrainDataset>, total: f64| {
        // Within a group, each dataset's own ratio (default: its size) splits the share.
        let w: Vec<f64> = ds
            .iter()
            .map(|d| d.ratio.unwrap_or(d.records.len() as f64))
            .collect();
        let sum: f64 = w.iter().sum();
        for (d, w) in ds.iter_mut().zip(w) {
            d.ratio = Some(if sum > 0.0 { total * w / sum } else { 0.0 });
        }
    };
    let (base_share, gen_share) = match (base.is_empty(), gen.is_empty()) {
        (false, false) => (replay, 1.0 - replay),
        (true, false) => (0.0, 1.0),
        (false, true) => (1.0, 0.0),
        (true, true) => return Err(LoopError::NoTrainingData { round: k }),
    };
    share(&mut base, base_share);
    share(&mut gen, gen_share);
    let mut all: Vec<TrainDataset> = base.into_iter().chain(gen).collect();
    all.retain(|d| d.ratio.unwrap_or(0.0) > 0.0 && !d.records.is_empty());
    Ok(all)
}

/// mde-train's config of round `k` from the loop's `[train]` (seeds derived from the run's).
pub fn round_config(t: &TrainSection, run_seed: u64, k: usize) -> TrainConfig {
    TrainConfig {
        mode: t.mode,
        lora: LoraSettings {
            init_seed: run_seed.wrapping_add(k as u64),
            ..t.lora.clone()
        },
        optim: OptimSettings {
            init_lr: t.lr,
            min_lr: t.min_lr,
            warmup_lr: t.lr * 0.01,
            warmup_steps: t.warmup_steps,
            weight_decay: t.weight_decay,
            ..Default::default()
        },
        batch_size: t.batch_size,
        accum_steps: t.accum_steps,
        max_epoch: 1,
        iters_per_epoch: t.steps,
        checkpoint_every: t.checkpoint_every,
        validate_every: 0,
        seed: run_seed.wrapping_add(1000 + k as u64),
        grad_clip: Some(1.0),
        image_mode: ImageMode::Eval,
        end_sym: "###".into(),
        max_txt_len: t.max_txt_len,
        merge_at_end: false,
        shards: t.shards.max(1),
        loss_scale: t.loss_scale,
        checkpointing: t.checkpointing,
    }
}

/// The model to train and where it starts.
pub struct ModelInputs<'a> {
    pub paths: &'a ModelPaths,
    pub tokenizer: LlamaTokenizer,
    pub dtype: DType,
    pub device: &'a Device,
    /// A full-mode run whose `final/model.safetensors` this round starts from (a previous
    /// round's, with `[train] from_base = false`); `None`: the base model.
    pub start_from: Option<PathBuf>,
}

/// A trainer in `run_dir` (it resumes from its checkpoints; after a finished run it holds the
/// final weights).
pub fn trainer(
    m: ModelInputs,
    datasets: Vec<TrainDataset>,
    cfg: TrainConfig,
    run_dir: &Path,
) -> Result<Trainer> {
    if cfg.mode.needs_varmap() {
        let (model, varmap) = MiniGpt4::load_varmap(m.paths, m.dtype, m.device)?;
        if let Some(p) = &m.start_from {
            mde_train::checkpoint::load_full_weights(
                &varmap,
                &p.join("final").join("model.safetensors"),
            )?;
        }
        Ok(Trainer::new_full(
            model,
            varmap,
            m.tokenizer,
            datasets,
            cfg,
            run_dir,
        )?)
    } else {
        if m.start_from.is_some() {
            return Err(LoopError::Config(
                "[train] from_base = false is supported for the full modes (full, frozen-vit, llm+fc) only"
                    .into(),
            ));
        }
        let model = MiniGpt4::load(m.paths, m.dtype, m.device)?;
        Ok(Trainer::new(model, m.tokenizer, datasets, cfg, run_dir)?)
    }
}

/// Runs (or resumes) `trainer` to its last step. `examples` is the record count of each
/// dataset, for the summary.
pub fn run(
    trainer: &mut Trainer,
    examples: BTreeMap<String, usize>,
    progress: bool,
) -> Result<TrainSummary> {
    let t0 = Instant::now();
    trainer.run(
        None,
        RunOptions {
            progress,
            ..Default::default()
        },
    )?;
    // The trainer's losses span every invocation (they are saved in its checkpoints), so a
    // killed and resumed round reports what an uninterrupted one does.
    let losses = trainer.losses();
    Ok(TrainSummary {
        mode: format!("{:?}", trainer.config().mode),
        steps: trainer.step(),
        first_loss: losses.first_loss,
        final_loss: losses.last_loss,
        seconds: t0.elapsed().as_secs_f64(),
        examples,
    })
}
