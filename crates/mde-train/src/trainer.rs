//! The training driver: data mixing, image preprocessing, gradient accumulation, schedule,
//! checkpoints with exact resume, validation-based best-checkpoint selection and exports.
//!
//! Length: the trainer's state (data stream, RNG, optimizer, scaler, shards, caches) is one
//! struct whose every field is checkpointed; its methods stay next to it so that what a resume
//! restores can be checked against what a step changes in one place.
//!
//! Everything random (dataset choice, shuffles, random resized crops, LoRA dropout) derives
//! from `TrainConfig::seed` and the step counter, and all of it is in the checkpoint, so a
//! run killed and resumed from its last checkpoint reaches the same weights bit for bit (CPU).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use minigpt4::linear::LoraAdapter;
use minigpt4::llama::{Llama, LoraConfig};
use minigpt4::model::MiniGpt4;
use minigpt4::preprocess::ImageProcessor;
use minigpt4::tokenizer::LlamaTokenizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::batch::{build_batch, LayoutConfig, TrainSample};
use crate::checkpoint::{
    latest_checkpoint, load_checkpoint, save_checkpoint, LossLog, RngState, TrainState,
};
use crate::data::TrainRecord;
use crate::error::{Result, TrainError};
use crate::mix::{DatasetMixer, MixEntry, MixerState};
use crate::optim::{AdamW, AdamWConfig};
use crate::peft::LoraKey;
use crate::scaler::{LossScaleSettings, LossScaler};
use crate::schedule::LinearWarmupCosine;
use crate::shards::ShardPools;
use crate::step::BatchTensors;

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainMode {
    /// Only the projector `llama_proj` (MiniGPT-4 stage 2).
    #[serde(rename = "fc")]
    Fc,
    /// Only LoRA adapters on the LLaMA.
    #[serde(rename = "lora")]
    Lora,
    /// LoRA adapters and the projector (DataEngine's released setting).
    #[serde(rename = "lora+fc")]
    LoraFc,
    /// Every parameter: vision tower, Q-Former (and query tokens), projector and LLaMA.
    /// Needs [`Trainer::new_full`] (the parameters as Vars from `MiniGpt4::load_varmap`).
    #[serde(rename = "full")]
    Full,
    /// The whole LLaMA and the projector; vision tower and Q-Former frozen.
    /// Needs [`Trainer::new_full`].
    #[serde(rename = "llm+fc")]
    LlmFc,
    /// Every parameter except the vision tower (ViT and `ln_vision`): Q-Former, query tokens,
    /// projector and LLaMA. For a model whose tower was pretrained and stays frozen, as
    /// MiniGPT-4 keeps EVA-CLIP frozen. Needs [`Trainer::new_full`].
    #[serde(rename = "frozen-vit")]
    FrozenVit,
}

impl TrainMode {
    fn has_lora(self) -> bool {
        matches!(self, TrainMode::Lora | TrainMode::LoraFc)
    }
    fn has_fc(self) -> bool {
        matches!(self, TrainMode::Fc | TrainMode::LoraFc)
    }
    /// Modes whose parameters come from a [`VarMap`] ([`Trainer::new_full`]).
    pub fn needs_varmap(self) -> bool {
        matches!(
            self,
            TrainMode::Full | TrainMode::LlmFc | TrainMode::FrozenVit
        )
    }
    /// Whether the vision tower trains (gradients flow into the ViT).
    pub fn trains_vision(self) -> bool {
        matches!(self, TrainMode::Full)
    }
    /// Whether the Q-Former trains (its features are not detached, so they cannot be cached).
    pub fn trains_qformer(self) -> bool {
        matches!(self, TrainMode::Full | TrainMode::FrozenVit)
    }
    /// The serde name (`fc`, `lora`, `lora+fc`, `full`, `llm+fc`, `frozen-vit`).
    pub fn name(self) -> &'static str {
        match self {
            TrainMode::Fc => "fc",
            TrainMode::Lora => "lora",
            TrainMode::LoraFc => "lora+fc",
            TrainMode::Full => "full",
            TrainMode::LlmFc => "llm+fc",
            TrainMode::FrozenVit => "frozen-vit",
        }
    }
    /// Whether the VarMap parameter `name` (MiniGPT-4 root naming) trains in this mode.
    pub fn trains_param(self, name: &str) -> bool {
        match self {
            TrainMode::Full => true,
            TrainMode::FrozenVit => !name.starts_with("vision_model."),
            TrainMode::LlmFc => name.starts_with("llama_model.") || name.starts_with("llama_proj."),
            TrainMode::Fc | TrainMode::LoraFc => name.starts_with("llama_proj."),
            TrainMode::Lora => false,
        }
    }
}

/// LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    /// Seed of the adapter initialisation.
    pub init_seed: u64,
    /// Start from this PEFT adapter folder instead of a fresh init.
    pub init_adapter: Option<PathBuf>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "k_proj".into()],
            init_seed: 0,
            init_adapter: None,
        }
    }
}

