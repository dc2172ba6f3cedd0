//! `mde generate` / `mde postprocess` against a real OpenAI-compatible server on 127.0.0.1:
//! - with an API key set, the key reaches the server (so it was really used) but appears in no
//!   file the run wrote and in no line it logged, even at `--log debug`;
//! - a query whose image lies outside the image root is refused before any request, with the
//!   query file, line and reference named.
#[path = "../../mde-gen/tests/support/server.rs"]
mod server;

use server::Plan;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const KEY_ENV: &str = "MDE_CLI_TEST_SECRET_KEY";

fn mde(args: &[&str], key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(args)
        .env(KEY_ENV, key)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mde")
}

fn queries_jsonl(dir: &Path, images: &[Option<&str>]) -> std::path::PathBuf {
    let mut text = String::new();
    for (i, img) in images.iter().enumerate() {
        let q = serde_json::json!({
            "id": format!("q{i}"),
            "question_type": "image_scene",
            "type_definition": "the overall scene",
            "image_id": i,
            "captions": [format!("QID=q{i} a cat on a mat.")],
            "boxes": [],
            "examples": [],
            "image_path": img,
        });
        text.push_str(&q.to_string());
        text.push('\n');
    }
    let p = dir.join("queries.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn teacher_toml(
    dir: &Path,
    base_url: &str,
    vision: bool,
    root: Option<&Path>,
) -> std::path::PathBuf {
    let mut t = format!(
        "[teacher]\nbase_url = \"{base_url}\"\nmodel = \"test-model\"\napi_key_env = \"{KEY_ENV}\"\ntimeout_s = 5.0\nconnect_timeout_s = 2.0\nvision = {vision}\n"
    );
    if let Some(r) = root {
        t.push_str(&format!("image_root = \"{}\"\n", r.display()));
    }
    t.push_str("\n[runner]\nconcurrency = 2\nmax_attempts = 2\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\nprogress = false\n");
    let p = dir.join("teacher.toml");
    std::fs::write(&p, t).unwrap();
    p
}

/// Every file below `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_but_never_written_or_logged() {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.png"), b"\x89PNG ok").unwrap();
    let queries = queries_jsonl(dir.path(), &[Some("a.png"), None, Some("a.png")]);
    let teacher = teacher_toml(dir.path(), &srv.base_url, true, Some(&root));
    let out = dir.path().join("gen");
    let post = dir.path().join("post");
    let key = "sk-mde-test-4f1c9a7e2b6d8053-SECRET";
    let (q, t, o, p) = (
        queries.to_str().unwrap().to_string(),
        teacher.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
        post.to_str().unwrap().to_string(),
    );
    let runs = tokio::task::spawn_blocking(move || {
        let gen = mde(
            &[
                "--log",
                "debug",
                "generate",
                "--queries",
                &q,
                "--teacher",
                &t,
                "--out",
                &o,
                "--no-progress",
            ],
            key,
        );
        let replies = format!("{o}/replies.jsonl");
        let pp = mde(
            &[
                "--log",
                "debug",
                "postprocess",
                "--replies",
                &replies,
                "--queries",
                &q,
                "--out",
                &p,
                "--config",
                &t,
            ],
            key,
        );
        vec![gen, pp]
    })
    .await
    .unwrap();
    for r in &runs {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(r.status.success(), "{log}");
        assert!(!log.contains(key), "the key was logged:\n{log}");
        assert!(
            !log.contains("4f1c9a7e2b6d8053"),
            "part of the key was logged"
        );
    }
    // The key was really used: every request carried it.
    let auth = srv.state.auth_headers.lock().unwrap().clone();
    assert_eq!(auth.len(), 3, "{auth:?}");
    assert!(auth.iter().all(|a| a == &format!("Bearer {key}")));
    let mut written = Vec::new();
    files(dir.path(), &mut written);
    assert!(written.iter().any(|p| p.ends_with("replies.jsonl")));
    assert!(written.iter().any(|p| p.ends_with("summary.json")));
    for f in written {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("4f1c9a7e2b6d8053"),
            "the key is in {}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_images_outside_the_root_are_refused_before_any_request() {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.png"), b"\x89PNG ok").unwrap();
    std::fs::write(dir.path().join("secret.png"), b"secret").unwrap();
    for (case, bad) in [
        ("absolute", "/etc/passwd".to_string()),
        ("dotdot", "../secret.png".to_string()),
        (
            "absolute-outside",
            dir.path().join("secret.png").display().to_string(),
        ),
    ] {
        let queries = queries_jsonl(dir.path(), &[Some("a.png"), Some(&bad)]);
        let teacher = teacher_toml(dir.path(), &srv.base_url, true, Some(&root));
        let out = dir.path().join(format!("gen-{case}"));
        let (q, t, o) = (
            queries.to_str().unwrap().to_string(),
            teacher.to_str().unwrap().to_string(),
            out.to_str().unwrap().to_string(),
        );
        let r = tokio::task::spawn_blocking(move || {
            mde(
                &[
                    "generate",
                    "--queries",
                    &q,
                    "--teacher",
                    &t,
                    "--out",
                    &o,
                    "--no-progress",
                ],
                "k",
            )
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{case}: accepted");
        assert!(
            err.contains("queries.jsonl") && err.contains("line 2") && err.contains(&bad),
            "{case}: {err}"
        );
        assert!(!err.contains("panicked"), "{case}: {err}");
    }
    assert!(
        srv.state.bodies.lock().unwrap().is_empty(),
        "a request was sent"
    );
}
