//! Tests of the loop report: JSON round-trip, Markdown tables computed from the inputs, SVG
//! charts and the ablation summary.

use std::collections::BTreeMap;

use mde_loop::report::{
    accuracy_chart_svg, data_chart_svg, render_markdown, write_ablation, write_report, AblationArm,
    AblationSummary, EvalSummary, LoopReport, PerType, RoundSummary, TrainSummary,
};

const TYPES: [&str; 5] = ["color", "count", "OCR & text", "position", "shape"];

fn per_type(vals: &[f64]) -> PerType {
    TYPES
        .iter()
        .zip(vals)
        .map(|(t, v)| (t.to_string(), *v))
        .collect()
}

fn counts(vals: &[usize]) -> BTreeMap<String, usize> {
    TYPES
        .iter()
        .zip(vals)
        .map(|(t, v)| (t.to_string(), *v))
        .collect()
}

fn eval(bench: &str, vals: &[f64], overall: f64) -> EvalSummary {
    EvalSummary {
        benchmark: bench.into(),
        method: "likelihood".into(),
        items: 200,
        overall,
        per_type: per_type(vals),
        per_type_items: counts(&[40, 40, 40, 40, 40]),
    }
}

/// A 3-round report; `report_acc[k]` are the report accuracies of round k.
fn build(name: &str, strategy: &str, report_acc: [[f64; 5]; 3], gen_scale: usize) -> LoopReport {
    let mut rounds = Vec::new();
    for (k, acc) in report_acc.iter().enumerate() {
        let overall = acc.iter().sum::<f64>() / acc.len() as f64;
        let generated = k > 0;
        rounds.push(RoundSummary {
            round: k,
            mine: Some(eval("mine-bench", &acc.map(|v| v + 1.5), overall + 1.5)),
            report: Some(eval("report-bench", acc, overall)),
            blind: None,
            chance_levels: None,
            error_rates: generated.then(|| per_type(&acc.map(|v| 1.0 - v / 100.0))),
            sampling_probabilities: generated.then(|| per_type(&[0.3, 0.25, 0.2, 0.15, 0.1])),
            queries_per_type: generated.then(|| counts(&[30, 25, 20, 15, 10])),
            accepted_per_type: generated
                .then(|| counts(&[28 * gen_scale, 20 * gen_scale, 17 * gen_scale * k, 15, 9])),
            dropped: generated.then_some(11 * k),
            flags: generated.then(|| {
                [
                    ("bad_answer".to_string(), 4 * k),
                    ("too_short".to_string(), 7),
                ]
                .into_iter()
                .collect()
            }),
            train: Some(TrainSummary {
                mode: if k == 0 {
                    "full (from scratch)"
                } else {
                    "Lora"
                }
                .into(),
                steps: 100 + k as u64,
                first_loss: Some(3.25),
                final_loss: if k == 2 { None } else { Some(1.125) },
                seconds: 12.5 * (k + 1) as f64,
                examples: [("generated".to_string(), 90 * k)].into_iter().collect(),
            }),
            seconds: [
                ("eval_mine".to_string(), 3.0 + k as f64),
                ("train".to_string(), 12.5 * (k + 1) as f64),
            ]
            .into_iter()
            .collect(),
        });
    }
    LoopReport {
        name: name.into(),
        fingerprint: "abc123".into(),
        strategy: strategy.into(),
        model: "tiny".into(),
        teacher: "world teacher".into(),
        rounds,
        total_seconds: 3725.0,
        notes: vec!["a note".into()],
    }
}

const ACC: [[f64; 5]; 3] = [
    [62.5, 20.0, 35.0, 80.0, 27.5],
    [70.0, 32.5, 37.5, 77.5, 30.0],
    [72.5, 45.0, 40.0, 82.5, 42.5],
];

fn delta_str(x: f64) -> String {
    format!("{x:+.1}")
}

#[test]
fn report_json_roundtrip_and_files() -> anyhow::Result<()> {
    let r = build("demo", "abs", ACC, 1);
    let dir = tempfile::tempdir()?;
    let files = write_report(dir.path(), &r)?;
    let back: LoopReport = mde_core::io::read_json(&files.json)?;
    assert_eq!(back, r);
    assert!(files.markdown.exists() && files.chart.exists());
    let data = files.data_chart.expect("rounds generated data");
    assert!(std::fs::read_to_string(data)?.starts_with("<svg"));
    Ok(())
}

