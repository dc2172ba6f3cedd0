//! MMBench scoring exactly as VLMEvalKit does it (`ImageMCQDataset.evaluate`, judge
//! `exact_matching`, commit e8e78f05): circular evaluation with `report_acc`, per-group verdicts and
//! logs, per-row extraction details, the `PRINT_VANILLA` numbers, legacy extraction modes, and the
//! non-circular `mcq_vanilla_eval` used for SEEDBench_IMG ([`score_vanilla_mcq`]).
//!
//! Length: one file per official tool, kept whole so it reads side by side with VLMEvalKit's
//! evaluation it reproduces (circular grouping, extraction versions, vanilla MCQ share it).
//!
//! ```no_run
//! use mde_eval::mmbench::{score_mmbench, McqOptions};
//! use std::path::Path;
//! let r = score_mmbench(Path::new("MMBench_DEV_EN.tsv"), Path::new("predictions.tsv"), &McqOptions::default())
//!     .unwrap();
//! println!("{}", r.circular.acc.to_markdown());
//! ```
use crate::error::EvalError;
use crate::matching::{infer_detailed, Choices, Inference, MatchOptions};
use crate::tsv::{infer_kind, py_float_repr, read_tsv, ColumnKind, Table};
use mde_core::records::{BenchItem, ImageRef};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn file_err(path: &Path, msg: impl Into<String>) -> EvalError {
    EvalError::File {
        path: path.into(),
        msg: msg.into(),
    }
}

fn row_err(t: &Table, row: usize, msg: impl Into<String>) -> EvalError {
    EvalError::Line {
        path: t.source.clone(),
        line: t.line_of(row),
        msg: msg.into(),
    }
}

/// A pandas/Python index value: an `int`, or any other value kept as its `str()`.
/// `Int(3) != Str("3")`, as in Python.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PyIndex {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for PyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PyIndex::Int(v) => write!(f, "{v}"),
            PyIndex::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for PyIndex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PyIndex::Int(v) => s.serialize_i64(*v),
            PyIndex::Str(v) => s.serialize_str(v),
        }
    }
}

/// Python `int(x)` of a cell (int column, float column truncated, or an int literal in text).
fn py_int(t: &Table, row: usize, col: usize) -> Option<i64> {
    let s = t.raw(row, col)?;
    match t.kind(col) {
        ColumnKind::Int => crate::tsv::parse_int(s),
        ColumnKind::Float => crate::tsv::parse_float(s)
            .filter(|v| v.is_finite())
            .map(|v| v.trunc() as i64),
        ColumnKind::Bool => Some(i64::from(s.eq_ignore_ascii_case("true"))),
        ColumnKind::Str => {
            let t = crate::matching::py_strip(s).replace('_', "");
            let d = t.strip_prefix(['+', '-']).unwrap_or(&t);
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.strip_prefix('+').unwrap_or(&t).parse().ok()
        }
    }
}

/// A ground-truth value from the dataset's `answer` column. Only a string can equal a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtValue {
    /// Python `str()` of the value (used in logs).
    pub text: String,
    /// False for NaN or a numeric column, which never equal an extracted letter.
    pub is_str: bool,
}

impl GtValue {
    fn matches(&self, letter: Option<char>) -> bool {
        match letter {
            Some(c) => self.is_str && self.text.chars().eq(std::iter::once(c)),
            None => false,
        }
    }
}

fn gt_of(t: &Table, row: usize, col: usize) -> GtValue {
    GtValue {
        text: t.py_str(row, col),
        is_str: t.kind(col) == ColumnKind::Str && !t.is_na(row, col),
    }
}

/// Columns a benchmark TSV needs to be asked at all (see [`McqDataset::check_columns`]).
pub const INFERENCE_COLUMNS: &[&str] = &["index", "question", "A"];
/// Columns a benchmark TSV needs in addition when its predictions are scored.
pub const SCORING_COLUMNS: &[&str] = &["answer"];

/// A benchmark TSV loaded like `ImageBaseDataset.__init__` (rows without image dropped, image
/// references resolved, indices converted to int when all of them are ints).
#[derive(Debug, Clone)]
pub struct McqDataset {
    pub table: Table,
    /// Table rows kept (non-NaN image when there is an `image` column).
    pub rows: Vec<usize>,
    /// Index of each kept row.
    pub index: Vec<PyIndex>,
    /// For each kept row, the table row whose `image` text is its resolved image.
    pub image_row: Vec<Option<usize>>,
    /// `answer_map`: index -> answer (a later duplicate wins, as in a dict comprehension).
    pub answer_map: HashMap<PyIndex, GtValue>,
}