/// AdamW + warmup-cosine settings (MiniGPT-4 stage-2 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSettings {
    pub init_lr: f64,
    pub min_lr: f64,
    pub warmup_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for OptimSettings {
    fn default() -> Self {
        Self {
            init_lr: 3e-5,
            min_lr: 1e-5,
            warmup_lr: 1e-6,
            warmup_steps: 200,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Training-time image preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageMode {
    /// Seeded RandomResizedCrop (scale 0.5-1), as MiniGPT-4's train processor.
    #[default]
    Train,
    /// Deterministic bicubic resize.
    Eval,
}

/// Everything that defines a run (besides model and data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub mode: TrainMode,
    pub lora: LoraSettings,
    pub optim: OptimSettings,
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the loss of each is divided by it.
    pub accum_steps: usize,
    /// Optimizer steps = `max_epoch * iters_per_epoch` (the schedule's horizon).
    pub max_epoch: usize,
    pub iters_per_epoch: usize,
    /// Checkpoint every N optimizer steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Validate every N optimizer steps (0: only at the end when a validator is given).
    pub validate_every: u64,
    pub seed: u64,
    /// Max global gradient L2 norm (None: no clipping, the original's default).
    pub grad_clip: Option<f64>,
    pub image_mode: ImageMode,
    pub end_sym: String,
    pub max_txt_len: usize,
    /// At the end, also merge LoRA into the LLaMA and write `final/merged/model.safetensors`.
    pub merge_at_end: bool,
    /// Data-parallel shards per micro-batch (default 1; absent in older configs = 1).
    ///
    /// With `S > 1` each micro-batch (drawn exactly as with 1 shard: same samples, same order,
    /// same random crops) is split row-wise into `S` contiguous shards; each shard's forward
    /// and backward runs on its own OS thread, inside its own one-thread rayon pool (for
    /// candle-nn's row kernels), with candle's gemm single-threaded: building a trainer with
    /// `S > 1` sets `RAYON_NUM_THREADS=1` for the whole process while the trainer lives (it is
    /// restored when the trainer is dropped or turned into an inference model), the only knob candle reads
    /// (on a tiny model the per-op rayon barriers cost more than the parallel gemm gains;
    /// one thread per shard is meant to use the cores better: measure on an idle machine). Shard `i`'s loss is weighted by `n_i / N` (its supervised target tokens
    /// over the micro-batch's), so the gradients, summed in shard order, equal the
    /// full-batch gradient up to float summation order, and the reported loss is the
    /// full-batch mean. In `full` mode the vision tower runs per shard on the shard's pixels;
    /// cached Q-Former features are sliced. LoRA dropout draws per shard from streams seeded
    /// by (seed, step, shard, layer, module): deterministic and exactly resumable, but not the
    /// masks of a 1-shard run. Capped at the batch size.
    pub shards: usize,
    /// Dynamic loss scaling (`[train.loss_scale]`, [`crate::scaler`]): by default on exactly
    /// when the model computes in f16. Not written at its default, so configs and run files
    /// of earlier versions stay the same.
    #[serde(skip_serializing_if = "LossScaleSettings::is_default")]
    pub loss_scale: LossScaleSettings,
    /// Activation checkpointing per decoder layer: the forward keeps only each layer's input
    /// and the backward recomputes the layer ([`Llama::train_loss_checkpointed`]): the same
    /// gradients with one layer's activations alive instead of all of them. LoRA and projector
    /// modes (`lora+fc`, `lora`, `fc`); not written when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: TrainMode::LoraFc,
            lora: LoraSettings::default(),
            optim: OptimSettings::default(),
            batch_size: 12,
            accum_steps: 1,
            max_epoch: 1,
            iters_per_epoch: 1000,
            checkpoint_every: 200,
            validate_every: 0,
            seed: 42,
            grad_clip: None,
            image_mode: ImageMode::Train,
            end_sym: "###".into(),
            max_txt_len: 160,
            merge_at_end: false,
            shards: 1,
            loss_scale: LossScaleSettings::default(),
            checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// Total optimizer steps.
    pub fn total_steps(&self) -> u64 {
        (self.max_epoch * self.iters_per_epoch) as u64
    }

    fn schedule(&self) -> LinearWarmupCosine {
        LinearWarmupCosine {
            max_epoch: self.max_epoch,
            iters_per_epoch: self.iters_per_epoch,
            init_lr: self.optim.init_lr,
            min_lr: self.optim.min_lr,
            warmup_lr: self.optim.warmup_lr,
            warmup_steps: self.optim.warmup_steps,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
        if self.batch_size == 0 {
            return bad("batch_size must be >= 1");
        }
        if self.accum_steps == 0 {
            return bad("accum_steps must be >= 1");
        }
        if self.shards == 0 {
            return bad("shards must be >= 1");
        }
        if self.total_steps() == 0 {
            return bad("max_epoch * iters_per_epoch must be >= 1");
        }
        if self.mode.has_lora() {
            if self.lora.r == 0 {
                return bad("lora.r must be >= 1");
            }
            if !(0.0..1.0).contains(&self.lora.dropout) {
                return bad("lora.dropout must be in [0, 1)");
            }
            if self.lora.target_modules.is_empty() {
                return bad("lora.target_modules is empty");
            }
        }
        if let Some(c) = self.grad_clip {
            if !(c > 0.0 && c.is_finite()) {
                return bad("grad_clip must be a positive number");
            }
        }
        if self.max_txt_len == 0 {
            return bad("max_txt_len must be >= 1 (0 leaves no answer token to learn)");
        }
        if let Err(m) = self.loss_scale.check() {
            return Err(TrainError::Invalid(m));
        }
        if self.checkpointing && self.mode.needs_varmap() {
            return bad(
                "checkpointing supports the LoRA and projector modes (lora+fc, lora, fc) only",
            );
        }
        let o = &self.optim;
        for (key, v) in [
            ("optim.init_lr", o.init_lr),
            ("optim.min_lr", o.min_lr),
            ("optim.warmup_lr", o.warmup_lr),
            ("optim.weight_decay", o.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::Invalid(format!(
                    "{key} = {v}: must be a finite number >= 0"
                )));
            }
        }
        for (key, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::Invalid(format!(
                    "{key} = {v}: must be in [0, 1)"
                )));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(TrainError::Invalid(format!(
                "optim.eps = {}: must be a finite number > 0",
                o.eps
            )));
        }
        Ok(())
    }
}

/// A named dataset of records with its sampling ratio.
#[derive(Debug, Clone)]
pub struct TrainDataset {
    pub name: String,
    pub ratio: Option<f64>,
    pub records: Vec<TrainRecord>,
}

/// A validation metric computed on the current model.
pub trait Validator {
    /// Metric name (e.g. `aokvqa_da`).
    fn name(&self) -> &str;
    /// Whether larger values are better.
    fn higher_is_better(&self) -> bool {
        true
    }
    /// Evaluates the model after `step` optimizer steps.
    fn evaluate(&mut self, model: &MiniGpt4, step: u64) -> Result<f64>;
}

/// A [`Validator`] from a closure.
pub struct FnValidator<F> {
    pub name: String,
    pub higher_is_better: bool,
    pub f: F,
}

impl<F: FnMut(&MiniGpt4, u64) -> Result<f64>> Validator for FnValidator<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn higher_is_better(&self) -> bool {
        self.higher_is_better
    }
    fn evaluate(&mut self, model: &MiniGpt4, step: u64) -> Result<f64> {
        (self.f)(model, step)
    }
}

/// One validation result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: u64,
    pub value: f64,
}

/// `metrics.json` of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricHistory {
    pub metric: String,
    pub higher_is_better: bool,
    pub history: Vec<MetricPoint>,
    pub best: Option<MetricPoint>,
}

/// Result of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub step: u64,
    /// Mean of the micro-batch losses.
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping (of the unscaled gradients; inf or NaN on a
    /// skipped step).
    pub grad_norm: f64,
    pub dataset: usize,
    /// The loss scale this step's backward used (`None`: no loss scaling).
    pub loss_scale: Option<f64>,
    /// The step's gradients held an inf or NaN: parameters and optimizer state were left as
    /// they were (the scaler halved its scale). The step still counts in the schedule.
    pub skipped: bool,
}

/// Options of [`Trainer::run`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop (without a final checkpoint, as a killed process) once this many optimizer steps
    /// are done. For tests and time-boxed jobs.
    pub stop_after: Option<u64>,
    /// Show an indicatif progress bar.
    pub progress: bool,
}

/// Trainable parameter count of one optimizer group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    pub weight_decay: f64,
    pub tensors: usize,
    pub parameters: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extra {
    mixer: MixerState,
    #[serde(default)]
    metrics: Option<MetricHistory>,
    /// `first_loss` and `last_loss` (the keys of mde-loop's vision pretraining too).
    #[serde(flatten)]
    losses: LossLog,
    /// The loss scaler's state (half-precision runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaler: Option<LossScaler>,
}

