//! Records of the world's data sets and writers for the official benchmark formats.
//!
//! - A-OKVQA (`aokvqa_v1p0_val.json`): the v1p0 schema, plus two extra fields the official tools
//!   ignore: `question_type` (taxonomy id) and `image_path` (relative to the COCO root). A side
//!   file `question_types.json` maps question_id -> type as well.
//! - MMBench (`MMBench_WORLD.tsv`): VLMEvalKit's dataset layout with circular copies at
//!   `index + k * 1_000_000` (labels rotated right by k, as `vlmeval/tools.py::CIRCULAR` does);
//!   `category` is the question type, `image` is base64 PNG for main rows and the main index for copies;
//!   `comment` names the image file (`val2017/...`) whose ground truth the row is about.
//! - Base VQA records ([`VqaRecord`]): a superset of the GPTVQA v1 record, so a reader of
//!   generated rounds reads them too.
use serde::{Deserialize, Serialize};

/// One A-OKVQA-format question (v1p0 fields first, then the world's extras).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AokvqaItem {
    pub split: String,
    pub image_id: u64,
    pub question_id: String,
    pub question: String,
    pub choices: Vec<String>,
    pub correct_choice_idx: usize,
    /// Ten annotator answers (all agree in the synthetic world).
    pub direct_answers: Vec<String>,
    pub difficult_direct_answer: bool,
    pub rationales: Vec<String>,
    /// Extra: the question's type id.
    #[serde(default)]
    pub question_type: String,
    /// Extra: image file relative to the COCO root (`val2017/000003000001.jpg`).
    #[serde(default)]
    pub image_path: String,
}

/// One MMBench TSV row (main question or circular copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmbenchRow {
    pub index: u64,
    pub question: String,
    pub hint: String,
    pub options: [String; 4],
    pub answer: char,
    pub category: String,
    /// Base64 PNG (main rows) or the main row's index (copies).
    pub image: String,
    pub source: String,
    pub l2_category: String,
    pub comment: String,
    pub split: String,
}

/// MMBench TSV columns, in order.
pub const MMBENCH_COLUMNS: [&str; 14] = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
];

/// Offset of circular copy k: index + k * CIRCULAR_OFFSET.
pub const CIRCULAR_OFFSET: u64 = 1_000_000;

/// A base-training VQA record. Its fields are a superset of `mde_core::records::GptVqaV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaRecord {
    pub id: String,
    pub image_id: u64,
    /// Image file relative to the COCO root, e.g. `train2017/000001000001.jpg`.
    pub image: String,
    pub question_type: String,
    pub question: String,
    pub choices: Vec<String>,
    pub correct_choice_idx: usize,
    pub answer: String,
    pub rationales: Vec<String>,
    /// The Q&A in the teacher reply format (what GPTVQA v1 keeps as the raw LLM text).
    pub raw_instructions: String,
}

/// A caption-training record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    pub image_id: u64,
    pub image: String,
    pub caption: String,
}

/// Circular copy `k` of 4 options: the option shown under label p is original option (p + k) % n,
/// and the answer label is the original answer's label rotated right by k.
pub fn rotate(options: &[String; 4], answer: usize, k: usize) -> ([String; 4], usize) {
    let n = 4;
    let opts = std::array::from_fn(|p| options[(p + k) % n].clone());
    (opts, (answer + n - k % n) % n)
}

/// Builds the main row and its three circular copies.
pub fn mmbench_group(main: &MmbenchRow) -> Vec<MmbenchRow> {
    let ans = (main.answer as u8 - b'A') as usize;
    let mut rows = vec![main.clone()];
    for k in 1..4 {
        let (options, a) = rotate(&main.options, ans, k);
        rows.push(MmbenchRow {
            index: main.index + k as u64 * CIRCULAR_OFFSET,
            options,
            answer: (b'A' + a as u8) as char,
            image: main.index.to_string(),
            ..main.clone()
        });
    }
    rows
}

/// One TSV field the way pandas `to_csv(sep='\t')` writes it (quoted only when needed).
fn tsv_field(s: &str) -> String {
    if s.contains(['\t', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Renders main rows and then every copy (copies 1, then 2, then 3) as a TSV document.
pub fn mmbench_tsv(mains: &[MmbenchRow]) -> String {
    let mut out = MMBENCH_COLUMNS.join("\t");
    out.push('\n');
    let groups: Vec<Vec<MmbenchRow>> = mains.iter().map(mmbench_group).collect();
    for k in 0..4 {
        for g in &groups {
            let r = &g[k];
            let fields = [
                r.index.to_string(),
                r.question.clone(),
                r.hint.clone(),
                r.options[0].clone(),
                r.options[1].clone(),
                r.options[2].clone(),
                r.options[3].clone(),
                r.answer.to_string(),
                r.category.clone(),
                r.image.clone(),
                r.source.clone(),
                r.l2_category.clone(),
                r.comment.clone(),
                r.split.clone(),
            ];
            out.push_str(
                &fields
                    .iter()
                    .map(|f| tsv_field(f))
                    .collect::<Vec<_>>()
                    .join("\t"),
            );
            out.push('\n');
        }
    }
    out
}

/// Teacher reply text (REFERENCE §4) for a question: the format GPTVQA's raw_instructions keep.
pub fn reply_text(
    question: &str,
    choices: &[String],
    answer_idx: usize,
    explanation: &str,
) -> String {
    let letters = mde_core::records::CHOICE_LETTERS;
    let ch: Vec<String> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {}", letters[i], c))
        .collect();
    format!(
        "Question: {}\nChoices: {}\nAnswer: The answer is ({}): {}.\nExplanations: {}",
        question,
        ch.join(" "),
        letters[answer_idx],
        choices[answer_idx],
        explanation
    )
}
