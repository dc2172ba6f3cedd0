//! Trainer driver on the tiny fixture model: exact resume, validation-based best checkpoint,
//! PEFT export round trip, fixture adapter loading and LoRA merge.
mod common;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use mde_train::data::{load_dataset, DatasetFormat, DatasetSpec, RecordKind, TrainRecord};
use mde_train::peft::PeftAdapter;
use mde_train::trainer::{ImageMode, LoraSettings, OptimSettings};
use mde_train::{FnValidator, RunOptions, TrainConfig, TrainDataset, TrainMode, Trainer};
use minigpt4::model::MiniGpt4;
use minigpt4::tokenizer::LlamaTokenizer;

fn model() -> Result<(MiniGpt4, LlamaTokenizer)> {
    Ok(mde_train::trainer::load_model(
        &common::golden_paths(),
        DType::F32,
        &Device::Cpu,
    )?)
}

/// Writes a caption JSONL (answers from the fixture's training batch) and a QMA JSON array
/// into `dir`; returns the two dataset specs.
fn write_datasets(dir: &Path) -> Result<Vec<DatasetSpec>> {
    let exp = common::expected()?;
    let answers = common::strings(&exp["training"]["batch"]["answers"], "answers")?;
    let imgs = common::golden_images()?;
    let mut lines = String::new();
    for (i, a) in answers.iter().enumerate() {
        let r = TrainRecord {
            image: imgs[i % imgs.len()].clone(),
            kind: RecordKind::Caption,
            question: String::new(),
            choices: vec![],
            answer_idx: None,
            answer: Some(a.clone()),
            rationale: None,
        };
        lines.push_str(&serde_json::to_string(&r)?);
        lines.push('\n');
    }
    std::fs::write(dir.join("captions.jsonl"), lines)?;
    let qma: Vec<TrainRecord> = imgs
        .iter()
        .enumerate()
        .map(|(i, p)| TrainRecord {
            image: p.clone(),
            kind: if i % 2 == 0 {
                RecordKind::Qma
            } else {
                RecordKind::Qmae
            },
            question: "What shape is shown?".into(),
            choices: vec!["circle".into(), "square".into(), "star".into()],
            answer_idx: Some(i % 3),
            answer: None,
            rationale: Some("It has the shape.".into()),
        })
        .collect();
    std::fs::write(dir.join("qma.json"), serde_json::to_string(&qma)?)?;
    let spec = |name: &str, file: &str| DatasetSpec {
        name: name.into(),
        path: file.into(),
        format: DatasetFormat::Records,
        image_root: None,
        image_pattern: String::new(),
        // The records name the fixture images by absolute path, outside this folder: the
        // explicit opt-in of a dataset the user wrote.
        allow_absolute_image_paths: true,
        kind: None,
        ratio: None,
    };
    Ok(vec![
        spec("captions", "captions.jsonl"),
        spec("qma", "qma.json"),
    ])
}

fn datasets(dir: &Path) -> Result<Vec<TrainDataset>> {
    write_datasets(dir)?
        .iter()
        .map(|s| {
            Ok(TrainDataset {
                name: s.name.clone(),
                ratio: s.ratio,
                records: load_dataset(s, dir)?,
            })
        })
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        mode: TrainMode::LoraFc,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            ..Default::default()
        },
        optim: OptimSettings {
            init_lr: 1e-3,
            warmup_steps: 2,
            ..Default::default()
        },
        batch_size: 2,
        accum_steps: 2,
        max_epoch: 1,
        iters_per_epoch: 6,
        checkpoint_every: 2,
        validate_every: 0,
        seed: 7,
        grad_clip: Some(1.0),
        image_mode: ImageMode::Train,
        ..Default::default()
    }
}

fn trainer(data_dir: &Path, run: &Path, cfg: TrainConfig) -> Result<Trainer> {
    let (m, tok) = model()?;
    Ok(Trainer::new(m, tok, datasets(data_dir)?, cfg, run)?)
}

