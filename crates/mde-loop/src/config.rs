//! The TOML configuration of `mde loop`.
//!
//! One file describes a whole run: where the images, annotations, benchmarks and base data come
//! from (a generated synthetic `[world]`, or real paths in `[data]`), the model (`[model]`: the
//! embedded tiny model, trained from scratch per `[base]`, or a real MiniGPT-4 checkpoint), how
//! rounds evaluate (`[eval]`), sample (`[abs]`), generate (`[teacher]`, `[gen]`) and train
//! (`[train]`). Relative paths are resolved against the config file's folder.
//!
//! ```toml
//! [run]
//! rounds = 2
//! [world]            # the embedded default: a synthetic world generated on first use
//! seed = 0
//! [model]
//! kind = "tiny"
//! [teacher]
//! kind = "world"     # the grounded offline teacher; "openai" for a real endpoint
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mde_abs::Strategy;
use mde_gen::config::{PromptConfig, RunnerConfig, TeacherConfig};
use mde_gen::postprocess::PostprocessConfig;
use mde_models::eval_adapter::EvalModelConfig;
use mde_train::data::{DatasetSpec, RecordKind};
use mde_train::trainer::{LoraSettings, TrainMode};
use mde_world::WorldConfig;
use serde::{Deserialize, Serialize};

use crate::{LoopError, Result};
use mde_tiny::tiny::TinyModelConfig;
use mde_train::scaler::LossScaleSettings;

/// `[run]`: the loop itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// Generated rounds after the round-0 evaluation of the base model.
    pub rounds: usize,
    /// Seed of every random choice of the loop (sampling, training order, LoRA init).
    pub seed: u64,
    /// Where generated worlds and trained tiny base models are cached (shared by runs);
    /// default: `.cache` beside the run's output folder.
    pub cache_dir: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Draw progress bars.
    pub progress: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            rounds: 2,
            seed: 0,
            cache_dir: None,
            device: "cpu".into(),
            progress: true,
        }
    }
}

/// `[model]`: the embedded tiny model (trained from scratch, cached) or a real checkpoint.
#[derive(Debug, Clone)]
pub enum ModelSection {
    /// `kind = "tiny"`: [`TinyModelConfig`] fields plus the init `seed`.
    Tiny { cfg: TinyModelConfig, seed: u64 },
    /// `kind = "minigpt4"`: the fields of [`EvalModelConfig`] (blip2, eva_vit, vicuna,
    /// projector, lora, dtype, device, max_batch ...).
    Checkpoint {
        cfg: Box<EvalModelConfig>,
        /// The table as written (for the run's fingerprint).
        raw: toml::Table,
    },
}

pub use mde_tiny::base::BaseSection;

/// `[data]`: inputs of a real run (with a `[world]` section these are derived from the world).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// COCO `instances_*.json` of the image pool ABS draws query images from.
    pub coco_instances: Option<PathBuf>,
    /// COCO `captions_*.json` of the same images.
    pub coco_captions: Option<PathBuf>,
    /// Folder of the pool's images.
    pub coco_images: Option<PathBuf>,
    /// File name of a pool image; `{image_id:012}` is replaced (COCO 2017: `{image_id:012}.jpg`).
    pub image_pattern: String,
    /// Base training data replayed in every round (MiniGPT-4's `cc_sbu_align`, VQA sets ...).
    pub base_datasets: Vec<DatasetSpec>,
}

/// One benchmark of `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSpec {
    /// `aokvqa`, `mmbench`, `mme` or `seedbench`.
    pub benchmark: String,
    /// The benchmark file (A-OKVQA JSON, MMBench TSV, ...).
    pub path: PathBuf,
    /// Image root for benchmarks that reference image files.
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// `generate` or `rank`; default: the benchmark's official method.
    #[serde(default)]
    pub method: Option<String>,
    /// Only the first N items.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Question-type taxonomy of this benchmark's bad cases (`mmbench_v1`, `seed_bench`, or a
    /// JSON file).
    #[serde(default)]
    pub taxonomy: Option<String>,
}

