//! VQA accuracy (VQAv2, OK-VQA and every set in the VQA annotation format), identical to the
//! official `vqaEval.py` of the VQA API (GT-Vision-Lab/VQA, `PythonEvaluationTools`, at its
//! latest commit a013f00 of 2021-03-11) or to LAVIS's port of it (what LAVIS-based models such as
//! MiniGPT-4 report), quirks included.
//!
//! Per question the ten human answers are compared with the prediction: for each human answer
//! left out in turn, the accuracy is `min(1, #other humans who gave the prediction / 3)`, and
//! the question scores the mean of the ten. The set scores the mean over questions, per question
//! type and per answer type, `round(100 * x, 2)` as Python rounds. The normalisation
//! ([`normalize_answer`]: newlines and tabs to spaces, stripped, punctuation, lower case, number
//! words to digits, articles dropped, contractions restored) is applied differently by the two
//! codes ([`VqaVariant`]):
//! - `Official`: the human answers and the prediction are only stripped when the humans agree
//!   (all ten answers the same); otherwise both are fully normalised. So a unanimous "cat" does
//!   not match "Cat" or "cat.".
//! - `Lavis`: the prediction is always fully normalised; the human answers get the punctuation
//!   step only, and only when they disagree (they are not stripped).
//!
//! Both share the official regular expressions' behaviour: a period is removed unless a digit
//! follows it, at most 32 of them per answer (the code passes `re.UNICODE`, 32, as the `count` of
//! `re.sub`); a punctuation mark is deleted, not replaced by a space, when it is next to a space
//! anywhere in the answer or when the answer contains a digit-comma-digit.
//!
//! ```
//! use mde_eval::vqa::normalize_answer;
//! assert_eq!(normalize_answer("Two dogs."), "2 dogs");
//! assert_eq!(normalize_answer("the t-shirt"), "t shirt");
//! assert_eq!(normalize_answer("dont"), "don't");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use mde_core::io::round_to;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EvalError;

/// Which `vqaEval.py` to reproduce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VqaVariant {
    /// GT-Vision-Lab/VQA's `vqaEval.py` at a013f00 (the VQA challenge's code).
    #[default]
    Official,
    /// LAVIS's `lavis/common/vqa_tools/vqa_eval.py` (salesforce-lavis 1.0.2).
    Lavis,
}

impl std::str::FromStr for VqaVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "official" => Ok(VqaVariant::Official),
            "lavis" => Ok(VqaVariant::Lavis),
            o => Err(format!(
                "unknown VQA scorer variant {o:?} (official, lavis)"
            )),
        }
    }
}

/// The punctuation marks of both codes.
const PUNCT: &[char] = &[
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// The contraction table of both codes (identical), keys without apostrophes mapped to the
/// spelling with them, as the files have it.
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// Python's `str.isspace` (what `split()` and `strip()` split on): Rust's White_Space plus the
/// four ASCII separators `\x1c`-`\x1f`.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `re.search(r"(\d)(,)(\d)", s)` (Python's `\d` is any Unicode decimal digit).
fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(3)
        .any(|w| is_py_digit(w[0]) && w[1] == ',' && is_py_digit(w[2]))
}

/// Python's `\d` in a str pattern: a Unicode decimal digit (category Nd). `char::is_numeric`
/// also takes No/Nl (superscripts, Roman numerals); those are excluded here by requiring a
/// digit value (`to_digit` covers ASCII; the others are Nd when they are numeric and alphanumeric
/// in the decimal sense, which is approximated by `is_numeric` without the common No forms).
fn is_py_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    // Non-ASCII Nd digits: numeric, and not one of the superscript/subscript/fraction/Roman
    // forms (categories No, Nl) that `is_numeric` also accepts.
    c.is_numeric()
        && !matches!(c,
            '\u{00B2}' | '\u{00B3}' | '\u{00B9}' | '\u{00BC}'..='\u{00BE}'
            | '\u{2070}'..='\u{2079}' | '\u{2080}'..='\u{2089}' | '\u{2150}'..='\u{218B}'
            | '\u{2460}'..='\u{24FF}' | '\u{2776}'..='\u{2793}')
}

