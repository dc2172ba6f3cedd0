//! `mde train --config TRAIN.toml --out DIR`: fine-tune MiniGPT-4 (fc, lora, lora+fc).
//!
//! TOML layout (see `configs/train-fixture.toml`):
//!
//! ```toml
//! [model]            # same keys as `mde ask --config`: blip2, vicuna, projector, eva_vit, blip2_config
//! blip2 = "..."
//! vicuna = "..."
//! dtype = "f32"      # optional: f32 | f16 | bf16
//! cpu = true         # optional
//! [train]            # mde_train::TrainConfig: mode, batch_size, accum_steps, max_epoch,
//! mode = "lora+fc"   # iters_per_epoch, checkpoint_every, validate_every, seed, grad_clip,
//!                    # image_mode, end_sym, max_txt_len, merge_at_end, [train.lora], [train.optim]
//! [[datasets]]       # mde_train::data::DatasetSpec: name, path, format, image_root, image_pattern, kind, ratio
//! [validation]       # optional DatasetSpec: held-out records, metric = mean loss (lower is better)
//! [aokvqa_validation] # or: data = "aokvqa_v1p0_val.json", image_root = "coco", limit = 500
//!                    # metric = A-OKVQA DA through mde-eval (needs a second model copy in memory)
//! ```
//!
//! Relative model paths are resolved against the config file's folder, dataset paths against
//! `--data-dir` (default: the config's folder). Re-running with the same `--out` resumes from
//! the newest checkpoint there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use mde_core::records::BenchItem;
use mde_eval::runner::{load_items, Benchmark, ImageLoader, RunConfig};
use mde_eval::step::{evaluate, EvalDir};
use mde_models::eval_adapter::MiniGpt4Eval;
use mde_train::data::{load_dataset, DatasetSpec};
use mde_train::trainer::{load_model, LossValidator};
use mde_train::{RunOptions, TrainConfig, TrainDataset, Trainer, Validator};
use minigpt4::model::MiniGpt4;
use minigpt4::model::ModelPaths;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training TOML.
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder (checkpoints, metrics, final exports); resumes if it holds a checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder that relative dataset paths are resolved against (default: the config's folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after this many optimizer steps (total, including resumed ones), without a final
    /// checkpoint: a time-boxed slice of a longer run.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

// No deny_unknown_fields here: serde does not support it together with flatten.
#[derive(Debug, Deserialize)]
struct ModelSection {
    #[serde(flatten)]
    paths: ModelPaths,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    cpu: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainToml {
    model: ModelSection,
    #[serde(default)]
    train: TrainConfig,
    datasets: Vec<DatasetSpec>,
    #[serde(default)]
    validation: Option<DatasetSpec>,
    #[serde(default)]
    aokvqa_validation: Option<AokvqaValidation>,
}

/// `[aokvqa_validation]`: A-OKVQA DA (the original's selection metric) through mde-eval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AokvqaValidation {
    /// `aokvqa_v1p0_val.json`.
    data: PathBuf,
    /// COCO image root (`val2017/...` below it).
    #[serde(default)]
    image_root: Option<PathBuf>,
    /// Only the first N questions.
    #[serde(default)]
    limit: Option<usize>,
}

/// Evaluates A-OKVQA DA on a second copy of the model into which the trained weights are
/// copied before each evaluation (the evaluator owns its model; the trainer keeps borrowing
/// its own). Predictions and scores go to `OUT/val/step-N/`.
struct AokvqaValidator {
    eval: MiniGpt4Eval,
    items: Vec<BenchItem>,
    data: PathBuf,
    images: ImageLoader,
    limit: Option<usize>,
    out: PathBuf,
    alpha: f64,
}

impl Validator for AokvqaValidator {
    fn name(&self) -> &str {
        "aokvqa_da"
    }
    fn evaluate(&mut self, model: &MiniGpt4, step: u64) -> mde_train::Result<f64> {
        let err = |m: String| mde_train::TrainError::Invalid(format!("A-OKVQA validation: {m}"));
        // Copy the current trainable weights into the evaluator's model.
        let p = &model.llama_proj;
        self.eval.model.llama_proj = minigpt4::linear::Linear::from_weights(
            p.weight.copy()?,
            p.bias.as_ref().map(|b| b.copy()).transpose()?,
        );
        let lora: HashMap<String, candle_core::Tensor> = model
            .llama
            .lora_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect::<mde_train::Result<_>>()?;
        if !lora.is_empty() {
            self.eval.model.llama.load_lora(&lora, self.alpha, 0.0, 0)?;
        }
        let dir = self.out.join(format!("val/step-{step:06}"));
        let mut rc = RunConfig::new(Benchmark::Aokvqa);
        rc.limit = self.limit;
        let run = EvalDir::new(&dir);
        let ev = evaluate(
            &mut self.eval,
            Benchmark::Aokvqa,
            &self.data,
            &self.items,
            &rc,
            &self.images,
            &run,
        )
        .map_err(|e| err(e.to_string()))?;
        let scored = ev.scored.map_err(|e| err(e.to_string()))?;
        mde_eval::step::write_scores(
            &run,
            Benchmark::Aokvqa,
            ev.outcome.predictions.len(),
            &scored,
        )?;
        scored.json["DA"]
            .as_f64()
            .ok_or_else(|| err("the scorer reported no DA accuracy (no DA questions?)".into()))
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" | "fp16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("model.dtype must be f32, f16 or bf16, got `{other}`"),
    })
}

