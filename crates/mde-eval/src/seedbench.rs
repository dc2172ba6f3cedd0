//! SEED-Bench (v1): loader for `SEED-Bench.json` (image dimensions 1-9, `filter_questions`
//! semantics), the official accuracy of `eval.py`, `predictions.jsonl` I/O, and VLMEvalKit's
//! `SEEDBench_IMG` variant.
//!
//! Official accuracy (eval.py accuracy block @ 250947c2, SPEC §5): records in annotation order;
//! per dimension (first-appearance order) `count += 1`, `correct += 1` when `prediction == answer`
//! (exact string equality: `"B."`, `" B"`, `"b"` are wrong); `accuracy = correct / count * 100`;
//! total = micro average over questions. A dimension with zero correct answers makes the official
//! script raise `KeyError: <dim>`; we report it as 0 with [`SeedOfficialReport::zero_correct_dims`]
//! and [`SeedOfficialReport::official_error`] set to the exception the official script raises.
//!
//! ```no_run
//! use mde_eval::seedbench::{load_seed_json, read_predictions, score_official, SeedTask};
//! use std::path::Path;
//! let ann = load_seed_json(Path::new("SEED-Bench.json")).unwrap();
//! let preds = read_predictions(Path::new("predictions.jsonl")).unwrap();
//! let r = score_official(&ann, &preds, &SeedTask::Image).unwrap();
//! print!("{}", r.stdout);
//! ```
use crate::error::EvalError;
use crate::mmbench::{score_vanilla_mcq, McqOptions, VanillaMcqReport};
use crate::report::{markdown_table, py_fixed};
use crate::tsv::read_tsv;
use mde_core::input_report::{InputIssues, Kept};
use mde_core::records::{BenchItem, ImageRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One SEED-Bench question (DATASET.md @ 250947c2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedQuestion {
    pub answer: String,
    pub choice_a: String,
    pub choice_b: String,
    pub choice_c: String,
    pub choice_d: String,
    pub data_id: String,
    pub data_type: String,
    pub question: String,
    pub question_id: String,
    pub question_type_id: i64,
    /// Video questions of dimensions 11-12: `[start, end]` seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<serde_json::Value>,
}

/// The annotation file: questions and the dimension names (`question_type`: name → id).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SeedAnnotations {
    pub questions: Vec<SeedQuestion>,
    #[serde(default)]
    pub question_type: BTreeMap<String, i64>,
}

impl SeedAnnotations {
    /// Dimension name of a type id, if the file names it.
    pub fn dimension_name(&self, id: i64) -> Option<&str> {
        self.question_type
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }
}

/// Reads `SEED-Bench.json`: `{"questions": [...], "question_type": {...}}`; a bare list of
/// questions is accepted too.
pub fn load_seed_json(path: &Path) -> Result<SeedAnnotations, EvalError> {
    let v: serde_json::Value = crate::error::read_json_file(path)?;
    let parsed = if v.is_array() {
        serde_json::from_value(v).map(|questions| SeedAnnotations {
            questions,
            question_type: BTreeMap::new(),
        })
    } else {
        serde_json::from_value(v)
    };
    let ann: SeedAnnotations = parsed.map_err(|e| EvalError::Json {
        path: path.into(),
        source: e,
    })?;
    if ann.questions.is_empty() {
        // Scoring would only report a ZeroDivisionError much later.
        return Err(EvalError::File {
            path: path.into(),
            msg: "contains no questions".into(),
        });
    }
    Ok(ann)
}

/// `filter_questions`' `task` argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedTask {
    /// Dimensions 1-9.
    Image,
    /// Dimensions 10-12.
    Video,
    /// Everything.
    All,
    /// Exactly one dimension.
    Dim(i64),
}

