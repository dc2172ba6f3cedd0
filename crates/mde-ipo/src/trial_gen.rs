//! Step 2, generation part: a trial batch of the active prompt version, run through the real
//! generation runner (resumable: replies land in `trials/v{N}/replies.jsonl`), the released
//! post-processing and the validator, whose flags become the items' pre-labels.
use crate::trial::TrialItem;
use crate::{Ipo, IpoError};
use mde_core::io::read_jsonl;
use mde_core::records::{FailureCategory, GenQuery, TeacherReplyRecord};
use mde_core::teacher::Teacher;
use mde_gen::{GeneratePrompt, PostprocessConfig, Runner, RunnerConfig, ValidationMode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a trial-generation call did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialGenSummary {
    pub version: u32,
    pub queries: usize,
    pub replies: usize,
    /// Items added to the trial by this call (earlier ones are kept, never duplicated).
    pub added: usize,
    /// Items the validator or the released filters flagged.
    pub prelabelled: usize,
}

/// The distinct failure categories of a reply's flags, in first-seen order.
fn categories(flags: &[mde_gen::validate::FlagHit]) -> Vec<FailureCategory> {
    let mut out: Vec<FailureCategory> = Vec::new();
    for f in flags {
        if !out.contains(&f.category) {
            out.push(f.category.clone());
        }
    }
    out
}

/// Generates the trial batch of `version` for `queries` (use ~100, as in the paper) and adds the
/// replies as trial items with pre-labels. Re-running skips queries already answered.
pub async fn generate_trial(
    ipo: &Ipo,
    version: u32,
    queries: &[GenQuery],
    teacher: Arc<dyn Teacher>,
    runner_cfg: RunnerConfig,
    postprocess_cfg: &PostprocessConfig,
) -> Result<TrialGenSummary, IpoError> {
    let template = ipo.store.get(version)?.template;
    let prompt = GeneratePrompt::from_text(&template)
        .map_err(|e| IpoError::Invalid(format!("prompt version v{version}: {e}")))?;
    let mut trial = ipo.trial(version)?;
    let replies_path = trial.dir().join("replies.jsonl");
    let runner = Runner::new(teacher, runner_cfg);
    runner
        .run(
            queries,
            |q| prompt.request(q),
            &replies_path,
            Some(&trial.dir().join("generation_summary.json")),
        )
        .await
        .map_err(|e| IpoError::Teacher(e.to_string()))?;
    let replies: Vec<TeacherReplyRecord> = read_jsonl(&replies_path)?;
    // Every reply goes to the human: validation only flags, it never drops here.
    let cfg = PostprocessConfig {
        validation: ValidationMode::Flag,
        ..postprocess_cfg.clone()
    };
    let out = mde_gen::postprocess(&replies, queries, &cfg).map_err(IpoError::Invalid)?;
    let by_query: std::collections::HashMap<&str, &GenQuery> =
        queries.iter().map(|q| (q.id.as_str(), q)).collect();
    let raw: std::collections::HashMap<&str, &str> = replies
        .iter()
        .map(|r| (r.query_id.as_str(), r.text.as_str()))
        .collect();
    let mut summary = TrialGenSummary {
        version,
        queries: queries.len(),
        replies: replies.len(),
        ..Default::default()
    };
    let mut items: Vec<TrialItem> = Vec::new();
    for it in &out.items {
        let Some(q) = by_query.get(it.query_id.as_str()) else {
            continue;
        };
        let prelabels = categories(&it.flags);
        items.push(TrialItem {
            id: it.query_id.clone(),
            query: (*q).clone(),
            reply: it.raw.clone(),
            question: Some(it.question.clone()),
            choices: it.choices.clone(),
            answer_idx: Some(it.answer_idx),
            prelabels,
            notes: it
                .flags
                .iter()
                .map(|f| format!("{}: {}", f.flag.name(), f.detail))
                .collect(),
        });
    }
    for d in &out.dropped {
        let Some(q) = by_query.get(d.query_id.as_str()) else {
            continue;
        };
        let mut prelabels = categories(&d.flags);
        if prelabels.is_empty() {
            prelabels.push(FailureCategory::Custom("dropped_by_filters".into()));
        }
        let mut notes = vec![format!("dropped by the released filters: {}", d.reason)];
        notes.extend(
            d.flags
                .iter()
                .map(|f| format!("{}: {}", f.flag.name(), f.detail)),
        );
        items.push(TrialItem {
            id: d.query_id.clone(),
            query: (*q).clone(),
            reply: raw
                .get(d.query_id.as_str())
                .copied()
                .unwrap_or_default()
                .to_string(),
            prelabels,
            notes,
            ..Default::default()
        });
    }
    // Keep the queries' order so labelling follows the batch.
    let order: std::collections::HashMap<&str, usize> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.as_str(), i))
        .collect();
    items.sort_by_key(|i| order.get(i.id.as_str()).copied().unwrap_or(usize::MAX));
    for item in &items {
        if !item.prelabels.is_empty() {
            summary.prelabelled += 1;
        }
        if trial.add_item(item)? {
            summary.added += 1;
        }
    }
    Ok(summary)
}
