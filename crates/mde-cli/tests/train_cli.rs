//! `mde train` end to end on the tiny fixture model: a time-boxed first slice, then a re-run on
//! the same --out that resumes and finishes (final exports, metrics, merged LLaMA).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

/// Writes the datasets `configs/train-fixture.toml` names: captions.jsonl and qma.json.
fn write_data(dir: &Path) -> Result<()> {
    let root = golden_dir();
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    imgs.sort();
    anyhow::ensure!(!imgs.is_empty(), "no fixture images in {}", root.display());
    // Records name their images relative to the dataset's folder (the image root): the
    // loader refuses paths outside it, absolute ones included.
    std::fs::create_dir_all(dir.join("images"))?;
    let imgs: Vec<String> = imgs
        .iter()
        .map(|p| -> Result<String> {
            let name = p
                .file_name()
                .context("file name")?
                .to_string_lossy()
                .into_owned();
            std::fs::copy(p, dir.join("images").join(&name))?;
            Ok(format!("images/{name}"))
        })
        .collect::<Result<_>>()?;
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("expected/expected.json"))?)?;
    let answers = exp["training"]["batch"]["answers"]
        .as_array()
        .context("training.batch.answers")?;
    let mut lines = String::new();
    for (i, a) in answers.iter().enumerate() {
        let r = serde_json::json!({"image": imgs[i % imgs.len()], "kind": "caption", "answer": a});
        lines.push_str(&format!("{r}\n"));
    }
    std::fs::write(dir.join("captions.jsonl"), lines)?;
    let qma: Vec<serde_json::Value> = imgs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"image": p, "kind": "qma", "question": "What shape is shown?",
                "choices": ["circle", "square", "star"], "answer_idx": i % 3})
        })
        .collect();
    std::fs::write(dir.join("qma.json"), serde_json::to_string(&qma)?)?;
    Ok(())
}

#[test]
fn train_resumes_and_finishes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_data(tmp.path())?;
    // The checked-in config with the model paths pointed at MDE_GOLDEN_DIR.
    let cfg = fixture_table("f32")?;
    let total = cfg["train"]["iters_per_epoch"]
        .as_integer()
        .context("iters")?
        * cfg["train"]["max_epoch"]
            .as_integer()
            .context("max_epoch")?;
    let cfg_file = tmp.path().join("train.toml");
    std::fs::write(&cfg_file, toml::to_string(&cfg)?)?;
    let out = tmp.path().join("run");
    let mde = |extra: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_mde"))
            .arg("train")
            .arg("--config")
            .arg(&cfg_file)
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("--out")
            .arg(&out)
            .arg("--quiet")
            .args(extra)
            .output()?)
    };
    let first = mde(&["--stop-after", &(total / 2).to_string()])?;
    let err1 = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "first slice failed: {err1}");
    assert!(err1.contains("trainable parameters"), "{err1}");
    assert!(!out.join("final").exists());
    let second = mde(&[])?;
    let err2 = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "resumed run failed: {err2}");
    assert!(err2.contains("resuming from"), "{err2}");
    assert!(out.join("final/adapter/adapter_config.json").is_file());
    assert!(out
        .join("final/trainable_runner_keys.safetensors")
        .is_file());
    assert!(out.join("metrics.json").is_file());
    assert!(out.join("final/merged/model.safetensors").is_file());
    // Bad config: a clear error naming the file.
    std::fs::write(tmp.path().join("bad.toml"), "[model]\nblip2 = 3\n")?;
    let bad = Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(["train", "--config"])
        .arg(tmp.path().join("bad.toml"))
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.toml"));
    Ok(())
}

fn eval_fixtures() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

/// A-OKVQA DA validation through mde-eval: the fixture questions with the fixture model's
/// images standing in for their COCO files.
#[test]
fn train_with_aokvqa_validation() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_data(tmp.path())?;
    let data = eval_fixtures().join("aokvqa/aokvqa_v1p0_val.json");
    let qs: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&data)?)?;
    let limit = qs.len().min(3);
    let png = std::fs::read_dir(golden_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .context("no fixture image")?;
    for q in &qs[..limit] {
        let split = q["split"].as_str().context("split")?;
        let id = q["image_id"].as_u64().context("image_id")?;
        let dir = tmp.path().join(format!("coco/{split}2017"));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&png, dir.join(format!("{id:012}.jpg")))?;
    }
    let mut cfg = fixture_table("f32")?;
    cfg.remove("validation");
    let mut a = toml::Table::new();
    a.insert("data".into(), data.display().to_string().into());
    a.insert(
        "image_root".into(),
        tmp.path().join("coco").display().to_string().into(),
    );
    a.insert("limit".into(), (limit as i64).into());
    cfg.insert("aokvqa_validation".into(), a.into());
    let cfg_file = tmp.path().join("train.toml");
    std::fs::write(&cfg_file, toml::to_string(&cfg)?)?;
    let out = tmp.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_mde"))
        .arg("train")
        .arg("--config")
        .arg(&cfg_file)
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "mde train failed: {err}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json"))?)?;
    assert_eq!(m["metric"], "aokvqa_da");
    let hist = m["history"].as_array().context("history")?;
    assert!(!hist.is_empty());
    for p in hist {
        let v = p["value"].as_f64().context("value")?;
        assert!((0.0..=100.0).contains(&v), "DA {v}");
        let step = p["step"].as_u64().context("step")?;
        assert!(out
            .join(format!("val/step-{step:06}/scores.json"))
            .is_file());
    }
    assert!(out.join("best/best.json").is_file());
    Ok(())
}

