//! The round orchestration of `mde loop`: the steps of [`crate::steps`] in order, in the run
//! folder of [`crate::layout`]. Round 0 evaluates the base model; every later round mines the
//! previous round's bad cases, samples, generates, post-processes, trains and evaluates again.
//!
//! Every step writes `done.json` (atomically) when it has finished; a re-run skips finished
//! steps and the unfinished step resumes from its own append-only files, so killing the process
//! at any moment loses at most the item (or training step) in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use mde_abs::{
    AnnotationDb, BadCasePool, EncodeExamples, ExampleImages, FirstOf, ImageIndex, SampleInputs,
};
use mde_core::io::{read_json, read_jsonl, write_json};
use mde_core::records::{BadCase, BenchItem, GenQuery, ImageRef};
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::Teacher;
use mde_eval::badcase::question_type_of;
use mde_eval::runner::load_items;
use mde_eval::step::EvalDir;
use mde_models::eval_adapter::MiniGpt4Eval;
use mde_train::data::load_dataset;
use mde_train::trainer::{TrainDataset, Trainer};
use mde_world::{TeacherOptions, World, WorldTeacher};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::{MiniGpt4, ModelPaths};
use serde::{Deserialize, Serialize};

use crate::config::{BenchSpec, LoopConfig, ModelSection, TeacherChoice};
use crate::layout::{EvalKind, RoundLayout, RunLayout};
use crate::report::{LoopReport, RoundSummary, TrainSummary};
use crate::steps::{self, resumable};
use crate::{LoopError, Result};
use mde_models::encoder::ModelEncoder;

pub use crate::steps::evaluate::Record as EvalRecord;

/// Where the base model comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInfo {
    pub paths: ModelPaths,
    /// Tokenizer folder or file.
    pub tokenizer: String,
    pub name: String,
    /// Pretraining of the tiny model (None for real checkpoints).
    pub pretrain: Option<mde_tiny::base::PretrainInfo>,
    /// The world's folder (embedded default).
    pub world: Option<PathBuf>,
}

/// One `mde loop` run: a config and an output folder.
pub struct LoopRun {
    cfg: LoopConfig,
    out: PathBuf,
    layout: RunLayout,
    cache: PathBuf,
    device: Device,
    progress: bool,
    world: Option<World>,
    /// Teacher labels of benchmark questions without a type (question -> type id).
    labels: HashMap<String, String>,
}

/// What every round shares: the base model, the benchmarks and the ABS candidate pool.
struct Shared {
    base: BaseInfo,
    tok: LlamaTokenizer,
    dtype: DType,
    mine_spec: BenchSpec,
    report_spec: Option<BenchSpec>,
    taxonomy: Taxonomy,
    db: AnnotationDb,
    pool_ids: BTreeSet<u64>,
    pool_images: PathBuf,
    pattern: String,
    /// Embeddings of the pool (built whenever there are rounds).
    index: Option<ImageIndex>,
}

/// What a round hands to the next.
struct Carry {
    mine: EvalRecord,
    blind: Option<EvalRecord>,
    used_images: BTreeSet<u64>,
}

/// The evaluations of one round's model.
struct Evals {
    mine: EvalRecord,
    blind: Option<EvalRecord>,
    report: Option<EvalRecord>,
}

/// The default cache folder of a run in `out`: `runs/.cache` beside it.
pub fn default_cache_dir(out: &Path) -> PathBuf {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(".cache")
}

