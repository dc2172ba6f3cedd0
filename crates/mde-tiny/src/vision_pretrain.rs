//! Pretraining of the tiny vision tower on the synthetic world's exact annotations, before the
//! MiniGPT-4 stages, so that the base build can keep it frozen as MiniGPT-4 keeps EVA-CLIP frozen.
//!
//! Why: trained from scratch through the LLM's answer loss alone, the demo's 2-layer ViT on 8-px
//! patches learns colours, counts, backgrounds and image quality but not shapes or positions, and
//! every question about a named object stays at chance (docs/RESULTS.md, 'The visual encoder'). Supervised
//! *per patch*, the same tower learns both.
//!
//! The targets are dense: every patch token of the tower's output (after `ln_vision`, what the
//! Q-Former reads) is classified by a linear head into the shape, the colour, the size and the
//! image quadrant of the object whose box holds the patch centre ("none" for background patches;
//! objects never overlap, the nearest centre wins where boxes do), and into the background
//! pattern of the image. The head is thrown away afterwards. Each token thus has to carry the
//! attributes of the object under it, bound together, which is what the Q-Former needs to answer
//! "what colour is the circle" or "where is the red square".
//!
//! The stage is resumable (mde-train checkpoints every `checkpoint_every` steps) and its result is
//! cached next to the base build (`vision/vision.safetensors` + `vision/done.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use mde_train::checkpoint::TrainState;
use mde_train::checkpoint::{
    latest_checkpoint, load_checkpoint, save_checkpoint, LossLog, RngState,
};
use mde_train::optim::{AdamW, AdamWConfig};
use mde_train::schedule::LinearWarmupCosine;
use mde_train::shards::ShardPools;
use mde_world::questions::{quadrant_of, QUADRANTS};
use mde_world::scene::{BackgroundKind, Color, Object, Quality, Scene, Shape, Size};
use mde_world::World;
use minigpt4::model::MiniGpt4;
use minigpt4::preprocess::{load_rgb, ImageProcessor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Result, TinyError};

/// Bumped when the targets change (part of the stage's cache key).
pub const TARGETS_VERSION: u32 = 2;

/// `[base.vision]`: the vision-tower pretraining stage (off when `steps = 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionPretrainSection {
    /// Optimizer steps; 0 turns the stage off (the tower then trains with everything else).
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Training images, taken in id order from the world's train split (pool images excluded:
    /// ABS draws its queries from those).
    pub images: usize,
    /// Validation images (the world's val split) for the accuracies in `done.json`.
    pub val_images: usize,
    /// Pretrain the Q-Former too, on per-query object slots (see the module docs).
    pub qformer: bool,
    /// Weight of the shape terms in the loss (patches and slots; every other term has 1).
    /// Shapes are the slowest target to learn, and with many terms sharing Adam's normalised
    /// step they get a small share of it.
    pub shape_weight: f64,
    /// Keep what was pretrained frozen in the base build: `frozen-vit` (tower only) or `llm+fc`
    /// (tower and Q-Former) instead of `full`.
    pub freeze: bool,
    pub checkpoint_every: u64,
    /// Rows of each batch split over this many threads, each with single-threaded gemm (as
    /// `[base] shards`): the tiny encoder's ops are too small to share between cores.
    pub shards: usize,
}

impl Default for VisionPretrainSection {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: 64,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 100,
            weight_decay: 0.01,
            images: 20_000,
            val_images: 1_000,
            qformer: false,
            shape_weight: 1.0,
            freeze: true,
            checkpoint_every: 250,
            shards: 2,
        }
    }
}

impl VisionPretrainSection {
    /// Whether the stage is off (`steps = 0`).
    pub fn is_off(&self) -> bool {
        self.steps == 0
    }
}

/// Accuracies of one target set (patches or query slots) on validation images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetAccuracy {
    /// Rows scored (patches, or query slots).
    pub rows: usize,
    /// Rows with an object (patch centre in an object's box; slot of an object).
    pub object_rows: usize,
    /// Object vs no object, over all rows.
    pub occupancy: f64,
    /// Per target group: object groups over object rows, image groups over all rows.
    pub groups: BTreeMap<String, f64>,
}

