//! End to end: a shortened loop (tiny world, small model, 1 round) through every step, then the
//! resume guarantees: a finished run re-runs as a no-op with identical results, and a run whose
//! later steps are removed recomputes exactly those.

use std::path::Path;

use mde_loop::config::{ChanceSource, LoopConfig};
use mde_loop::run::LoopRun;

/// The CI-sized loop of `configs/loop-tiny.toml` (a few minutes in the dev profile on 2 cores),
/// with its cache in `cache`.
pub fn tiny_loop_config(cache: &Path) -> anyhow::Result<LoopConfig> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/loop-tiny.toml");
    let mut cfg = LoopConfig::load(&path)?;
    cfg.run.cache_dir = Some(cache.to_path_buf());
    Ok(cfg)
}

#[test]
fn shortened_loop_runs_reports_and_resumes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // MDE_E2E_DIR keeps the run for inspection.
    let root = match std::env::var_os("MDE_E2E_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    let cfg = tiny_loop_config(&root.join("cache"))?;
    let out = root.join("runs").join("e2e");
    let report = LoopRun::new(cfg.clone(), &out)?.run()?;

    // Round 0 (base) and round 1, each evaluated on both benchmarks.
    assert_eq!(report.rounds.len(), 2);
    for r in &report.rounds {
        let m = r.mine.as_ref().expect("mining eval");
        assert!(m.items > 0 && (0.0..=100.0).contains(&m.overall));
        let rep = r.report.as_ref().expect("report eval");
        assert_eq!(rep.benchmark, "mmbench");
        assert!(!rep.per_type.is_empty());
    }
    let r1 = &report.rounds[1];
    let queries: usize = r1.queries_per_type.as_ref().unwrap().values().sum();
    assert!(queries > 0, "ABS built no query");
    let accepted: usize = r1.accepted_per_type.as_ref().unwrap().values().sum();
    assert!(accepted > 0 && accepted <= queries);
    let train = r1.train.as_ref().expect("round training");
    assert_eq!(train.steps, 6);
    assert!(train.examples.keys().any(|k| k.starts_with("generated_r1")));

    // Every step left its marker and its files.
    for rel in [
        "base/done.json",
        "index/pool.safetensors",
        "round_0/eval_mine/predictions.jsonl",
        "round_0/eval_report/scores.json",
        "round_1/mine/bad_cases.jsonl",
        "round_1/mine/weights.json",
        "round_1/sample/queries.jsonl",
        "round_1/generate/replies.jsonl",
        "round_1/postprocess/gptvqa_v1.json",
        "round_1/train/done.json",
        "round_1/eval_report/done.json",
        "report/report.json",
        "report/report.md",
        "report/accuracy_by_round.svg",
    ] {
        assert!(out.join(rel).exists(), "missing {rel}");
    }
    // The generated replies hold each query once.
    let replies: Vec<serde_json::Value> =
        mde_core::io::read_jsonl(out.join("round_1/generate/replies.jsonl"))?;
    let mut ids: Vec<&str> = replies
        .iter()
        .filter_map(|r| r.get("query_id").and_then(|v| v.as_str()))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate replies");

    // A second run is a no-op with the same numbers.
    let again = LoopRun::new(cfg.clone(), &out)?.run()?;
    for (a, b) in report.rounds.iter().zip(&again.rounds) {
        assert_eq!(
            a.report.as_ref().map(|r| &r.per_type),
            b.report.as_ref().map(|r| &r.per_type)
        );
    }

    // Removing the last evaluation recomputes it from the trained weights on disk (the
    // trainer resumes at its final checkpoint), with the same result.
    let before = report.rounds[1].report.clone().unwrap();
    std::fs::remove_dir_all(out.join("round_1/eval_report"))?;
    let third = LoopRun::new(cfg.clone(), &out)?.run()?;
    let after = third.rounds[1].report.clone().unwrap();
    assert_eq!(before.per_type, after.per_type);
    assert_eq!(before.overall, after.overall);

    // Another config in the same folder is refused.
    let mut other = cfg.clone();
    other.abs.queries_per_round += 1;
    assert!(LoopRun::new(other, &out).is_err());

    // The blind chance source (same cached base): every round also answers the mining
    // benchmark with a blank image, and chance_discounted discounts each type's error by the
    // higher of that accuracy and 1 / number of choices.
    let mut blind = cfg;
    blind.abs.strategy = "chance_discounted:2".into();
    blind.abs.chance = ChanceSource::Blind;
    blind.abs.chance_margin = 0.0;
    let bout = root.join("runs").join("e2e-blind");
    let rb = LoopRun::new(blind, &bout)?.run()?;
    assert_eq!(rb.strategy, "chance_discounted:2@blind");
    assert_eq!(report.strategy, "error_rate");
    for k in 0..2 {
        let dir = bout.join(format!("round_{k}"));
        let n_mine =
            mde_core::io::read_jsonl::<serde_json::Value>(dir.join("eval_mine/predictions.jsonl"))?
                .len();
        let n_blind = mde_core::io::read_jsonl::<serde_json::Value>(
            dir.join("eval_blind/predictions.jsonl"),
        )?
        .len();
        assert_eq!(n_mine, n_blind, "round {k}");
        let b = rb.rounds[k].blind.as_ref().expect("blind evaluation");
        assert_eq!(b.items, rb.rounds[k].mine.as_ref().unwrap().items);
    }
    // Round 1's sampler used round 0's blind accuracies.
    let blind0 = &rb.rounds[0].blind.as_ref().unwrap().per_type;
    let chance = rb.rounds[1].chance_levels.as_ref().expect("chance levels");
    let report: serde_json::Value =
        mde_core::io::read_json(bout.join("round_1/sample/sample_report.json"))?;
    let cases: Vec<serde_json::Value> =
        mde_core::io::read_jsonl(bout.join("round_1/mine/bad_cases.jsonl"))?;
    assert!(!chance.is_empty());
    for (t, c) in chance {
        // The most common number of choices among the type's bad cases (ties: the larger).
        let mut by_len = std::collections::BTreeMap::<usize, usize>::new();
        for b in cases.iter().filter(|b| b["question_type"] == t.as_str()) {
            *by_len
                .entry(b["choices"].as_array().map_or(0, |a| a.len()))
                .or_default() += 1;
        }
        let n = by_len
            .iter()
            .max_by_key(|(_, c)| **c)
            .map_or(0, |(len, _)| *len);
        let expect = (blind0[t] / 100.0).max(1.0 / n as f64);
        assert!((c - expect).abs() < 1e-12, "{t}: {c} vs {expect}");
        assert_eq!(report["allocation"]["chance"][t].as_f64(), Some(*c));
        let err = rb.rounds[1].error_rates.as_ref().unwrap()[t];
        let sampled = rb.rounds[1].sampling_probabilities.as_ref().unwrap();
        assert_eq!(sampled.contains_key(t), err < 1.0 - c - 1e-9, "{t}");
    }
    assert!(bout.join("round_1/eval_blind/done.json").exists());
    let md = std::fs::read_to_string(bout.join("report/report.md"))?;
    assert!(md.contains("Blind baseline") && md.contains("chance (%)"));
    Ok(())
}
