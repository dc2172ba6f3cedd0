//! The run directory of `mde loop`, as types: every step's inputs and outputs are named here
//! once, so that the round, the CLI subcommands and the tests agree on where a file lives.
//!
//! ```text
//! out/
//!   run.json                      config fingerprint (a different config in the same folder is refused)
//!   base/done.json                which base model (cached tiny build or real checkpoint)
//!   classify/labels.jsonl         teacher labels of untyped benchmark questions (cache)
//!   index/done.json, pool.safetensors    image embeddings of the ABS candidate pool
//!   round_0/eval_mine, eval_report       the base model's evaluation
//!   round_k/eval_blind            with `[abs] chance = "blind"`: the mining benchmark with a blank image
//!   round_k/mine                  bad cases + per-type error rates of round k-1's model
//!   round_k/sample                ABS queries
//!   round_k/generate              teacher replies (append-only JSONL, resumable per query)
//!   round_k/postprocess           parsed + validated items (GPTVQA v1/v2, LLaVA)
//!   round_k/train                 mde-train run (checkpoints: resumable per step)
//!   round_k/eval_mine, eval_report
//!   report/                       report.json, report.md, accuracy_by_round.svg
//! ```
//!
//! Every step folder gets a `done.json` when the step has finished ([`crate::steps::resumable`]).

use std::path::{Path, PathBuf};

/// The root of one loop run.
#[derive(Debug, Clone)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The config fingerprint of the run.
    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }
    /// The base model step.
    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }
    /// The question-classification cache of the benchmarks.
    pub fn classify(&self) -> PathBuf {
        self.root.join("classify")
    }
    /// The image-index step of the ABS candidate pool.
    pub fn index(&self) -> IndexFiles {
        IndexFiles::new(self.root.join("index"))
    }
    /// Round `k` (round 0 is the base model's evaluation).
    pub fn round(&self, k: usize) -> RoundLayout {
        RoundLayout {
            dir: self.root.join(format!("round_{k}")),
        }
    }
    /// The loop report.
    pub fn report(&self) -> PathBuf {
        self.root.join("report")
    }
}

/// Which evaluation of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalKind {
    /// The mining benchmark (bad cases come from it).
    Mine,
    /// The mining benchmark with a blank image (measured chance levels).
    Blind,
    /// The held-out report benchmark.
    Report,
}

impl EvalKind {
    /// The step's folder name (and its name in the report's timings).
    pub fn name(self) -> &'static str {
        match self {
            EvalKind::Mine => "eval_mine",
            EvalKind::Blind => "eval_blind",
            EvalKind::Report => "eval_report",
        }
    }
}

/// The folders of one round.
#[derive(Debug, Clone)]
pub struct RoundLayout {
    dir: PathBuf,
}

impl RoundLayout {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn eval(&self, kind: EvalKind) -> PathBuf {
        self.dir.join(kind.name())
    }
    pub fn mine(&self) -> MineFiles {
        MineFiles::new(self.dir.join("mine"))
    }
    pub fn sample(&self) -> SampleFiles {
        SampleFiles::new(self.dir.join("sample"))
    }
    pub fn generate(&self) -> GenerateFiles {
        GenerateFiles::new(self.dir.join("generate"))
    }
    pub fn postprocess(&self) -> PostprocessFiles {
        PostprocessFiles::new(self.dir.join("postprocess"))
    }
    pub fn train(&self) -> PathBuf {
        self.dir.join("train")
    }
}

macro_rules! files {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident => $file:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name {
            dir: PathBuf,
        }
        impl $name {
            pub fn new(dir: impl Into<PathBuf>) -> Self {
                Self { dir: dir.into() }
            }
            pub fn dir(&self) -> &Path {
                &self.dir
            }
            $($(#[$fm])* pub fn $f(&self) -> PathBuf {
                self.dir.join($file)
            })*
        }
    };
}

files!(
    /// Output of the mine step (`mde_eval::badcase::write_mined`).
    MineFiles {
        /// Bad cases (JSONL of `BadCase`).
        bad_cases => "bad_cases.jsonl",
        /// Per-type error rates.
        weights => "weights.json",
    }
);

files!(
    /// Output of the sample step (`mde_abs::write_sample`).
    SampleFiles {
        /// Generation queries (JSONL of `GenQuery`).
        queries => "queries.jsonl",
        /// What the sampler allocated and why.
        report => "sample_report.json",
    }
);

files!(
    /// Output of the generate step.
    GenerateFiles {
        /// Teacher replies, append-only (resumable per query).
        replies => "replies.jsonl",
        /// The runner's summary (tokens, cost, failures).
        summary => "summary.json",
    }
);

files!(
    /// Output of the postprocess step.
    PostprocessFiles {
        /// Kept items in the released GPTVQA v1 layout (what the train step reads).
        v1 => "gptvqa_v1.json",
        /// Kept items in the v2 layout.
        v2 => "gptvqa_v2.json",
        /// Kept items as LLaVA conversations.
        llava => "llava.json",
        /// Kept items with every field (JSONL of `GenItem`).
        items => "items.jsonl",
        /// Dropped replies with their reasons (JSONL).
        dropped => "dropped.jsonl",
        /// Counts, drop reasons, validation flags and input issues.
        summary => "postprocess_summary.json",
    }
);

files!(
    /// Output of the index step.
    IndexFiles {
        /// Unit-normalised image embeddings with their COCO ids (safetensors).
        embeddings => "pool.safetensors",
    }
);
