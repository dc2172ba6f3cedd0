//! Inference runners: turn an [`EvalModel`] and a list of [`BenchItem`]s into [`Prediction`]s.
//!
//! Length: one file because every benchmark's prompt style, batching, resume bookkeeping and
//! answer extraction meet in the same per-item loop; splitting it by benchmark would copy that
//! loop four times.
//!
//! - MMBench and MME by generation; SEED-Bench by likelihood ranking (the official protocol) or
//!   generation; MMBench optionally by likelihood ranking too ([`Method::Rank`], for models too
//!   small to follow the generation prompt: the best option's letter is the prediction, scored
//!   by the unchanged circular scorer); A-OKVQA by likelihood ranking of its four choices (argmin of the mean token
//!   cross-entropy), with the MC and DA predictions both taken from the chosen choice.
//! - Batched to the model's [`EvalModel::max_batch`] (or less), with a progress bar.
//! - Never loses work: every prediction is appended (and flushed) to a JSONL store keyed by item
//!   id as soon as its batch returns, so a re-run on the same file skips finished items: no item
//!   is asked twice and none is written twice.
//!
//! The answer post-processing reproduces the released code (see [`mmbench_answer`] and
//! [`aokvqa_answer`]); [`load_items`] reads a benchmark with this crate's loaders,
//! [`write_official_predictions`] writes the files the official tools read and
//! [`score_predictions`] scores them with this crate's official-identical scorers.
//!
//! ```
//! use mde_core::model::{EvalModel, EvalRequest, ModelError};
//! use mde_core::records::{BenchItem, ImageRef};
//! use mde_eval::runner::{run_predictions, Benchmark, ImageLoader, RunConfig};
//!
//! struct AlwaysB;
//! impl EvalModel for AlwaysB {
//!     fn name(&self) -> String { "always-b".into() }
//!     fn max_batch(&self) -> usize { 4 }
//!     fn generate(&mut self, r: &[EvalRequest]) -> Result<Vec<String>, ModelError> {
//!         Ok(r.iter().map(|_| "B. a horse".to_string()).collect())
//!     }
//!     fn rank(&mut self, r: &[EvalRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
//!         Ok(r.iter().map(|q| vec![1.0; q.choices.len()]).collect())
//!     }
//! }
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("x.png"), b"not decoded by this model").unwrap();
//! let item = BenchItem {
//!     id: "0".into(), benchmark: "mmbench".into(), question: "What animal?".into(),
//!     choices: vec!["cat".into(), "horse".into()], answer_idx: Some(1),
//!     image: ImageRef::Path { path: "x.png".into() }, ..Default::default()
//! };
//! let cfg = RunConfig::new(Benchmark::MMBench);
//! let images = ImageLoader::new(Some(dir.path().to_path_buf()));
//! let out = run_predictions(&mut AlwaysB, &[item], &dir.path().join("p.jsonl"), &cfg, &images).unwrap();
//! assert_eq!(out.predictions[0].text, "B");
//! assert_eq!(out.predictions[0].choice_idx, Some(1));
//! ```
use crate::error::EvalError;
use crate::paths::resolve_with_extensions;
use base64::Engine;
use mde_core::io::JsonlStore;
use mde_core::model::{argmin, EvalModel, EvalRequest, ImageInput, ModelError, PromptStyle};
use mde_core::records::{BenchItem, ImageRef, Prediction, CHOICE_LETTERS};
use regex::Regex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// The benchmarks the runners know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Benchmark {
    MMBench,
    Mme,
    Aokvqa,
    SeedBench,
}

impl Benchmark {
    /// The name used on the command line and in [`BenchItem::benchmark`].
    pub fn as_str(self) -> &'static str {
        match self {
            Benchmark::MMBench => "mmbench",
            Benchmark::Mme => "mme",
            Benchmark::Aokvqa => "aokvqa",
            Benchmark::SeedBench => "seedbench",
        }
    }

    /// How the released/official protocol answers this benchmark.
    pub fn default_method(self) -> Method {
        match self {
            Benchmark::MMBench | Benchmark::Mme => Method::Generate,
            Benchmark::Aokvqa | Benchmark::SeedBench => Method::Rank,
        }
    }
}

impl FromStr for Benchmark {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "mmbench" => Ok(Benchmark::MMBench),
            "mme" => Ok(Benchmark::Mme),
            "aokvqa" => Ok(Benchmark::Aokvqa),
            "seedbench" | "seed" => Ok(Benchmark::SeedBench),
            _ => Err(format!(
                "unknown benchmark {s:?} (expected mmbench, mme, aokvqa or seedbench)"
            )),
        }
    }
}

impl std::fmt::Display for Benchmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Generation (free text, then answer extraction) or likelihood ranking of the choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Generate,
    Rank,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "generate" | "generation" | "gen" => Ok(Method::Generate),
            "rank" | "ranking" | "likelihood" => Ok(Method::Rank),
            _ => Err(format!("unknown method {s:?} (expected generate or rank)")),
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub benchmark: Benchmark,
    pub method: Method,
    /// Upper bound on the batch size; the model's `max_batch` also applies. `None`: the model's.
    pub batch_size: Option<usize>,
    /// Only the first `limit` items (in input order) are evaluated.
    pub limit: Option<usize>,
    /// Reproduce the released behaviour (A-OKVQA: lowercase `<img>` prompt without BOS, answers
    /// lowercased and cut at the first "."; MMBench: OpenCompass's character-set `strip`). `false`
    /// gives the clean variant.
    pub released_quirks: bool,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// With [`Method::Rank`]: rank the choice texts after a QA prompt without the option listing
    /// ([`PromptStyle::AnswerRank`]), for models trained to answer with the text only.
    pub answer_only: bool,
}

