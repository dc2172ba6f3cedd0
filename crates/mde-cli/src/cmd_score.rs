//! `mde score <benchmark>`: scores a prediction file with the rules of the official tool and
//! writes `scores.json` (atomically) and `report.md` into `--out`.
//!
//! | benchmark | `--data` | `--predictions` | scorer |
//! |---|---|---|---|
//! | `mmbench` | `MMBench_DEV_EN.tsv` | VLMEvalKit `.tsv` | VLMEvalKit circular, exact matching |
//! | `mme` | (unused) | results folder of `<task>.txt` | official `calculation.py` |
//! | `mme` | (unused) | VLMEvalKit `.tsv` | VLMEvalKit `MME_rating` |
//! | `mme` | template folder, release folder or `MME.tsv` | mde `predictions.jsonl` | both (writes the official files first) |
//! | `aokvqa` | `aokvqa_v1p0_<split>.json` | `predictions_<split>.json` | official `eval_predictions.py` |
//! | `seedbench` | `SEED-Bench.json` | `predictions.jsonl` | official `eval.py` accuracy (`--task`) |
//! | `seedbench` | `SEEDBench_IMG.tsv` | VLMEvalKit `.tsv` | VLMEvalKit `SEEDBench_IMG` |
//! | `vqa` | VQA annotation file (VQAv2, OK-VQA) | results `[{question_id, answer}]` | official `vqaEval.py` (`--vqa-variant official`, default) or LAVIS's (`lavis`) |
use anyhow::{bail, Context, Result};
use mde_eval::matching::{ExtractionVersion, MatchOptions};
use mde_eval::mmbench::McqOptions;
use mde_eval::{aokvqa, mmbench, mme, seedbench};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Benchmarks `mde score` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Benchmark {
    Mmbench,
    Mme,
    Aokvqa,
    Seedbench,
    /// VQA accuracy (VQAv2, OK-VQA and other sets in the VQA annotation format).
    Vqa,
}

impl Benchmark {
    fn name(self) -> &'static str {
        match self {
            Benchmark::Mmbench => "mmbench",
            Benchmark::Mme => "mme",
            Benchmark::Aokvqa => "aokvqa",
            Benchmark::Seedbench => "seedbench",
            Benchmark::Vqa => "vqa",
        }
    }
}

/// Arguments of `mde score`.
#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark's rules to apply.
    #[arg(value_enum)]
    pub benchmark: Benchmark,
    /// Benchmark data: dataset TSV (mmbench, SEEDBench_IMG, MME), A-OKVQA JSON, SEED-Bench.json, or an
    /// MME template/release folder. Not needed for MME result folders or MME VLMEvalKit TSVs.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Prediction file (or MME results folder); see the table in the command's docs.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Output folder for scores.json and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// SEED-Bench task for the official accuracy: image (dims 1-9), video, all, or a dimension id.
    #[arg(long, default_value = "image")]
    pub task: String,
    /// VLMEvalKit answer-extraction version (mmbench, SEEDBench_IMG): current, pre_1552, pre_1175.
    #[arg(long, default_value = "current")]
    pub extraction: String,
    /// Emulate env VERBOSE set for VLMEvalKit's extraction (enables the "A is a quantifier" guard).
    #[arg(long)]
    pub vlmeval_verbose: bool,
    /// Name printed for the prediction file in the official A-OKVQA output (default: the path).
    #[arg(long)]
    pub prediction_name: Option<String>,
    /// VQA accuracy code to reproduce: official (GT-Vision-Lab vqaEval.py) or lavis.
    #[arg(long, default_value = "official")]
    pub vqa_variant: String,
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn need_data(args: &Args) -> Result<&Path> {
    args.data
        .as_deref()
        .with_context(|| format!("`mde score {}` needs --data", args.benchmark.name()))
}

fn mcq_options(args: &Args) -> Result<McqOptions> {
    let version = ExtractionVersion::from_name(&args.extraction).with_context(|| {
        format!(
            "--extraction {:?}: expected current, pre_1552 or pre_1175",
            args.extraction
        )
    })?;
    Ok(McqOptions {
        matching: MatchOptions {
            version,
            verbose: args.vlmeval_verbose,
        },
        ..Default::default()
    })
}

/// What a scorer produced: the JSON report, the Markdown text and what to print.
struct Scored {
    variant: String,
    report: serde_json::Value,
    markdown: String,
    stdout: String,
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).context("serialising the report")
}

fn score_mmbench(args: &Args) -> Result<Scored> {
    let data = need_data(args)?;
    let r = mmbench::score_mmbench(data, &args.predictions, &mcq_options(args)?)?;
    Ok(Scored {
        variant: "vlmevalkit_circular".into(),
        report: to_json(&r)?,
        markdown: format!(
            "## MMBench (VLMEvalKit, exact matching)\n\n{}",
            r.to_markdown()
        ),
        stdout: r.to_markdown(),
    })
}

