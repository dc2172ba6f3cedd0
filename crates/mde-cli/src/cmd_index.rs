//! `mde index`: the image index that `mde sample --index` reads, built the way the loop's index
//! step builds it: each image of a COCO instances file is embedded with the model's own Q-Former
//! (mean over the query tokens) and stored, unit-normalised, with its COCO id in a safetensors
//! file (`ids`, `embeddings`).
//!
//! Image files are `--images` joined with each image's `file_name`, through the path policy of
//! every loader (`mde_core::paths`): a `file_name` that leaves the image root is refused.
use anyhow::{Context, Result};
use mde_abs::AnnotationDb;
use mde_core::records::ImageRef;
use mde_models::eval_adapter::MiniGpt4Eval;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// COCO instances file of the images to index (e.g. instances_train2017.json).
    #[arg(long)]
    pub annotations: PathBuf,
    /// Folder the images' `file_name`s are relative to (e.g. coco/train2017).
    #[arg(long)]
    pub images: PathBuf,
    /// Model config TOML, as for `mde eval` (blip2, vicuna, projector, dtype, device).
    #[arg(long)]
    pub model: PathBuf,
    /// Output index file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Images per encoder call.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Index only the first N images (by COCO id).
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size 0: must be at least 1");
    }
    let cfg = crate::cmd_eval::read_model_config(&args.model)?;
    let db = AnnotationDb::load_instances(&args.annotations)?;
    let mut ids = db.ids();
    ids.sort_unstable();
    if let Some(n) = args.limit {
        ids.truncate(n);
    }
    if ids.is_empty() {
        anyhow::bail!("{}: no images to index", args.annotations.display());
    }
    // Resolve every file up front: a name outside the root fails before the model loads.
    let policy = mde_core::paths::PathPolicy::in_root(args.images.clone());
    let mut images = Vec::with_capacity(ids.len());
    for &id in &ids {
        let rec = db.image(id).context("image id listed but not found")?;
        let file = policy.resolve(&rec.file_name).with_context(|| {
            format!(
                "{}: image {id} (file_name {:?})",
                args.annotations.display(),
                rec.file_name
            )
        })?;
        images.push((
            id,
            ImageRef::Path {
                path: file.display().to_string(),
            },
        ));
    }
    let model = MiniGpt4Eval::load(&cfg)
        .with_context(|| format!("loading the model of {}", args.model.display()))?;
    let enc = mde_models::encoder::ModelEncoder::new(
        &model.model,
        args.images.clone(),
        String::new(),
        Some(args.images.clone()),
    );
    let index =
        mde_loop::steps::index::run(&enc, &images, args.batch_size, &args.out, !args.quiet)?;
    eprintln!(
        "indexed {} images of {} -> {}",
        index.len(),
        args.annotations.display(),
        args.out.display()
    );
    Ok(())
}
