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
    /// A JSON file parses but a key has the wrong type or is missing (`key` is the dotted path
    /// serde reached, e.g. `vision_config.hidden_size`).
    #[error("invalid JSON in {path}: `{key}`: {source}")]
    JsonKey {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is out of range, e.g.
    /// `vicuna/config.json: num_attention_heads = 0: must be at least 1`. `file` is the file
    /// the value came from (`None` for configs built in code); `key` may be dotted.
    #[error("{}{key} = {value}: {expected}", file_prefix(.file))]
    BadValue {
        file: Option<PathBuf>,
        key: String,
        value: String,
        expected: String,
    },
    /// A Hugging Face hub lookup failed.
    #[error("hub: {0}")]
    Hub(String),
    /// Invalid argument given to an API.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

impl Error {
    /// A [`Error::BadValue`] without a file.
    pub fn bad_value(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::BadValue {
            file: None,
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Names the file a [`Error::BadValue`] came from (other errors are returned unchanged, and
    /// a file already named is kept).
    pub fn in_file(self, path: impl AsRef<std::path::Path>) -> Self {
        match self {
            Error::BadValue {
                file: None,
                key,
                value,
                expected,
            } => Error::BadValue {
                file: Some(path.as_ref().to_path_buf()),
                key,
                value,
                expected,
            },
            e => e,
        }
    }

    /// Prefixes the key of a [`Error::BadValue`] (`vision_config.` + `hidden_size`).
    pub fn in_section(self, prefix: &str) -> Self {
        match self {
            Error::BadValue {
                file,
                key,
                value,
                expected,
            } => Error::BadValue {
                file,
                key: format!("{prefix}{key}"),
                value,
                expected,
            },
            e => e,
        }
    }
}

/// Crate result type.
pub type Result<T> = std::result::Result<T, Error>;
