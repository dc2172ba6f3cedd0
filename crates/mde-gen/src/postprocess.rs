//! The post-processing pipeline: replies + queries -> validated, filtered Q&A items, with a
//! drop-reason histogram and validation statistics; exports to GPTVQA v1/v2 and LLaVA JSON.
use crate::parse::{
    apply_filters, drop_word, parse_sections, rationale_body, CleanParsed, DropReason,
};
use crate::validate::{Flag, FlagHit, ValidationConfig, ValidationStats, Validator};
use mde_core::input_report::{InputIssues, Kept};
use mde_core::records::{GenQuery, GptVqaV1, GptVqaV2, TeacherReplyRecord, CHOICE_LETTERS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What validation does with flagged replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMode {
    /// No validation.
    Off,
    /// Keep flagged items, record their flags (default: output equals the released rules).
    #[default]
    Flag,
    /// Drop items carrying any flag in `drop_on`.
    Drop,
}

/// Post-processing settings (`[postprocess]` in the teacher config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostprocessConfig {
    pub validation: ValidationMode,
    /// Flags that drop an item in `Drop` mode.
    pub drop_on: Vec<Flag>,
    #[serde(flatten)]
    pub validator: ValidationConfig,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self {
            validation: ValidationMode::Flag,
            drop_on: vec![
                Flag::UnmatchedBox,
                Flag::Illusion,
                Flag::TypeMismatch,
                Flag::AnswerOutOfRange,
                Flag::DuplicateChoices,
                Flag::AnswerInQuestion,
            ],
            validator: ValidationConfig::default(),
        }
    }
}

/// One accepted Q&A with its provenance and validation flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenItem {
    pub query_id: String,
    pub image_id: u64,
    pub image_path: Option<String>,
    pub question_type: String,
    pub raw: String,
    pub question: String,
    pub choices: Vec<String>,
    pub answer_idx: usize,
    /// With its header, as released.
    pub rationale: String,
    pub flags: Vec<FlagHit>,
}

/// A reply that did not become an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedReply {
    pub query_id: String,
    pub reason: String,
    pub flags: Vec<FlagHit>,
}

/// Counts of a post-processing pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostprocessStats {
    /// Distinct replies processed (one per query id; duplicates are in `input`).
    pub replies: usize,
    pub kept: usize,
    pub dropped: usize,
    /// Drop reason key -> count (see `DropReason::key`).
    pub drop_reasons: BTreeMap<String, usize>,
    /// Kept items that carry at least one flag.
    pub kept_flagged: usize,
    /// Validation over all replies (also those dropped by the released rules).
    pub validation: ValidationStats,
    /// What was tolerated in the replies input: duplicate query ids (the first reply was kept),
    /// a torn last line (filled by the reader, see `mde_core::input_report`).
    #[serde(default)]
    pub input: InputIssues,
}

/// Output of [`postprocess`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostprocessOutput {
    pub items: Vec<GenItem>,
    pub dropped: Vec<DroppedReply>,
    pub stats: PostprocessStats,
}

/// Runs validation and the released rules on every reply. Replies of unknown queries are dropped
/// with reason `unknown_query`. The lexicon is extended with every category of `queries`.
///
/// Exactly one reply per query id is used: the first in `replies` order (for a file, the first
/// complete line, as the resumable store keeps it); every later reply with the same id is left
/// out and reported in `stats.input.duplicate_keys` (positions are 1-based reply numbers).
pub fn postprocess(
    replies: &[TeacherReplyRecord],
    queries: &[GenQuery],
    cfg: &PostprocessConfig,
) -> Result<PostprocessOutput, String> {
    let by_id: HashMap<&str, &GenQuery> = queries.iter().map(|q| (q.id.as_str(), q)).collect();
    let mut cats: Vec<String> = queries
        .iter()
        .flat_map(|q| q.boxes.iter().map(|b| b.category.clone()))
        .collect();
    cats.sort();
    cats.dedup();
    let validator = Validator::new(&cfg.validator, &cats)?;
    let mut out = PostprocessOutput::default();
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (pos, r) in replies.iter().enumerate() {
        if let Some(&kept) = first_of.get(r.query_id.as_str()) {
            out.stats
                .input
                .duplicate(&r.query_id, Kept::First, Some(kept + 1), Some(pos + 1));
            continue;
        }
        first_of.insert(&r.query_id, pos);
        out.stats.replies += 1;
        let Some(q) = by_id.get(r.query_id.as_str()) else {
            out.stats.input.unknown(&r.query_id);
            drop_item(&mut out, &r.query_id, DropReason::UnknownQuery, vec![]);
            continue;
        };
        let sections = parse_sections(&r.text);
        let flags = if cfg.validation == ValidationMode::Off {
            vec![]
        } else {
            let f = validator.validate(&r.text, sections.as_ref().ok(), q);
            out.stats.validation.add(&f);
            f
        };
        let result: Result<CleanParsed, DropReason> = match drop_word(&r.text) {
            Some(w) => Err(DropReason::DropWord(w)),
            None => sections.and_then(apply_filters),
        };
        let parsed = match result {
            Ok(p) => p,
            Err(reason) => {
                drop_item(&mut out, &r.query_id, reason, flags);
                continue;
            }
        };
        if cfg.validation == ValidationMode::Drop {
            if let Some(h) = flags.iter().find(|h| cfg.drop_on.contains(&h.flag)) {
                let reason = DropReason::Validation(h.flag.name().to_string());
                drop_item(&mut out, &r.query_id, reason, flags);
                continue;
            }
        }
        out.stats.kept += 1;
        if !flags.is_empty() {
            out.stats.kept_flagged += 1;
        }
        out.items.push(GenItem {
            query_id: r.query_id.clone(),
            image_id: q.image_id,
            image_path: q.image_path.clone(),
            question_type: q.question_type.clone(),
            raw: r.text.clone(),
            question: parsed.question,
            choices: parsed.choices,
            answer_idx: parsed.answer_idx,
            rationale: parsed.rationale,
            flags,
        });
    }
    Ok(out)
}

