//! The comparison of several runs (arms) of an ablation.

use super::chart::grouped_bars_svg;
use super::markdown::*;
use super::*;

fn sum_counts<'a, I: IntoIterator<Item = &'a BTreeMap<String, usize>>>(
    maps: I,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_insert(0) += v;
        }
    }
    out
}

/// Derives one arm's numbers (see [`ArmSummary`]).
pub fn summarize_arm(arm: &AblationArm, k: usize) -> ArmSummary {
    let r = &arm.report;
    let series = primary_series(r);
    let first = series.first();
    let last = series.last();
    let round0 = first.map(|(_, e)| e.per_type.clone()).unwrap_or_default();
    let lastm = last.map(|(_, e)| e.per_type.clone()).unwrap_or_default();
    let delta: PerType = round0
        .iter()
        .filter_map(|(t, a)| lastm.get(t).map(|b| (t.clone(), b - a)))
        .collect();
    let w = weakest_gain(&series, k);
    let overall_round0 = first.map(|(_, e)| e.overall);
    let overall_last = last.map(|(_, e)| e.overall);
    ArmSummary {
        label: arm.label.clone(),
        name: r.name.clone(),
        strategy: r.strategy.clone(),
        fingerprint: r.fingerprint.clone(),
        benchmark: first.map(|(_, e)| e.benchmark.clone()),
        first_round: first.map(|(k, _)| *k),
        last_round: last.map(|(k, _)| *k),
        round0,
        last: lastm,
        delta,
        weakest: w
            .as_ref()
            .map(|w| w.types.iter().map(|x| x.0.clone()).collect())
            .unwrap_or_default(),
        weakest_mean_delta: w.and_then(|w| w.mean_gain),
        overall_round0,
        overall_last,
        overall_delta: overall_round0.zip(overall_last).map(|(a, b)| b - a),
        accepted_per_type: sum_counts(r.rounds.iter().filter_map(|x| x.accepted_per_type.as_ref())),
        queries_per_type: sum_counts(r.rounds.iter().filter_map(|x| x.queries_per_type.as_ref())),
    }
}

/// Summarizes every arm with `k` = [`WEAKEST_K`].
pub fn summarize_ablation(arms: &[AblationArm]) -> AblationSummary {
    let arms: Vec<ArmSummary> = arms.iter().map(|a| summarize_arm(a, WEAKEST_K)).collect();
    let types = union_types(arms.iter().flat_map(|a| [&a.round0, &a.last]));
    let by_strategy = strategy_stats(&arms, &types);
    AblationSummary {
        k: WEAKEST_K,
        types,
        arms,
        by_strategy,
    }
}