/// `[eval]`: the mining benchmark (bad cases, error rates) and the reporting benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Bad cases and per-type error rates come from this one.
    pub mine: Option<BenchSpec>,
    /// Held-out benchmark of the report (per-type accuracy by round).
    pub report: Option<BenchSpec>,
    pub batch_size: usize,
    /// Released quirks of the evaluation prompts (see `mde_eval::runner::RunConfig`).
    pub released_quirks: bool,
    /// Ranking scores the choice texts after a prompt without the option listing (models trained
    /// in the `qa` format, like the embedded tiny model), see `PromptStyle::AnswerRank`.
    pub answer_only: bool,
    /// How ranking scores a candidate: `mean` token log-probability (the released protocol) or
    /// `sum` (total log-likelihood, independent of how many tokens a choice splits into).
    pub rank_score: mde_models::eval_adapter::RankScore,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            mine: None,
            report: None,
            batch_size: 32,
            released_quirks: false,
            answer_only: false,
            rank_score: Default::default(),
        }
    }
}

/// `[abs]`: Adaptive Bad-case Sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbsSection {
    /// Queries per round (equal across strategies for a fair ablation).
    pub queries_per_round: usize,
    /// `uniform`, `error_rate` (released), `chance_discounted[:POWER]`, `softmax:T`.
    pub strategy: String,
    pub similar_ratio: f64,
    pub top_k: usize,
    pub max_objects: usize,
    pub min_cases: usize,
    pub floor: f64,
    /// `chance_discounted` skips types whose accuracy is not more than this above chance.
    /// Left out of the written config (and so of the fingerprint) at its default, so that run
    /// folders of earlier versions still resume.
    #[serde(skip_serializing_if = "is_default_chance_margin")]
    pub chance_margin: f64,
    /// Where `chance_discounted` takes each type's chance level from (default: the number of
    /// choices). Not written at its default, for the same reason as `chance_margin`.
    #[serde(skip_serializing_if = "ChanceSource::is_choices")]
    pub chance: ChanceSource,
    /// Query images of earlier rounds are not used again.
    pub exclude_used_images: bool,
}

/// The chance level `chance_discounted` discounts error rates by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChanceSource {
    /// 1 / number of choices (the most common count among the type's bad cases).
    #[default]
    Choices,
    /// The higher of that and the model's own blind accuracy: every round also evaluates the
    /// model on the mining benchmark with a blank image (`round_k/eval_blind`), which measures
    /// how far the text alone gets it (filler options it has learned never to pick). A type whose
    /// accuracy is no better than that does not use the image and is skipped.
    Blind,
}

impl ChanceSource {
    fn is_choices(&self) -> bool {
        *self == ChanceSource::Choices
    }
}

impl std::str::FromStr for ChanceSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "choices" => Ok(ChanceSource::Choices),
            "blind" => Ok(ChanceSource::Blind),
            other => Err(format!(
                "unknown chance source {other:?}: expected choices or blind"
            )),
        }
    }
}

impl Default for AbsSection {
    fn default() -> Self {
        Self {
            queries_per_round: 1000,
            strategy: "error_rate".into(),
            similar_ratio: 0.5,
            top_k: 1000,
            max_objects: 10,
            min_cases: 2,
            floor: 0.0,
            chance_margin: default_chance_margin(),
            chance: ChanceSource::Choices,
            exclude_used_images: true,
        }
    }
}

fn default_chance_margin() -> f64 {
    mde_abs::SamplerConfig::default().chance_margin
}

fn is_default_chance_margin(m: &f64) -> bool {
    *m == default_chance_margin()
}

impl AbsSection {
    pub fn strategy(&self) -> Result<Strategy> {
        self.strategy
            .parse()
            .map_err(|e: String| LoopError::Config(format!("[abs] strategy: {e}")))
    }

    /// Whether rounds measure a blind baseline: only `chance = "blind"` with a
    /// `chance_discounted` strategy uses one.
    pub fn blind_chance(&self) -> bool {
        self.chance == ChanceSource::Blind
            && matches!(self.strategy(), Ok(Strategy::ChanceDiscounted { .. }))
    }

    /// The strategy as reports name it: `[abs] strategy`, with `@blind` when the blind chance
    /// level drives it (so that an ablation tells the two chance sources apart).
    pub fn strategy_label(&self) -> String {
        if self.blind_chance() {
            format!("{}@blind", self.strategy)
        } else {
            self.strategy.clone()
        }
    }
}

/// Which teacher answers generation (and classification) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherChoice {
    /// The grounded offline teacher of the synthetic world (needs `[world]`).
    #[default]
    World,
    /// An OpenAI-compatible endpoint (`[teacher.endpoint]`).
    Openai,
}