impl SeedTask {
    /// Parses like eval.py: `image`, `video`, `all`, or anything Python's `int()` accepts.
    pub fn parse(s: &str) -> Option<SeedTask> {
        match s {
            "image" => Some(SeedTask::Image),
            "video" => Some(SeedTask::Video),
            "all" => Some(SeedTask::All),
            _ => {
                let t: &str = s.trim_matches(crate::report::is_py_space);
                let (neg, d) = match t.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, t.strip_prefix('+').unwrap_or(t)),
                };
                let ok = !d.is_empty()
                    && !d.starts_with('_')
                    && !d.ends_with('_')
                    && !d.contains("__")
                    && d.chars().all(|c| c.is_ascii_digit() || c == '_');
                if !ok {
                    return None;
                }
                let v: i64 = d.replace('_', "").parse().ok()?;
                Some(SeedTask::Dim(if neg { -v } else { v }))
            }
        }
    }

    /// Name as eval.py spells it.
    pub fn name(&self) -> String {
        match self {
            SeedTask::Image => "image".into(),
            SeedTask::Video => "video".into(),
            SeedTask::All => "all".into(),
            SeedTask::Dim(d) => d.to_string(),
        }
    }

    fn keeps(&self, type_id: i64) -> bool {
        match self {
            SeedTask::Image => (1..=9).contains(&type_id),
            SeedTask::Video => (10..=12).contains(&type_id),
            SeedTask::All => true,
            SeedTask::Dim(d) => *d == type_id,
        }
    }
}

/// `filter_questions(data, task)`.
pub fn filter_questions<'a>(
    questions: &'a [SeedQuestion],
    task: &SeedTask,
) -> Vec<&'a SeedQuestion> {
    questions
        .iter()
        .filter(|q| task.keeps(q.question_type_id))
        .collect()
}

/// Converts the questions kept by `task` into [`BenchItem`]s. Image questions reference
/// `data_id` relative to the image root (eval.py's `cc3m_dir`); resolve with
/// [`crate::paths::resolve_with_extensions`]. The category is the dimension name.
pub fn to_bench_items(ann: &SeedAnnotations, task: &SeedTask) -> Vec<BenchItem> {
    filter_questions(&ann.questions, task)
        .into_iter()
        .map(|q| {
            let mut extra = serde_json::Map::new();
            extra.insert("question_type_id".into(), q.question_type_id.into());
            extra.insert("data_type".into(), q.data_type.clone().into());
            if let Some(s) = &q.segment {
                extra.insert("segment".into(), s.clone());
            }
            BenchItem {
                id: q.question_id.clone(),
                benchmark: "seedbench".into(),
                question: q.question.clone(),
                choices: vec![
                    q.choice_a.clone(),
                    q.choice_b.clone(),
                    q.choice_c.clone(),
                    q.choice_d.clone(),
                ],
                answer_idx: ["A", "B", "C", "D"].iter().position(|l| *l == q.answer),
                image: ImageRef::Path {
                    path: q.data_id.clone(),
                },
                category: Some(
                    ann.dimension_name(q.question_type_id)
                        .map(str::to_string)
                        .unwrap_or_else(|| q.question_type_id.to_string()),
                ),
                extra,
                ..Default::default()
            }
        })
        .collect()
}

/// One line of `predictions.jsonl` (the official `results.json` leaderboard format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedPrediction {
    pub question_id: String,
    pub prediction: String,
}

/// Reads `predictions.jsonl` (one `{"question_id", "prediction"}` per line; blank lines skipped).
pub fn read_predictions(path: &Path) -> Result<Vec<SeedPrediction>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
        path: path.into(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: SeedPrediction = serde_json::from_str(line).map_err(|e| EvalError::Line {
            path: path.into(),
            line: i + 1,
            msg: format!("expected {{\"question_id\": str, \"prediction\": str}}: {e}"),
        })?;
        out.push(p);
    }
    Ok(out)
}