#[test]
fn killed_run_resumes_bit_exact() -> Result<()> {
    let data = tempfile::tempdir()?;
    let cfg = config();
    // Run A: straight through.
    let run_a = tempfile::tempdir()?;
    let mut a = trainer(data.path(), run_a.path(), cfg.clone())?;
    let init = common::snapshot(&a)?;
    let rep_a = a.run(None, RunOptions::default())?;
    assert_eq!(a.step(), cfg.total_steps());
    let fin_a = common::snapshot(&a)?;
    assert_ne!(init, fin_a, "training changed nothing");
    assert!(run_a
        .path()
        .join("final/adapter/adapter_config.json")
        .is_file());

    // Run B: "killed" after 3 steps (the last checkpoint is at 2), then resumed.
    let run_b = tempfile::tempdir()?;
    let mut b = trainer(data.path(), run_b.path(), cfg.clone())?;
    b.run(
        None,
        RunOptions {
            stop_after: Some(3),
            progress: false,
        },
    )?;
    assert_eq!(b.step(), 3);
    drop(b);
    let mut b = trainer(data.path(), run_b.path(), cfg.clone())?;
    assert!(b.resumed_from().is_some(), "did not resume");
    assert_eq!(b.step(), 2);
    let rep_b = b.run(None, RunOptions::default())?;
    assert_eq!(b.step(), cfg.total_steps());
    let lb: Vec<(u64, u32)> = rep_b.iter().map(|r| (r.step, r.loss.to_bits())).collect();
    let la: Vec<(u64, u32)> = rep_a
        .iter()
        .filter(|r| r.step > 2)
        .map(|r| (r.step, r.loss.to_bits()))
        .collect();
    assert_eq!(la, lb, "losses after resume differ");
    // What a summary reports spans the kill (saved in the checkpoints): the first and the last
    // loss of the straight run, bit for bit (through the JSON of `state.json`).
    let bits = |l: mde_train::checkpoint::LossLog| {
        (
            l.first_loss.map(f32::to_bits),
            l.last_loss.map(f32::to_bits),
        )
    };
    let straight = (
        rep_a.first().map(|r| r.loss.to_bits()),
        rep_a.last().map(|r| r.loss.to_bits()),
    );
    assert_eq!(bits(a.losses()), straight);
    assert_eq!(bits(b.losses()), straight, "resumed summary losses differ");
    // Killed after the final checkpoint: the re-opened run does no step and still knows them.
    let c = trainer(data.path(), run_b.path(), cfg.clone())?;
    assert_eq!(c.step(), cfg.total_steps());
    assert_eq!(bits(c.losses()), straight);
    drop(c);
    let fin_b = common::snapshot(&b)?;
    assert_eq!(fin_a.len(), fin_b.len());
    for ((na, va), (nb, vb)) in fin_a.iter().zip(&fin_b) {
        assert_eq!(na, nb);
        assert!(
            va == vb,
            "{na}: resumed weights differ from the straight run"
        );
    }
    Ok(())
}