impl McqDataset {
    /// Loads a dataset TSV (see the type docs).
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        Self::from_table(read_tsv(path)?)
    }

    /// Builds the dataset from an already parsed table.
    pub fn from_table(table: Table) -> Result<Self, EvalError> {
        let t = &table;
        let path = t.source.clone();
        let idx_col = t
            .col("index")
            .ok_or_else(|| file_err(&path, "missing column `index`"))?;
        if t.col("question").is_none() {
            return Err(file_err(
                &path,
                "missing column `question` (meta_q_map needs it)",
            ));
        }
        let img_col = t.col("image");
        let rows: Vec<usize> = (0..t.nrows())
            .filter(|&r| img_col.is_none_or(|c| !t.is_na(r, c)))
            .collect();
        let keys: Vec<String> = rows.iter().map(|&r| t.py_str(r, idx_col)).collect();
        let mut image_row = vec![None; rows.len()];
        if let Some(ic) = img_col {
            // image_map = {str(index): str(image)}; a value of length 1..=64 names another index.
            let mut map: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
            let mut order: Vec<&str> = Vec::with_capacity(rows.len());
            for (k, &r) in keys.iter().zip(&rows) {
                if map.insert(k.as_str(), r).is_none() {
                    order.push(k.as_str());
                }
            }
            // Code points, but only counted when the byte length leaves doubt (<= 4 bytes each).
            let len_of = |r: usize| match t.raw(r, ic) {
                None => 0,
                Some(s) if s.len() > 4 * 65 => s.len(),
                Some(s) => crate::matching::py_len(s),
            };
            for k in order {
                let r = map[k];
                let n = len_of(r);
                if n > 0 && n <= 64 {
                    let target = t.py_str(r, ic);
                    match map.get(target.as_str()) {
                        Some(&tr) if len_of(tr) > 64 => {
                            map.insert(k, tr);
                        }
                        _ => {
                            return Err(row_err(
                                t,
                                r,
                                format!("image of index {k} refers to index {target:?}, which has no image (AssertionError in ImageBaseDataset)"),
                            ))
                        }
                    }
                }
            }
            for (i, k) in keys.iter().enumerate() {
                image_row[i] = Some(map[k.as_str()]);
            }
        }
        let all_int: Option<Vec<i64>> = keys.iter().map(|k| python_int_literal(k)).collect();
        let index: Vec<PyIndex> = match all_int {
            Some(v) => v.into_iter().map(PyIndex::Int).collect(),
            None => keys.into_iter().map(PyIndex::Str).collect(),
        };
        let mut answer_map = HashMap::with_capacity(rows.len());
        if let Some(ac) = t.col("answer") {
            for (i, &r) in rows.iter().enumerate() {
                answer_map.insert(index[i].clone(), gt_of(t, r, ac));
            }
        }
        Ok(McqDataset {
            table,
            rows,
            index,
            image_row,
            answer_map,
        })
    }

    /// Checks, at load and before any inference, that the file has the columns its use needs:
    /// [`INFERENCE_COLUMNS`] always, [`SCORING_COLUMNS`] too when the predictions will be scored
    /// (`mde eval` always scores; an MMBench test split without `answer` can only be used with
    /// `scoring = false`), and at least one question. The error names the file and the column.
    pub fn check_columns(&self, scoring: bool) -> Result<(), EvalError> {
        let path = &self.table.source;
        let needed = INFERENCE_COLUMNS
            .iter()
            .chain(if scoring { SCORING_COLUMNS } else { &[] });
        for c in needed {
            if self.table.col(c).is_none() {
                let why = if SCORING_COLUMNS.contains(c) {
                    "needed to score the predictions; a split without answers cannot be evaluated"
                } else {
                    "needed to ask the questions"
                };
                return Err(file_err(path, format!("missing column `{c}` ({why})")));
            }
        }
        if self.rows.is_empty() {
            return Err(file_err(path, "contains no questions"));
        }
        Ok(())
    }

    /// The resolved image text (base64) of kept row `i`.
    pub fn image(&self, i: usize) -> Option<&str> {
        let c = self.table.col("image")?;
        self.table.raw(self.image_row[i]?, c)
    }

    /// Converts every kept row into a [`BenchItem`] (`id` = index; circular copies included, with
    /// `extra.g_index`). Options are the non-NaN letter columns in `A`..`Z` order; their letters are
    /// in `extra.choice_letters`.
    pub fn to_bench_items(&self, benchmark: &str) -> Vec<BenchItem> {
        let t = &self.table;
        let letters: Vec<(char, usize)> = ('A'..='Z')
            .filter_map(|ch| t.col(ch.encode_utf8(&mut [0; 4])).map(|c| (ch, c)))
            .collect();
        let opt_str = |r: usize, name: &str| {
            t.col(name)
                .filter(|&c| !t.is_na(r, c))
                .map(|c| t.py_str(r, c))
        };
        self.rows
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let choices: Choices = letters
                    .iter()
                    .filter(|(_, c)| !t.is_na(r, *c))
                    .map(|(ch, c)| (*ch, t.py_str(r, *c)))
                    .collect();
                let answer = opt_str(r, "answer");
                let answer_idx = answer.as_deref().and_then(|a| {
                    choices
                        .iter()
                        .position(|(ch, _)| a.len() == 1 && a.starts_with(*ch))
                });
                let mut extra = serde_json::Map::new();
                extra.insert(
                    "choice_letters".into(),
                    choices
                        .iter()
                        .map(|(c, _)| c.to_string())
                        .collect::<String>()
                        .into(),
                );
                if let PyIndex::Int(v) = self.index[i] {
                    extra.insert("g_index".into(), v.rem_euclid(1_000_000).into());
                }
                for name in ["split", "source", "comment"] {
                    if let Some(v) = opt_str(r, name) {
                        extra.insert(name.into(), v.into());
                    }
                }
                if let Some(a) = &answer {
                    extra.insert("answer".into(), a.clone().into());
                }
                BenchItem {
                    id: self.index[i].to_string(),
                    benchmark: benchmark.to_string(),
                    question: opt_str(r, "question").unwrap_or_default(),
                    choices: choices.into_iter().map(|(_, v)| v).collect(),
                    answer_idx,
                    answers: Vec::new(),
                    hint: opt_str(r, "hint"),
                    image: match self.image(i) {
                        Some(d) => ImageRef::Base64 {
                            data: d.to_string(),
                        },
                        None => ImageRef::default(),
                    },
                    category: opt_str(r, "category"),
                    l2_category: opt_str(r, "l2-category"),
                    question_type: None,
                    extra,
                }
            })
            .collect()
    }
}