/// Writes `predictions.jsonl` atomically.
pub fn write_predictions(path: &Path, preds: &[SeedPrediction]) -> Result<(), EvalError> {
    let mut text = String::new();
    for p in preds {
        text.push_str(&serde_json::to_string(p).map_err(|e| EvalError::Json {
            path: path.into(),
            source: e,
        })?);
        text.push('\n');
    }
    mde_core::io::atomic_write(path, text.as_bytes()).map_err(|e| EvalError::File {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Per-dimension numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedDimension {
    pub id: i64,
    pub name: Option<String>,
    pub count: u64,
    pub correct: u64,
    /// `correct / count * 100` (0 for a dimension without a correct answer, where the official
    /// script crashes).
    pub accuracy: f64,
}

/// One scored question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedItem {
    pub question_id: String,
    pub q_type_id: i64,
    pub gt: String,
    /// `None` when the prediction file has no line for this question (counted wrong).
    pub prediction: Option<String>,
    pub correct: bool,
}

/// The official accuracy report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedOfficialReport {
    pub task: String,
    /// Dimensions in order of first appearance (the order eval.py prints them).
    pub dimension_order: Vec<i64>,
    pub dimensions: Vec<SeedDimension>,
    pub total_correct: u64,
    pub total_count: u64,
    /// `None` when there is no question at all.
    pub total_accuracy: Option<f64>,
    /// What eval.py prints (up to its crash when it crashes).
    pub stdout: String,
    /// The exception eval.py raises on these inputs (`KeyError: 4` for a dimension with zero
    /// correct answers), `None` when it completes.
    pub official_error: Option<String>,
    /// Dimensions with zero correct answers, reported here as 0 (the official script crashes on
    /// the first one).
    pub zero_correct_dims: Vec<i64>,
    /// Questions without a prediction (the official script never sees these; counted wrong).
    pub missing_predictions: Vec<String>,
    /// Question ids predicted more than once (the last line wins).
    pub duplicate_predictions: Vec<String>,
    pub items: Vec<SeedItem>,
    /// Predictions whose `question_id` is not a question of the annotation file (ignored, as
    /// the official script does). Details in `input_issues.unknown_ids`.
    #[serde(default)]
    pub unknown_prediction_ids: usize,
    /// What was tolerated in the prediction file: unknown ids, duplicates (last kept); `file` is
    /// empty here, callers that know the path set it.
    #[serde(default)]
    pub input_issues: InputIssues,
}

impl SeedOfficialReport {
    /// Numbers of one dimension.
    pub fn dimension(&self, id: i64) -> Option<&SeedDimension> {
        self.dimensions.iter().find(|d| d.id == id)
    }

    /// Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("## SEED-Bench (official eval.py, task `{}`)\n\n", self.task);
        if let Some(t) = self.total_accuracy {
            s.push_str(&format!(
                "Total accuracy: **{}%** ({} / {})\n\n",
                py_fixed(t, 2),
                self.total_correct,
                self.total_count
            ));
        }
        let rows: Vec<Vec<String>> = self
            .dimensions
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    d.name.clone().unwrap_or_default(),
                    d.count.to_string(),
                    d.correct.to_string(),
                    format!("{}%", py_fixed(d.accuracy, 2)),
                ]
            })
            .collect();
        s.push_str(&markdown_table(
            &["dim", "name", "count", "correct", "accuracy"],
            &rows,
        ));
        if let Some(e) = &self.official_error {
            s.push_str(&format!(
                "\n**Warning:** the official eval.py raises `{e}` on these predictions (dimension(s) {:?} have no correct answer); they are reported as 0 here.\n",
                self.zero_correct_dims
            ));
        }
        if !self.missing_predictions.is_empty() {
            s.push_str(&format!(
                "\n**Warning:** {} question(s) without a prediction, counted wrong.\n",
                self.missing_predictions.len()
            ));
        }
        s
    }
}

