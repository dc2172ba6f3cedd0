//! Error type of the training crate.
use std::path::PathBuf;

/// Errors of training utilities. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("invalid training input: {0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error(transparent)]
    Model(#[from] minigpt4::error::Error),
    #[error(transparent)]
    Tokenizer(#[from] minigpt4::tokenizer::TokenizerError),
}

impl TrainError {
    /// A content error about a file.
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TrainError::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
