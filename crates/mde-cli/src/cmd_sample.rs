//! `mde sample`: Adaptive Bad-case Sampling from files.
//!
//! Reads typed bad cases (JSONL), per-type error rates, COCO instances/captions and an image
//! index, and writes `queries.jsonl` plus `sample_report.json` (the loop's sample step,
//! `mde_loop::steps::sample`) and `sample_inputs.json` to `--out`. Sampling is seeded, so
//! re-running with the same inputs rewrites the same files.
use anyhow::{bail, Context};
use mde_abs::{AnnotationDb, BadCasePool, ImageIndex, SampleInputs, SamplerConfig, Strategy};
use mde_core::io::{read_json, read_jsonl, write_json};
use mde_core::records::{BadCase, TypeWeights};
use mde_core::taxonomy::Taxonomy;
use mde_loop::layout::SampleFiles;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Bad cases (JSONL of BadCase records, with question_type set).
    #[arg(long)]
    pub bad_cases: PathBuf,
    /// Per-type error rates: {"weights": {type: rate}, ...} or a bare {type: rate} map.
    #[arg(long)]
    pub weights: PathBuf,
    /// COCO instances file of the candidate images (e.g. instances_train2017.json).
    #[arg(long)]
    pub annotations: PathBuf,
    /// COCO captions file of the same images.
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Image index of the candidate images (safetensors with `ids` and `embeddings`); needed
    /// unless --similar-ratio 0.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Index holding the bad cases' own images (looked up by COCO id); defaults to --index.
    #[arg(long)]
    pub example_index: Option<PathBuf>,
    /// Taxonomy: mmbench_v1, seed_bench, or a JSON file [{id, name, definition}].
    #[arg(long, default_value = "mmbench_v1")]
    pub taxonomy: String,
    /// Number of queries to build.
    #[arg(long)]
    pub n: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// uniform | error_rate (released) | chance_discounted[:POWER] | softmax:TEMPERATURE
    #[arg(long, default_value = "error_rate")]
    pub strategy: String,
    /// Size of the similarity shortlist.
    #[arg(long, default_value_t = 1000)]
    pub top_k: usize,
    /// Share of queries whose image is chosen by similarity (released: 0.5, alternating).
    #[arg(long, default_value_t = 0.5)]
    pub similar_ratio: f64,
    /// Minimum weight of every kept type.
    #[arg(long, default_value_t = 0.0)]
    pub floor: f64,
    /// Maximum queries of a type, as TYPE=N (repeatable).
    #[arg(long = "quota", value_name = "TYPE=N")]
    pub quotas: Vec<String>,
    /// Images with more annotated objects are rejected.
    #[arg(long, default_value_t = 10)]
    pub max_objects: usize,
    /// Types with fewer bad cases are skipped.
    #[arg(long, default_value_t = 2)]
    pub min_cases: usize,
    /// Number of choices for the chance level of chance_discounted (default: per type).
    #[arg(long)]
    pub n_choices: Option<usize>,
    /// chance_discounted skips types whose accuracy is not more than this above chance.
    #[arg(long, default_value_t = 0.05)]
    pub chance_margin: f64,
    /// Measured chance accuracy per type for chance_discounted, as a JSON object {type: 0..1},
    /// e.g. a blind (blank-image) evaluation's per-type accuracy; the higher of it and
    /// 1/n_choices is the type's chance level.
    #[arg(long, value_name = "FILE")]
    pub chance_accuracy: Option<PathBuf>,
    /// JSON array of image ids never to use (e.g. images of earlier rounds).
    #[arg(long)]
    pub exclude_images: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let strategy: Strategy = args
        .strategy
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--strategy: {e}"))?;
    let mut quotas = BTreeMap::new();
    for q in &args.quotas {
        let Some((t, n)) = q.split_once('=') else {
            bail!("--quota {q:?}: expected TYPE=N")
        };
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--quota {q:?}: N must be a whole number"))?;
        quotas.insert(t.trim().to_string(), n);
    }
    let taxonomy =
        Taxonomy::load(&args.taxonomy).with_context(|| format!("--taxonomy {}", args.taxonomy))?;
    let cases: Vec<BadCase> = read_jsonl(&args.bad_cases)?;
    let (pool, pool_report) =
        BadCasePool::new(cases, &taxonomy).with_context(|| args.bad_cases.display().to_string())?;
    if !pool_report.untyped.is_empty() {
        tracing::warn!(
            "{} bad case(s) have no question type and are left out (classify them first)",
            pool_report.untyped.len()
        );
    }
    let weights = TypeWeights::from_json(read_json(&args.weights)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.weights.display()))?;
    // Checked here, where the file is known (the sampler would only name the type).
    if let Some((t, w)) = weights
        .weights
        .iter()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
        anyhow::bail!(
            "{}: weight of type {t:?} = {w}: must be a finite number >= 0",
            args.weights.display()
        );
    }
    let exclude_images = match &args.exclude_images {
        Some(p) => read_json::<Vec<u64>>(p)?.into_iter().collect(),
        None => Default::default(),
    };
    let chance_accuracy: BTreeMap<String, f64> = match &args.chance_accuracy {
        Some(p) => read_json(p).with_context(|| {
            format!(
                "--chance-accuracy {}: expected a JSON object {{type: accuracy in 0..1}}",
                p.display()
            )
        })?,
        None => BTreeMap::new(),
    };
    tracing::info!("loading {}", args.annotations.display());
    let db = AnnotationDb::load(&args.annotations, args.captions.as_deref())?;
    let index = args.index.as_ref().map(ImageIndex::load).transpose()?;
    let example_index = args
        .example_index
        .as_ref()
        .map(ImageIndex::load)
        .transpose()?;
    let cfg = SamplerConfig {
        n_queries: args.n,
        seed: args.seed,
        strategy,
        floor: args.floor,
        quotas,
        min_cases: args.min_cases,
        top_k: args.top_k,
        similar_ratio: args.similar_ratio,
        max_objects: args.max_objects,
        n_choices: args.n_choices,
        chance_margin: args.chance_margin,
        chance_accuracy,
        exclude_images,
        ..Default::default()
    };
    // Bad-case images are looked up in --example-index first, then in the candidate index.
    let example_sources = example_index.as_ref().map(|e| {
        let mut v: Vec<&dyn mde_abs::ExampleImages> = vec![e];
        if let Some(i) = index.as_ref() {
            v.push(i);
        }
        mde_abs::FirstOf(v)
    });
    let inputs = SampleInputs {
        pool: &pool,
        weights: &weights,
        taxonomy: &taxonomy,
        images: &db,
        index: index.as_ref(),
        examples: example_sources
            .as_ref()
            .map(|s| s as &dyn mde_abs::ExampleImages),
    };
    // The loop's sample step: queries.jsonl and sample_report.json; what this command adds
    // (its inputs, the pool) goes into sample_inputs.json.
    let files = SampleFiles::new(&args.out);
    mde_loop::steps::sample::run(&cfg, &inputs, &files)?;
    let summary = serde_json::json!({
        "inputs": {
            "bad_cases": args.bad_cases, "weights": args.weights, "annotations": args.annotations,
            "captions": args.captions, "index": args.index, "example_index": args.example_index,
            "taxonomy": taxonomy.name,
        },
        "pool": { "report": pool_report, "counts": pool.counts() },
    });
    write_json(args.out.join("sample_inputs.json"), &summary)?;
    println!("{}", files.queries().display());
    Ok(())
}
