//! Input problems are reported or refused early: unknown prediction ids are counted without
//! changing the official scores; benchmark files lacking what scoring needs fail at load, naming
//! the file and the column; empty benchmark files are errors of the benchmark file.
use anyhow::{Context, Result};
use mde_eval::runner::{load_items, load_items_for, Benchmark, LoadPurpose};
use mde_eval::{aokvqa, mmbench, seedbench};
use std::path::{Path, PathBuf};

fn fixtures_root() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

#[test]
fn aokvqa_unknown_prediction_ids_are_counted_scores_unchanged() -> Result<()> {
    let dir = fixtures_root().join("aokvqa");
    let ds = aokvqa::load_aokvqa(&dir.join("aokvqa_v1p0_val.json"))?;
    let preds = aokvqa::read_predictions(&dir.join("predictions_val.json"))?;
    let base = aokvqa::score(&ds, &preds, "p.json")?;
    // The fixture's own predictions may already hold ids the split lacks (the official tool
    // ignores them); whatever their number, it is reported.
    let known = base.unknown_prediction_ids;
    assert_eq!(base.input_issues.unknown_ids.count, known);
    let ids: std::collections::HashSet<&str> = ds.iter().map(|q| q.question_id.as_str()).collect();
    assert_eq!(
        known,
        preds.keys().filter(|k| !ids.contains(k.as_str())).count()
    );

    let mut extra = preds.clone();
    for k in 0..7 {
        extra.insert(
            format!("not_a_question_{k}"),
            aokvqa::AokvqaPrediction::new(Some("x".into()), Some("y".into())),
        );
    }
    let r = aokvqa::score(&ds, &extra, "p.json")?;
    assert_eq!((r.mc, r.da), (base.mc, base.da));
    assert_eq!(r.items, base.items);
    assert_eq!(r.stdout, base.stdout);
    assert_eq!(r.unknown_prediction_ids, known + 7);
    assert_eq!(r.input_issues.unknown_ids.count, known + 7);
    assert!(r
        .input_issues
        .unknown_ids
        .examples
        .iter()
        .all(|e| !ids.contains(e.as_str())));
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["unknown_prediction_ids"], known + 7);
    let s = r.input_issues.summary();
    assert!(
        s.starts_with(&format!("p.json: {} unknown ids (first: ", known + 7)),
        "{s}"
    );
    Ok(())
}

#[test]
fn seedbench_unknown_prediction_ids_are_counted_scores_unchanged() -> Result<()> {
    let dir = fixtures_root().join("seedbench");
    let ann = seedbench::load_seed_json(&dir.join("SEED-Bench.json"))?;
    let preds = seedbench::read_predictions(&dir.join("predictions.jsonl"))?;
    let task = seedbench::SeedTask::Image;
    let base = seedbench::score_official(&ann, &preds, &task)?;
    assert_eq!(base.unknown_prediction_ids, 0);
    let mut extra = preds.clone();
    extra.insert(
        0,
        seedbench::SeedPrediction {
            question_id: "no-such-question".into(),
            prediction: "A".into(),
        },
    );
    extra.push(seedbench::SeedPrediction {
        question_id: "another-one".into(),
        prediction: "B".into(),
    });
    let r = seedbench::score_official(&ann, &extra, &task)?;
    assert_eq!(r.dimensions, base.dimensions);
    assert_eq!(r.total_accuracy, base.total_accuracy);
    assert_eq!(r.items, base.items);
    assert_eq!(r.stdout, base.stdout);
    assert_eq!(r.unknown_prediction_ids, 2);
    assert_eq!(
        r.input_issues.unknown_ids.examples,
        ["no-such-question", "another-one"]
    );
    Ok(())
}

/// The fixture dataset TSV with one column removed.
fn tsv_without(src: &Path, column: &str, out: &Path) -> Result<()> {
    // Through the crate's own pandas-compatible reader and writer: fields may hold quoted tabs
    // and newlines, so a split on tabs would corrupt rows.
    let t = mde_eval::tsv::read_tsv(src)?;
    std::fs::write(out, t.to_tsv_without(column).context("column present")?)?;
    Ok(())
}