/// The training driver.
pub struct Trainer {
    cfg: TrainConfig,
    model: MiniGpt4,
    tok: LlamaTokenizer,
    datasets: Vec<TrainDataset>,
    mixer: DatasetMixer,
    rng: ChaCha8Rng,
    opt: AdamW,
    /// Trainable vars under runner key names (the names in checkpoints and the optimizer).
    params: Vec<(String, Var)>,
    processor: ImageProcessor,
    layout: LayoutConfig,
    run_dir: PathBuf,
    step: u64,
    metrics: Option<MetricHistory>,
    /// First and latest loss of the run, across resumes (saved in every checkpoint).
    losses: LossLog,
    /// Dynamic loss scaling (f16 compute by default), saved in every checkpoint.
    scaler: Option<LossScaler>,
    resumed_from: Option<PathBuf>,
    /// Use the two in-memory caches below (on by default; results do not depend on it).
    caching: bool,
    /// Decoded images by path (decoding is deterministic; the random crop runs after it).
    images: HashMap<PathBuf, RgbImage>,
    /// Detached Q-Former features `[num_query, hidden]` by image path: only when the vision
    /// side is frozen and preprocessing is deterministic (`ImageMode::Eval`). Each image is
    /// encoded alone, so a feature never depends on which batch first needed it (exact resume).
    features: HashMap<PathBuf, Tensor>,
    /// Every parameter as a Var (root names), when built by [`Trainer::new_full`].
    varmap: Option<VarMap>,
    /// One one-thread rayon pool per shard (none with 1 shard): shard `i` runs inside pool
    /// `i`, so candle's gemm and candle-nn's `par_chunks` kernels stay on that thread; while
    /// they live candle's gemm is single-threaded (`RAYON_NUM_THREADS=1`, restored after).
    shards: Option<ShardPools>,
    /// LoRA modes with several shards: one LLaMA per shard sharing every weight tensor and
    /// LoRA Var with `model.llama` but with its own adapter objects, because an adapter's
    /// dropout stream is one mutex-guarded RNG that concurrent shards would interleave in a
    /// timing-dependent order.
    replicas: Vec<Llama>,
}

/// Sets an environment variable and puts back its previous value (or its absence) when dropped:
/// a sharded trainer's `RAYON_NUM_THREADS=1` (candle's gemm reads it on every call; see
/// [`GemmThreadsGuard::single_threaded`]).
pub(crate) struct GemmThreadsGuard {
    var: &'static str,
    previous: Option<std::ffi::OsString>,
}

impl GemmThreadsGuard {
    /// Makes candle's CPU gemm single-threaded until the guard is dropped, for row shards that
    /// each run on their own thread (a one-thread rayon pool alone does not do it). Set it
    /// before starting the shard threads: setting the environment races with concurrent reads.
    pub(crate) fn single_threaded() -> Self {
        Self::set("RAYON_NUM_THREADS", "1")
    }

    fn set(var: &'static str, value: &str) -> Self {
        let previous = std::env::var_os(var);
        std::env::set_var(var, value);
        Self { var, previous }
    }
}

impl Drop for GemmThreadsGuard {
    fn drop(&mut self) {
        // Same caveat as the `set_var` in `Trainer::build`: racy only with concurrent
        // environment reads from C code.
        match &self.previous {
            Some(v) => std::env::set_var(self.var, v),
            None => std::env::remove_var(self.var),
        }
    }
}

/// Inputs of one micro-batch, before the model runs.
struct MicroBatch {
    dataset: usize,
    visual: Visual,
    batch: BatchTensors,
    /// Supervised target tokens of each row (labels after the causal shift).
    row_targets: Vec<usize>,
}

/// The image side of a micro-batch.
enum Visual {
    /// Cached detached Q-Former features `[B, num_query, hidden]`.
    Features(Tensor),
    /// Preprocessed pixels `[B, 3, H, W]`, encoded (per shard) in [`shard_loss`].
    Pixels(Tensor),
}

impl Visual {
    fn rows(&self, start: usize, len: usize) -> Result<Visual> {
        Ok(match self {
            Visual::Features(t) => Visual::Features(t.narrow(0, start, len)?),
            Visual::Pixels(t) => Visual::Pixels(t.narrow(0, start, len)?),
        })
    }
}

fn batch_rows(b: &BatchTensors, start: usize, len: usize) -> Result<BatchTensors> {
    Ok(BatchTensors {
        token_ids: b.token_ids.narrow(0, start, len)?,
        attention_mask: b.attention_mask.narrow(0, start, len)?,
        labels: b.labels.narrow(0, start, len)?,
        position_ids: b.position_ids.narrow(0, start, len)?,
    })
}

/// Loss of one shard (or of the whole micro-batch): Q-Former features (through the vision
/// tower when it trains), projector, layout embedding, LLaMA (`llama`, or the model's own),
/// shifted mean cross-entropy over the shard's targets.
fn shard_loss(
    model: &MiniGpt4,
    llama: Option<&Llama>,
    visual: &Visual,
    mode: TrainMode,
    b: &BatchTensors,
) -> Result<Tensor> {
    let qf = shard_features(model, visual, mode)?;
    let Some(llama) = llama else {
        return crate::step::loss(model, &qf, b);
    };
    let img = model.project(&qf, true)?;
    let embeds = model.embed_layout(&b.token_ids, &img)?;
    Ok(llama.train_loss(&embeds, &b.position_ids, Some(&b.attention_mask), &b.labels)?)
}

/// A shard's loss and its gradient stores.
type ShardGrads = (f32, Vec<GradStore>);

/// The loss of one shard (unscaled) and its gradients for `loss * scale`: the plain backward,
/// or with `checkpointing` one backward per decoder layer ([`Llama::train_loss_checkpointed`]).
fn shard_grads(
    model: &MiniGpt4,
    llama: Option<&Llama>,
    visual: &Visual,
    mode: TrainMode,
    b: &BatchTensors,
    scale: f64,
    checkpointing: bool,
) -> Result<(f32, Vec<GradStore>)> {
    if checkpointing {
        let qf = shard_features(model, visual, mode)?;
        let img = model.project(&qf, true)?;
        let embeds = model.embed_layout(&b.token_ids, &img)?;
        let llama = llama.unwrap_or(&model.llama);
        return Ok(llama.train_loss_checkpointed(
            &embeds,
            &b.position_ids,
            Some(&b.attention_mask),
            &b.labels,
            scale,
        )?);
    }
    let l = shard_loss(model, llama, visual, mode, b)?;
    let v = l.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let l = if scale != 1.0 { (l * scale)? } else { l };
    Ok((v, vec![l.backward()?]))
}

/// Q-Former features of a shard: through the vision tower when it trains, else constant.
fn shard_features(model: &MiniGpt4, visual: &Visual, mode: TrainMode) -> Result<Tensor> {
    Ok(match visual {
        Visual::Features(f) => f.clone(),
        // Full training: gradients flow through the Q-Former and the vision tower.
        Visual::Pixels(px) if mode.trains_vision() => model.qformer_features_t(px, true)?,
        // A frozen tower: its output is a constant (fast inference path), the Q-Former trains.
        Visual::Pixels(px) if mode.trains_qformer() => {
            let v = model.vision.forward(px)?.detach();
            model.qformer.forward_t(&v, true)?
        }
        Visual::Pixels(px) => model.qformer_features(px)?.detach(),
    })
}

