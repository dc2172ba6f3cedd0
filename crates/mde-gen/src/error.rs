//! Error type of the generation crate.
use std::path::PathBuf;

/// Errors from configuring or running generation. Each variant names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("prompt template: {0}")]
    Template(String),
    #[error("query {id}: {msg}")]
    Query { id: String, msg: String },
    #[error("teacher client: {0}")]
    Client(String),
    #[error("runner: {0}")]
    Runner(String),
}

pub type Result<T> = std::result::Result<T, GenError>;
