//! The embedded default's base model: a tiny MiniGPT-4 trained from scratch by mde itself on the
//! synthetic world's captions and its (deliberately unbalanced) base VQA set.
//!
//! The build is cached under `cache/base-<key>/`, where the key hashes the world's content, the
//! model config and init seed, and the `[base]` training settings, so every later run with the
//! same inputs reuses it. Training itself is resumable (mde-train checkpoints in `train/`), and
//! the finished model is written in the same layout as the random init (`model/blip2`,
//! `model/vicuna`, `model/minigpt4`), readable by `minigpt4::MiniGpt4::load`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use mde_train::data::{RecordKind, TrainRecord};
use mde_train::trainer::{
    ImageMode, OptimSettings, RunOptions, TrainConfig, TrainDataset, TrainMode, Trainer,
};
use mde_world::{BaseVariant, World};
use serde::{Deserialize, Serialize};

use crate::tiny::{build_base_model, load_trainable, BaseModel, CorpusSource, TinyModelConfig};
use crate::{Result, TinyError};

/// `[base]`: from-scratch training of the tiny base model (ignored for real checkpoints,
/// which are already trained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaseSection {
    /// Optimizer steps.
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Which base VQA set: `unbalanced` (the demo: weak types are scarce) or `balanced`
    /// (the control that shows every type is learnable).
    pub vqa: BaseVariant,
    /// Supervision format of the base VQA records: `qa` (question -> "The answer is {text}.",
    /// what a from-scratch tiny model learns fastest) or `qma` (with the lettered options).
    pub kind: RecordKind,
    /// Sampling weight of the caption set against the VQA set (0 = no captions).
    pub caption_ratio: f64,
    pub checkpoint_every: u64,
    /// Rows of each batch split over this many threads (see `mde_train::TrainConfig::shards`).
    pub shards: usize,
    /// `[base.vision]`: pretrain the vision tower on the world's annotations first (and keep it
    /// frozen); off unless `steps > 0`. Not serialised when off, so the fingerprints of run
    /// folders and base caches written before the stage existed still match.
    #[serde(skip_serializing_if = "crate::vision_pretrain::VisionPretrainSection::is_off")]
    pub vision: crate::vision_pretrain::VisionPretrainSection,
}

impl Default for BaseSection {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch_size: 32,
            lr: 1.5e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.01,
            vqa: BaseVariant::Unbalanced,
            kind: RecordKind::Qa,
            caption_ratio: 0.25,
            checkpoint_every: 250,
            shards: 1,
            vision: Default::default(),
        }
    }
}

/// Bumped when the pretraining recipe changes in a way the config does not show.
const RECIPE_VERSION: u32 = 2;

/// What the cached base build records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainInfo {
    pub key: String,
    pub steps: u64,
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    pub seconds: f64,
    pub examples: BTreeMap<String, usize>,
    /// The vision-tower stage, when `[base.vision]` ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<crate::vision_pretrain::VisionPretrainInfo>,
}

/// The world's base VQA set as training records: `kind` `Qa` (question, then the answer text)
/// or `Qma` (question, lettered choices, then the letter and answer).
pub fn world_vqa_records(
    world: &World,
    variant: BaseVariant,
    kind: RecordKind,
) -> Result<Vec<TrainRecord>> {
    if !matches!(kind, RecordKind::Qa | RecordKind::Qma) {
        return Err(TinyError::Config(format!(
            "the base VQA set trains as qa or qma, not {kind:?}"
        )));
    }
    let coco = world.coco_dir();
    Ok(world
        .load_base_vqa(variant)?
        .into_iter()
        .map(|r| TrainRecord {
            image: coco.join(&r.image),
            kind,
            question: r.question,
            choices: r.choices,
            answer_idx: Some(r.correct_choice_idx),
            answer: None,
            rationale: None,
        })
        .collect())
}