/// What the stage records about itself (`vision/done.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionPretrainInfo {
    pub steps: u64,
    pub images: usize,
    pub first_loss: Option<f32>,
    pub final_loss: Option<f32>,
    pub seconds: f64,
    /// Per-patch targets of the tower.
    pub patches: TargetAccuracy,
    /// Per-slot targets of the Q-Former, when it was pretrained too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<TargetAccuracy>,
    /// Images whose number of predicted object slots equals their number of objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_count: Option<f64>,
}

/// A set of classification targets over rows (patch tokens or query slots): the first
/// `object_groups` groups have class 0 = "no object" and are scored on object rows only.
struct Targets {
    names: Vec<&'static str>,
    sizes: Vec<usize>,
    /// Loss weight per group.
    weights: Vec<f64>,
    object_groups: usize,
}

impl Targets {
    fn width(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Per patch: shape, colour, size, quadrant (object groups), background pattern.
    fn patches(shape_weight: f64) -> Self {
        Self {
            weights: vec![shape_weight, 1.0, 1.0, 1.0, 1.0],
            names: vec!["shape", "colour", "size", "quadrant", "background"],
            sizes: vec![
                Shape::ALL.len() + 1,
                Color::ALL.len() + 1,
                3,
                QUADRANTS.len() + 1,
                BackgroundKind::ALL.len(),
            ],
            object_groups: 4,
        }
    }

    /// Per query slot: shape, colour, size, quadrant, left-right rank (object groups),
    /// background pattern, quality, object count (image groups).
    fn slots(n_query: usize, shape_weight: f64) -> Self {
        Self {
            weights: vec![shape_weight, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            names: vec![
                "shape",
                "colour",
                "size",
                "quadrant",
                "rank",
                "background",
                "quality",
                "count",
            ],
            sizes: vec![
                Shape::ALL.len() + 1,
                Color::ALL.len() + 1,
                3,
                QUADRANTS.len() + 1,
                n_query + 1,
                BackgroundKind::ALL.len(),
                Quality::ALL.len(),
                n_query + 1,
            ],
            object_groups: 5,
        }
    }
}

fn index_of<T: PartialEq>(all: &[T], x: &T) -> u32 {
    all.iter().position(|a| a == x).unwrap_or(0) as u32
}

/// `[shape, colour, size, quadrant]` of an object, each `1 + index` (the quadrant is the one the
/// world's questions name, or the one holding the centre when the object straddles two).
fn object_classes(o: &Object, scene: &Scene) -> [u32; 4] {
    let quadrant = quadrant_of(o, scene.width, scene.height)
        .and_then(|q| QUADRANTS.iter().position(|&n| n == q))
        .unwrap_or_else(|| {
            let right = o.cx >= scene.width as f64 / 2.0;
            let bottom = o.cy >= scene.height as f64 / 2.0;
            2 * bottom as usize + right as usize
        });
    [
        index_of(&Shape::ALL, &o.shape) + 1,
        index_of(&Color::ALL, &o.color) + 1,
        match o.size {
            Size::Small => 1,
            Size::Large => 2,
        },
        quadrant as u32 + 1,
    ]
}

/// The per-patch classes of a scene on a `grid` x `grid` patch grid, row-major:
/// `[shape, colour, size, quadrant, background]`; the first four are 0 for a background patch
/// and those of the object whose box holds the patch centre otherwise.
pub fn patch_classes(scene: &Scene, grid: usize) -> Vec<[u32; 5]> {
    let (sx, sy) = (
        scene.width as f64 / grid as f64,
        scene.height as f64 / grid as f64,
    );
    let bg = index_of(&BackgroundKind::ALL, &scene.background.kind);
    let mut out = vec![[0, 0, 0, 0, bg]; grid * grid];
    for gy in 0..grid {
        for gx in 0..grid {
            let (px, py) = ((gx as f64 + 0.5) * sx, (gy as f64 + 0.5) * sy);
            let hit = scene
                .objects
                .iter()
                .filter(|o| {
                    let [x, y, w, h] = o.bbox;
                    px >= x && px <= x + w && py >= y && py <= y + h
                })
                .min_by(|a, b| {
                    let d = |o: &&Object| (o.cx - px).powi(2) + (o.cy - py).powi(2);
                    d(a).total_cmp(&d(b))
                });
            if let Some(o) = hit {
                let [a, b, c, d] = object_classes(o, scene);
                out[gy * grid + gx] = [a, b, c, d, bg];
            }
        }
    }
    out
}

/// The per-slot classes of a scene for `n_query` Q-Former queries:
/// `[shape, colour, size, quadrant, rank, background, quality, count]`. Slot `k` holds the
/// `k`-th object from left to right (by centre) and its rank is `k + 1`, so a slot says where
/// its object stands in the left-right order; slots past the last object have object classes 0.
/// Every slot carries the image's background pattern, quality and number of objects.
pub fn slot_classes(scene: &Scene, n_query: usize) -> Vec<[u32; 8]> {
    let bg = index_of(&BackgroundKind::ALL, &scene.background.kind);
    let q = index_of(&Quality::ALL, &scene.quality);
    let mut objs: Vec<&Object> = scene.objects.iter().collect();
    objs.sort_by(|a, b| a.cx.total_cmp(&b.cx).then(a.cy.total_cmp(&b.cy)));
    let count = objs.len().min(n_query) as u32;
    (0..n_query)
        .map(|k| match objs.get(k) {
            Some(o) => {
                let [a, b, c, d] = object_classes(o, scene);
                [a, b, c, d, k as u32 + 1, bg, q, count]
            }
            None => [0, 0, 0, 0, 0, bg, q, count],
        })
        .collect()
}

struct Batch {
    pixels: Tensor,
    /// Per patch token, image by image, flattened.
    patches: Vec<u32>,
    /// Per query slot, image by image, flattened.
    slots: Vec<u32>,
}

fn load_batch(
    world: &World,
    ids: &[u64],
    proc: &ImageProcessor,
    grid: usize,
    n_query: usize,
    device: &Device,
) -> Result<Batch> {
    let mut imgs = Vec::with_capacity(ids.len());
    let mut patches = Vec::new();
    let mut slots = Vec::new();
    for id in ids {
        let scene = world
            .scene(*id)
            .ok_or_else(|| TinyError::World(format!("no scene for image {id}")))?;
        let path = world.coco_dir().join(scene.rel_path());
        imgs.push(
            load_rgb(&path).map_err(|e| TinyError::World(format!("{}: {e}", path.display())))?,
        );
        patches.extend(patch_classes(scene, grid).into_iter().flatten());
        slots.extend(slot_classes(scene, n_query).into_iter().flatten());
    }
    Ok(Batch {
        pixels: proc
            .process_batch_eval(&imgs, device)
            .map_err(|e| TinyError::World(format!("preprocessing: {e}")))?,
        patches,
        slots,
    })
}

/// A zero-initialised linear head.
struct Head {
    w: Var,
    b: Var,
}

impl Head {
    fn new(out: usize, dim: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            w: Var::zeros((out, dim), DType::F32, device)?,
            b: Var::zeros(out, DType::F32, device)?,
        })
    }
    /// `[B, T, D]` -> logits `[B * T, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let x = x.reshape((b * t, d))?;
        Ok(x.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())?)
    }
}

