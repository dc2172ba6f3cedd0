//! MME conformance: every number, per-line verdict and the printed text of `mme/expected.json`
//! (produced by the official calculation.py and by VLMEvalKit) must be reproduced exactly.
//! The fixture root comes from `MDE_EVAL_FIXTURES` (default `shared/fixtures/eval`).
use anyhow::{bail, Context, Result};
use mde_eval::mme;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

fn expected(dir: &str) -> Result<Value> {
    let p = fixtures().join(dir).join("expected.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn f(v: &Value, what: &str) -> Result<f64> {
    v.as_f64()
        .with_context(|| format!("{what}: expected a number, got {v}"))
}

fn u(v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .with_context(|| format!("{what}: expected an integer, got {v}"))
}

fn s<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what}: expected a string, got {v}"))
}

/// Python `str()` of a JSON scalar as the fixture wrote it (ints as ints, strings as is).
fn py_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn official_calculation_matches() -> Result<()> {
    let exp = expected("mme")?;
    let oc = &exp["official_calculation"];
    let dir = fixtures().join("mme/results");
    let r = mme::score_official_dir(&dir)?;

    assert_eq!(
        r.perception_total,
        f(&oc["perception_total"], "perception_total")?
    );
    assert_eq!(
        r.cognition_total,
        f(&oc["cognition_total"], "cognition_total")?
    );
    assert_eq!(r.stdout, s(&oc["stdout"], "stdout")?);

    let tasks = oc["tasks"].as_object().context("tasks")?;
    assert_eq!(tasks.len(), r.tasks.len(), "number of tasks");
    for (name, t) in tasks {
        let got = r
            .task(name)
            .with_context(|| format!("task {name} missing"))?;
        let ctx = |k: &str| format!("{name}.{k}");
        assert_eq!(got.tp, u(&t["TP"], &ctx("TP"))?, "{}", ctx("TP"));
        assert_eq!(got.fn_, u(&t["FN"], &ctx("FN"))?, "{}", ctx("FN"));
        assert_eq!(got.tn, u(&t["TN"], &ctx("TN"))?, "{}", ctx("TN"));
        assert_eq!(got.fp, u(&t["FP"], &ctx("FP"))?, "{}", ctx("FP"));
        assert_eq!(
            got.other_num,
            u(&t["other_num"], &ctx("other_num"))?,
            "{}",
            ctx("other_num")
        );
        for (k, v) in [
            ("precision", got.precision),
            ("recall", got.recall),
            ("acc", got.acc),
            ("acc_plus", got.acc_plus),
            ("score", got.score),
        ] {
            assert_eq!(v, f(&t[k], &ctx(k))?, "{}", ctx(k));
        }
    }

    // Printed strings (Python repr of each float).
    for (eval_type, list) in [
        ("Perception", &mme::PERCEPTION_TASKS[..]),
        ("Cognition", &mme::COGNITION_TASKS[..]),
    ] {
        let p = &oc["printed"][eval_type];
        let total = if eval_type == "Perception" {
            r.perception_total
        } else {
            r.cognition_total
        };
        assert_eq!(
            mde_eval::report::py_float_repr(total),
            s(&p["total_score_str"], "total_score_str")?
        );
        for (task, v) in p["tasks"].as_object().context("printed tasks")? {
            assert!(
                list.contains(&task.as_str()),
                "{task} printed under {eval_type}"
            );
            let got = r.task(task).context("printed task")?;
            assert_eq!(
                mde_eval::report::py_float_repr(got.score),
                s(v, "printed score")?,
                "{task}"
            );
        }
    }

    // Per-line verdicts.
    let items = oc["items"].as_array().context("items")?;
    assert_eq!(items.len(), r.items.len(), "number of lines");
    for (i, (e, g)) in items.iter().zip(&r.items).enumerate() {
        assert_eq!(g.task, s(&e["task"], "task")?, "item {i}");
        assert_eq!(g.image, s(&e["image"], "image")?, "item {i}");
        assert_eq!(g.question, s(&e["question"], "question")?, "item {i}");
        assert_eq!(g.gt, s(&e["gt"], "gt")?, "item {i}");
        assert_eq!(
            g.response_field,
            s(&e["response_field"], "response_field")?,
            "item {i}"
        );
        assert_eq!(
            g.parsed,
            s(&e["parsed"], "parsed")?,
            "item {i} ({:?})",
            g.response_field
        );
        assert_eq!(Some(g.correct), e["correct"].as_bool(), "item {i}");
    }

    let warns: Vec<&str> = oc["sklearn_warnings"]
        .as_array()
        .context("sklearn_warnings")?
        .iter()
        .map(|w| w.as_str().unwrap_or_default())
        .collect();
    let mut dedup: Vec<&str> = Vec::new();
    for w in warns {
        if !dedup.contains(&w) {
            dedup.push(w);
        }
    }
    assert_eq!(r.sklearn_warnings, dedup);
    Ok(())
}