/// [`postprocess`] on a replies file (JSONL of [`TeacherReplyRecord`], e.g. `mde generate`'s
/// `replies.jsonl`). One reply per query id is used, the first complete line of the file; later
/// duplicates and a torn last line (no trailing newline and not valid JSON: a writer killed mid-
/// append) are left out and reported in `stats.input` with their line numbers. Any other invalid
/// line is an error naming the file and line.
///
/// Replies are stored in completion order; the kept items follow the order of `queries`
/// instead (replies of unknown queries last), so the output does not depend on the endpoint's
/// timing, its concurrency or a resume.
pub fn postprocess_file(
    replies: &std::path::Path,
    queries: &[GenQuery],
    cfg: &PostprocessConfig,
) -> Result<PostprocessOutput, String> {
    let mut read = mde_core::input_report::read_jsonl_report::<TeacherReplyRecord>(replies)
        .map_err(|e| e.to_string())?;
    read.dedup_first(|r| r.query_id.clone());
    let pos: std::collections::HashMap<&str, usize> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.as_str(), i))
        .collect();
    read.records
        .sort_by_key(|r| pos.get(r.query_id.as_str()).copied().unwrap_or(usize::MAX));
    let mut out = postprocess(&read.records, queries, cfg)?;
    let mut issues = read.issues;
    // After the reader's de-duplication, postprocess only adds unknown query ids.
    issues.merge(std::mem::take(&mut out.stats.input));
    out.stats.input = issues;
    Ok(out)
}

fn drop_item(out: &mut PostprocessOutput, id: &str, reason: DropReason, flags: Vec<FlagHit>) {
    out.stats.dropped += 1;
    *out.stats.drop_reasons.entry(reason.key()).or_default() += 1;
    out.dropped.push(DroppedReply {
        query_id: id.to_string(),
        reason: reason.key(),
        flags,
    });
}

/// GPTVQA v1 record (the released layout).
pub fn to_v1(item: &GenItem) -> GptVqaV1 {
    GptVqaV1 {
        image_id: item.image_id,
        raw_instructions: item.raw.clone(),
        question_type: item.question_type.clone(),
        question: item.question.clone(),
        choices: item.choices.clone(),
        correct_choice_idx: item.answer_idx,
        rationales: vec![item.rationale.clone()],
    }
}

/// SEED dimension number of a question type (taxonomy v2, `mde_core::taxonomy`): its id, name
/// (any case, `_` for spaces), number, or a name with a leading number ("9 Text Understanding");
/// 0 when the type is not a v2 type.
pub fn seed_qtype(question_type: &str) -> u32 {
    let tax = seed_taxonomy();
    if let Some(t) = tax.lookup(question_type) {
        return tax.number_of(&t.id).unwrap_or(0) as u32;
    }
    let lead: String = question_type
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    match lead.parse::<usize>() {
        Ok(n) if tax.by_number(n).is_some() => n as u32,
        _ => 0,
    }
}

fn seed_taxonomy() -> &'static mde_core::taxonomy::Taxonomy {
    static T: std::sync::OnceLock<mde_core::taxonomy::Taxonomy> = std::sync::OnceLock::new();
    T.get_or_init(mde_core::taxonomy::Taxonomy::seed_bench)
}