impl RunConfig {
    /// Items per model call for a model that takes `max_batch`: `batch_size` capped by it, at
    /// least 1. Sharded evaluation aligns its slices to this.
    pub fn batch_for(&self, max_batch: usize) -> usize {
        self.batch_size.unwrap_or(usize::MAX).min(max_batch).max(1)
    }

    /// The faithful defaults for `benchmark`.
    pub fn new(benchmark: Benchmark) -> Self {
        RunConfig {
            benchmark,
            method: benchmark.default_method(),
            batch_size: None,
            limit: None,
            released_quirks: true,
            progress: false,
            answer_only: false,
        }
    }

    /// The prompt style the model adapter must use.
    pub fn style(&self) -> PromptStyle {
        if self.answer_only && self.method == Method::Rank && self.benchmark != Benchmark::Mme {
            return PromptStyle::AnswerRank;
        }
        match (self.benchmark, self.method) {
            (Benchmark::MMBench, Method::Generate) => PromptStyle::MMBench,
            // Ranking the options' likelihoods (tiny models that cannot follow the generation
            // prompt); the prediction is the best option's letter, scored unchanged.
            (Benchmark::MMBench, Method::Rank) => PromptStyle::McqRank,
            (Benchmark::Mme, _) => PromptStyle::Mme,
            (Benchmark::Aokvqa, Method::Rank) => PromptStyle::AokvqaRank {
                released_quirks: self.released_quirks,
            },
            (Benchmark::Aokvqa, Method::Generate) => PromptStyle::Chat,
            (Benchmark::SeedBench, Method::Rank) => PromptStyle::SeedRank,
            // Generation on SEED asks with MMBench's option listing and extracts a letter.
            (Benchmark::SeedBench, Method::Generate) => PromptStyle::MMBench,
        }
    }

    fn check(&self) -> Result<(), EvalError> {
        let ok = match self.benchmark {
            Benchmark::Mme => self.method == Method::Generate,
            Benchmark::Aokvqa => self.method == Method::Rank,
            Benchmark::MMBench | Benchmark::SeedBench => true,
        };
        if !ok {
            return Err(EvalError::Config(format!(
                "{} is evaluated by {}, not {:?}",
                self.benchmark,
                match self.benchmark.default_method() {
                    Method::Generate => "generation",
                    Method::Rank => "likelihood ranking",
                },
                self.method
            )));
        }
        if self.batch_size == Some(0) {
            return Err(EvalError::Config("batch size must be at least 1".into()));
        }
        Ok(())
    }
}

/// Reads an item's image into the bytes a model adapter decodes.
///
/// - `Path`: resolved inside the image root with [`crate::paths`] (refusing escapes and
///   symlinks out of the root), trying `.jpg`/`.png`/`.jpeg` when the reference has no extension
///   (SEED-Bench `data_id`s). Without a root, the path is used as given.
/// - `Base64`: decoded (whitespace inside the field is ignored).
/// - `Coco`: `{split}2017/{id:012}.jpg` (split from the item's `extra.split`, A-OKVQA's
///   layout), then `val2017/`, `train2017/`, `test2017/`, then the root itself.
///
/// [`ImageLoader::blank`] instead hands every item the same uniform image, for a blind
/// (text-only) baseline: what a model answers without seeing the image measures how much of a
/// benchmark its text alone gives away (e.g. filler options that never fit the question).
#[derive(Debug, Clone, Default)]
pub struct ImageLoader {
    pub root: Option<PathBuf>,
    /// Every item gets [`BLANK_RGB`] instead of its image.
    pub blank: bool,
}

/// The colour of [`ImageLoader::blank`]'s image: the CLIP normalisation mean, so that the
/// normalised pixels are zero.
pub const BLANK_RGB: [u8; 3] = [123, 117, 104];

impl ImageLoader {
    pub fn new(root: Option<PathBuf>) -> Self {
        ImageLoader { root, blank: false }
    }

    /// A loader that ignores the items' images and returns a uniform 32x32 [`BLANK_RGB`] image.
    pub fn blank() -> Self {
        ImageLoader {
            root: None,
            blank: true,
        }
    }