/// A LLaMA sharing every tensor of `src` (weights, and the LoRA Vars) with fresh adapter
/// objects (their dropout streams are re-seeded per step by the trainer).
fn llama_replica(src: &Llama) -> Result<Llama> {
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert("model.embed_tokens.weight".into(), src.embed_tokens.clone());
    for (i, l) in src.layers.iter().enumerate() {
        for t in minigpt4::llama::LORA_TARGETS {
            let Some(lin) = l.linear(t) else { continue };
            let m = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&t) {
                "self_attn"
            } else {
                "mlp"
            };
            map.insert(
                format!("model.layers.{i}.{m}.{t}.weight"),
                lin.weight.clone(),
            );
            if let Some(b) = &lin.bias {
                map.insert(format!("model.layers.{i}.{m}.{t}.bias"), b.clone());
            }
        }
        map.insert(
            format!("model.layers.{i}.input_layernorm.weight"),
            l.input_layernorm.weight.clone(),
        );
        map.insert(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            l.post_attention_layernorm.weight.clone(),
        );
    }
    map.insert("model.norm.weight".into(), src.norm.weight.clone());
    map.insert("lm_head.weight".into(), src.lm_head.weight.clone());
    if let Some(b) = &src.lm_head.bias {
        map.insert("lm_head.bias".into(), b.clone());
    }
    // Same dtype and device: VarBuilder hands back the very tensors (no copies).
    let vb = candle_nn::VarBuilder::from_tensors(map, src.dtype(), src.device());
    let mut r = Llama::new(&src.cfg, vb)?;
    for (sl, rl) in src.layers.iter().zip(r.layers.iter_mut()) {
        for t in minigpt4::llama::LORA_TARGETS {
            let (Some(s), Some(d)) = (sl.linear(t), rl.linear_mut(t)) else {
                continue;
            };
            if let Some(ad) = &s.lora {
                d.set_lora(share_adapter(ad, 0)?)?;
            }
        }
    }
    Ok(r)
}

/// An adapter on the very same A/B Vars (the optimizer holds them) and scale as `old`, with a
/// dropout stream seeded by `seed`.
fn share_adapter(old: &LoraAdapter, seed: u64) -> Result<LoraAdapter> {
    let r = old.rank().max(1) as f64;
    let mut ad = LoraAdapter::from_tensors(
        old.a.as_tensor(),
        old.b.as_tensor(),
        old.scale * r,
        old.dropout,
        seed,
    )?;
    ad.a = old.a.clone();
    ad.b = old.b.clone();
    ad.scale = old.scale;
    Ok(ad)
}

/// Re-seeds every LoRA dropout stream of `llama` from `base`, layer and module.
fn reseed_llama(llama: &mut Llama, base: u64) -> Result<()> {
    for (li, layer) in llama.layers.iter_mut().enumerate() {
        for (ti, t) in minigpt4::llama::LORA_TARGETS.iter().enumerate() {
            let Some(lin) = layer.linear_mut(t) else {
                continue;
            };
            let Some(old) = lin.lora.take() else {
                continue;
            };
            let seed = base
                .wrapping_mul(1_000_003)
                .wrapping_add((li * 64 + ti) as u64);
            lin.lora = Some(share_adapter(&old, seed)?);
        }
    }
    Ok(())
}

/// Contiguous row ranges `(start, len)` of `n` rows in at most `shards` near-equal shards.
fn shard_ranges(n: usize, shards: usize) -> Vec<(usize, usize)> {
    let s = shards.clamp(1, n.max(1));
    let (q, r) = (n / s, n % s);
    let mut out = Vec::with_capacity(s);
    let mut start = 0;
    for i in 0..s {
        let len = q + usize::from(i < r);
        out.push((start, len));
        start += len;
    }
    out
}

fn runner_name(n: &str) -> String {
    LoraKey::parse(n)
        .map(|k| k.runner_key())
        .unwrap_or_else(|| n.to_string())
}

impl Trainer {
    /// Prepares the model for `cfg.mode` (projector trainable and/or LoRA attached), builds the
    /// optimizer and data mixer, and resumes from the newest checkpoint in `run_dir` if any.
    pub fn new(
        mut model: MiniGpt4,
        tok: LlamaTokenizer,
        datasets: Vec<TrainDataset>,
        cfg: TrainConfig,
        run_dir: &Path,
    ) -> Result<Self> {
        cfg.check()?;
        if cfg.mode.needs_varmap() {
            return Err(TrainError::Invalid(format!(
                "train mode `{}` trains parameters that are not Vars in a model from \
                 MiniGpt4::load: load it with MiniGpt4::load_varmap and build the trainer with \
                 Trainer::new_full(model, varmap, ...)",
                cfg.mode.name()
            )));
        }
        let mut vars = Vec::new();
        if cfg.mode.has_fc() {
            vars.extend(model.make_projector_trainable()?);
        }
        if cfg.mode.has_lora() {
            let l = &cfg.lora;
            match &l.init_adapter {
                Some(dir) => {
                    let ad = crate::peft::PeftAdapter::load(dir, model.device())?;
                    let alpha = ad.lora_alpha().unwrap_or(l.alpha);
                    let t: HashMap<String, Tensor> = ad
                        .tensors
                        .iter()
                        .map(|(k, t)| (k.peft_key(), t.clone()))
                        .collect();
                    let n = model
                        .llama
                        .load_lora(&t, alpha, l.dropout as f32, l.init_seed)?;
                    if n == 0 {
                        return Err(TrainError::file(dir, "adapter has no LoRA matrices"));
                    }
                }
                None => model.enable_lora(&LoraConfig {
                    r: l.r,
                    alpha: l.alpha,
                    dropout: l.dropout as f32,
                    target_modules: l.target_modules.clone(),
                    seed: l.init_seed,
                })?,
            }
            vars.extend(model.llama.lora_vars());
        }
        let params: Vec<(String, Var)> = vars
            .iter()
            .map(|(n, v)| (runner_name(n), v.clone()))
            .collect();
        Self::build(model, tok, datasets, cfg, run_dir, params)
    }

