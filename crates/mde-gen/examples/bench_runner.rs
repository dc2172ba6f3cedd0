//! Runner throughput against a local OpenAI-compatible server with fixed latency.
//!
//! ```text
//! cargo run --release -p mde-gen --example bench_runner -- [queries=2000] [concurrency=64] [latency_ms=200]
//! ```
//! Ideal throughput is concurrency / latency (64 / 0.2 s = 320 req/s); prints the achieved
//! fraction.
#[path = "../tests/support/server.rs"]
mod server;

use anyhow::Result;
use mde_core::records::{GenQuery, ObjectBox};
use mde_gen::{build_teacher, GeneratePrompt, Runner, RunnerConfig, TeacherConfig};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, conc, latency_ms) = (arg(0, 2000) as usize, arg(1, 64) as usize, arg(2, 200));
    let none: server::Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::from_millis(latency_ms)).await;
    let queries: Vec<GenQuery> = (0..n)
        .map(|i| GenQuery {
            id: format!("q{i}"),
            question_type: "image_scene".into(),
            type_definition: "the overall scene".into(),
            image_id: i as u64,
            captions: vec![format!("QID=q{i} a kitchen with a table.")],
            boxes: vec![ObjectBox {
                category: "dining table".into(),
                bbox: [0.1, 0.5, 0.9, 0.95],
            }],
            ..Default::default()
        })
        .collect();
    let tc = TeacherConfig {
        base_url: srv.base_url.clone(),
        model: "bench".into(),
        api_key_env: None,
        timeout_s: 30.0,
        ..Default::default()
    };
    let rc = RunnerConfig {
        concurrency: conc,
        progress: false,
        ..Default::default()
    };
    let dir = tempfile::tempdir()?;
    let prompt = GeneratePrompt::v1();
    let runner = Runner::new(build_teacher(&tc)?, rc);
    let s = runner
        .run(
            &queries,
            |q| prompt.request(q),
            dir.path().join("replies.jsonl"),
            None,
        )
        .await?;
    let ideal = conc as f64 / (latency_ms as f64 / 1000.0);
    let rate = s.completed as f64 / s.elapsed_s;
    println!(
        "queries {n} concurrency {conc} latency {latency_ms} ms: completed {} failed {} in {:.2} s = {:.1} req/s; ideal {:.1} req/s; fraction {:.3}",
        s.completed, s.failed, s.elapsed_s, rate, ideal, rate / ideal
    );
    Ok(())
}
