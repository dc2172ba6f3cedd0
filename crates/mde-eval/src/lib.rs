//! Benchmarks for mde: loaders for the official files, scorers identical to the official tools,
//! inference runners and bad-case mining.
// Module list is pre-declared so parallel work on separate files compiles.

pub mod aokvqa;
pub mod badcase;
pub mod error;
pub mod matching;
pub mod mmbench;
pub mod mme;
/// Safe resolution of image references (the one path policy of the workspace; see [`mde_core::paths`]).
pub use mde_core::paths;
pub mod report;
pub mod runner;
pub mod seedbench;
pub mod step;
pub mod tsv;
pub mod vqa;

pub use error::{EvalError, Result};
