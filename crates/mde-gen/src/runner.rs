//! The concurrent, resumable generation runner.
//!
//! - Bounded concurrency (`buffer_unordered`), one request per pending query.
//! - Retries with exponential backoff and jitter; a server's `Retry-After` is honoured (clamped to
//!   `retry_after_max_s`, plus up to 10% jitter so clients that were told the same time do not
//!   return together). A runner-side timeout guards every attempt.
//! - Replies are appended to a [`JsonlStore`] keyed by query id, one flushed line each, from a
//!   synchronous section with no `.await`: a killed or aborted run loses only the requests in
//!   flight, and a re-run skips every stored query, so nothing is requested or written twice.
//! - Budgets (tokens, cost) count every reply in the store, previous runs included; once reached,
//!   no new request or retry starts and the run ends cleanly. Requests already in flight still
//!   finish, so a budget can be overshot by at most `concurrency` replies.
//! - A run summary (totals, per-request usage, error and failure histograms) is written atomically.
use crate::config::{GenConfig, RunnerConfig};
use crate::error::{GenError, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mde_core::io::{write_json, JsonlStore};
use mde_core::records::{GenQuery, TeacherReplyRecord};
use mde_core::teacher::{Teacher, TeacherError, TeacherRequest};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Usage of one completed request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestUsage {
    pub query_id: String,
    pub attempts: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    /// Seconds from the first attempt to the stored reply (backoff included).
    pub latency_s: f64,
}

/// A query that exhausted its attempts or hit a fatal error (it is not stored: a re-run retries it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailedQuery {
    pub query_id: String,
    pub attempts: u32,
    pub error: String,
    pub retryable: bool,
}

/// Summary of one runner invocation (`summary.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub teacher: String,
    pub replies_path: PathBuf,
    /// Queries given.
    pub total_queries: usize,
    /// Queries already in the store when the run started.
    pub already_done: usize,
    /// Queries this run set out to do.
    pub pending: usize,
    pub completed: usize,
    pub failed: usize,
    /// Pending queries not started (budget reached or stop requested).
    pub not_started: usize,
    /// HTTP attempts made (first tries + retries).
    pub attempts: u64,
    pub retries: u64,
    /// Error kind -> count over all attempts (e.g. "HTTP 429", "timeout", "malformed").
    pub errors: BTreeMap<String, u64>,
    /// Tokens and cost of this run's replies.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    /// Tokens and cost of every reply in the store (the budget basis).
    pub store_total_tokens: u64,
    pub store_cost: f64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    pub elapsed_s: f64,
    /// Completed replies per second of wall time.
    pub replies_per_s: f64,
    pub failures: Vec<FailedQuery>,
    pub requests: Vec<RequestUsage>,
    /// Whether every query now has a stored reply.
    pub finished: bool,
}

struct Shared {
    store: Mutex<JsonlStore<TeacherReplyRecord>>,
    summary: Mutex<RunSummary>,
    stop: Arc<AtomicBool>,
    rng: Mutex<rand::rngs::StdRng>,
    bar: ProgressBar,
    cfg: RunnerConfig,
    summary_path: Option<PathBuf>,
    last_write: Mutex<Instant>,
}

/// Runs a teacher over generation queries.
pub struct Runner {
    teacher: Arc<dyn Teacher>,
    cfg: RunnerConfig,
    stop: Arc<AtomicBool>,
}

fn error_kind(e: &TeacherError) -> String {
    let m = e.message.as_str();
    if let Some(rest) = m.strip_prefix("HTTP ") {
        return format!(
            "HTTP {}",
            rest.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        );
    }
    for k in [
        "timeout",
        "connection",
        "connect",
        "malformed",
        "transport",
        "error object",
        "response has no",
    ] {
        if m.starts_with(k) {
            return k.replace(' ', "_");
        }
    }
    if e.retryable {
        "other_retryable".into()
    } else {
        "other_fatal".into()
    }
}