    /// The image bytes of `item`.
    pub fn load(&self, item: &BenchItem) -> Result<ImageInput, EvalError> {
        if self.blank {
            return Ok(ImageInput::Rgb {
                width: 32,
                height: 32,
                data: BLANK_RGB.repeat(32 * 32),
            });
        }
        let err = |what: String, msg: String| EvalError::Image {
            id: item.id.clone(),
            what,
            msg,
        };
        match &item.image {
            ImageRef::Base64 { data } => {
                let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(clean.as_bytes())
                    .map_err(|e| err("base64 field".into(), format!("invalid base64: {e}")))?;
                if bytes.is_empty() {
                    return Err(err("base64 field".into(), "empty image".into()));
                }
                Ok(ImageInput::Encoded { data: bytes })
            }
            ImageRef::Path { path } => {
                let resolved = match &self.root {
                    Some(root) => resolve_with_extensions(root, path, &["jpg", "png", "jpeg"])
                        .map_err(|e| err(path.clone(), e.to_string()))?,
                    None if path.is_empty() => {
                        return Err(err("path".into(), "empty image path".into()))
                    }
                    None => PathBuf::from(path),
                };
                read_image_file(&resolved).map_err(|msg| err(resolved.display().to_string(), msg))
            }
            ImageRef::Coco { image_id } => {
                let Some(root) = &self.root else {
                    return Err(err(
                        format!("COCO id {image_id}"),
                        "a COCO image id needs an image root (--images DIR)".into(),
                    ));
                };
                let name = format!("{image_id:012}.jpg");
                let mut tried = Vec::new();
                let split = item
                    .extra
                    .get("split")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let mut cands: Vec<String> = Vec::new();
                if let Some(s) = split {
                    cands.push(format!("{s}2017/{name}"));
                }
                for s in ["val2017", "train2017", "test2017"] {
                    cands.push(format!("{s}/{name}"));
                }
                cands.push(name.clone());
                cands.push(format!("{image_id}.jpg"));
                cands.push(format!("{image_id}.png"));
                for c in cands {
                    let p = crate::paths::resolve_in_root(root, &c)
                        .map_err(|e| err(c.clone(), e.to_string()))?;
                    if p.is_file() {
                        return read_image_file(&p)
                            .map_err(|msg| err(p.display().to_string(), msg));
                    }
                    tried.push(c);
                }
                Err(err(
                    format!("COCO id {image_id}"),
                    format!(
                        "not found under {} (tried {})",
                        root.display(),
                        tried.join(", ")
                    ),
                ))
            }
        }
    }
}

fn read_image_file(p: &Path) -> Result<ImageInput, String> {
    let data = std::fs::read(p).map_err(|e| e.to_string())?;
    if data.is_empty() {
        return Err("empty file".into());
    }
    Ok(ImageInput::Encoded { data })
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// One prediction per evaluated item (after `limit`), in item order, resumed ones included.
    pub predictions: Vec<Prediction>,
    /// Items answered in this call.
    pub new: usize,
    /// Items found finished in the store.
    pub resumed: usize,
    /// Model calls (batches) made in this call.
    pub batches: usize,
}

impl RunOutcome {
    /// Predictions keyed by item id.
    pub fn by_id(&self) -> HashMap<String, Prediction> {
        self.predictions
            .iter()
            .map(|p| (p.id.clone(), p.clone()))
            .collect()
    }
}

/// The items a run with `cfg` evaluates: the first `limit` items, first occurrence of each id.
pub fn select_items<'a>(items: &'a [BenchItem], cfg: &RunConfig) -> Vec<&'a BenchItem> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for it in items {
        if cfg.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if seen.insert(it.id.as_str()) {
            out.push(it);
        }
    }
    out
}

/// Runs `model` on `items`, appending each prediction to the JSONL store at `store_path` (created
/// if needed) and skipping items already there. Returns every selected item's prediction.
///
/// On a model or image error the predictions of earlier batches stay on disk and the error is
/// returned; calling again resumes after them.
pub fn run_predictions<M: EvalModel + ?Sized>(
    model: &mut M,
    items: &[BenchItem],
    store_path: &Path,
    cfg: &RunConfig,
    images: &ImageLoader,
) -> Result<RunOutcome, EvalError> {
    cfg.check()?;
    let selected = select_items(items, cfg);
    let mut store: JsonlStore<Prediction> =
        JsonlStore::open(store_path, |p: &Prediction| p.id.clone())?;
    let pending: Vec<&BenchItem> = selected
        .iter()
        .copied()
        .filter(|it| !store.contains(&it.id))
        .collect();
    let resumed = selected.len() - pending.len();
    let batch = cfg.batch_for(model.max_batch());
    let style = cfg.style();

    let pb = if cfg.progress {
        let pb = indicatif::ProgressBar::new(selected.len() as u64);
        if let Ok(st) = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            pb.set_style(st);
        }
        pb.set_prefix(format!("{} {}", model.name(), cfg.benchmark));
        pb.set_position(resumed as u64);
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    if resumed > 0 {
        tracing::info!(
            "{}: {resumed} of {} items already predicted, resuming",
            store_path.display(),
            selected.len()
        );
    }

    let mut new = 0;
    let mut batches = 0;
    for chunk in pending.chunks(batch) {
        let reqs = chunk
            .iter()
            .map(|it| build_request(it, style, cfg, images))
            .collect::<Result<Vec<_>, _>>()?;
        let first_id = chunk[0].id.clone();
        let preds: Vec<Prediction> = match cfg.method {
            Method::Generate => {
                let texts = model.generate(&reqs).map_err(|source| EvalError::Model {
                    first_id: first_id.clone(),
                    source,
                })?;
                batches += 1;
                check_len(&first_id, texts.len(), chunk.len(), "answers")?;
                chunk
                    .iter()
                    .zip(texts)
                    .map(|(it, t)| generated_prediction(it, &t, cfg))
                    .collect()
            }
            Method::Rank => {
                let scores = model.rank(&reqs).map_err(|source| EvalError::Model {
                    first_id: first_id.clone(),
                    source,
                })?;
                batches += 1;
                check_len(&first_id, scores.len(), chunk.len(), "score lists")?;
                chunk
                    .iter()
                    .zip(scores)
                    .map(|(it, s)| ranked_prediction(it, s, cfg))
                    .collect::<Result<_, _>>()?
            }
        };
        for p in &preds {
            store.append(p)?;
        }
        new += preds.len();
        pb.inc(preds.len() as u64);
    }
    pb.finish_and_clear();

    let by_id: HashMap<&str, &Prediction> =
        store.records().iter().map(|p| (p.id.as_str(), p)).collect();
    let predictions = selected
        .iter()
        .filter_map(|it| by_id.get(it.id.as_str()).map(|p| (*p).clone()))
        .collect();
    Ok(RunOutcome {
        predictions,
        new,
        resumed,
        batches,
    })
}

