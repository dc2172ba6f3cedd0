//! `mde generate` (teacher LLM over generation queries, resumable) and `mde postprocess`
//! (parse, filter and validate replies into GPTVQA v1/v2 and LLaVA files).
use anyhow::{bail, Context, Result};
use mde_core::io::{read_jsonl, write_json};
use mde_core::records::GenQuery;
use mde_gen::postprocess::{postprocess_file, to_llava, to_v1, to_v2};
use mde_gen::{build_teacher, GenConfig, Runner, ValidationMode};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

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
    // Refuse query images outside the image root before any request leaves the machine.
    cfg.teacher.check_query_images(&queries, &args.queries)?;
    let prompt = cfg.generate_prompt()?;
    let teacher = build_teacher(&cfg.teacher)?;
    let runner = Runner::new(teacher, cfg.runner.clone());
    let stop = runner.stop_handle();
    let replies = args.out.join("replies.jsonl");
    let summary_path = args.out.join("summary.json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let summary = rt
        .block_on(async {
            // Ctrl-C: stop starting requests, let in-flight ones land, write the summary.
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("stopping: waiting for requests in flight (Ctrl-C again to kill)");
                    stop.store(true, Ordering::SeqCst);
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                }
            });
            let teacher_cfg = cfg.teacher.clone();
            runner
                .run(
                    &queries,
                    |q| {
                        let mut req = prompt.request(q)?;
                        teacher_cfg.apply_sampling(&mut req);
                        if !teacher_cfg.vision {
                            for m in &mut req.messages {
                                m.images.clear();
                            }
                        }
                        Ok(req)
                    },
                    &replies,
                    Some(&summary_path),
                )
                .await
        })
        .with_context(|| format!("generating for the queries of {}", args.queries.display()))?;
    eprintln!(
        "{}: {} done before, {} completed, {} failed, {} not started; {} prompt + {} completion tokens, cost {:.4}; {:.1} replies/s{}",
        replies.display(),
        summary.already_done,
        summary.completed,
        summary.failed,
        summary.not_started,
        summary.prompt_tokens,
        summary.completion_tokens,
        summary.cost,
        summary.replies_per_s,
        summary.stopped.as_deref().map(|s| format!("; stopped: {s}")).unwrap_or_default()
    );
    eprintln!("summary: {}", summary_path.display());
    if summary.failed > 0 {
        // A non-zero exit, so that scripts notice; the replies stored so far are kept and a
        // re-run retries only the failed queries.
        for f in summary.failures.iter().take(5) {
            eprintln!(
                "  query {}: {} ({} attempt{})",
                f.query_id,
                f.error,
                f.attempts,
                if f.attempts == 1 { "" } else { "s" }
            );
        }
        bail!(
            "{} of {} queries failed (all in {}); re-run the same command to retry them",
            summary.failed,
            summary.pending,
            summary_path.display()
        );
    }
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
    let out = postprocess_file(&args.replies, &queries, &cfg)
        .map_err(|e| anyhow::anyhow!("postprocess: {e}"))?;
    if !out.stats.input.is_clean() {
        tracing::warn!("{}", out.stats.input.summary());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let v1: Vec<_> = out.items.iter().map(to_v1).collect();
    let v2: Vec<_> = out.items.iter().map(to_v2).collect();
    let llava: Vec<_> = out.items.iter().map(to_llava).collect();
    write_json(args.out.join("gptvqa_v1.json"), &v1)?;
    write_json(args.out.join("gptvqa_v2.json"), &v2)?;
    write_json(args.out.join("llava.json"), &llava)?;
    write_jsonl_atomic(&args.out.join("items.jsonl"), &out.items)?;
    write_jsonl_atomic(&args.out.join("dropped.jsonl"), &out.dropped)?;
    write_json(args.out.join("postprocess_summary.json"), &out.stats)?;
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

fn write_jsonl_atomic<T: serde::Serialize>(path: &std::path::Path, items: &[T]) -> Result<()> {
    let mut buf = Vec::new();
    for it in items {
        serde_json::to_writer(&mut buf, it)?;
        buf.push(b'\n');
    }
    mde_core::io::atomic_write(path, &buf)?;
    Ok(())
}