    /// Trainer for the modes that train base weights: `full` (everything), `frozen-vit`
    /// (everything but the vision tower) and `llm+fc` (LLaMA + projector), and also `fc`. `varmap` is the one [`MiniGpt4::load_varmap`]
    /// returned with `model`; the trained parameters are picked from it by name (MiniGPT-4
    /// root names, which are also the checkpoint keys and the names in `export`'s
    /// `model.safetensors`). Resumes from the newest checkpoint in `run_dir` if any.
    /// LoRA modes are refused: use [`Trainer::new`].
    pub fn new_full(
        model: MiniGpt4,
        varmap: VarMap,
        tok: LlamaTokenizer,
        datasets: Vec<TrainDataset>,
        cfg: TrainConfig,
        run_dir: &Path,
    ) -> Result<Self> {
        cfg.check()?;
        if cfg.mode.has_lora() {
            return Err(TrainError::Invalid(format!(
                "train mode `{}` attaches LoRA adapters: use Trainer::new",
                cfg.mode.name()
            )));
        }
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("VarMap lock poisoned".into()))?
            .iter()
            .filter(|(n, _)| cfg.mode.trains_param(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        // A fixed order (HashMap order varies per process): the gradient norm sums in it.
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if params.is_empty() {
            return Err(TrainError::Invalid(format!(
                "the VarMap holds no parameter that mode `{}` trains (names must be MiniGPT-4 \
                 root names as MiniGpt4::load_varmap gives them)",
                cfg.mode.name()
            )));
        }
        // The Vars must be the model's own tensors, or training would not change the model.
        if let Some((n, v)) = params.iter().find(|(n, _)| n == "llama_proj.weight") {
            if v.as_tensor().id() != model.llama_proj.weight.id() {
                return Err(TrainError::Invalid(format!(
                    "VarMap entry {n} is not the model's tensor: pass the VarMap that \
                     MiniGpt4::load_varmap returned with this model"
                )));
            }
        }
        for (n, v) in &params {
            if v.as_tensor().dtype() != DType::F32 {
                return Err(TrainError::Invalid(format!(
                    "{n} is {:?}: full training needs an F32 model",
                    v.as_tensor().dtype()
                )));
            }
        }
        let mut t = Self::build(model, tok, datasets, cfg, run_dir, params)?;
        t.varmap = Some(varmap);
        Ok(t)
    }

    fn build(
        model: MiniGpt4,
        tok: LlamaTokenizer,
        datasets: Vec<TrainDataset>,
        cfg: TrainConfig,
        run_dir: &Path,
        params: Vec<(String, Var)>,
    ) -> Result<Self> {
        let sched = cfg.schedule();
        let opt = AdamW::new_runner_groups(
            params.clone(),
            AdamWConfig {
                lr: sched.lr_at(0),
                beta1: cfg.optim.beta1,
                beta2: cfg.optim.beta2,
                eps: cfg.optim.eps,
                weight_decay: cfg.optim.weight_decay,
            },
        )?;
        let entries = datasets
            .iter()
            .map(|d| MixEntry {
                name: d.name.clone(),
                size: d.records.len(),
                ratio: d.ratio,
            })
            .collect();
        let mixer = DatasetMixer::new(entries)?;
        let image_size = model.vision.cfg.image_size as u32;
        let processor = match cfg.image_mode {
            ImageMode::Train => ImageProcessor::train(image_size),
            ImageMode::Eval => ImageProcessor::eval(image_size),
        };
        let n_img = model.config().qformer.num_query_tokens;
        let layout = LayoutConfig {
            max_txt_len: cfg.max_txt_len,
            ..LayoutConfig::minigpt4(n_img)
        };
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        // The LLaMA's dtype is the compute dtype of the whole training forward.
        let scaler = cfg
            .loss_scale
            .applies_to(model.llama.embed_tokens.dtype())
            .then(|| LossScaler::new(&cfg.loss_scale));
        let mut t = Self {
            cfg,
            model,
            tok,
            datasets,
            mixer,
            rng,
            opt,
            params,
            processor,
            layout,
            run_dir: run_dir.to_path_buf(),
            step: 0,
            metrics: None,
            losses: LossLog::default(),
            scaler,
            resumed_from: None,
            caching: true,
            images: HashMap::new(),
            features: HashMap::new(),
            varmap: None,
            shards: None,
            replicas: Vec::new(),
        };
        let shards = t.cfg.shards.min(t.cfg.batch_size);
        if shards > 1 {
            // candle's CPU matmul picks gemm's parallelism per call from
            // `candle_core::utils::get_num_threads()`, which only reads RAYON_NUM_THREADS (no
            // per-thread or global setting exists); a one-thread rayon pool alone does not
            // help (measured: gemm still takes its multi-thread path, 1.5-3x slower). So
            // with shards the whole process's candle gemm goes single-threaded while this
            // trainer lives (each shard thread is one core's worth of work); `ShardPools`
            // puts the previous value back when it goes, so that later inference in the same
            // process (the loop's evaluations) uses every core again.
            // SAFETY (edition 2021: `set_var` is a safe fn, but racy with concurrent env
            // reads from C): set once, at construction, before any shard thread exists.
            t.shards = Some(ShardPools::new(shards, "mde-train-shard")?);
            if t.cfg.mode.has_lora() {
                t.replicas = (0..shards)
                    .map(|_| llama_replica(&t.model.llama))
                    .collect::<Result<_>>()?;
            }
        }
        if let Some(dir) = latest_checkpoint(run_dir)? {
            t.resume_from(&dir)?;
        }
        Ok(t)
    }

    fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let dev = self.model.device().clone();
        let st = load_checkpoint(dir, &self.params, &mut self.opt, &dev)?;
        let extra: Extra = serde_json::from_value(st.extra.clone())
            .map_err(|e| TrainError::file(dir.join("state.json"), format!("bad `extra`: {e}")))?;
        self.mixer.restore(extra.mixer)?;
        self.rng = st.rng.restore()?;
        self.step = st.step;
        self.metrics = extra.metrics;
        self.losses = extra.losses;
        if self.scaler.is_some() {
            if let Some(sc) = extra.scaler {
                self.scaler = Some(sc);
            }
        }
        self.resumed_from = Some(dir.to_path_buf());
        Ok(())
    }

    /// Turns the in-memory image and feature caches on (default) or off; off also empties
    /// them. Results are the same either way up to float rounding of batched vs per-image
    /// encoding; mainly for tests and memory-tight runs.
    pub fn set_caching(&mut self, on: bool) {
        self.caching = on;
        if !on {
            self.images.clear();
            self.features.clear();
        }
    }

