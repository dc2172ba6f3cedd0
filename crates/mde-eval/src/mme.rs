//! MME (yes/no, 14 subtasks): loaders and two scorers that reproduce the official tools bit for bit.
//!
//! Length: one file per official tool, kept whole so it reads side by side with the Python it
//! reproduces (both MME scorers share its parsing and pairing).
//!
//! - [`score_official_dir`]: the official `eval_tool/calculation.py` (BradyFU, branch
//!   `Evaluation`, zip @ 1c1d69e1). Reads `<task>.txt` result files (`image \t question \t gt \t
//!   response`), parses a response by its first 4 characters, pairs *consecutive* lines, and
//!   reports acc, acc+, score, TP/FN/TN/FP, precision, recall and the number of "other" answers per
//!   task, plus the Perception and Cognition totals and the exact printed text.
//! - [`score_vlmevalkit`]: VLMEvalKit's `ImageYORNDataset.evaluate` + `MME_rating` (exact
//!   matching judge): whole-word Yes/No extraction after `process_punctuation`, groups by
//!   `(category, image_path)`, totals `perception` and `reasoning` in its own summation order.
//!
//! The same responses can score differently under the two tools (SPEC §3.3); both are exposed.
//!
//! Loaders ([`load_mme`]) read the official template (`Your_Results/<task>.txt`), the release
//! folder (`MME_Benchmark_release_version/<task>/...`) or VLMEvalKit's `MME.tsv` into
//! [`BenchItem`]s; [`write_official_results`] writes model answers back in the official layout.
//!
//! ```no_run
//! use mde_eval::mme::score_official_dir;
//! let r = score_official_dir(std::path::Path::new("eval_tool/Your_Results")).unwrap();
//! print!("{}", r.stdout); // identical to calculation.py's output
//! println!("{}", r.perception_total);
//! ```
use crate::error::EvalError;
use crate::paths::resolve_in_root;
use crate::report::{is_py_space, markdown_table, py_float_repr, py_split_whitespace, OrderedMap};
use crate::tsv::{read_tsv, Table};
use mde_core::records::{BenchItem, ImageRef};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Perception subtasks in the official script's order (`eval_type_dict["Perception"]`).
pub const PERCEPTION_TASKS: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
/// Cognition subtasks in the official script's order.
pub const COGNITION_TASKS: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];
/// VLMEvalKit's `MME_rating` summation order for `perception` (differs from the official one).
pub const VLMEVAL_PERCEPTION_ORDER: [&str; 10] = [
    "OCR",
    "artwork",
    "celebrity",
    "color",
    "count",
    "existence",
    "landmark",
    "position",
    "posters",
    "scene",
];
/// VLMEvalKit's `MME_rating` summation order for `reasoning` (the official script's Cognition).
pub const VLMEVAL_REASONING_ORDER: [&str; 4] = [
    "code_reasoning",
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
];

/// All 14 tasks, Perception then Cognition, in the official order.
pub fn all_tasks() -> impl Iterator<Item = &'static str> {
    PERCEPTION_TASKS
        .iter()
        .chain(COGNITION_TASKS.iter())
        .copied()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |e| EvalError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

// ------------------------------------------------------------------------------------------------
// Official calculation.py
// ------------------------------------------------------------------------------------------------

/// Python's `open(path).readlines()` in text mode: universal newlines (`\n`, `\r\n` and a lone
/// `\r` all end a line and become `\n`), the newline kept at the end of each line.
pub fn python_readlines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                cur.push('\n');
                out.push(std::mem::take(&mut cur));
            }
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                cur.push('\n');
                out.push(std::mem::take(&mut cur));
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The official label of a response (`parse_pred_ans` applied to `response.lower()`): the exact
/// strings `yes`/`no`, else `yes` if `"yes"` occurs in the first 4 code points, else `no` if
/// `"no"` does, else `other`. `response` is the raw field (its trailing newline included, as the
/// official script sees it).
pub fn official_parse(response: &str) -> &'static str {
    let p = response.to_lowercase();
    if p == "yes" {
        return "yes";
    }
    if p == "no" {
        return "no";
    }
    let prefix: String = p.chars().take(4).collect();
    if prefix.contains("yes") {
        "yes"
    } else if prefix.contains("no") {
        "no"
    } else {
        "other"
    }
}

