//! The embedded default of mde: a seeded synthetic world of shape images with exact COCO-style
//! annotations, benchmark sets in the official formats, base training data, and a grounded
//! offline teacher, so the whole data-engine loop runs on a laptop without network or weights.
//!
//! - [`scene`]: the ground truth of an image (background, quality, non-overlapping objects).
//! - [`render`]: deterministic anti-aliased rasteriser and PNG/JPEG encoders.
//! - [`captions`]: five captions per image from the ground truth.
//! - [`questions`]: six learnable question types of the v1 taxonomy and their generators.
//! - [`bench`]: A-OKVQA JSON / MMBench TSV (circular) / base VQA records.
//! - [`world`]: [`World::generate`] (idempotent) and [`World::load`].
//! - [`teacher`]: [`WorldTeacher`], an `mde_core::teacher::Teacher` answering from ground truth.
//!
//! ```
//! use mde_world::{World, WorldConfig, WorldTeacher, TeacherOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let world = World::generate(&WorldConfig::tiny(7), dir.path()).unwrap();
//! let pool = world.pool_image_ids();
//! assert!(!pool.is_empty());
//! let teacher = WorldTeacher::new(&world, TeacherOptions::default());
//! let query = mde_core::records::GenQuery {
//!     id: "q0".into(),
//!     question_type: "image_quality".into(),
//!     image_id: pool[0],
//!     ..Default::default()
//! };
//! let (reply, _) = teacher.generate(&query).unwrap();
//! assert!(reply.starts_with("Question: "));
//! ```

pub mod bench;
pub mod captions;
pub mod config;
pub mod questions;
pub mod render;
pub mod scene;
pub mod teacher;
pub mod world;

pub use bench::{AokvqaItem, CaptionRecord, MmbenchRow, VqaRecord};
pub use config::{ImageFormat, WorldConfig};
pub use questions::{QType, Question};
pub use scene::Scene;
pub use teacher::{InjectedError, TeacherOptions, WorldTeacher};
pub use world::{BaseVariant, Manifest, World};

use std::path::PathBuf;

/// Errors of world generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error("invalid world config: {0}")]
    Config(String),
    #[error("{path}: image encoding failed: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Mismatch { path: PathBuf, msg: String },
}
