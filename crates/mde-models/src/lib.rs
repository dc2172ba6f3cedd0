//! The model families behind mde's model traits: what connects a pure model crate (`minigpt4`,
//! candle-style, which knows nothing of benchmarks) to the evaluation runners and the sampler.
//!
//! - [`eval_adapter`]: MiniGPT-4 as an [`mde_core::model::EvalModel`]: the prompt each
//!   benchmark was evaluated with, generation and batched choice ranking, and the model config
//!   file of `mde eval --model` ([`eval_adapter::EvalModelConfig`]).
//! - [`encoder`]: MiniGPT-4's own Q-Former as the sampler's [`mde_abs::ImageEncoder`] (the
//!   similarity half of ABS).
//!
//! ```no_run
//! use mde_core::model::EvalModel;
//! use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
//! use mde_models::encoder::ModelEncoder;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg: EvalModelConfig = toml::from_str(&std::fs::read_to_string("models/minigpt4.toml")?)?;
//! let model = MiniGpt4Eval::load(&cfg)?;
//! println!("{} (batch {})", model.name(), model.max_batch());
//! // Embeddings for ABS: COCO ids resolve as train2017/{id:012}.jpg.
//! let enc = ModelEncoder::new(&model.model, "coco/train2017".into(), "{image_id:012}.jpg".into(), None);
//! # let _ = enc; Ok(()) }
//! ```

pub mod encoder;
pub mod eval_adapter;
