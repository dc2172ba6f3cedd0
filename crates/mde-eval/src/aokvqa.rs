//! A-OKVQA: loader for `aokvqa_v1p0_<split>.json` (+ COCO image paths) and a scorer identical
//! to the official `evaluation/eval_predictions.py` (allenai/aokvqa @ 83786de0, CLI path,
//! `strict=False`).
//!
//! Official rules reproduced exactly (SPEC §4):
//! - MC: over all questions, `float(pred == choices[correct_choice_idx])` with Python `==` (exact,
//!   case-sensitive; a number or null never equals a string); a missing prediction scores 0.
//! - DA: only questions whose `difficult_direct_answer` is exactly JSON `false`;
//!   `min(1.0, num_match / 3.0)` where `num_match` counts exact matches among the 10 direct
//!   answers, no normalisation of any kind; a missing prediction scores 0.
//! - `acc = sum(acc_i) / len(acc_i) * 100`, summed left to right in dataset order.
//!
//! ```no_run
//! use mde_eval::aokvqa::{load_aokvqa, read_predictions, score};
//! use std::path::Path;
//! let ds = load_aokvqa(Path::new("aokvqa_v1p0_val.json")).unwrap();
//! let preds = read_predictions(Path::new("predictions_val.json")).unwrap();
//! let r = score(&ds, &preds, "predictions_val.json").unwrap();
//! print!("{}", r.stdout); // "predictions_val.json MC 48.148148148148145\n..."
//! ```
use crate::error::EvalError;
use crate::report::{markdown_table, py_float_repr};
use mde_core::input_report::InputIssues;
use mde_core::records::{BenchItem, ImageRef};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One A-OKVQA question (`load_aokvqa` format). Answer fields are optional so the test split
/// (no answers) loads; the scorer checks what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AokvqaQuestion {
    #[serde(default)]
    pub split: String,
    pub image_id: u64,
    pub question_id: String,
    pub question: String,
    #[serde(default)]
    pub choices: Vec<String>,
    /// Kept as JSON so Python's indexing rules (negative indices) can be mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_choice_idx: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_answers: Option<Vec<Value>>,
    /// Kept as JSON: only the literal `false` puts a question in the DA set (`is False`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficult_direct_answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rationales: Vec<String>,
}

impl AokvqaQuestion {
    /// The correct choice, following Python's list indexing (`-1` is the last choice).
    pub fn correct_choice(&self) -> Result<&str, EvalError> {
        let qerr = |msg: String| EvalError::Question {
            question_id: self.question_id.clone(),
            msg,
        };
        let idx = self
            .correct_choice_idx
            .as_ref()
            .ok_or_else(|| qerr("no correct_choice_idx (KeyError)".into()))?;
        let i = match idx {
            Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
            Value::Number(n) if n.is_u64() => {
                i64::try_from(n.as_u64().unwrap_or_default()).unwrap_or(i64::MAX)
            }
            Value::Bool(b) => *b as i64,
            other => {
                return Err(qerr(format!(
                    "correct_choice_idx must be an integer, found {other}"
                )))
            }
        };
        let n = self.choices.len() as i64;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(qerr(format!(
                "correct_choice_idx {i} out of range for {n} choices (IndexError)"
            )));
        }
        Ok(&self.choices[j as usize])
    }
}

/// Reads `aokvqa_<version>_<split>.json` (a JSON list of questions). An empty list is an error
/// naming the file ("contains no questions"): scoring it would fail later with a division by zero
/// that looks like a problem of the prediction file.
pub fn load_aokvqa(path: &Path) -> Result<Vec<AokvqaQuestion>, EvalError> {
    let qs: Vec<AokvqaQuestion> = crate::error::read_json_file(path)?;
    if qs.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: contains no questions",
            path.display()
        )));
    }
    Ok(qs)
}

