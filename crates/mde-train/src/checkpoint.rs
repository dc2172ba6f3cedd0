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
//! A checkpoint is written into a temporary folder that is renamed into place, then
//! `latest.json` is replaced atomically, so a crash leaves the previous checkpoint usable.

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

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    dir: String,
    step: u64,
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
    let tmp_dir = run_dir.join(format!(".{name}.tmp-{}", std::process::id()));
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

/// The newest complete checkpoint folder of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
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
