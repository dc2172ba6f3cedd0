//! Pre-flight check of a loop config (`mde loop --check`): every input of a run is looked at
//! without starting work and without loading weights.
//!
//! Files are checked for existence and format without reading their data: safetensors headers
//! (memory-mapped, validated against the file length by the `safetensors` crate), the pickle
//! index of `.pth` files (tensor names and shapes), config JSONs, the first KB of COCO
//! annotation files and the first record of JSONL datasets.
//! The shapes that decide whether a MiniGPT-4 checkpoint fits together are compared: the
//! projector `llama_proj.weight` must be `[vicuna hidden_size, Q-Former hidden]` (the classic
//! 7B/13B mix-up gives a message naming both shapes). Nothing is sent over the network and the
//! teacher's API key is reported only as set / not set.
//!
//! One module per part of the config: `model` (checkpoint files and shapes), `data`
//! (annotations, datasets, benchmarks), `settings` (teacher, generation, training) and
//! `weights` (tensor shapes of weight files); this module holds the report and the output
//! folder's check.
//!
//! ```no_run
//! use mde_loop::check::check;
//! use mde_loop::config::LoopConfig;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = LoopConfig::load("configs/minigpt4-7b.toml")?;
//! let report = check(&cfg, Some("runs/7b".as_ref()));
//! print!("{}", report.to_text());
//! if !report.is_ok() {
//!     std::process::exit(1);
//! }
//! # Ok(()) }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use mde_eval::runner::{Benchmark, Method};
use mde_models::eval_adapter::EvalModelConfig;
use mde_train::data::{image_file_name, DatasetFormat, TrainRecord};
use minigpt4::weights::{hub_cache, Location};
use serde::Serialize;

use crate::config::{BenchSpec, LoopConfig, ModelSection, TeacherChoice};

mod data;
mod model;
mod settings;
mod weights;

pub use weights::{safetensors_shapes, tensor_shapes};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present and well-formed.
    Ok,
    /// A file, folder or setting the run needs is absent.
    Missing,
    /// Present but does not fit another input (shapes, sizes).
    Mismatch,
    /// Present but unreadable or of the wrong format / value.
    Invalid,
    /// Information only (defaults used, things created on first use).
    Note,
}

impl Status {
    /// A problem that stops the run.
    pub fn is_problem(self) -> bool {
        matches!(self, Status::Missing | Status::Mismatch | Status::Invalid)
    }

    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "MISSING",
            Status::Mismatch => "MISMATCH",
            Status::Invalid => "INVALID",
            Status::Note => "note",
        }
    }
}

/// One checked input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckItem {
    /// Config section and input, e.g. `model.vicuna`, `data.coco_instances`, `eval.mine`.
    pub section: String,
    /// The file or folder looked at, when there is one.
    pub path: Option<PathBuf>,
    pub status: Status,
    /// What was found or what is wrong (never a secret).
    pub detail: String,
}

/// All checks of a config, in config order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// True when no item is Missing, Mismatch or Invalid.
    pub fn is_ok(&self) -> bool {
        self.problems() == 0
    }

    /// Number of Missing / Mismatch / Invalid items.
    pub fn problems(&self) -> usize {
        self.items.iter().filter(|i| i.status.is_problem()).count()
    }

    /// Items whose section is `section` (exactly).
    pub fn section<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a CheckItem> + 'a {
        self.items.iter().filter(move |i| i.section == section)
    }

    /// One line per item, grouped under `[top-level section]` headers, then a summary line
    /// (`N problems` or `all inputs present`).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut groups: Vec<(&str, Vec<&CheckItem>)> = Vec::new();
        for it in &self.items {
            let top = it.section.split('.').next().unwrap_or("");
            match groups.iter_mut().find(|(g, _)| *g == top) {
                Some((_, v)) => v.push(it),
                None => groups.push((top, vec![it])),
            }
        }
        for (g, items) in groups {
            out.push_str(&format!("[{g}]\n"));
            for it in items {
                out.push_str(&format!(
                    "  {:<8} {:<24} {}",
                    it.status.label(),
                    it.section,
                    it.detail
                ));
                if let Some(p) = &it.path {
                    out.push_str(&format!(" ({})", p.display()));
                }
                out.push('\n');
            }
        }
        match self.problems() {
            0 => out.push_str("all inputs present\n"),
            1 => out.push_str("1 problem\n"),
            n => out.push_str(&format!("{n} problems\n")),
        }
        out
    }
}

/// Checks every input of `cfg` (and that `out`, the run's output folder, can be created).
/// Never panics on user files, never loads weights, never touches the network.
pub fn check(cfg: &LoopConfig, out: Option<&Path>) -> CheckReport {
    let base = cfg
        .path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut c = Checker {
        items: Vec::new(),
        base,
    };
    c.run_section(cfg);
    c.world_and_model(cfg);
    c.data(cfg);
    c.eval(cfg);
    c.teacher(cfg);
    c.gen(cfg);
    c.train(cfg);
    if let Some(o) = out {
        c.output(o);
    }
    CheckReport { items: c.items }
}

/// Known LLaMA linear layers a LoRA adapter can target (the model crate's list).
pub use minigpt4::llama::LORA_TARGETS;

struct Checker {
    items: Vec<CheckItem>,
    /// The config file's folder (anchor of model specs that `resolve_paths` left relative).
    base: PathBuf,
}

/// Where a model spec points.
enum Loc {
    File(PathBuf),
    Dir(PathBuf),
    /// A Hugging Face repo id found in the local hub cache.
    Hub(String),
    Missing(PathBuf),
}

/// Facts about the projector gathered for the shape comparison.
struct Shapes {
    llm_hidden: Option<usize>,
    qformer_hidden: Option<(usize, String)>,
    projector: Option<(Vec<usize>, PathBuf)>,
}

