//! The loop's report: what every round measured, where the generated data went, what training
//! did and how long each step took, as JSON (machine-readable, round-trips), Markdown (for a
//! researcher) and SVG charts (accuracy by round, accepted data by round); plus the comparison of
//! several runs ("arms") of an ablation.
//!
//! `markdown` renders a run, `chart` draws its SVGs, `ablation` compares runs.
//!
//! The charts are drawn with plotters' pure-Rust SVG backend: text is written as `<text>`
//! elements and laid out by plotters' built-in size estimate, so no system font is needed.
//!
//! ```no_run
//! use mde_loop::report::{write_report, LoopReport};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let r: LoopReport = mde_core::io::read_json("runs/demo/report/report.json")?;
//! let files = write_report("runs/demo/report".as_ref(), &r)?;
//! println!("{}", files.markdown.display());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mde_core::io::{atomic_write, write_json};
use mde_eval::report::markdown_table;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::config::PerType;
use crate::{LoopError, Result};

mod ablation;
mod chart;
mod markdown;

pub use ablation::*;
pub use chart::{accuracy_chart_svg, data_chart_svg};
pub use markdown::render_markdown;

/// How many of the weakest types at round 0 the "weakest-k gain" averages over.
pub const WEAKEST_K: usize = 3;

/// One benchmark evaluation of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Benchmark name.
    pub benchmark: String,
    /// Scoring method (e.g. `likelihood`, `generation`).
    pub method: String,
    /// Scored items.
    pub items: usize,
    /// Overall accuracy in percent.
    pub overall: f64,
    /// Accuracy per question type in percent (0..100).
    pub per_type: PerType,
    /// Scored items per question type.
    pub per_type_items: BTreeMap<String, usize>,
}

/// What one training step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Training mode (e.g. `Lora`, `full (from scratch)`).
    pub mode: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Loss of the first logged step.
    pub first_loss: Option<f32>,
    /// Loss of the last logged step.
    pub final_loss: Option<f32>,
    /// Wall seconds.
    pub seconds: f64,
    /// Dataset name -> records trained on.
    pub examples: BTreeMap<String, usize>,
}

/// Everything one round measured and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// Round number; 0 is the base model.
    pub round: usize,
    /// Mining-benchmark evaluation of the model at the end of this round.
    pub mine: Option<EvalSummary>,
    /// Held-out reporting-benchmark evaluation of the model at the end of this round.
    pub report: Option<EvalSummary>,
    /// With `[abs] chance = "blind"`: the mining benchmark answered with a blank image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<EvalSummary>,
    /// `chance_discounted`: the chance accuracy (0..1) each type's error was discounted by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance_levels: Option<PerType>,
    /// Error rates (0..1) that drove this round's sampling (`None` in round 0).
    pub error_rates: Option<PerType>,
    /// Sampling probability per type (0..1).
    pub sampling_probabilities: Option<PerType>,
    /// Teacher queries per type.
    pub queries_per_type: Option<BTreeMap<String, usize>>,
    /// Generated items kept after validation, per type.
    pub accepted_per_type: Option<BTreeMap<String, usize>>,
    /// Generated items dropped by validation.
    pub dropped: Option<usize>,
    /// Validator flag -> count.
    pub flags: Option<BTreeMap<String, usize>>,
    /// Training of this round (round 0: the base model's pretraining, if it was trained here).
    pub train: Option<TrainSummary>,
    /// Step name -> wall seconds.
    pub seconds: BTreeMap<String, f64>,
}

/// A whole loop run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopReport {
    /// Run name (the output folder's name).
    pub name: String,
    /// Fingerprint of the configuration that produced the run.
    pub fingerprint: String,
    /// ABS sampling strategy.
    pub strategy: String,
    /// Model description.
    pub model: String,
    /// Teacher description.
    pub teacher: String,
    /// Rounds in order, round 0 first.
    pub rounds: Vec<RoundSummary>,
    /// Wall seconds of the whole run.
    pub total_seconds: f64,
    /// Free-form remarks shown at the end of the Markdown.
    pub notes: Vec<String>,
}

