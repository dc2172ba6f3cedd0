//! SEED-Bench conformance: the official eval.py accuracy (task `image` and `all`), its printed
//! text, its crash on a dimension without a correct answer, and VLMEvalKit's SEEDBench_IMG table
//! and per-row verdicts, for `seedbench/` and `seedbench_zero_correct_dim/`.
//! The fixture root comes from `MDE_EVAL_FIXTURES` (default `shared/fixtures/eval`).
use anyhow::{Context, Result};
use mde_eval::mmbench::{AccValue, McqOptions};
use mde_eval::seedbench::{self, SeedTask};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

fn load(dir: &str) -> Result<(PathBuf, Value)> {
    let d = fixtures().join(dir);
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(d.join("expected.json"))?)?;
    Ok((d, exp))
}

fn py_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_official(dir: &str) -> Result<()> {
    let (d, exp) = load(dir)?;
    let ann = seedbench::load_seed_json(
        &d.join(
            exp["inputs"]["annotations"]
                .as_str()
                .context("annotations")?,
        ),
    )?;
    let preds = seedbench::read_predictions(
        &d.join(
            exp["inputs"]["predictions"]
                .as_str()
                .context("predictions")?,
        ),
    )?;
    for key in ["official_image", "official_all"] {
        let e = &exp[key];
        let task = SeedTask::parse(e["task"].as_str().context("task")?).context("task name")?;
        let r = seedbench::score_official(&ann, &preds, &task)?;
        assert_eq!(
            r.stdout,
            e["stdout"].as_str().context("stdout")?,
            "{dir}/{key} stdout"
        );
        if let Some(raises) = e["raises"].as_str() {
            // The official script crashed: we must detect exactly that error (first dimension
            // without a correct answer), report it as 0 and keep going.
            assert_eq!(r.official_error.as_deref(), Some(raises), "{dir}/{key}");
            let dim: i64 = raises
                .strip_prefix("KeyError: ")
                .context("KeyError")?
                .parse()?;
            assert_eq!(r.zero_correct_dims.first(), Some(&dim), "{dir}/{key}");
            let dd = r.dimension(dim).context("zero dimension reported")?;
            assert_eq!((dd.correct, dd.accuracy), (0, 0.0));
            assert!(r.to_markdown().contains(raises));
            continue;
        }
        assert_eq!(r.official_error, None, "{dir}/{key}");
        let order: Vec<i64> = e["dimension_order"]
            .as_array()
            .context("dimension_order")?
            .iter()
            .map(|v| py_scalar(v).parse())
            .collect::<Result<_, _>>()?;
        assert_eq!(r.dimension_order, order, "{dir}/{key}");
        let dims = e["dimensions"].as_object().context("dimensions")?;
        assert_eq!(dims.len(), r.dimensions.len());
        for (k, v) in dims {
            let got = r
                .dimension(k.parse()?)
                .with_context(|| format!("dimension {k}"))?;
            assert_eq!(Some(got.count), v["count"].as_u64(), "{key} dim {k}");
            assert_eq!(Some(got.correct), v["correct"].as_u64(), "{key} dim {k}");
            assert_eq!(Some(got.accuracy), v["accuracy"].as_f64(), "{key} dim {k}");
        }
        assert_eq!(Some(r.total_correct), e["total_correct"].as_u64());
        assert_eq!(Some(r.total_count), e["total_count"].as_u64());
        assert_eq!(r.total_accuracy, e["total_accuracy"].as_f64());
        let items = e["items"].as_array().context("items")?;
        assert_eq!(items.len(), r.items.len());
        for (ei, g) in items.iter().zip(&r.items) {
            assert_eq!(Some(g.question_id.as_str()), ei["question_id"].as_str());
            assert_eq!(Some(g.q_type_id), ei["q_type_id"].as_i64());
            assert_eq!(Some(g.gt.as_str()), ei["gt"].as_str());
            assert_eq!(
                g.prediction.as_deref(),
                ei["prediction"].as_str(),
                "{}",
                g.question_id
            );
            assert_eq!(
                Some(g.correct),
                ei["correct"].as_bool(),
                "{}",
                g.question_id
            );
        }
        assert!(r.missing_predictions.is_empty());
    }
    Ok(())
}

