//! Golden conformance of image preprocessing: Pillow-exact bicubic resize and CLIP normalisation
//! against `expected/forward.safetensors` (fixture root from `MDE_GOLDEN_DIR`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use minigpt4::preprocess::{load_rgb, ImageProcessor};

fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

/// Image file names in the row order of forward.safetensors.
fn image_rows(expected: &serde_json::Value) -> Result<Vec<String>> {
    if let Some(order) = expected["batched_generation"]["order"].as_array() {
        return order
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .context("batched_generation.order: expected strings")
            })
            .collect();
    }
    let chat = expected["chat"]
        .as_array()
        .context("expected.json: no `chat` array")?;
    chat.iter()
        .map(|c| {
            c["image"]
                .as_str()
                .map(str::to_string)
                .context("chat[i].image: expected a string")
        })
        .collect()
}

fn load_fixture() -> Result<(
    PathBuf,
    serde_json::Value,
    std::collections::HashMap<String, Tensor>,
)> {
    let dir = golden_dir();
    let json_path = dir.join("expected/expected.json");
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_path).with_context(|| format!("reading {}", json_path.display()))?,
    )
    .with_context(|| format!("parsing {}", json_path.display()))?;
    let st = dir.join("expected/forward.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .with_context(|| format!("loading {}", st.display()))?;
    Ok((dir, expected, tensors))
}

#[test]
fn resized_uint8_matches_pillow_byte_for_byte() -> Result<()> {
    let (dir, expected, tensors) = load_fixture()?;
    let want = tensors
        .get("resized_uint8_hwc")
        .context("forward.safetensors: no resized_uint8_hwc")?;
    let (n, h, w, c) = want.dims4()?;
    assert_eq!(c, 3);
    let rows = image_rows(&expected)?;
    if rows.len() != n {
        bail!(
            "{} image names but {n} rows in resized_uint8_hwc",
            rows.len()
        );
    }
    for (i, name) in rows.iter().enumerate() {
        let img = load_rgb(dir.join(name))?;
        let got = minigpt4::preprocess::resize_bicubic(&img, w as u32, h as u32)?;
        let want_row: Vec<u8> = want.get(i)?.flatten_all()?.to_vec1()?;
        let got_row = got.into_raw();
        let diffs: Vec<usize> = (0..want_row.len())
            .filter(|&k| want_row[k] != got_row[k])
            .collect();
        assert!(
            diffs.is_empty(),
            "{name}: {} of {} bytes differ from Pillow (first at flat index {}: got {} want {})",
            diffs.len(),
            want_row.len(),
            diffs[0],
            got_row[diffs[0]],
            want_row[diffs[0]]
        );
    }
    Ok(())
}

#[test]
fn pixel_values_match_within_1e6() -> Result<()> {
    let (dir, expected, tensors) = load_fixture()?;
    let want = tensors
        .get("pixel_values")
        .context("forward.safetensors: no pixel_values")?;
    let (n, c, h, w) = want.dims4()?;
    assert_eq!(c, 3);
    assert_eq!(h, w, "MiniGPT-4 preprocesses to a square");
    let rows = image_rows(&expected)?;
    assert_eq!(rows.len(), n);
    let proc = ImageProcessor::eval(h as u32);
    let imgs = rows
        .iter()
        .map(|r| load_rgb(dir.join(r)))
        .collect::<Result<Vec<_>, _>>()?;
    let got = proc.process_batch_eval(&imgs, &Device::Cpu)?;
    assert_eq!(got.dims(), want.dims());
    let d = (got - want.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d <= 1e-6, "pixel_values max abs diff {d}");
    // Decoding from bytes gives the same tensor as loading from the path.
    let bytes = std::fs::read(dir.join(&rows[0]))?;
    let from_bytes = proc.process_eval(&minigpt4::preprocess::decode_rgb(&bytes)?, &Device::Cpu)?;
    let d0 = (from_bytes - want.get(0)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d0 <= 1e-6);
    Ok(())
}

#[test]
fn missing_image_error_names_the_path() {
    let err = load_rgb("/nonexistent/dir/pic.png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/dir/pic.png"), "{err}");
    let err = minigpt4::preprocess::decode_rgb(b"not an image")
        .unwrap_err()
        .to_string();
    assert!(err.contains("decode"), "{err}");
}