#[test]
fn validation_keeps_best_checkpoint() -> Result<()> {
    let data = tempfile::tempdir()?;
    let run = tempfile::tempdir()?;
    let cfg = TrainConfig {
        mode: TrainMode::Fc,
        validate_every: 2,
        checkpoint_every: 0,
        accum_steps: 1,
        grad_clip: None,
        image_mode: ImageMode::Eval,
        ..config()
    };
    // Metric: training loss on a fixed batch of the fixture (lower is better).
    let exp = common::expected()?;
    let tensors = common::train_tensors()?;
    let qf = tensors
        .get("train_qformer_out")
        .context("train_qformer_out")?
        .clone();
    let tok = LlamaTokenizer::from_dir(common::golden_dir().join("vicuna"))?;
    let b = &exp["training"]["batch"];
    let samples: Vec<_> = common::strings(&b["prompts"], "prompts")?
        .into_iter()
        .zip(common::strings(&b["answers"], "answers")?)
        .map(|(prompt, answer)| mde_train::batch::TrainSample { prompt, answer })
        .collect();
    let n_img = qf.dim(1)?;
    let layout = mde_train::batch::build_batch(
        &tok,
        &samples,
        exp["config"]["end_sym"].as_str().context("end_sym")?,
        mde_train::batch::LayoutConfig::minigpt4(n_img),
    )?;
    let bt = mde_train::step::BatchTensors::new(&layout, &Device::Cpu)?;
    let mut v = FnValidator {
        name: "fixed_batch_loss".into(),
        higher_is_better: false,
        f: |m: &MiniGpt4, _step: u64| {
            Ok(mde_train::step::loss(m, &qf, &bt)?.to_scalar::<f32>()? as f64)
        },
    };
    let mut t = trainer(data.path(), run.path(), cfg.clone())?;
    t.run(Some(&mut v), RunOptions::default())?;
    let hist: mde_train::trainer::MetricHistory =
        mde_core::io::read_json(run.path().join("metrics.json"))?;
    let want_points = cfg.total_steps() / cfg.validate_every;
    assert_eq!(hist.history.len() as u64, want_points);
    let best = hist
        .history
        .iter()
        .copied()
        .min_by(|a, b| a.value.total_cmp(&b.value))
        .context("history")?;
    assert_eq!(hist.best, Some(best));
    let saved: mde_train::trainer::MetricPoint =
        mde_core::io::read_json(run.path().join("best/best.json"))?;
    assert_eq!(saved, best);
    // The best folder holds the projector as it was at the best step.
    let w = mde_train::io::load_safetensors(
        &run.path().join("best/trainable_runner_keys.safetensors"),
        &Device::Cpu,
    )?;
    assert!(w.contains_key("llama_proj.weight"));
    Ok(())
}

#[test]
fn peft_export_round_trip_and_fixture_adapter_load() -> Result<()> {
    let fixture_adapter = common::golden_dir().join("expected/lora_final_adapter");
    let want = PeftAdapter::load(&fixture_adapter, &Device::Cpu)?;
    let targets = want.target_modules();
    let data = tempfile::tempdir()?;
    let run = tempfile::tempdir()?;
    let cfg = TrainConfig {
        mode: TrainMode::Lora,
        lora: LoraSettings {
            r: want.r().context("r")?,
            alpha: want.lora_alpha().context("alpha")?,
            dropout: 0.0,
            target_modules: targets.clone(),
            init_seed: 0,
            init_adapter: Some(fixture_adapter.clone()),
        },
        ..config()
    };
    let t = trainer(data.path(), run.path(), cfg)?;
    // The fixture adapter went into the model unchanged.
    let loaded = t.model().llama.lora_vars();
    assert_eq!(loaded.len(), want.tensors.len());
    for (n, v) in &loaded {
        let k = mde_train::peft::LoraKey::parse(n).context("key")?;
        let w = want
            .tensors
            .get(&k)
            .with_context(|| format!("fixture lacks {n}"))?;
        assert_eq!(common::max_abs_diff(v.as_tensor(), w)?, 0.0, "{n}");
    }
    // mde's written adapter re-reads identically.
    let out = tempfile::tempdir()?;
    t.export(out.path())?;
    let back = PeftAdapter::load(&out.path().join("adapter"), &Device::Cpu)?;
    assert_eq!(back.r(), want.r());
    assert_eq!(back.lora_alpha(), want.lora_alpha());
    let mut bt = back.target_modules();
    let mut wt = targets;
    bt.sort();
    wt.sort();
    assert_eq!(bt, wt);
    assert_eq!(back.tensors.len(), want.tensors.len());
    for (k, w) in &want.tensors {
        let g = back
            .tensors
            .get(k)
            .with_context(|| format!("{k:?} missing"))?;
        assert_eq!(common::max_abs_diff(g, w)?, 0.0, "{k:?}");
    }
    // Runner-keyed export: llama_proj plus every LoRA matrix under its runner key.
    let rk = mde_train::io::load_safetensors(
        &out.path().join("trainable_runner_keys.safetensors"),
        &Device::Cpu,
    )?;
    assert!(rk.contains_key("llama_proj.weight"));
    for (k, w) in &want.tensors {
        let g = rk.get(&k.runner_key()).with_context(|| k.runner_key())?;
        assert_eq!(common::max_abs_diff(g, w)?, 0.0, "{k:?}");
    }
    Ok(())
}

