//! `mde loop`: the closed loop (evaluate -> mine bad cases -> ABS -> generate -> validate ->
//! train -> evaluate), round after round, resumable at step granularity.

use std::path::PathBuf;

use anyhow::{bail, Context};
use mde_loop::config::LoopConfig;
use mde_loop::run::LoopRun;

#[derive(clap::Args)]
pub struct Args {
    /// Loop config (TOML), e.g. configs/shapes-demo.toml or configs/minigpt4-7b.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder; re-running the same command resumes there.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only check every input (files, shapes, teacher settings) and exit; starts no work.
    #[arg(long)]
    pub check: bool,
    /// Override `[run] rounds`.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Override `[abs] strategy` (uniform, error_rate, chance_discounted[:POWER], softmax:T).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Override `[base] vqa`: `balanced` trains the tiny base model on the balanced set (the
    /// learnability control; use with `--rounds 0`).
    #[arg(long)]
    pub base_vqa: Option<String>,
    /// Run one loop per ABS strategy (comma-separated, e.g.
    /// `uniform,error_rate,chance_discounted:2`) at equal data volume into `OUT/<strategy>/`,
    /// sharing the cached base model, and compare them in `OUT/ablation/`.
    #[arg(long, value_delimiter = ',')]
    pub ablation: Vec<String>,
    /// With --ablation: repeat every arm with each of these `[run] seed`s (sampling, teacher and
    /// round training; the base model is shared) into `OUT/<strategy>/seed-<s>/`; the report
    /// adds per-strategy means and standard deviations over the seeds.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = LoopConfig::load(&args.config)?;
    if let Some(r) = args.rounds {
        cfg.run.rounds = r;
    }
    if let Some(s) = args.strategy {
        cfg.abs.strategy = s;
    }
    if let Some(v) = args.base_vqa {
        cfg.base.vqa = v;
    }
    cfg.validate()?;
    if args.check {
        let report = mde_loop::check::check(&cfg, args.out.as_deref());
        print!("{}", report.to_text());
        if !report.is_ok() {
            bail!(
                "{}: inputs are missing or do not fit (see above)",
                args.config.display()
            );
        }
        return Ok(());
    }
    let out = args
        .out
        .context("--out DIR is required (where the run writes; re-run to resume)")?;
    if !args.seeds.is_empty() && args.ablation.is_empty() {
        bail!("--seeds repeats the arms of --ablation; give --ablation too");
    }
    if !args.ablation.is_empty() {
        let mut arms = Vec::new();
        let seeds: Vec<Option<u64>> = if args.seeds.is_empty() {
            vec![None]
        } else {
            args.seeds.iter().copied().map(Some).collect()
        };
        for (strategy, seed) in args
            .ablation
            .iter()
            .flat_map(|st| seeds.iter().map(move |s| (st, *s)))
        {
            let mut c = cfg.clone();
            c.abs.strategy = strategy.clone();
            if let Some(s) = seed {
                c.run.seed = s;
            }
            c.validate()
                .with_context(|| format!("--ablation {strategy}"))?;
            let label: String = strategy
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        ch
                    } else {
                        '-'
                    }
                })
                .collect();
            let (dir, arm_label) = match seed {
                Some(s) => (
                    out.join(&label).join(format!("seed-{s}")),
                    format!("{strategy} (seed {s})"),
                ),
                None => (out.join(&label), strategy.clone()),
            };
            eprintln!("ablation arm {arm_label}: {}", dir.display());
            let mut run = LoopRun::new(c, &dir)?;
            if args.no_progress {
                run.set_progress(false);
            }
            arms.push(mde_loop::report::AblationArm {
                label: arm_label,
                report: run.run()?,
            });
        }
        let files = mde_loop::report::write_ablation(&out.join("ablation"), &arms)?;
        eprintln!("ablation report: {}", files.markdown.display());
        return Ok(());
    }
    let mut run = LoopRun::new(cfg, &out)?;
    if args.no_progress {
        run.set_progress(false);
    }
    let report = run.run()?;
    let last = report.rounds.last();
    eprintln!(
        "done in {:.0} s: {} round(s); report in {}",
        report.total_seconds,
        report.rounds.len().saturating_sub(1),
        out.join("report").join("report.md").display()
    );
    if let (Some(first), Some(last)) = (report.rounds.first(), last) {
        if let (Some(a), Some(b)) = (&first.report, &last.report) {
            eprintln!(
                "report benchmark ({}): overall {:.1}% -> {:.1}%",
                a.benchmark, a.overall, b.overall
            );
        }
    }
    Ok(())
}
