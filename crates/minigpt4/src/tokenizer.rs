//! LLaMA/Vicuna tokenizer wrapper (Hugging Face `tokenizer.json` through the `tokenizers` crate)
//! with the special ids MiniGPT-4 needs.
//!
//! * bos/eos/unk come from the tokenizer (its `tokenizer_config.json` / `special_tokens_map.json`
//!   names, resolved through the vocabulary), never from the model's `config.json`: Vicuna v0's
//!   config says bos 0 / eos 1 while the tokenizer uses 1 / 2.
//! * The pad id is MiniGPT-4's `"$$"` (set in code there), falling back to eos when the
//!   vocabulary has no `$$` piece; it can be overridden.
//! * The stop sequences for `"###"` are computed from the vocabulary: every way of writing
//!   `###` with vocabulary pieces (LLaMA: `[835]`, `[2277, 29937]`, ...).
//!
//! ```no_run
//! use minigpt4::tokenizer::LlamaTokenizer;
//! let tok = LlamaTokenizer::from_dir("vicuna").unwrap();
//! let ids = tok.encode("Hello", true).unwrap();
//! assert_eq!(ids[0], tok.bos_id());
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Errors of the tokenizer wrapper.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.json` is missing.
    #[error(
        "no tokenizer.json at {0}: MiniGPT-4 needs a Hugging Face fast tokenizer file. Older Vicuna \
         folders ship only the SentencePiece `tokenizer.model`; convert it once, e.g. in Python \
         `transformers.AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)`"
    )]
    Missing(PathBuf),
    /// The tokenizer file could not be parsed.
    #[error("cannot load tokenizer {path}: {msg}")]
    Load { path: PathBuf, msg: String },
    /// A special token is absent from the vocabulary.
    #[error("tokenizer {path}: special token {token:?} ({role}) is not in the vocabulary")]
    MissingSpecial {
        path: PathBuf,
        role: &'static str,
        token: String,
    },
    /// Encoding/decoding failed.
    #[error("tokenizer error: {0}")]
    Codec(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// The stop text MiniGPT-4's Vicuna v0 conversation uses between turns.
pub const STOP_TEXT: &str = "###";

/// A Vicuna/LLaMA tokenizer with MiniGPT-4's special ids.
#[derive(Clone)]
pub struct LlamaTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos_id: u32,
    eos_id: u32,
    unk_id: Option<u32>,
    pad_id: u32,
}

impl std::fmt::Debug for LlamaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Reads a special token name (plain string or `{"content": ...}`) from a JSON object.
fn special_name(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl LlamaTokenizer {
    /// Loads `dir/tokenizer.json` (plus special-token names from `tokenizer_config.json` or
    /// `special_tokens_map.json` when present).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` file; sibling config files name the special tokens.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(TokenizerError::Missing(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        // Special token names: the HF files next to tokenizer.json, else LLaMA's defaults.
        let mut names: HashMap<&'static str, String> = HashMap::new();
        if let Some(dir) = path.parent() {
            for file in ["special_tokens_map.json", "tokenizer_config.json"] {
                let Ok(bytes) = std::fs::read(dir.join(file)) else {
                    continue;
                };
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| TokenizerError::Load {
                        path: dir.join(file),
                        msg: e.to_string(),
                    })?;
                for (role, key) in [
                    ("bos", "bos_token"),
                    ("eos", "eos_token"),
                    ("unk", "unk_token"),
                ] {
                    if let Some(n) = special_name(&v, key) {
                        names.entry(role).or_insert(n);
                    }
                }
            }
        }
        let lookup = |role: &'static str, default: &str| -> Result<u32> {
            let name = names
                .get(role)
                .cloned()
                .unwrap_or_else(|| default.to_string());
            inner
                .token_to_id(&name)
                .ok_or_else(|| TokenizerError::MissingSpecial {
                    path: path.clone(),
                    role,
                    token: name,
                })
        };
        let bos_id = lookup("bos", "<s>")?;
        let eos_id = lookup("eos", "</s>")?;
        let unk_id = lookup("unk", "<unk>").ok();
        let pad_id = inner.token_to_id("$$").unwrap_or(eos_id);
        Ok(Self {
            inner,
            path,
            bos_id,
            eos_id,
            unk_id,
            pad_id,
        })
    }

    /// Overrides the pad id (MiniGPT-4 default: id of `$$`, else eos).
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Beginning-of-sequence id (`<s>`).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// End-of-sequence id (`</s>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Unknown-token id (`<unk>`), if the vocabulary has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// Padding id used for training batches and batched generation.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a vocabulary piece.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Piece of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of `text`; `add_special` adds `<s>` through the post-processor, like HF
    /// `tokenizer(text, add_special_tokens=...)`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Codec(format!("encoding {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token pieces of `text` (for debugging and fixture checks).
    pub fn encode_pieces(&self, text: &str, add_special: bool) -> Result<Vec<String>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Codec(format!("encoding {text:?}: {e}")))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Text of `ids`; `skip_special` drops `<s>`, `</s>`, `<unk>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Codec(format!("decoding {} ids: {e}", ids.len())))
    }

    /// Every token-id sequence whose pieces concatenate exactly to `text` (sorted, shortest
    /// first). For LLaMA and `"###"` this includes MiniGPT-4's `[835]` and `[2277, 29937]`.
    /// Stopping on any of them is equivalent at the text level, since answers are cut at the
    /// first `###` anyway.
    pub fn tokenizations_of(&self, text: &str) -> Vec<Vec<u32>> {
        fn rec(
            tok: &tokenizers::Tokenizer,
            rest: &str,
            prefix: &mut Vec<u32>,
            out: &mut BTreeSet<(usize, Vec<u32>)>,
        ) {
            if rest.is_empty() {
                if !prefix.is_empty() {
                    out.insert((prefix.len(), prefix.clone()));
                }
                return;
            }
            for (end, _) in rest.char_indices().skip(1).chain([(rest.len(), ' ')]) {
                if let Some(id) = tok.token_to_id(&rest[..end]) {
                    prefix.push(id);
                    rec(tok, &rest[end..], prefix, out);
                    prefix.pop();
                }
            }
        }
        let mut out = BTreeSet::new();
        rec(&self.inner, text, &mut Vec::new(), &mut out);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The stop sequences for `"###"` (see [`Self::tokenizations_of`]).
    pub fn stop_sequences(&self) -> Vec<Vec<u32>> {
        self.tokenizations_of(STOP_TEXT)
    }

    /// Ids of pieces that merely *contain* `###` inside a longer piece (e.g. `.###`,
    /// `▁###Human:`): token-level stop lists cannot see them, so a generator that wants to stop
    /// on them must check the decoded text.
    pub fn ids_containing_stop_text(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .get_vocab(true)
            .into_iter()
            .filter(|(piece, _)| piece.contains(STOP_TEXT) && piece != STOP_TEXT)
            .map(|(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }
}
