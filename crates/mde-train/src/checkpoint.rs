//! Resumable training checkpoints.
//!
//! Layout under a run directory:
//!
//! ```text
//! run/checkpoint-000120/trainable.safetensors   named trainable weights
//! run/checkpoint-000120/optimizer.safetensors   AdamW moments
//! run/checkpoint-000120/optimizer.json          AdamW steps and hyper-parameters
//! run/checkpoint-000120/state.json              global step, epoch, RNG state, extra info
//! run/latest.json                               {"dir": "checkpoint-000120", "step": 120}
//! ```
//!
//! A checkpoint is written into a temporary folder (`.checkpoint-000120.{pid}.tmp`,
//! [`mde_core::io::temp_name`]) that is renamed into place, then `latest.json` is replaced
//! atomically, so a crash leaves the previous checkpoint usable. The half-written folder of a
//! killed writer is removed when the run folder is next opened ([`latest_checkpoint`]) or
//! written to ([`save_checkpoint`]), see [`clean_stale_checkpoints`].
//!
//! `state.json` also carries what a run's summary needs that only the process that did the
//! steps knows ([`LossLog`]: the first and the latest loss), so that a resumed run reports
//! what an uninterrupted one does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::AdamW;

/// Serializable state of a [`ChaCha8Rng`] (seed, stream, word position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Word position as a decimal string (u128 does not fit JSON numbers).
    pub word_pos: String,
}

impl RngState {
    /// Captures the state of `rng`.
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// Rebuilds the generator at the captured position.
    pub fn restore(&self) -> Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        let pos: u128 = self.word_pos.parse().map_err(|_| {
            TrainError::Invalid(format!("bad RNG word position {:?}", self.word_pos))
        })?;
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// Scalar training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Number of optimizer steps done.
    pub step: u64,
    pub epoch: u64,
    pub rng: RngState,
    /// Free-form extras (mode, config hash, last loss, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// What a training summary reports that only the process that ran the step knows: the loss of
/// the first optimizer step and of the latest one. Every trainer of mde (mde-train's
/// [`crate::trainer::Trainer`], mde-loop's vision pretraining) keeps one and saves it in the
/// `extra` of each checkpoint's `state.json` (keys `first_loss` and `last_loss`), so that a run
/// killed and resumed reports the same losses as an uninterrupted one. Checkpoints written
/// before a field existed load it as `None` (unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossLog {
    /// Loss of optimizer step 1.
    #[serde(default)]
    pub first_loss: Option<f32>,
    /// Loss of the latest optimizer step.
    #[serde(default)]
    pub last_loss: Option<f32>,
}

impl LossLog {
    /// Records the loss of the step just done.
    pub fn record(&mut self, loss: f32) {
        self.first_loss.get_or_insert(loss);
        self.last_loss = Some(loss);
    }

    /// Reads the log from a checkpoint's `extra` (other keys are ignored, missing ones are
    /// `None`).
    pub fn from_extra(extra: &serde_json::Value) -> Result<Self> {
        if extra.is_null() {
            return Ok(Self::default());
        }
        Self::deserialize(extra)
            .map_err(|e| TrainError::Invalid(format!("checkpoint losses in `extra`: {e}")))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    dir: String,
    step: u64,
}

/// Whether `name` is the name of a checkpoint folder (`checkpoint-` and digits).
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("checkpoint-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temp folders of checkpoints (and temps of `latest.json`) in `run_dir` left by a
/// writer that was killed and no longer runs ([`mde_core::io::clean_stale_temps_where`]); a
/// writer that still runs, and anything that is not such a temp, are left alone. Returns the
/// removed paths.
pub fn clean_stale_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let removed = mde_core::io::clean_stale_temps_where(run_dir, |t| {
        is_checkpoint_name(t) || t == "latest.json"
    })?;
    for p in &removed {
        tracing::info!(path = %p.display(), "removed the temp of a killed checkpoint writer");
    }
    Ok(removed)
}

/// Saves a checkpoint of `params` (name, var), the optimizer and `state` under `run_dir`;
/// returns the checkpoint folder.
pub fn save_checkpoint(
    run_dir: &Path,
    params: &[(String, Var)],
    opt: &AdamW,
    state: &TrainState,
) -> Result<PathBuf> {
    let io_err = |p: &Path, e| TrainError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(run_dir).map_err(|e| io_err(run_dir, e))?;
    let name = format!("checkpoint-{:06}", state.step);
    let final_dir = run_dir.join(&name);
    clean_stale_checkpoints(run_dir)?;
    let tmp_dir = run_dir.join(mde_core::io::temp_name(&name, std::process::id()));
    if tmp_dir.exists() {
        std::fs::remove_dir_all(&tmp_dir).map_err(|e| io_err(&tmp_dir, e))?;
    }
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io_err(&tmp_dir, e))?;
    let named: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    crate::io::save_safetensors(&tmp_dir.join("trainable.safetensors"), &named)?;
    opt.save(&tmp_dir, "optimizer")?;
    mde_core::io::write_json(tmp_dir.join("state.json"), state)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
    }
    std::fs::rename(&tmp_dir, &final_dir).map_err(|e| io_err(&final_dir, e))?;
    mde_core::io::write_json(
        run_dir.join("latest.json"),
        &Latest {
            dir: name,
            step: state.step,
        },
    )?;
    Ok(final_dir)
}

/// The newest complete checkpoint folder of a run, if any. Opening the run removes the stale
/// temps of killed checkpoint writers first ([`clean_stale_checkpoints`]).
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    clean_stale_checkpoints(run_dir)?;
    let p = run_dir.join("latest.json");
    if !p.is_file() {
        return Ok(None);
    }
    let latest: Latest = mde_core::io::read_json(&p)?;
    let dir = run_dir.join(&latest.dir);
    if !dir.is_dir() {
        return Err(TrainError::file(
            &p,
            format!("points to {} which does not exist", dir.display()),
        ));
    }
    Ok(Some(dir))
}

/// Restores weights into `params` (by name, shapes must match), the optimizer state, and
/// returns the scalar state.
pub fn load_checkpoint(
    dir: &Path,
    params: &[(String, Var)],
    opt: &mut AdamW,
    device: &Device,
) -> Result<TrainState> {
    let wpath = dir.join("trainable.safetensors");
    let tensors: HashMap<String, Tensor> = crate::io::load_safetensors(&wpath, device)?;
    for (n, v) in params {
        let t = tensors
            .get(n)
            .ok_or_else(|| TrainError::file(&wpath, format!("no tensor {n}")))?;
        if t.dims() != v.as_tensor().dims() {
            return Err(TrainError::file(
                &wpath,
                format!(
                    "{n} has shape {:?}, model expects {:?}",
                    t.dims(),
                    v.as_tensor().dims()
                ),
            ));
        }
        v.set(&t.to_dtype(v.as_tensor().dtype())?)?;
    }
    opt.load(dir, "optimizer")?;
    Ok(mde_core::io::read_json(dir.join("state.json"))?)
}

/// Sets every var of `varmap` that `path` holds (a root-name safetensors file, as a full-mode
/// run's `final/model.safetensors`), converting device and dtype to the var's own: a later
/// round starts from an earlier round's fully trained weights.
pub fn load_full_weights(varmap: &candle_nn::VarMap, path: &Path) -> Result<()> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| TrainError::file(path, e.to_string()))?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Invalid("the var map's lock is poisoned".into()))?;
    for (k, v) in data.iter() {
        if let Some(x) = t.get(k) {
            v.set(&x.to_device(v.device())?.to_dtype(v.dtype())?)?;
        }
    }
    Ok(())
}
