//! Step 1, evaluate: a benchmark of the loop (`[eval.mine]`, `[eval.report]`) with the round's
//! model, through mde-eval's evaluate step (resumable predictions, the official prediction
//! files, official scores, `scores.json`), summarised per question type for the report and
//! with every item's verdict for mining.

use std::collections::BTreeMap;
use std::path::Path;

use mde_core::model::EvalModel;
use mde_core::records::BenchItem;
use mde_eval::runner::{Benchmark, ImageLoader, Method, RunConfig};
use mde_eval::step::{accuracy_by_type, evaluate, write_scores, EvalDir, TypeCount};
use serde::{Deserialize, Serialize};

use crate::config::{BenchSpec, EvalSection};
use crate::report::EvalSummary;
use crate::{LoopError, Result};

/// What the loop keeps of a finished evaluation (in its `done.json`): enough to mine from and
/// to report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub summary: EvalSummary,
    /// Item id -> correct (benchmark rule).
    pub verdicts: BTreeMap<String, bool>,
}

/// The benchmark a spec names.
pub fn benchmark(spec: &BenchSpec) -> Result<Benchmark> {
    spec.benchmark
        .parse()
        .map_err(|e: String| LoopError::Config(format!("[eval] benchmark: {e}")))
}

/// mde-eval's run config for `spec` under the loop's `[eval]` settings.
pub fn run_config(spec: &BenchSpec, eval: &EvalSection, progress: bool) -> Result<RunConfig> {
    let mut rc = RunConfig::new(benchmark(spec)?);
    if let Some(m) = &spec.method {
        rc.method = m
            .parse::<Method>()
            .map_err(|e| LoopError::Config(format!("[eval] method: {e}")))?;
    }
    rc.batch_size = Some(eval.batch_size.max(1));
    rc.limit = spec.limit;
    rc.released_quirks = eval.released_quirks;
    rc.answer_only = eval.answer_only;
    rc.progress = progress;
    Ok(rc)
}

/// Evaluates `model` on `items` of `spec` into `dir`; `blind` replaces every image by a blank
/// one (how far the text alone gets the model).
pub fn run(
    model: &mut dyn EvalModel,
    spec: &BenchSpec,
    items: &[BenchItem],
    rc: &RunConfig,
    blind: bool,
    dir: &Path,
) -> Result<Record> {
    let bench = rc.benchmark;
    let loader = if blind {
        ImageLoader::blank()
    } else {
        ImageLoader::new(spec.images.clone())
    };
    let run = EvalDir::new(dir);
    let ev = evaluate(model, bench, &spec.path, items, rc, &loader, &run)?;
    let scored = ev.scored?;
    write_scores(&run, bench, ev.outcome.predictions.len(), &scored)?;
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
    Ok(Record {
        summary,
        verdicts: scored.verdicts.into_iter().collect(),
    })
}
