//! Bad-case mining: every wrongly answered item becomes a [`BadCase`] (the seed of data
//! generation), and the per-type error rates become the sampler's [`TypeWeights`].
//!
//! Works from the scorer's verdicts (item id -> correct?), so each benchmark's own rule decides
//! what "wrong" means (MMBench: the circular group; A-OKVQA: the MC match; MME: the official
//! yes/no parse; SEED-Bench: exact letter). Items without a verdict (MMBench circular copies,
//! unanswered items) are ignored.
//!
//! The question type is the one the benchmark carries: the item's `question_type` (taxonomy id),
//! else `extra.question_type`, else the benchmark category (MMBench category, SEED-Bench
//! dimension, MME task). Items without one are still bad cases (the classifier assigns a type
//! later) but do not enter the weights.
//!
//! ```
//! use mde_core::records::{BenchItem, Prediction};
//! use mde_eval::badcase::mine_bad_cases;
//! use std::collections::HashMap;
//! let item = |id: &str| BenchItem {
//!     id: id.into(), question: "Which?".into(), choices: vec!["x".into(), "y".into()],
//!     answer_idx: Some(0), category: Some("counting".into()), ..Default::default()
//! };
//! let items = vec![item("1"), item("2"), item("3")];
//! let preds: Vec<Prediction> = ["A", "B", "B"].iter().zip(["1", "2", "3"])
//!     .map(|(t, id)| Prediction { id: id.into(), text: t.to_string(), ..Default::default() }).collect();
//! let verdicts = HashMap::from([("1".to_string(), true), ("2".to_string(), false), ("3".to_string(), false)]);
//! let mined = mine_bad_cases(&items, &preds, &verdicts);
//! assert_eq!(mined.bad_cases.len(), 2);
//! assert_eq!(mined.weights.weights["counting"], 0.667);
//! ```
use mde_core::io::write_json;
use mde_core::records::{BadCase, BenchItem, Prediction, TypeWeights, CHOICE_LETTERS};
use mde_core::CoreError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The result of mining one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mined {
    /// Wrong items, in item order.
    pub bad_cases: Vec<BadCase>,
    /// Error rate per question type over the scored items that carry a type.
    pub weights: TypeWeights,
    /// Scored items.
    pub scored: usize,
    /// Wrong items that could not become a bad case, with the reason (no correct choice known).
    pub skipped: Vec<(String, String)>,
}

/// The question type an item carries, if any (see the module doc for the order).
pub fn question_type_of(item: &BenchItem) -> Option<String> {
    let nonempty = |s: &str| !s.trim().is_empty();
    item.question_type
        .clone()
        .filter(|s| nonempty(s))
        .or_else(|| {
            item.extra
                .get("question_type")
                .and_then(|v| v.as_str())
                .filter(|s| nonempty(s))
                .map(str::to_string)
        })
        .or_else(|| item.category.clone().filter(|s| nonempty(s)))
}

/// Choices and the correct index of an item: its multiple-choice options, or `Yes`/`No` for a
/// yes/no item (MME) whose first answer is one of them.
fn choices_and_answer(item: &BenchItem) -> Result<(Vec<String>, usize), String> {
    if !item.choices.is_empty() {
        return match item.answer_idx {
            Some(i) if i < item.choices.len() => Ok((item.choices.clone(), i)),
            Some(i) => Err(format!(
                "answer index {i} out of range for {} choices",
                item.choices.len()
            )),
            None => Err("multiple-choice item without a correct answer index".into()),
        };
    }
    let yn = ["Yes".to_string(), "No".to_string()];
    match item.answers.first().map(|a| a.trim().to_ascii_lowercase()) {
        Some(a) if a == "yes" => Ok((yn.to_vec(), 0)),
        Some(a) if a == "no" => Ok((yn.to_vec(), 1)),
        _ => Err("no choices and no yes/no ground truth".into()),
    }
}

/// What the model answered, for inspection: "(L) choice" when a choice was picked, else its text.
fn model_answer(item: &BenchItem, pred: Option<&Prediction>) -> String {
    let Some(p) = pred else { return String::new() };
    match p
        .choice_idx
        .and_then(|i| item.choices.get(i).map(|c| (i, c)))
    {
        Some((i, c)) => format!("({}) {c}", CHOICE_LETTERS[i]),
        None => p.text.clone(),
    }
}

