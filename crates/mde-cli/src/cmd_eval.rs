//! `mde eval <benchmark> --data PATH --model CONFIG.toml --out DIR`: run MiniGPT-4 on a benchmark
//! (resumable), write the official-format prediction file, score it with the official rules and
//! mine bad cases.
//!
//! Files in `--out`:
//! - `predictions.jsonl`: one prediction per item, appended as the model answers (the resume key);
//! - the official prediction file (`predictions.tsv`, `results/<task>.txt`,
//!   `predictions_<split>.json` or `predictions.jsonl` for SEED-Bench under `official/`);
//! - `scores.json`, `scores.md` + `report.md`: the scorer's numbers;
//! - `bad_cases.jsonl` + `weights.json`: wrong items and per-type error rates for the sampler;
//! - `run.json`: what produced the predictions (a re-run with another model or method is refused).
//!
//! `--shard I/N` evaluates one slice into `shards/I-of-N/` and stops there; `--merge` then
//! writes all of the above from the shards, as one process would (see `eval_shard`).
use anyhow::{bail, Context, Result};
use mde_core::io::{atomic_write, read_json, read_jsonl, write_json};
use mde_core::model::EvalModel;
use mde_core::records::{BenchItem, Prediction};
use mde_eval::badcase::{mine_bad_cases, write_mined};
use mde_eval::runner::{
    load_items_for, select_items, Benchmark, ImageLoader, LoadPurpose, Method, RunConfig,
};
use mde_eval::step::{evaluate, EvalDir};
use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Benchmark: mmbench, mme, aokvqa or seedbench.
    pub benchmark: Benchmark,
    /// Benchmark file: MMBench_DEV_EN.tsv, MME.tsv or MME folder, aokvqa_v1p0_val.json,
    /// SEED-Bench.json or SEEDBench_IMG.tsv.
    #[arg(long)]
    pub data: PathBuf,
    /// Image root (COCO folder for A-OKVQA, MME release folder, SEED-Bench images). Default: the
    /// folder of --data. Image references may not leave it.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Model config TOML (blip2, vicuna, projector, optional lora, dtype, device, max_batch).
    #[arg(long)]
    pub model: PathBuf,
    /// Run directory; re-running on the same directory resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Evaluate only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Items per model call (capped by the model config's max_batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// rank or generate (SEED-Bench only; default: the official protocol of the benchmark).
    #[arg(long)]
    pub method: Option<Method>,
    /// Clean variants instead of the released quirks (A-OKVQA: `<Img>` + BOS prompt and verbatim
    /// answers; MMBench: no character-set strip).
    #[arg(long)]
    pub clean: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Evaluate only slice I of N (I from 0) into OUT/shards/I-of-N/; `auto` reads
    /// RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT. Then run --merge.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// Merge the shards of --out into its predictions, official files and scores (the same
    /// files a single-process run writes).
    #[arg(long, conflicts_with = "shard")]
    pub merge: bool,
}

/// What produced the predictions of a run directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunInfo {
    benchmark: String,
    method: String,
    released_quirks: bool,
    model: String,
    data: String,
}

/// Reads, checks and resolves the model config TOML (no weights are read). A bad value
/// (`max_batch = 0`, a `[mmbench]`/`[chat]` setting out of range ...) is an error naming the
/// file and the key.
pub(crate) fn read_model_config(path: &Path) -> Result<EvalModelConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading model config {}", path.display()))?;
    let mut cfg: EvalModelConfig = toml::from_str(&text)
        .with_context(|| format!("{}: invalid model config", path.display()))?;
    cfg.validate().map_err(|e| e.in_file(path))?;
    cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    Ok(cfg)
}

