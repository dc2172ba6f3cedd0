//! `mde generate` (teacher LLM over generation queries, resumable) and `mde postprocess`
//! (parse, filter and validate replies into GPTVQA v1/v2 and LLaVA files).
//!
//! Both are the loop's steps of the same name (`mde_loop::steps::{generate, postprocess}`).
use anyhow::{bail, Context, Result};
use mde_core::io::read_jsonl;
use mde_core::records::GenQuery;
use mde_gen::{build_teacher, GenConfig, ValidationMode};
use mde_loop::layout::{GenerateFiles, PostprocessFiles};
use mde_loop::steps::{generate, postprocess};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Generation queries (JSONL of GenQuery, e.g. from `mde sample`).
    #[arg(long)]
    pub queries: PathBuf,
    /// Teacher config (TOML: [teacher], [runner], [prompt], [postprocess]).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Output directory: replies.jsonl (append-only, resumable) and summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Override runner.concurrency.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Override runner.max_total_tokens (counts every reply in replies.jsonl).
    #[arg(long)]
    pub max_total_tokens: Option<u64>,
    /// Override runner.max_cost.
    #[arg(long)]
    pub max_cost: Option<f64>,
    /// Override prompt.generate_template (a template file with {placeholders}).
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::Args)]
pub struct PostprocessArgs {
    /// Teacher replies (JSONL of TeacherReplyRecord, from `mde generate`).
    #[arg(long)]
    pub replies: PathBuf,
    /// The queries the replies answer (JSONL of GenQuery).
    #[arg(long)]
    pub queries: PathBuf,
    /// Output directory for gptvqa_v1.json, gptvqa_v2.json, llava.json, items.jsonl,
    /// dropped.jsonl and postprocess_summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Config whose [postprocess] section to use (e.g. the teacher config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the validation mode: off, flag (keep and flag) or drop.
    #[arg(long, value_parser = ["off", "flag", "drop"])]
    pub validation: Option<String>,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let mut cfg = GenConfig::load(&args.teacher)?;
    if let Some(c) = args.concurrency {
        cfg.runner.concurrency = c;
    }
    if args.max_total_tokens.is_some() {
        cfg.runner.max_total_tokens = args.max_total_tokens;
    }
    if args.max_cost.is_some() {
        cfg.runner.max_cost = args.max_cost;
    }
    if args.template.is_some() {
        cfg.prompt.generate_template = args.template.clone();
    }
    if args.no_progress {
        cfg.runner.progress = false;
    }
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("{}: {m}", args.teacher.display()))?;
    let queries: Vec<GenQuery> = read_jsonl(&args.queries)?;
    if queries.is_empty() {
        bail!(
            "{}: no queries (expected JSONL of GenQuery records)",
            args.queries.display()
        );
    }
    let out = GenerateFiles::new(&args.out);
    let summary = generate::run(
        &generate::Config {
            endpoint: &cfg.teacher,
            runner: &cfg.runner,
            prompt: &cfg.prompt,
            ctrl_c: true,
        },
        generate::Inputs {
            queries: &queries,
            queries_file: &args.queries,
            teacher: build_teacher(&cfg.teacher)?,
        },
        &out,
    )
    .with_context(|| format!("generating for the queries of {}", args.queries.display()))?;
    eprintln!("{}", generate::summary_line(&summary));
    eprintln!("summary: {}", out.summary().display());
    // A non-zero exit when a query has no reply, so that scripts notice; the replies stored
    // so far are kept and a re-run asks only for the missing ones.
    generate::require_finished(&summary, &out)?;
    Ok(())
}

pub fn run_postprocess(args: PostprocessArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => GenConfig::load(p)?.postprocess,
        None => Default::default(),
    };
    if let Some(v) = &args.validation {
        cfg.validation = match v.as_str() {
            "off" => ValidationMode::Off,
            "flag" => ValidationMode::Flag,
            "drop" => ValidationMode::Drop,
            other => bail!("--validation: expected off, flag or drop, got {other:?}"),
        };
    }
    // One reply per query id (the first complete line); duplicates and a torn last line are
    // reported in postprocess_summary.json (`input`) and as a warning.
    let queries: Vec<GenQuery> = read_jsonl(&args.queries)?;
    let out = postprocess::run(
        &cfg,
        &args.replies,
        &queries,
        &PostprocessFiles::new(&args.out),
    )?;
    let s = &out.stats;
    eprintln!(
        "{} replies: {} kept ({} flagged), {} dropped",
        s.replies, s.kept, s.kept_flagged, s.dropped
    );
    for (reason, n) in &s.drop_reasons {
        eprintln!("  dropped {reason}: {n}");
    }
    for (flag, n) in &s.validation.flags {
        eprintln!("  flag {flag}: {n}");
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