fn score_mme(args: &Args) -> Result<Scored> {
    let p = &args.predictions;
    if p.is_dir() {
        let r = mme::score_official_dir(p)?;
        return Ok(Scored {
            variant: "official".into(),
            report: to_json(&r)?,
            markdown: r.to_markdown(),
            stdout: r.stdout.clone(),
        });
    }
    match ext_of(p).as_str() {
        "tsv" => {
            let r = mme::score_vlmevalkit(p)?;
            let md = r.to_markdown();
            Ok(Scored { variant: "vlmevalkit".into(), report: to_json(&r)?, markdown: md.clone(), stdout: md })
        }
        "jsonl" => {
            // mde predictions: write both official layouts next to the scores, then score both.
            let data = need_data(args)?;
            let items = mme::load_mme(data, None)?;
            let read = mde_core::input_report::read_jsonl_report::<mde_core::records::Prediction>(p)?;
            let mut issues = read.issues;
            let known: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
            // A later line of the same id wins (as in a dict); ids MME does not have are ignored.
            let mut responses: HashMap<String, String> = HashMap::new();
            let mut line_of: HashMap<String, usize> = HashMap::new();
            for (pr, line) in read.records.into_iter().zip(read.lines) {
                if !known.contains(pr.id.as_str()) {
                    issues.unknown(pr.id.clone());
                    continue;
                }
                if let Some(prev) = line_of.insert(pr.id.clone(), line) {
                    issues.duplicate(pr.id.clone(), mde_core::input_report::Kept::Last, Some(line), Some(prev));
                }
                responses.insert(pr.id, pr.text);
            }
            let missing = items.iter().filter(|i| !responses.contains_key(&i.id)).count();
            let results_dir = args.out.join("mme_results");
            mme::write_official_results(&results_dir, &items, &responses)?;
            let tsv = args.out.join("mme_predictions.tsv");
            mme::write_vlmevalkit_predictions(&tsv, &items, &responses)?;
            let official = mme::score_official_dir(&results_dir);
            let vlm = mme::score_vlmevalkit(&tsv);
            let mut md = String::new();
            let mut stdout = String::new();
            let official_json = match &official {
                Ok(r) => {
                    md.push_str(&r.to_markdown());
                    stdout.push_str(&r.stdout);
                    to_json(r)?
                }
                Err(e) => {
                    md.push_str(&format!("## MME (official calculation.py)\n\nnot computed: {e}\n"));
                    json!({ "error": e.to_string() })
                }
            };
            md.push('\n');
            let vlm_json = match &vlm {
                Ok(r) => {
                    md.push_str(&r.to_markdown());
                    to_json(r)?
                }
                Err(e) => {
                    md.push_str(&format!("## MME (VLMEvalKit)\n\nnot computed: {e}\n"));
                    json!({ "error": e.to_string() })
                }
            };
            if let (Err(a), Err(b)) = (&official, &vlm) {
                bail!("MME: neither scorer could run (official: {a}; VLMEvalKit: {b})");
            }
            if missing > 0 {
                md.push_str(&format!("\n**Warning:** {missing} question(s) without a prediction (scored as empty answers).\n"));
            }
            Ok(Scored {
                variant: "official+vlmevalkit".into(),
                report: json!({
                    "official": official_json,
                    "vlmevalkit": vlm_json,
                    "missing_predictions": missing,
                    "unknown_prediction_ids": issues.unknown_ids.count,
                    "input_issues": issues,
                    "results_dir": results_dir,
                    "vlmevalkit_predictions": tsv,
                }),
                markdown: md,
                stdout,
            })
        }
        other => bail!(
            "MME predictions {}: expected a results folder, a VLMEvalKit .tsv or an mde .jsonl (got extension {other:?})",
            p.display()
        ),
    }
}

fn score_aokvqa(args: &Args) -> Result<Scored> {
    let data = need_data(args)?;
    let ds = aokvqa::load_aokvqa(data)?;
    let preds = aokvqa::read_predictions(&args.predictions)?;
    let name = args
        .prediction_name
        .clone()
        .unwrap_or_else(|| args.predictions.display().to_string());
    let mut r = aokvqa::score(&ds, &preds, &name)?;
    r.input_issues.file = args.predictions.display().to_string();
    Ok(Scored {
        variant: "official".into(),
        report: to_json(&r)?,
        markdown: r.to_markdown(),
        stdout: r.stdout.clone(),
    })
}