impl Checker {
    fn push(
        &mut self,
        section: impl Into<String>,
        path: Option<&Path>,
        status: Status,
        detail: impl Into<String>,
    ) {
        self.items.push(CheckItem {
            section: section.into(),
            path: path.map(tidy),
            status,
            detail: detail.into(),
        });
    }

    fn locate(&self, spec: &str) -> Loc {
        let p = Path::new(spec);
        let cand = if p.is_relative() {
            self.base.join(p)
        } else {
            p.to_path_buf()
        };
        for q in [p, cand.as_path()] {
            if q.is_dir() {
                return Loc::Dir(q.to_path_buf());
            }
            if q.is_file() {
                return Loc::File(q.to_path_buf());
            }
        }
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() == 2
            && parts.iter().all(|s| !s.is_empty())
            && !spec.starts_with('.')
            && hub_cache()
                .model(spec.to_string())
                .get("config.json")
                .is_some()
        {
            return Loc::Hub(spec.to_string());
        }
        Loc::Missing(cand)
    }

    /// A file that must exist: pushes Missing / Invalid and returns false when it does not.
    fn require_file(&mut self, section: &str, path: &Path, what: &str) -> bool {
        self.require(section, path, what, path.is_file(), "a file")
    }

    fn require_dir(&mut self, section: &str, path: &Path, what: &str) -> bool {
        self.require(section, path, what, path.is_dir(), "a folder")
    }

    /// `ok` says whether `path` is of the `kind` wanted; otherwise reports it as missing or as
    /// the wrong kind of entry.
    fn require(&mut self, section: &str, path: &Path, what: &str, ok: bool, kind: &str) -> bool {
        if ok {
            return true;
        }
        let (status, msg) = if path.exists() {
            (Status::Invalid, format!("{what}: not {kind}"))
        } else {
            (Status::Missing, format!("{what}: not found"))
        };
        self.push(section, Some(path), status, msg);
        false
    }

    fn device(&mut self, section: &str, dev: &str) {
        let d = dev.to_ascii_lowercase();
        let cuda = match d.as_str() {
            "cpu" => false,
            "cuda" | "gpu" => true,
            _ if d
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok()) =>
            {
                true
            }
            _ => {
                self.push(
                    section,
                    None,
                    Status::Invalid,
                    format!("device {dev:?}: expected cpu, cuda or cuda:N"),
                );
                return;
            }
        };
        if cuda && !candle_core::utils::cuda_is_available() {
            self.push(
                section,
                None,
                Status::Invalid,
                format!("device {dev:?}, but this build has no CUDA support (build with `--features minigpt4/cuda`)"),
            );
        } else {
            self.push(section, None, Status::Ok, format!("device {dev}"));
        }
    }

    fn run_section(&mut self, cfg: &LoopConfig) {
        self.device("run.device", &cfg.run.device);
        if let Some(c) = &cfg.run.cache_dir {
            self.push(
                "run.cache_dir",
                Some(c),
                Status::Note,
                "cache of worlds and tiny base models",
            );
        }
    }

    fn world_and_model(&mut self, cfg: &LoopConfig) {
        match (&cfg.model, &cfg.world) {
            (ModelSection::Tiny { .. }, Some(w)) => {
                self.push(
                    "world",
                    None,
                    Status::Note,
                    format!(
                        "synthetic world (seed {}, {} px) is generated and cached on first use",
                        w.seed, w.image_size
                    ),
                );
                self.push(
                    "model",
                    None,
                    Status::Note,
                    format!(
                        "tiny base model is trained from scratch ({} steps) and cached on first use",
                        cfg.base.steps
                    ),
                );
            }
            (ModelSection::Tiny { .. }, None) => self.push(
                "model",
                None,
                Status::Invalid,
                "kind = \"tiny\" needs a [world]",
            ),
            (ModelSection::Checkpoint { cfg: m, .. }, w) => {
                if w.is_some() {
                    self.push(
                        "world",
                        None,
                        Status::Note,
                        "synthetic world is generated and cached on first use",
                    );
                }
                self.minigpt4(m);
            }
        }
    }

    fn output(&mut self, out: &Path) {
        let sec = "output";
        if out.exists() && !out.is_dir() {
            self.push(
                sec,
                Some(out),
                Status::Invalid,
                "exists and is not a folder",
            );
            return;
        }
        // The nearest existing ancestor is where the folder will be created.
        let mut probe_dir = out.to_path_buf();
        while !probe_dir.exists() {
            match probe_dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe_dir = p.to_path_buf(),
                _ => {
                    probe_dir = PathBuf::from(".");
                    break;
                }
            }
        }
        let probe = probe_dir.join(format!(".mde-check-{}", std::process::id()));
        match std::fs::write(&probe, b"") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                let what = if out.exists() {
                    "exists and is writable (a run there resumes)"
                } else {
                    "will be created (parent writable)"
                };
                self.push(sec, Some(out), Status::Ok, what);
            }
            Err(e) => self.push(
                sec,
                Some(&probe_dir),
                Status::Invalid,
                format!("cannot write here: {e}"),
            ),
        }
    }
}

/// `configs/../models/x` -> `models/x` for display (lexical only: no symlinks are resolved).
fn tidy(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn loc_path(l: &Loc) -> Option<PathBuf> {
    match l {
        Loc::File(p) | Loc::Dir(p) | Loc::Missing(p) => Some(p.clone()),
        Loc::Hub(r) => Some(PathBuf::from(format!("hf://{r}"))),
    }
}

fn read_json_value(p: &Path) -> Result<serde_json::Value, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_str(&s).map_err(|e| format!("not valid JSON: {e}"))
}