fn check_len(first_id: &str, got: usize, want: usize, what: &str) -> Result<(), EvalError> {
    if got != want {
        return Err(EvalError::Model {
            first_id: first_id.to_string(),
            source: ModelError::Backend(format!("returned {got} {what} for a batch of {want}")),
        });
    }
    Ok(())
}

fn build_request(
    item: &BenchItem,
    style: PromptStyle,
    cfg: &RunConfig,
    images: &ImageLoader,
) -> Result<EvalRequest, EvalError> {
    if cfg.method == Method::Rank && item.choices.is_empty() {
        return Err(EvalError::Item {
            id: item.id.clone(),
            msg: "ranking needs choices, the item has none".into(),
        });
    }
    if item.choices.len() > CHOICE_LETTERS.len() {
        return Err(EvalError::Item {
            id: item.id.clone(),
            msg: format!("{} choices (at most 26)", item.choices.len()),
        });
    }
    let image = images.load(item)?;
    Ok(EvalRequest {
        id: item.id.clone(),
        image,
        question: item.question.clone(),
        hint: item.hint.clone().filter(|h| !h.is_empty()),
        choices: item.choices.clone(),
        choice_letters: choice_letters(item),
        style,
    })
}

/// The letters of an item's choices: `extra.choice_letters` (MMBench keeps original letters when
/// an option is blank) when it fits, else A, B, C, ...
pub fn choice_letters(item: &BenchItem) -> Vec<char> {
    let given: Option<Vec<char>> = item
        .extra
        .get("choice_letters")
        .and_then(|v| v.as_str())
        .map(|s| s.chars().collect())
        .filter(|v: &Vec<char>| {
            v.len() == item.choices.len() && v.iter().all(|c| c.is_ascii_uppercase())
        });
    given.unwrap_or_else(|| CHOICE_LETTERS[..item.choices.len().min(26)].to_vec())
}

fn generated_prediction(item: &BenchItem, raw: &str, cfg: &RunConfig) -> Prediction {
    let text = match cfg.benchmark {
        Benchmark::MMBench | Benchmark::SeedBench => mmbench_answer(raw, cfg.released_quirks),
        Benchmark::Mme | Benchmark::Aokvqa => raw.trim().to_string(),
    };
    let letters = choice_letters(item);
    let choice_idx = single_letter(&text).and_then(|c| letters.iter().position(|&l| l == c));
    Prediction {
        id: item.id.clone(),
        text,
        choice_idx,
        scores: Vec::new(),
    }
}

fn ranked_prediction(
    item: &BenchItem,
    scores: Vec<f32>,
    cfg: &RunConfig,
) -> Result<Prediction, EvalError> {
    if scores.len() != item.choices.len() {
        return Err(EvalError::Item {
            id: item.id.clone(),
            msg: format!(
                "model returned {} scores for {} choices",
                scores.len(),
                item.choices.len()
            ),
        });
    }
    let idx = argmin(&scores).ok_or_else(|| EvalError::Item {
        id: item.id.clone(),
        msg: "every choice scored NaN".into(),
    })?;
    let text = match cfg.benchmark {
        Benchmark::Aokvqa => aokvqa_answer(&item.choices[idx], cfg.released_quirks),
        _ => choice_letters(item)[idx].to_string(),
    };
    Ok(Prediction {
        id: item.id.clone(),
        text,
        choice_idx: Some(idx),
        scores,
    })
}

/// `Some(c)` when `text` is exactly one capital letter.
fn single_letter(text: &str) -> Option<char> {
    let mut cs = text.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some(c),
        _ => None,
    }
}

/// Python's `str.strip(chars)`: removes any of `chars` from both ends.
fn py_strip_chars<'a>(s: &'a str, chars: &str) -> &'a str {
    s.trim_matches(|c| chars.contains(c))
}