#[test]
fn report_markdown_tables_have_computed_deltas() {
    let r = build("demo", "abs", ACC, 1);
    let md = render_markdown(&r);
    assert!(md.contains("# Loop report: demo"));
    assert!(md.contains("world teacher") && md.contains("tiny") && md.contains("**abs**"));
    // Report-benchmark table: every type row with its rounds and the last-first delta.
    for (i, t) in TYPES.iter().enumerate() {
        let t_esc = t.to_string();
        let row = format!(
            "| {t_esc} | 40 | {:.1} | {:.1} | {:.1} | {} |",
            ACC[0][i],
            ACC[1][i],
            ACC[2][i],
            delta_str(ACC[2][i] - ACC[0][i])
        );
        assert!(md.contains(&row), "missing row {row}\n{md}");
    }
    let ov: Vec<f64> = ACC.iter().map(|a| a.iter().sum::<f64>() / 5.0).collect();
    let row = format!(
        "| **overall** | 200 | {:.1} | {:.1} | {:.1} | {} |",
        ov[0],
        ov[1],
        ov[2],
        delta_str(ov[2] - ov[0])
    );
    assert!(md.contains(&row), "missing {row}\n{md}");
    // Weakest 3 at round 0 computed from the inputs.
    let mut idx: Vec<usize> = (0..5).collect();
    idx.sort_by(|&a, &b| ACC[0][a].total_cmp(&ACC[0][b]));
    let mean = idx[..3].iter().map(|&i| ACC[2][i] - ACC[0][i]).sum::<f64>() / 3.0;
    let line = md
        .lines()
        .find(|l| l.contains("Weakest 3 types at round 0"))
        .expect("weakest line");
    for &i in &idx[..3] {
        assert!(line.contains(TYPES[i]), "{line}");
    }
    assert!(!line.contains(TYPES[idx[4]]), "{line}");
    assert!(
        line.contains(&format!("Mean gain by round 2: **{}**", delta_str(mean))),
        "{line}"
    );
    // Where the data went: round 1 color row (error rate in %, probability in %).
    let row = format!(
        "| color | {:.1} | 30.0 | 30 | 28 |",
        (1.0 - ACC[1][0] / 100.0) * 100.0
    );
    assert!(md.contains(&row), "missing {row}\n{md}");
    // Validation: round 2 accepted total, dropped, flags.
    let acc2 = 28 + 20 + 17 * 2 + 15 + 9;
    assert!(md.contains(&format!("| 2 | {acc2} | 22 | 8 | 7 |")), "{md}");
    // Training with a missing final loss, and round-0 mode.
    assert!(md.contains("| 2 | Lora | 102 | 3.2500 → – | 37.5 | generated: 180 |"));
    assert!(md.contains("full (from scratch)"));
    // Timings: per round sum and total.
    assert!(md.contains("| 1 | 4.0 | 25.0 | 29.0 |"), "{md}");
    assert!(md.contains("1:02:05"));
    // Round 0 drew no samples: no data section for it.
    assert!(md.contains("### Round 1") && !md.contains("### Round 0"));
    assert!(md.contains("- a note"));
    // No blind baseline, no chance column.
    assert!(!md.contains("Blind baseline") && !md.contains("chance (%)"));
}

