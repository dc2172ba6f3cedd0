//! The loop's report: what every round measured, where the generated data went, what training
//! did and how long each step took, as JSON (machine-readable, round-trips), Markdown (for a
//! researcher) and SVG charts (accuracy by round, accepted data by round); plus the comparison of
//! several runs ("arms") of an ablation.
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

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        DASH.into()
    }
}

fn opt_pct(x: Option<f64>) -> String {
    x.map(pct).unwrap_or_else(|| DASH.into())
}

/// Signed percentage points; a value that rounds to zero prints as `0.0` (never `-0.0`).
fn delta(x: f64) -> String {
    if !x.is_finite() {
        DASH.into()
    } else if (x * 10.0).round() == 0.0 {
        "0.0".into()
    } else {
        format!("{x:+.1}")
    }
}

fn opt_delta(x: Option<f64>) -> String {
    x.map(delta).unwrap_or_else(|| DASH.into())
}

fn opt_count(x: Option<usize>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| DASH.into())
}

fn secs(x: f64) -> String {
    format!("{x:.1}")
}

fn hms(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return DASH.into();
    }
    let s = x.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn loss(x: Option<f32>) -> String {
    x.map(|v| format!("{v:.4}")).unwrap_or_else(|| DASH.into())
}

fn kv_list(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return DASH.into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Markdown.

/// Accuracy-by-round table of one benchmark (`pick` chooses mine or report).
fn accuracy_table(
    r: &LoopReport,
    pick: impl Fn(&RoundSummary) -> Option<&EvalSummary>,
) -> Option<String> {
    let series: Vec<(usize, &EvalSummary)> = r
        .rounds
        .iter()
        .filter_map(|x| pick(x).map(|e| (x.round, e)))
        .collect();
    let (_, first) = *series.first()?;
    let (_, last) = *series.last()?;
    let mut headers = vec!["type".to_string(), "n".to_string()];
    headers.extend(r.rounds.iter().map(|x| format!("round {}", x.round)));
    headers.push("Δ last−first".into());
    let types = union_types(series.iter().map(|(_, e)| &e.per_type));
    let mut rows = Vec::new();
    for t in &types {
        let mut row = vec![
            t.clone(),
            opt_count(
                series
                    .iter()
                    .find_map(|(_, e)| e.per_type_items.get(t).copied()),
            ),
        ];
        row.extend(
            r.rounds
                .iter()
                .map(|x| opt_pct(pick(x).and_then(|e| e.per_type.get(t).copied()))),
        );
        let d = match (first.per_type.get(t), last.per_type.get(t)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        row.push(opt_delta(d));
        rows.push(row);
    }
    let mut row = vec!["**overall**".to_string(), first.items.to_string()];
    row.extend(r.rounds.iter().map(|x| opt_pct(pick(x).map(|e| e.overall))));
    row.push(delta(last.overall - first.overall));
    rows.push(row);
    let bench = &first.benchmark;
    Some(format!(
        "Benchmark `{bench}` (method `{}`, {} items). Accuracy in %; Δ is in percentage points \
         between the first and the last evaluated round; n = items of the type.\n\n{}",
        first.method,
        first.items,
        markdown_table(&headers, &rows)
    ))
}

/// Renders the loop report as Markdown (see the module docs for what it contains).
pub fn render_markdown(r: &LoopReport) -> String {
    let mut md = String::new();
    md.push_str(&format!("# Loop report: {}\n\n", r.name));
    md.push_str(&format!(
        "- strategy: **{}**\n- model: {}\n- teacher: {}\n- fingerprint: `{}`\n\
         - rounds: {} (round 0 = base model)\n- total wall time: {} s ({})\n\n",
        r.strategy,
        r.model,
        r.teacher,
        r.fingerprint,
        r.rounds.len(),
        secs(r.total_seconds),
        hms(r.total_seconds)
    ));

    let report_bench = uses_report_bench(r);
    md.push_str("## Accuracy by round (reporting benchmark)\n\n");
    match accuracy_table(r, |x| x.report.as_ref()) {
        Some(t) => md.push_str(&t),
        None => md.push_str("No reporting-benchmark evaluation was recorded.\n"),
    }
    md.push('\n');

    let series = primary_series(r);
    match weakest_gain(&series, WEAKEST_K) {
        Some(w) if !w.types.is_empty() => {
            let bench = if report_bench { "reporting" } else { "mining" };
            let list = w
                .types
                .iter()
                .map(|(t, v, g)| format!("{t} ({}%, {})", pct(*v), opt_delta(*g)))
                .collect::<Vec<_>>()
                .join(", ");
            md.push_str(&format!(
                "**Weakest {} types at round {}** ({bench} benchmark): {list}. \
                 Mean gain by round {}: **{}** points.\n\n",
                w.types.len(),
                w.first_round,
                w.last_round,
                opt_delta(w.mean_gain)
            ));
        }
        _ => md.push_str("Weakest types: – (no evaluation recorded).\n\n"),
    }

    md.push_str("## Accuracy by round (mining benchmark)\n\n");
    match accuracy_table(r, |x| x.mine.as_ref()) {
        Some(t) => md.push_str(&t),
        None => md.push_str("No mining-benchmark evaluation was recorded.\n"),
    }
    md.push('\n');
    if let Some(t) = accuracy_table(r, |x| x.blind.as_ref()) {
        md.push_str("## Blind baseline (mining benchmark, blank image)\n\n");
        md.push_str(
            "What each round's model answers without seeing the image: the chance level \
             `chance_discounted` discounts error rates by (never below 1 / number of choices).\n\n",
        );
        md.push_str(&t);
        md.push('\n');
    }

    md.push_str("## Where the data went\n\n");
    md.push_str(
        "Per generated round: the error rate on the mining benchmark that drove sampling, the \
         sampling probability, teacher queries and items kept after validation.\n\n",
    );
    let mut any_data = false;
    for x in &r.rounds {
        if x.error_rates.is_none()
            && x.sampling_probabilities.is_none()
            && x.queries_per_type.is_none()
            && x.accepted_per_type.is_none()
        {
            continue;
        }
        any_data = true;
        let mut set: BTreeSet<&String> = BTreeSet::new();
        set.extend(x.error_rates.iter().flat_map(|m| m.keys()));
        set.extend(x.sampling_probabilities.iter().flat_map(|m| m.keys()));
        set.extend(x.queries_per_type.iter().flat_map(|m| m.keys()));
        set.extend(x.accepted_per_type.iter().flat_map(|m| m.keys()));
        let chance = x.chance_levels.as_ref();
        let mut rows: Vec<Vec<String>> = set
            .iter()
            .map(|t| {
                let mut row = vec![
                    (*t).clone(),
                    opt_pct(
                        x.error_rates
                            .as_ref()
                            .and_then(|m| m.get(*t))
                            .map(|v| v * 100.0),
                    ),
                ];
                if let Some(c) = chance {
                    row.push(opt_pct(c.get(*t).map(|v| v * 100.0)));
                }
                row.extend([
                    opt_pct(
                        x.sampling_probabilities
                            .as_ref()
                            .and_then(|m| m.get(*t))
                            .map(|v| v * 100.0),
                    ),
                    opt_count(x.queries_per_type.as_ref().and_then(|m| m.get(*t).copied())),
                    opt_count(
                        x.accepted_per_type
                            .as_ref()
                            .and_then(|m| m.get(*t).copied()),
                    ),
                ]);
                row
            })
            .collect();
        let mut total = vec!["**total**".to_string(), DASH.into(), DASH.into()];
        if chance.is_some() {
            total.push(DASH.into());
        }
        total.extend([
            opt_count(x.queries_per_type.as_ref().map(|m| m.values().sum())),
            opt_count(x.accepted_per_type.as_ref().map(|m| m.values().sum())),
        ]);
        rows.push(total);
        let mut head = vec!["type", "error rate (%)"];
        if chance.is_some() {
            head.push("chance (%)");
        }
        head.extend(["sampling p (%)", "queries", "accepted"]);
        md.push_str(&format!("### Round {}\n\n", x.round));
        md.push_str(&markdown_table(&head, &rows));
        md.push('\n');
    }
    if !any_data {
        md.push_str("No round generated data.\n\n");
    }

    md.push_str("## Validation\n\n");
    let flag_names: BTreeSet<&String> = r
        .rounds
        .iter()
        .flat_map(|x| x.flags.iter().flat_map(|m| m.keys()))
        .collect();
    let val_rounds: Vec<&RoundSummary> = r
        .rounds
        .iter()
        .filter(|x| x.dropped.is_some() || x.flags.is_some() || x.accepted_per_type.is_some())
        .collect();
    if val_rounds.is_empty() {
        md.push_str("No generated items were validated.\n\n");
    } else {
        let mut headers = vec!["round".to_string(), "accepted".into(), "dropped".into()];
        headers.extend(flag_names.iter().map(|f| format!("flag `{f}`")));
        let rows: Vec<Vec<String>> = val_rounds
            .iter()
            .map(|x| {
                let mut row = vec![
                    x.round.to_string(),
                    opt_count(x.accepted_per_type.as_ref().map(|m| m.values().sum())),
                    opt_count(x.dropped),
                ];
                row.extend(flag_names.iter().map(|f| match &x.flags {
                    Some(m) => m.get(*f).copied().unwrap_or(0).to_string(),
                    None => DASH.into(),
                }));
                row
            })
            .collect();
        md.push_str(&markdown_table(&headers, &rows));
        md.push('\n');
    }

    md.push_str("## Training\n\n");
    let rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| match &x.train {
            Some(t) => vec![
                x.round.to_string(),
                t.mode.clone(),
                t.steps.to_string(),
                format!("{} → {}", loss(t.first_loss), loss(t.final_loss)),
                secs(t.seconds),
                kv_list(&t.examples),
            ],
            None => vec![
                x.round.to_string(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
            ],
        })
        .collect();
    md.push_str(&markdown_table(
        &[
            "round",
            "mode",
            "steps",
            "loss first → final",
            "seconds",
            "examples",
        ],
        &rows,
    ));
    md.push('\n');

    md.push_str("## Step timings (wall seconds)\n\n");
    let steps: BTreeSet<&String> = r.rounds.iter().flat_map(|x| x.seconds.keys()).collect();
    let mut headers = vec!["round".to_string()];
    headers.extend(steps.iter().map(|s| s.to_string()));
    headers.push("sum".into());
    let mut rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| {
            let mut row = vec![x.round.to_string()];
            row.extend(
                steps
                    .iter()
                    .map(|s| x.seconds.get(*s).map(|v| secs(*v)).unwrap_or(DASH.into())),
            );
            row.push(secs(x.seconds.values().sum()));
            row
        })
        .collect();
    let mut total = vec!["**all rounds**".to_string()];
    total.extend(steps.iter().map(|s| {
        secs(
            r.rounds
                .iter()
                .filter_map(|x| x.seconds.get(*s))
                .sum::<f64>(),
        )
    }));
    total.push(secs(r.rounds.iter().flat_map(|x| x.seconds.values()).sum()));
    rows.push(total);
    md.push_str(&markdown_table(&headers, &rows));
    md.push_str(&format!(
        "\nTotal wall time of the run: {} s ({}).\n",
        secs(r.total_seconds),
        hms(r.total_seconds)
    ));

    if !r.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &r.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Charts.

fn plot_err<E: std::fmt::Display>(e: E) -> LoopError {
    LoopError::Report(e.to_string())
}

const LEGEND_W: u32 = 220;
const ROW_H: u32 = 20;

fn canvas_height(legend_rows: usize) -> u32 {
    (70 + ROW_H * legend_rows as u32).max(480)
}

/// Draws a legend (filled swatch + label per entry) into its own area right of the plot, so it
/// never hides data whatever the number of types.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, RGBColor)],
) -> Result<()> {
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = 50 + (i as i32) * ROW_H as i32;
        area.draw(&Rectangle::new([(10, y - 6), (28, y + 6)], color.filled()))
            .map_err(plot_err)?;
        area.draw(&Text::new(
            label.clone(),
            (34, y - 7),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

fn series_color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Per-type accuracy on the reporting benchmark by round (the mining benchmark if the run has no
/// reporting benchmark): one line per type, the overall accuracy as a thicker black line, a
/// legend, y from 0 to 100.
pub fn accuracy_chart_svg(r: &LoopReport) -> Result<String> {
    let series = primary_series(r);
    let types = union_types(series.iter().map(|(_, e)| &e.per_type));
    let bench = series
        .first()
        .map(|(_, e)| e.benchmark.clone())
        .unwrap_or_else(|| "no evaluation recorded".into());
    let max_round = r.rounds.iter().map(|x| x.round).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let w = 760 + LEGEND_W;
        let h = canvas_height(types.len() + 1);
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("Accuracy by round: {bench} ({}, {})", r.name, r.strategy),
                ("sans-serif", 18).into_font(),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.2f64..max_round as f64 + 0.2, 0f64..100f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("accuracy (%)")
            .x_labels(max_round + 1)
            .x_label_formatter(&|x: &f64| {
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_labels(11)
            .draw()
            .map_err(plot_err)?;
        let mut entries = Vec::new();
        for (i, t) in types.iter().enumerate() {
            let color = series_color(i);
            let pts: Vec<(f64, f64)> = series
                .iter()
                .filter_map(|(k, e)| e.per_type.get(t).map(|v| (*k as f64, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(plot_err)?;
            entries.push((t.clone(), color));
        }
        let overall: Vec<(f64, f64)> = series
            .iter()
            .map(|(k, e)| (*k as f64, e.overall))
            .filter(|(_, v)| v.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(overall.clone(), BLACK.stroke_width(4)))
            .map_err(plot_err)?;
        chart
            .draw_series(overall.iter().map(|p| Circle::new(*p, 4, BLACK.filled())))
            .map_err(plot_err)?;
        entries.push(("overall".to_string(), BLACK));
        draw_legend(&legend, &entries)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Grouped vertical bars: one group per x category, one bar per series inside the group.
/// `values[s][c]` is series `s` at category `c`.
fn grouped_bars_svg(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    y_decimals: usize,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<String> {
    let (mut lo, mut hi) = (0f64, 0f64);
    for v in series.iter().flat_map(|(_, v)| v).filter(|v| v.is_finite()) {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    let pad = ((hi - lo) * 0.08).max(1.0);
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let n_cat = categories.len().max(1);
    let mut svg = String::new();
    {
        let plot_w = (120 + 60 * n_cat * series.len().max(1)).clamp(760, 1800) as u32;
        let h = canvas_height(series.len());
        let root = SVGBackend::with_string(&mut svg, (plot_w + LEGEND_W, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(plot_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(caption, ("sans-serif", 18).into_font())
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..n_cat as f64 - 0.5, lo..hi)
            .map_err(plot_err)?;
        let cats = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_label_formatter(&|y: &f64| format!("{y:.y_decimals$}"))
            .x_labels(n_cat)
            .x_label_formatter(&move |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_err)?;
        let group_w = 0.8;
        let bar_w = group_w / series.len().max(1) as f64;
        let mut entries = Vec::new();
        for (s, (label, values)) in series.iter().enumerate() {
            let color = series_color(s);
            let bars = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(c, v)| {
                    let x0 = c as f64 - group_w / 2.0 + s as f64 * bar_w;
                    Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.9, *v)], color.filled())
                });
            chart.draw_series(bars).map_err(plot_err)?;
            entries.push((label.clone(), color));
        }
        if lo < 0.0 {
            chart
                .draw_series(LineSeries::new(
                    [(-0.5, 0.0), (n_cat as f64 - 0.5, 0.0)],
                    BLACK.stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Accepted generated items per type per round as grouped bars; `None` if no round generated
/// anything.
pub fn data_chart_svg(r: &LoopReport) -> Result<Option<String>> {
    let rounds: Vec<(usize, &BTreeMap<String, usize>)> = r
        .rounds
        .iter()
        .filter_map(|x| x.accepted_per_type.as_ref().map(|m| (x.round, m)))
        .collect();
    if rounds.iter().all(|(_, m)| m.values().all(|v| *v == 0)) {
        return Ok(None);
    }
    let types: Vec<String> = rounds
        .iter()
        .flat_map(|(_, m)| m.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    let categories: Vec<String> = rounds.iter().map(|(k, _)| format!("round {k}")).collect();
    let series: Vec<(String, Vec<f64>)> = types
        .iter()
        .map(|t| {
            let v = rounds
                .iter()
                .map(|(_, m)| m.get(t).copied().unwrap_or(0) as f64)
                .collect();
            (t.clone(), v)
        })
        .collect();
    grouped_bars_svg(
        &format!("Accepted generated items per type ({})", r.name),
        "round",
        "items",
        0,
        &categories,
        &series,
    )
    .map(Some)
}

// ---------------------------------------------------------------------------------------------
// Writing.

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

fn sum_counts<'a, I: IntoIterator<Item = &'a BTreeMap<String, usize>>>(
    maps: I,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_insert(0) += v;
        }
    }
    out
}

/// Derives one arm's numbers (see [`ArmSummary`]).
pub fn summarize_arm(arm: &AblationArm, k: usize) -> ArmSummary {
    let r = &arm.report;
    let series = primary_series(r);
    let first = series.first();
    let last = series.last();
    let round0 = first.map(|(_, e)| e.per_type.clone()).unwrap_or_default();
    let lastm = last.map(|(_, e)| e.per_type.clone()).unwrap_or_default();
    let delta: PerType = round0
        .iter()
        .filter_map(|(t, a)| lastm.get(t).map(|b| (t.clone(), b - a)))
        .collect();
    let w = weakest_gain(&series, k);
    let overall_round0 = first.map(|(_, e)| e.overall);
    let overall_last = last.map(|(_, e)| e.overall);
    ArmSummary {
        label: arm.label.clone(),
        name: r.name.clone(),
        strategy: r.strategy.clone(),
        fingerprint: r.fingerprint.clone(),
        benchmark: first.map(|(_, e)| e.benchmark.clone()),
        first_round: first.map(|(k, _)| *k),
        last_round: last.map(|(k, _)| *k),
        round0,
        last: lastm,
        delta,
        weakest: w
            .as_ref()
            .map(|w| w.types.iter().map(|x| x.0.clone()).collect())
            .unwrap_or_default(),
        weakest_mean_delta: w.and_then(|w| w.mean_gain),
        overall_round0,
        overall_last,
        overall_delta: overall_round0.zip(overall_last).map(|(a, b)| b - a),
        accepted_per_type: sum_counts(r.rounds.iter().filter_map(|x| x.accepted_per_type.as_ref())),
        queries_per_type: sum_counts(r.rounds.iter().filter_map(|x| x.queries_per_type.as_ref())),
    }
}

/// Summarizes every arm with `k` = [`WEAKEST_K`].
pub fn summarize_ablation(arms: &[AblationArm]) -> AblationSummary {
    let arms: Vec<ArmSummary> = arms.iter().map(|a| summarize_arm(a, WEAKEST_K)).collect();
    let types = union_types(arms.iter().flat_map(|a| [&a.round0, &a.last]));
    let by_strategy = strategy_stats(&arms, &types);
    AblationSummary {
        k: WEAKEST_K,
        types,
        arms,
        by_strategy,
    }
}

fn render_ablation_markdown(s: &AblationSummary) -> String {
    let mut md = String::from("# Ablation\n\n");
    md.push_str(&format!(
        "{} arms. Accuracies in % on each arm's reporting benchmark (its mining benchmark if it \
         had none), first vs last evaluated round; Δ in percentage points. Weakest-{} = the {} \
         types with the lowest accuracy at the arm's first round.\n\n",
        s.arms.len(),
        s.k,
        s.k
    ));
    let rows: Vec<Vec<String>> = s
        .arms
        .iter()
        .map(|a| {
            vec![
                a.label.clone(),
                a.strategy.clone(),
                a.benchmark.clone().unwrap_or_else(|| DASH.into()),
                match (a.first_round, a.last_round) {
                    (Some(f), Some(l)) => format!("{f} → {l}"),
                    _ => DASH.into(),
                },
                opt_pct(a.overall_round0),
                opt_pct(a.overall_last),
                opt_delta(a.overall_delta),
                if a.weakest.is_empty() {
                    DASH.into()
                } else {
                    a.weakest.join(", ")
                },
                opt_delta(a.weakest_mean_delta),
                a.accepted_per_type.values().sum::<usize>().to_string(),
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &[
            "arm",
            "strategy",
            "benchmark",
            "rounds",
            "overall first",
            "overall last",
            "Δ overall",
            &format!("weakest-{} types", s.k),
            &format!("Δ weakest-{} (mean)", s.k),
            "accepted items",
        ],
        &rows,
    ));

    if !s.by_strategy.is_empty() {
        let ms = |m: &MeanSd| format!("{:+.1} ± {:.1}", m.mean, m.sd);
        let mut headers = vec![
            "strategy".to_string(),
            "arms".to_string(),
            "Δ overall".to_string(),
            format!("Δ weakest-{} (mean)", s.k),
        ];
        headers.extend(s.types.iter().map(|t| format!("Δ {t}")));
        let rows: Vec<Vec<String>> = s
            .by_strategy
            .iter()
            .map(|g| {
                let mut row = vec![
                    g.strategy.clone(),
                    g.arms.to_string(),
                    ms(&g.overall_delta),
                    ms(&g.weakest_mean_delta),
                ];
                row.extend(
                    s.types
                        .iter()
                        .map(|t| g.delta.get(t).map(ms).unwrap_or_else(|| DASH.into())),
                );
                row
            })
            .collect();
        md.push_str(&format!(
            "\n## By strategy (mean ± sample sd over its arms, points)\n\n{}",
            markdown_table(&headers, &rows)
        ));
    }

    let labels: Vec<String> = s.arms.iter().map(|a| a.label.clone()).collect();
    let per_type = |title: &str, cell: &dyn Fn(&ArmSummary, &str) -> String| {
        let mut headers = vec!["type".to_string()];
        headers.extend(labels.iter().cloned());
        let rows: Vec<Vec<String>> = s
            .types
            .iter()
            .map(|t| {
                let mut row = vec![t.clone()];
                row.extend(s.arms.iter().map(|a| cell(a, t)));
                row
            })
            .collect();
        format!("\n## {title}\n\n{}", markdown_table(&headers, &rows))
    };
    md.push_str(&per_type("Accuracy at the first round (%)", &|a, t| {
        opt_pct(a.round0.get(t).copied())
    }));
    md.push_str(&per_type("Accuracy at the last round (%)", &|a, t| {
        opt_pct(a.last.get(t).copied())
    }));
    md.push_str(&per_type("Δ last − first (points)", &|a, t| {
        opt_delta(a.delta.get(t).copied())
    }));
    md.push_str(&per_type(
        "Generated items kept per type (all rounds; queries in parentheses)",
        &|a, t| {
            format!(
                "{} ({})",
                a.accepted_per_type.get(t).copied().unwrap_or(0),
                a.queries_per_type.get(t).copied().unwrap_or(0)
            )
        },
    ));
    md
}

/// Writes `ablation.json` ([`AblationSummary`]), `ablation.md` and `ablation.svg` (grouped bars
/// of the per-type delta by arm) into `dir`.
pub fn write_ablation(dir: &Path, arms: &[AblationArm]) -> Result<ReportFiles> {
    let s = summarize_ablation(arms);
    let files = ReportFiles {
        json: dir.join("ablation.json"),
        markdown: dir.join("ablation.md"),
        chart: dir.join("ablation.svg"),
        data_chart: None,
    };
    write_json(&files.json, &s)?;
    atomic_write(&files.markdown, render_ablation_markdown(&s).as_bytes())?;
    let series: Vec<(String, Vec<f64>)> = s
        .arms
        .iter()
        .map(|a| {
            let v = s
                .types
                .iter()
                .map(|t| a.delta.get(t).copied().unwrap_or(f64::NAN))
                .collect();
            (a.label.clone(), v)
        })
        .collect();
    let svg = grouped_bars_svg(
        "Per-type accuracy change (last − first round) by arm",
        "type",
        "Δ accuracy (points)",
        1,
        &s.types,
        &series,
    )?;
    atomic_write(&files.chart, svg.as_bytes())?;
    Ok(files)
}