/// OpenCompass's MMBench post-processor for MiniGPT-4 (`_extract_key_words`): cut at the first
/// "###", keep what follows the last "Assistant:", strip, then the first `([A-Z]\.)` match gives
/// the letter; otherwise the stripped text is returned for the scorer's choice extractor.
///
/// With `released_quirks` the original's `strip('</s><s>')` / `strip('</Img>')` are reproduced:
/// those strip *character sets*, so leading/trailing "s", "g", "m", "I" of a free-text answer
/// are eaten too ("glass" -> "la"); it only matters when no letter is found.
pub fn mmbench_answer(raw: &str, released_quirks: bool) -> String {
    static LETTER: OnceLock<Regex> = OnceLock::new();
    let re = LETTER.get_or_init(|| Regex::new(r"([A-Z]\.)").expect("static regex"));
    let t = raw.split("###").next().unwrap_or("");
    let mut t = t.rsplit("Assistant:").next().unwrap_or("").trim();
    if released_quirks {
        t = py_strip_chars(t, "</s><s>");
        t = py_strip_chars(t, "</Img>");
    } else {
        for tok in ["</s>", "<s>", "</Img>"] {
            t = t.trim_start_matches(tok).trim_end_matches(tok);
        }
    }
    let t = t.trim();
    match re.find(t) {
        Some(m) => m.as_str()[..m.as_str().len() - 1].to_string(),
        None => t.to_string(),
    }
}

/// The A-OKVQA answer text of a chosen choice. Released: lowercased and cut at the first "."
/// (used for both the MC and the DA prediction); clean: the choice verbatim.
pub fn aokvqa_answer(choice: &str, released_quirks: bool) -> String {
    if released_quirks {
        let low = choice.to_lowercase();
        low.split('.').next().unwrap_or("").to_string()
    } else {
        choice.to_string()
    }
}

// ------------------------------------------------------------------------------------------------
// Loading, official-format prediction files and scoring
// ------------------------------------------------------------------------------------------------

fn load_err(path: &Path) -> impl Fn(String) -> EvalError + '_ {
    move |msg| EvalError::Load {
        path: path.to_path_buf(),
        msg,
    }
}

/// Whether a SEED-Bench data file is VLMEvalKit's `SEEDBench_IMG.tsv` (else the official JSON).
fn is_tsv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
}

/// What a benchmark file is loaded for: the fields it must carry differ, and they are checked at
/// load, before any inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPurpose {
    /// Only ask the questions (e.g. an MMBench test split without `answer`).
    Inference,
    /// Ask and then score (what `mde eval` and the loop do): the ground truth must be present.
    Evaluation,
}

/// Loads a benchmark's items for evaluation ([`LoadPurpose::Evaluation`]: scoring fields are
/// required) with the loaders of this crate:
/// MMBench `MMBench_DEV_EN.tsv` (VLMEvalKit layout, circular copies included); MME `MME.tsv`, the
/// official template folder or the release folder; A-OKVQA `aokvqa_v1p0_<split>.json`;
/// SEED-Bench `SEED-Bench.json` (image dimensions 1-9) or `SEEDBench_IMG.tsv`.
pub fn load_items(
    benchmark: Benchmark,
    data: &Path,
    image_root: Option<&Path>,
) -> Result<Vec<BenchItem>, EvalError> {
    load_items_for(benchmark, data, image_root, LoadPurpose::Evaluation)
}

/// [`load_items`] for an explicit purpose. Errors name the data file and the missing column or
/// field; a file without questions is an error ("contains no questions").
pub fn load_items_for(
    benchmark: Benchmark,
    data: &Path,
    image_root: Option<&Path>,
    purpose: LoadPurpose,
) -> Result<Vec<BenchItem>, EvalError> {
    let e = load_err(data);
    let scoring = purpose == LoadPurpose::Evaluation;
    let mcq = |name: &str| -> Result<Vec<BenchItem>, EvalError> {
        let ds = crate::mmbench::McqDataset::load(data).map_err(|x| e(x.to_string()))?;
        ds.check_columns(scoring).map_err(|x| e(x.to_string()))?;
        Ok(ds.to_bench_items(name))
    };
    match benchmark {
        Benchmark::MMBench => mcq("mmbench"),
        Benchmark::Mme => crate::mme::load_mme(data, image_root).map_err(|x| e(x.to_string())),
        Benchmark::Aokvqa => {
            let qs = crate::aokvqa::load_aokvqa(data).map_err(|x| e(x.to_string()))?;
            if scoring {
                crate::aokvqa::check_scorable(data, &qs).map_err(|x| e(x.to_string()))?;
            }
            Ok(crate::aokvqa::to_bench_items(&qs))
        }
        Benchmark::SeedBench if is_tsv(data) => mcq("seedbench"),
        Benchmark::SeedBench => {
            let ann = crate::seedbench::load_seed_json(data).map_err(|x| e(x.to_string()))?;
            Ok(crate::seedbench::to_bench_items(
                &ann,
                &crate::seedbench::SeedTask::Image,
            ))
        }
    }
}

