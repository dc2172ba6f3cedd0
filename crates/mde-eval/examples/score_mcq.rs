//! Scores an MCQ prediction file like VLMEvalKit (`exact_matching`) and prints the result as JSON.
//!
//! ```text
//! cargo run -p mde-eval --example score_mcq -- circular|vanilla DATASET.tsv PREDICTIONS.tsv [current|pre_1552|pre_1175]
//! ```
use anyhow::{bail, Context, Result};
use mde_eval::matching::{ExtractionVersion, MatchOptions};
use mde_eval::mmbench::{score_mmbench, score_vanilla_mcq, McqOptions};
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: score_mcq circular|vanilla DATASET.tsv PREDICTIONS.tsv [current|pre_1552|pre_1175]");
    }
    let version = match args.get(3) {
        Some(v) => ExtractionVersion::from_name(v)
            .with_context(|| format!("unknown extraction version {v}"))?,
        None => ExtractionVersion::Current,
    };
    let opts = McqOptions {
        matching: MatchOptions::version(version),
        ..Default::default()
    };
    let (ds, pr) = (Path::new(&args[1]), Path::new(&args[2]));
    let json = match args[0].as_str() {
        "circular" => serde_json::to_string_pretty(&score_mmbench(ds, pr, &opts)?)?,
        "vanilla" => serde_json::to_string_pretty(&score_vanilla_mcq(ds, pr, &opts)?)?,
        m => bail!("unknown mode {m}"),
    };
    println!("{json}");
    Ok(())
}