/// The fixture config with the model at MDE_GOLDEN_DIR in `dtype`, no validation, written to
/// `dir/train-{dtype}.toml`.
/// `configs/train-fixture.toml` with the model paths pointed at MDE_GOLDEN_DIR, in `dtype`.
fn fixture_table(dtype: &str) -> Result<toml::Table> {
    let cfg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train-fixture.toml");
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    let root = golden_dir();
    let model = cfg
        .get_mut("model")
        .and_then(|m| m.as_table_mut())
        .context("[model]")?;
    for (k, rel) in [
        ("blip2", "blip2"),
        ("vicuna", "vicuna"),
        ("projector", "minigpt4/pretrained_minigpt4.pth"),
    ] {
        model.insert(k.into(), root.join(rel).display().to_string().into());
    }
    model.insert("dtype".into(), dtype.into());
    Ok(cfg)
}

fn fixture_config(dir: &Path, dtype: &str) -> Result<PathBuf> {
    let mut cfg = fixture_table(dtype)?;
    cfg.remove("validation");
    let f = dir.join(format!("train-{dtype}.toml"));
    std::fs::write(&f, toml::to_string(&cfg)?)?;
    Ok(f)
}

/// The losses `mde train` logged at debug level (`step=N loss=X`), in step order.
fn logged_losses(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains(" step=") && l.contains(" loss="))
        .filter_map(|l| {
            let v = l.split(" loss=").nth(1)?.split_whitespace().next()?;
            v.parse().ok()
        })
        .collect()
}

/// `lora+fc` on a half-precision model: f32 master weights for the projector and LoRA, the
/// frozen weights in f16 / bf16, dynamic loss scaling for f16. Every step's loss is finite and
/// close to the f32 run's (same data, same seeds); tolerances: docs/PERFORMANCE.md, "Mixed
/// precision".
#[test]
fn lora_fc_trains_in_f16_and_bf16_close_to_f32() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_data(tmp.path())?;
    let mut losses = Vec::new();
    for dtype in ["f32", "f16", "bf16"] {
        let cfg = fixture_config(tmp.path(), dtype)?;
        let out = tmp.path().join(format!("run-{dtype}"));
        let o = Command::new(env!("CARGO_BIN_EXE_mde"))
            .args(["--log", "mde_train=debug", "train", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("--out")
            .arg(&out)
            .arg("--quiet")
            .env("NO_COLOR", "1")
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        anyhow::ensure!(o.status.success(), "mde train ({dtype}) failed: {err}");
        anyhow::ensure!(
            out.join("final/adapter/adapter_config.json").is_file(),
            "{dtype}: no adapter"
        );
        if dtype == "f16" {
            anyhow::ensure!(
                err.contains("loss scale"),
                "f16 reports no loss scale: {err}"
            );
        }
        let l = logged_losses(&err);
        anyhow::ensure!(!l.is_empty(), "{dtype}: no step losses logged: {err}");
        anyhow::ensure!(l.iter().all(|x| x.is_finite()), "{dtype}: {l:?}");
        losses.push((dtype, l));
    }
    let f32_l = &losses[0].1;
    for (dtype, l) in &losses[1..] {
        anyhow::ensure!(l.len() == f32_l.len(), "{dtype}: {} steps", l.len());
        // Relative tolerance per step: f16 keeps 11 significant bits, bf16 8.
        let tol = if *dtype == "f16" { 2e-3 } else { 1e-2 };
        for (i, (a, b)) in l.iter().zip(f32_l).enumerate() {
            anyhow::ensure!(
                (a - b).abs() <= tol * b.abs().max(1e-3),
                "{dtype} step {}: loss {a} vs f32 {b} (tolerance {tol} relative)",
                i + 1
            );
        }
    }
    Ok(())
}
