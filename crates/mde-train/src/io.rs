//! Safetensors helpers with path-naming errors and atomic writes.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};

/// Serialises named tensors to safetensors bytes (names sorted by the format).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    // Contiguous copies: the safetensors view needs a flat buffer.
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(owned.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| TrainError::Invalid(format!("serialising safetensors: {e}")))
}

/// Writes named tensors to `path` atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = safetensors_bytes(tensors)?;
    mde_core::io::atomic_write(path, &bytes)?;
    Ok(())
}

/// Loads every tensor of a safetensors file, naming the file on error.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(TrainError::file(path, "file not found"));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| TrainError::file(path, format!("cannot read safetensors: {e}")))
}
