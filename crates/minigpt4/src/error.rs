//! Error type of the crate.

use std::path::PathBuf;

/// Errors raised while loading or running MiniGPT-4.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch inside the graph, dtype, device, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a field.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A weight file lacks a tensor the model needs.
    #[error("{file}: missing tensor `{key}`")]
    MissingKey { file: String, key: String },
    /// Pieces that must fit together do not (e.g. projector vs LLM hidden size).
    #[error("{0}")]
    Mismatch(String),
    /// A configuration value is missing or invalid.
    #[error("config error: {0}")]
    Config(String),
    /// A Hugging Face hub lookup failed.
    #[error("hub: {0}")]
    Hub(String),
    /// Invalid argument given to an API.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Crate result type.
pub type Result<T> = std::result::Result<T, Error>;
