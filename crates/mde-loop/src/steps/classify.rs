//! Step 3, classify: the teacher gives each benchmark question without a question type one
//! type of the taxonomy (mde-abs's [`Classifier`], batched as the original prompts it). Labels
//! are cached in a JSONL file, so a re-run or a later round asks only for new questions.

use std::collections::HashMap;
use std::path::Path;

use mde_abs::{Classifier, ClassifierConfig};
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::Teacher;

use crate::Result;

/// Labels `questions` with types of `taxonomy`; returns question -> type id. Batches that fail
/// leave their questions unlabelled (logged), as the original's classification does.
pub fn run(
    teacher: &dyn Teacher,
    taxonomy: Taxonomy,
    cfg: ClassifierConfig,
    questions: &[String],
    cache: &Path,
    progress: bool,
) -> Result<HashMap<String, String>> {
    if let Some(d) = cache.parent() {
        super::create_dir(d)?;
    }
    let rt = super::runtime(cache)?;
    let mut c = Classifier::new(taxonomy, cfg)?.with_cache(cache)?;
    let bar = super::progress_bar(progress, questions.len() as u64, "classifying questions");
    let report = rt.block_on(c.classify_questions(teacher, questions))?;
    bar.finish_and_clear();
    if !report.failures.is_empty() {
        tracing::warn!(
            batches = report.failures.len(),
            "some classification batches failed; their questions stay untyped"
        );
    }
    Ok(report.labels)
}
