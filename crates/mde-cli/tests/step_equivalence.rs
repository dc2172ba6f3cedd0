//! `mde X` and the library step X are the same code: run both on the same inputs and compare
//! the files they write byte for byte.
//!
//! - Evaluate: `mde eval` against `mde_eval::step::evaluate` (what the loop's evaluation steps,
//!   `mde train`'s validation and the examples call), with the tiny fixture model on the
//!   MMBench fixture. The prediction store, every official prediction file and the scores must
//!   be identical.
//! - Generate: `mde generate` against `mde_loop::steps::generate` with the same teacher config
//!   (`as_system = true`), both against a real OpenAI-compatible server on 127.0.0.1: the same
//!   requests must leave the machine and the same replies be stored.
//! - Postprocess: `mde postprocess` against `mde_loop::steps::postprocess` on those replies.
//! - Sample: `mde sample` against `mde_loop::steps::sample` with the config the command
//!   reports it used.
//! - Index: `mde index` against `mde_loop::steps::index` with the model's own encoder
//!   (`mde_models::encoder::ModelEncoder`): the same `pool.safetensors`.
//!
//! The loop's own steps against the commands: `loop_cli.rs` post-processes a finished loop
//! round with `mde postprocess` and compares.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use mde_eval::runner::{load_items_for, Benchmark, ImageLoader, LoadPurpose, RunConfig};
use mde_eval::step::{evaluate, EvalDir};
use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};

mod support;
use support::eval_fx;

#[path = "../../mde-gen/tests/support/server.rs"]
mod server;

fn files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    support::files(dir, &[])
}

#[test]
fn mde_eval_equals_the_evaluate_step() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model_toml = tmp.path().join("model.toml");
    std::fs::write(&model_toml, support::tiny_model_toml())?;
    let data = eval_fx().join("mmbench/MMBench_DEV_EN.tsv");
    let limit = 3;

    // 1. The CLI.
    let cli_out = tmp.path().join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(["eval", "mmbench", "--quiet", "--limit", &limit.to_string()])
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(&model_toml)
        .arg("--out")
        .arg(&cli_out)
        .output()?;
    ensure!(
        o.status.success(),
        "mde eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // 2. The library step, configured as `mde eval` configures it by default.
    let mut cfg: EvalModelConfig = toml::from_str(&std::fs::read_to_string(&model_toml)?)?;
    cfg.resolve_paths(tmp.path());
    let mut model = MiniGpt4Eval::load(&cfg)?;
    let root = data.parent().context("data folder")?.to_path_buf();
    let items = load_items_for(
        Benchmark::MMBench,
        &data,
        Some(&root),
        LoadPurpose::Evaluation,
    )?;
    let mut rc = RunConfig::new(Benchmark::MMBench);
    rc.limit = Some(limit);
    rc.progress = false;
    let lib_out = tmp.path().join("lib");
    let ev = evaluate(
        &mut model,
        Benchmark::MMBench,
        &data,
        &items,
        &rc,
        &ImageLoader::new(Some(root)),
        &EvalDir::new(&lib_out),
    )?;
    ensure!(ev.scored.is_ok(), "scoring failed: {:?}", ev.scored.err());
    ensure!(
        ev.outcome.predictions.len() == limit.min(ev.selected.len()) && !ev.selected.is_empty(),
        "predictions"
    );

    // 3. The step's files, byte for byte.
    let (cli, lib) = (files(&cli_out)?, files(&lib_out)?);
    ensure!(!lib.is_empty(), "the step wrote nothing");
    for (rel, bytes) in &lib {
        let other = cli
            .get(rel)
            .with_context(|| format!("mde eval did not write {rel}"))?;
        ensure!(
            other == bytes,
            "{rel} differs between mde eval and the step"
        );
    }
    ensure!(
        lib.contains_key("predictions.jsonl"),
        "no predictions.jsonl"
    );
    ensure!(
        lib.keys().any(|k| k.starts_with("official/")),
        "no official prediction file"
    );
    Ok(())
}