/// Whether `eval(s)` gives a Python int for the `str()` of an index (decimal literal, no leading
/// zeros, optional sign, surrounding spaces).
fn python_int_literal(s: &str) -> Option<i64> {
    let t = s.trim_matches([' ', '\t']);
    let d = t.strip_prefix(['-', '+']).unwrap_or(t);
    if d.is_empty()
        || !d.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        || d.starts_with('_')
        || d.ends_with('_')
    {
        return None;
    }
    if d.len() > 1 && d.starts_with('0') && d.bytes().any(|b| b != b'0' && b != b'_') {
        return None;
    }
    t.replace('_', "").trim_start_matches('+').parse().ok()
}

/// How duplicated indices share a vanilla verdict (`mcq_vanilla_eval` stores one verdict per index
/// and the thread that finishes last wins; SPEC §1.6).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The later row wins (observed in every official run).
    #[default]
    LastWins,
    /// The earlier row wins.
    FirstWins,
    /// Explicit verdicts for chosen indices (others: later row wins).
    Verdicts(BTreeMap<i64, u8>),
}

/// Scoring options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct McqOptions {
    pub matching: MatchOptions,
    pub duplicates: DuplicatePolicy,
}

// ---------------------------------------------------------------------------------------------
// Predictions
// ---------------------------------------------------------------------------------------------

/// One prediction row, prepared as `evaluate_heuristic` prepares it.
#[derive(Debug, Clone)]
pub struct PredRow {
    /// Row in the prediction table.
    pub file_row: usize,
    pub index: PyIndex,
    /// `str(prediction)`.
    pub prediction: String,
    /// `build_choices(row)`.
    pub choices: Choices,
    pub gt: GtValue,
    pub inference: Inference,
}

struct Preds {
    table: Table,
    /// Prepared rows in the order the official code walks them.
    rows: Vec<PredRow>,
    /// Column positions after lowercasing (later duplicates win).
    cols: HashMap<String, usize>,
}

fn lowered_columns(t: &Table) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (i, c) in t.columns.iter().enumerate() {
        let k = if crate::matching::is_single_upper(c) {
            c.clone()
        } else {
            crate::matching::py_lower(c)
        };
        m.insert(k, i);
    }
    m
}

fn build_choices(t: &Table, r: usize, letters: &[(char, usize)]) -> Choices {
    letters
        .iter()
        .filter(|(_, c)| !t.is_na(r, *c))
        .map(|(ch, c)| (*ch, t.py_str(r, *c)))
        .collect()
}

/// Loads predictions: int/str index, stable sort by index, `str()` predictions, lowercase
/// columns, subset check, GT from the dataset, extraction on every row.
fn prepare(
    ds: &McqDataset,
    table: Table,
    circular: bool,
    sort: bool,
    opts: &MatchOptions,
) -> Result<Preds, EvalError> {
    let t = &table;
    let cols = lowered_columns(t);
    // `index` and `prediction` are read before the column names are lowercased: exact names.
    let idx_col = t
        .col("index")
        .ok_or_else(|| file_err(&t.source, "missing column `index`"))?;
    if t.col("prediction").is_none() {
        return Err(file_err(&t.source, "missing column `prediction`"));
    }
    let pred_col = cols["prediction"];
    let letters: Vec<(char, usize)> = ('A'..='Z')
        .filter_map(|ch| t.col(ch.encode_utf8(&mut [0; 4])).map(|c| (ch, c)))
        .collect();
    let mut idx = Vec::with_capacity(t.nrows());
    for r in 0..t.nrows() {
        let v = if circular {
            PyIndex::Int(py_int(t, r, idx_col).ok_or_else(|| {
                row_err(
                    t,
                    r,
                    format!(
                        "index {:?} is not an integer (int(x) fails)",
                        t.py_str(r, idx_col)
                    ),
                )
            })?)
        } else {
            match t.kind(idx_col) {
                ColumnKind::Int => PyIndex::Int(py_int(t, r, idx_col).unwrap_or_default()),
                ColumnKind::Float => match t.float(r, idx_col) {
                    Some(v) if v.fract() == 0.0 && v.is_finite() => PyIndex::Int(v as i64),
                    _ => PyIndex::Str(t.py_str(r, idx_col)),
                },
                _ => PyIndex::Str(t.py_str(r, idx_col)),
            }
        };
        idx.push(v);
    }
    let mut order: Vec<usize> = (0..t.nrows()).collect();
    if sort {
        order.sort_by(|&a, &b| idx[a].cmp(&idx[b]));
    }
    if !cols.contains_key("question") {
        return Err(file_err(
            &t.source,
            "missing column `question` (needed for the subset check)",
        ));
    }
    if ds.table.col("answer").is_none() {
        // Without it every index would look unknown: name the real cause.
        return Err(file_err(
            &ds.table.source,
            "missing column `answer` (needed to score the predictions)",
        ));
    }
    // The official code aborts on the first index that is not in the dataset; the error counts
    // them all and names the first few so the file can be fixed in one go.
    let unknown: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&r| !ds.answer_map.contains_key(&idx[r]))
        .collect();
    if let Some(&first) = unknown.first() {
        let mut file_order = unknown.clone();
        file_order.sort_unstable();
        let mut issues = mde_core::input_report::InputIssues::new(t.source.display().to_string());
        for &r in &file_order {
            issues.unknown(idx[r].to_string());
        }
        return Err(row_err(
            t,
            first,
            format!(
                "index {} is not in the dataset {} (eval_file should be the same as or a subset of the dataset); {}",
                idx[first],
                ds.table.source.display(),
                issues.summary()
            ),
        ));
    }
    let mut rows = Vec::with_capacity(order.len());
    for r in order {
        let gt = &ds.answer_map[&idx[r]];
        let prediction = t.py_str(r, pred_col);
        let choices = build_choices(t, r, &letters);
        let inference = infer_detailed(&prediction, &choices, opts);
        rows.push(PredRow {
            file_row: r,
            index: idx[r].clone(),
            prediction,
            choices,
            gt: gt.clone(),
            inference,
        });
    }
    Ok(Preds { table, rows, cols })
}