#[test]
fn vlmevalkit_matches() -> Result<()> {
    let exp = expected("mme")?;
    let vk = &exp["vlmevalkit"];
    let pred = exp["inputs"]["vlmevalkit"]["predictions"]
        .as_str()
        .unwrap_or("predictions.tsv");
    let r = mme::score_vlmevalkit(&fixtures().join("mme").join(pred))?;

    let cols: Vec<&str> = vk["score_columns"]
        .as_array()
        .context("score_columns")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(r.score_columns, cols);
    let score = vk["score"].as_object().context("score")?;
    assert_eq!(score.len(), r.score.len());
    for (k, v) in score {
        let got = r
            .score
            .get(k)
            .with_context(|| format!("score column {k} missing"))?;
        assert_eq!(*got, f(v, k)?, "score column {k}");
    }

    let items = vk["items"].as_array().context("items")?;
    assert_eq!(items.len(), r.items.len());
    for (i, (e, g)) in items.iter().zip(&r.items).enumerate() {
        assert_eq!(g.index, py_scalar(&e["index"]), "item {i}");
        assert_eq!(g.category, py_scalar(&e["category"]), "item {i}");
        assert_eq!(g.image_path, py_scalar(&e["image_path"]), "item {i}");
        assert_eq!(g.answer, py_scalar(&e["answer"]), "item {i}");
        assert_eq!(
            g.prediction_as_loaded,
            s(&e["prediction_as_loaded"], "prediction_as_loaded")?,
            "item {i}"
        );
        assert_eq!(
            g.extracted,
            s(&e["extracted"], "extracted")?,
            "item {i} ({:?})",
            g.prediction_as_loaded
        );
        assert_eq!(Some(g.score), e["score"].as_bool(), "item {i}");
    }
    Ok(())
}

/// Loaders: the template folder and the VLMEvalKit TSV describe the same questions, and writing
/// the official results back from the template plus the recorded responses reproduces the scores.
#[test]
fn loaders_and_writer_round_trip() -> Result<()> {
    let exp = expected("mme")?;
    let root = fixtures().join("mme");
    let template = mme::load_mme(&root.join("questions"), None)?;
    let oc_items = exp["official_calculation"]["items"]
        .as_array()
        .context("items")?;
    if template.len() != oc_items.len() {
        bail!(
            "template has {} questions, expected.json {}",
            template.len(),
            oc_items.len()
        );
    }
    let mut responses = std::collections::HashMap::new();
    for (it, e) in template.iter().zip(oc_items) {
        assert_eq!(it.category.as_deref(), e["task"].as_str());
        assert_eq!(it.question, s(&e["question"], "question")?);
        assert_eq!(it.answers[0], s(&e["gt"], "gt")?);
        let resp = s(&e["response_field"], "response_field")?;
        responses.insert(
            it.id.clone(),
            resp.strip_suffix('\n').unwrap_or(resp).to_string(),
        );
    }
    let out = tempfile::tempdir()?;
    mme::write_official_results(out.path(), &template, &responses)?;
    let r = mme::score_official_dir(out.path())?;
    assert_eq!(
        r.perception_total,
        f(&exp["official_calculation"]["perception_total"], "p")?
    );
    assert_eq!(
        r.cognition_total,
        f(&exp["official_calculation"]["cognition_total"], "c")?
    );

    let tsv_name = exp["inputs"]["vlmevalkit"]["dataset_tsv"]
        .as_str()
        .unwrap_or("MME.tsv");
    let tsv = mme::load_mme(&root.join(tsv_name), None)?;
    let vk_items = exp["vlmevalkit"]["items"].as_array().context("items")?;
    assert_eq!(tsv.len(), vk_items.len());
    for (it, e) in tsv.iter().zip(vk_items) {
        assert_eq!(it.id, py_scalar(&e["index"]));
        assert_eq!(it.answers[0], py_scalar(&e["answer"]));
        assert!(
            matches!(it.image, mde_core::records::ImageRef::Base64 { ref data } if data.len() > 64)
        );
    }
    Ok(())
}