/// The official accuracy of eval.py on the questions kept by `task`, predictions matched by
/// `question_id`.
pub fn score_official(
    ann: &SeedAnnotations,
    preds: &[SeedPrediction],
    task: &SeedTask,
) -> Result<SeedOfficialReport, EvalError> {
    let mut pred_map: HashMap<&str, &str> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut input_issues = InputIssues::default();
    let known: std::collections::HashSet<&str> = ann
        .questions
        .iter()
        .map(|q| q.question_id.as_str())
        .collect();
    for p in preds {
        if pred_map.insert(&p.question_id, &p.prediction).is_some() {
            input_issues.duplicate(&p.question_id, Kept::Last, None, None);
            if !duplicates.contains(&p.question_id) {
                duplicates.push(p.question_id.clone());
            }
        } else if !known.contains(p.question_id.as_str()) {
            input_issues.unknown(&p.question_id);
        }
    }
    let mut items = Vec::new();
    let mut missing = Vec::new();
    // type_counts / correct_counts keyed by type id, in order of first appearance.
    let mut order: Vec<i64> = Vec::new();
    let mut counts: HashMap<i64, (u64, u64)> = HashMap::new();
    for q in filter_questions(&ann.questions, task) {
        let pred = pred_map.get(q.question_id.as_str()).map(|s| s.to_string());
        if pred.is_none() {
            missing.push(q.question_id.clone());
        }
        let correct = pred.as_deref() == Some(q.answer.as_str());
        let e = counts.entry(q.question_type_id).or_insert_with(|| {
            order.push(q.question_type_id);
            (0, 0)
        });
        e.0 += 1;
        if correct {
            e.1 += 1;
        }
        items.push(SeedItem {
            question_id: q.question_id.clone(),
            q_type_id: q.question_type_id,
            gt: q.answer.clone(),
            prediction: pred,
            correct,
        });
    }
    let mut stdout = String::from(
        "evaluation finished! Calculating accuracy...\nAccuracy for each data type:\n",
    );
    let mut official_error = None;
    let mut dims = Vec::new();
    let mut zero = Vec::new();
    let (mut total_count, mut total_correct) = (0u64, 0u64);
    for d in &order {
        let (count, correct) = counts[d];
        if correct == 0 {
            zero.push(*d);
            // `correct_counts[data_type]` was never set: the official script stops here.
            official_error.get_or_insert_with(|| format!("KeyError: {d}"));
        }
        let accuracy = correct as f64 / count as f64 * 100.0;
        if official_error.is_none() {
            stdout.push_str(&format!("Data type {d}: {}%\n", py_fixed(accuracy, 2)));
        }
        total_count += count;
        total_correct += correct;
        dims.push(SeedDimension {
            id: *d,
            name: ann.dimension_name(*d).map(str::to_string),
            count,
            correct,
            accuracy,
        });
    }
    let total_accuracy = if total_count == 0 {
        official_error.get_or_insert_with(|| "ZeroDivisionError: division by zero".into());
        None
    } else {
        Some(total_correct as f64 / total_count as f64 * 100.0)
    };
    if official_error.is_none() {
        if let Some(t) = total_accuracy {
            stdout.push_str(&format!("Total accuracy: {}%\n", py_fixed(t, 2)));
        }
    }
    Ok(SeedOfficialReport {
        task: task.name(),
        dimension_order: order,
        dimensions: dims,
        total_correct,
        total_count,
        total_accuracy,
        stdout,
        official_error,
        zero_correct_dims: zero,
        missing_predictions: missing,
        duplicate_predictions: duplicates,
        items,
        unknown_prediction_ids: input_issues.unknown_ids.count,
        input_issues,
    })
}

// ------------------------------------------------------------------------------------------------
// VLMEvalKit SEEDBench_IMG
// ------------------------------------------------------------------------------------------------