    /// Number of decoded images and of Q-Former feature rows held in the caches.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.images.len(), self.features.len())
    }

    /// Checkpoint the run resumed from, if any.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Loss of the run's first optimizer step and of its latest one, across resumes (they are
    /// saved in every checkpoint): what a summary of the run reports, the same after a kill and
    /// resume as without. `first_loss` is `None` after a resume from a checkpoint written
    /// before it was recorded.
    pub fn losses(&self) -> LossLog {
        self.losses
    }

    /// The run configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model being trained.
    pub fn model(&self) -> &MiniGpt4 {
        &self.model
    }

    /// Gives the model back.
    pub fn into_model(self) -> MiniGpt4 {
        self.model
    }

    /// The trained model for inference: no Vars, so forwards record no autograd graph (a model
    /// holding Vars evaluated about 2x slower in the loop). Full modes rebuild the model from
    /// detached copies of every tensor of the VarMap; the other modes merge the LoRA adapters
    /// and detach the projector.
    pub fn into_inference_model(self) -> Result<MiniGpt4> {
        let mut model = self.model;
        if let Some(vm) = &self.varmap {
            let tensors: HashMap<String, Tensor> = detached_tensors(vm)?.into_iter().collect();
            let vb = VarBuilder::from_tensors(tensors, model.dtype(), model.device());
            return Ok(MiniGpt4::new(&model.config(), vb)?);
        }
        model.llama.freeze()?;
        model.llama_proj.freeze()?;
        Ok(model)
    }

    /// Every parameter of the model (trained and frozen) under MiniGPT-4 root names, when the
    /// trainer was built by [`Trainer::new_full`]; e.g. to write a complete model folder.
    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    /// Trainable tensors under runner key names.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Metric history so far.
    pub fn metrics(&self) -> Option<&MetricHistory> {
        self.metrics.as_ref()
    }

    /// Tensor and parameter counts per optimizer group.
    pub fn group_summary(&self) -> Vec<GroupSummary> {
        let sizes: HashMap<&str, usize> = self
            .params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor().elem_count()))
            .collect();
        self.opt
            .groups()
            .iter()
            .map(|g| GroupSummary {
                weight_decay: g.weight_decay,
                tensors: g.names.len(),
                parameters: g
                    .names
                    .iter()
                    .map(|n| sizes.get(n.as_str()).copied().unwrap_or(0))
                    .sum(),
            })
            .collect()
    }

    /// Re-seeds every LoRA dropout stream from (seed, step, [shard,] layer, module) so that
    /// dropout masks depend only on the step, not on how many steps this process has run
    /// (exact resume).
    fn reseed_dropout(&mut self) -> Result<()> {
        if !(self.cfg.mode.has_lora() && self.cfg.lora.dropout > 0.0) {
            return Ok(());
        }
        let base = self.cfg.seed ^ 0x5bd1_e995_u64.wrapping_mul(self.step + 1);
        if self.replicas.is_empty() {
            return reseed_llama(&mut self.model.llama, base);
        }
        for (i, r) in self.replicas.iter_mut().enumerate() {
            let shard = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1);
            reseed_llama(r, base ^ shard)?;
        }
        Ok(())
    }

    fn load_image(&mut self, path: &Path, dataset: &str) -> Result<RgbImage> {
        if let Some(img) = self.images.get(path) {
            return Ok(img.clone());
        }
        let img = minigpt4::preprocess::load_rgb(path).map_err(|e| {
            TrainError::file(path, format!("dataset {dataset}: cannot read image: {e}"))
        })?;
        if self.caching {
            self.images.insert(path.to_path_buf(), img.clone());
        }
        Ok(img)
    }

    /// Detached Q-Former features of one image through the cache (eval preprocessing).
    fn cached_features(&mut self, path: &Path, dataset: &str) -> Result<Tensor> {
        if let Some(f) = self.features.get(path) {
            return Ok(f.clone());
        }
        let img = self.load_image(path, dataset)?;
        let dev = self.model.device().clone();
        let px = self
            .processor
            .process_eval(&img, &dev)
            .map_err(|e| TrainError::Invalid(format!("preprocessing {}: {e}", path.display())))?
            .unsqueeze(0)?
            .to_dtype(self.model.dtype())?;
        let f = self.model.qformer_features(&px)?.detach().squeeze(0)?;
        self.features.insert(path.to_path_buf(), f.clone());
        // The raw image is not needed again once its features are known.
        self.images.remove(path);
        Ok(f)
    }

    fn micro_batch(&mut self) -> Result<MicroBatch> {
        let mb = self.mixer.next_batch(self.cfg.batch_size, &mut self.rng);
        let dev = self.model.device().clone();
        let ds_name = self.datasets[mb.dataset].name.clone();
        let mut paths = Vec::with_capacity(mb.indices.len());
        let mut samples: Vec<TrainSample> = Vec::with_capacity(mb.indices.len());
        for &i in &mb.indices {
            let r = &self.datasets[mb.dataset].records[i];
            paths.push(r.image.clone());
            samples.push(r.to_sample().map_err(|m| {
                TrainError::Invalid(format!("dataset {ds_name} record {}: {m}", i + 1))
            })?);
        }
        let use_feature_cache = self.caching
            && !self.cfg.mode.trains_qformer()
            && self.cfg.image_mode == ImageMode::Eval;
        let visual = if use_feature_cache {
            // Eval preprocessing draws nothing from `rng`, so skipping it keeps the stream.
            let fs = paths
                .iter()
                .map(|p| self.cached_features(p, &ds_name))
                .collect::<Result<Vec<_>>>()?;
            Visual::Features(Tensor::stack(&fs, 0)?)
        } else {
            let imgs = paths
                .iter()
                .map(|p| self.load_image(p, &ds_name))
                .collect::<Result<Vec<_>>>()?;
            let px = self
                .processor
                .process_batch(&imgs, &mut self.rng, &dev)
                .map_err(|e| TrainError::Invalid(format!("preprocessing images: {e}")))?;
            Visual::Pixels(px.to_dtype(self.model.dtype())?)
        };
        let layout = build_batch(&self.tok, &samples, &self.cfg.end_sym, self.layout)?;
        let row_targets = layout
            .labels
            .iter()
            .map(|r| {
                r.iter()
                    .skip(1)
                    .filter(|&&l| l != crate::batch::IGNORE_INDEX)
                    .count()
            })
            .collect();
        Ok(MicroBatch {
            dataset: mb.dataset,
            visual,
            batch: BatchTensors::new(&layout, &dev)?,
            row_targets,
        })
    }

    /// Loss (the micro-batch mean over target tokens, as f32) and gradients of one
    /// micro-batch whose loss is scaled by `scale` before backward. One shard: the plain
    /// forward/backward on this thread. Several: row shards on their own threads, each
    /// weighted by its share of the target tokens; gradients summed in shard order.
    fn micro_batch_grads(&self, mb: &MicroBatch, scale: f64) -> Result<(f32, Vec<GradStore>)> {
        let mode = self.cfg.mode;
        let n_rows = mb.row_targets.len();
        let n_shards = self.shards.as_ref().map_or(1, ShardPools::len);
        // Checked here for every path, so that the error names the setting to change.
        let total: usize = mb.row_targets.iter().sum();
        if total == 0 {
            return Err(TrainError::Invalid(format!(
                "no target token in the micro-batch of step {} (all labels are -100): the \
                 prompts fill max_txt_len = {} or the answers are empty",
                self.step + 1,
                self.cfg.max_txt_len
            )));
        }
        let ckpt = self.cfg.checkpointing;
        if n_shards < 2 || n_rows < 2 {
            let (v, stores) =
                shard_grads(&self.model, None, &mb.visual, mode, &mb.batch, scale, ckpt)?;
            if !v.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "non-finite loss {v} at step {}",
                    self.step
                )));
            }
            return Ok((v, stores));
        }
        let ranges = shard_ranges(n_rows, n_shards);
        let shards = self.shards.as_ref().expect("n_shards >= 2");
        let results: Vec<Result<Option<ShardGrads>>> = shards.run(|i| {
            let (start, len) = ranges[i];
            let n_i: usize = mb.row_targets[start..start + len].iter().sum();
            if n_i == 0 {
                return Ok(None); // no target: contributes nothing
            }
            let w = n_i as f64 / total as f64;
            let visual = mb.visual.rows(start, len)?;
            let b = batch_rows(&mb.batch, start, len)?;
            let (v, g) = shard_grads(
                &self.model,
                self.replicas.get(i),
                &visual,
                mode,
                &b,
                w * scale,
                ckpt,
            )?;
            Ok(Some((v * w as f32, g)))
        });
        let (loss, stores) = crate::shards::gather(results)?;
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "non-finite loss {loss} at step {}",
                self.step
            )));
        }
        Ok((loss, stores))
    }

    /// Forward and backward of one optimizer step's `accum_steps` micro-batches; returns the
    /// mean micro-batch loss, the summed gradient of every trainable parameter (`None`: no
    /// gradient reached it), a gradient store to hand the optimizer, and the last dataset.
    fn accumulate(&mut self) -> Result<(f32, Vec<Option<Tensor>>, GradStore, usize)> {
        let accum = self.cfg.accum_steps;
        let mut store = None;
        let mut sums: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut loss_sum = 0f32;
        let mut dataset = 0;
        for _ in 0..accum {
            let mb = self.micro_batch()?;
            dataset = mb.dataset;
            let loss_scale = self.scaler.map_or(1.0, |s| s.scale());
            let (v, stores) = self.micro_batch_grads(&mb, loss_scale / accum as f64)?;
            loss_sum += v;
            // Fixed order: micro-batches, then shards within one.
            crate::shards::add_grads(self.params.iter().map(|(_, v)| v), &stores, &mut sums)?;
            store = stores.into_iter().next().or(store);
        }
        let store = store.ok_or_else(|| TrainError::Invalid("no micro-batch".into()))?;
        Ok((loss_sum / accum as f32, sums, store, dataset))
    }

    /// Loss and gradients of the next optimizer step, without updating anything but the data
    /// stream (the batches are drawn as [`Trainer::train_step`] would draw them): the mean
    /// micro-batch loss and `(runner name, gradient)` of every trainable tensor a gradient
    /// reached. For diagnostics and for checking sharded against unsharded gradients.
    pub fn loss_and_gradients(&mut self) -> Result<(f32, Vec<(String, Tensor)>)> {
        self.reseed_dropout()?;
        let (loss, sums, _, _) = self.accumulate()?;
        let grads = self
            .params
            .iter()
            .zip(sums)
            .filter_map(|((n, _), g)| g.map(|g| (n.clone(), g)))
            .collect();
        Ok((loss, grads))
    }

    /// One optimizer step: `accum_steps` micro-batches (each split into `shards` threads),
    /// optional clipping, AdamW update at the scheduled learning rate.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let lr = self.cfg.schedule().lr_at(self.step as usize);
        self.opt.set_learning_rate(lr);
        self.reseed_dropout()?;
        let (loss, mut sums, mut store, dataset) = self.accumulate()?;
        let loss_scale = self.scaler.map(|s| s.scale());
        if let Some(sc) = loss_scale {
            // Unscale before the norm, the clipping and the update (GradScaler.unscale_).
            for g in sums.iter_mut().flatten() {
                *g = (g.to_dtype(DType::F32)? * (1.0 / sc))?;
            }
        }
        let mut sq = 0f64;
        for g in sums.iter().flatten() {
            sq += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
        let grad_norm = sq.sqrt();
        if let Some(sc) = self.scaler.as_mut() {
            let found_inf = !grad_norm.is_finite();
            sc.update(found_inf, &self.cfg.loss_scale);
            if found_inf {
                tracing::warn!(
                    step = self.step + 1,
                    scale = loss_scale.unwrap_or(1.0),
                    "inf/NaN gradients: step skipped, loss scale halved"
                );
                self.step += 1;
                self.losses.record(loss);
                return Ok(StepReport {
                    step: self.step,
                    loss,
                    lr,
                    grad_norm,
                    dataset,
                    loss_scale,
                    skipped: true,
                });
            }
        }
        let coef = match self.cfg.grad_clip {
            Some(max) if grad_norm > max => Some(max / (grad_norm + 1e-6)),
            _ => None,
        };
        for ((_, var), g) in self.params.iter().zip(sums) {
            if let Some(mut g) = g {
                if let Some(c) = coef {
                    g = (g * c)?;
                }
                store.insert(var.as_tensor(), g);
            }
        }
        self.opt.step(&store)?;
        self.step += 1;
        self.losses.record(loss);
        Ok(StepReport {
            step: self.step,
            loss,
            lr,
            grad_norm,
            dataset,
            loss_scale,
            skipped: false,
        })
    }

    /// Writes a checkpoint of the current state (atomic); returns its folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let extra = Extra {
            mixer: self.mixer.state(),
            metrics: self.metrics.clone(),
            losses: self.losses,
            scaler: self.scaler,
        };
        let state = TrainState {
            step: self.step,
            epoch: self.step / self.cfg.iters_per_epoch.max(1) as u64,
            rng: RngState::capture(&self.rng),
            extra: serde_json::to_value(&extra)
                .map_err(|e| TrainError::Invalid(format!("serialising state: {e}")))?,
        };
        save_checkpoint(&self.run_dir, &self.params, &self.opt, &state)
    }

    /// Writes the trainable weights to `dir`: in `full` / `frozen-vit` / `llm+fc` modes every trained tensor
    /// under its MiniGPT-4 root name in `dir/model.safetensors` (frozen parts are not
    /// written: they are the base model's); otherwise the runner-keyed safetensors (and the
    /// PEFT adapter in LoRA modes).
    pub fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if self.cfg.mode.needs_varmap() {
            let named: Vec<(String, Tensor)> = self
                .params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            return crate::io::save_safetensors(&dir.join("model.safetensors"), &named);
        }
        crate::export::save_runner_safetensors(
            &self.model,
            &dir.join("trainable_runner_keys.safetensors"),
        )?;
        if self.cfg.mode.has_lora() {
            let l = &self.cfg.lora;
            crate::export::peft_adapter(&self.model, l.r, l.alpha, l.dropout, &l.target_modules)?
                .save(&dir.join("adapter"))?;
        }
        Ok(())
    }

    fn validate(&mut self, v: &mut dyn Validator) -> Result<()> {
        let value = v.evaluate(&self.model, self.step)?;
        let m = self.metrics.get_or_insert_with(|| MetricHistory {
            metric: v.name().to_string(),
            higher_is_better: v.higher_is_better(),
            history: Vec::new(),
            best: None,
        });
        let p = MetricPoint {
            step: self.step,
            value,
        };
        m.history.retain(|q| q.step != p.step);
        m.history.push(p);
        let better = match m.best {
            None => true,
            Some(b) => {
                if m.higher_is_better {
                    value > b.value
                } else {
                    value < b.value
                }
            }
        };
        if better {
            m.best = Some(p);
        }
        let m = m.clone();
        if better {
            let best = self.run_dir.join("best");
            self.export(&best)?;
            mde_core::io::write_json(best.join("best.json"), &p)?;
        }
        mde_core::io::write_json(self.run_dir.join("metrics.json"), &m)?;
        tracing::info!(step = self.step, metric = %m.metric, value, "validation");
        Ok(())
    }

    /// Trains to `total_steps` (or `opts.stop_after`), checkpointing every
    /// `checkpoint_every` steps and at the end, validating every `validate_every` steps.
    /// At the natural end, writes `final/` (see [`Trainer::export`]) and, with
    /// `merge_at_end`, `final/merged/model.safetensors`.
    pub fn run(
        &mut self,
        mut validator: Option<&mut dyn Validator>,
        opts: RunOptions,
    ) -> Result<Vec<StepReport>> {
        let total = self.cfg.total_steps();
        let limit = opts.stop_after.map_or(total, |s| s.min(total));
        let bar = if opts.progress {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(s) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            ) {
                b.set_style(s);
            }
            b.set_position(self.step);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut reports = Vec::new();
        while self.step < limit {
            let r = self.train_step()?;
            bar.set_position(r.step);
            bar.set_message(format!("loss {:.4} lr {:.3e}", r.loss, r.lr));
            tracing::debug!(step = r.step, loss = r.loss, lr = r.lr, "step");
            reports.push(r);
            if let Some(v) = validator.as_deref_mut() {
                if self.cfg.validate_every > 0 && self.step.is_multiple_of(self.cfg.validate_every)
                {
                    self.validate(v)?;
                }
            }
            if self.cfg.checkpoint_every > 0 && self.step.is_multiple_of(self.cfg.checkpoint_every)
            {
                self.save_checkpoint()?;
            }
        }
        if self.step < total {
            bar.abandon();
            return Ok(reports);
        }
        bar.finish();
        if let Some(v) = validator {
            if self
                .metrics
                .as_ref()
                .and_then(|m| m.history.last())
                .map(|p| p.step)
                != Some(self.step)
            {
                self.validate(v)?;
            }
        }
        let done = latest_checkpoint(&self.run_dir)?
            .and_then(|d| mde_core::io::read_json::<TrainState>(d.join("state.json")).ok())
            .map(|s| s.step);
        if done != Some(self.step) {
            self.save_checkpoint()?;
        }
        let fin = self.run_dir.join("final");
        self.export(&fin)?;
        if self.cfg.merge_at_end && self.cfg.mode.has_lora() {
            let d = fin.join("merged");
            std::fs::create_dir_all(&d).map_err(|e| TrainError::Io {
                path: d.clone(),
                source: e,
            })?;
            let dt = self.model.dtype();
            crate::export::merge_and_save_llama(&mut self.model, &d.join("model.safetensors"), dt)?;
        }
        Ok(reports)
    }
}