// ---------------------------------------------------------------------------------------------
// report_acc
// ---------------------------------------------------------------------------------------------

/// One cell of the accuracy table.
#[derive(Debug, Clone, PartialEq)]
pub enum AccValue {
    Text(String),
    /// A mean; NaN when no row (serialised as `null`).
    Num(f64),
}

impl Serialize for AccValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AccValue::Text(t) => s.serialize_str(t),
            AccValue::Num(v) if v.is_finite() => s.serialize_f64(*v),
            AccValue::Num(_) => s.serialize_none(),
        }
    }
}

/// The DataFrame `report_acc` returns: one row per split.
#[derive(Debug, Clone, PartialEq)]
pub struct AccTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<AccValue>>,
}

impl Serialize for AccTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rows: Vec<BTreeMap<&str, &AccValue>> = self
            .rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .map(String::as_str)
                    .zip(r.iter())
                    .collect()
            })
            .collect();
        let mut st = s.serialize_struct("AccTable", 2)?;
        st.serialize_field("columns", &self.columns)?;
        st.serialize_field("rows", &rows)?;
        st.end()
    }
}

impl AccTable {
    /// Value of column `name` in row `row`.
    pub fn get(&self, row: usize, name: &str) -> Option<&AccValue> {
        let c = self.columns.iter().position(|x| x == name)?;
        self.rows.get(row)?.get(c)
    }

    /// Markdown table; means shown as percentages with two decimals.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("| {} |\n", self.columns.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .map(|v| match v {
                    AccValue::Text(t) => t.replace('|', "\\|"),
                    AccValue::Num(x) if x.is_nan() => "nan".into(),
                    AccValue::Num(x) => format!("{:.2}", x * 100.0),
                })
                .collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}

/// `MMB_abbrs` of `multiple_choice.py`.
pub fn mmb_abbr(name: &str) -> Option<&'static str> {
    Some(match name {
        "coarse_perception" => "CP",
        "finegrained_perception (instance-level)" => "FP-S",
        "finegrained_perception (cross-instance)" => "FP-C",
        "logic_reasoning" => "LR",
        "relation_reasoning" => "RR",
        "attribute_reasoning" => "AR",
        _ => return None,
    })
}

/// A grouping column given to [`report_acc`]: raw cells (`None` = NaN); its dtype is re-inferred
/// from these cells, as the official code reads the result file back before `report_acc`.
pub type GroupColumn<'a> = Vec<Option<&'a str>>;

#[derive(Debug, Clone, PartialEq)]
struct PyVal {
    kind: ColumnKind,
    raw: Option<String>,
}

fn py_vals(col: &GroupColumn<'_>) -> Vec<PyVal> {
    let kind = infer_kind(col.iter().copied());
    col.iter()
        .map(|v| PyVal {
            kind,
            raw: v.map(|s| s.to_string()),
        })
        .collect()
}

impl PyVal {
    fn key(&self) -> Option<String> {
        let s = self.raw.as_deref()?;
        Some(match self.kind {
            ColumnKind::Str => s.to_string(),
            ColumnKind::Int => crate::tsv::parse_int(s)
                .map(|v| v.to_string())
                .unwrap_or_else(|| s.to_string()),
            ColumnKind::Float => crate::tsv::parse_float(s)
                .map(py_float_repr)
                .unwrap_or_else(|| s.to_string()),
            ColumnKind::Bool => (if s.eq_ignore_ascii_case("true") {
                "True"
            } else {
                "False"
            })
            .to_string(),
        })
    }
    fn num(&self) -> f64 {
        match self.kind {
            ColumnKind::Bool => f64::from(u8::from(
                self.raw
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("true")),
            )),
            _ => self
                .raw
                .as_deref()
                .and_then(crate::tsv::parse_float)
                .unwrap_or(f64::NAN),
        }
    }
}

/// Per split: (sum of hits, rows).
type SplitSums = Vec<(u64, u64)>;

