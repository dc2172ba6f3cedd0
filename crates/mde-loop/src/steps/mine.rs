//! Step 2, mine: the wrong answers of an evaluation become bad cases (with their images made
//! absolute, so that the sampler's encoder finds them from any working directory), and every
//! question type gets its error rate (`mde_eval::badcase`).

use std::collections::HashMap;
use std::path::Path;

use mde_core::io::read_jsonl;
use mde_core::records::{BenchItem, ImageRef, Prediction, TypeWeights};
use mde_eval::badcase::{mine_bad_cases, write_mined};

use crate::layout::MineFiles;
use crate::Result;

/// What the step reads: the evaluated items, the evaluation's prediction store and its
/// verdicts (item id -> correct), and the benchmark's image root.
pub struct Inputs<'a> {
    pub items: &'a [BenchItem],
    pub predictions: &'a Path,
    pub verdicts: &'a HashMap<String, bool>,
    pub image_root: Option<&'a Path>,
}

/// Writes `bad_cases.jsonl` and `weights.json`; returns the per-type error rates.
pub fn run(inputs: &Inputs, out: &MineFiles) -> Result<TypeWeights> {
    let preds: Vec<Prediction> = read_jsonl(inputs.predictions)?;
    let mut mined = mine_bad_cases(inputs.items, &preds, inputs.verdicts);
    if let Some(root) = inputs.image_root {
        for b in &mut mined.bad_cases {
            if let ImageRef::Path { path } = &mut b.image {
                if Path::new(path.as_str()).is_relative() {
                    *path = root.join(&*path).display().to_string();
                }
            }
        }
    }
    super::create_dir(out.dir())?;
    write_mined(out.dir(), &mined)?;
    Ok(mined.weights)
}