/// Writes a VLMEvalKit prediction TSV from the dataset TSV: every dataset column except `image`,
/// then `prediction`, for the dataset rows that have a prediction (QUOTE_ALL, NaN as `""`), as
/// VLMEvalKit's inference writes it.
pub fn write_vlmevalkit_mcq_predictions(
    dataset_tsv: &Path,
    out: &Path,
    predictions: &HashMap<&str, &Prediction>,
) -> Result<(), EvalError> {
    let ds = crate::mmbench::McqDataset::load(dataset_tsv)
        .map_err(|x| load_err(dataset_tsv)(x.to_string()))?;
    let t = &ds.table;
    let keep: Vec<usize> = (0..t.columns.len())
        .filter(|&c| t.columns[c] != "image")
        .collect();
    let mut cols: Vec<String> = keep.iter().map(|&c| t.columns[c].clone()).collect();
    cols.push("prediction".into());
    let mut rows = Vec::new();
    for (i, &r) in ds.rows.iter().enumerate() {
        let Some(p) = predictions.get(ds.index[i].to_string().as_str()) else {
            continue;
        };
        let mut row: Vec<Option<String>> = keep
            .iter()
            .map(|&c| {
                if t.is_na(r, c) {
                    None
                } else {
                    Some(t.py_str(r, c))
                }
            })
            .collect();
        row.push(Some(p.text.clone()));
        rows.push(row);
    }
    crate::tsv::write_tsv_quote_all(out, &cols, &rows).map_err(|x| EvalError::Write {
        path: out.to_path_buf(),
        msg: x.to_string(),
    })
}

/// The A-OKVQA split of the items (`val` for `val2017/...` images), default `val`.
fn aokvqa_split(items: &[BenchItem]) -> String {
    items
        .iter()
        .find_map(|it| match &it.image {
            ImageRef::Path { path } => path.split_once("2017/").map(|(s, _)| s.to_string()),
            _ => None,
        })
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "val".into())
}

/// Writes the prediction files the official tools read, into `out_dir`; returns the paths:
///
/// - MMBench: `predictions.tsv` (VLMEvalKit: dataset columns except `image`, plus `prediction`,
///   QUOTE_ALL);
/// - MME: `results/<task>.txt` (official `calculation.py`: `image \t question \t gt \t response`)
///   and `predictions.tsv` (VLMEvalKit);
/// - A-OKVQA: `predictions_<split>.json`, `{question_id: {multiple_choice, direct_answer}}` (both
///   from the ranked choice, as released);
/// - SEED-Bench: `predictions.jsonl` (`{"question_id", "prediction"}` lines), plus
///   `predictions.tsv` when the data is VLMEvalKit's `SEEDBench_IMG.tsv`.
///
/// `data` is the benchmark file the items were loaded from; `items` the evaluated items. Items
/// without a prediction are left out of every file.
pub fn write_official_predictions(
    benchmark: Benchmark,
    data: &Path,
    out_dir: &Path,
    items: &[BenchItem],
    predictions: &[Prediction],
) -> Result<Vec<PathBuf>, EvalError> {
    let by_id: HashMap<&str, &Prediction> =
        predictions.iter().map(|p| (p.id.as_str(), p)).collect();
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |e: String| EvalError::Write {
            path: path.clone(),
            msg: e,
        }
    };
    let answered: Vec<BenchItem> = items
        .iter()
        .filter(|it| by_id.contains_key(it.id.as_str()))
        .cloned()
        .collect();
    let mut written = Vec::new();
    match benchmark {
        Benchmark::MMBench => {
            let path = out_dir.join("predictions.tsv");
            write_vlmevalkit_mcq_predictions(data, &path, &by_id)?;
            written.push(path);
        }
        Benchmark::Mme => {
            let responses: HashMap<String, String> = predictions
                .iter()
                .map(|p| (p.id.clone(), p.text.clone()))
                .collect();
            let dir = out_dir.join("results");
            written.extend(
                crate::mme::write_official_results(&dir, &answered, &responses)
                    .map_err(|e| werr(&dir)(e.to_string()))?,
            );
            let tsv = out_dir.join("predictions.tsv");
            crate::mme::write_vlmevalkit_predictions(&tsv, &answered, &responses)
                .map_err(|e| werr(&tsv)(e.to_string()))?;
            written.push(tsv);
        }
        Benchmark::Aokvqa => {
            let path = out_dir.join(format!("predictions_{}.json", aokvqa_split(items)));
            let preds: crate::aokvqa::AokvqaPredictions = answered
                .iter()
                .map(|it| {
                    let t = by_id[it.id.as_str()].text.clone();
                    (
                        it.id.clone(),
                        crate::aokvqa::AokvqaPrediction::new(Some(t.clone()), Some(t)),
                    )
                })
                .collect();
            crate::aokvqa::write_predictions(&path, &preds)
                .map_err(|e| werr(&path)(e.to_string()))?;
            written.push(path);
        }
        Benchmark::SeedBench => {
            let path = out_dir.join("predictions.jsonl");
            let preds: Vec<crate::seedbench::SeedPrediction> = answered
                .iter()
                .map(|it| crate::seedbench::SeedPrediction {
                    question_id: it.id.clone(),
                    prediction: by_id[it.id.as_str()].text.clone(),
                })
                .collect();
            crate::seedbench::write_predictions(&path, &preds)
                .map_err(|e| werr(&path)(e.to_string()))?;
            written.push(path);
            if is_tsv(data) {
                let tsv = out_dir.join("predictions.tsv");
                write_vlmevalkit_mcq_predictions(data, &tsv, &by_id)?;
                written.push(tsv);
            }
        }
    }
    Ok(written)
}

