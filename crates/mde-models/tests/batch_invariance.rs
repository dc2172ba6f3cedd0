//! Batch invariance, as a guarantee: for every benchmark and every method it runs with (MME is
//! evaluated by generation only and A-OKVQA by ranking only: the runner refuses the others), the
//! predictions of the tiny MiniGPT-4 fixture (MDE_GOLDEN_DIR) on the scorer fixtures
//! (MDE_EVAL_FIXTURES) at batch sizes 1, 4 and 16 are the same: the same generated text, the
//! same chosen option, and ranking scores equal within 1e-4 (mean token cross-entropy; batched
//! rows are padded, so the float sums may round differently, never enough to change a choice
//! on these sets). docs/PERFORMANCE.md, "Batch invariance", states it.
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use mde_core::records::{BenchItem, Prediction};
use mde_eval::runner::{load_items, run_predictions, Benchmark, ImageLoader, Method, RunConfig};
use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};

fn env_dir(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
    }
}

fn golden() -> PathBuf {
    env_dir("MDE_GOLDEN_DIR", "../../../shared/fixtures/minigpt4-tiny")
}

fn eval_fx() -> PathBuf {
    env_dir("MDE_EVAL_FIXTURES", "../../../shared/fixtures/eval")
}

fn model(max_batch: usize) -> Result<MiniGpt4Eval> {
    let g = golden();
    let cfg: EvalModelConfig = serde_json::from_value(serde_json::json!({
        "blip2": g.join("blip2").display().to_string(),
        "vicuna": g.join("vicuna").display().to_string(),
        "projector": g.join("minigpt4/pretrained_minigpt4.pth").display().to_string(),
        "max_batch": max_batch,
        // Short generations: the tiny model's text is noise; what matters is that it is the
        // same at every batch size.
        "mmbench": {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 8},
        "chat": {"max_new_tokens": 8},
    }))?;
    Ok(MiniGpt4Eval::load(&cfg)?)
}

/// The benchmark's items (the first `n`) and its image loader.
fn items(bench: Benchmark, tmp: &Path, n: usize) -> Result<(Vec<BenchItem>, ImageLoader)> {
    let fx = eval_fx();
    let (items, root) = match bench {
        Benchmark::MMBench => (
            load_items(bench, &fx.join("mmbench/MMBench_DEV_EN.tsv"), None)?,
            None,
        ),
        Benchmark::Mme => (load_items(bench, &fx.join("mme/MME.tsv"), None)?, None),
        Benchmark::SeedBench => (
            load_items(bench, &fx.join("seedbench/SEEDBench_IMG.tsv"), None)?,
            None,
        ),
        Benchmark::Aokvqa => {
            // The questions' COCO images are stood in for by the model fixture's images.
            let data = fx.join("aokvqa/aokvqa_v1p0_val.json");
            let root = tmp.join("coco");
            let qs: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&data)?)?;
            let pngs: Vec<PathBuf> = std::fs::read_dir(golden())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect();
            ensure!(!pngs.is_empty(), "no fixture image");
            for (i, q) in qs.iter().enumerate() {
                let split = q["split"].as_str().context("split")?;
                let id = q["image_id"].as_u64().context("image_id")?;
                let dir = root.join(format!("{split}2017"));
                std::fs::create_dir_all(&dir)?;
                std::fs::copy(&pngs[i % pngs.len()], dir.join(format!("{id:012}.jpg")))?;
            }
            (load_items(bench, &data, Some(&root))?, Some(root))
        }
    };
    ensure!(!items.is_empty(), "{bench}: no items");
    Ok((items.into_iter().take(n).collect(), ImageLoader::new(root)))
}

fn predict(
    bench: Benchmark,
    method: Method,
    items: &[BenchItem],
    images: &ImageLoader,
    batch: usize,
    dir: &Path,
) -> Result<Vec<Prediction>> {
    let mut m = model(batch)?;
    let mut rc = RunConfig::new(bench);
    rc.method = method;
    rc.batch_size = Some(batch);
    rc.progress = false;
    let store = dir.join(format!("{bench}-{method:?}-{batch}.jsonl"));
    let mut p = run_predictions(&mut m, items, &store, &rc, images)?.predictions;
    p.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(p)
}

#[test]
fn predictions_do_not_depend_on_the_batch_size() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut covered = Vec::new();
    for bench in [
        Benchmark::MMBench,
        Benchmark::Mme,
        Benchmark::SeedBench,
        Benchmark::Aokvqa,
    ] {
        let (items, images) = items(bench, tmp.path(), 20)?;
        for method in [Method::Generate, Method::Rank] {
            let base = match predict(bench, method, &items, &images, 1, tmp.path()) {
                Ok(p) => p,
                // A combination the runner refuses up front (not a batching question).
                Err(e) if e.to_string().contains("is evaluated by") => {
                    eprintln!("{bench} {method:?}: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            ensure!(!base.is_empty(), "{bench} {method:?}: no predictions");
            let mut max_diff = 0f32;
            for batch in [4, 16] {
                let p = predict(bench, method, &items, &images, batch, tmp.path())?;
                ensure!(
                    p.len() == base.len(),
                    "{bench} {method:?} batch {batch}: count"
                );
                for (a, b) in base.iter().zip(&p) {
                    let at = format!("{bench} {method:?} batch {batch} item {}", a.id);
                    ensure!(a.id == b.id, "{at}: ids");
                    ensure!(a.text == b.text, "{at}: {:?} vs {:?}", a.text, b.text);
                    ensure!(a.choice_idx == b.choice_idx, "{at}: choice");
                    ensure!(a.scores.len() == b.scores.len(), "{at}: scores");
                    for (x, y) in a.scores.iter().zip(&b.scores) {
                        ensure!((x - y).abs() <= 1e-4, "{at}: score {x} vs {y}");
                        max_diff = max_diff.max((x - y).abs());
                    }
                }
            }
            eprintln!(
                "{bench} {method:?}: {} items, identical at batch 1/4/16; max score difference {max_diff:e}",
                base.len()
            );
            covered.push(format!("{bench} {method:?}"));
        }
    }
    eprintln!("covered: {covered:?}");
    // Every benchmark with its official method at least.
    for must in [
        "mmbench Generate",
        "mme Generate",
        "seedbench Rank",
        "aokvqa Rank",
    ] {
        ensure!(
            covered.iter().any(|c| c == must),
            "{must} not covered: {covered:?}"
        );
    }
    Ok(())
}
