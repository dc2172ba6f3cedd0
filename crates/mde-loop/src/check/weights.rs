//! Tensor names and shapes of weight files, read without loading any tensor.

use std::collections::HashMap;
use std::path::Path;

/// Tensor names and shapes of a `.safetensors` (header only) or `.pth`/`.bin` (pickle index only,
/// state dict under `model`, then `state_dict`, then the top level, as `read_tensors` does).
pub fn tensor_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, String> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return safetensors_shapes(path);
    }
    let mut last = String::new();
    for key in [Some("model"), Some("state_dict"), None] {
        match candle_core::pickle::read_pth_tensor_info(path, false, key) {
            Ok(v) if !v.is_empty() => {
                return Ok(v
                    .into_iter()
                    .map(|t| (t.name, t.layout.dims().to_vec()))
                    .collect())
            }
            Ok(_) => {}
            Err(e) => last = e.to_string(),
        }
    }
    if last.is_empty() {
        Err("no tensors found (looked under keys `model`, `state_dict` and the top level)".into())
    } else {
        Err(format!("cannot read as a PyTorch zip checkpoint: {last}"))
    }
}

/// Tensor names and shapes of a safetensors file, from its header, by the `safetensors`
/// crate's own reader. The file is memory-mapped, so no tensor data is read, but the header's
/// offsets are validated against the file's length: a truncated file is refused here, not at
/// load time.
pub fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < 8 {
        return Err("not a safetensors file (shorter than its 8-byte header length)".to_string());
    }
    // SAFETY: the map is read only while `f` is open in this function; a file truncated
    // concurrently by another process could fault, as for every mmap-based loader (candle's
    // included).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("cannot map: {e}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.shape.clone()))
        .collect())
}
