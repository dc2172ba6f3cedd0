//! Step 6, generate: the teacher answers every query, one generation request each, built from
//! `[prompt]` (`as_system` included) and the endpoint's sampling settings. Replies go to an
//! append-only JSONL store, so a killed or failed run resumes with the queries that have no
//! reply yet. `mde generate` and the loop's generate step are this function.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mde_core::records::GenQuery;
use mde_core::teacher::Teacher;
use mde_gen::{PromptConfig, RunSummary, Runner, RunnerConfig, TeacherConfig};

use crate::layout::GenerateFiles;
use crate::{LoopError, Result};

/// The library configs the step reads (mde-gen's `[teacher]`, `[runner]` and `[prompt]`).
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// Sampling settings, `vision` and the image root of the endpoint.
    pub endpoint: &'a TeacherConfig,
    pub runner: &'a RunnerConfig,
    pub prompt: &'a PromptConfig,
    /// Stop cleanly on Ctrl-C (no new request starts, replies in flight are stored; a second
    /// Ctrl-C exits at once). For interactive commands.
    pub ctrl_c: bool,
}

/// What the step reads.
pub struct Inputs<'a> {
    pub queries: &'a [GenQuery],
    /// The file the queries came from (named in errors).
    pub queries_file: &'a std::path::Path,
    pub teacher: Arc<dyn Teacher>,
}

/// Answers every query without a stored reply; returns the runner's summary (also written to
/// `out.summary()`). An unfinished run (failures, a token or cost budget, Ctrl-C) is not an
/// error here: [`require_finished`] says so, after the caller has reported the summary.
pub fn run(cfg: &Config, inputs: Inputs, out: &GenerateFiles) -> Result<RunSummary> {
    // Refuse query images outside the image root before any request leaves the machine.
    cfg.endpoint
        .check_query_images(inputs.queries, inputs.queries_file)?;
    let prompt = cfg.prompt.generate_prompt()?;
    super::create_dir(out.dir())?;
    let runner = Runner::new(inputs.teacher, cfg.runner.clone());
    let stop = runner.stop_handle();
    let rt = super::runtime(out.dir())?;
    let endpoint = cfg.endpoint;
    let summary = rt.block_on(async {
        if cfg.ctrl_c {
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("stopping: waiting for requests in flight (Ctrl-C again to kill)");
                    stop.store(true, Ordering::SeqCst);
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                }
            });
        }
        runner
            .run(
                inputs.queries,
                |q| {
                    let mut req = prompt.request(q)?;
                    endpoint.apply_sampling(&mut req);
                    // A text-only teacher gets no image (the HTTP client would drop it too;
                    // clearing it here keeps the stored request sizes honest).
                    if !endpoint.vision {
                        for m in &mut req.messages {
                            m.images.clear();
                        }
                    }
                    Ok(req)
                },
                out.replies(),
                Some(&out.summary()),
            )
            .await
    })?;
    Ok(summary)
}

/// An error unless every query has a reply: names the failures (the first five), the stop
/// reason and the summary file. A re-run retries only what is missing.
pub fn require_finished(summary: &RunSummary, out: &GenerateFiles) -> Result<()> {
    if summary.finished && summary.failed == 0 {
        return Ok(());
    }
    let mut msg = format!(
        "{} of {} queries have no reply ({} failed, {} not started{})",
        summary.failed + summary.not_started,
        summary.total_queries,
        summary.failed,
        summary.not_started,
        summary
            .stopped
            .as_deref()
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default()
    );
    for f in summary.failures.iter().take(5) {
        msg.push_str(&format!(
            "\n  query {}: {} ({} attempt{})",
            f.query_id,
            f.error,
            f.attempts,
            if f.attempts == 1 { "" } else { "s" }
        ));
    }
    msg.push_str(&format!(
        "\nsummary: {}; re-run the same command to resume",
        out.summary().display()
    ));
    Err(LoopError::GenerationIncomplete(msg))
}

/// One line for a terminal: what the run did and what it cost.
pub fn summary_line(summary: &RunSummary) -> String {
    format!(
        "{}: {} done before, {} completed, {} failed, {} not started; {} prompt + {} completion tokens, cost {:.4}; {:.1} replies/s{}",
        summary.replies_path.display(),
        summary.already_done,
        summary.completed,
        summary.failed,
        summary.not_started,
        summary.prompt_tokens,
        summary.completion_tokens,
        summary.cost,
        summary.replies_per_s,
        summary
            .stopped
            .as_deref()
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default()
    )
}
