//! Score-only use of mde: a lab that has its own inference and wants the official numbers.
//! Reads an MMBench TSV and a VLMEvalKit-format prediction file and prints the circular and
//! vanilla accuracies exactly as VLMEvalKit computes them, with `mde-eval` alone (no model).
//!
//! ```text
//! cargo run -p mde-examples --bin score_only -- MMBench_DEV_EN.tsv predictions.tsv
//! ```
//! Without arguments it scores the shared conformance fixture (`../shared/fixtures/eval/mmbench`,
//! or `$MDE_EVAL_FIXTURES/mmbench`).
use anyhow::{Context, Result};
use mde_eval::mmbench::{score_mmbench, McqOptions};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let fixtures = std::env::var_os("MDE_EVAL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/eval")
        })
        .join("mmbench");
    let data = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("MMBench_DEV_EN.tsv"));
    let preds = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("predictions.tsv"));
    // The default options are VLMEvalKit's: exact matching, circular groups, its quirks.
    let report = score_mmbench(&data, &preds, &McqOptions::default())
        .with_context(|| format!("scoring {} against {}", preds.display(), data.display()))?;
    println!("{}", report.to_markdown());
    let overall = report.circular.acc.get(0, "Overall");
    println!("circular Overall: {overall:?}");
    Ok(())
}
