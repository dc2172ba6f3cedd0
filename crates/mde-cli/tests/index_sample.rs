//! `mde index` builds the image index `mde sample --index` needs (before, only the loop could):
//! the tiny fixture model embeds a small COCO set, and sampling with similar images runs on it.
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Result};

mod support;

fn mde(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(args)
        .output()?)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn index_then_sample_with_similar_images() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let coco = support::fixture_coco(d, 4)?;
    let (ann, imgs) = (coco.instances, coco.images);
    let model = d.join("model.toml");
    std::fs::write(&model, support::tiny_model_toml())?;
    let index = d.join("index/pool.safetensors");
    let o = mde(&[
        "index",
        "--annotations",
        &s(&ann),
        "--images",
        &s(&imgs),
        "--model",
        &s(&model),
        "--out",
        &s(&index),
        "--quiet",
    ])?;
    ensure!(
        o.status.success(),
        "mde index: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let idx = mde_abs::ImageIndex::load(&index)?;
    ensure!(idx.len() == 4, "{} rows", idx.len());

    // Sampling with the index: half the query images by similarity to the bad cases' images.
    let bc = |i: u64| {
        serde_json::json!({"id": format!("b{i}"), "benchmark": "aokvqa", "question": "Which shape?",
            "choices": ["a", "b"], "answer_idx": 0, "image": {"kind": "coco", "image_id": i},
            "question_type": "image_scene"})
    };
    let bad = d.join("bad_cases.jsonl");
    std::fs::write(&bad, format!("{}\n{}\n", bc(1), bc(2)))?;
    let weights = d.join("weights.json");
    std::fs::write(&weights, "{\"image_scene\": 0.5}")?;
    let out = d.join("sample");
    let o = mde(&[
        "sample",
        "--bad-cases",
        &s(&bad),
        "--weights",
        &s(&weights),
        "--annotations",
        &s(&ann),
        "--index",
        &s(&index),
        "--n",
        "2",
        "--similar-ratio",
        "0.5",
        "--min-cases",
        "1",
        "--out",
        &s(&out),
    ])?;
    ensure!(
        o.status.success(),
        "mde sample: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let queries = std::fs::read_to_string(out.join("queries.jsonl"))?;
    ensure!(queries.lines().count() == 2, "queries:\n{queries}");
    ensure!(
        out.join("sample_report.json").is_file(),
        "no sample_report.json"
    );

    // A file_name that leaves the image root is refused before the model is loaded.
    let bad_coco = serde_json::json!({"images": [{"id": 9, "file_name": "../instances.json",
        "width": 1, "height": 1}], "annotations": [], "categories": []});
    let bad_ann = d.join("bad_instances.json");
    std::fs::write(&bad_ann, bad_coco.to_string())?;
    let o = mde(&[
        "index",
        "--annotations",
        &s(&bad_ann),
        "--images",
        &s(&imgs),
        "--model",
        &s(&model),
        "--out",
        &s(&d.join("bad.safetensors")),
        "--quiet",
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "escaping file_name accepted");
    ensure!(
        err.contains("bad_instances.json") && err.contains("escapes"),
        "{err}"
    );
    Ok(())
}
