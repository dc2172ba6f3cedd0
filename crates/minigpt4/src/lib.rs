//! MiniGPT-4 on candle: EVA ViT-g vision tower, BLIP-2 Q-Former, linear projector and a
//! LLaMA/Vicuna decoder, numerically identical to the PyTorch reference (see
//! `tests/golden_forward.rs`).
//!
//! Every size comes from config files or tensor shapes; weights load from HF BLIP-2 folders,
//! LAVIS/MiniGPT-4 `.pth` files, raw `eva_vit_g.pth`, and Vicuna folders (safetensors or `.bin`,
//! single or sharded), by local path or Hugging Face repo id in the local cache.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use minigpt4::generation::{generate, GenerationConfig};
//! use minigpt4::model::{MiniGpt4, ModelPaths};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let paths = ModelPaths {
//!     blip2: "blip2".into(),              // HF folder, or "lavis/blip2_pretrained.pth"
//!     vicuna: "vicuna".into(),
//!     projector: Some("minigpt4/pretrained_minigpt4.pth".into()),
//!     ..Default::default()
//! };
//! let model = MiniGpt4::load(&paths, DType::F32, &Device::Cpu)?;
//! let pixels = candle_core::Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?;
//! let image = model.encode_images(&pixels)?.get(0)?;            // [num_query, hidden]
//! let segments = vec![vec![1u32, 835], vec![2277, 29937]];      // text | image | text
//! let prompt = model.embed_segments(&segments, &[image])?;      // [T, hidden]
//! let cfg = GenerationConfig { max_new_tokens: 20, eos_token_ids: vec![2], ..Default::default() };
//! let out = generate(&model.llama, &[prompt], &cfg, None)?;
//! println!("{:?}", out[0].tokens);
//! # Ok(()) }
//! ```
//!
//! CPU inference speed: call [`runtime::tune_process`] first thing in `main`, and
//! [`model::MiniGpt4::set_inference_layout`] on a model that will not be trained
//! (`mde_models::eval_adapter::MiniGpt4Eval` does); docs/PERFORMANCE.md has the measurements.
//!
//! Training: [`model::MiniGpt4::make_projector_trainable`], [`model::MiniGpt4::enable_lora`],
//! [`model::MiniGpt4::trainable_vars`], forward with `train = true` (differentiable ops only),
//! and [`llama::causal_lm_loss`].

/// Calls the `#[inline(always)]` function `$body` with `$args`, compiled for the best of
/// AVX-512F, AVX2+FMA or the baseline that the running CPU has (chosen at run time), so that
/// its plain loops vectorise wide. `$args` are `name: type` pairs.
macro_rules! with_best_simd {
    ($body:ident($($a:ident: $t:ty),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($a: $t),*) {
                $body($($a),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) {
                $body($($a),*)
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { avx512($($a),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { avx2($($a),*) };
            }
        }
        $body($($a),*)
    }};
}

pub mod act;
pub mod alloc;
pub mod config;
pub mod error;
pub mod fused;
pub mod generation;
pub mod linear;
pub mod llama;
pub mod model;
pub mod preprocess;
pub mod prompt;
pub mod qformer;
pub mod runtime;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{LlamaConfig, MiniGpt4Config, QFormerConfig, VisionConfig};
pub use error::{Error, Result};
pub use generation::{generate, GenerationConfig, GenerationOutput};
pub use model::{MiniGpt4, ModelPaths};
