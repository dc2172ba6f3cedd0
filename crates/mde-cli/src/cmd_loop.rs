//! `mde loop`: the closed loop (evaluate -> mine bad cases -> ABS -> generate -> validate ->
//! train -> evaluate), round after round, resumable at step granularity.

use std::path::{Path, PathBuf};

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
    #[arg(long, value_parser = ["unbalanced", "balanced"])]
    pub base_vqa: Option<String>,
    /// Override `[base] steps` of the tiny base model's build (the balanced control of
    /// docs/RESULTS.md uses 8000). The pretrained visual encoder does not depend on it.
    #[arg(long)]
    pub base_steps: Option<usize>,
    /// Run one loop per ABS strategy (comma-separated, e.g.
    /// `uniform,error_rate,chance_discounted:2`) at equal data volume into `OUT/<strategy>/`,
    /// sharing the cached base model, and compare them in `OUT/ablation/`. `STRATEGY@blind`
    /// (or `@choices`) also sets the arm's `[abs] chance`, e.g. `chance_discounted:2@blind`.
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
        cfg.base.vqa = match v.as_str() {
            "balanced" => mde_world::BaseVariant::Balanced,
            _ => mde_world::BaseVariant::Unbalanced,
        };
    }
    if let Some(n) = args.base_steps {
        cfg.base.steps = n;
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
        for arm in ablation_arms(&cfg, &out, &args.ablation, &args.seeds)? {
            eprintln!("ablation arm {}: {}", arm.label, arm.dir.display());
            let mut run = LoopRun::new(arm.cfg, &arm.dir)?;
            if args.no_progress {
                run.set_progress(false);
            }
            arms.push(mde_loop::report::AblationArm {
                label: arm.label,
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

/// One arm of `--ablation`: its report label, output folder and config.
struct Arm {
    label: String,
    dir: PathBuf,
    cfg: LoopConfig,
}

/// The arms of `--ablation STRATEGIES [--seeds SEEDS]`, strategy-major: `OUT/<strategy>/` or,
/// with seeds, `OUT/<strategy>/seed-<s>/` with `[run] seed = s`. Every arm shares the cache a
/// plain run into OUT would use, so the world and the base model are built once.
fn ablation_arms(
    cfg: &LoopConfig,
    out: &Path,
    strategies: &[String],
    seeds: &[u64],
) -> anyhow::Result<Vec<Arm>> {
    let seeds: Vec<Option<u64>> = if seeds.is_empty() {
        vec![None]
    } else {
        seeds.iter().copied().map(Some).collect()
    };
    let cache = cfg
        .run
        .cache_dir
        .clone()
        .unwrap_or_else(|| mde_loop::run::default_cache_dir(out));
    let mut arms = Vec::new();
    for strategy in strategies {
        let folder: String = strategy
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || ch == '_' {
                    ch
                } else {
                    '-'
                }
            })
            .collect();
        let (name, chance) = match strategy.split_once('@') {
            Some((n, c)) => (
                n.trim(),
                Some(
                    c.parse::<mde_loop::config::ChanceSource>()
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("--ablation {strategy}"))?,
                ),
            ),
            None => (strategy.as_str(), None),
        };
        for seed in &seeds {
            let mut c = cfg.clone();
            c.abs.strategy = name.to_string();
            if let Some(ch) = chance {
                c.abs.chance = ch;
            }
            c.run.cache_dir = Some(cache.clone());
            if let Some(s) = seed {
                c.run.seed = *s;
            }
            c.validate()
                .with_context(|| format!("--ablation {strategy}"))?;
            let (dir, label) = match seed {
                Some(s) => (
                    out.join(&folder).join(format!("seed-{s}")),
                    format!("{strategy} (seed {s})"),
                ),
                None => (out.join(&folder), strategy.clone()),
            };
            arms.push(Arm { label, dir, cfg: c });
        }
    }
    Ok(arms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ablation_arms_share_one_cache_and_nest_seeds() -> anyhow::Result<()> {
        let cfg = LoopConfig::load(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/shapes-demo.toml"),
        )?;
        let out = Path::new("runs/abl");
        let arms = ablation_arms(
            &cfg,
            out,
            &["uniform".into(), "chance_discounted:2".into()],
            &[0, 7],
        )?;
        let got: Vec<(&str, PathBuf, u64, &str)> = arms
            .iter()
            .map(|a| {
                (
                    a.label.as_str(),
                    a.dir.clone(),
                    a.cfg.run.seed,
                    a.cfg.abs.strategy.as_str(),
                )
            })
            .collect();
        let d = |s: &str| out.join(s);
        assert_eq!(
            got,
            [
                ("uniform (seed 0)", d("uniform/seed-0"), 0, "uniform"),
                ("uniform (seed 7)", d("uniform/seed-7"), 7, "uniform"),
                (
                    "chance_discounted:2 (seed 0)",
                    d("chance_discounted-2/seed-0"),
                    0,
                    "chance_discounted:2"
                ),
                (
                    "chance_discounted:2 (seed 7)",
                    d("chance_discounted-2/seed-7"),
                    7,
                    "chance_discounted:2"
                ),
            ]
        );
        // The cache a plain `--out runs/abl` run would use, for every arm.
        for a in &arms {
            assert_eq!(
                a.cfg.run.cache_dir.as_deref(),
                Some(Path::new("runs/.cache"))
            );
        }
        // Without seeds: one arm per strategy in OUT/<strategy>, the config's seed kept; a
        // configured cache_dir wins.
        let mut cfg2 = cfg.clone();
        cfg2.run.seed = 3;
        cfg2.run.cache_dir = Some(PathBuf::from("/c"));
        let arms = ablation_arms(&cfg2, out, &["uniform".into()], &[])?;
        assert_eq!(arms.len(), 1);
        assert_eq!(
            (arms[0].label.as_str(), arms[0].cfg.run.seed),
            ("uniform", 3)
        );
        assert_eq!(arms[0].dir, d("uniform"));
        assert_eq!(arms[0].cfg.run.cache_dir.as_deref(), Some(Path::new("/c")));
        assert!(ablation_arms(&cfg, out, &["bogus".into()], &[]).is_err());
        // `@blind` sets the arm's chance source; the folder and label keep the whole arm.
        let arms = ablation_arms(&cfg, out, &["chance_discounted:2@blind".into()], &[])?;
        assert_eq!(arms[0].dir, d("chance_discounted-2-blind"));
        assert_eq!(arms[0].label, "chance_discounted:2@blind");
        assert_eq!(arms[0].cfg.abs.strategy, "chance_discounted:2");
        assert_eq!(
            arms[0].cfg.abs.chance,
            mde_loop::config::ChanceSource::Blind
        );
        assert!(arms[0].cfg.abs.blind_chance());
        let err = ablation_arms(&cfg, out, &["uniform@psychic".into()], &[])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("uniform@psychic") && err.contains("blind"),
            "{err}"
        );
        Ok(())
    }
}
