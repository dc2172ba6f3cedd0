//! The closed loop of mde: one round evaluates the model, mines its bad cases, samples
//! generation queries (ABS), has a teacher answer them, filters the replies and fine-tunes the
//! model on them; `mde loop` runs rounds until the configured count.
//!
//! - [`steps`]: the steps of a round, one module each (evaluate, mine, classify, index, sample,
//!   generate, postprocess, train). The `mde` subcommands run the same functions.
//! - [`layout`]: the run folder as types (where every step reads and writes).
//! - [`run`]: [`run::LoopRun`], the round orchestration over [`layout`].
//! - [`config`]: the loop's TOML config (`LoopConfig`), which embeds the library configs.
//! - [`check`]: `mde loop --check`, the pre-flight check of a config (files, weights, sizes,
//!   memory) before any work starts.
//! - [`report`]: `report.json`, `report.md` and the accuracy chart of a run.
//!
//! The embedded default's tiny base model (its tokenizer, random init, encoder stage and cached
//! base build) is the `mde-tiny` crate; the loop calls it in its base step.
//!
//! ```no_run
//! use mde_loop::config::LoopConfig;
//! use mde_loop::run::LoopRun;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = LoopConfig::load("configs/shapes-demo.toml")?;
//! let report = LoopRun::new(cfg, "runs/demo".as_ref())?.run()?;
//! for r in &report.rounds {
//!     println!("round {}: {:?}", r.round, r.report.as_ref().map(|e| e.overall));
//! }
//! # Ok(()) }
//! ```

pub mod check;
pub mod config;
pub mod layout;
pub mod report;
pub mod run;
pub mod steps;

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
    /// An evaluation step failed (inference, official files or scoring).
    #[error("evaluation: {0}")]
    Eval(#[from] mde_eval::EvalError),
    /// Generation ended before every query had a reply (a re-run resumes).
    #[error("generation: {0}")]
    GenerationIncomplete(String),
    /// Post-processing the teacher replies failed.
    #[error("postprocess: {0}")]
    Postprocess(String),
    /// The output folder holds a run of another config (resuming it would mix two runs).
    #[error("{path} belongs to a run of another config (fingerprint {theirs} vs {ours}); use another --out or delete it")]
    OtherRun {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    /// A round has nothing to train on.
    #[error("round {round}: no training data (no base data and nothing generated)")]
    NoTrainingData { round: usize },
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
    /// Building or training the tiny base model failed.
    #[error(transparent)]
    Tiny(#[from] mde_tiny::TinyError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LoopError>;