/// The world's base captions as caption records ("Describe this image in detail.").
pub fn world_caption_records(world: &World) -> Result<Vec<TrainRecord>> {
    let coco = world.coco_dir();
    Ok(world
        .load_base_captions()?
        .into_iter()
        .map(|r| TrainRecord {
            image: coco.join(&r.image),
            kind: RecordKind::Caption,
            question: String::new(),
            choices: vec![],
            answer_idx: None,
            answer: Some(r.caption),
            rationale: None,
        })
        .collect())
}

/// The cache key of a base build.
pub fn base_key(world: &World, model: &TinyModelConfig, seed: u64, base: &BaseSection) -> String {
    let mut v = serde_json::json!({
        "recipe": RECIPE_VERSION,
        "world": world.manifest().content_hash,
        "model": model, "seed": seed, "base": base,
    });
    // With a vision stage, its key (which covers what the config does not show) is part of the
    // base build's; without one the key stays what it was before the stage existed.
    if !base.vision.is_off() {
        v["vision"] = serde_json::Value::String(vision_key(world, model, seed, base));
    }
    crate::tiny::sha256_hex(v.to_string().as_bytes())[..16].to_string()
}

/// The cache key of a `[base.vision]` stage: the world, the model config and init seed, and the
/// stage's own settings.
pub fn vision_key(world: &World, model: &TinyModelConfig, seed: u64, base: &BaseSection) -> String {
    let v = serde_json::json!({
        "recipe": RECIPE_VERSION,
        "world": world.manifest().content_hash,
        "model": model, "seed": seed, "vision": base.vision,
        "targets": crate::vision_pretrain::TARGETS_VERSION,
    });
    crate::tiny::sha256_hex(v.to_string().as_bytes())[..16].to_string()
}

/// Training settings of the base build: every parameter (`full`), or, after a `[base.vision]`
/// stage with `freeze = true`, all but what it pretrained: `frozen-vit` (the tower) or `llm+fc`
/// (tower and Q-Former, frozen as in MiniGPT-4).
pub fn base_train_config(base: &BaseSection, seed: u64) -> TrainConfig {
    let v = &base.vision;
    TrainConfig {
        mode: match (v.steps > 0 && v.freeze, v.qformer) {
            (false, _) => TrainMode::Full,
            (true, false) => TrainMode::FrozenVit,
            (true, true) => TrainMode::LlmFc,
        },
        optim: OptimSettings {
            init_lr: base.lr,
            min_lr: base.min_lr,
            warmup_lr: base.lr * 0.01,
            warmup_steps: base.warmup_steps,
            weight_decay: base.weight_decay,
            ..Default::default()
        },
        batch_size: base.batch_size,
        accum_steps: 1,
        max_epoch: 1,
        iters_per_epoch: base.steps,
        checkpoint_every: base.checkpoint_every,
        validate_every: 0,
        seed,
        grad_clip: Some(1.0),
        image_mode: ImageMode::Eval,
        end_sym: "###".into(),
        max_txt_len: 160,
        merge_at_end: false,
        shards: base.shards.max(1),
        loss_scale: Default::default(),
        checkpointing: false,
        lora: Default::default(),
    }
}

