//! Times MMBench circular scoring end to end from files (parse both TSVs, extract, group, report).
//!
//! ```text
//! cargo run --release -p mde-eval --example bench_mmbench -- [FIXTURE_DIR] [N]
//! ```
//! FIXTURE_DIR defaults to `$MDE_EVAL_FIXTURES/mmbench_large` (or the shared fixtures); N to 20.
use anyhow::{Context, Result};
use mde_eval::mmbench::{score_mmbench, McqOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next() {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("MDE_EVAL_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval")
            })
            .join("mmbench_large"),
    };
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("N must be an integer")?
        .unwrap_or(20);
    let ds = dir.join("MMBench_DEV_EN.tsv");
    let pr = dir.join("predictions.tsv");
    let opts = McqOptions::default();
    // Warm-up (page cache, allocator).
    let r = score_mmbench(&ds, &pr, &opts)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let r = score_mmbench(&ds, &pr, &opts)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r);
    }
    // Breakdown of one run: parsing vs scoring.
    let t0 = Instant::now();
    let dst = mde_eval::tsv::read_tsv(&ds)?;
    let t1 = Instant::now();
    let prt = mde_eval::tsv::read_tsv(&pr)?;
    let t2 = Instant::now();
    let dset = mde_eval::mmbench::McqDataset::from_table(dst)?;
    let t3 = Instant::now();
    std::hint::black_box(mde_eval::mmbench::score_mmbench_tables(&dset, prt, &opts)?);
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    println!(
        "breakdown: read dataset {:.2} ms, read predictions {:.2} ms, dataset setup {:.2} ms, scoring {:.2} ms",
        ms(t0, t1),
        ms(t1, t2),
        ms(t2, t3),
        ms(t3, t4)
    );
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / n as f64;
    println!("{}", r.circular.acc.to_markdown());
    println!(
        "rows={} groups={} runs={n} min={:.2} ms median={:.2} ms mean={:.2} ms",
        r.rows.len(),
        r.circular.groups.len(),
        times[0],
        times[n / 2],
        mean
    );
    Ok(())
}