#[test]
fn merged_llama_matches_lora_logits() -> Result<()> {
    let fixture_adapter = common::golden_dir().join("expected/lora_final_adapter");
    let ad = PeftAdapter::load(&fixture_adapter, &Device::Cpu)?;
    let (mut m, _tok) = model()?;
    let t: std::collections::HashMap<String, Tensor> = ad
        .tensors
        .iter()
        .map(|(k, t)| (k.peft_key(), t.clone()))
        .collect();
    let n = m
        .llama
        .load_lora(&t, ad.lora_alpha().context("alpha")?, 0.0, 0)?;
    assert!(n > 0);
    let qf = common::train_tensors()?
        .get("train_qformer_out")
        .context("train_qformer_out")?
        .clone();
    let img = m.project(&qf, false)?;
    let lora_logits = m.forward_embeds(&img, None, None, false)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("model.safetensors");
    mde_train::export::merge_and_save_llama(&mut m, &file, DType::F32)?;
    let cfg = m.llama_config().clone();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &Device::Cpu)?
    };
    m.llama = minigpt4::llama::Llama::new(&cfg, vb)?;
    assert!(m.llama.lora_vars().is_empty());
    let merged_logits = m.forward_embeds(&img, None, None, false)?;
    let d = common::max_abs_diff(&lora_logits, &merged_logits)?;
    eprintln!("merged vs LoRA logits: max abs diff {d:e}");
    assert!(d <= 1e-4, "merged logits differ by {d}");
    Ok(())
}

/// `configs/train-fixture.toml` parses into the trainer's types and trains end to end
/// (library-level stand-in for `mde train`; model paths taken from the fixture dir).
#[test]
fn fixture_config_trains() -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Toml {
        train: TrainConfig,
        datasets: Vec<DatasetSpec>,
        validation: Option<DatasetSpec>,
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train-fixture.toml");
    let mut cfg: Toml = toml::from_str(&std::fs::read_to_string(&p)?)
        .with_context(|| format!("parsing {}", p.display()))?;
    // The written records name the fixture images by absolute path (see write_datasets).
    for s in cfg.datasets.iter_mut().chain(cfg.validation.as_mut()) {
        s.allow_absolute_image_paths = true;
    }
    let data = tempfile::tempdir()?;
    let written = write_datasets(data.path())?;
    let names: Vec<_> = written.iter().map(|s| s.path.clone()).collect();
    let mut ds = Vec::new();
    for s in &cfg.datasets {
        assert!(names.contains(&s.path), "config names {:?}", s.path);
        ds.push(TrainDataset {
            name: s.name.clone(),
            ratio: s.ratio,
            records: load_dataset(s, data.path())?,
        });
    }
    let run = tempfile::tempdir()?;
    let (m, tok) = model()?;
    let mut v = cfg
        .validation
        .as_ref()
        .map(|s| -> Result<_> {
            Ok(mde_train::trainer::LossValidator {
                records: load_dataset(s, data.path())?,
                tok: tok.clone(),
                end_sym: cfg.train.end_sym.clone(),
                batch_size: cfg.train.batch_size,
                max_txt_len: cfg.train.max_txt_len,
            })
        })
        .transpose()?;
    let mut t = Trainer::new(m, tok, ds, cfg.train.clone(), run.path())?;
    let v: Option<&mut dyn mde_train::Validator> =
        v.as_mut().map(|v| v as &mut dyn mde_train::Validator);
    t.run(v, RunOptions::default())?;
    assert_eq!(t.step(), cfg.train.total_steps());
    assert!(run.path().join("latest.json").is_file());
    if cfg.train.merge_at_end {
        assert!(run.path().join("final/merged/model.safetensors").is_file());
    }
    if cfg.validation.is_some() {
        assert!(run.path().join("metrics.json").is_file());
        assert!(run.path().join("best/best.json").is_file());
    }
    Ok(())
}
