//! Serde configs for the three sub-models. Every size comes from a config file or from tensor
//! shapes (see `weights.rs`); nothing is hard-coded for one checkpoint.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The range checks every config's `validate` is made of. Each failure is an
/// [`Error::BadValue`] naming the key, the value and what was expected; loaders add the file
/// ([`Error::in_file`]).
pub mod check {
    use super::{Error, Result};

    /// `v >= min` (counts and sizes: min 1).
    pub fn at_least(key: &str, v: usize, min: usize) -> Result<()> {
        if v < min {
            return Err(Error::bad_value(key, v, format!("must be at least {min}")));
        }
        Ok(())
    }

    /// `v` is a multiple of `by` (the value of `by_key`); `by` must already be checked >= 1.
    pub fn divisible(key: &str, v: usize, by_key: &str, by: usize) -> Result<()> {
        if by == 0 || !v.is_multiple_of(by) {
            return Err(Error::bad_value(
                key,
                v,
                format!("must be divisible by {by_key} ({by})"),
            ));
        }
        Ok(())
    }

    /// Finite and `> 0` (epsilons, RoPE base, penalties).
    pub fn positive(key: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::bad_value(key, v, "must be a finite number > 0"));
        }
        Ok(())
    }

    /// Finite and `>= 0`.
    pub fn non_negative(key: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::bad_value(key, v, "must be a finite number >= 0"));
        }
        Ok(())
    }

    /// Finite (any sign).
    pub fn finite(key: &str, v: f64) -> Result<()> {
        if !v.is_finite() {
            return Err(Error::bad_value(key, v, "must be a finite number"));
        }
        Ok(())
    }

    /// The sizes of a stack of BERT/ViT encoder layers (same key names in both configs):
    /// width, layers, heads and MLP width at least 1, the heads dividing the width.
    pub fn encoder_stack(hidden: usize, layers: usize, heads: usize, mlp: usize) -> Result<()> {
        at_least("hidden_size", hidden, 1)?;
        at_least("num_hidden_layers", layers, 1)?;
        at_least("num_attention_heads", heads, 1)?;
        divisible("hidden_size", hidden, "num_attention_heads", heads)?;
        at_least("intermediate_size", mlp, 1)
    }

    /// In `(0, 1]` (probabilities such as top-p).
    pub fn unit_open_closed(key: &str, v: f64) -> Result<()> {
        if !(v > 0.0 && v <= 1.0) {
            return Err(Error::bad_value(key, v, "must be in (0, 1]"));
        }
        Ok(())
    }
}

fn default_ln_vision_eps() -> f64 {
    // MiniGPT-4/LAVIS build ln_vision as `nn.LayerNorm(dim)` (torch default eps 1e-5), even when
    // the HF config says `layer_norm_eps = 1e-6` for the ViT block norms (fixture README §7).
    1e-5
}
fn default_vit_eps() -> f64 {
    1e-6
}
fn default_cross_freq() -> usize {
    2
}
fn default_qformer_eps() -> f64 {
    1e-12
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_num_query_tokens() -> usize {
    32
}

/// EVA ViT-g vision tower (HF `Blip2VisionConfig` field names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub patch_size: usize,
    pub image_size: usize,
    /// Eps of the LayerNorms inside the ViT blocks.
    #[serde(default = "default_vit_eps")]
    pub layer_norm_eps: f64,
    /// Eps of `ln_vision` (HF `post_layernorm`); 1e-5 as in MiniGPT-4, not `layer_norm_eps`.
    #[serde(default = "default_ln_vision_eps")]
    pub ln_vision_eps: f64,
}