/// Turns verdicts into bad cases and type weights. `verdicts` maps item id to "answered
/// correctly"; items absent from it are not scored.
pub fn mine_bad_cases(
    items: &[BenchItem],
    predictions: &[Prediction],
    verdicts: &HashMap<String, bool>,
) -> Mined {
    let preds: HashMap<&str, &Prediction> =
        predictions.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Mined::default();
    let mut outcomes: Vec<(String, bool)> = Vec::new();
    for item in items {
        let Some(&correct) = verdicts.get(&item.id) else {
            continue;
        };
        if !seen.insert(item.id.as_str()) {
            continue;
        }
        out.scored += 1;
        let qtype = question_type_of(item);
        if let Some(t) = &qtype {
            outcomes.push((t.clone(), correct));
        }
        if correct {
            continue;
        }
        match choices_and_answer(item) {
            Ok((choices, answer_idx)) => out.bad_cases.push(BadCase {
                id: item.id.clone(),
                benchmark: item.benchmark.clone(),
                question: item.question.clone(),
                choices,
                answer_idx,
                model_answer: model_answer(item, preds.get(item.id.as_str()).copied()),
                image: item.image.clone(),
                question_type: qtype,
            }),
            Err(why) => out.skipped.push((item.id.clone(), why)),
        }
    }
    out.weights = TypeWeights::from_outcomes(outcomes.iter().map(|(t, c)| (t.as_str(), *c)));
    out
}

/// Writes `bad_cases.jsonl` and `weights.json` into `dir` (both atomically: they are derived
/// from the predictions and rewritten whole on every run). Returns the two paths.
pub fn write_mined(dir: &Path, mined: &Mined) -> Result<(PathBuf, PathBuf), CoreError> {
    let bc = dir.join("bad_cases.jsonl");
    mde_core::io::write_jsonl(&bc, &mined.bad_cases)?;
    let w = dir.join("weights.json");
    write_json(&w, &mined.weights)?;
    Ok((bc, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mde_core::records::ImageRef;

    fn item(id: &str, cat: Option<&str>) -> BenchItem {
        BenchItem {
            id: id.into(),
            benchmark: "t".into(),
            question: format!("q{id}"),
            choices: vec!["a".into(), "b".into(), "c".into()],
            answer_idx: Some(2),
            image: ImageRef::Path {
                path: format!("{id}.png"),
            },
            category: cat.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn types_follow_priority_and_unscored_items_are_ignored() {
        let mut a = item("a", Some("cat1"));
        a.extra.insert("question_type".into(), "extra_type".into());
        let mut b = item("b", Some("cat1"));
        b.question_type = Some("taxo".into());
        let c = item("c", None);
        let d = item("d", Some("cat2"));
        let preds = vec![
            Prediction {
                id: "a".into(),
                text: "A".into(),
                choice_idx: Some(0),
                ..Default::default()
            },
            Prediction {
                id: "c".into(),
                text: "zzz".into(),
                ..Default::default()
            },
        ];
        let verdicts: HashMap<String, bool> = [("a", false), ("b", true), ("c", false)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let m = mine_bad_cases(&[a, b, c, d], &preds, &verdicts);
        assert_eq!(m.scored, 3);
        assert_eq!(
            m.bad_cases
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(m.bad_cases[0].question_type.as_deref(), Some("extra_type"));
        assert_eq!(m.bad_cases[0].model_answer, "(A) a");
        assert_eq!(m.bad_cases[0].answer_idx, 2);
        assert_eq!(m.bad_cases[1].question_type, None);
        assert_eq!(m.bad_cases[1].model_answer, "zzz");
        assert_eq!(
            m.weights.weights.keys().collect::<Vec<_>>(),
            ["extra_type", "taxo"]
        );
        assert_eq!(m.weights.weights["extra_type"], 1.0);
        assert_eq!(m.weights.weights["taxo"], 0.0);
    }

    #[test]
    fn yes_no_items_become_two_choice_cases() {
        let it = BenchItem {
            id: "m".into(),
            answers: vec!["No".into()],
            category: Some("count".into()),
            ..Default::default()
        };
        let m = mine_bad_cases(&[it], &[], &HashMap::from([("m".to_string(), false)]));
        assert_eq!(m.bad_cases[0].choices, ["Yes", "No"]);
        assert_eq!(m.bad_cases[0].answer_idx, 1);
        let open = BenchItem {
            id: "o".into(),
            answers: vec!["blue".into()],
            ..Default::default()
        };
        let m = mine_bad_cases(&[open], &[], &HashMap::from([("o".to_string(), false)]));
        assert!(m.bad_cases.is_empty());
        assert_eq!(m.skipped.len(), 1);
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = mine_bad_cases(
            &[item("x", Some("t"))],
            &[],
            &HashMap::from([("x".to_string(), false)]),
        );
        let (bc, w) = write_mined(dir.path(), &m).unwrap();
        let back: Vec<BadCase> = mde_core::io::read_jsonl(&bc).unwrap();
        assert_eq!(back, m.bad_cases);
        let tw = TypeWeights::from_json(mde_core::io::read_json(&w).unwrap()).unwrap();
        assert_eq!(tw, m.weights);
    }
}
