//! MMBench (VLMEvalKit circular, exact matching) conformance against the fixtures' `expected.json`.
//! Data-driven: the fixture root comes from `MDE_EVAL_FIXTURES` (default `shared/fixtures/eval`
//! resolved from this crate's directory); everything compared is read from `expected.json`.
use anyhow::{bail, Context, Result};
use mde_eval::matching::{ExtractionVersion, MatchOptions};
use mde_eval::mmbench::{
    group_verdict_from_details, score_mmbench, DuplicatePolicy, McqOptions, MmbenchReport,
    RowDetail,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn fixtures_root() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

fn load_expected(dir: &Path) -> Result<Value> {
    let p = dir.join("expected.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn inputs(dir: &Path, exp: &Value) -> Result<(PathBuf, PathBuf)> {
    let ds = exp["inputs"]["dataset_tsv"]
        .as_str()
        .context("inputs.dataset_tsv")?;
    let pr = exp["inputs"]["predictions"]
        .as_str()
        .context("inputs.predictions")?;
    Ok((dir.join(ds), dir.join(pr)))
}

/// Every key/element of `expected` must be present and equal in `actual` (numbers exactly).
fn check_subset(expected: &Value, actual: &Value, path: &str, errors: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => check_subset(ev, av, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}.{k}: missing (expected {ev})")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                errors.push(format!(
                    "{path}: length {} != expected {}",
                    a.len(),
                    e.len()
                ));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                check_subset(ev, av, &format!("{path}[{i}]"), errors);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if e.as_f64() != a.as_f64() {
                errors.push(format!("{path}: {a} != expected {e}"));
            }
        }
        (e, a) => {
            if e != a {
                errors.push(format!("{path}: {a} != expected {e}"));
            }
        }
    }
}

fn finish(name: &str, errors: Vec<String>) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let shown: Vec<&String> = errors.iter().take(40).collect();
    bail!(
        "{name}: {} mismatches:\n{}",
        errors.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// All logs the official code can produce for a group: duplicated indices may come out of the
/// unstable sort in any order (SPEC §1.6).
fn possible_logs(rows: &[&RowDetail]) -> Vec<String> {
    fn rec(runs: &[Vec<&RowDetail>], prefix: Vec<&RowDetail>, out: &mut Vec<String>) {
        let Some((first, rest)) = runs.split_first() else {
            out.push(group_verdict_from_details(&prefix).log);
            return;
        };
        for perm in permutations(first) {
            let mut p = prefix.clone();
            p.extend(perm);
            rec(rest, p, out);
        }
    }
    fn permutations<'a>(v: &[&'a RowDetail]) -> Vec<Vec<&'a RowDetail>> {
        if v.len() <= 1 {
            return vec![v.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..v.len() {
            let mut rest = v.to_vec();
            let x = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x);
                out.push(p);
            }
        }
        out
    }
    let mut runs: Vec<Vec<&RowDetail>> = Vec::new();
    for r in rows {
        match runs.last_mut() {
            Some(last) if last[0].index == r.index => last.push(r),
            _ => runs.push(vec![r]),
        }
    }
    let mut out = Vec::new();
    rec(&runs, Vec::new(), &mut out);
    out
}

fn check_groups(exp_groups: &Value, report: &MmbenchReport, path: &str, errors: &mut Vec<String>) {
    let Some(eg) = exp_groups.as_object() else {
        errors.push(format!("{path}: not an object"));
        return;
    };
    let mut members: HashMap<i64, Vec<&RowDetail>> = HashMap::new();
    for r in &report.rows {
        members.entry(r.g_index).or_default().push(r);
    }
    if eg.len() != report.circular.groups.len() {
        errors.push(format!(
            "{path}: {} groups != expected {}",
            report.circular.groups.len(),
            eg.len()
        ));
    }
    for (k, ev) in eg {
        let Ok(g) = k.parse::<i64>() else {
            errors.push(format!("{path}.{k}: key is not an int"));
            continue;
        };
        let Some(v) = report.circular.groups.get(&g) else {
            errors.push(format!("{path}.{k}: group missing"));
            continue;
        };
        let (hit, log) = match ev {
            Value::Object(o) => (
                o.get("hit").and_then(Value::as_u64),
                o.get("log").and_then(Value::as_str),
            ),
            other => (other.as_u64(), None),
        };
        if hit != Some(u64::from(v.hit)) {
            errors.push(format!("{path}.{k}.hit: {} != expected {hit:?}", v.hit));
        }
        if let Some(log) = log {
            let rows = &members[&g];
            let has_dups = rows.windows(2).any(|w| w[0].index == w[1].index);
            if has_dups {
                let logs = possible_logs(rows);
                if !logs.iter().any(|l| l == log) {
                    errors.push(format!(
                        "{path}.{k}.log: {log:?} is not among the possible logs {logs:?}"
                    ));
                }
            } else if v.log != log {
                errors.push(format!("{path}.{k}.log: {:?} != expected {log:?}", v.log));
            }
        }
    }
}

