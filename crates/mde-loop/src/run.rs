//! The round orchestration of `mde loop`.
//!
//! ```text
//! out/
//!   run.json                      config fingerprint (a different config in the same folder is refused)
//!   base/done.json                which base model (cached tiny build or real checkpoint)
//!   index/done.json, pool.safetensors    image embeddings of the ABS candidate pool
//!   round_0/eval_mine, eval_report      the base model's evaluation
//!   round_k/eval_blind            with `[abs] chance = "blind"`: the mining benchmark with a blank image
//!   round_k/mine                  bad cases + per-type error rates of round k-1's model
//!   round_k/sample                ABS queries
//!   round_k/generate              teacher replies (append-only JSONL, resumable per query)
//!   round_k/postprocess           parsed + validated GPTVQA v1 items
//!   round_k/train                 mde-train run (checkpoints: resumable per step)
//!   round_k/eval_mine, eval_report
//!   report/                       report.json, report.md, accuracy_by_round.svg
//! ```
//!
//! Every step writes `done.json` (atomically) when it has finished; a re-run skips finished
//! steps and the unfinished step resumes from its own append-only files, so killing the process
//! at any moment loses at most the item (or training step) in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mde_abs::{
    sample, AnnotationDb, BadCasePool, EncodeExamples, ExampleImages, FirstOf, ImageEncoder,
    ImageIndex, SampleInputs, SamplerConfig,
};
use mde_core::io::{read_json, read_jsonl, write_json};
use mde_core::model::ImageInput;
use mde_core::records::{BadCase, BenchItem, GenQuery, ImageRef, Prediction, TypeWeights};
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::Teacher;
use mde_eval::badcase::{mine_bad_cases, question_type_of, write_mined};
use mde_eval::runner::{load_items, Benchmark, ImageLoader, Method, RunConfig};
use mde_eval::step::{accuracy_by_type, evaluate, EvalDir, TypeCount};
use mde_gen::postprocess::to_v1;
use mde_gen::{postprocess, Runner};
use mde_train::data::{load_dataset, DatasetFormat, DatasetSpec, RecordKind};
use mde_train::trainer::{
    ImageMode, OptimSettings, RunOptions, TrainConfig, TrainDataset, Trainer,
};
use mde_world::{BaseVariant, TeacherOptions, World, WorldTeacher};
use minigpt4::eval_adapter::MiniGpt4Eval;
use minigpt4::preprocess::{decode_rgb, ImageProcessor};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::{MiniGpt4, ModelPaths};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{BenchSpec, LoopConfig, ModelSection, PerType, TeacherChoice};
use crate::report::{EvalSummary, LoopReport, RoundSummary, TrainSummary};
use crate::{LoopError, Result};

/// What a finished step leaves in its `done.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done<T> {
    seconds: f64,
    value: T,
}

