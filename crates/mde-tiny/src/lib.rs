//! The embedded default's tiny base model: a MiniGPT-4 small enough to train from scratch on a
//! CPU, in the real on-disk layouts, so that the closed loop runs offline end to end.
//!
//! The factory's pipeline, one module per step:
//!
//! 1. [`tokenizer_train`]: a LLaMA-style BPE tokenizer trained from scratch on the world's
//!    texts and MiniGPT-4's prompt template, saved as an HF LLaMA tokenizer folder.
//! 2. [`tiny`]: [`tiny::TinyModelConfig`] and [`tiny::build_base_model`], which writes a seeded
//!    random tiny MiniGPT-4 in the real layouts (HF BLIP-2 folder, Vicuna folder, projector
//!    safetensors) that `minigpt4::MiniGpt4::load` reads.
//! 3. [`vision_pretrain`]: an optional stage that pretrains the vision tower on the world's
//!    annotations (then it stays frozen).
//! 4. [`base`]: the pretrained base build ([`base::BaseSection`], the loop's `[base]`): the
//!    model trained on the world's captions and base VQA set, cached by a hash of its inputs.
//!
//! ```no_run
//! use mde_tiny::tiny::{build_base_model, CorpusSource, TinyModelConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let base = build_base_model(
//!     &TinyModelConfig::default(),
//!     CorpusSource::WorldDir("runs/demo/world".as_ref()),
//!     "runs/demo/base".as_ref(),
//!     0,
//! )?;
//! let model = minigpt4::MiniGpt4::load(
//!     &base.model_paths(),
//!     candle_core::DType::F32,
//!     &candle_core::Device::Cpu,
//! )?;
//! # let _ = model; Ok(()) }
//! ```

pub mod base;
pub mod tiny;
pub mod tokenizer_train;
pub mod vision_pretrain;

use std::path::PathBuf;

/// Errors of building, training and loading the tiny base model.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] minigpt4::Error),
    #[error(transparent)]
    Train(#[from] mde_train::TrainError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building or reading the synthetic world failed (`source` kept).
    #[error("world: {0}")]
    WorldGen(#[from] mde_world::WorldError),
    /// A world image or scene is missing or unreadable.
    #[error("world: {0}")]
    World(String),
    /// Writing a record or manifest as JSON failed.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Training or saving the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An invalid setting of the tiny model or its training.
    #[error("invalid config: {0}")]
    Config(String),
    /// A broken invariant (a bug, not bad input).
    #[error("internal: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TinyError>;
