//! PEFT LoRA adapter I/O (`adapter_config.json` + `adapter_model.safetensors`) and MiniGPT-4
//! `.pth` checkpoints holding trainable weights.
//!
//! Key conventions:
//! * PEFT adapter: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.
//! * MiniGPT-4 runner checkpoint (`{"model": {...}}`):
//!   `llama_model.base_model.model.model.layers.N.self_attn.q_proj.lora_A.default.weight`,
//!   `llama_proj.weight`, `llama_proj.bias`. Older DataEngine checkpoints use
//!   `llama_model.model.layers.N...lora_A.weight`; both are accepted.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::{Result, TrainError};

/// File names inside an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Which LoRA matrix a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraPart {
    A,
    B,
}

/// A parsed LoRA key: decoder layer, module (`q_proj`, ...), part.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoraKey {
    pub layer: usize,
    /// Module path inside the layer, e.g. `self_attn.q_proj`.
    pub module: String,
    pub part: LoraPart,
}

impl LoraKey {
    /// Parses any of the accepted spellings (PEFT, runner `.default`, old DataEngine).
    pub fn parse(key: &str) -> Option<Self> {
        let k = key.strip_prefix("llama_model.").unwrap_or(key);
        let k = k.strip_prefix("base_model.model.").unwrap_or(k);
        let k = k.strip_prefix("model.layers.")?;
        let (layer, rest) = k.split_once('.')?;
        let layer = layer.parse().ok()?;
        let rest = rest.strip_suffix(".weight")?;
        let rest = rest.strip_suffix(".default").unwrap_or(rest);
        let (module, part) = if let Some(m) = rest.strip_suffix(".lora_A") {
            (m, LoraPart::A)
        } else if let Some(m) = rest.strip_suffix(".lora_B") {
            (m, LoraPart::B)
        } else {
            return None;
        };
        Some(Self {
            layer,
            module: module.to_string(),
            part,
        })
    }

    fn part_str(&self) -> &'static str {
        match self.part {
            LoraPart::A => "lora_A",
            LoraPart::B => "lora_B",
        }
    }

    /// PEFT adapter key.
    pub fn peft_key(&self) -> String {
        format!(
            "base_model.model.model.layers.{}.{}.{}.weight",
            self.layer,
            self.module,
            self.part_str()
        )
    }

    /// MiniGPT-4 runner checkpoint key.
    pub fn runner_key(&self) -> String {
        format!(
            "llama_model.base_model.model.model.layers.{}.{}.{}.default.weight",
            self.layer,
            self.module,
            self.part_str()
        )
    }
}

/// A LoRA adapter as stored by PEFT `save_pretrained`.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// The full `adapter_config.json` (unknown fields are kept for round trips).
    pub config: Value,
    /// Tensors by parsed key.
    pub tensors: BTreeMap<LoraKey, Tensor>,
}

impl PeftAdapter {
    /// A new adapter with PEFT's config fields for a LoRA on `target_modules`.
    pub fn new(
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        target_modules: &[&str],
        tensors: BTreeMap<LoraKey, Tensor>,
    ) -> Self {
        let config = serde_json::json!({
            "base_model_name_or_path": null,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": lora_alpha,
            "lora_dropout": lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": r,
            "target_modules": target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": false,
        });
        Self { config, tensors }
    }

    /// Rank `r` from the config.
    pub fn r(&self) -> Option<usize> {
        self.config.get("r")?.as_u64().map(|v| v as usize)
    }

    /// `lora_alpha` from the config.
    pub fn lora_alpha(&self) -> Option<f64> {
        self.config.get("lora_alpha")?.as_f64()
    }

    /// `alpha / r` (or `alpha / sqrt(r)` with `use_rslora`).
    pub fn scaling(&self) -> Option<f64> {
        let r = self.r()? as f64;
        let a = self.lora_alpha()?;
        if self.config.get("use_rslora").and_then(Value::as_bool) == Some(true) {
            Some(a / r.sqrt())
        } else {
            Some(a / r)
        }
    }