fn mde(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()?)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Both sides wrote the same files with the same bytes (`skip`: files compared elsewhere).
fn same_files(a: &Path, b: &Path, skip: &[&str]) -> Result<usize> {
    let (fa, fb) = (files(a)?, files(b)?);
    let keys = |m: &BTreeMap<String, Vec<u8>>| -> Vec<String> {
        m.keys()
            .filter(|k| !skip.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    ensure!(
        keys(&fa) == keys(&fb),
        "different files: {:?} vs {:?}",
        keys(&fa),
        keys(&fb)
    );
    for k in keys(&fa) {
        ensure!(fa[&k] == fb[&k], "{k} differs");
    }
    Ok(keys(&fa).len())
}

/// A replies file as a set of records, without the arrival time.
fn replies_set(path: &Path) -> Result<Vec<serde_json::Value>> {
    let mut v: Vec<serde_json::Value> = mde_core::io::read_jsonl(path)?;
    for r in &mut v {
        r.as_object_mut().context("reply record")?.remove("created");
    }
    v.sort_by_key(|r| r["query_id"].to_string());
    Ok(v)
}

fn queries(dir: &Path, n: usize) -> Result<std::path::PathBuf> {
    let mut text = String::new();
    for i in 0..n {
        let q = serde_json::json!({
            "id": format!("q{i}"),
            "question_type": "image_scene",
            "type_definition": "the overall scene",
            "image_id": i,
            "captions": [format!("QID=q{i} a cat on a mat.")],
            "boxes": [],
            "examples": [],
        });
        text.push_str(&q.to_string());
        text.push('\n');
    }
    let p = dir.join("queries.jsonl");
    std::fs::write(&p, text)?;
    Ok(p)
}

#[test]
fn mde_generate_and_postprocess_equal_the_steps() -> Result<()> {
    use mde_loop::layout::{GenerateFiles, PostprocessFiles};
    use mde_loop::steps::{generate, postprocess};
    // The server runs on its own runtime's workers; the command and the step each bring theirs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let srv = rt.block_on(server::start(
        std::sync::Arc::new(|_: &str, _: u32| None),
        std::time::Duration::ZERO,
    ));
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let q = queries(d, 6)?;
    let teacher = d.join("teacher.toml");
    std::fs::write(
        &teacher,
        format!(
            "[teacher]\nbase_url = \"{}\"\nmodel = \"test-model\"\ntemperature = 0.5\nmax_tokens = 300\n\n[runner]\nconcurrency = 3\nprogress = false\n\n[prompt]\nas_system = true\n\n[postprocess]\nvalidation = \"flag\"\n",
            srv.base_url
        ),
    )?;

    // 1. Generate, both ways.
    let cli = d.join("cli");
    let o = mde(&[
        "generate",
        "--queries",
        &s(&q),
        "--teacher",
        &s(&teacher),
        "--out",
        &s(&cli.join("gen")),
    ])?;
    ensure!(
        o.status.success(),
        "mde generate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sent_by_cli = std::mem::take(&mut *srv.state.bodies.lock().unwrap());

    let cfg = mde_gen::GenConfig::load(&teacher)?;
    let lib_gen = GenerateFiles::new(d.join("lib/gen"));
    let queries: Vec<mde_core::records::GenQuery> = mde_core::io::read_jsonl(&q)?;
    let summary = generate::run(
        &generate::Config {
            endpoint: &cfg.teacher,
            runner: &cfg.runner,
            prompt: &cfg.prompt,
            ctrl_c: false,
        },
        generate::Inputs {
            queries: &queries,
            queries_file: &q,
            teacher: mde_gen::build_teacher(&cfg.teacher)?,
        },
        &lib_gen,
    )?;
    generate::require_finished(&summary, &lib_gen)?;
    let sent_by_step = std::mem::take(&mut *srv.state.bodies.lock().unwrap());

    // The same requests left the machine (in completion order, so compared as sets), with the
    // prompt as a system message as configured.
    let sorted = |mut v: Vec<serde_json::Value>| {
        v.sort_by_key(|b| b.to_string());
        v
    };
    ensure!(
        sent_by_cli.len() == queries.len(),
        "{} requests",
        sent_by_cli.len()
    );
    let (a, b) = (sorted(sent_by_cli), sorted(sent_by_step));
    ensure!(a == b, "the command and the step sent different requests");
    ensure!(
        a.iter().all(|r| r["messages"][0]["role"] == "system"),
        "as_system = true: the prompt must go as a system message"
    );
    ensure!(
        replies_set(&cli.join("gen/replies.jsonl"))? == replies_set(&lib_gen.replies())?,
        "the stored replies differ"
    );

    // 2. Postprocess the same replies both ways: every file byte for byte.
    let replies = lib_gen.replies();
    let o = mde(&[
        "postprocess",
        "--replies",
        &s(&replies),
        "--queries",
        &s(&q),
        "--config",
        &s(&teacher),
        "--out",
        &s(&cli.join("post")),
    ])?;
    ensure!(
        o.status.success(),
        "mde postprocess: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lib_post = PostprocessFiles::new(d.join("lib/post"));
    let out = postprocess::run(&cfg.postprocess, &replies, &queries, &lib_post)?;
    ensure!(
        out.stats.replies == queries.len(),
        "replies read: {}",
        out.stats.replies
    );
    let n = same_files(&cli.join("post"), lib_post.dir(), &[])?;
    ensure!(n == 6, "{n} postprocess files");
    drop(srv);
    Ok(())
}

#[test]
fn mde_sample_equals_the_sample_step() -> Result<()> {
    use mde_abs::{AnnotationDb, BadCasePool, SampleInputs, SamplerConfig};
    use mde_loop::layout::SampleFiles;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    // A COCO set of 12 images with 1-3 objects each, and bad cases of three types.
    let cats = ["circle", "square", "triangle"];
    let mut images = Vec::new();
    let mut anns = Vec::new();
    let mut caps = Vec::new();
    for id in 1..=12u64 {
        images.push(serde_json::json!({"id": id, "file_name": format!("{id:012}.jpg"), "width": 64, "height": 64}));
        for j in 0..(id % 3 + 1) {
            anns.push(serde_json::json!({"id": id * 10 + j, "image_id": id,
                "category_id": (id + j) % 3 + 1, "bbox": [j as f64 * 10.0, 4.0, 8.0, 8.0], "area": 64.0}));
        }
        caps.push(
            serde_json::json!({"id": id, "image_id": id, "caption": format!("picture {id}")}),
        );
    }
    let categories: Vec<_> = cats
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"id": i + 1, "name": c}))
        .collect();
    let inst = d.join("instances.json");
    std::fs::write(
        &inst,
        serde_json::json!({"images": images, "annotations": anns, "categories": categories})
            .to_string(),
    )?;
    let capf = d.join("captions.json");
    std::fs::write(
        &capf,
        serde_json::json!({"images": images, "annotations": caps}).to_string(),
    )?;
    let types = [
        "image_scene",
        "attribute_recognition",
        "object_localization",
    ];
    let mut cases = String::new();
    for i in 0..9 {
        let c = serde_json::json!({
            "id": format!("b{i}"), "benchmark": "aokvqa", "question": format!("Question {i}?"),
            "choices": ["a", "b", "c", "d"], "answer_idx": 0, "model_answer": "b",
            "question_type": types[i % 3], "image": {"kind": "coco", "image_id": i % 12 + 1},
        });
        cases.push_str(&c.to_string());
        cases.push('\n');
    }
    let bad = d.join("bad_cases.jsonl");
    std::fs::write(&bad, cases)?;
    let weights = d.join("weights.json");
    std::fs::write(
        &weights,
        r#"{"image_scene": 0.5, "attribute_recognition": 0.3, "object_localization": 0.2}"#,
    )?;

    let cli = d.join("cli");
    let o = mde(&[
        "sample",
        "--bad-cases",
        &s(&bad),
        "--weights",
        &s(&weights),
        "--annotations",
        &s(&inst),
        "--captions",
        &s(&capf),
        "--similar-ratio",
        "0",
        "--n",
        "6",
        "--seed",
        "7",
        "--out",
        &s(&cli),
    ])?;
    ensure!(
        o.status.success(),
        "mde sample: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The step with the config the command reports, on the same inputs.
    let report: serde_json::Value = mde_core::io::read_json(cli.join("sample_report.json"))?;
    let cfg: SamplerConfig = serde_json::from_value(report["config"].clone())?;
    let taxonomy = mde_core::taxonomy::Taxonomy::load("mmbench_v1")?;
    let (pool, _) = BadCasePool::new(mde_core::io::read_jsonl(&bad)?, &taxonomy)?;
    let w = mde_core::records::TypeWeights::from_json(mde_core::io::read_json(&weights)?)
        .map_err(anyhow::Error::msg)?;
    let db = AnnotationDb::load(&inst, Some(&capf))?;
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &taxonomy,
        images: &db,
        index: None,
        examples: None,
    };
    let lib = SampleFiles::new(d.join("lib"));
    let (q, _) = mde_loop::steps::sample::run(&cfg, &inputs, &lib)?;
    ensure!(!q.is_empty(), "no queries sampled");
    // sample_inputs.json is the command's own (its argument paths).
    let n = same_files(&cli, lib.dir(), &["sample_inputs.json"])?;
    ensure!(n == 2, "{n} sample files");
    Ok(())
}