/// Paths of the files [`write_report`] / [`write_ablation`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFiles {
    /// `report.json` / `ablation.json`.
    pub json: PathBuf,
    /// `report.md` / `ablation.md`.
    pub markdown: PathBuf,
    /// `accuracy_by_round.svg` / `ablation.svg`.
    pub chart: PathBuf,
    /// `data_by_round.svg`, when some round generated data.
    pub data_chart: Option<PathBuf>,
}

/// One run of an ablation, with its label (e.g. the strategy name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationArm {
    /// Label of the arm in tables and charts.
    pub label: String,
    /// The arm's loop report.
    pub report: LoopReport,
}

/// What [`write_ablation`] derives from one arm (written to `ablation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    /// Label of the arm.
    pub label: String,
    /// Run name.
    pub name: String,
    /// ABS strategy.
    pub strategy: String,
    /// Configuration fingerprint.
    pub fingerprint: String,
    /// Benchmark the accuracies come from (the reporting benchmark; the mining benchmark when
    /// the run had no reporting benchmark).
    pub benchmark: Option<String>,
    /// First round with an evaluation (normally 0).
    pub first_round: Option<usize>,
    /// Last round with an evaluation.
    pub last_round: Option<usize>,
    /// Per-type accuracy (%) at the first round.
    pub round0: PerType,
    /// Per-type accuracy (%) at the last round.
    pub last: PerType,
    /// Per-type `last - round0` in percentage points (types present in both).
    pub delta: PerType,
    /// The [`WEAKEST_K`] weakest types at the first round (ascending accuracy, ties by name).
    pub weakest: Vec<String>,
    /// Mean delta over `weakest` (those present at the last round).
    pub weakest_mean_delta: Option<f64>,
    /// Overall accuracy (%) at the first round.
    pub overall_round0: Option<f64>,
    /// Overall accuracy (%) at the last round.
    pub overall_last: Option<f64>,
    /// `overall_last - overall_round0`.
    pub overall_delta: Option<f64>,
    /// Generated items kept, per type, summed over rounds.
    pub accepted_per_type: BTreeMap<String, usize>,
    /// Teacher queries per type, summed over rounds.
    pub queries_per_type: BTreeMap<String, usize>,
}

/// The content of `ablation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationSummary {
    /// The `k` of the weakest-k mean.
    pub k: usize,
    /// Union of the types of all arms.
    pub types: Vec<String>,
    /// One entry per arm, in the given order.
    pub arms: Vec<ArmSummary>,
    /// Per strategy (in first-seen order), mean and sample standard deviation over its arms
    /// (e.g. seeds); only strategies with more than one arm.
    #[serde(default)]
    pub by_strategy: Vec<StrategyStats>,
}

/// Mean ± sample standard deviation of a strategy's arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyStats {
    pub strategy: String,
    /// Number of arms (seeds).
    pub arms: usize,
    /// Overall accuracy change (points).
    pub overall_delta: MeanSd,
    /// Mean change of each arm's weakest-k types (points).
    pub weakest_mean_delta: MeanSd,
    /// Per-type change (points).
    pub delta: BTreeMap<String, MeanSd>,
}

/// A mean and its sample standard deviation (0 for one value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    pub mean: f64,
    pub sd: f64,
}

impl MeanSd {
    /// Of the finite values of `xs`; `None` when there are none.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Option<MeanSd> {
        let v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(MeanSd { mean, sd })
    }
}