/// The official `processPunctuation`.
pub fn process_punctuation(text: &str) -> String {
    let comma_digits = has_digit_comma_digit(text);
    let mut out = text.to_string();
    for &p in PUNCT {
        let spaced = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = if spaced || comma_digits {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    // periodStrip.sub("", out, re.UNICODE): "(?!<=\d)(\.)(?!\d)" removes a period that no digit
    // follows (the first group is a lookahead that can never match before a period), at most
    // 32 times (re.UNICODE == 32 lands in `count`).
    let chars: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' && removed < 32 && !chars.get(i + 1).is_some_and(|&n| is_py_digit(n)) {
            removed += 1;
            continue;
        }
        res.push(c);
    }
    res
}

/// The official `processDigitArticle`: lower case, number words to digits, articles dropped,
/// contractions restored, words joined by single spaces.
pub fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut words: Vec<&str> = Vec::new();
    for w in lower.split(py_space).filter(|w| !w.is_empty()) {
        let w = NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v);
        if !matches!(w, "a" | "an" | "the") {
            words.push(w);
        }
    }
    let words: Vec<&str> = words
        .into_iter()
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// Newlines and tabs to spaces, then Python's `strip()`.
fn strip(answer: &str) -> String {
    answer
        .replace(['\n', '\t'], " ")
        .trim_matches(py_space)
        .to_string()
}

/// The full normalisation: [`strip`], `processPunctuation`, `processDigitArticle`.
pub fn normalize_answer(answer: &str) -> String {
    process_digit_article(&process_punctuation(&strip(answer)))
}

/// One human answer of an annotation, with every field (the official code compares whole
/// answer records when it leaves one out).
#[derive(Debug, Clone, PartialEq)]
struct HumanAnswer {
    answer: String,
    rest: serde_json::Map<String, Value>,
}

/// One annotated question (`annotations[*]` of a VQA annotation file).
#[derive(Debug, Clone)]
pub struct VqaAnnotation {
    pub question_id: i64,
    pub question_type: String,
    pub answer_type: String,
    answers: Vec<HumanAnswer>,
}

impl VqaAnnotation {
    /// The human answers as given.
    pub fn answers(&self) -> Vec<&str> {
        self.answers.iter().map(|a| a.answer.as_str()).collect()
    }
}

/// Reads a VQA annotation file (`{"annotations": [{question_id, question_type, answer_type,
/// answers: [{answer, ...}]}]}`), naming the file and entry in errors.
pub fn read_annotations(path: &Path) -> Result<Vec<VqaAnnotation>, EvalError> {
    let v: Value = crate::error::read_json_file::<Value>(path)?;
    let anns = v
        .get("annotations")
        .and_then(Value::as_array)
        .ok_or_else(|| EvalError::File {
            path: path.into(),
            msg: "expected an object with an `annotations` array (VQA annotation format)".into(),
        })?;
    let mut out = Vec::with_capacity(anns.len());
    for (i, a) in anns.iter().enumerate() {
        let at = |msg: String| EvalError::File {
            path: path.into(),
            msg: format!("annotations[{i}]: {msg}"),
        };
        let qid = a
            .get("question_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| at("no integer question_id".into()))?;
        let s = |k: &str| -> Result<String, EvalError> {
            a.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| at(format!("question {qid}: no string {k}")))
        };
        let answers = a
            .get("answers")
            .and_then(Value::as_array)
            .ok_or_else(|| at(format!("question {qid}: no answers array")))?;
        if answers.is_empty() {
            return Err(at(format!("question {qid}: no human answer")));
        }
        let mut hs = Vec::with_capacity(answers.len());
        for (j, h) in answers.iter().enumerate() {
            let mut rest = h
                .as_object()
                .cloned()
                .ok_or_else(|| at(format!("question {qid}: answers[{j}] is not an object")))?;
            let answer = match rest.remove("answer") {
                Some(Value::String(s)) => s,
                _ => {
                    return Err(at(format!(
                        "question {qid}: answers[{j}] has no string answer"
                    )))
                }
            };
            hs.push(HumanAnswer { answer, rest });
        }
        out.push(VqaAnnotation {
            question_id: qid,
            question_type: s("question_type")?,
            answer_type: s("answer_type")?,
            answers: hs,
        });
    }
    Ok(out)
}