#[test]
fn mde_index_equals_the_index_step() -> Result<()> {
    use mde_core::records::ImageRef;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let coco = support::fixture_coco(d, 5)?;
    let (inst, imgs) = (coco.instances, coco.images);
    let lib_images: Vec<(u64, ImageRef)> = coco
        .files
        .iter()
        .map(|(id, p)| {
            (
                *id,
                ImageRef::Path {
                    path: p.display().to_string(),
                },
            )
        })
        .collect();
    let model_toml = d.join("model.toml");
    std::fs::write(&model_toml, support::tiny_model_toml())?;
    let cli = d.join("cli/pool.safetensors");
    let o = mde(&[
        "index",
        "--annotations",
        &s(&inst),
        "--images",
        &s(&imgs),
        "--model",
        &s(&model_toml),
        "--out",
        &s(&cli),
        "--batch-size",
        "2",
        "--quiet",
    ])?;
    ensure!(
        o.status.success(),
        "mde index: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut cfg: EvalModelConfig = toml::from_str(&std::fs::read_to_string(&model_toml)?)?;
    cfg.resolve_paths(d);
    let model = MiniGpt4Eval::load(&cfg)?;
    let enc = mde_models::encoder::ModelEncoder::new(
        &model.model,
        imgs.clone(),
        String::new(),
        Some(imgs.clone()),
    );
    let lib = d.join("lib/pool.safetensors");
    let idx = mde_loop::steps::index::run(&enc, &lib_images, 2, &lib, false)?;
    ensure!(idx.len() == 5, "{} images indexed", idx.len());
    ensure!(
        std::fs::read(&cli)? == std::fs::read(&lib)?,
        "pool.safetensors differs between mde index and the step"
    );
    Ok(())
}