/// Loads VLMEvalKit's `SEEDBench_IMG.tsv` (`index, question, A-D, answer, category, image`) into
/// [`BenchItem`]s (base64 images), like `ImageBaseDataset` does.
pub fn load_seed_tsv(path: &Path) -> Result<Vec<BenchItem>, EvalError> {
    let ds = crate::mmbench::McqDataset::load(path)?;
    Ok(ds.to_bench_items("seedbench"))
}

/// One row of the VLMEvalKit evaluation (sorted by index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedVlmItem {
    pub index: String,
    pub category: String,
    #[serde(rename = "GT")]
    pub gt: String,
    pub prediction_as_loaded: String,
    /// The extracted letter, `Z` when nothing was found.
    pub extracted: String,
    pub hit: u8,
    /// `eval_vanilla`'s log text.
    pub log: String,
}

/// VLMEvalKit `SEEDBench_IMG` evaluation: the vanilla MCQ scorer of [`crate::mmbench`] plus the
/// per-row view the fixtures record.
#[derive(Debug, Clone, Serialize)]
pub struct SeedVlmReport {
    /// The `report_acc` table (fractions; `split = none`, `Overall`, categories sorted).
    pub acc: crate::mmbench::AccTable,
    pub items: Vec<SeedVlmItem>,
    #[serde(skip)]
    pub raw: VanillaMcqReport,
}

impl SeedVlmReport {
    /// Markdown summary.
    pub fn to_markdown(&self) -> String {
        format!(
            "## SEED-Bench (VLMEvalKit SEEDBench_IMG, exact matching)\n\n{}",
            self.acc.to_markdown()
        )
    }
}

/// Scores a VLMEvalKit prediction TSV against the `SEEDBench_IMG.tsv` dataset.
pub fn score_vlmevalkit(
    dataset_tsv: &Path,
    predictions_tsv: &Path,
    opts: &McqOptions,
) -> Result<SeedVlmReport, EvalError> {
    let raw = score_vanilla_mcq(dataset_tsv, predictions_tsv, opts)?;
    // Category per index from the prediction file (what report_acc groups by).
    let t = read_tsv(predictions_tsv)?;
    let mut cat: HashMap<String, String> = HashMap::new();
    if let (Some(ci), Some(cc)) = (t.col("index"), t.col("category")) {
        for r in 0..t.nrows() {
            cat.entry(t.py_str(r, ci))
                .or_insert_with(|| t.py_str(r, cc));
        }
    }
    let mut items = Vec::with_capacity(raw.rows.len());
    for (i, d) in raw.rows.iter().enumerate() {
        let hit = raw
            .result
            .rows
            .get(i)
            .filter(|v| v.index == d.index)
            .map(|v| v.hit)
            .ok_or_else(|| EvalError::File {
                path: predictions_tsv.into(),
                msg: format!("no verdict for row {i} (index {})", d.index),
            })?;
        let index = d.index.to_string();
        let log = match d.extracted {
            Some(_) => format!("Match Log: {}. ", d.prediction_as_loaded),
            None => "Match Log: Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy.. ".into(),
        };
        items.push(SeedVlmItem {
            category: cat.get(&index).cloned().unwrap_or_else(|| "nan".into()),
            index,
            gt: d.gt.clone(),
            prediction_as_loaded: d.prediction_as_loaded.clone(),
            extracted: d.extracted.unwrap_or('Z').to_string(),
            hit,
            log,
        });
    }
    Ok(SeedVlmReport {
        acc: raw.result.acc.clone(),
        items,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_parse_like_python_int() {
        assert_eq!(SeedTask::parse("image"), Some(SeedTask::Image));
        assert_eq!(SeedTask::parse(" 7 "), Some(SeedTask::Dim(7)));
        assert_eq!(SeedTask::parse("1_0"), Some(SeedTask::Dim(10)));
        assert_eq!(SeedTask::parse("-3"), Some(SeedTask::Dim(-3)));
        assert_eq!(SeedTask::parse("x"), None);
        assert_eq!(SeedTask::parse("1__0"), None);
    }
}