    /// `target_modules` from the config.
    pub fn target_modules(&self) -> Vec<String> {
        self.config
            .get("target_modules")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let config: Value = mde_core::io::read_json(&cfg_path)?;
        if config
            .get("peft_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "LORA")
        {
            return Err(TrainError::file(&cfg_path, "peft_type is not LORA"));
        }
        for key in ["r", "lora_alpha"] {
            if config.get(key).and_then(Value::as_f64).is_none() {
                return Err(TrainError::file(
                    &cfg_path,
                    format!("missing numeric `{key}`"),
                ));
            }
        }
        let w_path = dir.join(ADAPTER_WEIGHTS);
        let raw = crate::io::load_safetensors(&w_path, device)?;
        let mut tensors = BTreeMap::new();
        for (k, t) in raw {
            let key = LoraKey::parse(&k)
                .ok_or_else(|| TrainError::file(&w_path, format!("unexpected tensor key {k:?} (expected ...layers.N.<module>.lora_A/B.weight)")))?;
            tensors.insert(key, t);
        }
        let adapter = Self { config, tensors };
        adapter.validate(&w_path)?;
        Ok(adapter)
    }

    /// Checks that every module has both A `[r, in]` and B `[out, r]`.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let r = self
            .r()
            .ok_or_else(|| TrainError::file(path, "adapter config has no r"))?;
        for (k, t) in &self.tensors {
            let other = LoraKey {
                part: if k.part == LoraPart::A {
                    LoraPart::B
                } else {
                    LoraPart::A
                },
                ..k.clone()
            };
            if !self.tensors.contains_key(&other) {
                return Err(TrainError::file(
                    path,
                    format!("{} has no matching {}", k.peft_key(), other.peft_key()),
                ));
            }
            let dims = t.dims();
            let ok = dims.len() == 2
                && if k.part == LoraPart::A {
                    dims[0] == r
                } else {
                    dims[1] == r
                };
            if !ok {
                return Err(TrainError::file(
                    path,
                    format!(
                        "{} has shape {dims:?}, inconsistent with r = {r}",
                        k.peft_key()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Writes the adapter folder (both files atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let named: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.peft_key(), t.clone()))
            .collect();
        crate::io::save_safetensors(&dir.join(ADAPTER_WEIGHTS), &named)?;
        mde_core::io::write_json(dir.join(ADAPTER_CONFIG), &self.config)?;
        Ok(())
    }
}

/// Trainable weights of a MiniGPT-4 runner checkpoint.
#[derive(Debug, Clone, Default)]
pub struct RunnerCheckpoint {
    /// LoRA tensors by parsed key.
    pub lora: BTreeMap<LoraKey, Tensor>,
    /// Other tensors (`llama_proj.weight`, `llama_proj.bias`, ...) by their key.
    pub other: BTreeMap<String, Tensor>,
}

/// Reads `{"model": state_dict}` from a MiniGPT-4 `.pth` checkpoint.
pub fn read_runner_checkpoint(path: &Path) -> Result<RunnerCheckpoint> {
    if !path.is_file() {
        return Err(TrainError::file(path, "checkpoint not found"));
    }
    let tensors = candle_core::pickle::read_all_with_key(path, Some("model"))
        .map_err(|e| TrainError::file(path, format!("cannot read the `model` state dict: {e}")))?;
    // candle returns nothing (not an error) when the key is absent.
    if tensors.is_empty() {
        return Err(TrainError::file(path, "no tensors under the `model` key"));
    }
    let mut out = RunnerCheckpoint::default();
    for (k, t) in tensors {
        if k.contains("lora_") {
            let key = LoraKey::parse(&k)
                .ok_or_else(|| TrainError::file(path, format!("unrecognised LoRA key {k:?}")))?;
            out.lora.insert(key, t);
        } else {
            out.other.insert(k, t);
        }
    }
    Ok(out)
}
