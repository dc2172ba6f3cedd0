//! Adaptive Bad-case Sampling: turns a bad-case pool, per-type error rates, image annotations and
//! an image index into generation queries.
//!
//! Faithful to the release by default ([`SamplerConfig::default`]): P(type) ∝ error rate, types
//! with fewer than 2 bad cases skipped, 2 distinct in-context bad cases drawn uniformly, query
//! images alternating between "similar to the first example's image" (uniform among the cosine
//! top-1000) and "uniformly random", images never reused and images with more than 10 objects
//! rejected. Unlike the release, it never loops forever: when no image is left it stops and says
//! so in the report.
use crate::coco::AnnotationDb;
use crate::error::{AbsError, Result};
use crate::index::{ExampleImages, ImageIndex};
use crate::pool::BadCasePool;
use mde_core::records::{BadCase, GenQuery, InContextExample, TypeWeights};
use mde_core::taxonomy::Taxonomy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

/// How query counts are allocated to types. The default is the released `ErrorRate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Every eligible type equally likely.
    Uniform,
    /// P ∝ error rate (the released behaviour).
    #[default]
    ErrorRate,
    /// P ∝ (err / chance_err)^power, the chance-corrected error (0 = perfect, 1 = guessing;
    /// chance_err = 1 − 1/n_choices, or 1 − a measured chance accuracy when that is higher:
    /// [`SamplerConfig::chance_accuracy`]) raised to a sharper power, for types whose accuracy is more
    /// than [`SamplerConfig::chance_margin`] above chance; types at (or below) chance are skipped:
    /// a type the model answers at chance may be unlearnable and would only absorb samples
    /// (LOOP_FEASIBILITY.md lesson 3). The correction also makes 2- and 4-choice types
    /// comparable (40% error is near chance for yes/no, far from it for four options).
    ChanceDiscounted { power: f64 },
    /// P ∝ exp(err / temperature).
    Softmax { temperature: f64 },
}

impl FromStr for Strategy {
    type Err = String;
    /// `uniform`, `error_rate` (or `released`), `chance_discounted[:POWER]` (default power 1),
    /// `softmax:TEMPERATURE`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s.trim(), None),
        };
        let num = |what: &str| -> std::result::Result<f64, String> {
            let a =
                arg.ok_or_else(|| format!("strategy {name:?} needs a {what}, e.g. {name}:1.0"))?;
            let v: f64 = a
                .parse()
                .map_err(|_| format!("strategy {name:?}: {what} {a:?} is not a number"))?;
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(format!(
                    "strategy {name:?}: {what} must be positive, got {a}"
                ))
            }
        };
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "uniform" if arg.is_none() => Ok(Strategy::Uniform),
            "error_rate" | "released" | "errorrate" if arg.is_none() => Ok(Strategy::ErrorRate),
            "chance_discounted" | "chance" => {
                Ok(Strategy::ChanceDiscounted { power: if arg.is_some() { num("power")? } else { 1.0 } })
            }
            "softmax" => Ok(Strategy::Softmax { temperature: num("temperature")? }),
            _ => Err(format!(
                "unknown strategy {s:?}: expected uniform, error_rate (released), chance_discounted[:POWER] or softmax:TEMPERATURE"
            )),
        }
    }
}

/// Sampler options. `Default` is the released behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Number of queries to build.
    pub n_queries: usize,
    pub seed: u64,
    pub strategy: Strategy,
    /// Minimum weight of every type the strategy keeps (0 = none). Applied to the strategy's
    /// unnormalised weight, before normalisation.
    pub floor: f64,
    /// Maximum number of queries per type id; a type that reaches its quota leaves the draw and
    /// the others are renormalised.
    pub quotas: BTreeMap<String, usize>,
    /// Types with fewer bad cases are skipped (released: 2).
    pub min_cases: usize,
    /// In-context examples per query (released: 2).
    pub n_examples: usize,
    /// Size of the similarity shortlist (released: 1000).
    pub top_k: usize,
    /// Share of queries whose image is chosen by similarity; 0.5 alternates even (similar) and
    /// odd (random) query numbers as released. Similar queries are spread evenly: query i is
    /// similar when ceil((i+1)·r) > ceil(i·r).
    pub similar_ratio: f64,
    /// Images with more annotated objects than this are rejected (released: 10).
    pub max_objects: usize,
    /// Number of choices for the chance level of `ChanceDiscounted`; `None` = per type, the most
    /// common choice count of its bad cases.
    pub n_choices: Option<usize>,
    /// Measured chance accuracy (0..1) per type id, name or number, e.g. a blind (text-only)
    /// model's accuracy: a question whose filler options a model can rule out without the image
    /// is easier to guess than `1/n_choices` says. `ChanceDiscounted` then uses the higher of the
    /// two as the type's chance level; types not listed use `1/n_choices` alone.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub chance_accuracy: BTreeMap<String, f64>,
    /// `ChanceDiscounted` skips a type unless its accuracy exceeds chance by more than this
    /// (a fraction; 0.05 is two standard errors of a 4-choice type measured on 300 items).
    pub chance_margin: f64,
    /// Images never to use (e.g. used by earlier rounds).
    pub exclude_images: BTreeSet<u64>,
    /// Query ids are `{prefix}{number:06}`.
    pub id_prefix: String,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            n_queries: 0,
            seed: 0,
            strategy: Strategy::ErrorRate,
            floor: 0.0,
            quotas: BTreeMap::new(),
            min_cases: 2,
            n_examples: 2,
            top_k: 1000,
            similar_ratio: 0.5,
            max_objects: 10,
            n_choices: None,
            chance_accuracy: BTreeMap::new(),
            chance_margin: 0.05,
            exclude_images: BTreeSet::new(),
            id_prefix: "q".into(),
        }
    }
}