fn check_vlmevalkit(dir: &str) -> Result<()> {
    let (d, exp) = load(dir)?;
    let ds = d.join(
        exp["inputs"]["vlmevalkit_dataset_tsv"]
            .as_str()
            .context("dataset tsv")?,
    );
    let pr = d.join(
        exp["inputs"]["vlmevalkit_predictions"]
            .as_str()
            .context("predictions tsv")?,
    );
    let mut variants = vec![("current".to_string(), exp["vlmevalkit"].clone())];
    if let Some(leg) = exp["vlmevalkit_legacy_extraction"].as_object() {
        for (name, v) in leg {
            variants.push((name.clone(), v.clone()));
        }
    }
    for (name, e) in variants {
        let version = mde_eval::matching::ExtractionVersion::from_name(&name)
            .context("extraction version")?;
        let opts = McqOptions {
            matching: mde_eval::matching::MatchOptions::version(version),
            ..Default::default()
        };
        let r = seedbench::score_vlmevalkit(&ds, &pr, &opts)?;
        let cols: Vec<String> = e["acc"]["columns"]
            .as_array()
            .context("columns")?
            .iter()
            .map(py_scalar)
            .collect();
        assert_eq!(r.acc.columns, cols, "{dir} {name}");
        let rows = e["acc"]["rows"].as_array().context("rows")?;
        assert_eq!(rows.len(), r.acc.rows.len());
        for (ri, row) in rows.iter().enumerate() {
            for c in &cols {
                let got = r.acc.get(ri, c).context("cell")?;
                match (&row[c], got) {
                    (Value::String(s), AccValue::Text(t)) => assert_eq!(s, t),
                    (Value::Number(n), AccValue::Num(x)) => {
                        assert_eq!(n.as_f64(), Some(*x), "{dir} {name} {c}")
                    }
                    (Value::Null, AccValue::Num(x)) => assert!(x.is_nan()),
                    (a, b) => panic!("{dir} {name} {c}: expected {a}, got {b:?}"),
                }
            }
        }
        let items = e["items"].as_array().context("items")?;
        assert_eq!(items.len(), r.items.len(), "{dir} {name}");
        for (ei, g) in items.iter().zip(&r.items) {
            assert_eq!(g.index, py_scalar(&ei["index"]));
            assert_eq!(
                Some(g.extracted.as_str()),
                ei["extracted"].as_str(),
                "{dir} {name} {}",
                g.index
            );
            assert_eq!(
                Some(g.hit as u64),
                ei["hit"].as_u64(),
                "{dir} {name} {}",
                g.index
            );
            if let Some(v) = ei.get("category") {
                assert_eq!(g.category, py_scalar(v));
            }
            if let Some(v) = ei.get("GT") {
                assert_eq!(g.gt, py_scalar(v));
            }
            if let Some(v) = ei.get("prediction_as_loaded") {
                assert_eq!(Some(g.prediction_as_loaded.as_str()), v.as_str());
            }
            if let Some(v) = ei.get("log") {
                assert_eq!(Some(g.log.as_str()), v.as_str(), "{dir} {name} {}", g.index);
            }
        }
    }
    Ok(())
}

#[test]
fn official_seedbench() -> Result<()> {
    check_official("seedbench")
}

#[test]
fn official_zero_correct_dimension() -> Result<()> {
    check_official("seedbench_zero_correct_dim")
}

#[test]
fn vlmevalkit_seedbench() -> Result<()> {
    check_vlmevalkit("seedbench")
}

#[test]
fn vlmevalkit_zero_correct_dimension() -> Result<()> {
    check_vlmevalkit("seedbench_zero_correct_dim")
}

/// Loaders: the JSON image questions and the TSV rows describe the same questions; the
/// predictions writer round-trips.
#[test]
fn loaders_and_predictions_round_trip() -> Result<()> {
    let (d, exp) = load("seedbench")?;
    let ann = seedbench::load_seed_json(
        &d.join(
            exp["inputs"]["annotations"]
                .as_str()
                .context("annotations")?,
        ),
    )?;
    let items = seedbench::to_bench_items(&ann, &SeedTask::Image);
    assert!(items.iter().all(|i| {
        let t = i.extra["question_type_id"].as_i64().unwrap_or(0);
        (1..=9).contains(&t)
    }));
    assert_eq!(
        items.len(),
        seedbench::filter_questions(&ann.questions, &SeedTask::Image).len()
    );
    let tsv = seedbench::load_seed_tsv(
        &d.join(
            exp["inputs"]["vlmevalkit_dataset_tsv"]
                .as_str()
                .context("tsv")?,
        ),
    )?;
    assert_eq!(tsv.len(), items.len());
    for it in &tsv {
        let q = items
            .iter()
            .find(|q| q.id == it.id)
            .with_context(|| format!("TSV index {} not in JSON", it.id))?;
        assert_eq!(q.question, it.question);
        assert_eq!(q.choices, it.choices);
        assert_eq!(q.answer_idx, it.answer_idx);
        assert_eq!(q.category, it.category);
    }
    let preds = seedbench::read_predictions(
        &d.join(
            exp["inputs"]["predictions"]
                .as_str()
                .context("predictions")?,
        ),
    )?;
    let tmp = tempfile::tempdir()?;
    let p = tmp.path().join("predictions.jsonl");
    seedbench::write_predictions(&p, &preds)?;
    assert_eq!(seedbench::read_predictions(&p)?, preds);
    Ok(())
}