fn load_model(path: &Path, cfg: &EvalModelConfig) -> Result<MiniGpt4Eval> {
    let t = Instant::now();
    let model = MiniGpt4Eval::load(cfg)
        .with_context(|| format!("loading the model of {}", path.display()))?;
    tracing::info!(
        "loaded {} in {:.1}s",
        model.name(),
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The config's display name without loading weights (for run.json checks).
fn model_label(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

pub fn run(args: Args) -> Result<()> {
    // Checked first, before any benchmark file is read or any output written.
    let model_cfg = read_model_config(&args.model)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let image_root = args
        .images
        .clone()
        .or_else(|| args.data.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    // `mde eval` always scores: the ground-truth columns/fields are checked here, before the
    // model is loaded (an MMBench TSV without `answer` fails now, naming the file and column).
    let items = load_items_for(
        args.benchmark,
        &args.data,
        Some(&image_root),
        LoadPurpose::Evaluation,
    )?;
    if items.is_empty() {
        bail!("{}: no {} items found", args.data.display(), args.benchmark);
    }

    let mut cfg = RunConfig::new(args.benchmark);
    if let Some(m) = args.method {
        cfg.method = m;
    }
    cfg.batch_size = args.batch_size;
    cfg.limit = args.limit;
    cfg.released_quirks = !args.clean;
    cfg.progress = !args.quiet;

    let info = RunInfo {
        benchmark: args.benchmark.to_string(),
        method: format!("{:?}", cfg.method).to_lowercase(),
        released_quirks: cfg.released_quirks,
        model: model_label(&args.model),
        data: std::fs::canonicalize(&args.data)
            .unwrap_or(args.data.clone())
            .display()
            .to_string(),
    };
    let info_path = args.out.join("run.json");
    if info_path.is_file() {
        let old: RunInfo = read_json(&info_path)?;
        if old != info {
            bail!(
                "{} holds predictions of another run ({old:?}); use a fresh --out for {info:?}",
                args.out.display()
            );
        }
    } else {
        write_json(&info_path, &info)?;
    }

    let selected: Vec<BenchItem> = select_items(&items, &cfg).into_iter().cloned().collect();
    // The batch size the run uses (the runner's rule), which the shard slices align to.
    let batch = cfg.batch_for(model_cfg.max_batch);
    if let Some(spec) = &args.shard {
        let shard = crate::eval_shard::Shard::parse(spec)?;
        let range = shard.range(selected.len(), batch);
        let dir = shard.dir(&args.out);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = dir.join("predictions.jsonl");
        let slice = &selected[range.clone()];
        let mut model = load_model(&args.model, &model_cfg)?;
        let mut scfg = cfg.clone();
        scfg.limit = None;
        let outcome = mde_eval::runner::run_predictions(
            &mut model,
            slice,
            &store,
            &scfg,
            &ImageLoader::new(Some(image_root)),
        )?;
        eprintln!(
            "shard {}/{}: items {}..{} of {} ({} new predictions) -> {}; run --merge when every shard has finished",
            shard.index,
            shard.count,
            range.start,
            range.end,
            selected.len(),
            outcome.new,
            store.display()
        );
        return Ok(());
    }
    let store = EvalDir::new(&args.out).predictions();
    if args.merge {
        let merged = crate::eval_shard::merge(&args.out, &selected, batch)?;
        mde_core::io::write_jsonl(&store, &merged)?;
        tracing::info!(
            "merged {} predictions of the shards into {}",
            merged.len(),
            store.display()
        );
    }
    let done: HashSet<String> = if store.is_file() {
        read_jsonl::<Prediction>(&store)?
            .into_iter()
            .map(|p| p.id)
            .collect()
    } else {
        HashSet::new()
    };
    let pending = selected.iter().filter(|it| !done.contains(&it.id)).count();
    let images = ImageLoader::new(Some(image_root));
    let run = EvalDir::new(&args.out);
    let t = Instant::now();
    // Everything predicted already: no need to load the weights again.
    let mut loaded;
    let model: &mut dyn EvalModel = if pending > 0 {
        loaded = load_model(&args.model, &model_cfg)?;
        tracing::info!(
            "{}: {pending} of {} items to answer with {}",
            args.benchmark,
            selected.len(),
            loaded.name()
        );
        &mut loaded
    } else {
        &mut NoModel
    };
    let ev = evaluate(
        model,
        args.benchmark,
        &args.data,
        &items,
        &cfg,
        &images,
        &run,
    )?;
    let (outcome, files, selected) = (&ev.outcome, &ev.official_files, &ev.selected);
    let secs = t.elapsed().as_secs_f64();
    if outcome.new > 0 {
        tracing::info!(
            "{} new predictions in {secs:.1}s ({:.2} items/s)",
            outcome.new,
            outcome.new as f64 / secs
        );
    }

    let mut report = format!(
        "# {} evaluation\n\n- data: `{}`\n- model config: `{}`\n- method: {:?}{}\n- items: {} evaluated ({} new this run)\n- official prediction files: {}\n\n",
        args.benchmark,
        args.data.display(),
        args.model.display(),
        cfg.method,
        if cfg.released_quirks { " (released behaviour)" } else { " (clean variant)" },
        outcome.predictions.len(),
        outcome.new,
        files.iter().map(|f| format!("`{}`", f.display())).collect::<Vec<_>>().join(", ")
    );
    let scored = match ev.scored {
        Ok(s) => s,
        Err(e) => {
            report.push_str(&format!("**Scoring failed:** {e}\n"));
            atomic_write(args.out.join("report.md"), report.as_bytes())?;
            bail!(
                "scoring failed ({e}); the predictions are kept in {}",
                store.display()
            );
        }
    };
    mde_eval::step::write_scores(&run, args.benchmark, outcome.predictions.len(), &scored)?;
    report.push_str(&scored.markdown);

    let mined = mine_bad_cases(selected, &outcome.predictions, &scored.verdicts);
    write_mined(&args.out, &mined)?;
    report.push_str(&format!(
        "\n## Bad cases\n\n{} wrong of {} scored items -> `bad_cases.jsonl`; per-type error rates -> `weights.json`.\n",
        mined.bad_cases.len(),
        mined.scored
    ));
    if !mined.weights.weights.is_empty() {
        let rows: Vec<Vec<String>> = mined
            .weights
            .stats
            .iter()
            .map(|(t, s)| {
                vec![
                    t.clone(),
                    s.total.to_string(),
                    s.wrong.to_string(),
                    format!("{}", s.error_rate),
                ]
            })
            .collect();
        report.push('\n');
        report.push_str(&mde_eval::report::markdown_table(
            &["type", "total", "wrong", "error rate"],
            &rows,
        ));
    }
    if !mined.skipped.is_empty() {
        report.push_str(&format!(
            "\n{} wrong items could not become bad cases:\n",
            mined.skipped.len()
        ));
        for (id, why) in mined.skipped.iter().take(20) {
            report.push_str(&format!("- {id}: {why}\n"));
        }
    }
    atomic_write(args.out.join("report.md"), report.as_bytes())?;
    println!("{}", scored.markdown);
    println!(
        "{} bad cases; files in {} (report.md, scores.json, bad_cases.jsonl, weights.json)",
        mined.bad_cases.len(),
        args.out.display()
    );
    Ok(())
}

/// Stands in for the model when every item is already predicted; any call is a bug.
struct NoModel;

impl EvalModel for NoModel {
    fn name(&self) -> String {
        "resumed".into()
    }
    fn max_batch(&self) -> usize {
        1
    }
    fn generate(
        &mut self,
        reqs: &[mde_core::model::EvalRequest],
    ) -> std::result::Result<Vec<String>, mde_core::model::ModelError> {
        Err(mde_core::model::ModelError::Backend(format!(
            "no model loaded for {} pending items",
            reqs.len()
        )))
    }
    fn rank(
        &mut self,
        reqs: &[mde_core::model::EvalRequest],
    ) -> std::result::Result<Vec<Vec<f32>>, mde_core::model::ModelError> {
        Err(mde_core::model::ModelError::Backend(format!(
            "no model loaded for {} pending items",
            reqs.len()
        )))
    }
}