impl VisionConfig {
    /// Number of tokens the ViT outputs (patches + CLS).
    pub fn seq_len(&self) -> usize {
        let g = self.image_size.checked_div(self.patch_size).unwrap_or(0);
        g * g + 1
    }
    /// Checks every size, count and eps: sizes and counts at least 1, heads dividing
    /// `hidden_size`, `patch_size <= image_size` and dividing it, eps > 0.
    pub fn validate(&self) -> Result<()> {
        check::encoder_stack(
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
        )?;
        check::at_least("patch_size", self.patch_size, 1)?;
        if self.image_size < self.patch_size {
            return Err(Error::bad_value(
                "image_size",
                self.image_size,
                format!("must be at least patch_size ({})", self.patch_size),
            ));
        }
        check::divisible("image_size", self.image_size, "patch_size", self.patch_size)?;
        check::positive("layer_norm_eps", self.layer_norm_eps)?;
        check::positive("ln_vision_eps", self.ln_vision_eps)
    }
    /// The real EVA ViT-g/14 used by MiniGPT-4 (39 blocks of the 40 in eva_vit_g.pth).
    pub fn eva_vit_g() -> Self {
        Self {
            hidden_size: 1408,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            intermediate_size: 6144,
            patch_size: 14,
            image_size: 224,
            layer_norm_eps: 1e-6,
            ln_vision_eps: 1e-5,
        }
    }
}

/// BLIP-2 Q-Former (HF `Blip2QFormerConfig` field names) plus the number of query tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QFormerConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_cross_freq")]
    pub cross_attention_frequency: usize,
    pub encoder_hidden_size: usize,
    #[serde(default = "default_qformer_eps")]
    pub layer_norm_eps: f64,
    /// Filled from the top-level `num_query_tokens` of a BLIP-2 config.
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
}

impl QFormerConfig {
    /// Checks every size, count and eps.
    pub fn validate(&self) -> Result<()> {
        check::encoder_stack(
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
        )?;
        check::at_least(
            "cross_attention_frequency",
            self.cross_attention_frequency,
            1,
        )?;
        check::at_least("encoder_hidden_size", self.encoder_hidden_size, 1)?;
        check::positive("layer_norm_eps", self.layer_norm_eps)?;
        check::at_least("num_query_tokens", self.num_query_tokens, 1)
    }
    /// BERT-base Q-Former of BLIP-2 / MiniGPT-4.
    pub fn blip2_base(encoder_hidden_size: usize) -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            cross_attention_frequency: 2,
            encoder_hidden_size,
            layer_norm_eps: 1e-12,
            num_query_tokens: 32,
        }
    }
}

/// Parsed `rope_parameters` of newer transformers configs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// `bos/eos_token_id` may be an int, a list or null in HF configs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(x) => vec![*x],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// LLaMA / Vicuna decoder config (HF `LlamaConfig` field names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// GQA: fewer K/V heads than query heads. Defaults to `num_attention_heads` (MHA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Flat `rope_theta` (classic layout); `rope_parameters.rope_theta` is used when absent.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Informational: the tokenizer's ids win (Vicuna v0 configs disagree with the tokenizer).
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// `head_dim`, else `hidden_size / num_attention_heads` (0 for 0 heads: [`Self::validate`]
    /// rejects such configs).
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }
    /// Checks every size, count, ratio and eps: sizes and counts at least 1, heads dividing
    /// `hidden_size` (when `head_dim` is not given), `num_key_value_heads` dividing
    /// `num_attention_heads`, an even head dim (RoPE rotates halves), eps and RoPE base > 0.
    pub fn validate(&self) -> Result<()> {
        check::at_least("vocab_size", self.vocab_size, 1)?;
        check::at_least("hidden_size", self.hidden_size, 1)?;
        check::at_least("intermediate_size", self.intermediate_size, 1)?;
        check::at_least("num_hidden_layers", self.num_hidden_layers, 1)?;
        check::at_least("num_attention_heads", self.num_attention_heads, 1)?;
        if let Some(kv) = self.num_key_value_heads {
            check::at_least("num_key_value_heads", kv, 1)?;
            if !self.num_attention_heads.is_multiple_of(kv) {
                return Err(Error::bad_value(
                    "num_key_value_heads",
                    kv,
                    format!(
                        "must divide num_attention_heads ({})",
                        self.num_attention_heads
                    ),
                ));
            }
        }
        match self.head_dim {
            Some(d) => check::at_least("head_dim", d, 1)?,
            None => check::divisible(
                "hidden_size",
                self.hidden_size,
                "num_attention_heads",
                self.num_attention_heads,
            )?,
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) {
            let key = if self.head_dim.is_some() {
                "head_dim"
            } else {
                "hidden_size"
            };
            return Err(Error::bad_value(
                key,
                if self.head_dim.is_some() {
                    hd
                } else {
                    self.hidden_size
                },
                format!("the head dim ({hd}) must be even (RoPE rotates halves)"),
            ));
        }
        check::positive("rms_norm_eps", self.rms_norm_eps)?;
        match (self.rope_theta, &self.rope_parameters) {
            (Some(t), _) => check::positive("rope_theta", t)?,
            (
                None,
                Some(RopeParameters {
                    rope_theta: Some(t),
                    ..
                }),
            ) => check::positive("rope_parameters.rope_theta", *t)?,
            _ => {}
        }
        if let Some(n) = self.max_position_embeddings {
            check::at_least("max_position_embeddings", n, 1)?;
        }
        Ok(())
    }
    /// RoPE base: flat `rope_theta`, else `rope_parameters.rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10000.0)
    }
}