#[test]
fn report_shows_the_blind_baseline_and_chance_levels() -> anyhow::Result<()> {
    let mut r = build("demo", "chance_discounted:2", ACC, 1);
    for x in &mut r.rounds {
        x.blind = Some(eval("mine-bench", &[50.0, 25.0, 33.5, 40.0, 26.0], 34.9));
        if x.round > 0 {
            x.chance_levels = Some(per_type(&[0.5, 0.25, 0.335, 0.4, 0.26]));
        }
    }
    let md = render_markdown(&r);
    assert!(
        md.contains("## Blind baseline (mining benchmark, blank image)"),
        "{md}"
    );
    assert!(
        md.contains("| color | 40 | 50.0 | 50.0 | 50.0 | 0.0 |"),
        "{md}"
    );
    assert!(md.contains("| type | error rate (%) | chance (%) | sampling p (%) |"));
    let row = format!(
        "| color | {:.1} | 50.0 | 30.0 | 30 | 28 |",
        (1.0 - ACC[1][0] / 100.0) * 100.0
    );
    assert!(md.contains(&row), "missing {row}\n{md}");
    assert!(md.contains("| **total** | – | – | – | 100 | "), "{md}");
    // The new fields survive the JSON round trip; reports without them still read.
    let dir = tempfile::tempdir()?;
    let files = write_report(dir.path(), &r)?;
    let back: LoopReport = mde_core::io::read_json(&files.json)?;
    assert_eq!(back, r);
    let old = build("demo", "abs", ACC, 1);
    let text = serde_json::to_string(&old)?;
    assert!(!text.contains("chance_levels") && !text.contains("\"blind\""));
    Ok(())
}

fn polylines(svg: &str) -> Vec<&str> {
    svg.match_indices("<polyline")
        .map(|(i, _)| {
            let end = svg[i..].find("/>").map(|e| i + e).unwrap_or(svg.len());
            &svg[i..end]
        })
        .collect()
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let s = tag.find(&key)? + key.len();
    let e = tag[s..].find('"')? + s;
    Some(&tag[s..e])
}

/// Whether the SVG has a `<text>` element whose content is exactly `s` (plotters writes the
/// content on its own line).
fn has_text(svg: &str, s: &str) -> bool {
    svg.contains(&format!(">\n{s}\n</text>"))
}

#[test]
fn report_accuracy_chart_has_one_line_per_type() -> anyhow::Result<()> {
    let r = build("demo", "abs", ACC, 1);
    let svg = accuracy_chart_svg(&r)?;
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let lines = polylines(&svg);
    let typed: Vec<&&str> = lines
        .iter()
        .filter(|p| attr(p, "stroke-width") == Some("2"))
        .collect();
    assert_eq!(typed.len(), TYPES.len(), "{svg}");
    for p in &typed {
        let pts = attr(p, "points").unwrap().split_whitespace().count();
        assert_eq!(pts, r.rounds.len());
    }
    // Distinct colors per type.
    let colors: std::collections::BTreeSet<&str> =
        typed.iter().filter_map(|p| attr(p, "stroke")).collect();
    assert_eq!(colors.len(), TYPES.len());
    let overall: Vec<&&str> = lines
        .iter()
        .filter(|p| attr(p, "stroke-width") == Some("4"))
        .collect();
    assert_eq!(overall.len(), 1);
    // Legend text (XML-escaped by the backend).
    for t in TYPES {
        let esc = t.replace('&', "&amp;");
        assert!(has_text(&svg, &esc), "legend lacks {t}");
    }
    assert!(has_text(&svg, "overall"));
    Ok(())
}

#[test]
fn report_data_chart_none_without_generation() -> anyhow::Result<()> {
    let mut r = build("demo", "abs", ACC, 1);
    assert!(data_chart_svg(&r)?.is_some());
    for x in &mut r.rounds {
        if let Some(m) = &mut x.accepted_per_type {
            m.values_mut().for_each(|v| *v = 0);
        }
    }
    assert!(data_chart_svg(&r)?.is_none());
    r.rounds.truncate(1);
    let dir = tempfile::tempdir()?;
    let files = write_report(dir.path(), &r)?;
    assert!(files.data_chart.is_none());
    assert!(!dir.path().join("data_by_round.svg").exists());
    Ok(())
}

/// An ablation arm labelled `label` holding `build(name, strategy, acc, gen_scale)`.
fn arm(
    label: &str,
    name: &str,
    strategy: &str,
    acc: [[f64; 5]; 3],
    gen_scale: usize,
) -> AblationArm {
    AblationArm {
        label: label.into(),
        report: build(name, strategy, acc, gen_scale),
    }
}