impl Runner {
    pub fn new(teacher: Arc<dyn Teacher>, cfg: RunnerConfig) -> Self {
        Self {
            teacher,
            cfg,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Setting this flag stops the run cleanly: no new request or retry starts, in-flight ones
    /// finish and are stored, the summary is written (e.g. on Ctrl-C).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Cost of a reply under the configured prices (per 1k tokens).
    pub fn cost_of(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        cost(&self.cfg, prompt_tokens, completion_tokens)
    }

    /// Answers every query not yet in `replies_path`. `render` builds the request of a query (all
    /// requests are rendered before the first call, so a template error costs nothing).
    /// `summary_path` gets the run summary (atomically; also refreshed every few seconds).
    pub async fn run(
        &self,
        queries: &[GenQuery],
        render: impl Fn(&GenQuery) -> Result<TeacherRequest>,
        replies_path: impl AsRef<Path>,
        summary_path: Option<&Path>,
    ) -> Result<RunSummary> {
        let replies_path = replies_path.as_ref();
        // Same checks as a loaded config (a RunnerConfig may be built in code).
        GenConfig {
            runner: self.cfg.clone(),
            ..Default::default()
        }
        .validate()
        .map_err(GenError::Runner)?;
        let store: JsonlStore<TeacherReplyRecord> =
            JsonlStore::open(replies_path, |r: &TeacherReplyRecord| r.query_id.clone())?;
        let mut seen = HashSet::new();
        for q in queries {
            if q.id.is_empty() {
                return Err(GenError::Query {
                    id: q.id.clone(),
                    msg: "empty query id".into(),
                });
            }
            if !seen.insert(q.id.as_str()) {
                return Err(GenError::Query {
                    id: q.id.clone(),
                    msg: "duplicate query id in the queries".into(),
                });
            }
        }
        let mut pending = Vec::new();
        for q in queries.iter().filter(|q| !store.contains(&q.id)) {
            pending.push((q.id.clone(), render(q)?));
        }
        let (store_tokens, store_cost) = store.records().iter().fold((0u64, 0f64), |(t, c), r| {
            (
                t + r.prompt_tokens + r.completion_tokens,
                c + cost(&self.cfg, r.prompt_tokens, r.completion_tokens),
            )
        });
        let summary = RunSummary {
            teacher: self.teacher.name(),
            replies_path: replies_path.to_path_buf(),
            total_queries: queries.len(),
            already_done: queries.len() - pending.len(),
            pending: pending.len(),
            store_total_tokens: store_tokens,
            store_cost,
            ..Default::default()
        };
        let bar = if self.cfg.progress {
            ProgressBar::new(pending.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let rng = match self.cfg.jitter_seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            summary: Mutex::new(summary),
            stop: self.stop.clone(),
            rng: Mutex::new(rng),
            bar,
            cfg: self.cfg.clone(),
            summary_path: summary_path.map(Path::to_path_buf),
            last_write: Mutex::new(Instant::now()),
        });
        if let Some(reason) = budget_reason(&shared) {
            lock(&shared.summary).stopped = Some(reason);
        }
        let start = Instant::now();
        let teacher = self.teacher.clone();
        let results: Vec<Result<()>> = futures::stream::iter(pending)
            .map(|(id, req)| {
                let shared = shared.clone();
                let teacher = teacher.clone();
                async move { process(&*teacher, &shared, id, req).await }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        shared.bar.finish();
        let first_err = results.into_iter().find_map(|r| r.err());
        let mut s = lock(&shared.summary).clone();
        s.elapsed_s = start.elapsed().as_secs_f64();
        s.replies_per_s = if s.elapsed_s > 0.0 {
            s.completed as f64 / s.elapsed_s
        } else {
            0.0
        };
        let store = lock(&shared.store);
        s.finished = queries.iter().all(|q| store.contains(&q.id));
        drop(store);
        if let Some(e) = &first_err {
            s.stopped.get_or_insert_with(|| format!("store error: {e}"));
        } else if s.stopped.is_none() && self.stop.load(Ordering::SeqCst) {
            s.stopped = Some("stop requested".into());
        }
        if let Some(p) = summary_path {
            write_json(p, &s)?;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these values half-updated in a way that matters here.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cost(cfg: &RunnerConfig, p: u64, c: u64) -> f64 {
    p as f64 / 1000.0 * cfg.price_prompt_per_1k + c as f64 / 1000.0 * cfg.price_completion_per_1k
}

fn budget_reason(sh: &Shared) -> Option<String> {
    let s = lock(&sh.summary);
    if let Some(max) = sh.cfg.max_total_tokens {
        if s.store_total_tokens >= max {
            return Some(format!(
                "token budget reached ({} >= {max})",
                s.store_total_tokens
            ));
        }
    }
    if let Some(max) = sh.cfg.max_cost {
        if s.store_cost >= max {
            return Some(format!(
                "cost budget reached ({:.4} >= {max})",
                s.store_cost
            ));
        }
    }
    None
}

fn should_stop(sh: &Shared) -> bool {
    if sh.stop.load(Ordering::SeqCst) {
        return true;
    }
    if let Some(reason) = budget_reason(sh) {
        lock(&sh.summary).stopped.get_or_insert(reason);
        sh.stop.store(true, Ordering::SeqCst);
        return true;
    }
    false
}

fn backoff(sh: &Shared, attempt: u32, retry_after: Option<f64>) -> Duration {
    let cfg = &sh.cfg;
    let mut rng = lock(&sh.rng);
    let secs = match retry_after {
        Some(ra) => {
            let ra = ra.clamp(0.0, cfg.retry_after_max_s);
            ra + ra * rng.random_range(0.0..=0.1)
        }
        None => {
            let exp = cfg.backoff_base_s * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
            exp.min(cfg.backoff_max_s) * rng.random_range(0.5..=1.0)
        }
    };
    Duration::from_secs_f64(secs.max(0.0))
}

fn update_bar(sh: &Shared) {
    let s = lock(&sh.summary);
    sh.bar.set_message(format!(
        "ok {} fail {} retry {} tok {} cost {:.2}",
        s.completed,
        s.failed,
        s.retries,
        s.prompt_tokens + s.completion_tokens,
        s.cost
    ));
}

fn maybe_write_summary(sh: &Shared) {
    let Some(p) = &sh.summary_path else { return };
    let mut last = lock(&sh.last_write);
    if last.elapsed() < Duration::from_secs(5) {
        return;
    }
    *last = Instant::now();
    let s = lock(&sh.summary).clone();
    if let Err(e) = write_json(p, &s) {
        tracing::warn!("cannot refresh run summary: {e}");
    }
}

async fn process(
    teacher: &dyn Teacher,
    sh: &Shared,
    id: String,
    req: TeacherRequest,
) -> Result<()> {
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(sh.cfg.request_timeout_s);
    let mut attempt = 0u32;
    loop {
        if should_stop(sh) {
            lock(&sh.summary).not_started += usize::from(attempt == 0);
            if attempt > 0 {
                let mut s = lock(&sh.summary);
                s.failed += 1;
                s.failures.push(FailedQuery {
                    query_id: id.clone(),
                    attempts: attempt,
                    error: "stopped before a retry".into(),
                    retryable: true,
                });
            }
            return Ok(());
        }
        attempt += 1;
        {
            let mut s = lock(&sh.summary);
            s.attempts += 1;
            if attempt > 1 {
                s.retries += 1;
            }
        }
        let result = match tokio::time::timeout(timeout, teacher.complete(&req)).await {
            Ok(r) => r,
            Err(_) => Err(TeacherError::retryable(format!(
                "timeout (runner) after {:.1}s",
                timeout.as_secs_f64()
            ))),
        };
        match result {
            Ok(reply) => {
                let rec = TeacherReplyRecord {
                    query_id: id.clone(),
                    text: reply.text,
                    prompt_tokens: reply.prompt_tokens,
                    completion_tokens: reply.completion_tokens,
                    model: reply.model,
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                };
                // No await between here and the end of the append: abort-safe.
                let written = lock(&sh.store).append(&rec)?;
                let c = cost(&sh.cfg, rec.prompt_tokens, rec.completion_tokens);
                {
                    let mut s = lock(&sh.summary);
                    if written {
                        s.completed += 1;
                        s.prompt_tokens += rec.prompt_tokens;
                        s.completion_tokens += rec.completion_tokens;
                        s.cost += c;
                        s.store_total_tokens += rec.prompt_tokens + rec.completion_tokens;
                        s.store_cost += c;
                        s.requests.push(RequestUsage {
                            query_id: id.clone(),
                            attempts: attempt,
                            prompt_tokens: rec.prompt_tokens,
                            completion_tokens: rec.completion_tokens,
                            cost: c,
                            latency_s: t0.elapsed().as_secs_f64(),
                        });
                    }
                }
                sh.bar.inc(1);
                update_bar(sh);
                maybe_write_summary(sh);
                return Ok(());
            }
            Err(e) => {
                *lock(&sh.summary).errors.entry(error_kind(&e)).or_default() += 1;
                tracing::debug!(query = %id, attempt, error = %e.message, "teacher error");
                if !e.retryable || attempt >= sh.cfg.max_attempts {
                    {
                        let mut s = lock(&sh.summary);
                        s.failed += 1;
                        s.failures.push(FailedQuery {
                            query_id: id.clone(),
                            attempts: attempt,
                            error: e.message.clone(),
                            retryable: e.retryable,
                        });
                    }
                    sh.bar.inc(1);
                    update_bar(sh);
                    return Ok(());
                }
                update_bar(sh);
                tokio::time::sleep(backoff(sh, attempt, e.retry_after)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            error_kind(&TeacherError::retryable("HTTP 429: slow down")),
            "HTTP 429"
        );
        assert_eq!(
            error_kind(&TeacherError::retryable("timeout (runner) after 1s")),
            "timeout"
        );
        assert_eq!(
            error_kind(&TeacherError::retryable("malformed response body")),
            "malformed"
        );
        assert_eq!(error_kind(&TeacherError::fatal("weird")), "other_fatal");
    }
}