/// `report_acc(df)`: `split`, `Overall`, then per `l2-category` (abbreviated) and per `category`
/// the mean hit per split. Splits are listed in sorted order (Python's set order is arbitrary).
/// A name equal to an earlier column overwrites it in place, as a dict assignment does.
pub fn report_acc(
    hits: &[u8],
    split: Option<&GroupColumn<'_>>,
    l2: Option<&GroupColumn<'_>>,
    category: Option<&GroupColumn<'_>>,
) -> Result<AccTable, String> {
    let split_keys: Vec<Option<String>> = match split {
        Some(c) => py_vals(c).iter().map(PyVal::key).collect(),
        None => vec![Some("none".to_string()); hits.len()],
    };
    let mut splits: Vec<Option<String>> = split_keys.clone();
    splits.sort();
    splits.dedup();
    // Row -> position of its split in `splits`; a NaN split never equals anything.
    let split_of: Vec<Option<usize>> = split_keys
        .iter()
        .map(|k| k.as_ref().and_then(|_| splits.binary_search(k).ok()))
        .collect();
    let ns = splits.len();
    let means = |acc: &[(u64, u64)]| -> Vec<AccValue> {
        acc.iter()
            .map(|&(s, n)| {
                AccValue::Num(if n == 0 {
                    f64::NAN
                } else {
                    s as f64 / n as f64
                })
            })
            .collect()
    };
    let mut columns: Vec<String> = vec!["split".into()];
    let mut values: Vec<Vec<AccValue>> = vec![splits
        .iter()
        .map(|s| AccValue::Text(s.clone().unwrap_or_else(|| "nan".into())))
        .collect()];
    // A dict assignment: an existing name keeps its position and gets the new values.
    let set = |name: String,
               v: Vec<AccValue>,
               columns: &mut Vec<String>,
               values: &mut Vec<Vec<AccValue>>| {
        if let Some(p) = columns.iter().position(|c| *c == name) {
            values[p] = v;
        } else {
            columns.push(name);
            values.push(v);
        }
    };
    let mut overall = vec![(0u64, 0u64); ns];
    for (i, &h) in hits.iter().enumerate() {
        if let Some(sp) = split_of[i] {
            overall[sp].0 += u64::from(h);
            overall[sp].1 += 1;
        }
    }
    set("Overall".into(), means(&overall), &mut columns, &mut values);
    for (gname, col) in [("l2-category", l2), ("category", category)] {
        let Some(col) = col else { continue };
        let vals = py_vals(col);
        let kind = vals.first().map(|v| v.kind).unwrap_or(ColumnKind::Str);
        if matches!(kind, ColumnKind::Str | ColumnKind::Bool)
            && vals.iter().any(|v| v.raw.is_none())
            && vals.iter().any(|v| v.raw.is_some())
        {
            return Err(format!(
                "column `{gname}` has a NaN value: the official report_acc raises TypeError when sorting it"
            ));
        }
        // key -> (sort number, per-split sums)
        let mut groups: HashMap<String, (f64, SplitSums)> = HashMap::new();
        for (i, v) in vals.iter().enumerate() {
            let key = v.key().unwrap_or_else(|| "nan".into());
            let e = groups
                .entry(key)
                .or_insert_with(|| (v.num(), vec![(0, 0); ns]));
            if let Some(sp) = split_of[i] {
                if v.raw.is_some() {
                    e.1[sp].0 += u64::from(hits[i]);
                    e.1[sp].1 += 1;
                }
            }
        }
        let mut distinct: Vec<(String, (f64, SplitSums))> = groups.into_iter().collect();
        match kind {
            // str keys are the raw text: Python's code-point order = byte order of UTF-8.
            ColumnKind::Str => distinct.sort_by(|a, b| a.0.cmp(&b.0)),
            _ => distinct.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0)),
        }
        for (name, (_, acc)) in distinct {
            let name = if kind == ColumnKind::Str {
                mmb_abbr(&name).map(str::to_string).unwrap_or(name)
            } else {
                name
            };
            set(name, means(&acc), &mut columns, &mut values);
        }
    }
    let rows = (0..ns)
        .map(|r| values.iter().map(|c| c[r].clone()).collect())
        .collect();
    Ok(AccTable { columns, rows })
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

fn ser_opt_letter<S: Serializer>(v: &Option<char>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(c) => s.serialize_str(c.encode_utf8(&mut [0; 4])),
        None => s.serialize_bool(false),
    }
}

/// Verdict of one circular group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupVerdict {
    pub hit: u8,
    pub log: String,
}

/// A main prediction row with its verdict (duplicates included), as passed to `report_acc`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredMainRow {
    pub index: i64,
    pub category: Option<String>,
    #[serde(rename = "l2-category")]
    pub l2_category: Option<String>,
    pub split: Option<String>,
    pub hit: u8,
}

/// Per-row extraction details (sorted order).
#[derive(Debug, Clone, Serialize)]
pub struct RowDetail {
    pub index: PyIndex,
    pub g_index: i64,
    pub prediction_as_loaded: String,
    pub choices: BTreeMap<String, String>,
    #[serde(rename = "GT")]
    pub gt: String,
    #[serde(serialize_with = "ser_opt_letter")]
    pub extracted: Option<char>,
    #[serde(serialize_with = "ser_opt_letter")]
    pub option_stage: Option<char>,
    #[serde(serialize_with = "ser_opt_letter")]
    pub text_stage: Option<char>,
    #[serde(rename = "match")]
    pub is_match: bool,
}

/// Circular result: the `report_acc` table, group verdicts and the scored main rows.
#[derive(Debug, Clone, Serialize)]
pub struct CircularResult {
    pub acc: AccTable,
    pub groups: BTreeMap<i64, GroupVerdict>,
    pub scored_main_rows: Vec<ScoredMainRow>,
}