/// Sizes of the whole MiniGPT-4 model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MiniGpt4Config {
    pub vision: VisionConfig,
    pub qformer: QFormerConfig,
    pub llama: LlamaConfig,
}

impl MiniGpt4Config {
    /// Validates the three parts (keys prefixed `vision.`, `qformer.`, `llama.`) and that the
    /// Q-Former attends to the ViT's width.
    pub fn validate(&self) -> Result<()> {
        self.vision
            .validate()
            .map_err(|e| e.in_section("vision."))?;
        self.qformer
            .validate()
            .map_err(|e| e.in_section("qformer."))?;
        self.llama.validate().map_err(|e| e.in_section("llama."))?;
        if self.qformer.encoder_hidden_size != self.vision.hidden_size {
            return Err(Error::bad_value(
                "qformer.encoder_hidden_size",
                self.qformer.encoder_hidden_size,
                format!(
                    "must equal vision.hidden_size ({})",
                    self.vision.hidden_size
                ),
            ));
        }
        Ok(())
    }
}

/// The part of an HF `Blip2Config` this crate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Blip2Config {
    pub vision_config: VisionConfig,
    pub qformer_config: QFormerConfig,
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
}

impl Blip2Config {
    /// Validates both parts (keys prefixed `vision_config.` / `qformer_config.`) and
    /// `num_query_tokens`.
    pub fn validate(&self) -> Result<()> {
        check::at_least("num_query_tokens", self.num_query_tokens, 1)?;
        self.vision_config
            .validate()
            .map_err(|e| e.in_section("vision_config."))?;
        // `num_query_tokens` of the Q-Former part comes from the top level.
        let mut q = self.qformer_config.clone();
        q.num_query_tokens = self.num_query_tokens;
        q.validate().map_err(|e| e.in_section("qformer_config."))?;
        if q.encoder_hidden_size != self.vision_config.hidden_size {
            return Err(Error::bad_value(
                "qformer_config.encoder_hidden_size",
                q.encoder_hidden_size,
                format!(
                    "must equal vision_config.hidden_size ({})",
                    self.vision_config.hidden_size
                ),
            ));
        }
        Ok(())
    }
    /// Vision and Q-Former configs with `num_query_tokens` copied into the Q-Former config and
    /// ln_vision eps forced to MiniGPT-4's 1e-5 unless the file sets `ln_vision_eps` itself.
    pub fn into_parts(self) -> (VisionConfig, QFormerConfig) {
        let mut q = self.qformer_config;
        q.num_query_tokens = self.num_query_tokens;
        (self.vision_config, q)
    }
}
