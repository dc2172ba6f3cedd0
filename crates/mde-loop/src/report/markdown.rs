//! `report.md`: a run's report as Markdown tables.

use super::*;

pub(super) fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        DASH.into()
    }
}

pub(super) fn opt_pct(x: Option<f64>) -> String {
    x.map(pct).unwrap_or_else(|| DASH.into())
}

/// Signed percentage points; a value that rounds to zero prints as `0.0` (never `-0.0`).
pub(super) fn delta(x: f64) -> String {
    if !x.is_finite() {
        DASH.into()
    } else if (x * 10.0).round() == 0.0 {
        "0.0".into()
    } else {
        format!("{x:+.1}")
    }
}

pub(super) fn opt_delta(x: Option<f64>) -> String {
    x.map(delta).unwrap_or_else(|| DASH.into())
}

pub(super) fn opt_count(x: Option<usize>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| DASH.into())
}

pub(super) fn secs(x: f64) -> String {
    format!("{x:.1}")
}

pub(super) fn hms(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return DASH.into();
    }
    let s = x.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

pub(super) fn loss(x: Option<f32>) -> String {
    x.map(|v| format!("{v:.4}")).unwrap_or_else(|| DASH.into())
}

pub(super) fn kv_list(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return DASH.into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Markdown.

/// Accuracy-by-round table of one benchmark (`pick` chooses mine or report).
pub(super) fn accuracy_table(
    r: &LoopReport,
    pick: impl Fn(&RoundSummary) -> Option<&EvalSummary>,
) -> Option<String> {
    let series: Vec<(usize, &EvalSummary)> = r
        .rounds
        .iter()
        .filter_map(|x| pick(x).map(|e| (x.round, e)))
        .collect();
    let (_, first) = *series.first()?;
    let (_, last) = *series.last()?;
    let mut headers = vec!["type".to_string(), "n".to_string()];
    headers.extend(r.rounds.iter().map(|x| format!("round {}", x.round)));
    headers.push("Δ last−first".into());
    let types = union_types(series.iter().map(|(_, e)| &e.per_type));
    let mut rows = Vec::new();
    for t in &types {
        let mut row = vec![
            t.clone(),
            opt_count(
                series
                    .iter()
                    .find_map(|(_, e)| e.per_type_items.get(t).copied()),
            ),
        ];
        row.extend(
            r.rounds
                .iter()
                .map(|x| opt_pct(pick(x).and_then(|e| e.per_type.get(t).copied()))),
        );
        let d = match (first.per_type.get(t), last.per_type.get(t)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        row.push(opt_delta(d));
        rows.push(row);
    }
    let mut row = vec!["**overall**".to_string(), first.items.to_string()];
    row.extend(r.rounds.iter().map(|x| opt_pct(pick(x).map(|e| e.overall))));
    row.push(delta(last.overall - first.overall));
    rows.push(row);
    let bench = &first.benchmark;
    Some(format!(
        "Benchmark `{bench}` (method `{}`, {} items). Accuracy in %; Δ is in percentage points \
         between the first and the last evaluated round; n = items of the type.\n\n{}",
        first.method,
        first.items,
        markdown_table(&headers, &rows)
    ))
}

/// Renders the loop report as Markdown (see the module docs for what it contains).
pub fn render_markdown(r: &LoopReport) -> String {
    let mut md = String::new();
    md.push_str(&format!("# Loop report: {}\n\n", r.name));
    md.push_str(&format!(
        "- strategy: **{}**\n- model: {}\n- teacher: {}\n- fingerprint: `{}`\n\
         - rounds: {} (round 0 = base model)\n- total wall time: {} s ({})\n\n",
        r.strategy,
        r.model,
        r.teacher,
        r.fingerprint,
        r.rounds.len(),
        secs(r.total_seconds),
        hms(r.total_seconds)
    ));

    let report_bench = uses_report_bench(r);
    md.push_str("## Accuracy by round (reporting benchmark)\n\n");
    match accuracy_table(r, |x| x.report.as_ref()) {
        Some(t) => md.push_str(&t),
        None => md.push_str("No reporting-benchmark evaluation was recorded.\n"),
    }
    md.push('\n');

    let series = primary_series(r);
    match weakest_gain(&series, WEAKEST_K) {
        Some(w) if !w.types.is_empty() => {
            let bench = if report_bench { "reporting" } else { "mining" };
            let list = w
                .types
                .iter()
                .map(|(t, v, g)| format!("{t} ({}%, {})", pct(*v), opt_delta(*g)))
                .collect::<Vec<_>>()
                .join(", ");
            md.push_str(&format!(
                "**Weakest {} types at round {}** ({bench} benchmark): {list}. \
                 Mean gain by round {}: **{}** points.\n\n",
                w.types.len(),
                w.first_round,
                w.last_round,
                opt_delta(w.mean_gain)
            ));
        }
        _ => md.push_str("Weakest types: – (no evaluation recorded).\n\n"),
    }

    md.push_str("## Accuracy by round (mining benchmark)\n\n");
    match accuracy_table(r, |x| x.mine.as_ref()) {
        Some(t) => md.push_str(&t),
        None => md.push_str("No mining-benchmark evaluation was recorded.\n"),
    }
    md.push('\n');
    if let Some(t) = accuracy_table(r, |x| x.blind.as_ref()) {
        md.push_str("## Blind baseline (mining benchmark, blank image)\n\n");
        md.push_str(
            "What each round's model answers without seeing the image: the chance level \
             `chance_discounted` discounts error rates by (never below 1 / number of choices).\n\n",
        );
        md.push_str(&t);
        md.push('\n');
    }

    md.push_str("## Where the data went\n\n");
    md.push_str(
        "Per generated round: the error rate on the mining benchmark that drove sampling, the \
         sampling probability, teacher queries and items kept after validation.\n\n",
    );
    let mut any_data = false;
    for x in &r.rounds {
        if x.error_rates.is_none()
            && x.sampling_probabilities.is_none()
            && x.queries_per_type.is_none()
            && x.accepted_per_type.is_none()
        {
            continue;
        }
        any_data = true;
        let mut set: BTreeSet<&String> = BTreeSet::new();
        set.extend(x.error_rates.iter().flat_map(|m| m.keys()));
        set.extend(x.sampling_probabilities.iter().flat_map(|m| m.keys()));
        set.extend(x.queries_per_type.iter().flat_map(|m| m.keys()));
        set.extend(x.accepted_per_type.iter().flat_map(|m| m.keys()));
        let chance = x.chance_levels.as_ref();
        let mut rows: Vec<Vec<String>> = set
            .iter()
            .map(|t| {
                let mut row = vec![
                    (*t).clone(),
                    opt_pct(
                        x.error_rates
                            .as_ref()
                            .and_then(|m| m.get(*t))
                            .map(|v| v * 100.0),
                    ),
                ];
                if let Some(c) = chance {
                    row.push(opt_pct(c.get(*t).map(|v| v * 100.0)));
                }
                row.extend([
                    opt_pct(
                        x.sampling_probabilities
                            .as_ref()
                            .and_then(|m| m.get(*t))
                            .map(|v| v * 100.0),
                    ),
                    opt_count(x.queries_per_type.as_ref().and_then(|m| m.get(*t).copied())),
                    opt_count(
                        x.accepted_per_type
                            .as_ref()
                            .and_then(|m| m.get(*t).copied()),
                    ),
                ]);
                row
            })
            .collect();
        let mut total = vec!["**total**".to_string(), DASH.into(), DASH.into()];
        if chance.is_some() {
            total.push(DASH.into());
        }
        total.extend([
            opt_count(x.queries_per_type.as_ref().map(|m| m.values().sum())),
            opt_count(x.accepted_per_type.as_ref().map(|m| m.values().sum())),
        ]);
        rows.push(total);
        let mut head = vec!["type", "error rate (%)"];
        if chance.is_some() {
            head.push("chance (%)");
        }
        head.extend(["sampling p (%)", "queries", "accepted"]);
        md.push_str(&format!("### Round {}\n\n", x.round));
        md.push_str(&markdown_table(&head, &rows));
        md.push('\n');
    }
    if !any_data {
        md.push_str("No round generated data.\n\n");
    }

    md.push_str("## Validation\n\n");
    let flag_names: BTreeSet<&String> = r
        .rounds
        .iter()
        .flat_map(|x| x.flags.iter().flat_map(|m| m.keys()))
        .collect();
    let val_rounds: Vec<&RoundSummary> = r
        .rounds
        .iter()
        .filter(|x| x.dropped.is_some() || x.flags.is_some() || x.accepted_per_type.is_some())
        .collect();
    if val_rounds.is_empty() {
        md.push_str("No generated items were validated.\n\n");
    } else {
        let mut headers = vec!["round".to_string(), "accepted".into(), "dropped".into()];
        headers.extend(flag_names.iter().map(|f| format!("flag `{f}`")));
        let rows: Vec<Vec<String>> = val_rounds
            .iter()
            .map(|x| {
                let mut row = vec![
                    x.round.to_string(),
                    opt_count(x.accepted_per_type.as_ref().map(|m| m.values().sum())),
                    opt_count(x.dropped),
                ];
                row.extend(flag_names.iter().map(|f| match &x.flags {
                    Some(m) => m.get(*f).copied().unwrap_or(0).to_string(),
                    None => DASH.into(),
                }));
                row
            })
            .collect();
        md.push_str(&markdown_table(&headers, &rows));
        md.push('\n');
    }

    md.push_str("## Training\n\n");
    let rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| match &x.train {
            Some(t) => vec![
                x.round.to_string(),
                t.mode.clone(),
                t.steps.to_string(),
                format!("{} → {}", loss(t.first_loss), loss(t.final_loss)),
                secs(t.seconds),
                kv_list(&t.examples),
            ],
            None => vec![
                x.round.to_string(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
                DASH.into(),
            ],
        })
        .collect();
    md.push_str(&markdown_table(
        &[
            "round",
            "mode",
            "steps",
            "loss first → final",
            "seconds",
            "examples",
        ],
        &rows,
    ));
    md.push('\n');

    md.push_str("## Step timings (wall seconds)\n\n");
    let steps: BTreeSet<&String> = r.rounds.iter().flat_map(|x| x.seconds.keys()).collect();
    let mut headers = vec!["round".to_string()];
    headers.extend(steps.iter().map(|s| s.to_string()));
    headers.push("sum".into());
    let mut rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| {
            let mut row = vec![x.round.to_string()];
            row.extend(
                steps
                    .iter()
                    .map(|s| x.seconds.get(*s).map(|v| secs(*v)).unwrap_or(DASH.into())),
            );
            row.push(secs(x.seconds.values().sum()));
            row
        })
        .collect();
    let mut total = vec!["**all rounds**".to_string()];
    total.extend(steps.iter().map(|s| {
        secs(
            r.rounds
                .iter()
                .filter_map(|x| x.seconds.get(*s))
                .sum::<f64>(),
        )
    }));
    total.push(secs(r.rounds.iter().flat_map(|x| x.seconds.values()).sum()));
    rows.push(total);
    md.push_str(&markdown_table(&headers, &rows));
    md.push_str(&format!(
        "\nTotal wall time of the run: {} s ({}).\n",
        secs(r.total_seconds),
        hms(r.total_seconds)
    ));

    if !r.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &r.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Charts.