/// One vanilla verdict per prediction row.
#[derive(Debug, Clone, Serialize)]
pub struct VanillaRow {
    pub index: PyIndex,
    pub hit: u8,
    /// This row's `eval_vanilla` option: the extracted letter, or `Z` when nothing was found.
    pub opt: String,
    /// `Match Log: {prediction}. ` (or the exact-matching failure text), shared per index.
    pub log: String,
}

/// A vanilla evaluation (`mcq_vanilla_eval` + `report_acc`).
#[derive(Debug, Clone, Serialize)]
pub struct VanillaResult {
    pub acc: AccTable,
    /// Rows in the order evaluated (file order for `PRINT_VANILLA`, sorted for SEEDBench_IMG).
    pub rows: Vec<VanillaRow>,
    /// Indices whose duplicates disagree (their shared verdict depends on thread order).
    pub conflicting_duplicate_indices: Vec<PyIndex>,
}

/// The `PRINT_VANILLA=1` numbers.
#[derive(Debug, Clone, Serialize)]
pub struct VanillaPair {
    pub circ0: VanillaResult,
    pub all: VanillaResult,
}

/// Everything the official MMBench evaluation reports.
#[derive(Debug, Clone, Serialize)]
pub struct MmbenchReport {
    pub extraction: String,
    pub counts: BTreeMap<String, usize>,
    pub circular: CircularResult,
    pub rows: Vec<RowDetail>,
    pub vanilla: VanillaPair,
}

impl MmbenchReport {
    /// Markdown summary: the circular table, then vanilla circ0 / all.
    pub fn to_markdown(&self) -> String {
        format!(
            "### MMBench circular ({})\n\n{}\n### Vanilla circ0\n\n{}\n### Vanilla all\n\n{}",
            self.extraction,
            self.circular.acc.to_markdown(),
            self.vanilla.circ0.acc.to_markdown(),
            self.vanilla.all.acc.to_markdown()
        )
    }
}

/// `prefetch_circular_group` followed by the exact-matching fill-in of `mcq_circular_eval`.
/// `rows` are the group's rows in order.
pub fn circular_group_verdict(rows: &[&PredRow]) -> GroupVerdict {
    verdict_of(rows.iter().map(|r| {
        (
            r.inference.extracted,
            r.gt.matches(r.inference.extracted),
            r.gt.text.as_str(),
            r.prediction.as_str(),
        )
    }))
}

/// [`circular_group_verdict`] from per-row details (e.g. to try other orders of duplicated rows).
pub fn group_verdict_from_details(rows: &[&RowDetail]) -> GroupVerdict {
    verdict_of(rows.iter().map(|r| {
        (
            r.extracted,
            r.is_match,
            r.gt.as_str(),
            r.prediction_as_loaded.as_str(),
        )
    }))
}

fn verdict_of<'a>(
    rows: impl Iterator<Item = (Option<char>, bool, &'a str, &'a str)>,
) -> GroupVerdict {
    let mut all_match = true;
    for (i, (pred, matched, gt, prediction)) in rows.enumerate() {
        if let Some(p) = pred {
            if !matched {
                return GroupVerdict {
                    hit: 0,
                    log: format!("Failed in Prefetching Rolling {i}: Answer is {gt}, Prediction is {prediction}, Pre-fetched is {p}. "),
                };
            }
        }
        all_match &= matched;
    }
    if all_match {
        GroupVerdict {
            hit: 1,
            log: "Succeed During Pre-fetching".into(),
        }
    } else {
        GroupVerdict {
            hit: 0,
            log: "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."
                .into(),
        }
    }
}

fn idx_int(k: &PyIndex) -> Option<i64> {
    match k {
        PyIndex::Int(v) => Some(*v),
        PyIndex::Str(_) => None,
    }
}

fn column_cells<'a>(
    t: &'a Table,
    col: Option<usize>,
    rows: impl Iterator<Item = usize>,
) -> Option<GroupColumn<'a>> {
    let c = col?;
    Some(rows.map(|r| t.raw(r, c)).collect())
}

fn vanilla_eval(
    t: &Table,
    rows: &[&PredRow],
    cols: &HashMap<String, usize>,
    policy: &DuplicatePolicy,
) -> Result<VanillaResult, EvalError> {
    // eval_vanilla per row; then one verdict (and log) per index.
    let row_res: Vec<(u8, String)> = rows
        .iter()
        .map(|r| {
            let hit = u8::from(r.gt.matches(Some(r.inference.extracted.unwrap_or('Z'))));
            let log = match r.inference.extracted {
                Some(_) => format!("Match Log: {}. ", r.prediction),
                None => "Match Log: Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy.. "
                    .to_string(),
            };
            (hit, log)
        })
        .collect();
    // index -> (first row, last row, duplicates disagree)
    let mut per_index: HashMap<&PyIndex, (usize, usize, bool)> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        per_index
            .entry(&r.index)
            .and_modify(|e| {
                e.2 |= row_res[e.1].0 != row_res[i].0;
                e.1 = i;
            })
            .or_insert((i, i, false));
    }
    let verdict = |idx: &PyIndex| -> (u8, &str) {
        let (first, last, _) = per_index[idx];
        let pick = |i: usize| (row_res[i].0, row_res[i].1.as_str());
        match policy {
            DuplicatePolicy::LastWins => pick(last),
            DuplicatePolicy::FirstWins => pick(first),
            DuplicatePolicy::Verdicts(m) => match (idx, idx_int(idx).and_then(|i| m.get(&i))) {
                (_, Some(&h)) => {
                    // the log of the latest row carrying that verdict
                    let row = (first..=last)
                        .rev()
                        .find(|&i| rows[i].index == *idx && row_res[i].0 == h);
                    (
                        h,
                        row.map(|i| row_res[i].1.as_str())
                            .unwrap_or(row_res[last].1.as_str()),
                    )
                }
                _ => pick(last),
            },
        }
    };
    let picked: Vec<(u8, &str)> = rows.iter().map(|r| verdict(&r.index)).collect();
    let hits: Vec<u8> = picked.iter().map(|p| p.0).collect();
    let mut conflicting: Vec<PyIndex> = per_index
        .iter()
        .filter(|(_, v)| v.2)
        .map(|(k, _)| (*k).clone())
        .collect();
    conflicting.sort();
    let file_rows = || rows.iter().map(|r| r.file_row);
    let split = column_cells(t, cols.get("split").copied(), file_rows());
    let l2 = column_cells(t, cols.get("l2-category").copied(), file_rows());
    let cat = column_cells(t, cols.get("category").copied(), file_rows());
    let acc = report_acc(&hits, split.as_ref(), l2.as_ref(), cat.as_ref())
        .map_err(|m| file_err(&t.source, m))?;
    Ok(VanillaResult {
        acc,
        rows: rows
            .iter()
            .zip(&picked)
            .map(|(r, &(hit, log))| VanillaRow {
                index: r.index.clone(),
                hit,
                opt: r.inference.extracted.unwrap_or('Z').to_string(),
                log: log.to_string(),
            })
            .collect(),
        conflicting_duplicate_indices: conflicting,
    })
}