/// Type probabilities and why other types got none.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Allocation {
    /// Type id -> probability (sums to 1 when non-empty).
    pub probabilities: BTreeMap<String, f64>,
    /// Type id (or raw weight key) -> reason it was skipped.
    pub skipped: BTreeMap<String, String>,
    /// `ChanceDiscounted` only: type id -> the chance accuracy (0..1) it was discounted by.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub chance: BTreeMap<String, f64>,
}

fn most_common_choice_count(cases: &[BadCase]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for c in cases {
        *counts.entry(c.choices.len()).or_default() += 1;
    }
    // Highest count wins; ties go to the larger number of choices (BTreeMap order + max_by_key
    // returns the last maximum).
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(0, |(k, _)| k)
}

/// Computes P(type) for the pool under `cfg` (strategy, floor, min_cases). Weight keys are
/// resolved through the taxonomy (id, name or number).
pub fn allocate(
    pool: &BadCasePool,
    weights: &TypeWeights,
    taxonomy: &Taxonomy,
    cfg: &SamplerConfig,
) -> Result<Allocation> {
    let mut skipped = BTreeMap::new();
    let mut err_rate: BTreeMap<String, f64> = BTreeMap::new();
    for (k, w) in &weights.weights {
        match taxonomy.lookup(k) {
            Some(t) => {
                if !w.is_finite() || *w < 0.0 {
                    return Err(AbsError::Input(format!(
                        "weight of type {k:?} must be a non-negative number, got {w}"
                    )));
                }
                err_rate.insert(t.id.clone(), *w);
            }
            None => {
                skipped.insert(k.clone(), format!("not in taxonomy {:?}", taxonomy.name));
            }
        }
    }
    if !(0.0..1.0).contains(&cfg.chance_margin) {
        return Err(AbsError::Input(format!(
            "chance_margin must be in [0, 1), got {}",
            cfg.chance_margin
        )));
    }
    let mut measured_chance: BTreeMap<String, f64> = BTreeMap::new();
    for (k, a) in &cfg.chance_accuracy {
        if !(0.0..=1.0).contains(a) {
            return Err(AbsError::Input(format!(
                "chance accuracy of type {k:?} must be in [0, 1], got {a}"
            )));
        }
        match taxonomy.lookup(k) {
            Some(t) => {
                measured_chance.insert(t.id.clone(), *a);
            }
            None => {
                skipped.insert(k.clone(), format!("not in taxonomy {:?}", taxonomy.name));
            }
        }
    }
    let mut chance = BTreeMap::new();
    if !(cfg.floor >= 0.0 && cfg.floor.is_finite()) {
        return Err(AbsError::Input(format!(
            "floor must be a non-negative number, got {}",
            cfg.floor
        )));
    }
    let mut raw: BTreeMap<String, f64> = BTreeMap::new();
    for t in pool.types() {
        let cases = pool.cases(t);
        let min = cfg.min_cases.max(cfg.n_examples);
        if cases.len() < min {
            skipped.insert(
                t.to_string(),
                format!("{} bad case(s), fewer than {min}", cases.len()),
            );
            continue;
        }
        let err = err_rate.get(t).copied();
        let w = match (cfg.strategy, err) {
            (Strategy::Uniform, _) => 1.0,
            (_, None) => {
                skipped.insert(t.to_string(), "no error rate in the weights".into());
                continue;
            }
            (Strategy::ErrorRate, Some(e)) => e,
            (Strategy::Softmax { temperature }, Some(e)) => {
                if !(temperature > 0.0 && temperature.is_finite()) {
                    return Err(AbsError::Input(format!(
                        "softmax temperature must be positive, got {temperature}"
                    )));
                }
                // exp is applied below after subtracting the max (stable); store the logit.
                e / temperature
            }
            (Strategy::ChanceDiscounted { power }, Some(e)) => {
                if !(power > 0.0 && power.is_finite()) {
                    return Err(AbsError::Input(format!(
                        "chance-discount power must be positive, got {power}"
                    )));
                }
                let n = cfg
                    .n_choices
                    .unwrap_or_else(|| most_common_choice_count(cases));
                if n < 2 {
                    skipped.insert(
                        t.to_string(),
                        format!("cannot compute chance level from {n} choice(s)"),
                    );
                    continue;
                }
                let uniform = 1.0 / n as f64;
                let chance_acc = measured_chance.get(t).map_or(uniform, |&m| m.max(uniform));
                chance.insert(t.to_string(), chance_acc);
                let chance_err = 1.0 - chance_acc;
                // A tiny tolerance so that a rate rounded to 3 decimals exactly at the margin
                // counts as at chance.
                if e >= chance_err - cfg.chance_margin - 1e-9 {
                    skipped.insert(
                        t.to_string(),
                        format!(
                            "error rate {e} is within {} of chance ({chance_err:.3}) or worse",
                            cfg.chance_margin
                        ),
                    );
                    continue;
                }
                (e / chance_err).powf(power)
            }
        };
        raw.insert(t.to_string(), w);
    }
    if let Strategy::Softmax { .. } = cfg.strategy {
        let max = raw.values().copied().fold(f64::NEG_INFINITY, f64::max);
        for v in raw.values_mut() {
            *v = (*v - max).exp();
        }
    }
    for v in raw.values_mut() {
        *v = v.max(cfg.floor);
    }
    raw.retain(|t, w| {
        if *w > 0.0 {
            true
        } else {
            skipped.insert(t.clone(), "weight 0".into());
            false
        }
    });
    let total: f64 = raw.values().sum();
    let probabilities = raw.into_iter().map(|(t, w)| (t, w / total)).collect();
    Ok(Allocation {
        probabilities,
        skipped,
        chance,
    })
}

