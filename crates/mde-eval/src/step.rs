//! The evaluate step, written once: select the items, run the model (resumable), write the
//! files the official tools read, score them with the official rules, and count accuracy per
//! question type. The loop's evaluation steps, `mde eval`, `mde train`'s A-OKVQA validation and
//! the examples all call [`evaluate`]; what each writes around it (summaries, reports) is theirs.
//!
//! Run folder layout of one evaluation ([`EvalDir`]):
//!
//! ```text
//! DIR/predictions.jsonl   append-only store keyed by item id (resume)
//! DIR/official/...        the benchmark's own prediction files (MMBench TSV, MME results ...)
//! DIR/scores.json         the official scores ([`write_scores`])
//! DIR/scores.md           the same as a Markdown summary
//! ```
//!
//! ```
//! use mde_core::model::{EvalModel, EvalRequest, ModelError};
//! use mde_core::records::{BenchItem, ImageRef};
//! use mde_eval::runner::{Benchmark, ImageLoader, RunConfig};
//! use mde_eval::step::{accuracy_by_type, evaluate, EvalDir};
//!
//! struct First;
//! impl EvalModel for First {
//!     fn name(&self) -> String { "first".into() }
//!     fn max_batch(&self) -> usize { 4 }
//!     fn generate(&mut self, r: &[EvalRequest]) -> Result<Vec<String>, ModelError> {
//!         Ok(r.iter().map(|_| "A".to_string()).collect())
//!     }
//!     fn rank(&mut self, r: &[EvalRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
//!         Ok(r.iter().map(|q| (0..q.choices.len()).map(|i| i as f32).collect()).collect())
//!     }
//! }
//! let dir = tempfile::tempdir().unwrap();
//! let data = dir.path().join("aokvqa_v1p0_val.json");
//! std::fs::write(dir.path().join("x.png"), b"not decoded by this model").unwrap();
//! std::fs::write(&data, r#"[{"question_id": "q1", "question": "Which?", "split": "val",
//!     "image_id": 1, "choices": ["a", "b"], "correct_choice_idx": 0,
//!     "direct_answers": ["a"], "difficult_direct_answer": false, "rationales": []}]"#).unwrap();
//! let items = mde_eval::runner::load_items(Benchmark::Aokvqa, &data, None).unwrap();
//! let items: Vec<BenchItem> = items
//!     .into_iter()
//!     .map(|mut it| { it.image = ImageRef::Path { path: "x.png".into() }; it })
//!     .collect();
//! let run = EvalDir::new(dir.path().join("eval"));
//! let ev = evaluate(
//!     &mut First, Benchmark::Aokvqa, &data, &items,
//!     &RunConfig::new(Benchmark::Aokvqa), &ImageLoader::new(Some(dir.path().into())), &run,
//! ).unwrap();
//! let scored = ev.scored.unwrap();
//! assert_eq!(scored.verdicts["q1"], true);
//! assert!(run.predictions().is_file());
//! assert_eq!(accuracy_by_type(&ev.selected, &scored.verdicts)["untyped"].total, 1);
//! ```
use crate::badcase::question_type_of;
use crate::error::EvalError;
use crate::runner::{
    run_predictions, score_predictions, select_items, write_official_predictions, Benchmark,
    ImageLoader, RunConfig, RunOutcome, Scored,
};
use mde_core::model::EvalModel;
use mde_core::records::BenchItem;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The folder of one evaluation and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalDir {
    pub dir: PathBuf,
}

impl EvalDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EvalDir { dir: dir.into() }
    }
    /// The resumable prediction store.
    pub fn predictions(&self) -> PathBuf {
        self.dir.join("predictions.jsonl")
    }
    /// Where the official prediction files go.
    pub fn official(&self) -> PathBuf {
        self.dir.join("official")
    }
    /// The official scores (JSON).
    pub fn scores(&self) -> PathBuf {
        self.dir.join("scores.json")
    }
    /// The official scores as Markdown.
    pub fn scores_md(&self) -> PathBuf {
        self.dir.join("scores.md")
    }
}

/// Writes `scores.json` (`{benchmark, items, scores}`: the scorer's full report) and
/// `scores.md` (its Markdown summary) into `run`, atomically.
pub fn write_scores(
    run: &EvalDir,
    benchmark: Benchmark,
    items: usize,
    scored: &Scored,
) -> Result<(), mde_core::CoreError> {
    mde_core::io::write_json(
        run.scores(),
        &serde_json::json!({
            "benchmark": benchmark.to_string(),
            "items": items,
            "scores": scored.json,
        }),
    )?;
    mde_core::io::atomic_write(run.scores_md(), scored.markdown.as_bytes())
}

/// What one evaluation produced.
#[derive(Debug)]
pub struct Evaluated {
    /// The items evaluated (`limit` applied, first occurrence of each id).
    pub selected: Vec<BenchItem>,
    pub outcome: RunOutcome,
    /// The official prediction files written.
    pub official_files: Vec<PathBuf>,
    /// The official scores, or why scoring failed. Kept apart from the step's own result: the
    /// predictions are on disk either way, and a caller may report them before failing.
    pub scored: Result<Scored, EvalError>,
}

/// Runs the evaluate step of `items` of `benchmark` (read from `data`) with `model` in `run`.
/// Resumable: items already in the prediction store are not asked again.
pub fn evaluate<M: EvalModel + ?Sized>(
    model: &mut M,
    benchmark: Benchmark,
    data: &Path,
    items: &[BenchItem],
    cfg: &RunConfig,
    images: &ImageLoader,
    run: &EvalDir,
) -> Result<Evaluated, EvalError> {
    let selected: Vec<BenchItem> = select_items(items, cfg).into_iter().cloned().collect();
    let outcome = run_predictions(model, &selected, &run.predictions(), cfg, images)?;
    let official = run.official();
    let official_files =
        write_official_predictions(benchmark, data, &official, &selected, &outcome.predictions)?;
    let scored = score_predictions(benchmark, data, &official, &selected, &outcome.predictions);
    Ok(Evaluated {
        selected,
        outcome,
        official_files,
        scored,
    })
}

/// Correct and scored items of one question type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    pub correct: usize,
    pub total: usize,
}

impl TypeCount {
    /// Accuracy in percent (0 for no items).
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

/// Per question type (`untyped` for items without one), the scored items and the correct
/// ones by the benchmark's own verdicts; items without a verdict are left out.
pub fn accuracy_by_type(
    items: &[BenchItem],
    verdicts: &HashMap<String, bool>,
) -> BTreeMap<String, TypeCount> {
    let mut out: BTreeMap<String, TypeCount> = BTreeMap::new();
    for it in items {
        let Some(&ok) = verdicts.get(&it.id) else {
            continue;
        };
        let t = question_type_of(it).unwrap_or_else(|| "untyped".into());
        let e = out.entry(t).or_default();
        e.correct += usize::from(ok);
        e.total += 1;
    }
    out
}