impl LoopRun {
    /// Checks the output folder against the config (a folder of another config is refused).
    pub fn new(cfg: LoopConfig, out: &Path) -> Result<Self> {
        let device = mde_models::eval_adapter::parse_device(&cfg.run.device)
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
        let layout = RunLayout::new(out);
        let run_json = layout.run_json();
        if run_json.exists() {
            let v: serde_json::Value = read_json(&run_json)?;
            let old = v.get("fingerprint").and_then(|f| f.as_str()).unwrap_or("");
            if old != fp {
                return Err(LoopError::OtherRun {
                    path: out.to_path_buf(),
                    theirs: old.to_string(),
                    ours: fp,
                });
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
            layout,
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
        let dir = self.layout.base();
        let (cfg, device, progress, cache) = (
            self.cfg.clone(),
            self.device.clone(),
            self.progress,
            self.cache.clone(),
        );
        let world_dir = self.world()?.map(|w| w.dir().to_path_buf());
        let world = self.world.as_ref();
        let (info, _) = resumable(&dir, "base", |_| match &cfg.model {
            ModelSection::Tiny { cfg: tc, seed } => {
                let w = world
                    .ok_or_else(|| LoopError::Config("the tiny model needs a [world]".into()))?;
                let (b, p) = mde_tiny::base::pretrained_base(
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
            ModelSection::Checkpoint { cfg, .. } => {
                mde_models::eval_adapter::parse_dtype(&cfg.dtype)
                    .map_err(|e| LoopError::Config(format!("[model] {e}")))
            }
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

    fn wrap_eval(&self, model: MiniGpt4, tok: LlamaTokenizer, name: &str) -> MiniGpt4Eval {
        MiniGpt4Eval::new(model, tok, name)
            .with_max_batch(self.cfg.eval.batch_size.max(1))
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
        let bench = steps::evaluate::benchmark(spec)?;
        let mut items = load_items(bench, &spec.path, spec.images.as_deref())?;
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
        let cache = self.layout.classify().join("labels.jsonl");
        for (tax, qs) in todo {
            let labels = steps::classify::run(
                teacher.as_ref(),
                Taxonomy::load(&tax)?,
                Default::default(),
                &qs,
                &cache,
                self.progress,
            )?;
            self.labels.extend(labels);
        }
        Ok(())
    }

    /// One evaluation step in `dir` (named after its folder): read back when it has finished,
    /// otherwise run with the round's model, which is loaded on first need and kept in `model`
    /// for the round's next evaluation. `blind` evaluates with a blank image.
    fn eval_step(
        &mut self,
        kind: EvalKind,
        rd: &RoundLayout,
        spec: &BenchSpec,
        model: &mut Option<MiniGpt4Eval>,
        load: &mut dyn FnMut(&mut Self) -> Result<MiniGpt4Eval>,
    ) -> Result<(EvalRecord, f64)> {
        let dir = rd.eval(kind);
        if steps::is_done(&dir) {
            return resumable(&dir, kind.name(), |_| -> Result<EvalRecord> {
                Err(LoopError::Internal(
                    "a finished step was asked to run again".into(),
                ))
            });
        }
        let mut m = match model.take() {
            Some(m) => m,
            None => load(self)?,
        };
        let items = self.typed_items(spec)?;
        let rc = steps::evaluate::run_config(spec, &self.cfg.eval, self.progress)?;
        let blind = kind == EvalKind::Blind;
        let r = resumable(&dir, kind.name(), |d| {
            steps::evaluate::run(&mut m, spec, &items, &rc, blind, d)
        });
        *model = Some(m);
        r
    }

    /// The evaluations of a round's model (`load` gives it on first need): the mining
    /// benchmark, its blind twin where the strategy measures chance, the report benchmark.
    fn evaluations(
        &mut self,
        sh: &Shared,
        rd: &RoundLayout,
        load: &mut dyn FnMut(&mut Self) -> Result<MiniGpt4Eval>,
        secs: &mut BTreeMap<String, f64>,
    ) -> Result<Evals> {
        let mut model = None;
        let mut eval = |me: &mut Self, kind: EvalKind, spec: &BenchSpec| {
            let (r, s) = me.eval_step(kind, rd, spec, &mut model, load)?;
            secs.insert(kind.name().to_string(), s);
            Ok::<_, LoopError>(r)
        };
        let mine = eval(self, EvalKind::Mine, &sh.mine_spec)?;
        let blind = match self.cfg.abs.blind_chance() {
            true => Some(eval(self, EvalKind::Blind, &sh.mine_spec)?),
            false => None,
        };
        let report = match &sh.report_spec {
            Some(spec) => Some(eval(self, EvalKind::Report, spec)?),
            None => None,
        };
        Ok(Evals {
            mine,
            blind,
            report,
        })
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

    /// The base data every round replays (the world's VQA set and `[data] base_datasets`).
    fn base_datasets(&mut self) -> Result<Vec<TrainDataset>> {
        let mut base: Vec<TrainDataset> = Vec::new();
        let (variant, base_kind) = (self.cfg.base.vqa, self.cfg.base.kind);
        if let Some(w) = self.world()? {
            base.push(TrainDataset {
                name: "base_vqa".into(),
                ratio: None,
                records: mde_tiny::base::world_vqa_records(w, variant, base_kind)?,
            });
        }
        for spec in &self.cfg.data.base_datasets {
            base.push(TrainDataset {
                name: spec.name.clone(),
                ratio: spec.ratio,
                records: load_dataset(spec, Path::new("."))?,
            });
        }
        Ok(base)
    }

    /// A trainer for round `k` (resumes from its checkpoints; after a finished run it holds the
    /// final weights), with the record count of each of its datasets.
    fn round_trainer(
        &mut self,
        sh: &Shared,
        k: usize,
    ) -> Result<(Trainer, BTreeMap<String, usize>)> {
        let generated: Vec<PathBuf> = (1..=k)
            .map(|j| self.layout.round(j).postprocess().v1())
            .collect();
        let datasets = steps::train::datasets(steps::train::DataInputs {
            k,
            base: self.base_datasets()?,
            generated: &generated,
            pool_images: &sh.pool_images,
            pattern: &sh.pattern,
            kind: self.cfg.gen.kind,
            replay_ratio: self.cfg.train.replay_ratio,
        })?;
        let examples = datasets
            .iter()
            .map(|d| (d.name.clone(), d.records.len()))
            .collect();
        let start_from =
            (!self.cfg.train.from_base && k > 1).then(|| self.layout.round(k - 1).train());
        let t = steps::train::trainer(
            steps::train::ModelInputs {
                paths: &sh.base.paths,
                tokenizer: sh.tok.clone(),
                dtype: sh.dtype,
                device: &self.device,
                start_from,
            },
            datasets,
            steps::train::round_config(&self.cfg.train, self.cfg.run.seed, k),
            &self.layout.round(k).train(),
        )?;
        Ok((t, examples))
    }

    /// The index step: embeddings of the candidate pool by the base model (the vision side is
    /// frozen in every round mode except `full`).
    fn index(&self, sh: &Shared) -> Result<ImageIndex> {
        let files = self.layout.index();
        resumable(files.dir(), "index", |_| {
            let m = MiniGpt4::load(&sh.base.paths, sh.dtype, &self.device)?;
            let enc = ModelEncoder::new(&m, sh.pool_images.clone(), sh.pattern.clone(), None);
            let images: Vec<(u64, ImageRef)> = sh
                .pool_ids
                .iter()
                .map(|&id| (id, ImageRef::Coco { image_id: id }))
                .collect();
            let idx = steps::index::run(
                &enc,
                &images,
                steps::index::DEFAULT_BATCH,
                &files.embeddings(),
                self.progress,
            )?;
            Ok(idx.len())
        })?;
        Ok(ImageIndex::load(files.embeddings())?)
    }

    /// Round `k >= 1`: the steps in order.
    fn round(&mut self, sh: &Shared, k: usize, prev: &mut Carry) -> Result<RoundSummary> {
        let index = sh
            .index
            .as_ref()
            .ok_or_else(|| LoopError::Internal("rounds without an image index".into()))?;
        let rd = self.layout.round(k);
        let mut secs = BTreeMap::new();

        // 2. Mine: bad cases and error rates of the previous round's model.
        let mine = rd.mine();
        let prev_eval = EvalDir::new(self.layout.round(k - 1).eval(EvalKind::Mine));
        let (weights, s) = resumable(mine.dir(), "mine", |_| {
            let items = self.typed_items(&sh.mine_spec)?;
            let verdicts: HashMap<String, bool> = prev
                .mine
                .verdicts
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let inputs = steps::mine::Inputs {
                items: &items,
                predictions: &prev_eval.predictions(),
                verdicts: &verdicts,
                image_root: sh.mine_spec.images.as_deref(),
            };
            steps::mine::run(&inputs, &mine)
        })?;
        secs.insert("mine".to_string(), s);

        // 5. Sample (ABS).
        let sample = rd.sample();
        let (sampled, s) = resumable(sample.dir(), "sample", |_| {
            let cases: Vec<BadCase> = read_jsonl(mine.bad_cases())?;
            let (pool, _) = BadCasePool::new(cases, &sh.taxonomy)?;
            let mut exclude: BTreeSet<u64> = sh
                .db
                .ids()
                .into_iter()
                .filter(|id| !sh.pool_ids.contains(id))
                .collect();
            if self.cfg.abs.exclude_used_images {
                exclude.extend(prev.used_images.iter().copied());
            }
            // The blind evaluation's per-type accuracy (percent) of the model that mined
            // these bad cases.
            let chance = prev
                .blind
                .as_ref()
                .map(|b| {
                    let pt = &b.summary.per_type;
                    pt.iter().map(|(t, pct)| (t.clone(), pct / 100.0)).collect()
                })
                .unwrap_or_default();
            let scfg =
                steps::sample::round_config(&self.cfg.abs, self.cfg.run.seed, k, exclude, chance)?;
            let m = MiniGpt4::load(&sh.base.paths, sh.dtype, &self.device)?;
            let images = sh.mine_spec.images.clone();
            let enc = ModelEncoder::new(&m, sh.pool_images.clone(), sh.pattern.clone(), images);
            let enc_examples = EncodeExamples(&enc);
            let examples = FirstOf(vec![index as &dyn ExampleImages, &enc_examples]);
            let inputs = SampleInputs {
                pool: &pool,
                weights: &weights,
                taxonomy: &sh.taxonomy,
                images: &sh.db,
                index: Some(index),
                examples: Some(&examples),
            };
            let (queries, report) = steps::sample::run(&scfg, &inputs, &sample)?;
            Ok(steps::sample::Record::of(&queries, &report, &weights))
        })?;
        secs.insert("sample".to_string(), s);
        prev.used_images.extend(sampled.images.iter().copied());
        let queries: Vec<GenQuery> = read_jsonl(sample.queries())?;

        // 6. Generate.
        let generate = rd.generate();
        let teacher = self.teacher()?;
        let (_, s) = resumable(generate.dir(), "generate", |_| {
            let mut runner = self.cfg.gen.runner.clone();
            runner.progress = runner.progress && self.progress;
            let cfg = steps::generate::Config {
                endpoint: &self.cfg.teacher.endpoint,
                runner: &runner,
                prompt: &self.cfg.gen.prompt,
                ctrl_c: false,
            };
            let inputs = steps::generate::Inputs {
                queries: &queries,
                queries_file: &sample.queries(),
                teacher,
            };
            let summary = steps::generate::run(&cfg, inputs, &generate)?;
            steps::generate::require_finished(&summary, &generate)?;
            Ok(summary.completed + summary.already_done)
        })?;
        secs.insert("generate".to_string(), s);

        // 7. Postprocess: parse, validate, filter.
        let post = rd.postprocess();
        let (posted, s) = resumable(post.dir(), "postprocess", |_| {
            let out = steps::postprocess::run(
                &self.cfg.gen.postprocess,
                &generate.replies(),
                &queries,
                &post,
            )?;
            Ok(steps::postprocess::Record::of(&out))
        })?;
        secs.insert("postprocess".to_string(), s);

        // 8. Train.
        let mut trained: Option<Trainer> = None;
        let (train, s) = resumable(&rd.train(), "train", |_| {
            let (mut t, examples) = self.round_trainer(sh, k)?;
            let summary = steps::train::run(&mut t, examples, self.progress)?;
            trained = Some(t);
            Ok(summary)
        })?;
        secs.insert("train".to_string(), s);

        // 1. Evaluate the new model (loaded from the trainer, or its run folder on resume).
        let name = format!("{} round {k}", sh.base.name);
        let mut load = |me: &mut Self| -> Result<MiniGpt4Eval> {
            let t = match trained.take() {
                Some(t) => t,
                None => me.round_trainer(sh, k)?.0,
            };
            Ok(me.wrap_eval(t.into_inference_model()?, sh.tok.clone(), &name))
        };
        let evals = self.evaluations(sh, &rd, &mut load, &mut secs)?;

        let summary = RoundSummary {
            round: k,
            mine: Some(evals.mine.summary.clone()),
            report: evals.report.as_ref().map(|r| r.summary.clone()),
            blind: evals.blind.as_ref().map(|r| r.summary.clone()),
            chance_levels: Some(sampled.chance.clone()).filter(|c| !c.is_empty()),
            error_rates: Some(sampled.error_rates),
            sampling_probabilities: Some(sampled.probabilities),
            queries_per_type: Some(sampled.per_type),
            accepted_per_type: Some(posted.accepted_per_type),
            dropped: Some(posted.dropped),
            flags: Some(posted.flags),
            train: Some(train),
            seconds: secs,
        };
        prev.mine = evals.mine;
        prev.blind = evals.blind;
        Ok(summary)
    }

    /// Runs the whole loop (or what is left of it) and writes the report.
    pub fn run(&mut self) -> Result<LoopReport> {
        let t_start = Instant::now();
        let base = self.base()?;
        let (mine_spec, report_spec) = self.bench_specs()?;
        let specs: Vec<&BenchSpec> = std::iter::once(&mine_spec)
            .chain(report_spec.as_ref())
            .collect();
        // 3. Classify the benchmark questions that carry no type.
        self.classify_benchmarks(&specs)?;
        let taxonomy_name = mine_spec
            .taxonomy
            .clone()
            .unwrap_or_else(|| "mmbench_v1".into());
        let (db, pool_ids, pool_images, pattern) = self.pool()?;
        let mut sh = Shared {
            tok: self.tokenizer(&base)?,
            dtype: self.dtype()?,
            taxonomy: Taxonomy::load(&taxonomy_name)?,
            base,
            mine_spec,
            report_spec,
            db,
            pool_ids,
            pool_images,
            pattern,
            index: None,
        };

        // Round 0: the base model.
        let mut secs0 = BTreeMap::new();
        let r0 = self.layout.round(0);
        let mut load0 = |me: &mut Self| -> Result<MiniGpt4Eval> {
            let m = MiniGpt4::load(&sh.base.paths, sh.dtype, &me.device)?;
            Ok(me.wrap_eval(m, sh.tok.clone(), &sh.base.name))
        };
        let evals0 = self.evaluations(&sh, &r0, &mut load0, &mut secs0)?;
        let mut summaries = vec![RoundSummary {
            round: 0,
            mine: Some(evals0.mine.summary.clone()),
            report: evals0.report.as_ref().map(|r| r.summary.clone()),
            blind: evals0.blind.as_ref().map(|r| r.summary.clone()),
            chance_levels: None,
            error_rates: None,
            sampling_probabilities: None,
            queries_per_type: None,
            accepted_per_type: None,
            dropped: None,
            flags: None,
            train: sh.base.pretrain.as_ref().map(|p| TrainSummary {
                mode: "full (from scratch)".into(),
                steps: p.steps,
                first_loss: p.first_loss,
                final_loss: p.final_loss,
                seconds: p.seconds,
                examples: p.examples.clone(),
            }),
            seconds: secs0,
        }];

        // 4. Index the pool; with no rounds (the control) nothing samples from it.
        let rounds = self.cfg.run.rounds;
        if rounds > 0 {
            sh.index = Some(self.index(&sh)?);
        }
        let mut carry = Carry {
            mine: evals0.mine,
            blind: evals0.blind,
            used_images: BTreeSet::new(),
        };
        for k in 1..=rounds {
            summaries.push(self.round(&sh, k, &mut carry)?);
        }

        let base = &sh.base;
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
        crate::report::write_report(&self.layout.report(), &report)?;
        Ok(report)
    }
}