/// One line of a result file as the official script parsed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeOfficialItem {
    pub task: String,
    /// 1-based line number in `<task>.txt`.
    pub line: usize,
    pub image: String,
    pub question: String,
    /// Ground truth as written (`Yes`/`No`, any case).
    pub gt: String,
    /// The response field exactly as the script sees it (trailing `\n` included).
    pub response_field: String,
    /// `yes`, `no` or `other`.
    pub parsed: String,
    pub correct: bool,
}

/// Per-task numbers of `calculation.py` (`metric_dict` plus the task score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeTaskScore {
    pub task: String,
    #[serde(rename = "TP")]
    pub tp: u64,
    #[serde(rename = "FN")]
    pub fn_: u64,
    #[serde(rename = "TN")]
    pub tn: u64,
    #[serde(rename = "FP")]
    pub fp: u64,
    pub precision: f64,
    pub recall: f64,
    pub other_num: u64,
    /// Fraction (0..1), as sklearn's `accuracy_score`.
    pub acc: f64,
    /// Fraction of images with both questions right.
    pub acc_plus: f64,
    /// `acc*100 + acc_plus*100` (accumulated from 0 in that order).
    pub score: f64,
}

/// The whole output of `calculation.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeOfficialReport {
    pub perception_total: f64,
    pub cognition_total: f64,
    /// Tasks in the official order (Perception, then Cognition).
    pub tasks: Vec<MmeTaskScore>,
    pub items: Vec<MmeOfficialItem>,
    /// The exact text the script prints.
    pub stdout: String,
    /// sklearn `UndefinedMetricWarning`s, each distinct message once (Python's default filter).
    pub sklearn_warnings: Vec<String>,
}

impl MmeOfficialReport {
    /// Score of one task.
    pub fn task(&self, name: &str) -> Option<&MmeTaskScore> {
        self.tasks.iter().find(|t| t.task == name)
    }

    /// Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("## MME (official calculation.py)\n\n");
        s.push_str(&format!(
            "Perception: **{}**, Cognition: **{}**\n\n",
            py_float_repr(self.perception_total),
            py_float_repr(self.cognition_total)
        ));
        let rows: Vec<Vec<String>> = self
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.task.clone(),
                    py_float_repr(t.score),
                    py_float_repr(t.acc * 100.0),
                    py_float_repr(t.acc_plus * 100.0),
                    t.tp.to_string(),
                    t.fn_.to_string(),
                    t.tn.to_string(),
                    t.fp.to_string(),
                    format!("{:.4}", t.precision),
                    format!("{:.4}", t.recall),
                    t.other_num.to_string(),
                ]
            })
            .collect();
        s.push_str(&markdown_table(
            &[
                "task",
                "score",
                "acc",
                "acc+",
                "TP",
                "FN",
                "TN",
                "FP",
                "precision",
                "recall",
                "other",
            ],
            &rows,
        ));
        if !self.sklearn_warnings.is_empty() {
            s.push_str("\nsklearn warnings:\n");
            for w in &self.sklearn_warnings {
                s.push_str(&format!("- {w}\n"));
            }
        }
        s
    }
}

const PRECISION_WARNING: &str = "UndefinedMetricWarning: Precision is ill-defined and being set to 0.0 due to no predicted samples. Use `zero_division` parameter to control this behavior.";
const RECALL_WARNING: &str = "UndefinedMetricWarning: Recall is ill-defined and being set to 0.0 due to no true samples. Use `zero_division` parameter to control this behavior.";