/// Everything the sampler reads.
pub struct SampleInputs<'a> {
    pub pool: &'a BadCasePool,
    pub weights: &'a TypeWeights,
    pub taxonomy: &'a Taxonomy,
    /// Captions and boxes of the candidate images; every image in it is a candidate.
    pub images: &'a AnnotationDb,
    /// Embeddings of candidate images; required when `similar_ratio > 0`.
    pub index: Option<&'a ImageIndex>,
    /// Where the first example's image embedding comes from; `None` = look the example's COCO
    /// id up in `index`.
    pub examples: Option<&'a dyn ExampleImages>,
}

/// What the sampler did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SampleReport {
    pub requested: usize,
    pub built: usize,
    /// Why fewer queries than requested were built.
    pub stop_reason: Option<String>,
    pub config: SamplerConfig,
    pub allocation: Allocation,
    /// Queries built per type id.
    pub per_type: BTreeMap<String, usize>,
    /// Queries whose image was chosen by similarity / at random.
    pub similar: usize,
    pub random: usize,
    /// Similarity queries that fell back to a random image because the example image had no
    /// embedding.
    pub fallback_no_embedding: usize,
    /// Similarity queries that fell back to a random image because every image in the top-K
    /// was used or rejected.
    pub fallback_top_k_exhausted: usize,
    /// Candidate images at the start (annotated, ≤ max_objects, not excluded).
    pub candidates: usize,
    /// Annotated images rejected for having more than `max_objects` objects.
    pub rejected_too_many_objects: usize,
    /// Annotated images skipped because they were in `exclude_images`.
    pub excluded: usize,
}

/// Remaining candidate images: uniform draw and removal in O(1), deterministic order.
struct Candidates {
    ids: Vec<u64>,
    slot: HashMap<u64, usize>,
}

impl Candidates {
    fn new(ids: Vec<u64>) -> Self {
        let slot = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self { ids, slot }
    }
    fn contains(&self, id: u64) -> bool {
        self.slot.contains_key(&id)
    }
    fn remove(&mut self, id: u64) {
        if let Some(i) = self.slot.remove(&id) {
            self.ids.swap_remove(i);
            if i < self.ids.len() {
                self.slot.insert(self.ids[i], i);
            }
        }
    }
    fn draw(&self, rng: &mut ChaCha8Rng) -> Option<u64> {
        (!self.ids.is_empty()).then(|| self.ids[rng.random_range(0..self.ids.len())])
    }
}