/// Runs `f` in `dir` unless `dir/done.json` says it finished; returns its value and seconds.
fn step<T: Serialize + DeserializeOwned>(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<(T, f64)> {
    let marker = dir.join("done.json");
    if marker.exists() {
        let d: Done<T> = read_json(&marker)?;
        tracing::info!(step = name, dir = %dir.display(), "already done");
        return Ok((d.value, d.seconds));
    }
    std::fs::create_dir_all(dir).map_err(|e| LoopError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    tracing::info!(step = name, dir = %dir.display(), "running");
    let t0 = Instant::now();
    let value = f(dir)?;
    let d = Done {
        seconds: t0.elapsed().as_secs_f64(),
        value,
    };
    write_json(&marker, &d)?;
    Ok((d.value, d.seconds))
}

/// Where the base model comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInfo {
    pub paths: ModelPaths,
    /// Tokenizer folder or file.
    pub tokenizer: String,
    pub name: String,
    /// Pretraining of the tiny model (None for real checkpoints).
    pub pretrain: Option<crate::base::PretrainInfo>,
    /// The world's folder (embedded default).
    pub world: Option<PathBuf>,
}

/// Per-round evaluation record kept in `done.json` (enough to mine from and to report).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub summary: EvalSummary,
    /// Item id -> correct (benchmark rule).
    pub verdicts: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SampleRecord {
    queries: usize,
    per_type: BTreeMap<String, usize>,
    probabilities: PerType,
    error_rates: PerType,
    images: Vec<u64>,
    /// `chance_discounted`: the chance accuracy each type was discounted by.
    #[serde(default)]
    chance: PerType,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PostRecord {
    kept: usize,
    dropped: usize,
    accepted_per_type: BTreeMap<String, usize>,
    flags: BTreeMap<String, usize>,
}

/// One `mde loop` run: a config and an output folder.
pub struct LoopRun {
    cfg: LoopConfig,
    out: PathBuf,
    cache: PathBuf,
    device: Device,
    progress: bool,
    world: Option<World>,
    /// Question text -> type id for benchmark items without a type (teacher classification).
    labels: HashMap<String, String>,
}

/// The world and base-model cache of a run into `out` when `[run] cache_dir` is not set:
/// `.cache` beside `out` (`runs/demo` -> `runs/.cache`), so that sibling runs share it.
pub fn default_cache_dir(out: &Path) -> PathBuf {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(".cache")
}

impl LoopRun {
    /// Checks the output folder against the config (a folder of another config is refused).
    pub fn new(cfg: LoopConfig, out: &Path) -> Result<Self> {
        let device = minigpt4::eval_adapter::parse_device(&cfg.run.device)
            .map_err(|e| LoopError::Config(format!("[run] {e}")))?;
        // Absolute paths: bad cases and datasets record image paths that must not depend on
        // the working directory of a later (resumed) run.
        let abs = |p: &Path| {
            std::path::absolute(p).map_err(|e| LoopError::Io {
                path: p.to_path_buf(),
                source: e,
            })
        };
        let out = &abs(out)?;
        let cache = cfg
            .run
            .cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(out));
        let cache = abs(&cache)?;
        std::fs::create_dir_all(out).map_err(|e| LoopError::Io {
            path: out.to_path_buf(),
            source: e,
        })?;
        let fp = cfg.fingerprint();
        let run_json = out.join("run.json");
        if run_json.exists() {
            let v: serde_json::Value = read_json(&run_json)?;
            let old = v.get("fingerprint").and_then(|f| f.as_str()).unwrap_or("");
            if old != fp {
                return Err(LoopError::Config(format!(
                    "{} belongs to a run of another config (fingerprint {old} vs {fp}); use another --out or delete it",
                    out.display()
                )));
            }
        } else {
            write_json(
                &run_json,
                &serde_json::json!({
                    "fingerprint": fp,
                    "config": cfg.path,
                }),
            )?;
        }
        let progress = cfg.run.progress;
        Ok(Self {
            cfg,
            out: out.to_path_buf(),
            cache,
            device,
            progress,
            world: None,
            labels: HashMap::new(),
        })
    }

    /// Hides progress bars (tests, CI).
    pub fn set_progress(&mut self, on: bool) {
        self.progress = on;
    }

    fn round_dir(&self, k: usize) -> PathBuf {
        self.out.join(format!("round_{k}"))
    }

    fn world(&mut self) -> Result<Option<&World>> {
        if self.world.is_none() {
            if let Some(wc) = &self.cfg.world {
                let dir = self.cache.join(format!(
                    "world-{}",
                    &mde_world::world::config_hash(wc)[..16]
                ));
                tracing::info!(dir = %dir.display(), "synthetic world");
                let w = World::generate(wc, &dir)?;
                self.world = Some(w);
            }
        }
        Ok(self.world.as_ref())
    }

    fn base(&mut self) -> Result<BaseInfo> {
        let dir = self.out.join("base");
        let (cfg, device, progress, cache) = (
            self.cfg.clone(),
            self.device.clone(),
            self.progress,
            self.cache.clone(),
        );
        let world_dir = self.world()?.map(|w| w.dir().to_path_buf());
        let world = self.world.as_ref();
        let (info, _) = step(&dir, "base", |_| match &cfg.model {
            ModelSection::Tiny { cfg: tc, seed } => {
                let w = world
                    .ok_or_else(|| LoopError::Config("the tiny model needs a [world]".into()))?;
                let (b, p) = crate::base::pretrained_base(
                    w, tc, *seed, &cfg.base, &cache, &device, progress,
                )?;
                Ok(BaseInfo {
                    paths: b.model_paths(),
                    tokenizer: b.vicuna_dir().display().to_string(),
                    name: format!("tiny-minigpt4 ({} params)", b.manifest.num_parameters),
                    pretrain: Some(p),
                    world: world_dir.clone(),
                })
            }
            ModelSection::Checkpoint { cfg: m, .. } => Ok(BaseInfo {
                paths: ModelPaths {
                    blip2: m.blip2.clone(),
                    eva_vit: m.eva_vit.clone(),
                    blip2_config: m.blip2_config.clone(),
                    vicuna: m.vicuna.clone(),
                    projector: m.projector.clone(),
                },
                tokenizer: m.tokenizer.clone().unwrap_or_else(|| m.vicuna.clone()),
                name: m.name.clone().unwrap_or_else(|| "minigpt4".into()),
                pretrain: None,
                world: world_dir.clone(),
            }),
        })?;
        Ok(info)
    }

    fn dtype(&self) -> Result<DType> {
        match &self.cfg.model {
            ModelSection::Tiny { .. } => Ok(DType::F32),
            ModelSection::Checkpoint { cfg, .. } => minigpt4::eval_adapter::parse_dtype(&cfg.dtype)
                .map_err(|e| LoopError::Config(format!("[model] {e}"))),
        }
    }

    fn tokenizer(&self, base: &BaseInfo) -> Result<LlamaTokenizer> {
        let p = Path::new(&base.tokenizer);
        let t = if p.is_dir() {
            LlamaTokenizer::from_dir(p)
        } else {
            LlamaTokenizer::from_file(p)
        };
        t.map_err(|e| LoopError::Tokenizer(format!("{}: {e}", base.tokenizer)))
    }

    fn eval_batch(&self) -> usize {
        self.cfg.eval.batch_size.max(1)
    }

    fn wrap_eval(&self, model: MiniGpt4, tok: LlamaTokenizer, name: &str) -> MiniGpt4Eval {
        MiniGpt4Eval::new(model, tok, name)
            .with_max_batch(self.eval_batch())
            .with_rank_score(self.cfg.eval.rank_score)
    }

    /// The mining and report specs (derived from the world when not given).
    fn bench_specs(&mut self) -> Result<(BenchSpec, Option<BenchSpec>)> {
        let world = self
            .world()?
            .map(|w| (w.aokvqa_path(), w.mmbench_path(), w.coco_dir()));
        let mine = match (&self.cfg.eval.mine, &world) {
            (Some(s), _) => s.clone(),
            (None, Some((aok, _, coco))) => BenchSpec {
                benchmark: "aokvqa".into(),
                path: aok.clone(),
                images: Some(coco.clone()),
                method: Some("rank".into()),
                limit: None,
                taxonomy: Some("mmbench_v1".into()),
            },
            (None, None) => return Err(LoopError::Config("[eval.mine] is required".into())),
        };
        let report = match (&self.cfg.eval.report, &world) {
            (Some(s), _) => Some(s.clone()),
            (None, Some((_, mmb, _))) => Some(BenchSpec {
                benchmark: "mmbench".into(),
                path: mmb.clone(),
                images: None,
                method: Some("rank".into()),
                limit: None,
                taxonomy: Some("mmbench_v1".into()),
            }),
            (None, None) => None,
        };
        Ok((mine, report))
    }

    /// Loads a benchmark's items and gives untyped ones the teacher's label of their question.
    fn typed_items(&self, spec: &BenchSpec) -> Result<Vec<BenchItem>> {
        let bench: Benchmark = spec
            .benchmark
            .parse()
            .map_err(|e: String| LoopError::Config(format!("[eval] benchmark: {e}")))?;
        let mut items = load_items(bench, &spec.path, spec.images.as_deref()).map_err(eval_err)?;
        for it in &mut items {
            if question_type_of(it).is_none() {
                if let Some(t) = self.labels.get(&it.question) {
                    it.question_type = Some(t.clone());
                }
            }
        }
        Ok(items)
    }

    /// Classifies (once, cached in `out/classify/`) the questions of benchmark items that carry
    /// no question type, as the original does for A-OKVQA bad cases: error rates per type need
    /// the type of every evaluated item.
    fn classify_benchmarks(&mut self, specs: &[&BenchSpec]) -> Result<()> {
        let mut todo: Vec<(String, Vec<String>)> = Vec::new();
        for spec in specs {
            let items = self.typed_items(spec)?;
            let mut qs: Vec<String> = items
                .iter()
                .filter(|it| question_type_of(it).is_none())
                .map(|it| it.question.clone())
                .collect();
            qs.sort();
            qs.dedup();
            if !qs.is_empty() {
                let tax = spec.taxonomy.clone().unwrap_or_else(|| "mmbench_v1".into());
                todo.push((tax, qs));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let teacher = self.teacher()?;
        let dir = self.out.join("classify");
        std::fs::create_dir_all(&dir).map_err(|e| LoopError::Io {
            path: dir.clone(),
            source: e,
        })?;
        let rt = runtime(&dir)?;
        for (tax, qs) in todo {
            let taxonomy = Taxonomy::load(&tax)?;
            let mut c = mde_abs::Classifier::new(taxonomy, Default::default())?
                .with_cache(dir.join("labels.jsonl"))?;
            let bar = self.bar(qs.len() as u64, "classifying questions");
            let report = rt.block_on(c.classify_questions(teacher.as_ref(), &qs))?;
            bar.finish_and_clear();
            if !report.failures.is_empty() {
                tracing::warn!(
                    batches = report.failures.len(),
                    "some classification batches failed; their questions stay untyped"
                );
            }
            self.labels.extend(report.labels);
        }
        Ok(())
    }

    /// Evaluates `model` on `spec` into `dir` (resumable predictions, official files, scores).
    fn evaluate(
        &self,
        model: &mut MiniGpt4Eval,
        spec: &BenchSpec,
        dir: &Path,
        blind: bool,
    ) -> Result<EvalRecord> {
        let bench: Benchmark = spec
            .benchmark
            .parse()
            .map_err(|e: String| LoopError::Config(format!("[eval] benchmark: {e}")))?;
        let mut rc = RunConfig::new(bench);
        if let Some(m) = &spec.method {
            rc.method = m
                .parse::<Method>()
                .map_err(|e| LoopError::Config(format!("[eval] method: {e}")))?;
        }
        rc.batch_size = Some(self.eval_batch());
        rc.limit = spec.limit;
        rc.released_quirks = self.cfg.eval.released_quirks;
        rc.answer_only = self.cfg.eval.answer_only;
        rc.progress = self.progress;
        let items = self.typed_items(spec)?;
        let loader = if blind {
            ImageLoader::blank()
        } else {
            ImageLoader::new(spec.images.clone())
        };
        let ev = evaluate(
            model,
            bench,
            &spec.path,
            &items,
            &rc,
            &loader,
            &EvalDir::new(dir),
        )
        .map_err(eval_err)?;
        let scored = ev.scored.map_err(eval_err)?;
        write_json(dir.join("scores.json"), &scored.json)?;
        mde_core::io::atomic_write(dir.join("scores.md"), scored.markdown.as_bytes())?;
        let by_type = accuracy_by_type(&ev.selected, &scored.verdicts);
        let n: usize = by_type.values().map(|c| c.total).sum();
        let c: usize = by_type.values().map(|c| c.correct).sum();
        let summary = EvalSummary {
            benchmark: bench.to_string(),
            method: format!("{:?}", rc.method).to_lowercase(),
            items: n,
            overall: TypeCount {
                correct: c,
                total: n,
            }
            .percent(),
            per_type: by_type
                .iter()
                .map(|(t, k)| (t.clone(), k.percent()))
                .collect(),
            per_type_items: by_type.iter().map(|(t, k)| (t.clone(), k.total)).collect(),
        };
        Ok(EvalRecord {
            summary,
            verdicts: scored.verdicts.into_iter().collect(),
        })
    }

    /// One evaluation step in `dir` (named after its folder): read back when it has finished,
    /// otherwise run with the round's model, which is loaded on first need and kept in `model`
    /// for the round's next evaluation. `blind` evaluates with a blank image.
    fn eval_step(
        &mut self,
        dir: &Path,
        spec: &BenchSpec,
        blind: bool,
        model: &mut Option<MiniGpt4Eval>,
        load: &mut dyn FnMut(&mut Self) -> Result<MiniGpt4Eval>,
    ) -> Result<(EvalRecord, f64)> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if dir.join("done.json").exists() {
            return step(dir, &name, |_| -> Result<EvalRecord> { unreachable_step() });
        }
        let mut m = match model.take() {
            Some(m) => m,
            None => load(self)?,
        };
        let r = step(dir, &name, |d| self.evaluate(&mut m, spec, d, blind));
        *model = Some(m);
        r
    }

    /// Mines bad cases of the previous round's mining evaluation.
    fn mine(
        &self,
        spec: &BenchSpec,
        eval_dir: &Path,
        rec: &EvalRecord,
        dir: &Path,
    ) -> Result<TypeWeights> {
        let items = self.typed_items(spec)?;
        let preds: Vec<Prediction> = read_jsonl(eval_dir.join("predictions.jsonl"))?;
        let verdicts: HashMap<String, bool> =
            rec.verdicts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut mined = mine_bad_cases(&items, &preds, &verdicts);
        // Bad-case images are resolved against the benchmark's image root by the sampler's
        // encoder, so make relative paths absolute here.
        if let Some(root) = &spec.images {
            for b in &mut mined.bad_cases {
                if let ImageRef::Path { path } = &mut b.image {
                    if Path::new(path.as_str()).is_relative() {
                        *path = root.join(&*path).display().to_string();
                    }
                }
            }
        }
        write_mined(dir, &mined)?;
        Ok(mined.weights)
    }

    /// The ABS candidate pool: annotation database and the ids that may be drawn.
    fn pool(&mut self) -> Result<(AnnotationDb, BTreeSet<u64>, PathBuf, String)> {
        if let Some(w) = self.world()? {
            let db =
                AnnotationDb::load(w.instances_path("train"), Some(&w.captions_path("train")))?;
            let ids: BTreeSet<u64> = w.pool_image_ids().into_iter().collect();
            return Ok((
                db,
                ids,
                w.coco_dir().join("train2017"),
                "{image_id:012}.jpg".into(),
            ));
        }
        let d = &self.cfg.data;
        let inst = d.coco_instances.as_ref().ok_or_else(|| {
            LoopError::Config("[data] coco_instances is required without a [world]".into())
        })?;
        let imgs = d.coco_images.clone().ok_or_else(|| {
            LoopError::Config("[data] coco_images is required without a [world]".into())
        })?;
        let db = AnnotationDb::load(inst, d.coco_captions.as_deref())?;
        let ids = db.ids().into_iter().collect();
        let pat = if d.image_pattern.is_empty() {
            "{image_id:012}.jpg".to_string()
        } else {
            d.image_pattern.clone()
        };
        Ok((db, ids, imgs, pat))
    }

    fn teacher(&mut self) -> Result<Arc<dyn Teacher>> {
        match self.cfg.teacher.kind {
            TeacherChoice::World => {
                let seed = self.cfg.run.seed;
                let error_rate = self.cfg.teacher.error_rate;
                let w = self
                    .world()?
                    .ok_or_else(|| LoopError::Config("the world teacher needs a [world]".into()))?;
                Ok(Arc::new(WorldTeacher::new(
                    w,
                    TeacherOptions {
                        seed,
                        error_rate,
                        ..Default::default()
                    },
                )))
            }
            TeacherChoice::Openai => Ok(mde_gen::build_teacher(&self.cfg.teacher.endpoint)?),
        }
    }

    fn gen_kind(&self) -> RecordKind {
        match self.cfg.gen.kind.as_str() {
            "qa" => RecordKind::Qa,
            "qma" => RecordKind::Qma,
            _ => RecordKind::Qmae,
        }
    }

    /// Training data of round `k`: base replay plus every generated round up to `k`.
    fn round_datasets(
        &mut self,
        k: usize,
        pool_images: &Path,
        pattern: &str,
    ) -> Result<Vec<TrainDataset>> {
        let mut base: Vec<TrainDataset> = Vec::new();
        let balanced = self.cfg.base.vqa == "balanced";
        let base_kind = self.cfg.base.kind.clone();
        if let Some(w) = self.world()? {
            let v = if balanced {
                BaseVariant::Balanced
            } else {
                BaseVariant::Unbalanced
            };
            base.push(TrainDataset {
                name: "base_vqa".into(),
                ratio: None,
                records: crate::base::world_vqa_records(w, v, &base_kind)?,
            });
        }
        for spec in &self.cfg.data.base_datasets {
            base.push(TrainDataset {
                name: spec.name.clone(),
                ratio: spec.ratio,
                records: load_dataset(spec, Path::new("."))?,
            });
        }
        let mut gen = Vec::new();
        for j in 1..=k {
            let path = self.round_dir(j).join("postprocess").join("gptvqa_v1.json");
            let spec = DatasetSpec {
                name: format!("generated_r{j}"),
                path,
                format: DatasetFormat::GptvqaV1,
                image_root: Some(pool_images.to_path_buf()),
                image_pattern: pattern.to_string(),
                allow_absolute_image_paths: false,
                kind: Some(self.gen_kind()),
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
        let replay = self.cfg.train.replay_ratio;
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
            (true, true) => {
                return Err(LoopError::Config(format!(
                    "round {k}: no training data (no base data and nothing generated)"
                )))
            }
        };
        share(&mut base, base_share);
        share(&mut gen, gen_share);
        let mut all: Vec<TrainDataset> = base.into_iter().chain(gen).collect();
        all.retain(|d| d.ratio.unwrap_or(0.0) > 0.0 && !d.records.is_empty());
        Ok(all)
    }

    fn round_train_config(&self, k: usize) -> TrainConfig {
        let t = &self.cfg.train;
        TrainConfig {
            mode: t.mode,
            lora: mde_train::trainer::LoraSettings {
                init_seed: self.cfg.run.seed.wrapping_add(k as u64),
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
            seed: self.cfg.run.seed.wrapping_add(1000 + k as u64),
            grad_clip: Some(1.0),
            image_mode: ImageMode::Eval,
            end_sym: "###".into(),
            max_txt_len: t.max_txt_len,
            merge_at_end: false,
            shards: t.shards.max(1),
        }
    }

    /// A trainer for round `k` (resumes from its checkpoints; after a finished run it holds the
    /// final weights), with the record count of each of its datasets.
    fn round_trainer(
        &mut self,
        base: &BaseInfo,
        k: usize,
        pool_images: &Path,
        pattern: &str,
    ) -> Result<(Trainer, BTreeMap<String, usize>)> {
        let datasets = self.round_datasets(k, pool_images, pattern)?;
        let examples = datasets
            .iter()
            .map(|d| (d.name.clone(), d.records.len()))
            .collect();
        let tcfg = self.round_train_config(k);
        let tok = self.tokenizer(base)?;
        let dtype = self.dtype()?;
        let run_dir = self.round_dir(k).join("train");
        let full = tcfg.mode.needs_varmap();
        let prev =
            (!self.cfg.train.from_base && k > 1).then(|| self.round_dir(k - 1).join("train"));
        let t = if full {
            let (model, varmap) = MiniGpt4::load_varmap(&base.paths, dtype, &self.device)?;
            if let Some(p) = &prev {
                load_full_weights(&varmap, &p.join("final").join("model.safetensors"))?;
            }
            Trainer::new_full(model, varmap, tok, datasets, tcfg, &run_dir)?
        } else {
            if prev.is_some() {
                return Err(LoopError::Config(
                    "[train] from_base = false is supported for the full modes (full, frozen-vit, llm+fc) only"
                        .into(),
                ));
            }
            let model = MiniGpt4::load(&base.paths, dtype, &self.device)?;
            Trainer::new(model, tok, datasets, tcfg, &run_dir)?
        };
        Ok((t, examples))
    }

    /// Runs the whole loop (or what is left of it) and writes the report.
    pub fn run(&mut self) -> Result<LoopReport> {
        let t_start = Instant::now();
        let base = self.base()?;
        let (mine_spec, report_spec) = self.bench_specs()?;
        let specs: Vec<&BenchSpec> = std::iter::once(&mine_spec)
            .chain(report_spec.as_ref())
            .collect();
        self.classify_benchmarks(&specs)?;
        let tok = self.tokenizer(&base)?;
        let dtype = self.dtype()?;
        let rounds = self.cfg.run.rounds;
        let mut summaries: Vec<RoundSummary> = Vec::new();

        // Round 0: the base model.
        let r0 = self.round_dir(0);
        let mut model0: Option<MiniGpt4Eval> = None;
        let mut load0 = |me: &mut Self| -> Result<MiniGpt4Eval> {
            let m = MiniGpt4::load(&base.paths, dtype, &me.device)?;
            Ok(me.wrap_eval(m, tok.clone(), &base.name))
        };
        let (mine0, s_m0) = self.eval_step(
            &r0.join("eval_mine"),
            &mine_spec,
            false,
            &mut model0,
            &mut load0,
        )?;
        let mut secs0 = BTreeMap::from([("eval_mine".to_string(), s_m0)]);
        let blind = self.cfg.abs.blind_chance();
        let mut prev_blind = if blind {
            let (r, s) = self.eval_step(
                &r0.join("eval_blind"),
                &mine_spec,
                true,
                &mut model0,
                &mut load0,
            )?;
            secs0.insert("eval_blind".into(), s);
            Some(r)
        } else {
            None
        };
        let report0 = match &report_spec {
            Some(spec) => {
                let (r, s) = self.eval_step(
                    &r0.join("eval_report"),
                    spec,
                    false,
                    &mut model0,
                    &mut load0,
                )?;
                secs0.insert("eval_report".into(), s);
                Some(r)
            }
            None => None,
        };
        drop(model0);
        summaries.push(RoundSummary {
            round: 0,
            mine: Some(mine0.summary.clone()),
            report: report0.as_ref().map(|r| r.summary.clone()),
            blind: prev_blind.as_ref().map(|r| r.summary.clone()),
            chance_levels: None,
            error_rates: None,
            sampling_probabilities: None,
            queries_per_type: None,
            accepted_per_type: None,
            dropped: None,
            flags: None,
            train: base.pretrain.as_ref().map(|p| TrainSummary {
                mode: "full (from scratch)".into(),
                steps: p.steps,
                first_loss: p.first_loss,
                final_loss: p.final_loss,
                seconds: p.seconds,
                examples: p.examples.clone(),
            }),
            seconds: secs0,
        });

        // The pool's image embeddings for similarity sampling (model of round 0: the vision
        // side is frozen in every round mode except `full`).
        let (db, pool_ids, pool_images, pattern) = self.pool()?;
        let index_path = self.out.join("index").join("pool.safetensors");
        // With no rounds (the control) nothing samples from the pool: skip embedding it.
        let index = if rounds > 0 {
            let ids: Vec<u64> = pool_ids.iter().copied().collect();
            let pool_images_c = pool_images.clone();
            let pattern_c = pattern.clone();
            let base_c = base.clone();
            let ip = index_path.clone();
            step(&self.out.join("index"), "index", |_| {
                let m = MiniGpt4::load(&base_c.paths, dtype, &self.device)?;
                let enc = ModelEncoder::new(&m, pool_images_c.clone(), pattern_c.clone(), None);
                let images: Vec<(u64, ImageRef)> = ids
                    .iter()
                    .map(|&id| (id, ImageRef::Coco { image_id: id }))
                    .collect();
                let bar = self.bar(images.len() as u64, "embedding the image pool");
                let idx = ImageIndex::build(&enc, &images, 64, |n| bar.set_position(n as u64))?;
                bar.finish_and_clear();
                idx.save(&ip)?;
                Ok(idx.len())
            })?;
            Some(ImageIndex::load(&index_path)?)
        } else {
            None
        };
        let mut prev_mine = mine0;
        let mut used_images: BTreeSet<u64> = BTreeSet::new();

        for k in 1..=rounds {
            // Built above whenever there are rounds.
            let Some(index) = index.as_ref() else { break };
            let rd = self.round_dir(k);
            let mut secs = BTreeMap::new();
            // 1. Bad cases and error rates of the previous round's model.
            let prev_eval_dir = self.round_dir(k - 1).join("eval_mine");
            let (weights, s) = step(&rd.join("mine"), "mine", |d| {
                self.mine(&mine_spec, &prev_eval_dir, &prev_mine, d)
            })?;
            secs.insert("mine".to_string(), s);
            // 2. ABS.
            let taxonomy_name = mine_spec
                .taxonomy
                .clone()
                .unwrap_or_else(|| "mmbench_v1".into());
            let taxonomy = Taxonomy::load(&taxonomy_name)?;
            let strategy = self.cfg.abs.strategy()?;
            let (sampled, s) = step(&rd.join("sample"), "sample", |d| {
                let cases: Vec<BadCase> = read_jsonl(rd.join("mine").join("bad_cases.jsonl"))?;
                let (pool, _report) = BadCasePool::new(cases, &taxonomy)?;
                let mut exclude: BTreeSet<u64> = db
                    .ids()
                    .into_iter()
                    .filter(|id| !pool_ids.contains(id))
                    .collect();
                if self.cfg.abs.exclude_used_images {
                    exclude.extend(used_images.iter().copied());
                }
                let scfg = SamplerConfig {
                    n_queries: self.cfg.abs.queries_per_round,
                    seed: self.cfg.run.seed.wrapping_add(k as u64),
                    strategy,
                    floor: self.cfg.abs.floor,
                    chance_margin: self.cfg.abs.chance_margin,
                    min_cases: self.cfg.abs.min_cases,
                    top_k: self.cfg.abs.top_k,
                    similar_ratio: self.cfg.abs.similar_ratio,
                    max_objects: self.cfg.abs.max_objects,
                    exclude_images: exclude,
                    id_prefix: format!("r{k}_q"),
                    // The blind evaluation's per-type accuracy (percent) of the model that
                    // mined these bad cases.
                    chance_accuracy: prev_blind
                        .as_ref()
                        .map(|b| {
                            b.summary
                                .per_type
                                .iter()
                                .map(|(t, pct)| (t.clone(), pct / 100.0))
                                .collect()
                        })
                        .unwrap_or_default(),
                    ..Default::default()
                };
                let m = MiniGpt4::load(&base.paths, dtype, &self.device)?;
                let enc = ModelEncoder::new(
                    &m,
                    pool_images.clone(),
                    pattern.clone(),
                    mine_spec.images.clone(),
                );
                let enc_examples = EncodeExamples(&enc);
                let examples = FirstOf(vec![index as &dyn ExampleImages, &enc_examples]);
                let inputs = SampleInputs {
                    pool: &pool,
                    weights: &weights,
                    taxonomy: &taxonomy,
                    images: &db,
                    index: Some(index),
                    examples: Some(&examples),
                };
                let (queries, report) = sample(&inputs, &scfg)?;
                if queries.is_empty() && scfg.n_queries > 0 {
                    // Not an error: the round then trains on replayed base data only, which is a
                    // legitimate (if accidental) control; but the user must know.
                    let why: Vec<String> = report
                        .allocation
                        .skipped
                        .iter()
                        .map(|(t, r)| format!("{t}: {r}"))
                        .collect();
                    tracing::warn!(
                        round = k,
                        strategy = %self.cfg.abs.strategy,
                        "the sampler allocated no queries ({}); this round adds no generated data",
                        report.stop_reason.clone().unwrap_or_else(|| why.join("; "))
                    );
                }
                mde_abs::write_sample(d, &queries, &report)?;
                Ok(SampleRecord {
                    queries: queries.len(),
                    per_type: report.per_type.clone(),
                    probabilities: report.allocation.probabilities.clone(),
                    error_rates: weights
                        .weights
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    images: queries.iter().map(|q| q.image_id).collect(),
                    chance: report.allocation.chance.clone(),
                })
            })?;
            secs.insert("sample".to_string(), s);
            used_images.extend(sampled.images.iter().copied());
            let queries_path = rd.join("sample").join("queries.jsonl");
            let queries: Vec<GenQuery> = read_jsonl(&queries_path)?;
            // Refuse query images outside the image root before any request leaves the machine.
            self.cfg
                .teacher
                .endpoint
                .check_query_images(&queries, &queries_path)?;
            // 3. Generation.
            let teacher = self.teacher()?;
            let (_, s) = step(&rd.join("generate"), "generate", |d| {
                // The same reading of `[gen.prompt]` as `mde generate` (as_system included).
                let prompt = self.cfg.gen.prompt.generate_prompt()?;
                let mut rcfg = self.cfg.gen.runner.clone();
                rcfg.progress = rcfg.progress && self.progress;
                let runner = Runner::new(teacher.clone(), rcfg);
                let endpoint = self.cfg.teacher.endpoint.clone();
                let rt = runtime(d)?;
                let summary = rt.block_on(runner.run(
                    &queries,
                    |q| {
                        let mut r = prompt.request(q)?;
                        endpoint.apply_sampling(&mut r);
                        Ok(r)
                    },
                    d.join("replies.jsonl"),
                    Some(&d.join("summary.json")),
                ))?;
                if !summary.finished {
                    return Err(LoopError::GenerationIncomplete(format!(
                        "stopped before the end ({} failed, stop: {:?}); re-run to resume",
                        summary.failed, summary.stopped
                    )));
                }
                Ok(summary.completed + summary.already_done)
            })?;
            secs.insert("generate".to_string(), s);
            // 4. Parse, validate, filter.
            let (post, s) = step(&rd.join("postprocess"), "postprocess", |d| {
                let mut replies: Vec<mde_core::records::TeacherReplyRecord> =
                    read_jsonl(rd.join("generate").join("replies.jsonl"))?;
                // Replies are stored in completion order; the dataset follows query order so
                // that it does not depend on the endpoint's timing (or on a resume).
                let pos: HashMap<&str, usize> = queries
                    .iter()
                    .enumerate()
                    .map(|(i, q)| (q.id.as_str(), i))
                    .collect();
                replies
                    .sort_by_key(|r| pos.get(r.query_id.as_str()).copied().unwrap_or(usize::MAX));
                let out = postprocess(&replies, &queries, &self.cfg.gen.postprocess)
                    .map_err(LoopError::Postprocess)?;
                let v1: Vec<_> = out.items.iter().map(to_v1).collect();
                write_json(d.join("gptvqa_v1.json"), &v1)?;
                write_json(d.join("stats.json"), &out.stats)?;
                write_json(d.join("dropped.json"), &out.dropped)?;
                let mut per_type = BTreeMap::new();
                for it in &out.items {
                    *per_type.entry(it.question_type.clone()).or_insert(0) += 1;
                }
                Ok(PostRecord {
                    kept: out.stats.kept,
                    dropped: out.stats.dropped,
                    accepted_per_type: per_type,
                    flags: out.stats.validation.flags.clone(),
                })
            })?;
            secs.insert("postprocess".to_string(), s);
            // 5. Training.
            let mut trained: Option<Trainer> = None;
            let (train_sum, s) = step(&rd.join("train"), "train", |_| {
                let (mut t, examples) = self.round_trainer(&base, k, &pool_images, &pattern)?;
                let t0 = Instant::now();
                t.run(
                    None,
                    RunOptions {
                        progress: self.progress,
                        ..Default::default()
                    },
                )?;
                // The trainer's losses span every invocation (they are saved in its
                // checkpoints), so a killed and resumed round reports what an uninterrupted
                // one does.
                let losses = t.losses();
                let s = TrainSummary {
                    mode: format!("{:?}", self.cfg.train.mode),
                    steps: t.step(),
                    first_loss: losses.first_loss,
                    final_loss: losses.last_loss,
                    seconds: t0.elapsed().as_secs_f64(),
                    examples,
                };
                trained = Some(t);
                Ok(s)
            })?;
            secs.insert("train".to_string(), s);
            // 6. Evaluation of the new model.
            let mut model_k: Option<MiniGpt4Eval> = None;
            let get_k = |me: &mut Self, trained: &mut Option<Trainer>| -> Result<MiniGpt4Eval> {
                let t = match trained.take() {
                    Some(t) => t,
                    None => me.round_trainer(&base, k, &pool_images, &pattern)?.0,
                };
                Ok(me.wrap_eval(
                    t.into_inference_model()?,
                    tok.clone(),
                    &format!("{} round {k}", base.name),
                ))
            };
            let mut load_k = |me: &mut Self| get_k(me, &mut trained);
            let mine_k = self.eval_step(
                &rd.join("eval_mine"),
                &mine_spec,
                false,
                &mut model_k,
                &mut load_k,
            )?;
            secs.insert("eval_mine".to_string(), mine_k.1);
            let blind_k = if blind {
                let r = self.eval_step(
                    &rd.join("eval_blind"),
                    &mine_spec,
                    true,
                    &mut model_k,
                    &mut load_k,
                )?;
                secs.insert("eval_blind".to_string(), r.1);
                Some(r.0)
            } else {
                None
            };
            let report_k = match &report_spec {
                Some(spec) => {
                    let r = self.eval_step(
                        &rd.join("eval_report"),
                        spec,
                        false,
                        &mut model_k,
                        &mut load_k,
                    )?;
                    secs.insert("eval_report".to_string(), r.1);
                    Some(r.0)
                }
                None => None,
            };
            drop(model_k);
            summaries.push(RoundSummary {
                round: k,
                mine: Some(mine_k.0.summary.clone()),
                report: report_k.as_ref().map(|r| r.summary.clone()),
                blind: blind_k.as_ref().map(|r| r.summary.clone()),
                chance_levels: Some(sampled.chance.clone()).filter(|c| !c.is_empty()),
                error_rates: Some(sampled.error_rates.clone()),
                sampling_probabilities: Some(sampled.probabilities.clone()),
                queries_per_type: Some(sampled.per_type.clone()),
                accepted_per_type: Some(post.accepted_per_type.clone()),
                dropped: Some(post.dropped),
                flags: Some(post.flags.clone()),
                train: Some(train_sum),
                seconds: secs,
            });
            prev_mine = mine_k.0;
            prev_blind = blind_k;
        }

        let report = LoopReport {
            name: self
                .out
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
            fingerprint: self.cfg.fingerprint(),
            strategy: self.cfg.abs.strategy_label(),
            model: base.name.clone(),
            teacher: match self.cfg.teacher.kind {
                TeacherChoice::World => format!(
                    "mde-world grounded teacher (error rate {})",
                    self.cfg.teacher.error_rate
                ),
                TeacherChoice::Openai => format!(
                    "{} at {}",
                    self.cfg.teacher.endpoint.model, self.cfg.teacher.endpoint.base_url
                ),
            },
            rounds: summaries,
            total_seconds: t_start.elapsed().as_secs_f64(),
            notes: vec![],
        };
        crate::report::write_report(&self.out.join("report"), &report)?;
        Ok(report)
    }

    fn bar(&self, len: u64, msg: &str) -> indicatif::ProgressBar {
        progress_bar(self.progress, len, msg)
    }
}

/// The loop's progress bar style (hidden when `progress` is off).
pub(crate) fn progress_bar(progress: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(s) = indicatif::ProgressStyle::with_template(
        "{msg:28} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    ) {
        b.set_style(s);
    }
    b.set_message(msg.to_string());
    b
}

fn runtime(dir: &Path) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LoopError::Io {
            path: dir.to_path_buf(),
            source: e,
        })
}

fn unreachable_step<T>() -> Result<T> {
    Err(LoopError::Internal(
        "a finished step was asked to run again".into(),
    ))
}

fn eval_err(e: mde_eval::runner::RunError) -> LoopError {
    LoopError::Eval(e)
}

/// Sets every var of `varmap` from a root-name safetensors file written by a full-mode export.
pub(crate) fn load_full_weights(varmap: &candle_nn::VarMap, path: &Path) -> Result<()> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| LoopError::Internal("varmap poisoned".into()))?;
    for (k, v) in data.iter() {
        if let Some(x) = t.get(k) {
            v.set(&x.to_device(v.device())?.to_dtype(v.dtype())?)?;
        }
    }
    Ok(())
}