/// `[teacher]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSection {
    pub kind: TeacherChoice,
    /// World teacher: share of replies with a deliberate error (exercises the validator).
    pub error_rate: f64,
    /// OpenAI-compatible endpoint settings (mde-gen's `[teacher]`).
    pub endpoint: TeacherConfig,
}

impl Default for TeacherSection {
    fn default() -> Self {
        Self {
            kind: TeacherChoice::World,
            error_rate: 0.05,
            endpoint: TeacherConfig::default(),
        }
    }
}

/// `[gen]`: the generation runner, prompt and post-processing (mde-gen's sections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenSection {
    pub runner: RunnerConfig,
    pub prompt: PromptConfig,
    pub postprocess: PostprocessConfig,
    /// Supervision format of generated items in training (`qmae` as released, `qma`, `qa`).
    pub kind: RecordKind,
}

impl Default for GenSection {
    fn default() -> Self {
        Self {
            runner: RunnerConfig::default(),
            prompt: PromptConfig::default(),
            postprocess: PostprocessConfig::default(),
            kind: RecordKind::Qmae,
        }
    }
}

/// `[train]`: the per-round fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// `lora+fc` (released), `lora`, `fc`, `llm+fc`, `frozen-vit`, `full`.
    pub mode: TrainMode,
    pub lora: LoraSettings,
    pub steps: usize,
    pub batch_size: usize,
    pub accum_steps: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Share of each batch drawn from the base data (the rest from the generated rounds).
    pub replay_ratio: f64,
    /// Each round restarts from the base model (released) instead of the previous round's.
    pub from_base: bool,
    pub checkpoint_every: u64,
    pub max_txt_len: usize,
    /// Rows of each batch split over this many threads (see `mde_train::TrainConfig::shards`).
    pub shards: usize,
    /// `[train.loss_scale]`: mde-train's dynamic loss scaling (on for f16 models by default).
    /// Not written at its default, so the fingerprints of earlier run folders still match.
    #[serde(skip_serializing_if = "LossScaleSettings::is_default")]
    pub loss_scale: LossScaleSettings,
    /// Activation checkpointing per decoder layer (`mde_train::TrainConfig::checkpointing`):
    /// the same gradients with one layer's activations in memory; for the LoRA and projector
    /// modes. Not written when off (fingerprints of earlier runs unchanged).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            mode: TrainMode::LoraFc,
            lora: LoraSettings::default(),
            steps: 1000,
            batch_size: 32,
            accum_steps: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 50,
            weight_decay: 0.01,
            replay_ratio: 0.5,
            from_base: true,
            checkpoint_every: 250,
            max_txt_len: 160,
            shards: 1,
            loss_scale: LossScaleSettings::default(),
            checkpointing: false,
        }
    }
}

/// A whole `mde loop` configuration.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The file it was read from (relative paths resolve against its folder).
    pub path: Option<PathBuf>,
    pub run: RunSection,
    pub world: Option<WorldConfig>,
    pub model: ModelSection,
    pub base: BaseSection,
    pub data: DataSection,
    pub eval: EvalSection,
    pub abs: AbsSection,
    pub teacher: TeacherSection,
    pub gen: GenSection,
    pub train: TrainSection,
}

const SECTIONS: [&str; 10] = [
    "run", "world", "model", "base", "data", "eval", "abs", "teacher", "gen", "train",
];

fn section<T: serde::de::DeserializeOwned + Default>(table: &toml::Table, name: &str) -> Result<T> {
    match table.get(name) {
        None => Ok(T::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e| LoopError::Config(format!("[{name}]: {e}"))),
    }
}