/// A relative path that exists next to the config wins; anything else (HF repo ids) is kept.
fn resolve(base: &Path, p: &str) -> String {
    let cand = base.join(p);
    if Path::new(p).is_relative() && cand.exists() {
        cand.display().to_string()
    } else {
        p.to_string()
    }
}

pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let cfg: TrainToml = toml::from_str(&text)
        .with_context(|| format!("{}: bad training config", args.config.display()))?;
    let cfg_dir = args
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| cfg_dir.clone());
    let mut paths = cfg.model.paths.clone();
    if paths.blip2.is_empty() || paths.vicuna.is_empty() {
        bail!("{}: [model] needs blip2 and vicuna", args.config.display());
    }
    paths.blip2 = resolve(&cfg_dir, &paths.blip2);
    paths.vicuna = resolve(&cfg_dir, &paths.vicuna);
    for p in [
        &mut paths.projector,
        &mut paths.eva_vit,
        &mut paths.blip2_config,
    ]
    .into_iter()
    .flatten()
    {
        *p = resolve(&cfg_dir, p);
    }
    let dtype = parse_dtype(cfg.model.dtype.as_deref().unwrap_or("f32"))?;
    let device = if cfg.model.cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let mut datasets = Vec::new();
    for s in &cfg.datasets {
        let records =
            load_dataset(s, &data_dir).with_context(|| format!("dataset `{}`", s.name))?;
        eprintln!("dataset {}: {} records", s.name, records.len());
        datasets.push(TrainDataset {
            name: s.name.clone(),
            ratio: s.ratio,
            records,
        });
    }
    let (model, tok) = load_model(&paths, dtype, &device).context("loading MiniGPT-4")?;
    if cfg.validation.is_some() && cfg.aokvqa_validation.is_some() {
        bail!(
            "{}: give either [validation] or [aokvqa_validation], not both",
            args.config.display()
        );
    }
    let mut aokvqa = match &cfg.aokvqa_validation {
        Some(a) => {
            let data = cfg_dir.join(&a.data);
            let root = a.image_root.as_ref().map(|r| cfg_dir.join(r));
            let items = load_items(Benchmark::Aokvqa, &data, root.as_deref())
                .with_context(|| format!("loading {}", data.display()))?;
            let (m2, tok2) =
                load_model(&paths, dtype, &device).context("loading the evaluation copy")?;
            Some(AokvqaValidator {
                eval: MiniGpt4Eval::new(m2, tok2, "mde-train"),
                items,
                data,
                images: ImageLoader::new(root),
                limit: a.limit,
                out: args.out.clone(),
                alpha: cfg.train.lora.alpha,
            })
        }
        None => None,
    };
    let mut validator = match &cfg.validation {
        Some(s) => Some(LossValidator {
            records: load_dataset(s, &data_dir).context("validation dataset")?,
            tok: tok.clone(),
            end_sym: cfg.train.end_sym.clone(),
            batch_size: cfg.train.batch_size,
            max_txt_len: cfg.train.max_txt_len,
        }),
        None => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    mde_core::io::write_json(args.out.join("train-config.json"), &cfg.train)?;
    let mut trainer = Trainer::new(model, tok, datasets, cfg.train.clone(), &args.out)?;
    if let Some(d) = trainer.resumed_from() {
        eprintln!("resuming from {} (step {})", d.display(), trainer.step());
    }
    let mut total = 0;
    for g in trainer.group_summary() {
        eprintln!(
            "trainable group (weight decay {}): {} tensors, {} parameters",
            g.weight_decay, g.tensors, g.parameters
        );
        total += g.parameters;
    }
    eprintln!("trainable parameters: {total}");
    let v: Option<&mut dyn Validator> = match (validator.as_mut(), aokvqa.as_mut()) {
        (Some(v), _) => Some(v as &mut dyn Validator),
        (None, Some(a)) => Some(a as &mut dyn Validator),
        (None, None) => None,
    };
    let reports = trainer.run(
        v,
        RunOptions {
            stop_after: args.stop_after,
            progress: !args.quiet,
        },
    )?;
    if let Some(r) = reports.last() {
        eprintln!("step {}: loss {:.5} lr {:.3e}", r.step, r.loss, r.lr);
        if let Some(sc) = r.loss_scale {
            let skipped = reports.iter().filter(|r| r.skipped).count();
            eprintln!(
                "loss scale {sc} (f16 dynamic scaling); {skipped} of {} steps of this run skipped for inf/NaN gradients",
                reports.len()
            );
        }
    }
    if trainer.step() >= cfg.train.total_steps() {
        println!("{}", args.out.join("final").display());
    }
    Ok(())
}
