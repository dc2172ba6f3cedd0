//! Fixture helpers shared by the golden tests.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

pub fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

pub fn expected() -> Result<Value> {
    let p = golden_dir().join("expected/expected.json");
    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

pub fn train_tensors() -> Result<HashMap<String, Tensor>> {
    let p = golden_dir().join("expected/train.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu)
        .with_context(|| format!("loading {}", p.display()))
}

pub fn f64s(v: &Value, what: &str) -> Result<Vec<f64>> {
    v.as_array()
        .with_context(|| format!("{what}: expected an array"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .with_context(|| format!("{what}: expected numbers"))
        })
        .collect()
}

pub fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    v.as_array()
        .with_context(|| format!("{what}: expected an array"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .with_context(|| format!("{what}: expected strings"))
        })
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok(
        (a.to_dtype(candle_core::DType::F32)? - b.to_dtype(candle_core::DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?,
    )
}

/// The fixture model in its HF layout with the MiniGPT-4 `.pth` projector.
pub fn golden_paths() -> minigpt4::model::ModelPaths {
    let root = golden_dir();
    let p = |r: &str| root.join(r).display().to_string();
    minigpt4::model::ModelPaths {
        blip2: p("blip2"),
        vicuna: p("vicuna"),
        projector: Some(p("minigpt4/pretrained_minigpt4.pth")),
        ..Default::default()
    }
}

/// The fixture's PNG images, sorted.
pub fn golden_images() -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    v.sort();
    anyhow::ensure!(!v.is_empty(), "no fixture images");
    Ok(v)
}

/// One caption dataset: the fixture training batch's answers over the fixture's images.
pub fn caption_datasets() -> Result<Vec<mde_train::TrainDataset>> {
    use mde_train::data::{RecordKind, TrainRecord};
    let exp = expected()?;
    let answers = strings(&exp["training"]["batch"]["answers"], "answers")?;
    let imgs = golden_images()?;
    anyhow::ensure!(!answers.is_empty(), "empty fixture");
    let records = (0..answers.len().max(imgs.len()) * 2)
        .map(|i| TrainRecord {
            image: imgs[i % imgs.len()].clone(),
            kind: RecordKind::Caption,
            question: String::new(),
            choices: vec![],
            answer_idx: None,
            answer: Some(answers[i % answers.len()].clone()),
            rationale: None,
        })
        .collect();
    Ok(vec![mde_train::TrainDataset {
        name: "captions".into(),
        ratio: None,
        records,
    }])
}

/// Bits of every trainable tensor (as f32), by name.
pub fn snapshot(t: &mde_train::Trainer) -> Result<Vec<(String, Vec<u32>)>> {
    t.trainable()
        .iter()
        .map(|(n, v)| {
            let bits = v
                .as_tensor()
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f32::to_bits)
                .collect();
            Ok((n.clone(), bits))
        })
        .collect()
}
