//! PEFT adapter folders and the runner .pth checkpoint of the fixture: reading, key mapping,
//! values against train.safetensors, and a save/load round trip.
mod common;
use anyhow::{Context, Result};
use candle_core::Device;
use mde_train::peft::{read_runner_checkpoint, PeftAdapter};

#[test]
fn adapters_match_train_tensors_and_round_trip() -> Result<()> {
    let exp = common::expected()?;
    let tensors = common::train_tensors()?;
    let dir = common::golden_dir().join("expected");
    for (folder, prefix) in [
        ("lora_init_adapter", "train_lora_init."),
        ("lora_final_adapter", "train_lora_final."),
    ] {
        let a = PeftAdapter::load(&dir.join(folder), &Device::Cpu)?;
        let lc = &exp["training"]["lora"]["lora_config"];
        if let Some(r) = lc["r"].as_u64() {
            assert_eq!(a.r(), Some(r as usize));
        }
        if let Some(s) = lc["scaling"].as_f64() {
            assert_eq!(a.scaling(), Some(s));
        }
        let keys = common::strings(&exp["training"]["lora"]["adapter_keys"], "adapter_keys")?;
        assert_eq!(a.tensors.len(), keys.len());
        for (k, t) in &a.tensors {
            let pk = k.peft_key();
            assert!(keys.contains(&pk), "{pk}");
            let want = tensors
                .get(&format!("{prefix}{pk}"))
                .with_context(|| format!("no {prefix}{pk}"))?;
            assert_eq!(common::max_abs_diff(t, want)?, 0.0, "{folder} {pk}");
        }
        let tmp = tempfile::tempdir()?;
        a.save(tmp.path())?;
        let b = PeftAdapter::load(tmp.path(), &Device::Cpu)?;
        assert_eq!(a.config, b.config);
        assert_eq!(a.tensors.len(), b.tensors.len());
        for (k, t) in &a.tensors {
            assert_eq!(common::max_abs_diff(t, &b.tensors[k])?, 0.0);
        }
    }
    Ok(())
}

#[test]
fn runner_checkpoint_keys_and_values() -> Result<()> {
    let exp = common::expected()?;
    let path = common::golden_dir().join("expected/train_lora_final_minigpt4_ckpt.pth");
    if !path.exists() {
        // Optional file in the fixture.
        return Ok(());
    }
    let tensors = common::train_tensors()?;
    let ck = read_runner_checkpoint(&path)?;
    let trainable = common::strings(&exp["training"]["lora"]["trainable"], "lora.trainable")?;
    let mut names: Vec<String> = ck
        .lora
        .keys()
        .map(|k| k.runner_key())
        .chain(ck.other.keys().cloned())
        .collect();
    names.sort();
    let mut want = trainable.clone();
    want.sort();
    assert_eq!(names, want);
    for (k, t) in &ck.lora {
        let w = tensors
            .get(&format!("train_lora_final.{}", k.peft_key()))
            .context("lora final")?;
        assert_eq!(common::max_abs_diff(t, w)?, 0.0);
    }
    for (k, t) in &ck.other {
        let w = tensors
            .get(&format!("train_lora_final_{k}"))
            .with_context(|| format!("train_lora_final_{k}"))?;
        assert_eq!(common::max_abs_diff(t, w)?, 0.0);
    }
    // Missing file: clear error naming it.
    let err = read_runner_checkpoint(std::path::Path::new("/nonexistent/ck.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/ck.pth"));
    Ok(())
}

#[test]
fn lora_key_spellings() {
    use mde_train::peft::{LoraKey, LoraPart};
    let a = LoraKey::parse(
        "llama_model.base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
    )
    .unwrap();
    let b =
        LoraKey::parse("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight").unwrap();
    let c = LoraKey::parse("llama_model.model.layers.3.self_attn.q_proj.lora_A.weight").unwrap();
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(a.part, LoraPart::A);
    assert_eq!(a.layer, 3);
    assert!(LoraKey::parse("llama_proj.weight").is_none());
}
