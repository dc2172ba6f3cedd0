//! `mde index` builds the image index `mde sample --index` needs (before, only the loop could):
//! the tiny fixture model embeds a small COCO set, and sampling with similar images runs on it.
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Result};

mod support;
use support::golden;

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
    let g = golden();
    let imgs = d.join("images");
    std::fs::create_dir_all(&imgs)?;
    let pngs = ["image.png", "image2.png"];
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for id in 1..=4u64 {
        let name = format!("{id:06}.png");
        std::fs::copy(g.join(pngs[id as usize % 2]), imgs.join(&name))?;
        images.push(serde_json::json!({"id": id, "file_name": name, "width": 32, "height": 32}));
        anns.push(
            serde_json::json!({"id": id, "image_id": id, "category_id": 1,
            "bbox": [1.0, 1.0, 10.0, 10.0], "area": 100.0}),
        );
    }
    let coco = serde_json::json!({"images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "shape"}]});
    let ann = d.join("instances.json");
    std::fs::write(&ann, coco.to_string())?;
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
