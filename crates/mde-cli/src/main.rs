//! `mde`: the command line of MLLM-DataEngine in Rust. Each subcommand is a thin layer over one
//! crate of the workspace; long-running commands take `--out DIR` and resume when re-run.
use clap::{Parser, Subcommand};

mod cmd_ask;
mod cmd_eval;
mod cmd_gen;
mod cmd_index;
mod cmd_ipo;
mod cmd_loop;
mod cmd_sample;
mod cmd_score;
mod cmd_train;
mod eval_shard;

#[derive(Parser)]
#[command(
    name = "mde",
    version,
    about = "MLLM-DataEngine in Rust: evaluate, mine bad cases, index, sample, generate, train, loop"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "mde=debug".
    #[arg(long, global = true, env = "MDE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the model a question about an image.
    Ask(cmd_ask::Args),
    /// Score a prediction file with the official rules of a benchmark.
    Score(cmd_score::Args),
    /// Run a model on a benchmark (resumable), score it and mine bad cases.
    Eval(cmd_eval::Args),
    /// Embed the images of a COCO file with the model: the index `mde sample --index` reads.
    Index(cmd_index::Args),
    /// Build generation queries with Adaptive Bad-case Sampling.
    Sample(cmd_sample::Args),
    /// Generate Q&A data with a teacher LLM (resumable).
    Generate(cmd_gen::GenerateArgs),
    /// Parse, filter and validate teacher replies into dataset files.
    Postprocess(cmd_gen::PostprocessArgs),
    /// Fine-tune the model (fc / LoRA), resumable from checkpoints.
    Train(cmd_train::Args),
    /// Interactive Prompt Optimization.
    Ipo(cmd_ipo::Args),
    /// Run the closed loop: eval -> bad cases -> sample -> generate -> train, round after round.
    Loop(cmd_loop::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    minigpt4::runtime::tune_process();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a redirected log stays plain text (and NO_COLOR wins).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match cli.command {
        Command::Ask(a) => cmd_ask::run(a),
        Command::Score(a) => cmd_score::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Index(a) => cmd_index::run(a),
        Command::Sample(a) => cmd_sample::run(a),
        Command::Generate(a) => cmd_gen::run_generate(a),
        Command::Postprocess(a) => cmd_gen::run_postprocess(a),
        Command::Train(a) => cmd_train::run(a),
        Command::Ipo(a) => cmd_ipo::run(a),
        Command::Loop(a) => cmd_loop::run(a),
    }
}
