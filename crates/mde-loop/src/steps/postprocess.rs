//! Step 7, postprocess: the teacher's replies are parsed, validated and filtered (mde-gen's
//! `[postprocess]`) into the training files of the round, in query order. `mde postprocess`
//! and the loop's postprocess step are this function.

use std::collections::BTreeMap;
use std::path::Path;

use mde_core::io::{write_json, write_jsonl};
use mde_core::records::GenQuery;
use mde_gen::postprocess::{postprocess_file, to_llava, to_v1, to_v2};
use mde_gen::{PostprocessConfig, PostprocessOutput};
use serde::{Deserialize, Serialize};

use crate::layout::PostprocessFiles;
use crate::{LoopError, Result};

/// What the loop keeps of a finished postprocess step (in its `done.json`, for the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kept: usize,
    pub dropped: usize,
    pub accepted_per_type: BTreeMap<String, usize>,
    pub flags: BTreeMap<String, usize>,
}

impl Record {
    pub fn of(out: &PostprocessOutput) -> Self {
        let mut per_type = BTreeMap::new();
        for it in &out.items {
            *per_type.entry(it.question_type.clone()).or_insert(0) += 1;
        }
        Self {
            kept: out.stats.kept,
            dropped: out.stats.dropped,
            accepted_per_type: per_type,
            flags: out.stats.validation.flags.clone(),
        }
    }
}

/// Reads `replies` (JSONL of `TeacherReplyRecord`: the first complete line per query id; later
/// duplicates and a torn last line are reported in the summary's `input`), keeps what passes,
/// and writes every file of [`PostprocessFiles`].
pub fn run(
    cfg: &PostprocessConfig,
    replies: &Path,
    queries: &[GenQuery],
    out: &PostprocessFiles,
) -> Result<PostprocessOutput> {
    let post = postprocess_file(replies, queries, cfg)
        .map_err(|e| LoopError::Postprocess(format!("{}: {e}", replies.display())))?;
    if !post.stats.input.is_clean() {
        tracing::warn!("{}", post.stats.input.summary());
    }
    super::create_dir(out.dir())?;
    let v1: Vec<_> = post.items.iter().map(to_v1).collect();
    let v2: Vec<_> = post.items.iter().map(to_v2).collect();
    let llava: Vec<_> = post.items.iter().map(to_llava).collect();
    write_json(out.v1(), &v1)?;
    write_json(out.v2(), &v2)?;
    write_json(out.llava(), &llava)?;
    write_jsonl(out.items(), &post.items)?;
    write_jsonl(out.dropped(), &post.dropped)?;
    write_json(out.summary(), &post.stats)?;
    Ok(post)
}