/// Loads the model and tokenizer of a MiniGPT-4 [`minigpt4::ModelPaths`] on `device`.
pub fn load_model(
    paths: &minigpt4::ModelPaths,
    dtype: DType,
    device: &Device,
) -> Result<(MiniGpt4, LlamaTokenizer)> {
    let model = MiniGpt4::load(paths, dtype, device)?;
    let loc = minigpt4::weights::Location::parse(&paths.vicuna)?;
    let tok_path = loc
        .file("tokenizer.json")
        .ok_or_else(|| TrainError::file(&paths.vicuna, "no tokenizer.json"))?;
    let tok = LlamaTokenizer::from_file(&tok_path)?;
    Ok((model, tok))
}

/// [`load_model`] with every parameter a Var (see `MiniGpt4::load_varmap`), for
/// [`Trainer::new_full`]. F32, as the optimizer requires.
pub fn load_model_varmap(
    paths: &minigpt4::ModelPaths,
    device: &Device,
) -> Result<(MiniGpt4, VarMap, LlamaTokenizer)> {
    let (model, varmap) = MiniGpt4::load_varmap(paths, DType::F32, device)?;
    let loc = minigpt4::weights::Location::parse(&paths.vicuna)?;
    let tok_path = loc
        .file("tokenizer.json")
        .ok_or_else(|| TrainError::file(&paths.vicuna, "no tokenizer.json"))?;
    let tok = LlamaTokenizer::from_file(&tok_path)?;
    Ok((model, varmap, tok))
}