/// Scores of a run, from the benchmark's official scorer.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The scorer's full report (serialisable; written as scores.json).
    pub json: serde_json::Value,
    /// Markdown summary (report.md).
    pub markdown: String,
    /// Item id -> answered correctly, by the benchmark's own rule (MMBench: the circular group
    /// of a main question; A-OKVQA: MC; MME: the official parse; SEED-Bench: exact letter).
    pub verdicts: HashMap<String, bool>,
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| serde_json::json!({"error": format!("cannot serialise report: {e}")}))
}

/// Scores the files written by [`write_official_predictions`] with this crate's official-identical
/// scorers. Only the evaluated `items` are scored (a `--limit` run is not diluted by the
/// questions it skipped). MME is scored with `calculation.py`'s rules; when all 14 tasks are
/// present VLMEvalKit's variant is reported too, else the tasks present are scored one by one.
pub fn score_predictions(
    benchmark: Benchmark,
    data: &Path,
    out_dir: &Path,
    items: &[BenchItem],
    predictions: &[Prediction],
) -> Result<Scored, EvalError> {
    let serr = |path: &Path| {
        let path = path.to_path_buf();
        move |e: String| EvalError::Load {
            path: path.clone(),
            msg: format!("scoring failed: {e}"),
        }
    };
    let selected: HashSet<&str> = items.iter().map(|it| it.id.as_str()).collect();
    match benchmark {
        Benchmark::MMBench => {
            let pred_file = out_dir.join("predictions.tsv");
            let r = crate::mmbench::score_mmbench(
                data,
                &pred_file,
                &crate::mmbench::McqOptions::default(),
            )
            .map_err(|e| serr(&pred_file)(e.to_string()))?;
            let verdicts = r
                .circular
                .groups
                .iter()
                .map(|(g, v)| (g.to_string(), v.hit == 1))
                .collect();
            Ok(Scored {
                json: to_json(&r),
                markdown: r.to_markdown(),
                verdicts,
            })
        }
        Benchmark::Mme => score_mme(out_dir, items, predictions),
        Benchmark::Aokvqa => {
            let pred_file = out_dir.join(format!("predictions_{}.json", aokvqa_split(items)));
            let mut ds = crate::aokvqa::load_aokvqa(data).map_err(|e| serr(data)(e.to_string()))?;
            ds.retain(|q| selected.contains(q.question_id.as_str()));
            let preds = crate::aokvqa::read_predictions(&pred_file)
                .map_err(|e| serr(&pred_file)(e.to_string()))?;
            let name = pred_file
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let r = crate::aokvqa::score(&ds, &preds, &name)
                .map_err(|e| serr(&pred_file)(e.to_string()))?;
            if !r.input_issues.is_clean() {
                tracing::warn!("{}", r.input_issues.summary());
            }
            let verdicts = r
                .items
                .iter()
                .map(|i| (i.question_id.clone(), i.mc_item_acc_x100 == 100.0))
                .collect();
            Ok(Scored {
                json: to_json(&r),
                markdown: r.to_markdown(),
                verdicts,
            })
        }
        Benchmark::SeedBench if is_tsv(data) => {
            let pred_file = out_dir.join("predictions.tsv");
            let r = crate::seedbench::score_vlmevalkit(
                data,
                &pred_file,
                &crate::mmbench::McqOptions::default(),
            )
            .map_err(|e| serr(&pred_file)(e.to_string()))?;
            let verdicts = r
                .items
                .iter()
                .map(|i| (i.index.clone(), i.hit == 1))
                .collect();
            Ok(Scored {
                json: to_json(&r),
                markdown: r.to_markdown(),
                verdicts,
            })
        }
        Benchmark::SeedBench => {
            let pred_file = out_dir.join("predictions.jsonl");
            let mut ann =
                crate::seedbench::load_seed_json(data).map_err(|e| serr(data)(e.to_string()))?;
            ann.questions
                .retain(|q| selected.contains(q.question_id.as_str()));
            let preds = crate::seedbench::read_predictions(&pred_file)
                .map_err(|e| serr(&pred_file)(e.to_string()))?;
            let mut r =
                crate::seedbench::score_official(&ann, &preds, &crate::seedbench::SeedTask::Image)
                    .map_err(|e| serr(&pred_file)(e.to_string()))?;
            r.input_issues.file = pred_file.display().to_string();
            if !r.input_issues.is_clean() {
                tracing::warn!("{}", r.input_issues.summary());
            }
            let verdicts = r
                .items
                .iter()
                .map(|i| (i.question_id.clone(), i.correct))
                .collect();
            Ok(Scored {
                json: to_json(&r),
                markdown: r.to_markdown(),
                verdicts,
            })
        }
    }
}

