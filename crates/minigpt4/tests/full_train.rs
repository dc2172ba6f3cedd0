//! Full-training support on the golden fixture (data-driven: fixture root from
//! `MDE_GOLDEN_DIR`, default `../../../shared/fixtures/minigpt4-tiny` from the crate dir):
//! the differentiable vision/Q-Former path equals the inference path, gradients reach every
//! vision and Q-Former weight, and `MiniGpt4::load_varmap` builds the same model as `load`
//! with every parameter a Var under its MiniGPT-4 root name.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use minigpt4::model::{MiniGpt4, ModelPaths};

fn root() -> PathBuf {
    std::env::var("MDE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        })
}

fn p(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn pixel_values() -> Result<Tensor> {
    let fwd =
        candle_core::safetensors::load(root().join("expected/forward.safetensors"), &Device::Cpu)?;
    fwd.get("pixel_values")
        .cloned()
        .ok_or_else(|| anyhow!("forward.safetensors lacks pixel_values"))
}

/// Every layout `MiniGpt4::load` supports that the fixture has.
fn layouts() -> Vec<(&'static str, ModelPaths)> {
    let projector = Some(p("minigpt4/pretrained_minigpt4.pth"));
    vec![
        (
            "hf",
            ModelPaths {
                blip2: p("blip2"),
                vicuna: p("vicuna"),
                projector: projector.clone(),
                ..Default::default()
            },
        ),
        (
            "lavis",
            ModelPaths {
                blip2: p("lavis/blip2_pretrained.pth"),
                blip2_config: Some(p("blip2/config.json")),
                vicuna: p("vicuna"),
                projector: projector.clone(),
                ..Default::default()
            },
        ),
        (
            "lavis+eva_vit_g",
            ModelPaths {
                blip2: p("lavis/blip2_pretrained.pth"),
                eva_vit: Some(p("lavis/eva_vit_g.pth")),
                blip2_config: Some(p("blip2/config.json")),
                vicuna: p("vicuna"),
                projector,
            },
        ),
    ]
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(anyhow!("shape {:?} vs {:?}", a.dims(), b.dims()));
    }
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// Deterministic, non-constant weights for a scalar probe loss.
fn probe_like(t: &Tensor) -> Result<Tensor> {
    let n = t.elem_count();
    let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
    Ok(Tensor::from_vec(v, t.shape(), t.device())?)
}

#[test]
fn train_path_equals_inference_path() -> Result<()> {
    let px = pixel_values()?;
    for (label, paths) in layouts() {
        let m = MiniGpt4::load(&paths, DType::F32, &Device::Cpu)?;
        let inf = m.qformer_features(&px)?;
        let tr = m.qformer_features_t(&px, true)?;
        let d = max_abs(&inf, &tr)?;
        assert!(d <= 1e-5, "{label}: train path differs by {d}");
        let d = max_abs(&m.vision.forward(&px)?, &m.vision.forward_t(&px, true)?)?;
        assert!(d <= 1e-5, "{label}: vision train path differs by {d}");
    }
    Ok(())
}

#[test]
fn varmap_model_equals_loaded_model() -> Result<()> {
    let px = pixel_values()?;
    let dev = Device::Cpu;
    for (label, paths) in layouts() {
        let plain = MiniGpt4::load(&paths, DType::F32, &dev)?;
        let (m, vm) = MiniGpt4::load_varmap(&paths, DType::F32, &dev)?;
        let names: BTreeSet<String> = vm
            .data()
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .keys()
            .cloned()
            .collect();
        for n in &names {
            let ok = ["vision_model.", "qformer.", "llama_model.", "llama_proj."]
                .iter()
                .any(|pre| n.starts_with(pre))
                || n == "query_tokens";
            assert!(ok, "{label}: unexpected var name {n}");
        }
        assert!(names.contains("llama_proj.weight") && names.contains("llama_proj.bias"));
        assert!(names.contains("query_tokens"));
        // Every Var is really used by the model: its forward equals `load`'s.
        let a = plain.encode_images(&px)?;
        let b = m.encode_images(&px)?;
        let d = max_abs(&a, &b)?;
        assert!(d <= 1e-6, "{label}: image embeddings differ by {d}");
        let emb = a.get(0)?.unsqueeze(0)?;
        let la = plain.forward_embeds(&emb, None, None, false)?;
        let lb = m.forward_embeds(&emb, None, None, false)?;
        let d = max_abs(&la, &lb)?;
        assert!(d <= 1e-6, "{label}: logits differ by {d}");
        // The projector Vars are the map's own.
        let tv: HashMap<String, Var> = m.trainable_vars().into_iter().collect();
        let data = vm.data().lock().map_err(|_| anyhow!("poisoned"))?;
        assert_eq!(
            tv["llama_proj.weight"].as_tensor().id(),
            data["llama_proj.weight"].as_tensor().id()
        );
    }
    // HF layout: the names are exactly the files' keys under MiniGPT-4 root names.
    let (_, vm) = MiniGpt4::load_varmap(&layouts()[0].1, DType::F32, &dev)?;
    let names: BTreeSet<String> = vm.data().lock().unwrap().keys().cloned().collect();
    let mut want = BTreeSet::new();
    for k in candle_core::safetensors::load(root().join("blip2/model.safetensors"), &dev)?.keys() {
        if k.starts_with("vision_model.") || k.starts_with("qformer.") || k == "query_tokens" {
            want.insert(k.clone());
        }
    }
    for k in candle_core::safetensors::load(root().join("vicuna/model.safetensors"), &dev)?.keys() {
        if !k.contains("rotary_emb") {
            want.insert(format!("llama_model.{k}"));
        }
    }
    want.insert("llama_proj.weight".into());
    want.insert("llama_proj.bias".into());
    let missing: Vec<_> = want.difference(&names).collect();
    let extra: Vec<_> = names.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    Ok(())
}

#[test]
fn gradients_reach_vision_and_qformer() -> Result<()> {
    let px = pixel_values()?;
    for (label, paths) in layouts() {
        let (m, vm) = MiniGpt4::load_varmap(&paths, DType::F32, &Device::Cpu)?;
        let f = m.qformer_features_t(&px, true)?;
        let loss = (&f * probe_like(&f)?)?.sum_all()?;
        let grads = loss.backward()?;
        let data = vm.data().lock().map_err(|_| anyhow!("poisoned"))?;
        let mut checked = 0;
        for (n, v) in data.iter() {
            if n.starts_with("llama") {
                continue;
            }
            let g = grads
                .get(v.as_tensor())
                .with_context(|| format!("{label}: no gradient for {n}"))?;
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{label}: non-finite gradient for {n}"
            );
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{label}: all-zero gradient for {n}"
            );
            checked += 1;
        }
        assert!(checked > 0, "{label}: no vision/Q-Former vars");
        // The inference path does not reach the weights (fused kernels stop the gradient),
        // which is why the train path exists.
        let f = m.qformer_features(&px)?;
        let loss = (&f * probe_like(&f)?)?.sum_all()?;
        let grads = loss.backward()?;
        let pe = &data["vision_model.embeddings.position_embedding"];
        assert!(grads.get(pe.as_tensor()).is_none());
    }
    Ok(())
}
