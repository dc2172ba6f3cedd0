//! Exports of a trained model: PEFT adapter, runner-keyed safetensors, merged LLaMA.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use minigpt4::llama::Llama;
use minigpt4::model::MiniGpt4;

use crate::error::{Result, TrainError};
use crate::peft::{LoraKey, PeftAdapter};

/// The model's LoRA adapters as a PEFT adapter (`r`, `alpha`, `dropout`, targets recorded).
pub fn peft_adapter(
    model: &MiniGpt4,
    r: usize,
    alpha: f64,
    dropout: f64,
    targets: &[String],
) -> Result<PeftAdapter> {
    let mut tensors = BTreeMap::new();
    for (n, v) in model.llama.lora_vars() {
        let k = LoraKey::parse(&n)
            .ok_or_else(|| TrainError::Invalid(format!("unexpected LoRA key {n}")))?;
        tensors.insert(k, v.as_tensor().clone());
    }
    if tensors.is_empty() {
        return Err(TrainError::Invalid(
            "the model has no LoRA adapters to export".into(),
        ));
    }
    let t: Vec<&str> = targets.iter().map(String::as_str).collect();
    Ok(PeftAdapter::new(r, alpha, dropout, &t, tensors))
}

/// Trainable weights under MiniGPT-4 runner `.pth` key names
/// (`llama_proj.*`, `llama_model.base_model.model.model.layers.N...lora_A.default.weight`)
/// in a safetensors file: `.pth` (pickle) writing is not implemented, the names let the
/// original's loader map them after a `safetensors -> torch.save` conversion.
pub fn save_runner_safetensors(model: &MiniGpt4, path: &Path) -> Result<()> {
    let mut out = vec![(
        "llama_proj.weight".to_string(),
        model.llama_proj.weight.clone(),
    )];
    if let Some(b) = &model.llama_proj.bias {
        out.push(("llama_proj.bias".to_string(), b.clone()));
    }
    for (n, v) in model.llama.lora_vars() {
        let k = LoraKey::parse(&n)
            .ok_or_else(|| TrainError::Invalid(format!("unexpected LoRA key {n}")))?;
        out.push((k.runner_key(), v.as_tensor().clone()));
    }
    crate::io::save_safetensors(path, &out)
}

/// HF `LlamaForCausalLM` state dict of `llama` (adapters are NOT included: merge first).
pub fn llama_state_dict(llama: &Llama) -> Vec<(String, Tensor)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        llama.embed_tokens.clone(),
    )];
    for (i, l) in llama.layers.iter().enumerate() {
        for t in minigpt4::llama::LORA_TARGETS {
            if let Some(lin) = l.linear(t) {
                let m = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&t) {
                    "self_attn"
                } else {
                    "mlp"
                };
                let w = lin
                    .weight_var
                    .as_ref()
                    .map(|v| v.as_tensor().clone())
                    .unwrap_or_else(|| lin.weight.clone());
                out.push((format!("model.layers.{i}.{m}.{t}.weight"), w));
            }
        }
        out.push((
            format!("model.layers.{i}.input_layernorm.weight"),
            l.input_layernorm.weight.clone(),
        ));
        out.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            l.post_attention_layernorm.weight.clone(),
        ));
    }
    out.push(("model.norm.weight".to_string(), llama.norm.weight.clone()));
    out.push(("lm_head.weight".to_string(), llama.lm_head.weight.clone()));
    out
}

/// Merges every LoRA adapter into its base weight (`W += B A * scale`) and writes the LLaMA
/// as one HF safetensors file (`model.safetensors`) in `dtype`; copy `config.json` and the
/// tokenizer next to it to get a loadable folder.
pub fn merge_and_save_llama(model: &mut MiniGpt4, path: &Path, dtype: DType) -> Result<()> {
    model.llama.merge_lora()?;
    let sd = llama_state_dict(&model.llama)
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    crate::io::save_safetensors(path, &sd)
}
