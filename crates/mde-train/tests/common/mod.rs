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