/// Checks, before any inference, that every question carries what scoring needs (`mde eval`
/// scores MC and DA): a valid `correct_choice_idx`, `difficult_direct_answer`, and
/// `direct_answers` for the DA questions. The test split (no answers) fails here, naming the file,
/// the question and the field.
pub fn check_scorable(path: &Path, questions: &[AokvqaQuestion]) -> Result<(), EvalError> {
    let err = |q: &AokvqaQuestion, msg: String| {
        EvalError::Invalid(format!(
            "{}: question {}: {msg} (needed for scoring)",
            path.display(),
            q.question_id
        ))
    };
    for q in questions {
        q.correct_choice().map_err(|e| match e {
            EvalError::Question { msg, .. } => err(q, msg),
            other => other,
        })?;
        match &q.difficult_direct_answer {
            None => return Err(err(q, "missing field `difficult_direct_answer`".into())),
            Some(v) if *v == Value::Bool(false) && q.direct_answers.is_none() => {
                return Err(err(q, "missing field `direct_answers`".into()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `load_aokvqa(aokvqa_dir, split, version)`: the file `aokvqa_{version}_{split}.json`.
pub fn load_aokvqa_split(
    dir: &Path,
    split: &str,
    version: &str,
) -> Result<Vec<AokvqaQuestion>, EvalError> {
    if !["train", "val", "test", "test_w_ans"].contains(&split) {
        return Err(EvalError::Invalid(format!(
            "unknown split {split:?} (train, val, test, test_w_ans)"
        )));
    }
    load_aokvqa(&dir.join(format!("aokvqa_{version}_{split}.json")))
}

/// `get_coco_path(split, image_id, coco_dir)`, relative to the COCO root:
/// `<split>2017/<image_id:012>.jpg`.
pub fn coco_rel_path(split: &str, image_id: u64) -> String {
    format!("{split}2017/{image_id:012}.jpg")
}

/// Converts questions into [`BenchItem`]s. The image is the COCO file relative to the COCO
/// root (resolve it with [`crate::paths::resolve_in_root`]); the COCO split is the question's
/// `split` (`val` → `val2017`), `test_w_ans` questions use `test2017`.
pub fn to_bench_items(questions: &[AokvqaQuestion]) -> Vec<BenchItem> {
    questions
        .iter()
        .map(|q| {
            let coco_split = match q.split.as_str() {
                "" => "val",
                "test_w_ans" => "test",
                s => s,
            };
            let mut extra = serde_json::Map::new();
            extra.insert("image_id".into(), q.image_id.into());
            if let Some(d) = &q.difficult_direct_answer {
                extra.insert("difficult_direct_answer".into(), d.clone());
            }
            if !q.rationales.is_empty() {
                extra.insert("rationales".into(), q.rationales.clone().into());
            }
            BenchItem {
                id: q.question_id.clone(),
                benchmark: "aokvqa".into(),
                question: q.question.clone(),
                choices: q.choices.clone(),
                answer_idx: q
                    .correct_choice()
                    .ok()
                    .and_then(|c| q.choices.iter().position(|x| x == c)),
                answers: q
                    .direct_answers
                    .iter()
                    .flatten()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect(),
                image: ImageRef::Path {
                    path: coco_rel_path(coco_split, q.image_id),
                },
                extra,
                ..Default::default()
            }
        })
        .collect()
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// One entry of `predictions_<split>.json`. A key that is present with `null` is `Some(Null)`
/// (the official script treats it as a prediction that matches nothing); an absent key is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AokvqaPrediction {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub multiple_choice: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_answer: Option<Value>,
}

impl AokvqaPrediction {
    /// A prediction with string answers.
    pub fn new(multiple_choice: Option<String>, direct_answer: Option<String>) -> Self {
        AokvqaPrediction {
            multiple_choice: multiple_choice.map(Value::String),
            direct_answer: direct_answer.map(Value::String),
        }
    }
}

/// `{question_id: {"multiple_choice": ..., "direct_answer": ...}}`; a duplicated key keeps the
/// last value, as Python's `json.load` does.
pub type AokvqaPredictions = BTreeMap<String, AokvqaPrediction>;

/// Reads `predictions_<split>.json`. Every value must be an object (the official script calls
/// `.keys()` on it).
pub fn read_predictions(path: &Path) -> Result<AokvqaPredictions, EvalError> {
    crate::error::read_json_file(path)
}

/// Writes `predictions_<split>.json` atomically.
pub fn write_predictions(path: &Path, preds: &AokvqaPredictions) -> Result<(), EvalError> {
    mde_core::io::write_json(path, preds).map_err(|e| EvalError::Invalid(e.to_string()))
}

/// Python `==` between two JSON values (`1 == 1.0`, `True == 1`; strings only equal strings).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    fn num(v: &Value) -> Option<f64> {
        match v {
            Value::Bool(b) => Some(*b as i64 as f64),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        (Value::Number(x), Value::Number(y)) if x.is_i64() && y.is_i64() => {
            x.as_i64() == y.as_i64()
        }
        (Value::Number(x), Value::Number(y)) if x.is_u64() && y.is_u64() => {
            x.as_u64() == y.as_u64()
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// Per-question outcome (the fixture's `items[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AokvqaItem {
    pub question_id: String,
    pub mc_prediction_present: bool,
    /// `acc_i * 100` of the MC setting (0 without a prediction).
    pub mc_item_acc_x100: f64,
    pub da_prediction_present: bool,
    /// False for questions excluded from DA (`difficult_direct_answer` not exactly `false`).
    pub da_included: bool,
    /// Number of direct answers equal to the prediction; `None` without a prediction or when
    /// excluded.
    pub da_num_match: Option<u64>,
    /// `acc_i * 100` of the DA setting; `None` when excluded.
    pub da_item_acc_x100: Option<f64>,
}

/// The result of `eval_predictions.py` on one prediction file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AokvqaReport {
    /// MC accuracy x100; `None` when no prediction has a `multiple_choice` key (not evaluated).
    #[serde(rename = "MC")]
    pub mc: Option<f64>,
    /// DA accuracy x100; `None` when no prediction has a `direct_answer` key.
    #[serde(rename = "DA")]
    pub da: Option<f64>,
    /// The printed text, `<file> MC <repr>` / `<file> DA <repr>` lines.
    pub stdout: String,
    pub questions: usize,
    pub da_questions: usize,
    pub items: Vec<AokvqaItem>,
    /// Prediction keys that are not question ids of the dataset (the official script ignores
    /// them; the scores do not depend on them). Details in `input_issues.unknown_ids`.
    #[serde(default)]
    pub unknown_prediction_ids: usize,
    /// What was tolerated in the prediction file (`file` is the name given to [`score`]).
    #[serde(default)]
    pub input_issues: InputIssues,
}

impl AokvqaReport {
    /// Markdown summary.
    pub fn to_markdown(&self) -> String {
        let fmt = |v: Option<f64>| {
            v.map(py_float_repr)
                .unwrap_or_else(|| "not evaluated".into())
        };
        let mut s = String::from("## A-OKVQA (official eval_predictions.py)\n\n");
        s.push_str(&markdown_table(
            &["setting", "accuracy", "questions"],
            &[
                vec!["MC".into(), fmt(self.mc), self.questions.to_string()],
                vec!["DA".into(), fmt(self.da), self.da_questions.to_string()],
            ],
        ));
        s
    }
}

/// The dataset as the official dict: insertion order of first appearance, last object wins.
fn dedup_dataset(dataset: &[AokvqaQuestion]) -> Vec<&AokvqaQuestion> {
    let mut pos: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<&AokvqaQuestion> = Vec::new();
    for q in dataset {
        match pos.get(q.question_id.as_str()) {
            Some(&i) => out[i] = q,
            None => {
                pos.insert(&q.question_id, out.len());
                out.push(q);
            }
        }
    }
    out
}

/// Whether the question is in the DA set (`v['difficult_direct_answer'] is False`).
fn in_da_set(q: &AokvqaQuestion) -> Result<bool, EvalError> {
    match &q.difficult_direct_answer {
        None => Err(EvalError::Question {
            question_id: q.question_id.clone(),
            msg: "no difficult_direct_answer (KeyError in the DA setting)".into(),
        }),
        Some(v) => Ok(*v == Value::Bool(false)),
    }
}

/// `acc_i` of one question in the MC setting.
fn mc_acc(q: &AokvqaQuestion, pred: Option<&Value>) -> Result<f64, EvalError> {
    match pred {
        None => Ok(0.0),
        Some(p) => Ok(
            if py_eq(p, &Value::String(q.correct_choice()?.to_string())) {
                1.0
            } else {
                0.0
            },
        ),
    }
}

/// `(num_match, acc_i)` of one question in the DA setting.
fn da_acc(q: &AokvqaQuestion, pred: Option<&Value>) -> Result<(Option<u64>, f64), EvalError> {
    let Some(p) = pred else {
        return Ok((None, 0.0));
    };
    let das = q
        .direct_answers
        .as_ref()
        .ok_or_else(|| EvalError::Question {
            question_id: q.question_id.clone(),
            msg: "no direct_answers (KeyError)".into(),
        })?;
    let num_match = das.iter().filter(|da| py_eq(p, da)).count() as u64;
    Ok((Some(num_match), f64::min(1.0, num_match as f64 / 3.0)))
}

/// `eval_aokvqa(dataset, preds, multiple_choice, strict=False)`: accuracy x100. Errors where the
/// official code raises (empty set → ZeroDivisionError, missing keys → KeyError).
pub fn eval_aokvqa(
    dataset: &[AokvqaQuestion],
    preds: &HashMap<String, Value>,
    multiple_choice: bool,
) -> Result<f64, EvalError> {
    let ds = dedup_dataset(dataset);
    let mut acc: Vec<f64> = Vec::new();
    for q in ds {
        if !multiple_choice && !in_da_set(q)? {
            continue;
        }
        let pred = preds.get(&q.question_id);
        acc.push(if multiple_choice {
            mc_acc(q, pred)?
        } else {
            da_acc(q, pred)?.1
        });
    }
    mean_x100(&acc).ok_or_else(|| {
        EvalError::Invalid(format!(
            "no question to score in the {} setting (ZeroDivisionError in the official code)",
            if multiple_choice { "MC" } else { "DA" }
        ))
    })
}

/// `sum(acc) / len(acc) * 100` with Python's left-to-right float sum.
fn mean_x100(acc: &[f64]) -> Option<f64> {
    if acc.is_empty() {
        return None;
    }
    let mut s = 0.0f64;
    for a in acc {
        s += a;
    }
    Some(s / acc.len() as f64 * 100.0)
}

/// The CLI of `eval_predictions.py` on one prediction file: MC if any prediction has a
/// `multiple_choice` key, DA if any has a `direct_answer` key, plus per-question items.
/// `prediction_file` is the name printed at the start of each line.
pub fn score(
    dataset: &[AokvqaQuestion],
    predictions: &AokvqaPredictions,
    prediction_file: &str,
) -> Result<AokvqaReport, EvalError> {
    let mc_preds: HashMap<String, Value> = predictions
        .iter()
        .filter_map(|(k, p)| p.multiple_choice.clone().map(|v| (k.clone(), v)))
        .collect();
    let da_preds: HashMap<String, Value> = predictions
        .iter()
        .filter_map(|(k, p)| p.direct_answer.clone().map(|v| (k.clone(), v)))
        .collect();
    let mut stdout = String::new();
    let mc = if mc_preds.is_empty() {
        None
    } else {
        Some(eval_aokvqa(dataset, &mc_preds, true)?)
    };
    if let Some(v) = mc {
        stdout.push_str(&format!("{prediction_file} MC {}\n", py_float_repr(v)));
    }
    let da = if da_preds.is_empty() {
        None
    } else {
        Some(eval_aokvqa(dataset, &da_preds, false)?)
    };
    if let Some(v) = da {
        stdout.push_str(&format!("{prediction_file} DA {}\n", py_float_repr(v)));
    }

    let mut items = Vec::with_capacity(dataset.len());
    let mut da_questions = 0;
    let ds = dedup_dataset(dataset);
    for q in &ds {
        let mcp = mc_preds.get(&q.question_id);
        let dap = da_preds.get(&q.question_id);
        let mc_x = mean_x100(&[mc_acc(q, mcp)?]).unwrap_or(0.0);
        // Items for DA only need difficult_direct_answer when DA is evaluated at all.
        let included = match in_da_set(q) {
            Ok(b) => b,
            Err(e) if da.is_some() => return Err(e),
            Err(_) => false,
        };
        let (num, da_x) = if included {
            da_questions += 1;
            let (n, a) = da_acc(q, dap)?;
            (n, mean_x100(&[a]))
        } else {
            (None, None)
        };
        items.push(AokvqaItem {
            question_id: q.question_id.clone(),
            mc_prediction_present: mcp.is_some(),
            mc_item_acc_x100: mc_x,
            da_prediction_present: dap.is_some(),
            da_included: included,
            da_num_match: num,
            da_item_acc_x100: da_x,
        });
    }
    let known: std::collections::HashSet<&str> =
        ds.iter().map(|q| q.question_id.as_str()).collect();
    let mut input_issues = InputIssues::new(prediction_file);
    for k in predictions.keys() {
        if !known.contains(k.as_str()) {
            input_issues.unknown(k.clone());
        }
    }
    Ok(AokvqaReport {
        mc,
        da,
        stdout,
        questions: ds.len(),
        da_questions,
        items,
        unknown_prediction_ids: input_issues.unknown_ids.count,
        input_issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(id: &str, difficult: Value) -> AokvqaQuestion {
        serde_json::from_value(json!({
            "split": "val", "image_id": 7, "question_id": id, "question": "?",
            "choices": ["a", "b", "c", "2"], "correct_choice_idx": 3,
            "direct_answers": ["2","2","2","two","cab","cab","x","x","x","x"],
            "difficult_direct_answer": difficult, "rationales": []
        }))
        .unwrap()
    }

    #[test]
    fn no_normalisation_and_identity_false() {
        let ds = vec![
            q("q1", json!(false)),
            q("q2", json!(0)),
            q("q3", json!(false)),
        ];
        let mut preds = AokvqaPredictions::new();
        preds.insert(
            "q1".into(),
            serde_json::from_value(json!({"multiple_choice": "2", "direct_answer": "cab"}))
                .unwrap(),
        );
        preds.insert(
            "q2".into(),
            serde_json::from_value(json!({"multiple_choice": 2, "direct_answer": "2"})).unwrap(),
        );
        preds.insert(
            "q3".into(),
            serde_json::from_value(json!({"direct_answer": null})).unwrap(),
        );
        let r = score(&ds, &preds, "p.json").unwrap();
        // MC: q1 right, q2 (int 2) wrong, q3 missing.
        assert_eq!(r.mc, Some(1.0 / 3.0 * 100.0));
        // DA: q2 excluded (0 is not `False`); q1: 2 matches -> 2/3; q3: null matches nothing.
        assert_eq!(r.da, Some((0.0 + 2.0 / 3.0 + 0.0) / 2.0 * 100.0));
        assert!(r.items[2].da_prediction_present);
        assert_eq!(r.items[2].da_num_match, Some(0));
        assert_eq!(coco_rel_path("val", 42), "val2017/000000000042.jpg");
    }
}
