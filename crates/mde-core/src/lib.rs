//! Shared records and I/O for mde.
//!
//! Every crate of the workspace exchanges data through the types defined here, so that a lab can
//! feed any stage with files produced by another (or by its own tools):
//!
//! - [`io`]: atomic file writes, JSON helpers with path-naming errors, and an append-only JSONL
//!   store that resumes (skips finished keys, tolerates a torn last line).
//! - [`records`]: benchmark items, predictions, bad cases, type weights, generation queries,
//!   generated Q&A records (GPTVQA v1/v2), COCO-style annotations.
//! - [`teacher`]: the teacher-LLM trait that the generation crate implements and the sampler's
//!   classifier consumes.
//!
//! ```
//! use mde_core::io::JsonlStore;
//! use mde_core::records::Prediction;
//! let dir = tempfile::tempdir().unwrap();
//! let mut store: JsonlStore<Prediction> = JsonlStore::open(dir.path().join("p.jsonl"), |p: &Prediction| p.id.clone()).unwrap();
//! if !store.contains("q1") {
//!     store.append(&Prediction { id: "q1".into(), text: "A".into(), ..Default::default() }).unwrap();
//! }
//! assert_eq!(store.len(), 1);
//! ```

pub mod error;
pub mod input_report;
pub mod io;
pub mod model;
pub mod paths;
pub mod records;
pub mod taxonomy;
pub mod teacher;

pub use error::{CoreError, Result};
