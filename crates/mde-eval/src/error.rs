//! The one error type of mde-eval: every failure names what failed (the file and line, the
//! question or item, the batch) and keeps its source.

use std::path::PathBuf;

use mde_core::model::ModelError;
use mde_core::paths::PathError;
use mde_core::CoreError;

/// Errors of loading benchmarks, running models on them, writing the official files and
/// scoring.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A text file is not UTF-8.
    #[error("{path}: not valid UTF-8 text ({source})")]
    Utf8 {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A line (row) of a file is not what the format expects.
    #[error("{path}:{line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A file as a whole is not what the format expects (missing columns, no rows ...).
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// One question of a benchmark file (A-OKVQA) is invalid.
    #[error("question {question_id}: {msg}")]
    Question { question_id: String, msg: String },
    /// An evaluation item is invalid.
    #[error("item {id}: {msg}")]
    Item { id: String, msg: String },
    /// An item's image could not be loaded.
    #[error("item {id}: image {what}: {msg}")]
    Image {
        id: String,
        what: String,
        msg: String,
    },
    /// The model failed on a batch.
    #[error("batch starting at item {first_id}: {source}")]
    Model {
        first_id: String,
        #[source]
        source: ModelError,
    },
    /// Writing an official prediction file failed.
    #[error("{path}: {msg}")]
    Write { path: PathBuf, msg: String },
    /// Loading a benchmark's items failed.
    #[error("{path}: {msg}")]
    Load { path: PathBuf, msg: String },
    /// An invalid setting of a run.
    #[error("{0}")]
    Config(String),
    /// Inputs that cannot be scored together (e.g. predictions of another benchmark).
    #[error("{0}")]
    Invalid(String),
    /// A path left its root.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The prediction store (JSONL) failed.
    #[error(transparent)]
    Store(#[from] CoreError),
}

/// Result alias of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Reads and parses a JSON file, naming it in the error (`Io` or `Json`).
pub(crate) fn read_json_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Io {
        path: path.into(),
        source: e,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| EvalError::Json {
        path: path.into(),
        source: e,
    })
}
