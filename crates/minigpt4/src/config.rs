//! Serde configs for the three sub-models. Every size comes from a config file or from tensor
//! shapes (see `weights.rs`); nothing is hard-coded for one checkpoint.

use serde::{Deserialize, Serialize};

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
        let g = self.image_size / self.patch_size;
        g * g + 1
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
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
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

/// The part of an HF `Blip2Config` this crate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Blip2Config {
    pub vision_config: VisionConfig,
    pub qformer_config: QFormerConfig,
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
}

impl Blip2Config {
    /// Vision and Q-Former configs with `num_query_tokens` copied into the Q-Former config and
    /// ln_vision eps forced to MiniGPT-4's 1e-5 unless the file sets `ln_vision_eps` itself.
    pub fn into_parts(self) -> (VisionConfig, QFormerConfig) {
        let mut q = self.qformer_config;
        q.num_query_tokens = self.num_query_tokens;
        (self.vision_config, q)
    }
}