/// One prediction of a VQA results file (`[{"question_id": int, "answer": str}]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaResult {
    pub question_id: i64,
    pub answer: String,
}

/// Reads a VQA results file.
pub fn read_results(path: &Path) -> Result<Vec<VqaResult>, EvalError> {
    let v = crate::error::read_json_file::<Value>(path)?;
    serde_json::from_value(v).map_err(|e| EvalError::File {
        path: path.into(),
        msg: format!("expected a JSON array of {{question_id, answer}}: {e}"),
    })
}

/// The numbers `vqaEval.py` computes (`accuracy` and `evalQA`), rounded as it rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaReport {
    pub variant: VqaVariant,
    pub questions: usize,
    /// `accuracy["overall"]`.
    pub overall: f64,
    /// `accuracy["perQuestionType"]`.
    pub per_question_type: BTreeMap<String, f64>,
    /// `accuracy["perAnswerType"]`.
    pub per_answer_type: BTreeMap<String, f64>,
    /// `evalQA`: question id -> accuracy in percent.
    pub per_question: BTreeMap<i64, f64>,
}

/// Scores `results` against `annotations` as `VQAEval(vqa, vqa.loadRes(...)).evaluate()`:
/// the questions are the annotation file's, in its order (the order of the float sums); a
/// question answered twice is scored with its last answer, as the official index keeps it.
/// Every result must name an annotated question, and every annotated question must be
/// answered (the official `loadRes` asserts both).
pub fn score_vqa(
    annotations: &[VqaAnnotation],
    results: &[VqaResult],
    variant: VqaVariant,
) -> Result<VqaReport, EvalError> {
    let gts: HashMap<i64, &VqaAnnotation> =
        annotations.iter().map(|a| (a.question_id, a)).collect();
    let mut res: HashMap<i64, &str> = HashMap::new();
    for r in results {
        if !gts.contains_key(&r.question_id) {
            return Err(EvalError::Invalid(format!(
                "result for question {} which is not in the annotations (the official loadRes refuses results that do not correspond to the annotation set)",
                r.question_id
            )));
        }
        res.insert(r.question_id, r.answer.as_str());
    }
    if let Some(a) = annotations
        .iter()
        .find(|a| !res.contains_key(&a.question_id))
    {
        return Err(EvalError::Invalid(format!(
            "question {} has no result ({} of {} annotated questions answered; the official loadRes refuses a partial set)",
            a.question_id,
            res.len(),
            gts.len()
        )));
    }
    let mut acc_qa: Vec<f64> = Vec::with_capacity(annotations.len());
    let mut by_qtype: Vec<(String, Vec<f64>)> = Vec::new();
    let mut by_atype: Vec<(String, Vec<f64>)> = Vec::new();
    let mut per_question = BTreeMap::new();
    let push =
        |v: &mut Vec<(String, Vec<f64>)>, k: &str, x: f64| match v.iter_mut().find(|(t, _)| t == k)
        {
            Some((_, xs)) => xs.push(x),
            None => v.push((k.to_string(), vec![x])),
        };
    for gt in annotations {
        let raw = res[&gt.question_id];
        let mut humans = gt.answers.clone();
        let pred = match variant {
            VqaVariant::Official => {
                for h in &mut humans {
                    h.answer = strip(&h.answer);
                }
                let first = humans[0].answer.clone();
                if humans.iter().any(|h| h.answer != first) {
                    for h in &mut humans {
                        h.answer = process_digit_article(&process_punctuation(&h.answer));
                    }
                    normalize_answer(raw)
                } else {
                    strip(raw)
                }
            }
            VqaVariant::Lavis => {
                let first = humans[0].answer.clone();
                if humans.iter().any(|h| h.answer != first) {
                    for h in &mut humans {
                        h.answer = process_punctuation(&h.answer);
                    }
                }
                normalize_answer(raw)
            }
        };
        let mut gt_acc = Vec::with_capacity(humans.len());
        for datum in &humans {
            let matching = humans
                .iter()
                .filter(|h| *h != datum && h.answer == pred)
                .count();
            gt_acc.push((matching as f64 / 3.0).min(1.0));
        }
        let mean = gt_acc.iter().sum::<f64>() / gt_acc.len() as f64;
        acc_qa.push(mean);
        push(&mut by_qtype, &gt.question_type, mean);
        push(&mut by_atype, &gt.answer_type, mean);
        per_question.insert(gt.question_id, round_to(100.0 * mean, 2));
    }
    let pct = |xs: &[f64]| round_to(100.0 * xs.iter().sum::<f64>() / xs.len() as f64, 2);
    if acc_qa.is_empty() {
        return Err(EvalError::Invalid("no results to score".into()));
    }
    Ok(VqaReport {
        variant,
        questions: acc_qa.len(),
        overall: pct(&acc_qa),
        per_question_type: by_qtype.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
        per_answer_type: by_atype.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
        per_question,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_rules() {
        // Next to a space anywhere: deleted; otherwise replaced by a space.
        assert_eq!(process_punctuation("a/b"), "a b");
        assert_eq!(process_punctuation("a/b c /d"), "ab c d");
        // A digit-comma-digit anywhere deletes every mark.
        assert_eq!(process_punctuation("1,000 (approx)"), "1000 approx");
        // Periods go unless a digit follows; apostrophes are not punctuation here.
        assert_eq!(process_punctuation("3.5 ft."), "3.5 ft");
        assert_eq!(process_punctuation("man's t-shirt"), "man's t shirt");
    }

    #[test]
    fn at_most_32_periods_are_removed() {
        let s = ".".repeat(40);
        assert_eq!(process_punctuation(&s), ".".repeat(8));
    }

    fn ann(answers: &[&str]) -> VqaAnnotation {
        VqaAnnotation {
            question_id: 1,
            question_type: "what".into(),
            answer_type: "other".into(),
            answers: answers
                .iter()
                .enumerate()
                .map(|(i, a)| HumanAnswer {
                    answer: a.to_string(),
                    rest: serde_json::json!({"answer_id": i + 1})
                        .as_object()
                        .cloned()
                        .unwrap(),
                })
                .collect(),
        }
    }

    fn res(a: &str) -> VqaResult {
        VqaResult {
            question_id: 1,
            answer: a.into(),
        }
    }

    #[test]
    fn leave_one_out_accuracy() {
        // 2 of 10 humans: each subset without one of them has 1 match (1/3), the other eight
        // have 2 (2/3): mean (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
        let a = ann(&[
            "cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog", "dog",
        ]);
        for v in [VqaVariant::Official, VqaVariant::Lavis] {
            let s = score_vqa(std::slice::from_ref(&a), &[res("Cat")], v).unwrap();
            assert_eq!((s.overall, s.per_question[&1]), (60.0, 60.0), "{v:?}");
        }
    }

    #[test]
    fn unanimous_humans_are_compared_raw_by_the_official_code() {
        let a = ann(&["cat"; 10]);
        let s = score_vqa(
            std::slice::from_ref(&a),
            &[res("Cat.")],
            VqaVariant::Official,
        )
        .unwrap();
        assert_eq!(s.overall, 0.0);
        let s = score_vqa(
            std::slice::from_ref(&a),
            &[res(" cat\n")],
            VqaVariant::Official,
        )
        .unwrap();
        assert_eq!(s.overall, 100.0);
        let s = score_vqa(&[a], &[res("Cat.")], VqaVariant::Lavis).unwrap();
        assert_eq!(s.overall, 100.0);
    }
}
