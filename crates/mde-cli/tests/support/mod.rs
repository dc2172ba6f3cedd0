//! Fixture locations and the tiny model's config, shared by the CLI tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The tiny MiniGPT-4 fixture (`MDE_GOLDEN_DIR`, default `../shared/fixtures/minigpt4-tiny`).
pub fn golden() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

/// The scorer conformance fixtures (`MDE_EVAL_FIXTURES`, default `../shared/fixtures/eval`).
pub fn eval_fx() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

/// A model TOML for `mde eval` / `mde index` (the `EvalModelConfig` keys) naming these
/// weights on the CPU, followed by `extra` lines.
pub fn model_toml(blip2: &Path, vicuna: &Path, projector: &Path, extra: &str) -> String {
    format!(
        "blip2 = \"{}\"\nvicuna = \"{}\"\nprojector = \"{}\"\ndevice = \"cpu\"\n{extra}",
        blip2.display(),
        vicuna.display(),
        projector.display()
    )
}

/// [`model_toml`] of the tiny fixture model.
pub fn tiny_model_toml() -> String {
    let g = golden();
    model_toml(
        &g.join("blip2"),
        &g.join("vicuna"),
        &g.join("minigpt4/pretrained_minigpt4.pth"),
        "",
    )
}