/// Scores an MMBench-style circular evaluation from the dataset TSV and the prediction TSV.
pub fn score_mmbench(
    dataset_tsv: &Path,
    predictions_tsv: &Path,
    opts: &McqOptions,
) -> Result<MmbenchReport, EvalError> {
    let ds = McqDataset::load(dataset_tsv)?;
    let preds = read_tsv(predictions_tsv)?;
    score_mmbench_tables(&ds, preds, opts)
}

/// [`score_mmbench`] on already loaded inputs.
pub fn score_mmbench_tables(
    ds: &McqDataset,
    preds: Table,
    opts: &McqOptions,
) -> Result<MmbenchReport, EvalError> {
    for (i, k) in ds.index.iter().enumerate() {
        if let PyIndex::Str(s) = k {
            return Err(row_err(
                &ds.table,
                ds.rows[i],
                format!("dataset index {s:?} is not an int (istype assertion)"),
            ));
        }
    }
    let p = prepare(ds, preds, true, true, &opts.matching)?;
    let t = &p.table;
    let as_int = |k: &PyIndex| match k {
        PyIndex::Int(v) => *v,
        PyIndex::Str(_) => unreachable!("circular indices are ints"),
    };
    // g_index: the file's column if present, else int(index % 1e6).
    let g_col = p.cols.get("g_index").copied();
    let mut g_index = Vec::with_capacity(p.rows.len());
    for r in &p.rows {
        let g = match g_col {
            Some(c) => py_int(t, r.file_row, c)
                .ok_or_else(|| row_err(t, r.file_row, "g_index is not an integer"))?,
            None => (as_int(&r.index) as f64).rem_euclid(1e6) as i64,
        };
        g_index.push(g);
    }
    let mut members: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, &g) in g_index.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mains: Vec<usize> = (0..p.rows.len())
        .filter(|&i| as_int(&p.rows[i].index) == g_index[i])
        .collect();
    let mut groups: BTreeMap<i64, GroupVerdict> = BTreeMap::new();
    for &m in &mains {
        let g = as_int(&p.rows[m].index);
        groups.entry(g).or_insert_with(|| {
            let rows: Vec<&PredRow> = members[&g].iter().map(|&i| &p.rows[i]).collect();
            circular_group_verdict(&rows)
        });
    }
    let hits: Vec<u8> = mains
        .iter()
        .map(|&m| groups[&as_int(&p.rows[m].index)].hit)
        .collect();
    let main_file_rows = || mains.iter().map(|&m| p.rows[m].file_row);
    let split = column_cells(t, p.cols.get("split").copied(), main_file_rows());
    let l2 = column_cells(t, p.cols.get("l2-category").copied(), main_file_rows());
    let cat = column_cells(t, p.cols.get("category").copied(), main_file_rows());
    let acc = report_acc(&hits, split.as_ref(), l2.as_ref(), cat.as_ref())
        .map_err(|m| file_err(&t.source, m))?;
    let cell = |r: usize, name: &str| {
        p.cols
            .get(name)
            .filter(|&&c| !t.is_na(r, c))
            .map(|&c| t.py_str(r, c))
    };
    let scored_main_rows = mains
        .iter()
        .zip(&hits)
        .map(|(&m, &hit)| {
            let r = p.rows[m].file_row;
            ScoredMainRow {
                index: as_int(&p.rows[m].index),
                category: cell(r, "category"),
                l2_category: cell(r, "l2-category"),
                split: cell(r, "split"),
                hit,
            }
        })
        .collect();
    let rows: Vec<RowDetail> = p
        .rows
        .iter()
        .zip(&g_index)
        .map(|(r, &g)| RowDetail {
            index: r.index.clone(),
            g_index: g,
            prediction_as_loaded: r.prediction.clone(),
            choices: r
                .choices
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            gt: r.gt.text.clone(),
            extracted: r.inference.extracted,
            option_stage: r.inference.option_stage,
            text_stage: r.inference.text_stage,
            is_match: r.gt.matches(r.inference.extracted),
        })
        .collect();

    // PRINT_VANILLA: the prediction file re-read in file order, without lowercasing the columns.
    let file_order = {
        let mut v: Vec<&PredRow> = p.rows.iter().collect();
        v.sort_by_key(|r| r.file_row);
        v
    };
    let raw_cols: HashMap<String, usize> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect();
    let circ0_rows: Vec<&PredRow> = match raw_cols.get("g_index") {
        Some(&c) => file_order
            .iter()
            .filter(|r| py_int(t, r.file_row, c) == Some(as_int(&r.index)))
            .copied()
            .collect(),
        None => file_order
            .iter()
            .filter(|r| as_int(&r.index) as f64 <= 1e6)
            .copied()
            .collect(),
    };
    let vanilla = VanillaPair {
        circ0: vanilla_eval(t, &circ0_rows, &raw_cols, &opts.duplicates)?,
        all: vanilla_eval(t, &file_order, &raw_cols, &opts.duplicates)?,
    };

    let mut counts = BTreeMap::new();
    counts.insert("dataset_rows".to_string(), ds.rows.len());
    counts.insert("prediction_rows".to_string(), p.rows.len());
    counts.insert(
        "main_questions_in_dataset".to_string(),
        ds.index
            .iter()
            .filter(|k| matches!(k, PyIndex::Int(v) if v.rem_euclid(1_000_000) == *v))
            .count(),
    );
    counts.insert(
        "scored_main_rows (duplicates counted)".to_string(),
        mains.len(),
    );
    counts.insert("distinct_groups".to_string(), groups.len());
    counts.insert("scored_groups".to_string(), groups.len());
    Ok(MmbenchReport {
        extraction: opts.matching.version.name().to_string(),
        counts,
        circular: CircularResult {
            acc,
            groups,
            scored_main_rows,
        },
        rows,
        vanilla,
    })
}