fn score_mme(
    out_dir: &Path,
    items: &[BenchItem],
    predictions: &[Prediction],
) -> Result<Scored, EvalError> {
    let results = out_dir.join("results");
    let serr = |path: &Path, e: String| EvalError::Load {
        path: path.to_path_buf(),
        msg: format!("scoring failed: {e}"),
    };
    let answered: HashSet<&str> = predictions.iter().map(|p| p.id.as_str()).collect();
    // Line k of <task>.txt is the k-th answered item of that task (write_official_results order).
    let mut ids_by_task: HashMap<String, Vec<String>> = HashMap::new();
    for it in items.iter().filter(|it| answered.contains(it.id.as_str())) {
        ids_by_task
            .entry(it.category.clone().unwrap_or_default())
            .or_default()
            .push(it.id.clone());
    }
    let verdicts_of = |official: &[crate::mme::MmeOfficialItem]| -> HashMap<String, bool> {
        official
            .iter()
            .filter_map(|o| {
                let id = ids_by_task.get(&o.task)?.get(o.line.checked_sub(1)?)?;
                Some((id.clone(), o.correct))
            })
            .collect()
    };
    let complete = crate::mme::all_tasks().all(|t| ids_by_task.contains_key(t));
    if complete {
        let r =
            crate::mme::score_official_dir(&results).map_err(|e| serr(&results, e.to_string()))?;
        let tsv = out_dir.join("predictions.tsv");
        let (vlm_json, vlm_md) = match crate::mme::score_vlmevalkit(&tsv) {
            Ok(v) => (to_json(&v), v.to_markdown()),
            Err(e) => (
                serde_json::json!({"error": e.to_string()}),
                format!("VLMEvalKit MME scoring failed: {e}\n"),
            ),
        };
        let verdicts = verdicts_of(&r.items);
        let markdown = format!("{}\n{}", r.to_markdown(), vlm_md);
        return Ok(Scored {
            json: serde_json::json!({"official": to_json(&r), "vlmevalkit": vlm_json}),
            markdown,
            verdicts,
        });
    }
    // Partial run: calculation.py needs all 14 files, so score the tasks present one by one.
    let mut tasks = Vec::new();
    let mut all_items = Vec::new();
    let mut rows = Vec::new();
    for task in crate::mme::all_tasks() {
        if !ids_by_task.contains_key(task) {
            continue;
        }
        let path = results.join(format!("{task}.txt"));
        let text = std::fs::read_to_string(&path).map_err(|e| serr(&path, e.to_string()))?;
        let lines = crate::mme::python_readlines(&text);
        let (score, its, _) = crate::mme::score_official_task(task, &path, &lines)
            .map_err(|e| serr(&path, e.to_string()))?;
        rows.push(vec![
            task.to_string(),
            crate::report::py_float_repr(score.score),
            crate::report::py_float_repr(score.acc * 100.0),
            crate::report::py_float_repr(score.acc_plus * 100.0),
        ]);
        tasks.push(score);
        all_items.extend(its);
    }
    let verdicts = verdicts_of(&all_items);
    let markdown = format!(
        "## MME (official calculation.py rules, partial run: {} of 14 tasks, no totals)\n\n{}",
        tasks.len(),
        crate::report::markdown_table(&["task", "score", "acc", "acc+"], &rows)
    );
    Ok(Scored {
        json: serde_json::json!({"partial": true, "tasks": tasks, "items": all_items}),
        markdown,
        verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmbench_post_processing_matches_opencompass() {
        assert_eq!(mmbench_answer("B. a horse###Human: x", true), "B");
        assert_eq!(mmbench_answer("Assistant: The answer is C. cat", true), "C");
        assert_eq!(mmbench_answer("  a horse", true), "a horse");
        // The released character-set strips eat s/g/m letters at both ends (Python gives "la").
        assert_eq!(mmbench_answer("glass", true), "la");
        assert_eq!(mmbench_answer("glass</s>", false), "glass");
        assert_eq!(mmbench_answer("", true), "");
    }

    #[test]
    fn aokvqa_answer_released_and_clean() {
        assert_eq!(aokvqa_answer("Mr. Smith", true), "mr");
        assert_eq!(aokvqa_answer("Red Car", true), "red car");
        assert_eq!(aokvqa_answer("Mr. Smith", false), "Mr. Smith");
    }

    #[test]
    fn benchmark_names_parse() {
        for b in [
            Benchmark::MMBench,
            Benchmark::Mme,
            Benchmark::Aokvqa,
            Benchmark::SeedBench,
        ] {
            assert_eq!(b.as_str().parse::<Benchmark>().unwrap(), b);
        }
        assert_eq!("A-OKVQA".parse::<Benchmark>().unwrap(), Benchmark::Aokvqa);
        assert!("vqa".parse::<Benchmark>().is_err());
    }

    #[test]
    fn config_refuses_wrong_method() {
        let mut c = RunConfig::new(Benchmark::Aokvqa);
        c.method = Method::Generate;
        assert!(c.check().is_err());
        let mut c = RunConfig::new(Benchmark::SeedBench);
        c.method = Method::Generate;
        assert!(c.check().is_ok());
        assert_eq!(c.style(), PromptStyle::MMBench);
        let mut c = RunConfig::new(Benchmark::Mme);
        c.method = Method::Rank;
        assert!(c.check().is_err());
        let mut c = RunConfig::new(Benchmark::MMBench);
        assert_eq!(c.style(), PromptStyle::MMBench);
        c.method = Method::Rank;
        assert!(c.check().is_ok());
        assert_eq!(c.style(), PromptStyle::McqRank);
    }
}
