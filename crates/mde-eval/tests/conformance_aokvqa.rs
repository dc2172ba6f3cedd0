//! A-OKVQA conformance: MC, DA, the printed text and every per-question field of
//! `aokvqa/expected.json` (from the official eval_predictions.py) must match exactly.
//! The fixture root comes from `MDE_EVAL_FIXTURES` (default `shared/fixtures/eval`).
use anyhow::{Context, Result};
use mde_eval::aokvqa;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

#[test]
fn eval_predictions_matches() -> Result<()> {
    let dir = fixtures().join("aokvqa");
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let ds_name = exp["inputs"]["dataset"]
        .as_str()
        .context("inputs.dataset")?;
    let pred_name = exp["inputs"]["predictions"]
        .as_str()
        .context("inputs.predictions")?;
    let ds = aokvqa::load_aokvqa(&dir.join(ds_name))?;
    let preds = aokvqa::read_predictions(&dir.join(pred_name))?;
    let r = aokvqa::score(&ds, &preds, "<PRED_FILE>")?;

    assert_eq!(r.mc, exp["MC"].as_f64(), "MC");
    assert_eq!(r.da, exp["DA"].as_f64(), "DA");
    assert_eq!(r.stdout, exp["stdout"].as_str().context("stdout")?);
    if let Some(p) = exp["printed"]["MC"].as_str() {
        assert_eq!(
            mde_eval::report::py_float_repr(r.mc.context("MC evaluated")?),
            p
        );
    }
    if let Some(p) = exp["printed"]["DA"].as_str() {
        assert_eq!(
            mde_eval::report::py_float_repr(r.da.context("DA evaluated")?),
            p
        );
    }

    let items = exp["items"].as_array().context("items")?;
    assert_eq!(items.len(), r.items.len(), "number of questions");
    for (e, g) in items.iter().zip(&r.items) {
        let id = &g.question_id;
        assert_eq!(Some(id.as_str()), e["question_id"].as_str());
        assert_eq!(
            Some(g.mc_prediction_present),
            e["mc_prediction_present"].as_bool(),
            "{id}"
        );
        assert_eq!(
            Some(g.mc_item_acc_x100),
            e["mc_item_acc_x100"].as_f64(),
            "{id}"
        );
        assert_eq!(
            Some(g.da_prediction_present),
            e["da_prediction_present"].as_bool(),
            "{id}"
        );
        assert_eq!(Some(g.da_included), e["da_included"].as_bool(), "{id}");
        assert_eq!(g.da_num_match, e["da_num_match"].as_u64(), "{id}");
        assert_eq!(g.da_item_acc_x100, e["da_item_acc_x100"].as_f64(), "{id}");
    }
    let da_count = items
        .iter()
        .filter(|e| e["da_included"].as_bool() == Some(true))
        .count();
    assert_eq!(r.da_questions, da_count);
    Ok(())
}

/// The predictions writer round-trips the file (nulls and numbers included) and scores the same.
#[test]
fn predictions_round_trip() -> Result<()> {
    let dir = fixtures().join("aokvqa");
    let exp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let ds = aokvqa::load_aokvqa(&dir.join(exp["inputs"]["dataset"].as_str().context("dataset")?))?;
    let preds = aokvqa::read_predictions(
        &dir.join(
            exp["inputs"]["predictions"]
                .as_str()
                .context("predictions")?,
        ),
    )?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("predictions_val.json");
    aokvqa::write_predictions(&out, &preds)?;
    let back = aokvqa::read_predictions(&out)?;
    assert_eq!(back, preds);
    let r = aokvqa::score(&ds, &back, "<PRED_FILE>")?;
    assert_eq!(r.mc, exp["MC"].as_f64());
    assert_eq!(r.da, exp["DA"].as_f64());
    let items = aokvqa::to_bench_items(&ds);
    assert_eq!(items.len(), ds.len());
    for (it, q) in items.iter().zip(&ds) {
        assert_eq!(it.id, q.question_id);
        if q.split != "val" && q.split != "train" {
            continue;
        }
        let want = aokvqa::coco_rel_path(&q.split, q.image_id);
        assert!(matches!(&it.image, mde_core::records::ImageRef::Path { path } if *path == want));
    }
    Ok(())
}