/// Whether query number `i` picks its image by similarity, spreading a share `r` evenly
/// (r = 0.5: even numbers).
pub fn is_similar_query(i: usize, r: f64) -> bool {
    if r <= 0.0 {
        return false;
    }
    if r >= 1.0 {
        return true;
    }
    // The epsilon keeps exact products (e.g. 10 × 0.1) from rounding up to the next integer.
    let c = |x: f64| (x - 1e-9).ceil();
    c((i + 1) as f64 * r) > c(i as f64 * r)
}

/// Turns a bad case into an in-context example (its ground truth, not the model's answer).
pub fn example_of(case: &BadCase, type_id: &str) -> InContextExample {
    InContextExample {
        question: case.question.clone(),
        choices: case.choices.clone(),
        answer_idx: case.answer_idx,
        question_type: type_id.to_string(),
        source_id: case.id.clone(),
    }
}

/// The sample step's files in `dir`: `queries.jsonl` (the queries, one per line) and
/// `sample_report.json` (the [`SampleReport`]), both written atomically. `mde sample` and the
/// loop's sample step both write through here. Returns the queries path.
pub fn write_sample(
    dir: &std::path::Path,
    queries: &[GenQuery],
    report: &SampleReport,
) -> Result<std::path::PathBuf> {
    let q = dir.join("queries.jsonl");
    mde_core::io::write_jsonl(&q, queries)?;
    mde_core::io::write_json(dir.join("sample_report.json"), report)?;
    Ok(q)
}

