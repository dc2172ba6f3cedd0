//! The SVG charts of a run (plotters' pure-Rust SVG backend).

use super::*;

pub(super) fn plot_err<E: std::fmt::Display>(e: E) -> LoopError {
    LoopError::Report(e.to_string())
}

const LEGEND_W: u32 = 220;
const ROW_H: u32 = 20;

pub(super) fn canvas_height(legend_rows: usize) -> u32 {
    (70 + ROW_H * legend_rows as u32).max(480)
}

/// Draws a legend (filled swatch + label per entry) into its own area right of the plot, so it
/// never hides data whatever the number of types.
pub(super) fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, RGBColor)],
) -> Result<()> {
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = 50 + (i as i32) * ROW_H as i32;
        area.draw(&Rectangle::new([(10, y - 6), (28, y + 6)], color.filled()))
            .map_err(plot_err)?;
        area.draw(&Text::new(
            label.clone(),
            (34, y - 7),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

pub(super) fn series_color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Per-type accuracy on the reporting benchmark by round (the mining benchmark if the run has no
/// reporting benchmark): one line per type, the overall accuracy as a thicker black line, a
/// legend, y from 0 to 100.
pub fn accuracy_chart_svg(r: &LoopReport) -> Result<String> {
    let series = primary_series(r);
    let types = union_types(series.iter().map(|(_, e)| &e.per_type));
    let bench = series
        .first()
        .map(|(_, e)| e.benchmark.clone())
        .unwrap_or_else(|| "no evaluation recorded".into());
    let max_round = r.rounds.iter().map(|x| x.round).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let w = 760 + LEGEND_W;
        let h = canvas_height(types.len() + 1);
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("Accuracy by round: {bench} ({}, {})", r.name, r.strategy),
                ("sans-serif", 18).into_font(),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.2f64..max_round as f64 + 0.2, 0f64..100f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("accuracy (%)")
            .x_labels(max_round + 1)
            .x_label_formatter(&|x: &f64| {
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_labels(11)
            .draw()
            .map_err(plot_err)?;
        let mut entries = Vec::new();
        for (i, t) in types.iter().enumerate() {
            let color = series_color(i);
            let pts: Vec<(f64, f64)> = series
                .iter()
                .filter_map(|(k, e)| e.per_type.get(t).map(|v| (*k as f64, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(plot_err)?;
            entries.push((t.clone(), color));
        }
        let overall: Vec<(f64, f64)> = series
            .iter()
            .map(|(k, e)| (*k as f64, e.overall))
            .filter(|(_, v)| v.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(overall.clone(), BLACK.stroke_width(4)))
            .map_err(plot_err)?;
        chart
            .draw_series(overall.iter().map(|p| Circle::new(*p, 4, BLACK.filled())))
            .map_err(plot_err)?;
        entries.push(("overall".to_string(), BLACK));
        draw_legend(&legend, &entries)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Grouped vertical bars: one group per x category, one bar per series inside the group.
/// `values[s][c]` is series `s` at category `c`.
pub(super) fn grouped_bars_svg(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    y_decimals: usize,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<String> {
    let (mut lo, mut hi) = (0f64, 0f64);
    for v in series.iter().flat_map(|(_, v)| v).filter(|v| v.is_finite()) {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    let pad = ((hi - lo) * 0.08).max(1.0);
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let n_cat = categories.len().max(1);
    let mut svg = String::new();
    {
        let plot_w = (120 + 60 * n_cat * series.len().max(1)).clamp(760, 1800) as u32;
        let h = canvas_height(series.len());
        let root = SVGBackend::with_string(&mut svg, (plot_w + LEGEND_W, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(plot_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(caption, ("sans-serif", 18).into_font())
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..n_cat as f64 - 0.5, lo..hi)
            .map_err(plot_err)?;
        let cats = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_label_formatter(&|y: &f64| format!("{y:.y_decimals$}"))
            .x_labels(n_cat)
            .x_label_formatter(&move |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_err)?;
        let group_w = 0.8;
        let bar_w = group_w / series.len().max(1) as f64;
        let mut entries = Vec::new();
        for (s, (label, values)) in series.iter().enumerate() {
            let color = series_color(s);
            let bars = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(c, v)| {
                    let x0 = c as f64 - group_w / 2.0 + s as f64 * bar_w;
                    Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.9, *v)], color.filled())
                });
            chart.draw_series(bars).map_err(plot_err)?;
            entries.push((label.clone(), color));
        }
        if lo < 0.0 {
            chart
                .draw_series(LineSeries::new(
                    [(-0.5, 0.0), (n_cat as f64 - 0.5, 0.0)],
                    BLACK.stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Accepted generated items per type per round as grouped bars; `None` if no round generated
/// anything.
pub fn data_chart_svg(r: &LoopReport) -> Result<Option<String>> {
    let rounds: Vec<(usize, &BTreeMap<String, usize>)> = r
        .rounds
        .iter()
        .filter_map(|x| x.accepted_per_type.as_ref().map(|m| (x.round, m)))
        .collect();
    if rounds.iter().all(|(_, m)| m.values().all(|v| *v == 0)) {
        return Ok(None);
    }
    let types: Vec<String> = rounds
        .iter()
        .flat_map(|(_, m)| m.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    let categories: Vec<String> = rounds.iter().map(|(k, _)| format!("round {k}")).collect();
    let series: Vec<(String, Vec<f64>)> = types
        .iter()
        .map(|t| {
            let v = rounds
                .iter()
                .map(|(_, m)| m.get(t).copied().unwrap_or(0) as f64)
                .collect();
            (t.clone(), v)
        })
        .collect();
    grouped_bars_svg(
        &format!("Accepted generated items per type ({})", r.name),
        "round",
        "items",
        0,
        &categories,
        &series,
    )
    .map(Some)
}

// ---------------------------------------------------------------------------------------------
// Writing.