/// Validation metric: mean training loss (eval mode: no dropout, eval image resize) over a
/// held-out set of records, in batches; lower is better.
pub struct LossValidator {
    pub records: Vec<TrainRecord>,
    pub tok: LlamaTokenizer,
    pub end_sym: String,
    pub batch_size: usize,
    pub max_txt_len: usize,
}

impl Validator for LossValidator {
    fn name(&self) -> &str {
        "val_loss"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn evaluate(&mut self, model: &MiniGpt4, _step: u64) -> Result<f64> {
        if self.records.is_empty() {
            return Err(TrainError::Invalid("empty validation set".into()));
        }
        let dev = model.device().clone();
        let proc = ImageProcessor::eval(model.vision.cfg.image_size as u32);
        let layout_cfg = LayoutConfig {
            max_txt_len: self.max_txt_len,
            ..LayoutConfig::minigpt4(model.config().qformer.num_query_tokens)
        };
        let (mut total, mut n) = (0f64, 0usize);
        for chunk in self.records.chunks(self.batch_size.max(1)) {
            let mut imgs = Vec::new();
            let mut samples = Vec::new();
            for r in chunk {
                imgs.push(minigpt4::preprocess::load_rgb(&r.image).map_err(|e| {
                    TrainError::file(&r.image, format!("cannot read validation image: {e}"))
                })?);
                samples.push(r.to_sample().map_err(TrainError::Invalid)?);
            }
            let px = proc
                .process_batch_eval(&imgs, &dev)
                .map_err(|e| TrainError::Invalid(format!("preprocessing images: {e}")))?
                .to_dtype(model.dtype())?;
            let qf = model.qformer_features(&px)?;
            let layout = build_batch(&self.tok, &samples, &self.end_sym, layout_cfg)?;
            let b = BatchTensors::new(&layout, &dev)?;
            let img = model.project(&qf, false)?;
            let embeds = model.embed_layout(&b.token_ids, &img)?;
            let logits = model.forward_embeds(
                &embeds,
                Some(&b.attention_mask),
                Some(&b.position_ids),
                false,
            )?;
            let l = minigpt4::llama::causal_lm_loss(&logits, &b.labels)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            total += l as f64 * chunk.len() as f64;
            n += chunk.len();
        }
        Ok(total / n as f64)
    }
}

/// [`minigpt4::model::detached_tensors`] with this crate's error type.
pub fn detached_tensors(vm: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    Ok(minigpt4::model::detached_tensors(vm)?)
}

#[cfg(test)]
mod tests {
    use super::GemmThreadsGuard;

    #[test]
    fn the_thread_setting_is_restored() {
        // A variable of its own: the real RAYON_NUM_THREADS may be read by concurrent tests.
        const VAR: &str = "MDE_TRAIN_TEST_GUARD_VAR";
        std::env::set_var(VAR, "7");
        {
            let _g = GemmThreadsGuard::set(VAR, "1");
            assert_eq!(std::env::var(VAR).as_deref(), Ok("1"));
        }
        assert_eq!(std::env::var(VAR).as_deref(), Ok("7"));
        std::env::remove_var(VAR);
        drop(GemmThreadsGuard::set(VAR, "1"));
        assert!(std::env::var_os(VAR).is_none());
    }
}
