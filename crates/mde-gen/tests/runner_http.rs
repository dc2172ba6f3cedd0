//! The runner and the async-openai client against a real HTTP server on 127.0.0.1 with injected
//! faults: 429 + Retry-After, 500, slow replies, dropped connections, malformed bodies, 400.
mod support;

use anyhow::Result;
use mde_core::io::read_jsonl;
use mde_core::records::{GenQuery, ObjectBox, TeacherReplyRecord};
use mde_gen::{build_teacher, GeneratePrompt, RunSummary, Runner, RunnerConfig, TeacherConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::server::{self, Fault, Plan};

fn queries(n: usize) -> Vec<GenQuery> {
    (0..n)
        .map(|i| GenQuery {
            id: format!("q{i}"),
            question_type: "image_scene".into(),
            type_definition: "the overall scene".into(),
            image_id: i as u64,
            captions: vec![format!("QID=q{i} a cat on a mat.")],
            boxes: vec![ObjectBox {
                category: "cat".into(),
                bbox: [0.1, 0.2, 0.3, 0.4],
            }],
            ..Default::default()
        })
        .collect()
}

fn teacher_cfg(base: &str, timeout_s: f64) -> TeacherConfig {
    TeacherConfig {
        base_url: base.into(),
        model: "test-model".into(),
        api_key_env: Some("MDE_GEN_TEST_KEY_UNSET".into()),
        timeout_s,
        connect_timeout_s: 2.0,
        ..Default::default()
    }
}

fn runner_cfg(concurrency: usize) -> RunnerConfig {
    RunnerConfig {
        concurrency,
        max_attempts: 6,
        backoff_base_s: 0.01,
        backoff_max_s: 0.05,
        request_timeout_s: 5.0,
        progress: false,
        jitter_seed: Some(7),
        price_prompt_per_1k: 0.01,
        price_completion_per_1k: 0.03,
        ..Default::default()
    }
}

async fn run(base: &str, qs: &[GenQuery], rc: RunnerConfig, out: &Path) -> Result<RunSummary> {
    // The client timeout must fire on `Fault::Slow` only: 1.5 s is 300x the normal 5 ms reply,
    // so a loaded machine does not turn a served reply into a timeout and a retry (which the
    // exactly-once assertions would count as a duplicate).
    let teacher = build_teacher(&teacher_cfg(base, 1.5))?;
    let prompt = GeneratePrompt::v1();
    let runner = Runner::new(teacher, rc);
    Ok(runner
        .run(
            qs,
            |q| prompt.request(q),
            out.join("replies.jsonl"),
            Some(&out.join("summary.json")),
        )
        .await?)
}

fn stored_ids(path: &Path) -> Result<Vec<String>> {
    let recs: Vec<TeacherReplyRecord> = read_jsonl(path)?;
    for r in &recs {
        // Each reply belongs to its own query (no cross-wiring between concurrent requests).
        assert_eq!(r.text, server::reply_for(&r.query_id));
    }
    Ok(recs.into_iter().map(|r| r.query_id).collect())
}

fn fault_plan() -> Plan {
    Arc::new(|key: &str, attempt: u32| {
        let n: u32 = key.trim_start_matches('q').parse().unwrap_or(0);
        // Some queries fail twice in a row, with two different faults.
        let faults = if n.is_multiple_of(5) { 2 } else { 1 };
        if attempt > faults {
            return None;
        }
        match (n + attempt) % 7 {
            0 => Some(Fault::RateLimit("0")),
            1 => Some(Fault::RateLimit("0.05")),
            2 => Some(Fault::ServerError),
            3 => Some(Fault::Slow(Duration::from_millis(3000))),
            4 => Some(Fault::Drop),
            5 => Some(Fault::Malformed),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_every_query_completes_exactly_once() -> Result<()> {
    let srv = server::start(fault_plan(), Duration::from_millis(5)).await;
    let dir = tempfile::tempdir()?;
    let qs = queries(60);
    let s = run(&srv.base_url, &qs, runner_cfg(8), dir.path()).await?;
    assert_eq!(
        (s.completed, s.failed, s.not_started),
        (qs.len(), 0, 0),
        "{:?}",
        s.failures
    );
    assert!(s.finished);
    let ids = stored_ids(&dir.path().join("replies.jsonl"))?;
    assert_eq!(ids.len(), qs.len());
    let uniq: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(uniq.len(), qs.len());
    // Exactly one successful server reply per query: nothing was requested again after success.
    let succ = srv.state.successes.lock().unwrap().clone();
    assert_eq!(succ.len(), qs.len());
    assert!(succ.values().all(|&v| v == 1), "{succ:?}");
    // Retries are ours alone (async-openai's internal retry layer is off): attempts seen by the
    // server equal attempts counted by the runner.
    let server_attempts: u32 = srv.state.attempts.lock().unwrap().values().sum();
    assert_eq!(server_attempts as u64, s.attempts);
    assert_eq!(s.retries, s.attempts - qs.len() as u64);
    // Each injected fault shows up as its own error kind (slow replies as client timeouts,
    // dropped bodies as connection errors).
    for k in ["HTTP 429", "HTTP 500", "timeout", "malformed", "connection"] {
        assert!(s.errors.contains_key(k), "no {k} in {:?}", s.errors);
    }
    assert_eq!(s.prompt_tokens, 100 * qs.len() as u64);
    assert!((s.cost - qs.len() as f64 * (0.001 + 0.0015)).abs() < 1e-9);
    let on_disk: RunSummary = mde_core::io::read_json(dir.path().join("summary.json"))?;
    assert_eq!(on_disk.completed, qs.len());
    // A re-run does nothing.
    let s2 = run(&srv.base_url, &qs, runner_cfg(8), dir.path()).await?;
    assert_eq!((s2.already_done, s2.pending, s2.attempts), (qs.len(), 0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_resume_loses_and_duplicates_nothing() -> Result<()> {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir()?;
    let qs = queries(200);
    let replies = dir.path().join("replies.jsonl");
    let conc = 8;
    let task = {
        let (base, qs, out) = (srv.base_url.clone(), qs.clone(), dir.path().to_path_buf());
        tokio::spawn(async move { run(&base, &qs, runner_cfg(conc), &out).await })
    };
    // Abort once some replies are stored.
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = std::fs::read_to_string(&replies)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 50 {
            break;
        }
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let before = stored_ids(&replies)?.len();
    assert!(before >= 50 && before < qs.len(), "{before}");
    let s = run(&srv.base_url, &qs, runner_cfg(conc), dir.path()).await?;
    assert_eq!(s.already_done, before);
    assert_eq!(s.completed, qs.len() - before);
    let ids = stored_ids(&replies)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), qs.len());
    assert!(counts.values().all(|&c| c == 1));
    // Only requests in flight at the abort were answered twice by the server.
    let succ = srv.state.successes.lock().unwrap().clone();
    let extra: u32 = succ.values().map(|v| v - 1).sum();
    assert!(extra as usize <= conc, "{extra} re-requested");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_fatal_errors_are_not_retried() -> Result<()> {
    let plan: Plan = Arc::new(|key: &str, attempt: u32| match (key, attempt) {
        ("q0", 1) => Some(Fault::RateLimit("1")),
        ("q1", _) => Some(Fault::BadRequest),
        ("q2", _) => Some(Fault::ServerError),
        _ => None,
    });
    let srv = server::start(plan, Duration::ZERO).await;
    let dir = tempfile::tempdir()?;
    let qs = queries(3);
    let rc = RunnerConfig {
        max_attempts: 3,
        ..runner_cfg(3)
    };
    let s = run(&srv.base_url, &qs, rc.clone(), dir.path()).await?;
    assert_eq!((s.completed, s.failed), (1, 2));
    let arrivals = srv.state.arrivals.lock().unwrap().clone();
    let gap = arrivals["q0"][1] - arrivals["q0"][0];
    assert!(
        gap >= Duration::from_millis(990),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    let attempts = srv.state.attempts.lock().unwrap().clone();
    assert_eq!(attempts["q1"], 1, "a 400 must not be retried");
    assert_eq!(
        attempts["q2"], 3,
        "a 500 is retried up to max_attempts and no more"
    );
    let f1 = s.failures.iter().find(|f| f.query_id == "q1").unwrap();
    assert!(!f1.retryable && f1.error.contains("400"));
    assert!(!s.finished);
    // Failed queries are not stored, so a re-run tries them again.
    let s2 = run(&srv.base_url, &qs, rc, dir.path()).await?;
    assert_eq!((s2.already_done, s2.pending), (1, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budget_stops_cleanly_and_counts_previous_runs() -> Result<()> {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::ZERO).await;
    let dir = tempfile::tempdir()?;
    let qs = queries(30);
    // Each reply costs 150 tokens; concurrency 1 makes the stop point exact.
    let rc = RunnerConfig {
        max_total_tokens: Some(150 * 10),
        ..runner_cfg(1)
    };
    let s = run(&srv.base_url, &qs, rc.clone(), dir.path()).await?;
    assert_eq!((s.completed, s.not_started), (10, 20));
    assert!(s.stopped.as_deref().unwrap_or("").contains("token budget"));
    // The budget covers the store: a re-run with the same budget starts nothing.
    let s2 = run(&srv.base_url, &qs, rc, dir.path()).await?;
    assert_eq!((s2.completed, s2.attempts), (0, 0));
    // A cost budget: 0.0025 per reply.
    let rc = RunnerConfig {
        max_cost: Some(0.0025 * 15.0 - 1e-9),
        ..runner_cfg(1)
    };
    let s3 = run(&srv.base_url, &qs, rc, dir.path()).await?;
    assert_eq!(s3.completed, 5);
    assert!(s3.stopped.as_deref().unwrap_or("").contains("cost budget"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_and_vision_parts() -> Result<()> {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::ZERO).await;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("img.png"), [0x89u8, b'P', b'N', b'G'])?;
    let mut q = queries(1).remove(0);
    q.image_path = Some("img.png".into());
    // Text only by default (as the original): the image is not sent.
    let tc = teacher_cfg(&srv.base_url, 2.0);
    let t = mde_gen::OpenAiTeacher::new(&tc)?;
    let mut req = GeneratePrompt::v1().request(&q)?;
    tc.apply_sampling(&mut req);
    let body = t.request_body(&req).map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(
        body["messages"][0]["content"]
            .as_str()
            .map(|s| s.contains("QID=q0")),
        Some(true)
    );
    assert_eq!(
        (body["temperature"].as_f64(), body["max_tokens"].as_u64()),
        (Some(0.7f32 as f64), Some(800))
    );
    assert_eq!(body["stop"][0], "###");
    let vc = TeacherConfig {
        vision: true,
        image_root: Some(dir.path().to_path_buf()),
        ..tc
    };
    let teacher = build_teacher(&vc)?;
    let reply = teacher
        .complete(&req)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(
        (
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.model.as_str()
        ),
        (100, 50, "test-model")
    );
    let sent = srv.state.last_body.lock().unwrap().clone().unwrap();
    let parts = sent["messages"][0]["content"]
        .as_array()
        .expect("content parts");
    assert_eq!(parts[0]["type"], "text");
    assert_eq!(parts[1]["type"], "image_url");
    assert!(parts[1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,iVBORw"));
    Ok(())
}
