//! The steps of one round, one module each, in the order the round runs them:
//!
//! 1. [`evaluate`]: answer a benchmark with the round's model, write the official prediction
//!    files, score them, count accuracy per question type.
//! 2. [`mine`]: the wrong answers of the mining evaluation become bad cases, with the error
//!    rate of every question type.
//! 3. [`classify`]: the teacher labels benchmark questions that carry no question type (once
//!    per run, cached).
//! 4. [`index`]: image embeddings of the ABS candidate pool (once per run).
//! 5. [`sample`]: Adaptive Bad-case Sampling builds the generation queries.
//! 6. [`generate`]: the teacher answers every query (append-only, resumable per query).
//! 7. [`postprocess`]: replies are parsed, validated and filtered into training files.
//! 8. [`train`]: the round's model is fine-tuned on base data plus every generated round.
//!
//! The report ([`crate::report`]) closes the loop. Each step takes its library's own config,
//! typed inputs and the typed folder of [`crate::layout`], and is the code behind both the
//! loop's step and the `mde` subcommand of the same name, so the two cannot diverge
//! (`crates/mde-cli/tests/step_equivalence.rs` compares their files byte for byte).
//!
//! [`resumable`] runs a step once: a finished step leaves `done.json` in its folder, and a
//! re-run reads the step's value back from it instead of running again.

pub mod classify;
pub mod evaluate;
pub mod generate;
pub mod index;
pub mod mine;
pub mod postprocess;
pub mod sample;
pub mod train;

use std::path::Path;
use std::time::Instant;

use mde_core::io::{read_json, write_json};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{LoopError, Result};

/// What a finished step leaves in its `done.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done<T> {
    seconds: f64,
    value: T,
}

/// Whether the step in `dir` has finished (its `done.json` exists).
pub fn is_done(dir: &Path) -> bool {
    dir.join("done.json").exists()
}

/// Runs `f` in `dir` unless `dir/done.json` says it finished; returns its value and seconds.
/// `done.json` is written atomically after `f` returns, so a step killed midway runs again
/// (and resumes from its own append-only files, where it has them).
pub fn resumable<T: Serialize + DeserializeOwned>(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<(T, f64)> {
    let marker = dir.join("done.json");
    if marker.exists() {
        let d: Done<T> = read_json(&marker)?;
        tracing::info!(step = name, dir = %dir.display(), "already done");
        return Ok((d.value, d.seconds));
    }
    create_dir(dir)?;
    tracing::info!(step = name, dir = %dir.display(), "running");
    let t0 = Instant::now();
    let value = f(dir)?;
    let d = Done {
        seconds: t0.elapsed().as_secs_f64(),
        value,
    };
    write_json(&marker, &d)?;
    Ok((d.value, d.seconds))
}

pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LoopError::Io {
        path: dir.to_path_buf(),
        source: e,
    })
}

pub(crate) use mde_train::progress::bar as progress_bar;

/// A runtime for the teacher's async calls (`dir` names the step in an error).
pub(crate) fn runtime(dir: &Path) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LoopError::Io {
            path: dir.to_path_buf(),
            source: e,
        })
}