#[test]
fn report_ablation_files_and_weakest_mean() -> anyhow::Result<()> {
    let acc_b: [[f64; 5]; 3] = [ACC[0], ACC[1], [65.0, 25.0, 55.0, 79.0, 30.0]];
    let arms = vec![
        arm("abs", "a", "abs", ACC, 1),
        arm("uniform", "b", "uniform", acc_b, 2),
    ];
    let dir = tempfile::tempdir()?;
    let files = write_ablation(dir.path(), &arms)?;
    let s: AblationSummary = mde_core::io::read_json(&files.json)?;
    assert_eq!(s.arms.len(), 2);
    for (arm, acc) in s.arms.iter().zip([ACC, acc_b]) {
        let mut idx: Vec<usize> = (0..5).collect();
        idx.sort_by(|&a, &b| acc[0][a].total_cmp(&acc[0][b]));
        let want: Vec<String> = idx[..3].iter().map(|&i| TYPES[i].to_string()).collect();
        assert_eq!(arm.weakest, want);
        let mean = idx[..3].iter().map(|&i| acc[2][i] - acc[0][i]).sum::<f64>() / 3.0;
        assert!((arm.weakest_mean_delta.unwrap() - mean).abs() < 1e-9);
        for (i, t) in TYPES.iter().enumerate() {
            assert!((arm.delta[*t] - (acc[2][i] - acc[0][i])).abs() < 1e-9);
        }
        let ov = |a: &[f64; 5]| a.iter().sum::<f64>() / 5.0;
        assert!((arm.overall_delta.unwrap() - (ov(&acc[2]) - ov(&acc[0]))).abs() < 1e-9);
    }
    assert_eq!(s.arms[1].accepted_per_type["color"], 2 * 28 * 2);
    assert_eq!(s.arms[0].queries_per_type["count"], 50);
    let md = std::fs::read_to_string(&files.markdown)?;
    let d = |acc: &[[f64; 5]; 3], i: usize| delta_str(acc[2][i] - acc[0][i]);
    assert!(
        md.contains(&format!("| count | {} | {} |", d(&ACC, 1), d(&acc_b, 1))),
        "{md}"
    );
    let svg = std::fs::read_to_string(&files.chart)?;
    assert!(svg.starts_with("<svg"));
    assert!(has_text(&svg, "abs") && has_text(&svg, "uniform"));
    Ok(())
}

#[test]
fn ablation_over_seeds_reports_mean_and_sd_per_strategy() -> anyhow::Result<()> {
    let acc_b: [[f64; 5]; 3] = [ACC[0], ACC[1], [65.0, 25.0, 55.0, 79.0, 30.0]];
    let arms = vec![
        arm("abs (seed 0)", "a", "abs", ACC, 1),
        arm("abs (seed 1)", "b", "abs", acc_b, 1),
        arm("uniform (seed 0)", "c", "uniform", acc_b, 2),
    ];
    let dir = tempfile::tempdir()?;
    let files = write_ablation(dir.path(), &arms)?;
    let s: AblationSummary = mde_core::io::read_json(&files.json)?;
    // One group: "uniform" has a single arm.
    assert_eq!(s.by_strategy.len(), 1);
    let g = &s.by_strategy[0];
    assert_eq!((g.strategy.as_str(), g.arms), ("abs", 2));
    let (x, y) = (
        s.arms[0].overall_delta.unwrap(),
        s.arms[1].overall_delta.unwrap(),
    );
    assert!((g.overall_delta.mean - (x + y) / 2.0).abs() < 1e-9);
    assert!((g.overall_delta.sd - (x - y).abs() / 2f64.sqrt()).abs() < 1e-9);
    for (i, t) in TYPES.iter().enumerate() {
        let (p, q) = (ACC[2][i] - ACC[0][i], acc_b[2][i] - acc_b[0][i]);
        assert!((g.delta[*t].mean - (p + q) / 2.0).abs() < 1e-9, "{t}");
    }
    let md = std::fs::read_to_string(&files.markdown)?;
    assert!(md.contains("## By strategy"), "{md}");
    assert!(md.contains(&format!(
        "| abs | 2 | {:+.1} ± {:.1} |",
        g.overall_delta.mean, g.overall_delta.sd
    )));
    Ok(())
}
