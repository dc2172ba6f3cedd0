//! No local file outside the image root reaches the teacher: query images that are absolute,
//! climb out of the root with `..`, or leave it through a symlink are refused before a request is
//! made, checked against a real OpenAI-compatible server on 127.0.0.1 that records every body.
mod support;

use anyhow::Result;
use base64::Engine;
use mde_core::records::GenQuery;
use mde_gen::{build_teacher, GeneratePrompt, Runner, RunnerConfig, TeacherConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::server::{self, Plan};

const SECRET: &[u8] = b"\x89PNG top-secret-bytes-that-must-never-leave";

fn query(id: &str, image: &str) -> GenQuery {
    GenQuery {
        id: id.into(),
        question_type: "image_scene".into(),
        type_definition: "the overall scene".into(),
        captions: vec![format!("QID={id} a cat on a mat.")],
        image_path: Some(image.into()),
        ..Default::default()
    }
}

/// `dir/root/ok.png` inside the root; `dir/outside/secret.png` and `dir/secret.png` outside;
/// `dir/root/link.png` a symlink to the outside secret.
fn layout(dir: &Path) -> Result<std::path::PathBuf> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(dir.join("outside"))?;
    std::fs::write(root.join("ok.png"), b"\x89PNG fine")?;
    std::fs::write(dir.join("outside/secret.png"), SECRET)?;
    std::fs::write(dir.join("secret.png"), SECRET)?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("outside/secret.png"), root.join("link.png"))?;
    Ok(root)
}

fn cfg(base: &str, root: Option<&Path>) -> TeacherConfig {
    TeacherConfig {
        base_url: base.into(),
        model: "test-model".into(),
        api_key_env: Some("MDE_GEN_TEST_KEY_UNSET".into()),
        timeout_s: 5.0,
        connect_timeout_s: 2.0,
        vision: true,
        image_root: root.map(Path::to_path_buf),
        ..Default::default()
    }
}

fn bad_queries(dir: &Path) -> Vec<GenQuery> {
    let mut qs = vec![
        query("abs", dir.join("secret.png").to_str().unwrap()),
        query("etc", "/etc/passwd"),
        query("dotdot", "../outside/secret.png"),
        query("deep", "sub/../../outside/secret.png"),
    ];
    if cfg!(unix) {
        qs.push(query("link", "link.png"));
    }
    qs
}

#[test]
fn check_query_images_names_the_file_line_and_reference() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = layout(dir.path())?;
    let c = cfg("http://127.0.0.1:9/v1", Some(&root));
    let src = Path::new("queries.jsonl");
    c.check_query_images(&[query("ok", "ok.png")], src)?;
    for (i, bad) in bad_queries(dir.path()).into_iter().enumerate() {
        let qs = vec![query("ok", "ok.png"), bad.clone()];
        let e = c.check_query_images(&qs, src).unwrap_err().to_string();
        assert!(
            e.contains("queries.jsonl")
                && e.contains("line 2")
                && e.contains(&bad.id)
                && e.contains(bad.image_path.as_deref().unwrap()),
            "case {i}: {e}"
        );
    }
    // No root: nothing local is sent, and the error names the key that sets it.
    let e = cfg("http://127.0.0.1:9/v1", None)
        .check_query_images(&[query("ok", "ok.png")], src)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[teacher] image_root"), "{e}");
    // Text-only teachers send no image, so nothing is checked.
    let text_only = TeacherConfig {
        vision: false,
        ..cfg("http://127.0.0.1:9/v1", None)
    };
    text_only.check_query_images(&bad_queries(dir.path()), src)?;
    // The explicit opt-in sends absolute paths as written, but `..` still stays inside the root.
    let opted = TeacherConfig {
        allow_absolute_image_paths: true,
        ..c.clone()
    };
    opted.check_query_images(&[query("abs", "/etc/hostname")], src)?;
    assert!(opted
        .check_query_images(&[query("dotdot", "../outside/secret.png")], src)
        .is_err());
    Ok(())
}

/// Even a library user who skips the up-front check cannot leak a file: the client refuses the
/// image, the query fails without a request, and the server never sees the secret's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_images_never_reach_the_server() -> Result<()> {
    let none: Plan = Arc::new(|_: &str, _: u32| None);
    let srv = server::start(none, Duration::ZERO).await;
    let dir = tempfile::tempdir()?;
    let root = layout(dir.path())?;
    let mut qs = bad_queries(dir.path());
    qs.push(query("ok", "ok.png"));
    let teacher = build_teacher(&cfg(&srv.base_url, Some(&root)))?;
    let prompt = GeneratePrompt::v1();
    let runner = Runner::new(
        teacher,
        RunnerConfig {
            concurrency: 2,
            max_attempts: 3,
            backoff_base_s: 0.01,
            backoff_max_s: 0.02,
            progress: false,
            ..Default::default()
        },
    );
    let s = runner
        .run(
            &qs,
            |q| prompt.request(q),
            dir.path().join("replies.jsonl"),
            None,
        )
        .await?;
    assert_eq!(
        (s.completed, s.failed),
        (1, qs.len() - 1),
        "{:?}",
        s.failures
    );
    for f in &s.failures {
        assert!(f.error.contains("refused"), "{f:?}");
    }
    let bodies = srv.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "only the query inside the root was sent");
    let secret_b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    // `/etc/passwd` starts with "root:", which base64-encodes (at the start of a data URL) to this.
    let passwd_b64_prefix = base64::engine::general_purpose::STANDARD.encode(b"root:");
    for b in &bodies {
        let text = b.to_string();
        assert!(!text.contains(&secret_b64[..24]), "secret leaked: {text}");
        assert!(
            !text.contains(&passwd_b64_prefix[..6]),
            "/etc/passwd leaked: {text}"
        );
        assert!(text.contains("QID=ok"));
    }
    Ok(())
}