/// Builds (or reuses) the pretrained tiny base model for `world`; returns it with its info.
pub fn pretrained_base(
    world: &World,
    model: &TinyModelConfig,
    seed: u64,
    base: &BaseSection,
    cache: &Path,
    device: &Device,
    progress: bool,
) -> Result<(BaseModel, PretrainInfo)> {
    let key = base_key(world, model, seed, base);
    let root = cache.join(format!("base-{key}"));
    let done = root.join("pretrain.json");
    let out_dir = root.join("model");
    if done.exists() {
        let info: PretrainInfo = mde_core::io::read_json(&done)?;
        let manifest = mde_core::io::read_json(out_dir.join("manifest.json"))?;
        tracing::info!(dir = %root.display(), "reusing the pretrained base model");
        return Ok((
            BaseModel {
                root: out_dir,
                manifest,
                reused: true,
            },
            info,
        ));
    }
    let t0 = Instant::now();
    let init = build_base_model(
        model,
        CorpusSource::WorldDir(world.dir()),
        &root.join("init"),
        seed,
    )?;
    let tok = init.tokenizer()?;
    let (m, varmap) = load_trainable(&init, device)?;
    let vision = if base.vision.steps > 0 {
        // Cached on its own key, so base builds that differ only in their VQA recipe (the
        // demo and its balanced control) share one pretrained encoder.
        let vkey = vision_key(world, model, seed, base);
        Some(crate::vision_pretrain::pretrain_vision(
            &m,
            &varmap,
            world,
            &base.vision,
            seed,
            &cache.join(format!("vision-{vkey}")),
            progress,
        )?)
    } else {
        None
    };
    let vqa = world_vqa_records(world, base.vqa, base.kind)?;
    let mut datasets = vec![TrainDataset {
        name: format!("base_vqa_{}", base.vqa.name()),
        ratio: Some(1.0 - base.caption_ratio),
        records: vqa,
    }];
    if base.caption_ratio > 0.0 {
        datasets.push(TrainDataset {
            name: "base_captions".into(),
            ratio: Some(base.caption_ratio),
            records: world_caption_records(world)?,
        });
    }
    let examples = datasets
        .iter()
        .map(|d| (d.name.clone(), d.records.len()))
        .collect();
    let tcfg = base_train_config(base, seed);
    // VarMap clones share their Vars: after training, `vars` holds the trained values.
    let vars = varmap.clone();
    let mut trainer = Trainer::new_full(m, varmap, tok, datasets, tcfg, &root.join("train"))?;
    tracing::info!(
        steps = base.steps,
        "pretraining the tiny base model from scratch"
    );
    trainer.run(
        None,
        RunOptions {
            progress,
            ..Default::default()
        },
    )?;
    let steps = trainer.step();
    // From the trainer, not from this invocation's step reports: after a kill and resume
    // those miss the steps done before (and are empty when only the final export was left).
    let losses = trainer.losses();
    drop(trainer);
    let tensors = mde_train::trainer::detached_tensors(&vars)?;
    write_model_like(&init, &tensors, &out_dir)?;
    let info = PretrainInfo {
        key,
        steps,
        first_loss: losses.first_loss,
        final_loss: losses.last_loss,
        seconds: t0.elapsed().as_secs_f64(),
        examples,
        vision,
    };
    mde_core::io::write_json(&done, &info)?;
    let manifest = mde_core::io::read_json(out_dir.join("manifest.json"))?;
    Ok((
        BaseModel {
            root: out_dir,
            manifest,
            reused: false,
        },
        info,
    ))
}

/// Writes `tensors` (MiniGPT-4 root names) in the layout of `like` (same configs and tokenizer)
/// into `out_dir`, with a manifest whose file hashes match the new files.
pub fn write_model_like(
    like: &BaseModel,
    tensors: &BTreeMap<String, candle_core::Tensor>,
    out_dir: &Path,
) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| TinyError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let on_cpu = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let (blip2, llama, proj) = crate::tiny::split_root_tensors(on_cpu);
    let mut manifest = like.manifest.clone();
    let files: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("blip2/config.json", None),
        (
            "blip2/model.safetensors",
            Some(crate::tiny::safetensors_bytes(&blip2)?),
        ),
        ("vicuna/config.json", None),
        (
            "vicuna/model.safetensors",
            Some(crate::tiny::safetensors_bytes(&llama)?),
        ),
        ("vicuna/tokenizer.json", None),
        ("vicuna/tokenizer_config.json", None),
        ("vicuna/special_tokens_map.json", None),
        (
            "minigpt4/projector.safetensors",
            Some(crate::tiny::safetensors_bytes(&proj)?),
        ),
    ];
    for (rel, bytes) in files {
        let dst: PathBuf = out_dir.join(rel);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        let bytes = match bytes {
            Some(b) => b,
            None => {
                let src = like.root.join(rel);
                std::fs::read(&src).map_err(|e| io(&src, e))?
            }
        };
        manifest
            .files
            .insert(rel.to_string(), crate::tiny::sha256_hex(&bytes));
        mde_core::io::atomic_write(&dst, &bytes)?;
    }
    mde_core::io::write_json(out_dir.join("manifest.json"), &manifest)?;
    Ok(())
}
