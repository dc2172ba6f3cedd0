//! Errors of the sampler crate. Each variant says which input was wrong and why.
use std::path::PathBuf;

/// Errors from building pools, indexes, queries or classifications.
#[derive(Debug, thiserror::Error)]
pub enum AbsError {
    /// File-level problems (I/O, JSON, JSONL), already naming the file.
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    /// A file whose content is not what was expected.
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// Tensor errors from the image index.
    #[error("image index: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Inconsistent inputs (unknown types, mismatched dimensions, bad options).
    #[error("{0}")]
    Input(String),
    /// The teacher failed in a way that retrying cannot fix.
    #[error("teacher {teacher}: {message}")]
    Teacher { teacher: String, message: String },
    /// An image encoder failed.
    #[error("image encoder: {0}")]
    Encoder(String),
}

impl AbsError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        AbsError::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, AbsError>;