fn score(dir: &Path, exp: &Value, opts: &McqOptions) -> Result<MmbenchReport> {
    let (ds, pr) = inputs(dir, exp)?;
    Ok(score_mmbench(&ds, &pr, opts)?)
}

fn conformance(dir: &Path) -> Result<()> {
    let exp = load_expected(dir)?;
    conformance_with(dir, &exp)
}

/// Checks every number of `exp` against the scorer (`exp` may be a perturbed copy).
fn conformance_with(dir: &Path, exp: &Value) -> Result<()> {
    let exp = exp.clone();
    let report = score(dir, &exp, &McqOptions::default())?;
    let actual = serde_json::to_value(&report)?;
    let mut errors = Vec::new();

    if let Some(counts) = exp.get("counts") {
        check_subset(counts, &actual["counts"], "counts", &mut errors);
    }
    let circ = &exp["circular"];
    check_subset(
        &circ["acc"],
        &actual["circular"]["acc"],
        "circular.acc",
        &mut errors,
    );
    check_groups(&circ["groups"], &report, "circular.groups", &mut errors);
    if let Some(smr) = circ.get("scored_main_rows") {
        check_subset(
            smr,
            &actual["circular"]["scored_main_rows"],
            "circular.scored_main_rows",
            &mut errors,
        );
    }
    check_subset(&exp["rows"], &actual["rows"], "rows", &mut errors);

    if let Some(van) = exp.get("vanilla") {
        if let Some(conf) = van.get("conflicting_duplicate_indices") {
            check_subset(
                conf,
                &actual["vanilla"]["all"]["conflicting_duplicate_indices"],
                "vanilla.conflicting_duplicate_indices",
                &mut errors,
            );
        }
        let alts = van["alternatives"]
            .as_array()
            .context("vanilla.alternatives")?;
        // Each listed alternative must be reachable with the duplicate-policy option (explicit
        // shared verdicts); the default policy must give ONE of the outcomes seen in official
        // runs (thread order may have produced several of them).
        let d = &actual["vanilla"];
        let mut observed = 0;
        let mut default_matches = 0;
        let mut default_errors: Vec<String> = Vec::new();
        for (i, alt) in alts.iter().enumerate() {
            let verdicts: BTreeMap<i64, u8> = alt["shared_verdict_for_conflicting_indices"]
                .as_object()
                .context("shared_verdict_for_conflicting_indices")?
                .iter()
                .map(|(k, v)| Ok((k.parse::<i64>()?, v.as_u64().context("verdict")? as u8)))
                .collect::<Result<_>>()?;
            let opts = McqOptions {
                duplicates: DuplicatePolicy::Verdicts(verdicts),
                ..Default::default()
            };
            let r = serde_json::to_value(score(dir, &exp, &opts)?.vanilla)?;
            for part in ["circ0", "all"] {
                check_subset(
                    &alt[part],
                    &r[part],
                    &format!("vanilla.alternatives[{i}].{part}"),
                    &mut errors,
                );
            }
            if alt["observed_in_official_runs"].as_bool() == Some(true) {
                observed += 1;
                let mut errs = Vec::new();
                for part in ["circ0", "all"] {
                    check_subset(
                        &alt[part],
                        &d[part],
                        &format!("vanilla(default) vs alternatives[{i}].{part}"),
                        &mut errs,
                    );
                }
                if errs.is_empty() {
                    default_matches += 1;
                } else {
                    default_errors.extend(errs);
                }
            }
        }
        if observed == 0 && !alts.is_empty() {
            errors.push("vanilla: no alternative marked observed_in_official_runs".into());
        }
        if observed > 0 && default_matches == 0 {
            errors.push(format!(
                "vanilla: the default duplicate policy gives none of the {observed} observed outcome(s)"
            ));
            errors.extend(default_errors);
        }
    }

    if let Some(legacy) = exp.get("legacy_extraction").and_then(Value::as_object) {
        for (name, lx) in legacy {
            let version = ExtractionVersion::from_name(name)
                .with_context(|| format!("unknown legacy mode {name}"))?;
            let opts = McqOptions {
                matching: MatchOptions::version(version),
                ..Default::default()
            };
            let r = score(dir, &exp, &opts)?;
            let rv = serde_json::to_value(&r)?;
            check_subset(
                &lx["acc"],
                &rv["circular"]["acc"],
                &format!("legacy.{name}.acc"),
                &mut errors,
            );
            check_groups(
                &lx["groups"],
                &r,
                &format!("legacy.{name}.groups"),
                &mut errors,
            );
            check_subset(
                &lx["rows"],
                &rv["rows"],
                &format!("legacy.{name}.rows"),
                &mut errors,
            );
        }
    }
    // The Markdown renderer lists every column of the table.
    let md = report.circular.acc.to_markdown();
    for c in &report.circular.acc.columns {
        if !md.contains(c.as_str()) {
            errors.push(format!("markdown lacks column {c}"));
        }
    }
    finish(&dir.display().to_string(), errors)
}

