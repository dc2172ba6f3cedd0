//! Step 4, index: the image embeddings that the similarity half of ABS searches. Each image is
//! embedded by the model's own Q-Former (mean over the query tokens,
//! `mde_models::encoder::ModelEncoder`) and stored unit-normalised with its COCO id in a
//! safetensors file (`ids`, `embeddings`). `mde index` and the loop's index step are this
//! function.

use std::path::Path;

use mde_abs::{ImageEncoder, ImageIndex};
use mde_core::records::ImageRef;

use crate::Result;

/// Images embedded per forward pass (as the loop has always used).
pub const DEFAULT_BATCH: usize = 64;

/// Embeds `images` in batches of `batch` and writes the index to `out` (atomically; its folder
/// is created). Returns the index.
pub fn run(
    encoder: &dyn ImageEncoder,
    images: &[(u64, ImageRef)],
    batch: usize,
    out: &Path,
    progress: bool,
) -> Result<ImageIndex> {
    let bar = super::progress_bar(progress, images.len() as u64, "embedding the image pool");
    let index = ImageIndex::build(encoder, images, batch.max(1), |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::create_dir(d)?;
    }
    index.save(out)?;
    Ok(index)
}