#[test]
fn mmbench_without_answer_fails_at_load_naming_file_and_column() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tsv = dir.path().join("MMBench_TEST_noanswer.tsv");
    tsv_without(
        &fixtures_root().join("mmbench/MMBench_DEV_EN.tsv"),
        "answer",
        &tsv,
    )?;
    // What `mde eval` calls before loading the model.
    let e = load_items(Benchmark::MMBench, &tsv, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MMBench_TEST_noanswer.tsv"), "{e}");
    assert!(e.contains("`answer`"), "{e}");
    // Inference alone is explicitly allowed on such a split.
    let items = load_items_for(Benchmark::MMBench, &tsv, None, LoadPurpose::Inference)?;
    assert!(!items.is_empty());
    // Scoring such a dataset names the missing column, not an unknown index.
    let e = mmbench::score_mmbench(
        &tsv,
        &fixtures_root().join("mmbench/predictions.tsv"),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing column `answer`"), "{e}");
    assert!(!e.contains("not in the dataset"), "{e}");
    Ok(())
}

#[test]
fn mmbench_without_question_option_columns_fails_for_inference_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tsv = dir.path().join("no_a.tsv");
    tsv_without(
        &fixtures_root().join("mmbench/MMBench_DEV_EN.tsv"),
        "A",
        &tsv,
    )?;
    let e = load_items_for(Benchmark::MMBench, &tsv, None, LoadPurpose::Inference)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_a.tsv") && e.contains("`A`"), "{e}");
    Ok(())
}

#[test]
fn mmbench_unknown_indices_error_counts_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = fixtures_root().join("mmbench/predictions.tsv");
    let text = std::fs::read_to_string(&src)?;
    let first_row = text.lines().nth(1).context("row")?;
    // Two extra rows with indices the dataset lacks (QUOTE_ALL: the index is the first field).
    let mut extra = text.clone();
    for idx in ["987654321", "987654322"] {
        let rest = first_row.split_once('\t').context("tab")?.1;
        extra.push_str(&format!("\"{idx}\"\t{rest}\n"));
    }
    let pred = dir.path().join("predictions.tsv");
    std::fs::write(&pred, extra)?;
    let e = mmbench::score_mmbench(
        &fixtures_root().join("mmbench/MMBench_DEV_EN.tsv"),
        &pred,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not in the dataset"), "{e}");
    assert!(
        e.contains("2 unknown ids (first: 987654321, 987654322)"),
        "{e}"
    );
    Ok(())
}

#[test]
fn empty_aokvqa_file_is_an_error_of_that_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("aokvqa_v1p0_val.json");
    std::fs::write(&data, "[]")?;
    let e = aokvqa::load_aokvqa(&data).unwrap_err().to_string();
    assert!(
        e.contains("aokvqa_v1p0_val.json") && e.contains("contains no questions"),
        "{e}"
    );
    let e = load_items(Benchmark::Aokvqa, &data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("aokvqa_v1p0_val.json") && e.contains("contains no questions"),
        "{e}"
    );
    Ok(())
}

#[test]
fn aokvqa_without_answers_fails_at_load_for_evaluation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("aokvqa_v1p0_test.json");
    std::fs::write(
        &data,
        r#"[{"split":"test","image_id":1,"question_id":"q1","question":"?","choices":["a","b"]}]"#,
    )?;
    let e = load_items(Benchmark::Aokvqa, &data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("aokvqa_v1p0_test.json") && e.contains("q1"),
        "{e}"
    );
    assert!(e.contains("correct_choice_idx"), "{e}");
    assert!(load_items_for(Benchmark::Aokvqa, &data, None, LoadPurpose::Inference).is_ok());
    Ok(())
}

#[test]
fn empty_seed_and_mme_files_are_errors_of_those_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let seed = dir.path().join("SEED-Bench.json");
    std::fs::write(&seed, r#"{"questions": [], "question_type": {}}"#)?;
    let e = seedbench::load_seed_json(&seed).unwrap_err().to_string();
    assert!(
        e.contains("SEED-Bench.json") && e.contains("contains no questions"),
        "{e}"
    );
    let mme = dir.path().join("MME.tsv");
    std::fs::write(&mme, "index\timage\tquestion\tanswer\tcategory\n")?;
    let e = load_items(Benchmark::Mme, &mme, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("MME.tsv") && e.contains("contains no questions"),
        "{e}"
    );
    let seed_tsv = dir.path().join("SEEDBench_IMG.tsv");
    std::fs::write(&seed_tsv, "index\tquestion\tA\tB\tanswer\timage\n")?;
    let e = load_items(Benchmark::SeedBench, &seed_tsv, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SEEDBench_IMG.tsv") && e.contains("contains no questions"),
        "{e}"
    );
    Ok(())
}