/// Builds up to `cfg.n_queries` queries. Seeded (ChaCha8) and reproducible: the same inputs and
/// config give the same queries. Returns fewer queries, with `stop_reason` set, when the
/// candidate images or the eligible types run out.
pub fn sample(
    inputs: &SampleInputs<'_>,
    cfg: &SamplerConfig,
) -> Result<(Vec<GenQuery>, SampleReport)> {
    if !(0.0..=1.0).contains(&cfg.similar_ratio) {
        return Err(AbsError::Input(format!(
            "similar_ratio must be in 0..=1, got {}",
            cfg.similar_ratio
        )));
    }
    if cfg.n_examples == 0 {
        return Err(AbsError::Input("n_examples must be at least 1".into()));
    }
    let index = inputs.index;
    if cfg.similar_ratio > 0.0 && cfg.n_queries > 0 && index.is_none() {
        return Err(AbsError::Input(
            "similarity sampling needs an image index (or set the similar ratio to 0)".into(),
        ));
    }
    let mut quotas: BTreeMap<String, usize> = BTreeMap::new();
    for (k, q) in &cfg.quotas {
        let t = inputs.taxonomy.lookup(k).ok_or_else(|| {
            AbsError::Input(format!(
                "quota for unknown type {k:?} (taxonomy {:?})",
                inputs.taxonomy.name
            ))
        })?;
        quotas.insert(t.id.clone(), *q);
    }
    let allocation = allocate(inputs.pool, inputs.weights, inputs.taxonomy, cfg)?;
    let mut report = SampleReport {
        requested: cfg.n_queries,
        config: cfg.clone(),
        allocation: allocation.clone(),
        ..Default::default()
    };

    let mut cand_ids = Vec::new();
    for id in inputs.images.ids() {
        if cfg.exclude_images.contains(&id) {
            report.excluded += 1;
        } else if inputs.images.object_count(id) > cfg.max_objects {
            report.rejected_too_many_objects += 1;
        } else {
            cand_ids.push(id);
        }
    }
    report.candidates = cand_ids.len();
    let mut candidates = Candidates::new(cand_ids);

    // Active types with their (unnormalised) probabilities, in id order.
    let mut active: Vec<(String, f64)> = allocation
        .probabilities
        .iter()
        .map(|(t, p)| (t.clone(), *p))
        .collect();
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    active.retain(|(t, _)| quotas.get(t).is_none_or(|q| *q > 0));

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut top_cache: HashMap<String, Option<Vec<u64>>> = HashMap::new();
    let mut queries = Vec::with_capacity(cfg.n_queries);

    while queries.len() < cfg.n_queries {
        if active.is_empty() {
            report.stop_reason = Some(if allocation.probabilities.is_empty() {
                "no eligible question type (see allocation.skipped)".into()
            } else {
                "every eligible type reached its quota".into()
            });
            break;
        }
        if candidates.ids.is_empty() {
            report.stop_reason = Some(format!(
                "candidate images exhausted after {} queries ({} candidates)",
                queries.len(),
                report.candidates
            ));
            break;
        }
        let i = queries.len();
        // 1. type ∝ probability.
        let total: f64 = active.iter().map(|(_, p)| p).sum();
        let u = rng.random::<f64>() * total;
        let mut acc = 0.0;
        let mut ti = active.len() - 1;
        for (j, (_, p)) in active.iter().enumerate() {
            acc += p;
            if u < acc {
                ti = j;
                break;
            }
        }
        let type_id = active[ti].0.clone();
        let cases = inputs.pool.cases(&type_id);
        // 2. distinct examples, uniformly.
        let picks = rand::seq::index::sample(&mut rng, cases.len(), cfg.n_examples);
        let examples: Vec<&BadCase> = picks.iter().map(|k| &cases[k]).collect();
        // 3. image.
        let similar = is_similar_query(i, cfg.similar_ratio);
        let mut image = None;
        if similar {
            let first = examples[0];
            let top = match top_cache.get(&first.id) {
                Some(t) => t.clone(),
                None => {
                    let idx = index.expect("checked above");
                    let emb = match inputs.examples {
                        Some(src) => src.example_embedding(first)?,
                        None => idx.example_embedding(first)?,
                    };
                    let top = match emb {
                        Some(e) => {
                            if e.len() != idx.dim() {
                                return Err(AbsError::Input(format!(
                                    "example {:?}: embedding width {} differs from the index's {}",
                                    first.id,
                                    e.len(),
                                    idx.dim()
                                )));
                            }
                            let rows = idx.top_k(&e, cfg.top_k)?;
                            Some(
                                rows.into_iter()
                                    .map(|(r, _)| idx.ids()[r])
                                    .collect::<Vec<u64>>(),
                            )
                        }
                        None => None,
                    };
                    top_cache.insert(first.id.clone(), top.clone());
                    top
                }
            };
            match top {
                None => report.fallback_no_embedding += 1,
                Some(top) => {
                    // Uniform among the acceptable top-K images = the release's "draw from top-K,
                    // reject, draw again", without its endless loop when none is acceptable.
                    let ok: Vec<u64> = top
                        .into_iter()
                        .filter(|id| candidates.contains(*id))
                        .collect();
                    if ok.is_empty() {
                        report.fallback_top_k_exhausted += 1;
                    } else {
                        image = Some(ok[rng.random_range(0..ok.len())]);
                    }
                }
            }
        }
        let chose_similar = image.is_some();
        let image_id = match image.or_else(|| candidates.draw(&mut rng)) {
            Some(id) => id,
            None => unreachable!("candidates checked non-empty"),
        };
        candidates.remove(image_id);
        if chose_similar {
            report.similar += 1;
        } else {
            report.random += 1;
        }
        let qt = inputs
            .taxonomy
            .by_id(&type_id)
            .expect("pool types are taxonomy ids");
        let rec = inputs
            .images
            .image(image_id)
            .expect("candidates come from the db");
        queries.push(GenQuery {
            id: format!("{}{:06}", cfg.id_prefix, i),
            question_type: type_id.clone(),
            type_definition: qt.definition.clone(),
            image_id,
            image_path: (!rec.file_name.is_empty()).then(|| rec.file_name.clone()),
            captions: rec.captions.clone(),
            boxes: inputs.images.boxes(image_id),
            examples: examples.iter().map(|c| example_of(c, &type_id)).collect(),
            similar: chose_similar,
        });
        let n = per_type.entry(type_id.clone()).or_default();
        *n += 1;
        if quotas.get(&type_id).is_some_and(|q| *n >= *q) {
            active.remove(ti);
        }
    }
    report.built = queries.len();
    report.per_type = per_type;
    Ok((queries, report))
}

/// Renders an in-context example the way the released prompt shows it:
/// `Question: ...`, `Choices: (A) .. (B) ..`, `Answer: The answer is (L): <choice>.`,
/// `Question type: <type>`.
pub fn render_example(ex: &InContextExample, type_label: &str) -> String {
    let letters = mde_core::records::CHOICE_LETTERS;
    let choices: Vec<String> = ex
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {}", letters[i % letters.len()], c))
        .collect();
    let answer = ex
        .choices
        .get(ex.answer_idx)
        .map(|s| s.as_str())
        .unwrap_or("");
    format!(
        "Question: {}\nChoices: {}\nAnswer: The answer is ({}): {}.\nQuestion type: {}",
        ex.question,
        choices.join(" "),
        letters[ex.answer_idx % letters.len()],
        answer,
        type_label
    )
}