impl LoopConfig {
    /// Parses a config text; `path` (if any) names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self> {
        let at = |msg: String| match path {
            Some(p) => LoopError::Config(format!("{}: {msg}", p.display())),
            None => LoopError::Config(msg),
        };
        let table: toml::Table = text.parse().map_err(|e| at(format!("{e}")))?;
        for k in table.keys() {
            if !SECTIONS.contains(&k.as_str()) {
                return Err(at(format!(
                    "unknown section [{k}] (expected one of {})",
                    SECTIONS.join(", ")
                )));
            }
        }
        // A section's own config error gets the file prefix once.
        let wrap = |e: LoopError| match e {
            LoopError::Config(m) => at(m),
            other => at(other.to_string()),
        };
        let world = match table.get("world") {
            None => None,
            Some(v) => Some(
                v.clone()
                    .try_into::<WorldConfig>()
                    .map_err(|e| at(format!("[world]: {e}")))?,
            ),
        };
        let model = match table.get("model") {
            None => ModelSection::Tiny {
                cfg: TinyModelConfig::default(),
                seed: 0,
            },
            Some(toml::Value::Table(t)) => {
                let mut t = t.clone();
                let kind = match t.remove("kind") {
                    None => "tiny".to_string(),
                    Some(toml::Value::String(s)) => s,
                    Some(v) => return Err(at(format!("[model] kind must be a string, got {v}"))),
                };
                match kind.as_str() {
                    "tiny" => {
                        let (cfg, seed) = mde_tiny::tiny::model_section_from_toml(&t)
                            .map_err(|e| at(e.to_string()))?;
                        ModelSection::Tiny { cfg, seed }
                    }
                    "minigpt4" => ModelSection::Checkpoint {
                        cfg: Box::new(
                            toml::Value::Table(t.clone())
                                .try_into()
                                .map_err(|e| at(format!("[model]: {e}")))?,
                        ),
                        raw: t,
                    },
                    k => {
                        return Err(at(format!(
                            "[model] kind {k:?}: expected \"tiny\" or \"minigpt4\""
                        )))
                    }
                }
            }
            Some(v) => return Err(at(format!("[model] must be a table, got {v}"))),
        };
        let mut cfg = LoopConfig {
            path: path.map(Path::to_path_buf),
            run: section(&table, "run").map_err(wrap)?,
            world,
            model,
            base: section(&table, "base").map_err(wrap)?,
            data: section(&table, "data").map_err(wrap)?,
            eval: section(&table, "eval").map_err(wrap)?,
            abs: section(&table, "abs").map_err(wrap)?,
            teacher: section(&table, "teacher").map_err(wrap)?,
            gen: section(&table, "gen").map_err(wrap)?,
            train: section(&table, "train").map_err(wrap)?,
        };
        if let Some(p) = path {
            cfg.resolve_paths(p.parent().unwrap_or(Path::new(".")));
        }
        cfg.validate().map_err(wrap)?;
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LoopError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, Some(path))
    }

    /// Resolves every relative path against `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        fix_opt(&mut self.run.cache_dir);
        fix_opt(&mut self.data.coco_instances);
        fix_opt(&mut self.data.coco_captions);
        fix_opt(&mut self.data.coco_images);
        for d in &mut self.data.base_datasets {
            fix(&mut d.path);
            fix_opt(&mut d.image_root);
        }
        for b in [&mut self.eval.mine, &mut self.eval.report]
            .into_iter()
            .flatten()
        {
            fix(&mut b.path);
            fix_opt(&mut b.images);
            if let Some(t) = &b.taxonomy {
                if t.ends_with(".json") && Path::new(t).is_relative() {
                    b.taxonomy = Some(base.join(t).to_string_lossy().into_owned());
                }
            }
        }
        fix_opt(&mut self.gen.prompt.generate_template);
        fix_opt(&mut self.teacher.endpoint.image_root);
        if let ModelSection::Checkpoint { cfg, .. } = &mut self.model {
            cfg.resolve_paths(base);
        }
    }

    /// Checks the settings that do not need any file (files are checked by `check`).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LoopError::Config(m));
        if self.abs.queries_per_round == 0 {
            return bad("[abs] queries_per_round must be at least 1".into());
        }
        self.abs.strategy()?;
        if !(0.0..=1.0).contains(&self.abs.similar_ratio) {
            return bad(format!(
                "[abs] similar_ratio must be in [0, 1], got {}",
                self.abs.similar_ratio
            ));
        }
        if !(self.abs.floor.is_finite() && self.abs.floor >= 0.0) {
            return bad(format!(
                "[abs] floor must be a finite number >= 0, got {}",
                self.abs.floor
            ));
        }
        if self.abs.top_k == 0 {
            return bad("[abs] top_k must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.teacher.error_rate) {
            return bad(format!(
                "[teacher] error_rate must be in [0, 1], got {}",
                self.teacher.error_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.train.replay_ratio) {
            return bad(format!(
                "[train] replay_ratio must be in [0, 1], got {}",
                self.train.replay_ratio
            ));
        }
        if self.train.steps == 0 || self.train.batch_size == 0 {
            return bad("[train] steps and batch_size must be at least 1".into());
        }
        if self.eval.batch_size == 0 {
            return bad("[eval] batch_size = 0: must be at least 1".into());
        }
        // The benchmark and method of each spec, through the one parser the evaluate step uses.
        for (sec, b) in [
            ("eval.mine", &self.eval.mine),
            ("eval.report", &self.eval.report),
        ] {
            if let Some(b) = b {
                crate::steps::evaluate::run_config(b, &self.eval, false).map_err(|e| match e {
                    LoopError::Config(m) => {
                        LoopError::Config(m.replacen("[eval]", &format!("[{sec}]"), 1))
                    }
                    other => other,
                })?;
            }
        }
        if let Err(m) = self.train.loss_scale.check() {
            return bad(format!("[train] {m}"));
        }
        if self.train.checkpointing && self.train.mode.needs_varmap() {
            return bad(format!(
                "[train] checkpointing = true supports mode = \"lora+fc\", \"lora\" or \"fc\", not {:?}",
                self.train.mode.name()
            ));
        }
        if let ModelSection::Checkpoint { cfg, .. } = &self.model {
            cfg.validate()
                .map_err(|e| LoopError::Config(format!("[model] {e}")))?;
            // The modes that train base weights hold them as the model's own tensors (no f32
            // master copy): they need an f32 model. LoRA and the projector train f32 master
            // weights in any dtype.
            let f32_model = mde_models::eval_adapter::parse_dtype(&cfg.dtype)
                .is_ok_and(|d| d == candle_core::DType::F32);
            if self.train.mode.needs_varmap() && !f32_model {
                return bad(format!(
                    "[train] mode = \"{}\" trains the base weights, which needs [model] dtype = \"f32\" (got {:?}); use mode = \"lora+fc\", \"lora\" or \"fc\" for a half-precision model",
                    self.train.mode.name(),
                    cfg.dtype
                ));
            }
        }
        if matches!(self.model, ModelSection::Tiny { .. })
            && (self.base.steps == 0 || self.base.batch_size == 0)
        {
            return bad("[base] steps and batch_size must be at least 1 (the tiny base model is trained from scratch)".into());
        }
        // Typed keys: serde refuses unknown values; these refuse the known ones a section
        // cannot use.
        if !matches!(self.base.kind, RecordKind::Qa | RecordKind::Qma) {
            return bad("[base] kind must be qa or qma, got \"caption\"".into());
        }
        if self.gen.kind == RecordKind::Caption {
            return bad("[gen] kind must be qmae, qma or qa, got \"caption\"".into());
        }
        if self.teacher.kind == TeacherChoice::World && self.world.is_none() {
            return bad("[teacher] kind = \"world\" needs a [world] section (the grounded teacher answers from the world's annotations); use kind = \"openai\" with real data".into());
        }
        match (&self.model, &self.world) {
            (ModelSection::Tiny { cfg, .. }, Some(w)) if cfg.image_size as u32 != w.image_size => {
                return bad(format!(
                    "[model] image_size {} differs from [world] image_size {}",
                    cfg.image_size, w.image_size
                ))
            }
            _ => {}
        }
        if self.world.is_none() {
            if self.eval.mine.is_none() {
                return bad("[eval.mine] is required without a [world] (which benchmark gives the bad cases?)".into());
            }
            if matches!(self.model, ModelSection::Tiny { .. }) {
                return bad("[model] kind = \"tiny\" is trained on a synthetic [world]; real data needs kind = \"minigpt4\"".into());
            }
        }
        Ok(())
    }

    /// Hash of everything that determines the results (not paths of the output).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let v = serde_json::json!({
            "run": {"rounds": self.run.rounds, "seed": self.run.seed},
            "world": self.world,
            "model": match &self.model {
                ModelSection::Tiny { cfg, seed } => serde_json::json!({"tiny": cfg, "seed": seed}),
                ModelSection::Checkpoint { raw, .. } => serde_json::to_value(raw).unwrap_or_default(),
            },
            "base": self.base, "data": self.data, "eval": self.eval, "abs": self.abs,
            "teacher": {"kind": self.teacher.kind, "error_rate": self.teacher.error_rate,
                        "model": self.teacher.endpoint.model, "base_url": self.teacher.endpoint.base_url},
            "gen": {"prompt": self.gen.prompt, "postprocess": self.gen.postprocess, "kind": self.gen.kind},
            "train": self.train,
        });
        let mut h = Sha256::new();
        h.update(v.to_string().as_bytes());
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// Per-type numbers keyed by question type id (shared by rounds and the report).
pub type PerType = BTreeMap<String, f64>;
