//! Weight-loading layouts built from the golden fixture's files: sharded safetensors with an
//! index, the local Hugging Face hub cache (repo id), and clear errors for missing pieces.
//! (Runs in its own process because it sets `HF_HUB_CACHE`.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use minigpt4::model::{MiniGpt4, ModelPaths};

fn root() -> PathBuf {
    std::env::var("MDE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        })
}

fn load(blip2: &Path, vicuna: &str, projector: &Path) -> minigpt4::error::Result<MiniGpt4> {
    MiniGpt4::load(
        &ModelPaths {
            blip2: blip2.display().to_string(),
            vicuna: vicuna.to_string(),
            projector: Some(projector.display().to_string()),
            ..Default::default()
        },
        DType::F32,
        &Device::Cpu,
    )
}

fn logits(m: &MiniGpt4) -> Result<Tensor> {
    let e = m.llama.embed_ids(&[1, 2, 3, 4, 5])?.unsqueeze(0)?;
    Ok(m.forward_embeds(&e, None, None, false)?)
}

#[test]
fn sharded_hub_and_error_layouts() -> Result<()> {
    let r = root();
    let proj = r.join("minigpt4/pretrained_minigpt4.pth");
    let reference = logits(&load(
        &r.join("blip2"),
        &r.join("vicuna").display().to_string(),
        &proj,
    )?)?;

    // 1. Sharded safetensors with model.safetensors.index.json.
    let tmp = tempfile::tempdir()?;
    let shard_dir = tmp.path().join("vicuna-sharded");
    std::fs::create_dir_all(&shard_dir)?;
    std::fs::copy(r.join("vicuna/config.json"), shard_dir.join("config.json"))?;
    let all = candle_core::safetensors::load(r.join("vicuna/model.safetensors"), &Device::Cpu)?;
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    let (a, b) = keys.split_at(keys.len() / 2);
    let mut map = serde_json::Map::new();
    for (name, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let t: HashMap<String, Tensor> = part
            .iter()
            .map(|k| ((*k).clone(), all[*k].clone()))
            .collect();
        candle_core::safetensors::save(&t, shard_dir.join(name))?;
        for k in part {
            map.insert((*k).clone(), serde_json::Value::String(name.into()));
        }
    }
    std::fs::write(
        shard_dir.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": map}))?,
    )?;
    let sharded = logits(&load(
        &r.join("blip2"),
        &shard_dir.display().to_string(),
        &proj,
    )?)?;
    assert_eq!(
        (sharded - &reference)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?,
        0.0
    );

    // 2. Repo id resolved in a local hub cache (HF_HUB_CACHE layout).
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--local--tiny-vicuna");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), "0123abcd")?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(r.join("vicuna").join(f), snap.join(f))?;
    }
    std::env::set_var("HF_HUB_CACHE", &cache);
    let hub = logits(&load(&r.join("blip2"), "local/tiny-vicuna", &proj)?)?;
    assert_eq!(
        (hub - &reference)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?,
        0.0
    );
    let err = load(&r.join("blip2"), "local/not-cached", &proj)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("local/not-cached") && err.contains("config.json"),
        "{err}"
    );

    // 3. Missing tensor: a LLaMA folder without lm_head names the key and the file.
    let broken = tmp.path().join("vicuna-broken");
    std::fs::create_dir_all(&broken)?;
    std::fs::copy(r.join("vicuna/config.json"), broken.join("config.json"))?;
    let t: HashMap<String, Tensor> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("lm_head"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&t, broken.join("model.safetensors"))?;
    let err = load(&r.join("blip2"), &broken.display().to_string(), &proj)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lm_head.weight"), "{err}");

    // 4. A projector file without llama_proj.* says so.
    let err = load(
        &r.join("blip2"),
        &r.join("vicuna").display().to_string(),
        &r.join("vicuna/model.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("llama_proj.weight"), "{err}");
    Ok(())
}

#[test]
fn half_precision_loads_and_tracks_f32() -> Result<()> {
    let r = root();
    let fwd = candle_core::safetensors::load(r.join("expected/forward.safetensors"), &Device::Cpu)?;
    let px = &fwd["pixel_values"];
    let want = &fwd["img_embeds"];
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    for dt in [DType::F16, DType::BF16] {
        let m = MiniGpt4::load(
            &ModelPaths {
                blip2: r.join("lavis/blip2_pretrained.pth").display().to_string(),
                blip2_config: Some(r.join("blip2/config.json").display().to_string()),
                vicuna: r.join("vicuna").display().to_string(),
                projector: Some(
                    r.join("minigpt4/pretrained_minigpt4.pth")
                        .display()
                        .to_string(),
                ),
                ..Default::default()
            },
            dt,
            &Device::Cpu,
        )?;
        assert_eq!(m.dtype(), dt);
        let got = m.encode_images(px)?.to_dtype(DType::F32)?;
        let d = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            d.is_finite() && d < 0.05 * scale,
            "{dt:?}: {d} vs scale {scale}"
        );
        let l = logits(&m)?;
        assert!(l
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|x| x.is_finite()));
    }
    Ok(())
}
