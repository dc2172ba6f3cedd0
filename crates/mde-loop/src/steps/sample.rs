//! Step 5, sample: Adaptive Bad-case Sampling (mde-abs) chooses question types in proportion
//! to their error rate, two bad cases of the type as in-context examples and a query image
//! (similar by embedding or random), and writes the generation queries. `mde sample` and the
//! loop's sample step are this function.

use std::collections::{BTreeMap, BTreeSet};

use mde_abs::{sample, SampleInputs, SampleReport, SamplerConfig};
use mde_core::records::{GenQuery, TypeWeights};
use serde::{Deserialize, Serialize};

use crate::config::{AbsSection, PerType};
use crate::layout::SampleFiles;
use crate::Result;

/// Samples and writes `queries.jsonl` and `sample_report.json`. Fewer queries than asked for
/// (candidate images or eligible types ran out) is not an error: the round then trains on what
/// it has, and the reason is logged and kept in the report.
pub fn run(
    cfg: &SamplerConfig,
    inputs: &SampleInputs,
    out: &SampleFiles,
) -> Result<(Vec<GenQuery>, SampleReport)> {
    let (queries, report) = sample(inputs, cfg)?;
    match &report.stop_reason {
        Some(why) => tracing::warn!(
            "built {} of {} queries: {why}",
            report.built,
            report.requested
        ),
        None if queries.is_empty() && cfg.n_queries > 0 => {
            let why: Vec<String> = report
                .allocation
                .skipped
                .iter()
                .map(|(t, r)| format!("{t}: {r}"))
                .collect();
            tracing::warn!(
                "the sampler allocated no queries ({}); no data will be generated",
                why.join("; ")
            );
        }
        None => tracing::info!("built {} queries", report.built),
    }
    super::create_dir(out.dir())?;
    mde_abs::write_sample(out.dir(), &queries, &report)?;
    Ok((queries, report))
}

/// The sampler's config of round `k` from the loop's `[abs]` (the seed is the run's plus `k`,
/// query ids are `r{k}_q…`).
pub fn round_config(
    abs: &AbsSection,
    run_seed: u64,
    k: usize,
    exclude_images: BTreeSet<u64>,
    chance_accuracy: BTreeMap<String, f64>,
) -> Result<SamplerConfig> {
    Ok(SamplerConfig {
        n_queries: abs.queries_per_round,
        seed: run_seed.wrapping_add(k as u64),
        strategy: abs.strategy()?,
        floor: abs.floor,
        chance_margin: abs.chance_margin,
        min_cases: abs.min_cases,
        top_k: abs.top_k,
        similar_ratio: abs.similar_ratio,
        max_objects: abs.max_objects,
        exclude_images,
        id_prefix: format!("r{k}_q"),
        chance_accuracy,
        ..Default::default()
    })
}

/// What the loop keeps of a finished sample step (in its `done.json`, for the report and the
/// next round's excluded images).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub queries: usize,
    pub per_type: BTreeMap<String, usize>,
    pub probabilities: PerType,
    pub error_rates: PerType,
    pub images: Vec<u64>,
    /// `chance_discounted`: the chance accuracy each type was discounted by.
    #[serde(default)]
    pub chance: PerType,
}

impl Record {
    pub fn of(queries: &[GenQuery], report: &SampleReport, weights: &TypeWeights) -> Self {
        Self {
            queries: queries.len(),
            per_type: report.per_type.clone(),
            probabilities: report.allocation.probabilities.clone(),
            error_rates: weights
                .weights
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            images: queries.iter().map(|q| q.image_id).collect(),
            chance: report.allocation.chance.clone(),
        }
    }
}