fn score_vqa(args: &Args) -> Result<Scored> {
    use mde_eval::vqa::{read_annotations, read_results, score_vqa, VqaVariant};
    let data = need_data(args)?;
    let variant: VqaVariant = args
        .vqa_variant
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--vqa-variant: {e}"))?;
    let anns = read_annotations(data)?;
    let results = read_results(&args.predictions)?;
    let r = score_vqa(&anns, &results, variant)?;
    let rows = |m: &std::collections::BTreeMap<String, f64>| -> Vec<Vec<String>> {
        m.iter()
            .map(|(k, v)| vec![k.clone(), format!("{v}")])
            .collect()
    };
    let markdown = format!(
        "## VQA accuracy ({} vqaEval)\n\n{} questions, overall **{}**\n\n### Per answer type\n\n{}\n### Per question type\n\n{}",
        match variant {
            VqaVariant::Official => "official",
            VqaVariant::Lavis => "LAVIS",
        },
        r.questions,
        r.overall,
        mde_eval::report::markdown_table(&["answer type", "accuracy"], &rows(&r.per_answer_type)),
        mde_eval::report::markdown_table(&["question type", "accuracy"], &rows(&r.per_question_type)),
    );
    Ok(Scored {
        variant: format!("{variant:?}").to_lowercase(),
        stdout: format!("VQA accuracy {} ({} questions)\n", r.overall, r.questions),
        report: to_json(&r)?,
        markdown,
    })
}

fn score_seedbench(args: &Args) -> Result<Scored> {
    let data = need_data(args)?;
    if ext_of(data) == "tsv" {
        let r = seedbench::score_vlmevalkit(data, &args.predictions, &mcq_options(args)?)?;
        let md = r.to_markdown();
        return Ok(Scored {
            variant: "vlmevalkit".into(),
            report: to_json(&r)?,
            markdown: md.clone(),
            stdout: md,
        });
    }
    let task = seedbench::SeedTask::parse(&args.task).with_context(|| {
        format!(
            "--task {:?}: expected image, video, all or a dimension id",
            args.task
        )
    })?;
    let ann = seedbench::load_seed_json(data)?;
    let preds = seedbench::read_predictions(&args.predictions)?;
    let mut r = seedbench::score_official(&ann, &preds, &task)?;
    r.input_issues.file = args.predictions.display().to_string();
    let mut stdout = r.stdout.clone();
    if let Some(e) = &r.official_error {
        stdout.push_str(&format!(
            "warning: the official eval.py raises {e} here (dimensions without a correct answer: {:?}); reported as 0\n",
            r.zero_correct_dims
        ));
    }
    Ok(Scored {
        variant: "official".into(),
        report: to_json(&r)?,
        markdown: r.to_markdown(),
        stdout,
    })
}

/// Logs a warning for every `input_issues` object of a report that recorded something
/// (unknown prediction ids, duplicates, a torn last line); the same object is in scores.json.
fn warn_input_issues(report: &serde_json::Value) {
    match report {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "input_issues" {
                    if let Ok(i) =
                        serde_json::from_value::<mde_core::input_report::InputIssues>(v.clone())
                    {
                        if !i.is_clean() {
                            tracing::warn!("{}", i.summary());
                        }
                    }
                } else {
                    warn_input_issues(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(warn_input_issues),
        _ => {}
    }
}

/// Runs `mde score`.
pub fn run(args: Args) -> Result<()> {
    let scored = match args.benchmark {
        Benchmark::Mmbench => score_mmbench(&args),
        Benchmark::Mme => score_mme(&args),
        Benchmark::Aokvqa => score_aokvqa(&args),
        Benchmark::Seedbench => score_seedbench(&args),
        Benchmark::Vqa => score_vqa(&args),
    }
    .with_context(|| {
        // Both files: a fault of the benchmark file (an answer index out of range) shows up
        // while scoring the predictions.
        let data = args
            .data
            .as_ref()
            .map(|d| format!(" against {}", d.display()))
            .unwrap_or_default();
        format!(
            "scoring {} predictions {}{data}",
            args.benchmark.name(),
            args.predictions.display()
        )
    })?;

    warn_input_issues(&scored.report);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let doc = json!({
        "benchmark": args.benchmark.name(),
        "variant": scored.variant,
        "data": args.data,
        "predictions": args.predictions,
        "report": scored.report,
    });
    let scores = args.out.join("scores.json");
    mde_core::io::write_json(&scores, &doc)?;
    let md = format!(
        "# Scores: {} ({})\n\nPredictions: `{}`\n\n{}",
        args.benchmark.name(),
        scored.variant,
        args.predictions.display(),
        scored.markdown
    );
    let report = args.out.join("report.md");
    mde_core::io::atomic_write(&report, md.as_bytes())?;
    print!("{}", scored.stdout);
    eprintln!("wrote {} and {}", scores.display(), report.display());
    Ok(())
}