/// Logits of the patch tokens (tower output after `ln_vision`, class token dropped) and, with a
/// slot head, of the Q-Former's query outputs.
fn logits(
    model: &MiniGpt4,
    patch: &Head,
    slot: Option<&Head>,
    px: &Tensor,
    train: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let v = model.vision.forward_t(px, train)?;
    let t = v.dim(1)?;
    let p = patch.forward(&v.narrow(1, 1, t - 1)?)?;
    let s = match slot {
        Some(h) => Some(h.forward(&model.qformer.forward_t(&v, train)?)?),
        None => None,
    };
    Ok((p, s))
}

/// Mean cross-entropy of each group, summed with the groups' weights. Log-softmax from plain
/// ops (differentiable).
fn loss(logits: &Tensor, classes: &[u32], targets: &Targets) -> Result<Tensor> {
    let n_groups = targets.sizes.len();
    let rows = classes.len() / n_groups;
    let mut total: Option<Tensor> = None;
    let mut start = 0;
    for (g, &n) in targets.sizes.iter().enumerate() {
        let z = logits.narrow(1, start, n)?;
        start += n;
        let m = z.max_keepdim(1)?.detach();
        let z = z.broadcast_sub(&m)?;
        let lse = z.exp()?.sum_keepdim(1)?.log()?;
        let logp = z.broadcast_sub(&lse)?;
        let mut onehot = vec![0f32; rows * n];
        for r in 0..rows {
            onehot[r * n + classes[r * n_groups + g] as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (rows, n), logits.device())?;
        let l = ((logp * onehot)?.sum_all()? * (-targets.weights[g] / rows as f64))?;
        total = Some(match total {
            None => l,
            Some(t) => (t + l)?,
        });
    }
    total.ok_or_else(|| TinyError::Internal("no target group".into()))
}

/// Loss and gradients of one batch (`ids`) split into row shards (one per pool of `shards`, or
/// none): `shard_loss` gives a shard's mean loss, weighted here by its share of the rows.
/// Gradients are summed in shard order (deterministic for a given shard count).
fn sharded_grads<F>(
    shards: Option<&ShardPools>,
    ids: &[u64],
    shard_loss: F,
    params: &[(String, Var)],
) -> Result<(f32, GradStore)>
where
    F: Fn(&[u64]) -> Result<Tensor> + Sync,
{
    let Some(shards) = shards else {
        let l = shard_loss(ids)?;
        return Ok((l.to_scalar::<f32>()?, l.backward()?));
    };
    let n = ids.len();
    let parts: Vec<&[u64]> = ids.chunks(n.div_ceil(shards.len())).collect();
    let results = shards.run(|i| -> Result<Option<(f32, [GradStore; 1])>> {
        let Some(part) = parts.get(i) else {
            return Ok(None);
        };
        let w = part.len() as f64 / n as f64;
        let l = (shard_loss(part)? * w)?;
        Ok(Some((l.to_scalar::<f32>()?, [l.backward()?])))
    });
    let (loss, mut stores) = mde_train::shards::gather(results)?;
    let mut sums = vec![None; params.len()];
    mde_train::shards::add_grads(params.iter().map(|(_, v)| v), &stores, &mut sums)?;
    let mut merged = stores.remove(0);
    for ((_, var), sum) in params.iter().zip(sums) {
        if let Some(s) = sum {
            merged.insert(var.as_tensor(), s);
        }
    }
    Ok((loss, merged))
}

/// Argmax per group: `preds[g][row]`.
fn predictions(logits: &Tensor, targets: &Targets) -> Result<Vec<Vec<u32>>> {
    let mut start = 0;
    let mut preds = Vec::new();
    for &n in &targets.sizes {
        preds.push(
            logits
                .narrow(1, start, n)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?,
        );
        start += n;
    }
    Ok(preds)
}

/// Counts: `[rows, occupancy right, object rows, right per group ...]`.
fn count_right(preds: &[Vec<u32>], classes: &[u32], targets: &Targets, acc: &mut [usize]) {
    let n_groups = targets.sizes.len();
    for r in 0..classes.len() / n_groups {
        let c = &classes[r * n_groups..(r + 1) * n_groups];
        acc[0] += 1;
        if (preds[0][r] > 0) == (c[0] > 0) {
            acc[1] += 1;
        }
        if c[0] > 0 {
            acc[2] += 1;
        }
        for g in 0..n_groups {
            let scored = g >= targets.object_groups || c[0] > 0;
            if scored && preds[g][r] == c[g] {
                acc[3 + g] += 1;
            }
        }
    }
}

fn summarise(acc: &[usize], targets: &Targets) -> TargetAccuracy {
    let frac = |a: usize, n: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    TargetAccuracy {
        rows: acc[0],
        object_rows: acc[2],
        occupancy: frac(acc[1], acc[0]),
        groups: targets
            .names
            .iter()
            .enumerate()
            .map(|(g, n)| {
                let of = if g < targets.object_groups {
                    acc[2]
                } else {
                    acc[0]
                };
                (n.to_string(), frac(acc[3 + g], of))
            })
            .collect(),
    }
}

fn fmt_groups(a: &TargetAccuracy) -> String {
    a.groups
        .iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pretrains the vision tower (`vision_model.*` Vars of `varmap`, the tower of `model`) and,
/// with `cfg.qformer`, the Q-Former (`qformer.*`, `query_tokens`) in `dir`, or loads the result
/// of an earlier run from `dir/vision.safetensors`. Resumes from the newest checkpoint.
pub fn pretrain_vision(
    model: &MiniGpt4,
    varmap: &VarMap,
    world: &World,
    cfg: &VisionPretrainSection,
    seed: u64,
    dir: &Path,
    progress: bool,
) -> Result<VisionPretrainInfo> {
    let done = dir.join("done.json");
    let weights = dir.join("vision.safetensors");
    if done.exists() && weights.exists() {
        mde_train::checkpoint::load_full_weights(varmap, &weights)?;
        tracing::info!(dir = %dir.display(), "reusing the pretrained vision encoder");
        return Ok(mde_core::io::read_json(&done)?);
    }
    tracing::info!(
        dir = %dir.display(),
        steps = cfg.steps,
        qformer = cfg.qformer,
        "pretraining the vision encoder on the world's annotations"
    );
    let t0 = Instant::now();
    let device = model.device().clone();
    let vcfg = &model.vision.cfg;
    let grid = vcfg.image_size / vcfg.patch_size;
    let n_query = model.qformer.cfg.num_query_tokens;
    if cfg.qformer && n_query < world.config().max_objects {
        return Err(TinyError::Config(format!(
            "[base.vision] qformer = true needs a query slot per object: [model] \
             num_query_tokens = {n_query} < [world] max_objects = {}",
            world.config().max_objects
        )));
    }
    let proc = ImageProcessor::eval(vcfg.image_size as u32);
    let pool: BTreeSet<u64> = world.pool_image_ids().into_iter().collect();
    let train_ids: Vec<u64> = world
        .train_image_ids()
        .into_iter()
        .filter(|id| !pool.contains(id))
        .take(cfg.images)
        .collect();
    let val_ids: Vec<u64> = world
        .scenes()
        .values()
        .filter(|s| s.split == "val")
        .map(|s| s.image_id)
        .take(cfg.val_images)
        .collect();
    if train_ids.is_empty() {
        return Err(TinyError::Config(
            "[base.vision] the world has no train images outside the pool".into(),
        ));
    }
    let trains = |n: &str| {
        n.starts_with("vision_model.")
            || (cfg.qformer && (n.starts_with("qformer.") || n == "query_tokens"))
    };
    // Trainable: the encoder's Vars plus zero-initialised heads.
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| TinyError::Internal("varmap poisoned".into()))?
        .iter()
        .filter(|(n, _)| trains(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let (pt, st) = (
        Targets::patches(cfg.shape_weight),
        Targets::slots(n_query, cfg.shape_weight),
    );
    let patch_head = Head::new(pt.width(), vcfg.hidden_size, &device)?;
    params.push(("head.weight".into(), patch_head.w.clone()));
    params.push(("head.bias".into(), patch_head.b.clone()));
    let slot_head = if cfg.qformer {
        let h = Head::new(st.width(), model.qformer.cfg.hidden_size, &device)?;
        params.push(("slot_head.weight".into(), h.w.clone()));
        params.push(("slot_head.bias".into(), h.b.clone()));
        Some(h)
    } else {
        None
    };
    let mut opt = AdamW::new_runner_groups(
        params.clone(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let sched = LinearWarmupCosine {
        max_epoch: 1,
        iters_per_epoch: cfg.steps,
        init_lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_lr: cfg.lr * 0.01,
        warmup_steps: cfg.warmup_steps,
    };
    let run_dir = dir.join("train");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5649_5349_4f4e); // "VISION"
    let mut step = 0u64;
    // First and latest loss across resumes, saved in every checkpoint (mde-train's LossLog,
    // as the round trainer does), so that `done.json` does not depend on a kill.
    let mut losses = LossLog::default();
    if let Some(ck) = latest_checkpoint(&run_dir)? {
        let st = load_checkpoint(&ck, &params, &mut opt, &device)?;
        step = st.step;
        rng = st.rng.restore()?;
        losses = LossLog::from_extra(&st.extra)?;
        tracing::info!(step, "resuming the vision pretraining");
    }
    let n_shards = cfg.shards.clamp(1, cfg.batch_size.max(1));
    let shards = if n_shards > 1 {
        Some(ShardPools::new(n_shards, "mde-vision-shard")?)
    } else {
        None
    };
    let bar = mde_train::progress::bar(progress, cfg.steps as u64, "vision encoder");
    bar.set_position(step);
    while step < cfg.steps as u64 {
        let ids: Vec<u64> = (0..cfg.batch_size)
            .map(|_| train_ids[rng.random_range(0..train_ids.len())])
            .collect();
        opt.set_learning_rate(sched.lr_at(step as usize));
        let (v, grads) = sharded_grads(
            shards.as_ref(),
            &ids,
            |part: &[u64]| {
                let b = load_batch(world, part, &proc, grid, n_query, &device)?;
                let (pl, sl) = logits(model, &patch_head, slot_head.as_ref(), &b.pixels, true)?;
                let mut l = loss(&pl, &b.patches, &pt)?;
                if let Some(sl) = &sl {
                    l = (l + loss(sl, &b.slots, &st)?)?;
                }
                Ok(l)
            },
            &params,
        )?;
        if !v.is_finite() {
            return Err(TinyError::Train(mde_train::TrainError::Invalid(format!(
                "vision pretraining: non-finite loss {v} at step {step}"
            ))));
        }
        opt.step(&grads)?;
        step += 1;
        losses.record(v);
        bar.set_position(step);
        bar.set_message(format!("vision encoder (loss {v:.3})"));
        if cfg.checkpoint_every > 0
            && step.is_multiple_of(cfg.checkpoint_every)
            && step < cfg.steps as u64
        {
            let st = TrainState {
                step,
                epoch: 0,
                rng: RngState::capture(&rng),
                extra: serde_json::to_value(losses).map_err(|e| TinyError::Serialize {
                    what: "the vision checkpoint state".into(),
                    source: e,
                })?,
            };
            save_checkpoint(&run_dir, &params, &opt, &st)?;
        }
        if step.is_multiple_of(250) {
            tracing::debug!(step, loss = v, "vision pretraining");
        }
    }
    bar.finish_and_clear();
    drop(shards);
    // Validation on the world's val images.
    let mut pacc = vec![0usize; 3 + pt.sizes.len()];
    let mut sacc = vec![0usize; 3 + st.sizes.len()];
    let (mut count_ok, mut images) = (0usize, 0usize);
    for chunk in val_ids.chunks(cfg.batch_size.max(1)) {
        let b = load_batch(world, chunk, &proc, grid, n_query, &device)?;
        let (pl, sl) = logits(model, &patch_head, slot_head.as_ref(), &b.pixels, false)?;
        count_right(&predictions(&pl, &pt)?, &b.patches, &pt, &mut pacc);
        if let Some(sl) = &sl {
            let preds = predictions(sl, &st)?;
            count_right(&preds, &b.slots, &st, &mut sacc);
            for (i, id) in chunk.iter().enumerate() {
                let n = world.scene(*id).map_or(0, |s| s.objects.len());
                let predicted = (0..n_query)
                    .filter(|k| preds[0][i * n_query + k] > 0)
                    .count();
                images += 1;
                count_ok += usize::from(predicted == n);
            }
        }
    }
    let info = VisionPretrainInfo {
        steps: step,
        images: train_ids.len(),
        first_loss: losses.first_loss,
        final_loss: losses.last_loss,
        seconds: t0.elapsed().as_secs_f64(),
        patches: summarise(&pacc, &pt),
        slots: slot_head.as_ref().map(|_| summarise(&sacc, &st)),
        slot_count: slot_head
            .as_ref()
            .map(|_| count_ok as f64 / images.max(1) as f64),
    };
    tracing::info!(
        steps = step,
        seconds = format!("{:.0}", info.seconds),
        "vision encoder pretrained; validation per patch: occupancy {:.3}, {}",
        info.patches.occupancy,
        fmt_groups(&info.patches)
    );
    if let Some(s) = &info.slots {
        tracing::info!(
            "validation per query slot: occupancy {:.3}, count {:.3}, {}",
            s.occupancy,
            info.slot_count.unwrap_or(0.0),
            fmt_groups(s)
        );
    }
    let named: Vec<(String, Tensor)> = params
        .iter()
        .filter(|(n, _)| trains(n))
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    mde_train::io::save_safetensors(&weights, &named)?;
    mde_core::io::write_json(&done, &info)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mde_world::scene::SceneRequest;
    use mde_world::WorldConfig;

    /// `n` seeded scenes of the default world with at least two objects each.
    fn scenes(seed: u64, n: u64) -> Vec<Scene> {
        let cfg = WorldConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let req = SceneRequest {
            min_objects: 2,
            ..Default::default()
        };
        (0..n)
            .map(|id| mde_world::scene::sample_scene(&cfg, &mut rng, id, "train", req))
            .collect()
    }

    #[test]
    fn patch_classes_mark_the_patches_under_each_object() {
        for (id, scene) in scenes(3, 50).into_iter().enumerate() {
            let grid = 8;
            let cls = patch_classes(&scene, grid);
            assert_eq!(cls.len(), grid * grid);
            let cell = scene.width as f64 / grid as f64;
            for o in &scene.objects {
                // The patch holding the object's centre is labelled with that object.
                let (gx, gy) = ((o.cx / cell) as usize, (o.cy / cell) as usize);
                let c = cls[gy * grid + gx];
                assert_eq!(Shape::ALL[c[0] as usize - 1], o.shape, "scene {id}");
                assert_eq!(Color::ALL[c[1] as usize - 1], o.color, "scene {id}");
                assert_eq!(c[2], if o.size == Size::Small { 1 } else { 2 });
                if let Some(q) = quadrant_of(o, scene.width, scene.height) {
                    assert_eq!(QUADRANTS[c[3] as usize - 1], q, "scene {id}");
                }
            }
            // Background patches carry no object attribute; object patches carry all four;
            // every patch carries the background pattern.
            let bg = BackgroundKind::ALL
                .iter()
                .position(|&k| k == scene.background.kind)
                .unwrap() as u32;
            for c in &cls {
                let obj = &c[..4];
                assert!(
                    obj.iter().all(|&v| v == 0) || obj.iter().all(|&v| v > 0),
                    "{c:?}"
                );
                assert_eq!(c[4], bg);
            }
            let occupied = cls.iter().filter(|c| c[0] > 0).count();
            assert!(occupied >= scene.objects.len() && occupied < grid * grid);
        }
    }

    #[test]
    fn the_loss_is_the_mean_cross_entropy_of_each_group() -> Result<()> {
        let t = Targets::patches(1.0);
        let w = t.width();
        // Uniform logits: each group's loss is ln(classes).
        let classes = [0u32, 3, 1, 2, 0, 2, 0, 2, 4, 3];
        let logits = Tensor::zeros((2, w), DType::F32, &Device::Cpu)?;
        let l = loss(&logits, &classes, &t)?.to_scalar::<f32>()?;
        let want: f32 = t.sizes.iter().map(|&n| (n as f32).ln()).sum();
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        // A confident right answer costs almost nothing; a confident wrong one a lot.
        let mut v = vec![0f32; 2 * w];
        for r in 0..2 {
            let mut start = 0;
            for (g, &n) in t.sizes.iter().enumerate() {
                v[r * w + start + classes[r * 5 + g] as usize] = 30.0;
                start += n;
            }
        }
        let good = Tensor::from_vec(v, (2, w), &Device::Cpu)?;
        assert!(loss(&good, &classes, &t)?.to_scalar::<f32>()? < 1e-6);
        let wrong = [1u32, 1, 0, 0, 1, 1, 1, 0, 0, 1];
        assert!(loss(&good, &wrong, &t)?.to_scalar::<f32>()? > 30.0);
        // Scoring: object groups over object rows only, the background over every row.
        let mut acc = vec![0usize; 3 + 5];
        count_right(&predictions(&good, &t)?, &classes, &t, &mut acc);
        let a = summarise(&acc, &t);
        assert_eq!((a.rows, a.object_rows), (2, 1));
        assert!(a.groups.values().all(|&v| v == 1.0), "{a:?}");
        Ok(())
    }

    #[test]
    fn slots_follow_the_left_right_order() {
        for scene in scenes(9, 30) {
            let slots = slot_classes(&scene, 8);
            let n = scene.objects.len();
            let mut xs: Vec<f64> = Vec::new();
            for (k, c) in slots.iter().enumerate() {
                assert_eq!(c[7], n as u32, "count on every slot");
                if k < n {
                    assert_eq!(c[4], k as u32 + 1);
                    let o = scene
                        .objects
                        .iter()
                        .find(|o| {
                            Shape::ALL[c[0] as usize - 1] == o.shape
                                && Color::ALL[c[1] as usize - 1] == o.color
                        })
                        .expect("the slot's object");
                    xs.push(o.cx);
                } else {
                    assert_eq!(&c[..5], &[0, 0, 0, 0, 0]);
                }
            }
            assert!(xs.windows(2).all(|w| w[0] <= w[1]), "{xs:?}");
        }
    }
}