/// Scores one task from its lines (as [`python_readlines`] returns them). `source` only names
/// the file in errors. Returns the task numbers, the per-line items and sklearn's warnings.
pub fn score_official_task(
    task: &str,
    source: &Path,
    lines: &[String],
) -> Result<(MmeTaskScore, Vec<MmeOfficialItem>, Vec<String>), EvalError> {
    let err = |line: usize, msg: String| EvalError::Line {
        path: source.to_path_buf(),
        line,
        msg,
    };
    if lines.is_empty() {
        return Err(EvalError::File {
            path: source.to_path_buf(),
            msg: "no lines (calculation.py divides by the number of images and fails)".into(),
        });
    }
    let mut items = Vec::with_capacity(lines.len());
    let mut acc_plus_correct = 0u64;
    let mut img_num = 0u64;
    // Pairs are formed by position, whatever the image names (divide_chunks(lines, 2)).
    for (chunk_i, chunk) in lines.chunks(2).enumerate() {
        if chunk.len() != 2 {
            return Err(err(
                chunk_i * 2 + 1,
                "odd number of lines: the last image has a single question (calculation.py asserts 2 per image)".into(),
            ));
        }
        img_num += 1;
        let mut img_correct = 0;
        for (j, line) in chunk.iter().enumerate() {
            let lineno = chunk_i * 2 + j + 1;
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 4 {
                return Err(err(
                    lineno,
                    format!(
                        "expected 4 TAB-separated fields (image, question, ground truth, response), found {}",
                        fields.len()
                    ),
                ));
            }
            let (img, q, gt, resp) = (fields[0], fields[1], fields[2], fields[3]);
            let gt_l = gt.to_lowercase();
            if gt_l != "yes" && gt_l != "no" {
                return Err(err(
                    lineno,
                    format!("ground truth must be yes or no (any case), found {gt:?}"),
                ));
            }
            let parsed = official_parse(resp);
            let correct = gt_l == parsed;
            if correct {
                img_correct += 1;
            }
            items.push(MmeOfficialItem {
                task: task.to_string(),
                line: lineno,
                image: img.to_string(),
                question: q.to_string(),
                gt: gt.to_string(),
                response_field: resp.to_string(),
                parsed: parsed.to_string(),
                correct,
            });
        }
        if img_correct == 2 {
            acc_plus_correct += 1;
        }
    }
    // compute_metric: label map yes=1, no=0, other=-1; confusion matrix on non-other items.
    let n = items.len() as u64;
    let n_correct = items.iter().filter(|i| i.correct).count() as u64;
    let (mut tp, mut fn_, mut tn, mut fp, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for it in &items {
        let gt_yes = it.gt.to_lowercase() == "yes";
        match (gt_yes, it.parsed.as_str()) {
            (_, "other") => other += 1,
            (true, "yes") => tp += 1,
            (true, _) => fn_ += 1,
            (false, "yes") => fp += 1,
            (false, _) => tn += 1,
        }
    }
    let mut warnings = Vec::new();
    let precision = if tp + fp == 0 {
        warnings.push(PRECISION_WARNING.to_string());
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if tp + fn_ == 0 {
        warnings.push(RECALL_WARNING.to_string());
        0.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    // accuracy_score = mean of a boolean array = correct / n (exact sum, one division).
    let acc = n_correct as f64 / n as f64;
    let acc_plus = acc_plus_correct as f64 / img_num as f64;
    // task_score = 0; task_score += v*100 for acc then acc_plus (metric_dict order).
    let score = 0.0 + acc * 100.0 + acc_plus * 100.0;
    Ok((
        MmeTaskScore {
            task: task.to_string(),
            tp,
            fn_,
            tn,
            fp,
            precision,
            recall,
            other_num: other,
            acc,
            acc_plus,
            score,
        },
        items,
        warnings,
    ))
}

/// Runs `calculation.py --results_dir DIR`: all 14 `<task>.txt` files are required.
pub fn score_official_dir(results_dir: &Path) -> Result<MmeOfficialReport, EvalError> {
    let mut texts = Vec::new();
    for task in all_tasks() {
        let path = results_dir.join(format!("{task}.txt"));
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let text = String::from_utf8(bytes).map_err(|e| EvalError::File {
            path: path.clone(),
            msg: format!("not valid UTF-8: {e}"),
        })?;
        texts.push((task.to_string(), path, text));
    }
    score_official_texts(&texts)
}

/// Like [`score_official_dir`] on in-memory files `(task, path for messages, text)`. Every one of
/// the 14 tasks must be present.
pub fn score_official_texts(
    files: &[(String, PathBuf, String)],
) -> Result<MmeOfficialReport, EvalError> {
    let mut tasks = Vec::new();
    let mut items = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut stdout = String::new();
    let mut totals = [0.0f64; 2];
    for (ti, (eval_type, list)) in [
        ("Perception", &PERCEPTION_TASKS[..]),
        ("Cognition", &COGNITION_TASKS[..]),
    ]
    .into_iter()
    .enumerate()
    {
        stdout.push_str(&format!("=========== {eval_type} ===========\n"));
        let mut scores = 0.0f64;
        let mut lines_out = String::new();
        for task in list {
            let (_, path, text) =
                files
                    .iter()
                    .find(|(t, _, _)| t == task)
                    .ok_or_else(|| EvalError::File {
                        path: PathBuf::from(format!("{task}.txt")),
                        msg: format!(
                        "missing result file for task {task} (calculation.py needs all 14 tasks)"
                    ),
                    })?;
            let lines = python_readlines(text);
            let (score, its, ws) = score_official_task(task, path, &lines)?;
            scores += score.score;
            lines_out.push_str(&format!(
                "\t {task}  score: {}\n",
                py_float_repr(score.score)
            ));
            for w in ws {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            tasks.push(score);
            items.extend(its);
        }
        // print("total score:", scores, "\n") then the task lines, then print("\n").
        stdout.push_str(&format!("total score: {} \n\n", py_float_repr(scores)));
        stdout.push_str(&lines_out);
        stdout.push_str("\n\n");
        totals[ti] = scores;
    }
    Ok(MmeOfficialReport {
        perception_total: totals[0],
        cognition_total: totals[1],
        tasks,
        items,
        stdout,
        sklearn_warnings: warnings,
    })
}

// ------------------------------------------------------------------------------------------------
// VLMEvalKit variant
// ------------------------------------------------------------------------------------------------

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Python `re`'s `\d` on str patterns: Unicode decimal digits (category Nd).
fn is_py_digit(c: char) -> bool {
    if c.is_ascii_digit() {
        return true;
    }
    if c.is_ascii() {
        return false;
    }
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"^\d$").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// VLMEvalKit's `process_punctuation` (smp/misc.py @ e8e78f05), including its quirks: a
/// character is deleted when it is "spaced" in the *original* text (or when any digit,comma,digit
/// occurs), otherwise replaced by a space; then periods not adjacent to a digit are deleted, at
/// most 32 of them (`re.UNICODE == 32` is passed as the `count` argument of `sub`).
pub fn process_punctuation(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let comma_digit = chars
        .windows(3)
        .any(|w| w[1] == ',' && is_py_digit(w[0]) && is_py_digit(w[2]));
    let mut out = text.to_string();
    for p in PUNCT {
        let spaced =
            comma_digit || text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = if spaced {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    // periodStrip = (?<!\d)\.(?!\d), sub('', out, count=32): matches are judged on the string
    // before any removal.
    let oc: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in oc.iter().enumerate() {
        if c == '.'
            && removed < 32
            && !(i > 0 && is_py_digit(oc[i - 1]))
            && !(i + 1 < oc.len() && is_py_digit(oc[i + 1]))
        {
            removed += 1;
            continue;
        }
        res.push(c);
    }
    res
}

/// VLMEvalKit's `YOrN_Extraction`: `Yes` / `No` when exactly one of the whole words `yes` / `no`
/// occurs after lowercasing and [`process_punctuation`], else `Unknown`.
pub fn yorn_extraction(prediction: &str) -> &'static str {
    let s = prediction.to_lowercase();
    let p = process_punctuation(&s);
    let words: Vec<&str> = py_split_whitespace(&p).collect();
    let yes = words.contains(&"yes");
    let no = words.contains(&"no");
    match (yes, no) {
        (true, false) => "Yes",
        (false, true) => "No",
        _ => "Unknown",
    }
}

/// One prediction row as VLMEvalKit scored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeVlmItem {
    /// Python `str()` of the `index` cell.
    pub index: String,
    pub category: String,
    pub image_path: String,
    pub answer: String,
    /// `str(prediction)` after pandas loading (NaN becomes `"nan"`).
    pub prediction_as_loaded: String,
    /// `Yes`, `No` or `Unknown`.
    pub extracted: String,
    pub score: bool,
}

/// Output of VLMEvalKit's MME evaluation (`_score.csv`: one row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeVlmReport {
    /// Columns in order: `perception`, `reasoning`, then categories in order of first appearance.
    pub score_columns: Vec<String>,
    /// The values of those columns (acc + acc+, x100 per category).
    pub score: OrderedMap<f64>,
    pub items: Vec<MmeVlmItem>,
}

impl MmeVlmReport {
    /// Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("## MME (VLMEvalKit, exact matching)\n\n");
        let rows: Vec<Vec<String>> = self
            .score
            .iter()
            .map(|(k, v)| vec![k.to_string(), py_float_repr(*v)])
            .collect();
        s.push_str(&markdown_table(&["column", "score"], &rows));
        let unknown = self
            .items
            .iter()
            .filter(|i| i.extracted == "Unknown")
            .count();
        s.push_str(&format!(
            "\n{unknown} of {} predictions extracted as Unknown.\n",
            self.items.len()
        ));
        s
    }
}

fn need_col(t: &Table, name: &str) -> Result<usize, EvalError> {
    t.col(name).ok_or_else(|| EvalError::File {
        path: t.source.clone(),
        msg: format!("missing column {name:?} (found {:?})", t.columns),
    })
}

/// VLMEvalKit's MME evaluation of a prediction file (`.tsv`, columns `index, category,
/// image_path, answer, prediction`, file order).
pub fn score_vlmevalkit(predictions_tsv: &Path) -> Result<MmeVlmReport, EvalError> {
    let t = read_tsv(predictions_tsv)?;
    score_vlmevalkit_table(&t)
}

/// [`score_vlmevalkit`] on an already parsed table.
pub fn score_vlmevalkit_table(t: &Table) -> Result<MmeVlmReport, EvalError> {
    let (ci, cc, cp, ca, cr) = (
        need_col(t, "index")?,
        need_col(t, "category")?,
        need_col(t, "image_path")?,
        need_col(t, "answer")?,
        need_col(t, "prediction")?,
    );
    // ans_map = {index: YOrN_Extraction(prediction)}: a duplicated index takes the extraction of
    // its last row, for every row with that index.
    let mut ans_map: HashMap<String, &'static str> = HashMap::new();
    for r in 0..t.nrows() {
        ans_map.insert(t.py_str(r, ci), yorn_extraction(&t.py_str(r, cr)));
    }
    let mut items = Vec::with_capacity(t.nrows());
    for r in 0..t.nrows() {
        let index = t.py_str(r, ci);
        let extracted = ans_map[&index];
        let answer = t.py_str(r, ca);
        // data['answer'] == data['extracted']: a NaN answer never equals a string.
        let score = !t.is_na(r, ca) && answer == extracted;
        items.push(MmeVlmItem {
            index,
            category: t.py_str(r, cc),
            image_path: t.py_str(r, cp),
            answer,
            prediction_as_loaded: t.py_str(r, cr),
            extracted: extracted.to_string(),
            score,
        });
    }
    mme_rating(&t.source, items)
}

/// VLMEvalKit's `MME_rating` on scored rows (file order).
pub fn mme_rating(source: &Path, items: Vec<MmeVlmItem>) -> Result<MmeVlmReport, EvalError> {
    // stats[category][image_path] = [scores], both in order of first appearance.
    let mut stats: OrderedMap<OrderedMap<Vec<bool>>> = OrderedMap::new();
    for it in &items {
        if stats.get(&it.category).is_none() {
            stats.insert(it.category.clone(), OrderedMap::new());
        }
        let cat = stats
            .0
            .iter_mut()
            .find(|(k, _)| *k == it.category)
            .map(|(_, v)| v)
            .expect("inserted above");
        match cat.0.iter_mut().find(|(k, _)| *k == it.image_path) {
            Some((_, v)) => v.push(it.score),
            None => cat.0.push((it.image_path.clone(), vec![it.score])),
        }
    }
    let mut scores: OrderedMap<f64> = OrderedMap::new();
    for (cat, imgs) in stats.iter() {
        let mut n = 0u64;
        let mut c = 0u64;
        let mut pn = 0u64;
        let mut pc = 0u64;
        for (img, vals) in imgs.iter() {
            n += vals.len() as u64;
            c += vals.iter().filter(|v| **v).count() as u64;
            if vals.len() < 2 {
                return Err(EvalError::File {
                    path: source.to_path_buf(),
                    msg: format!(
                        "category {cat:?}, image_path {img:?} has a single row; VLMEvalKit's MME_rating needs two per image (IndexError)"
                    ),
                });
            }
            pn += 1;
            if vals[0] && vals[1] {
                pc += 1;
            }
        }
        // np.mean(bools) * 100 for both; the mean of 0/1 values is exact count / n.
        let acc = c as f64 / n as f64 * 100.0;
        let acc_plus = pc as f64 / pn as f64 * 100.0;
        scores.insert(cat, acc + acc_plus);
    }
    let mut out = OrderedMap::new();
    for (name, list) in [
        ("perception", &VLMEVAL_PERCEPTION_ORDER[..]),
        ("reasoning", &VLMEVAL_REASONING_ORDER[..]),
    ] {
        let mut base = 0.0f64;
        for c in list {
            base += *scores.get(c).ok_or_else(|| EvalError::File {
                path: source.to_path_buf(),
                msg: format!(
                    "no rows for category {c:?}; VLMEvalKit's MME_rating needs all 14 (KeyError)"
                ),
            })?;
        }
        out.insert(name, base);
    }
    for (k, v) in scores.iter() {
        out.insert(k, *v);
    }
    Ok(MmeVlmReport {
        score_columns: out.keys().map(str::to_string).collect(),
        score: out,
        items,
    })
}

// ------------------------------------------------------------------------------------------------
// Loaders and writers
// ------------------------------------------------------------------------------------------------

fn strip_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

fn read_text(path: &Path) -> Result<String, EvalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    String::from_utf8(bytes).map_err(|e| EvalError::File {
        path: path.to_path_buf(),
        msg: format!("not valid UTF-8: {e}"),
    })
}

fn mme_item(
    task: &str,
    id: String,
    image_name: &str,
    question: &str,
    gt: &str,
    image_rel: String,
) -> BenchItem {
    let mut extra = serde_json::Map::new();
    extra.insert("image_name".into(), image_name.into());
    BenchItem {
        id,
        benchmark: "mme".into(),
        question: question.to_string(),
        answers: vec![gt.to_string()],
        image: ImageRef::Path { path: image_rel },
        category: Some(task.to_string()),
        l2_category: Some(
            if COGNITION_TASKS.contains(&task) {
                "cognition"
            } else {
                "perception"
            }
            .into(),
        ),
        extra,
        ..Default::default()
    }
}

/// Where a task's image lives inside the MME release folder: `<task>/images/<name>` for the
/// tasks stored that way, else `<task>/<name>`. Without an image root, the flat form is used.
fn image_rel_path(image_root: Option<&Path>, task: &str, name: &str) -> Result<String, EvalError> {
    let nested = format!("{task}/images/{name}");
    let flat = format!("{task}/{name}");
    if let Some(root) = image_root {
        if resolve_in_root(root, &nested)?.is_file() {
            return Ok(nested);
        }
        resolve_in_root(root, &flat)?;
    }
    Ok(flat)
}

/// Loads the official template folder (`eval_tool/Your_Results`: `<task>.txt` with lines
/// `image \t question \t gt`, a 4th response field is ignored). Tasks without a file are skipped;
/// at least one is required. Item ids are `<task>/<line>` (1-based), the order the official
/// result files need.
pub fn load_template_dir(
    dir: &Path,
    image_root: Option<&Path>,
) -> Result<Vec<BenchItem>, EvalError> {
    let mut items = Vec::new();
    let mut found = 0;
    for task in all_tasks() {
        let path = dir.join(format!("{task}.txt"));
        if !path.is_file() {
            continue;
        }
        found += 1;
        let text = read_text(&path)?;
        for (i, line) in python_readlines(&text).iter().enumerate() {
            let line = strip_newline(line);
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 3 {
                return Err(EvalError::Line {
                    path: path.clone(),
                    line: i + 1,
                    msg: format!(
                        "expected `image \\t question \\t gt`, found {} field(s)",
                        f.len()
                    ),
                });
            }
            let rel = image_rel_path(image_root, task, f[0])?;
            items.push(mme_item(
                task,
                format!("{task}/{}", i + 1),
                f[0],
                f[1],
                f[2],
                rel,
            ));
        }
    }
    if found == 0 {
        return Err(EvalError::File {
            path: dir.into(),
            msg: "no <task>.txt file of the 14 MME tasks found".into(),
        });
    }
    Ok(items)
}

/// Loads the MME release folder (`MME_Benchmark_release_version`): per task either
/// `<task>/questions_answers_YN/<stem>.txt` with images in `<task>/images/`, or `<task>/<stem>.txt`
/// next to `<task>/<stem>.jpg|png`. Each txt has two lines `question \t answer`. Files are taken in
/// name order; item ids are `<task>/<stem>#<k>`.
pub fn load_release_dir(root: &Path) -> Result<Vec<BenchItem>, EvalError> {
    let mut items = Vec::new();
    let mut found = 0;
    for task in all_tasks() {
        let tdir = root.join(task);
        if !tdir.is_dir() {
            continue;
        }
        found += 1;
        let (qdir, img_dir_rel) = if tdir.join("questions_answers_YN").is_dir() {
            (tdir.join("questions_answers_YN"), format!("{task}/images"))
        } else {
            (tdir.clone(), task.to_string())
        };
        let mut txts: Vec<PathBuf> = std::fs::read_dir(&qdir)
            .map_err(io_err(&qdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        txts.sort();
        for path in txts {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut image_name = format!("{stem}.jpg");
            for ext in ["jpg", "png", "jpeg", "JPG", "PNG"] {
                let cand = format!("{img_dir_rel}/{stem}.{ext}");
                if resolve_in_root(root, &cand)?.is_file() {
                    image_name = format!("{stem}.{ext}");
                    break;
                }
            }
            let text = read_text(&path)?;
            let mut k = 0;
            for (i, line) in python_readlines(&text).iter().enumerate() {
                let line = strip_newline(line);
                if line.trim().is_empty() {
                    continue;
                }
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 2 {
                    return Err(EvalError::Line {
                        path: path.clone(),
                        line: i + 1,
                        msg: "expected `question \\t answer`".into(),
                    });
                }
                let rel = format!("{img_dir_rel}/{image_name}");
                items.push(mme_item(
                    task,
                    format!("{task}/{stem}#{k}"),
                    &image_name,
                    f[0],
                    f[1].trim(),
                    rel,
                ));
                k += 1;
            }
        }
    }
    if found == 0 {
        return Err(EvalError::File {
            path: root.into(),
            msg: "no MME task folder (existence/, OCR/, ...) found".into(),
        });
    }
    Ok(items)
}

/// Loads VLMEvalKit's `MME.tsv` (`index, image, question, answer, category, image_path`). An
/// `image` of 1..64 characters is the index of the row holding the base64 image (VLMEvalKit's
/// convention for the second question of an image). Rows without an image are skipped, as
/// VLMEvalKit does.
pub fn load_mme_tsv(path: &Path) -> Result<Vec<BenchItem>, EvalError> {
    let t = read_tsv(path)?;
    let (ci, cimg, cq, ca, cc) = (
        need_col(&t, "index")?,
        need_col(&t, "image")?,
        need_col(&t, "question")?,
        need_col(&t, "answer")?,
        need_col(&t, "category")?,
    );
    let cp = t.col("image_path");
    let mut by_index: HashMap<String, usize> = HashMap::new();
    for r in 0..t.nrows() {
        by_index.entry(t.py_str(r, ci)).or_insert(r);
    }
    let mut items = Vec::new();
    for r in 0..t.nrows() {
        if t.is_na(r, cimg) {
            continue;
        }
        let mut img = t.py_str(r, cimg);
        if img.chars().count() <= 64 {
            let target = by_index
                .get(&img)
                .copied()
                .filter(|&tr| !t.is_na(tr, cimg) && t.py_str(tr, cimg).len() > 64);
            match target {
                Some(tr) => img = t.py_str(tr, cimg),
                None => {
                    return Err(EvalError::Line {
                        path: path.into(),
                        line: t.line_of(r),
                        msg: format!("image {img:?} refers to no row holding a base64 image"),
                    })
                }
            }
        }
        let category = t.py_str(r, cc);
        let image_name = cp.map(|c| t.py_str(r, c)).unwrap_or_default();
        let mut item = mme_item(
            &category,
            t.py_str(r, ci),
            &image_name,
            &t.py_str(r, cq),
            &t.py_str(r, ca),
            String::new(),
        );
        item.image = ImageRef::Base64 { data: img };
        items.push(item);
    }
    Ok(items)
}

/// Loads MME from a `.tsv` file (VLMEvalKit), a template folder (`<task>.txt` files) or the
/// release folder (`<task>/` subfolders), detected from what `path` holds.
/// A source without any question is an error naming it ("contains no questions").
pub fn load_mme(path: &Path, image_root: Option<&Path>) -> Result<Vec<BenchItem>, EvalError> {
    let items = if path.is_file() {
        load_mme_tsv(path)?
    } else if !path.is_dir() {
        return Err(EvalError::File {
            path: path.into(),
            msg: "no such file or folder".into(),
        });
    } else if all_tasks().any(|t| path.join(format!("{t}.txt")).is_file()) {
        load_template_dir(path, image_root)?
    } else {
        load_release_dir(path)?
    };
    if items.is_empty() {
        return Err(EvalError::File {
            path: path.into(),
            msg: "contains no questions".into(),
        });
    }
    Ok(items)
}

/// Makes a response fit the official one-line format: TAB, CR and LF become spaces
/// (calculation.py splits on TAB and reads line by line).
pub fn one_line_response(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\t' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn item_image_name(it: &BenchItem) -> String {
    it.extra
        .get("image_name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| match &it.image {
            ImageRef::Path { path } => path.rsplit('/').next().unwrap_or(path).to_string(),
            _ => it.id.clone(),
        })
}

/// Writes the official result files `<out_dir>/<task>.txt` (`image \t question \t gt \t
/// response`) for the items' tasks, in item order. `responses` maps item id to the model's text
/// (made one-line with [`one_line_response`]); a missing response is written empty (scored
/// `other`). Ground truths and questions containing TAB or newlines are refused.
pub fn write_official_results(
    out_dir: &Path,
    items: &[BenchItem],
    responses: &HashMap<String, String>,
) -> Result<Vec<PathBuf>, EvalError> {
    let mut per_task: OrderedMap<String> = OrderedMap::new();
    for it in items {
        let task = it.category.clone().unwrap_or_default();
        let gt = it.answers.first().cloned().unwrap_or_default();
        let name = item_image_name(it);
        for (what, v) in [
            ("image", &name),
            ("question", &it.question),
            ("answer", &gt),
        ] {
            if v.contains(['\t', '\n', '\r']) {
                return Err(EvalError::File {
                    path: out_dir.join(format!("{task}.txt")),
                    msg: format!("item {}: {what} contains a TAB or line break", it.id),
                });
            }
        }
        let resp = one_line_response(responses.get(&it.id).map(String::as_str).unwrap_or(""));
        let line = format!("{name}\t{}\t{gt}\t{resp}\n", it.question);
        match per_task.0.iter_mut().find(|(k, _)| *k == task) {
            Some((_, s)) => s.push_str(&line),
            None => per_task.0.push((task, line)),
        }
    }
    let mut written = Vec::new();
    for (task, text) in per_task.iter() {
        let p = out_dir.join(format!("{task}.txt"));
        mde_core::io::atomic_write(&p, text.as_bytes()).map_err(|e| EvalError::File {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        written.push(p);
    }
    Ok(written)
}

/// Writes a VLMEvalKit-style prediction file (QUOTE_ALL TSV: `index, question, answer, category,
/// image_path, prediction`) for [`score_vlmevalkit`]. A missing response is written as NaN.
pub fn write_vlmevalkit_predictions(
    path: &Path,
    items: &[BenchItem],
    responses: &HashMap<String, String>,
) -> Result<(), EvalError> {
    let cols = [
        "index",
        "question",
        "answer",
        "category",
        "image_path",
        "prediction",
    ];
    let rows: Vec<Vec<Option<String>>> = items
        .iter()
        .map(|it| {
            vec![
                Some(it.id.clone()),
                Some(it.question.clone()),
                it.answers.first().cloned(),
                it.category.clone(),
                // Group key of MME_rating: keep images of different tasks apart.
                Some(item_image_name(it)),
                responses.get(&it.id).cloned(),
            ]
        })
        .collect();
    crate::tsv::write_tsv_quote_all(path, &cols, &rows)?;
    Ok(())
}

/// True if `s` (a prediction) is blank in Python's sense; used by reports.
pub fn is_blank(s: &str) -> bool {
    s.chars().all(is_py_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_parse_quirks() {
        for (r, want) in [
            ("yes", "yes"),
            ("No", "no"),
            (" yes\n", "yes"),
            ("  yes\n", "other"),
            ("I think yes\n", "other"),
            ("Not sure\n", "no"),
            ("None\n", "no"),
            ("snow\n", "no"),
            ("eyes\n", "yes"),
            ("**Yes**\n", "other"),
            ("\n", "other"),
            ("Yes and no\n", "yes"),
            ("No, yes\n", "no"),
            ("Knowing it, yes\n", "no"),
        ] {
            assert_eq!(official_parse(r), want, "{r:?}");
        }
    }

    #[test]
    fn yorn_quirks() {
        for (p, want) in [
            ("Yes!", "Yes"),
            ("yes, no", "Unknown"),
            ("yes.No", "Unknown"),
            ("Yes-ish", "Yes"),
            ("No.", "No"),
            ("Yes: it is visible", "Unknown"),
            ("I think yes", "Yes"),
            ("There is no such object", "No"),
            ("nan", "Unknown"),
            ("Nope", "Unknown"),
            ("**Yes**", "Unknown"),
        ] {
            assert_eq!(yorn_extraction(p), want, "{p:?}");
        }
    }

    #[test]
    fn period_removal_is_capped_at_32() {
        let s = format!("{}yes", ".".repeat(40));
        assert_eq!(process_punctuation(&s), format!("{}yes", ".".repeat(8)));
        assert_eq!(process_punctuation("3.5 a. b"), "3.5 a b");
        assert_eq!(process_punctuation("1,000 (x)"), "1000 x");
    }

    #[test]
    fn readlines_universal_newlines() {
        assert_eq!(
            python_readlines("a\r\nb\rc\nd"),
            vec!["a\n", "b\n", "c\n", "d"]
        );
    }
}