/// Image embeddings from the model's own Q-Former (mean over the query tokens), used for the
/// similarity half of ABS. COCO ids resolve through the pool folder and file pattern; paths
/// through `root` (the benchmark's image folder) when relative.
pub struct ModelEncoder<'a> {
    model: &'a MiniGpt4,
    proc: ImageProcessor,
    pool_images: PathBuf,
    pattern: String,
    root: Option<PathBuf>,
}

impl<'a> ModelEncoder<'a> {
    pub fn new(
        model: &'a MiniGpt4,
        pool_images: PathBuf,
        pattern: String,
        root: Option<PathBuf>,
    ) -> Self {
        let size = model.vision.cfg.image_size as u32;
        Self {
            model,
            proc: ImageProcessor::eval(size),
            pool_images,
            pattern,
            root,
        }
    }

    fn load(
        &self,
        r: &ImageRef,
    ) -> std::result::Result<image::RgbImage, mde_abs::index::EncoderError> {
        let item = BenchItem {
            id: "image".into(),
            image: match r {
                ImageRef::Coco { image_id } => ImageRef::Path {
                    path: self
                        .pool_images
                        .join(mde_train::data::image_file_name(&self.pattern, *image_id))
                        .display()
                        .to_string(),
                },
                other => other.clone(),
            },
            ..Default::default()
        };
        let input = ImageLoader::new(self.root.clone()).load(&item)?;
        match input {
            ImageInput::Encoded { data } => Ok(decode_rgb(&data)?),
            ImageInput::Rgb {
                width,
                height,
                data,
            } => image::RgbImage::from_raw(width, height, data)
                .ok_or_else(|| "RGB buffer does not match its size".into()),
        }
    }
}

impl ImageEncoder for ModelEncoder<'_> {
    fn embed(
        &self,
        images: &[ImageRef],
    ) -> std::result::Result<Vec<Vec<f32>>, mde_abs::index::EncoderError> {
        let imgs = images
            .iter()
            .map(|r| self.load(r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let dev = self.model.device();
        let px = self.proc.process_batch_eval(&imgs, dev)?;
        let px = px.to_dtype(self.model.dtype())?;
        let f: Tensor = self
            .model
            .qformer_features(&px)?
            .mean(1)?
            .to_dtype(DType::F32)?;
        Ok(f.to_vec2::<f32>()?)
    }
}