/// The image reference of an item: its path, else the COCO file name of its id.
pub fn image_name(item: &GenItem) -> String {
    item.image_path
        .clone()
        .unwrap_or_else(|| format!("{:012}.jpg", item.image_id))
}

/// v2 record: `answer` is the rationale text, `short_answer` the correct choice, `choice_answer`
/// its letter, `qtype` the SEED dimension (0 for v1 types).
pub fn to_v2(item: &GenItem) -> GptVqaV2 {
    let short = item
        .choices
        .get(item.answer_idx)
        .cloned()
        .unwrap_or_default();
    GptVqaV2 {
        instruction: item.question.clone(),
        answer: rationale_body(&item.rationale).to_string(),
        short_answer: short,
        options: item.choices.clone(),
        choice_answer: CHOICE_LETTERS
            .get(item.answer_idx)
            .map(|c| c.to_string())
            .unwrap_or_default(),
        image: image_name(item),
        qtype: seed_qtype(&item.question_type),
    }
}

/// LLaVA-1.5 conversation record (multiple-choice style: options as "A. text" lines, the
/// answer is the letter).
pub fn to_llava(item: &GenItem) -> serde_json::Value {
    let mut human = format!("<image>\n{}", item.question);
    for (i, c) in item.choices.iter().enumerate() {
        human.push_str(&format!(
            "\n{}. {}",
            CHOICE_LETTERS.get(i).copied().unwrap_or('?'),
            c
        ));
    }
    human.push_str("\nAnswer with the option's letter from the given choices directly.");
    let answer = CHOICE_LETTERS
        .get(item.answer_idx)
        .map(|c| c.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "id": item.query_id,
        "image": image_name(item),
        "conversations": [
            {"from": "human", "value": human},
            {"from": "gpt", "value": answer},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mde_core::records::ObjectBox;

    fn q(id: &str) -> GenQuery {
        GenQuery {
            id: id.into(),
            question_type: "Instance Location".into(),
            image_id: 7,
            captions: vec!["A cat on a sofa.".into()],
            boxes: vec![ObjectBox {
                category: "cat".into(),
                bbox: [0.1, 0.1, 0.5, 0.5],
            }],
            ..Default::default()
        }
    }

    fn reply(id: &str, text: &str) -> TeacherReplyRecord {
        TeacherReplyRecord {
            query_id: id.into(),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pipeline_counts_and_exports() {
        let good = "Question: Where is the cat [0.100, 0.100, 0.500, 0.500]?\nChoices: (A) On the sofa (B) Under the bed (C) In a box (D) On a car\nAnswer: The answer is (A): On the sofa.\nExplanation: The cat lies on the sofa.";
        let bad_box = good.replace("0.500, 0.500]", "0.900, 0.900]");
        let replies = vec![
            reply("a", good),
            reply("b", "Skip, nothing"),
            reply("c", &bad_box),
            reply("zz", good),
        ];
        let queries = vec![q("a"), q("b"), q("c")];
        let out = postprocess(&replies, &queries, &PostprocessConfig::default()).unwrap();
        assert_eq!(
            (out.stats.replies, out.stats.kept, out.stats.dropped),
            (4, 2, 2)
        );
        assert_eq!(out.stats.drop_reasons["drop_word:Skip"], 1);
        assert_eq!(out.stats.drop_reasons["unknown_query"], 1);
        assert_eq!(out.stats.validation.flags["unmatched_box"], 1);
        assert_eq!(out.stats.kept_flagged, 1);
        let cfg = PostprocessConfig {
            validation: ValidationMode::Drop,
            ..Default::default()
        };
        let out2 = postprocess(&replies, &queries, &cfg).unwrap();
        assert_eq!(out2.stats.kept, 1);
        assert_eq!(out2.stats.drop_reasons["validation:unmatched_box"], 1);
        let it = &out.items[0];
        let v1 = to_v1(it);
        assert_eq!(
            (v1.correct_choice_idx, v1.question.as_str()),
            (0, "Where is the cat?")
        );
        let v2 = to_v2(it);
        assert_eq!(
            (v2.choice_answer.as_str(), v2.qtype, v2.image.as_str()),
            ("A", 4, "000000000007.jpg")
        );
        assert_eq!(v2.answer, "The cat lies on the sofa.");
        let l = to_llava(it);
        assert_eq!(l["conversations"][1]["value"], "A");
    }

    #[test]
    fn qtypes() {
        assert_eq!(seed_qtype("instance_counting"), 0);
        assert_eq!(seed_qtype("instances_counting"), 5);
        assert_eq!(seed_qtype("9 Text Understanding"), 9);
        assert_eq!(seed_qtype("image_scene"), 0);
    }
}