fn render_ablation_markdown(s: &AblationSummary) -> String {
    let mut md = String::from("# Ablation\n\n");
    md.push_str(&format!(
        "{} arms. Accuracies in % on each arm's reporting benchmark (its mining benchmark if it \
         had none), first vs last evaluated round; Δ in percentage points. Weakest-{} = the {} \
         types with the lowest accuracy at the arm's first round.\n\n",
        s.arms.len(),
        s.k,
        s.k
    ));
    let rows: Vec<Vec<String>> = s
        .arms
        .iter()
        .map(|a| {
            vec![
                a.label.clone(),
                a.strategy.clone(),
                a.benchmark.clone().unwrap_or_else(|| DASH.into()),
                match (a.first_round, a.last_round) {
                    (Some(f), Some(l)) => format!("{f} → {l}"),
                    _ => DASH.into(),
                },
                opt_pct(a.overall_round0),
                opt_pct(a.overall_last),
                opt_delta(a.overall_delta),
                if a.weakest.is_empty() {
                    DASH.into()
                } else {
                    a.weakest.join(", ")
                },
                opt_delta(a.weakest_mean_delta),
                a.accepted_per_type.values().sum::<usize>().to_string(),
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &[
            "arm",
            "strategy",
            "benchmark",
            "rounds",
            "overall first",
            "overall last",
            "Δ overall",
            &format!("weakest-{} types", s.k),
            &format!("Δ weakest-{} (mean)", s.k),
            "accepted items",
        ],
        &rows,
    ));

    if !s.by_strategy.is_empty() {
        let ms = |m: &MeanSd| format!("{:+.1} ± {:.1}", m.mean, m.sd);
        let mut headers = vec![
            "strategy".to_string(),
            "arms".to_string(),
            "Δ overall".to_string(),
            format!("Δ weakest-{} (mean)", s.k),
        ];
        headers.extend(s.types.iter().map(|t| format!("Δ {t}")));
        let rows: Vec<Vec<String>> = s
            .by_strategy
            .iter()
            .map(|g| {
                let mut row = vec![
                    g.strategy.clone(),
                    g.arms.to_string(),
                    ms(&g.overall_delta),
                    ms(&g.weakest_mean_delta),
                ];
                row.extend(
                    s.types
                        .iter()
                        .map(|t| g.delta.get(t).map(ms).unwrap_or_else(|| DASH.into())),
                );
                row
            })
            .collect();
        md.push_str(&format!(
            "\n## By strategy (mean ± sample sd over its arms, points)\n\n{}",
            markdown_table(&headers, &rows)
        ));
    }

    let labels: Vec<String> = s.arms.iter().map(|a| a.label.clone()).collect();
    let per_type = |title: &str, cell: &dyn Fn(&ArmSummary, &str) -> String| {
        let mut headers = vec!["type".to_string()];
        headers.extend(labels.iter().cloned());
        let rows: Vec<Vec<String>> = s
            .types
            .iter()
            .map(|t| {
                let mut row = vec![t.clone()];
                row.extend(s.arms.iter().map(|a| cell(a, t)));
                row
            })
            .collect();
        format!("\n## {title}\n\n{}", markdown_table(&headers, &rows))
    };
    md.push_str(&per_type("Accuracy at the first round (%)", &|a, t| {
        opt_pct(a.round0.get(t).copied())
    }));
    md.push_str(&per_type("Accuracy at the last round (%)", &|a, t| {
        opt_pct(a.last.get(t).copied())
    }));
    md.push_str(&per_type("Δ last − first (points)", &|a, t| {
        opt_delta(a.delta.get(t).copied())
    }));
    md.push_str(&per_type(
        "Generated items kept per type (all rounds; queries in parentheses)",
        &|a, t| {
            format!(
                "{} ({})",
                a.accepted_per_type.get(t).copied().unwrap_or(0),
                a.queries_per_type.get(t).copied().unwrap_or(0)
            )
        },
    ));
    md
}

/// Writes `ablation.json` ([`AblationSummary`]), `ablation.md` and `ablation.svg` (grouped bars
/// of the per-type delta by arm) into `dir`.
pub fn write_ablation(dir: &Path, arms: &[AblationArm]) -> Result<ReportFiles> {
    let s = summarize_ablation(arms);
    let files = ReportFiles {
        json: dir.join("ablation.json"),
        markdown: dir.join("ablation.md"),
        chart: dir.join("ablation.svg"),
        data_chart: None,
    };
    write_json(&files.json, &s)?;
    atomic_write(&files.markdown, render_ablation_markdown(&s).as_bytes())?;
    let series: Vec<(String, Vec<f64>)> = s
        .arms
        .iter()
        .map(|a| {
            let v = s
                .types
                .iter()
                .map(|t| a.delta.get(t).copied().unwrap_or(f64::NAN))
                .collect();
            (a.label.clone(), v)
        })
        .collect();
    let svg = grouped_bars_svg(
        "Per-type accuracy change (last − first round) by arm",
        "type",
        "Δ accuracy (points)",
        1,
        &s.types,
        &series,
    )?;
    atomic_write(&files.chart, svg.as_bytes())?;
    Ok(files)
}