fn strategy_stats(arms: &[ArmSummary], types: &[String]) -> Vec<StrategyStats> {
    let mut order: Vec<&str> = Vec::new();
    for a in arms {
        if !order.contains(&a.strategy.as_str()) {
            order.push(&a.strategy);
        }
    }
    order
        .into_iter()
        .filter_map(|st| {
            let group: Vec<&ArmSummary> = arms.iter().filter(|a| a.strategy == st).collect();
            if group.len() < 2 {
                return None;
            }
            let nan = f64::NAN;
            Some(StrategyStats {
                strategy: st.to_string(),
                arms: group.len(),
                overall_delta: MeanSd::of(group.iter().map(|a| a.overall_delta.unwrap_or(nan)))?,
                weakest_mean_delta: MeanSd::of(
                    group.iter().map(|a| a.weakest_mean_delta.unwrap_or(nan)),
                )?,
                delta: types
                    .iter()
                    .filter_map(|t| {
                        let m = MeanSd::of(
                            group.iter().map(|a| a.delta.get(t).copied().unwrap_or(nan)),
                        )?;
                        Some((t.clone(), m))
                    })
                    .collect(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Which evaluation a report is about.

/// The charts and the headline table use the held-out reporting benchmark; a run without one
/// (all `report` fields `None`) falls back to the mining benchmark rather than showing nothing.
fn uses_report_bench(r: &LoopReport) -> bool {
    r.rounds.iter().any(|x| x.report.is_some())
}

fn primary_eval<'a>(r: &LoopReport, round: &'a RoundSummary) -> Option<&'a EvalSummary> {
    if uses_report_bench(r) {
        round.report.as_ref()
    } else {
        round.mine.as_ref()
    }
}

/// `(round, eval)` for every round that has a primary evaluation.
fn primary_series(r: &LoopReport) -> Vec<(usize, &EvalSummary)> {
    r.rounds
        .iter()
        .filter_map(|x| primary_eval(r, x).map(|e| (x.round, e)))
        .collect()
}

fn union_types<'a, I: IntoIterator<Item = &'a PerType>>(maps: I) -> Vec<String> {
    let set: BTreeSet<&String> = maps.into_iter().flat_map(|m| m.keys()).collect();
    set.into_iter().cloned().collect()
}

/// The `k` weakest types at the first evaluated round and their gain by the last one.
struct Weakest {
    first_round: usize,
    last_round: usize,
    /// (type, first-round accuracy, gain by the last round)
    types: Vec<(String, f64, Option<f64>)>,
    mean_gain: Option<f64>,
}

fn weakest_gain(series: &[(usize, &EvalSummary)], k: usize) -> Option<Weakest> {
    let (first_round, first) = series.first()?;
    let (last_round, last) = series.last()?;
    let mut base: Vec<(&String, f64)> = first
        .per_type
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(t, v)| (t, *v))
        .collect();
    // Ascending accuracy, ties broken by name so the choice is deterministic.
    base.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let types: Vec<(String, f64, Option<f64>)> = base
        .into_iter()
        .take(k)
        .map(|(t, v)| (t.clone(), v, last.per_type.get(t).map(|l| l - v)))
        .collect();
    let gains: Vec<f64> = types.iter().filter_map(|x| x.2).collect();
    let mean_gain = (!gains.is_empty()).then(|| gains.iter().sum::<f64>() / gains.len() as f64);
    Some(Weakest {
        first_round: *first_round,
        last_round: *last_round,
        types,
        mean_gain,
    })
}

// ---------------------------------------------------------------------------------------------
// Formatting.

const DASH: &str = "–";

/// Writes `report.json`, `report.md`, `accuracy_by_round.svg` and (when some round generated
/// data) `data_by_round.svg` into `dir`, each atomically.
pub fn write_report(dir: &Path, r: &LoopReport) -> Result<ReportFiles> {
    let files = ReportFiles {
        json: dir.join("report.json"),
        markdown: dir.join("report.md"),
        chart: dir.join("accuracy_by_round.svg"),
        data_chart: None,
    };
    write_json(&files.json, r)?;
    atomic_write(&files.markdown, render_markdown(r).as_bytes())?;
    atomic_write(&files.chart, accuracy_chart_svg(r)?.as_bytes())?;
    let data_chart = match data_chart_svg(r)? {
        Some(svg) => {
            let p = dir.join("data_by_round.svg");
            atomic_write(&p, svg.as_bytes())?;
            Some(p)
        }
        None => None,
    };
    Ok(ReportFiles {
        data_chart,
        ..files
    })
}