/// Result of a non-circular MCQ evaluation (SEEDBench_IMG and other `mcq_vanilla_eval` datasets).
#[derive(Debug, Clone, Serialize)]
pub struct VanillaMcqReport {
    pub extraction: String,
    pub result: VanillaResult,
    /// Per-row extraction details (sorted order).
    pub rows: Vec<RowDetail>,
}

/// `ImageMCQDataset.evaluate` for a non-circular dataset (e.g. `SEEDBench_IMG`) with
/// `exact_matching`: sort by index, `str()` predictions, per row `can_infer` or `'Z'`,
/// `hit = opt == GT`, one verdict per index (see [`DuplicatePolicy`]), then `report_acc`
/// (fractions; `split = 'none'` without a split column).
pub fn score_vanilla_mcq(
    dataset_tsv: &Path,
    predictions_tsv: &Path,
    opts: &McqOptions,
) -> Result<VanillaMcqReport, EvalError> {
    let ds = McqDataset::load(dataset_tsv)?;
    let preds = read_tsv(predictions_tsv)?;
    score_vanilla_mcq_tables(&ds, preds, opts)
}

/// [`score_vanilla_mcq`] on already loaded inputs.
pub fn score_vanilla_mcq_tables(
    ds: &McqDataset,
    preds: Table,
    opts: &McqOptions,
) -> Result<VanillaMcqReport, EvalError> {
    let p = prepare(ds, preds, false, true, &opts.matching)?;
    let refs: Vec<&PredRow> = p.rows.iter().collect();
    let result = vanilla_eval(&p.table, &refs, &p.cols, &opts.duplicates)?;
    let rows = p
        .rows
        .iter()
        .map(|r| RowDetail {
            index: r.index.clone(),
            g_index: match r.index {
                PyIndex::Int(v) => v.rem_euclid(1_000_000),
                PyIndex::Str(_) => 0,
            },
            prediction_as_loaded: r.prediction.clone(),
            choices: r
                .choices
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            gt: r.gt.text.clone(),
            extracted: r.inference.extracted,
            option_stage: r.inference.option_stage,
            text_stage: r.inference.text_stage,
            is_match: r.gt.matches(r.inference.extracted),
        })
        .collect();
    Ok(VanillaMcqReport {
        extraction: opts.matching.version.name().to_string(),
        result,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsv::parse_tsv;

    #[test]
    fn report_acc_orders_and_abbreviates() {
        let cat = vec![Some("b"), Some("OCR"), Some("b")];
        let l2 = vec![
            Some("logic_reasoning"),
            Some("coarse_perception"),
            Some("logic_reasoning"),
        ];
        let acc = report_acc(&[1, 0, 0], None, Some(&l2), Some(&cat)).unwrap();
        assert_eq!(acc.columns, ["split", "Overall", "CP", "LR", "OCR", "b"]);
        assert_eq!(acc.get(0, "split"), Some(&AccValue::Text("none".into())));
        assert_eq!(acc.get(0, "b"), Some(&AccValue::Num(0.5)));
        assert_eq!(acc.get(0, "CP"), Some(&AccValue::Num(0.0)));
    }

    #[test]
    fn image_reference_must_exist() {
        let long = "x".repeat(65);
        let t = parse_tsv(&format!(
            "index\tquestion\tanswer\timage\n1\tq\tA\t{long}\n1000001\tq\tB\t1\n2\tq\tA\t7\n"
        ))
        .unwrap();
        let e = McqDataset::from_table(t).unwrap_err().to_string();
        assert!(e.contains(":4:"), "{e}");
    }
}
