//! `mde ipo`: Interactive Prompt Optimization on a workspace folder.
use anyhow::Context;
use clap::Subcommand;
use mde_ipo::review::TerminalReviewer;
use mde_ipo::{Ipo, StepOutcome};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// IPO workspace folder (prompt versions, trial batches, labels).
    #[arg(long, default_value = "ipo")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: IpoCmd,
}

#[derive(Subcommand)]
enum IpoCmd {
    /// Create the workspace with a template file as version 1.
    Init {
        #[arg(long)]
        template: PathBuf,
    },
    /// Failure statistics per version (the before/after table) and the stop rule.
    Status {
        /// Failure-rate threshold of the stop rule.
        #[arg(long, default_value_t = 0.05)]
        threshold: f64,
        /// Also write status.json and status.md into the workspace.
        #[arg(long)]
        write: bool,
    },
    /// Show the line diff between two versions (default: the active one and its parent).
    Diff { a: Option<u32>, b: Option<u32> },
    /// Make a version the active one (used by generation).
    Activate { version: u32 },
    /// Print the path of the active template (for `mde generate` configs and scripts).
    Active,
    /// Step 1: the teacher reviews the active prompt; accept, edit ($EDITOR) or reject its draft.
    Critique {
        /// Teacher config TOML (the [teacher] table of a generation config).
        #[arg(long)]
        teacher: PathBuf,
    },
    /// Step 2: generate the active version's trial batch (resumable) with validator pre-labels.
    Trial {
        /// Generation queries (JSONL, e.g. from `mde sample`).
        #[arg(long)]
        queries: PathBuf,
        /// Generation config TOML ([teacher], [runner], [postprocess] tables as for `mde generate`).
        #[arg(long)]
        teacher: PathBuf,
        /// Trial size (the paper used 100).
        #[arg(long, default_value_t = 100)]
        n: usize,
    },
    /// Step 2: label the active version's trial batch in the terminal (resumable).
    Label,
    /// Step 2: label in a local web page on 127.0.0.1.
    Serve {
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Folder that the queries' image paths are relative to.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Extra user-defined failure categories.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
    },
    /// Step 3: the teacher proposes corrections from labelled failures; accept, edit or reject.
    Correct {
        #[arg(long)]
        teacher: PathBuf,
        /// How many labelled failures to show the teacher.
        #[arg(long, default_value_t = 8)]
        max_cases: usize,
    },
}

fn teacher_from(path: &PathBuf) -> anyhow::Result<std::sync::Arc<dyn mde_core::teacher::Teacher>> {
    let cfg = mde_gen::GenConfig::load(path)
        .with_context(|| format!("loading teacher config {}", path.display()))?;
    Ok(mde_gen::build_teacher(&cfg.teacher)?)
}

fn report(outcome: &StepOutcome) {
    match outcome {
        StepOutcome::NewVersion(v) => println!("created prompt version v{v} (now active)"),
        StepOutcome::Unchanged => println!("prompt unchanged"),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        IpoCmd::Init { template } => {
            let text = std::fs::read_to_string(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            let ipo = Ipo::init(&args.dir, &text)?;
            println!(
                "IPO workspace {} (active v{})",
                args.dir.display(),
                ipo.store.active()?
            );
        }
        IpoCmd::Status { threshold, write } => {
            let ipo = Ipo::open(&args.dir)?;
            let stats = ipo.status()?;
            println!("active version: v{}", ipo.store.active()?);
            if stats.is_empty() {
                println!("no trial batch yet");
            } else {
                let table = mde_ipo::stats::markdown_table(&stats);
                println!("{table}");
                for s in &stats {
                    let verdict = if s.meets(threshold) {
                        "meets the stop rule"
                    } else {
                        "continue"
                    };
                    println!(
                        "v{}: {} labelled of {}, failure rate {:.1}% -> {verdict}",
                        s.version,
                        s.labelled,
                        s.items,
                        s.failure_rate * 100.0
                    );
                }
                if write {
                    mde_core::io::write_json(args.dir.join("status.json"), &stats)?;
                    mde_core::io::atomic_write(args.dir.join("status.md"), table.as_bytes())?;
                }
            }
        }
        IpoCmd::Diff { a, b } => {
            let ipo = Ipo::open(&args.dir)?;
            let b = match b {
                Some(b) => b,
                None => ipo.store.active()?,
            };
            let a = match a {
                Some(a) => a,
                None => ipo
                    .store
                    .get(b)?
                    .meta
                    .parent
                    .context("the version has no parent; name two versions")?,
            };
            print!("{}", ipo.store.diff(a, b)?);
        }
        IpoCmd::Activate { version } => {
            Ipo::open(&args.dir)?.store.set_active(version)?;
            println!("active version: v{version}");
        }
        IpoCmd::Active => {
            let ipo = Ipo::open(&args.dir)?;
            println!("{}", ipo.store.template_path(ipo.store.active()?).display());
        }
        IpoCmd::Critique { teacher } => {
            let ipo = Ipo::open(&args.dir)?;
            let teacher = teacher_from(&teacher)?;
            let mut reviewer = TerminalReviewer::new(std::io::stdin().lock(), std::io::stdout());
            let rt = tokio::runtime::Runtime::new()?;
            let (_, outcome) = rt.block_on(ipo.critique_step(teacher.as_ref(), &mut reviewer))?;
            report(&outcome);
        }
        IpoCmd::Trial {
            queries,
            teacher,
            n,
        } => {
            let ipo = Ipo::open(&args.dir)?;
            let cfg = mde_gen::GenConfig::load(&teacher)
                .with_context(|| format!("loading {}", teacher.display()))?;
            let teacher = mde_gen::build_teacher(&cfg.teacher)?;
            let all: Vec<mde_core::records::GenQuery> = mde_core::io::read_jsonl(&queries)?;
            let batch: Vec<_> = all.into_iter().take(n).collect();
            let version = ipo.store.active()?;
            let rt = tokio::runtime::Runtime::new()?;
            let s = rt.block_on(mde_ipo::trial_gen::generate_trial(
                &ipo,
                version,
                &batch,
                teacher,
                cfg.runner.clone(),
                &cfg.postprocess,
            ))?;
            println!(
                "v{}: {} replies, {} new trial items, {} pre-labelled as failing; label them with `mde ipo label` or `mde ipo serve`",
                s.version, s.replies, s.added, s.prelabelled
            );
        }
        IpoCmd::Label => {
            let ipo = Ipo::open(&args.dir)?;
            let mut reviewer = TerminalReviewer::new(std::io::stdin().lock(), std::io::stdout());
            let n = ipo.label_step(&mut reviewer)?;
            println!("saved {n} labels");
        }
        IpoCmd::Serve {
            port,
            images,
            categories,
        } => {
            let ipo = Ipo::open(&args.dir)?;
            let trial = ipo.trial(ipo.store.active()?)?;
            let router = mde_ipo::web::router(trial, images, categories);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(mde_ipo::web::serve(
                router,
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                |a| println!("labelling page: http://{a}/  (Ctrl-C to stop; labels are saved on every click)"),
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            ))?;
        }
        IpoCmd::Correct { teacher, max_cases } => {
            let ipo = Ipo::open(&args.dir)?;
            let teacher = teacher_from(&teacher)?;
            let mut reviewer = TerminalReviewer::new(std::io::stdin().lock(), std::io::stdout());
            let rt = tokio::runtime::Runtime::new()?;
            let (_, outcome) =
                rt.block_on(ipo.correction_step(teacher.as_ref(), &mut reviewer, max_cases))?;
            report(&outcome);
        }
    }
    Ok(())
}
