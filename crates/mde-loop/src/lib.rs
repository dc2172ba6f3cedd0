//! The closed loop of mde (round orchestration, built later) and the embedded default's tiny
//! base model.
//!
//! - [`tokenizer_train`]: a LLaMA-style BPE tokenizer trained from scratch on the world's texts
//!   and MiniGPT-4's prompt template, saved as an HF LLaMA tokenizer folder.
//! - [`tiny`]: [`tiny::TinyModelConfig`] and [`tiny::build_base_model`], which writes a seeded
//!   random tiny MiniGPT-4 in the real on-disk layouts (HF BLIP-2 folder, Vicuna folder,
//!   projector safetensors) that `minigpt4::MiniGpt4::load` reads.
//!
//! ```no_run
//! use mde_loop::tiny::{build_base_model, CorpusSource, TinyModelConfig};
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
pub mod check;
pub mod config;
pub mod report;
pub mod run;
pub mod tiny;
pub mod tokenizer_train;
pub mod vision_pretrain;

use std::path::PathBuf;

/// Errors of the loop crate.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] minigpt4::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Building or reading the synthetic world failed (`source` kept).
    #[error("world: {0}")]
    WorldGen(#[from] mde_world::WorldError),
    /// A world image or scene is missing or unreadable.
    #[error("world: {0}")]
    World(String),
    /// An evaluation step failed (inference, official files or scoring).
    #[error("evaluation: {0}")]
    Eval(#[from] mde_eval::runner::RunError),
    /// Generation ended before every query had a reply (a re-run resumes).
    #[error("generation: {0}")]
    GenerationIncomplete(String),
    /// Post-processing the teacher replies failed.
    #[error("postprocess: {0}")]
    Postprocess(String),
    /// Writing a record or config as JSON failed.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A broken invariant of the loop itself (a bug, not bad input).
    #[error("internal: {0}")]
    Internal(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Train(#[from] mde_train::TrainError),
    #[error(transparent)]
    Abs(#[from] mde_abs::AbsError),
    #[error(transparent)]
    Gen(#[from] mde_gen::GenError),
    /// Drawing a report chart failed.
    #[error("report: {0}")]
    Report(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LoopError>;