#[test]
fn mmbench_matches_official() -> Result<()> {
    conformance(&fixtures_root().join("mmbench"))
}

/// The vanilla check is not vacuous: a perturbed number of any alternative fails, and marking as
/// observed only outcomes that the default duplicate policy does not give fails.
#[test]
fn vanilla_check_detects_perturbations() -> Result<()> {
    let dir = fixtures_root().join("mmbench");
    let exp = load_expected(&dir)?;
    let Some(alts) = exp["vanilla"]["alternatives"].as_array() else {
        eprintln!("skipping: no vanilla alternatives in {}", dir.display());
        return Ok(());
    };
    let n = alts.len();
    for i in 0..n {
        let mut bad = exp.clone();
        let overall = &mut bad["vanilla"]["alternatives"][i]["all"]["acc"]["rows"][0]["Overall"];
        let v = overall.as_f64().context("vanilla all Overall")?;
        *overall = serde_json::json!(v + 0.015625);
        assert!(
            conformance_with(&dir, &bad).is_err(),
            "perturbing alternatives[{i}].all Overall went unnoticed"
        );
    }
    // Only one alternative marked observed at a time: the default must match at least one; if
    // the alternatives differ, marking only the other one(s) must fail.
    let mut passes = Vec::new();
    for k in 0..n {
        let mut one = exp.clone();
        for j in 0..n {
            one["vanilla"]["alternatives"][j]["observed_in_official_runs"] = Value::Bool(j == k);
        }
        passes.push(conformance_with(&dir, &one).is_ok());
    }
    assert!(
        passes.iter().any(|&p| p),
        "the default matches no alternative"
    );
    let distinct = alts
        .iter()
        .any(|a| a["all"] != alts[0]["all"] || a["circ0"] != alts[0]["circ0"]);
    if distinct {
        assert!(
            passes.iter().any(|&p| !p),
            "marking only an outcome the default does not give went unnoticed"
        );
    }
    Ok(())
}

#[test]
fn mmbench_large_matches_official() -> Result<()> {
    let dir = fixtures_root().join("mmbench_large");
    if !dir.join("expected.json").exists() {
        eprintln!("skipping: {} absent", dir.display());
        return Ok(());
    }
    conformance(&dir)
}

#[test]
fn bench_items_cover_dataset() -> Result<()> {
    let dir = fixtures_root().join("mmbench");
    let exp = load_expected(&dir)?;
    let (ds, _) = inputs(&dir, &exp)?;
    let ds = mde_eval::mmbench::McqDataset::load(&ds)?;
    let items = ds.to_bench_items("mmbench");
    assert_eq!(items.len(), ds.rows.len());
    for it in &items {
        match &it.image {
            mde_core::records::ImageRef::Base64 { data } => {
                assert!(data.chars().count() > 64, "{}", it.id)
            }
            other => panic!("{}: image {other:?}", it.id),
        }
        assert!(
            it.answer_idx.is_none_or(|a| a < it.choices.len()) && !it.choices.is_empty(),
            "{}",
            it.id
        );
    }
    Ok(())
}
