//! VQA accuracy against the official evaluation code: `scripts/fixtures/gen_vqa.py` writes a
//! set in the official formats and the numbers GT-Vision-Lab's `vqaEval.py` (a013f00) and
//! LAVIS's port compute on it. The root is `MDE_SCORER_FIXTURES` (default: the committed
//! `fixtures/scorers`, seed 0); each `expected_*.json` present is checked, to the last digit:
//! overall, per question type, per answer type and every question. A perturbed expected value
//! must fail the same comparison (so the check can fail).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use mde_eval::vqa::{read_annotations, read_results, score_vqa, VqaReport, VqaVariant};
use serde_json::Value;

fn root() -> PathBuf {
    match std::env::var_os("MDE_SCORER_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/scorers"),
    }
}

/// Every difference between our report and the official `accuracy` / `evalQA`.
fn differences(got: &VqaReport, want: &Value) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let num = |v: &Value, what: &str| v.as_f64().with_context(|| what.to_string());
    let want_overall = num(&want["overall"], "overall")?;
    if got.overall != want_overall {
        out.push(format!("overall {} vs {want_overall}", got.overall));
    }
    for (key, ours) in [
        ("perQuestionType", &got.per_question_type),
        ("perAnswerType", &got.per_answer_type),
    ] {
        let theirs: BTreeMap<String, f64> = serde_json::from_value(want[key].clone())?;
        if &theirs != ours {
            out.push(format!("{key}: {ours:?} vs {theirs:?}"));
        }
    }
    let qa: BTreeMap<String, f64> = serde_json::from_value(want["evalQA"].clone())?;
    let ours: BTreeMap<String, f64> = got
        .per_question
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    for (k, v) in &qa {
        if ours.get(k) != Some(v) {
            out.push(format!("question {k}: {:?} vs {v}", ours.get(k)));
        }
    }
    if ours.len() != qa.len() {
        out.push(format!("{} questions vs {}", ours.len(), qa.len()));
    }
    Ok(out)
}

#[test]
fn vqa_accuracy_equals_the_official_code() -> Result<()> {
    let d = root().join("vqa");
    let anns = read_annotations(&d.join("annotations.json"))?;
    let results = read_results(&d.join("results.json"))?;
    let mut checked = 0;
    for (file, variant) in [
        ("expected_official.json", VqaVariant::Official),
        ("expected_lavis.json", VqaVariant::Lavis),
    ] {
        let p = d.join(file);
        if !p.is_file() {
            continue;
        }
        let want: Value = serde_json::from_slice(&std::fs::read(&p)?)?;
        let got = score_vqa(&anns, &results, variant)?;
        let diffs = differences(&got, &want)?;
        ensure!(
            diffs.is_empty(),
            "{file}: {} differences, first: {:?}",
            diffs.len(),
            &diffs[..diffs.len().min(5)]
        );
        // The same comparison fails on a perturbed expected value.
        let mut bad = want.clone();
        bad["overall"] = (want["overall"].as_f64().context("overall")? + 0.01).into();
        ensure!(
            !differences(&got, &bad)?.is_empty(),
            "perturbed overall passed"
        );
        let mut bad = want.clone();
        if let Some(m) = bad["evalQA"].as_object_mut() {
            if let Some((_, v)) = m.iter_mut().next() {
                *v = (v.as_f64().unwrap_or(0.0) + 1.0).into();
            }
        }
        ensure!(
            !differences(&got, &bad)?.is_empty(),
            "perturbed evalQA passed"
        );
        checked += 1;
    }
    ensure!(checked > 0, "no expected_*.json in {}", d.display());
    Ok(())
}

#[test]
fn results_of_another_set_are_refused() -> Result<()> {
    let d = root().join("vqa");
    let anns = read_annotations(&d.join("annotations.json"))?;
    let mut results = read_results(&d.join("results.json"))?;
    results.pop();
    let e = score_vqa(&anns, &results, VqaVariant::Official).unwrap_err();
    ensure!(e.to_string().contains("has no result"), "{e}");
    results.push(mde_eval::vqa::VqaResult {
        question_id: -1,
        answer: "x".into(),
    });
    let e = score_vqa(&anns, &results, VqaVariant::Official).unwrap_err();
    ensure!(e.to_string().contains("not in the annotations"), "{e}");
    Ok(())
}
