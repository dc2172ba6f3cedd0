//! Pre-flight check of a loop config (`mde loop --check`): every input of a run is looked at
//! without starting work and without loading weights.
//!
//! Files are checked for existence and format from their first bytes only: safetensors headers
//! (8-byte length + JSON), the pickle index of `.pth` files (tensor names and shapes, no data),
//! config JSONs, the first KB of COCO annotation files and the first record of JSONL datasets.
//! The shapes that decide whether a MiniGPT-4 checkpoint fits together are compared: the
//! projector `llama_proj.weight` must be `[vicuna hidden_size, Q-Former hidden]` (the classic
//! 7B/13B mix-up gives a message naming both shapes). Nothing is sent over the network and the
//! teacher's API key is reported only as set / not set.
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

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use mde_eval::runner::{Benchmark, Method};
use mde_train::data::{image_file_name, DatasetFormat, TrainRecord};
use minigpt4::eval_adapter::EvalModelConfig;
use minigpt4::weights::{hub_cache, Location};
use serde::Serialize;

use crate::config::{BenchSpec, LoopConfig, ModelSection, TeacherChoice};

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

    // ----------------------------------------------------------------------------- model

    fn minigpt4(&mut self, m: &EvalModelConfig) {
        let mut shapes = Shapes {
            llm_hidden: None,
            qformer_hidden: None,
            projector: None,
        };
        let blip2_proj = self.blip2(m, &mut shapes);
        if let Some(c) = &m.blip2_config {
            let p = self.resolve_file(c);
            if self.require_file("model.blip2_config", &p, "BLIP-2 config.json") {
                match read_json_value(&p) {
                    Ok(_) => self.push("model.blip2_config", Some(&p), Status::Ok, "readable"),
                    Err(e) => self.push("model.blip2_config", Some(&p), Status::Invalid, e),
                }
            }
        }
        self.vicuna(m, &mut shapes);
        match &m.projector {
            Some(spec) => {
                let p = self.resolve_file(spec);
                if self.require_file("model.projector", &p, "MiniGPT-4 checkpoint") {
                    match tensor_shapes(&p) {
                        Err(e) => self.push("model.projector", Some(&p), Status::Invalid, e),
                        Ok(t) => match t.get("llama_proj.weight") {
                            Some(s) => {
                                let bias = t.get("llama_proj.bias").cloned();
                                if bias.is_none() {
                                    self.push(
                                        "model.projector",
                                        Some(&p),
                                        Status::Invalid,
                                        "has llama_proj.weight but no llama_proj.bias",
                                    );
                                } else {
                                    self.push(
                                        "model.projector",
                                        Some(&p),
                                        Status::Ok,
                                        format!("llama_proj.weight {s:?}"),
                                    );
                                }
                                shapes.projector = Some((s.clone(), p.clone()));
                            }
                            None => self.push(
                                "model.projector",
                                Some(&p),
                                Status::Invalid,
                                format!("no llama_proj.weight among its {} tensors", t.len()),
                            ),
                        },
                    }
                }
            }
            None => match blip2_proj {
                Some((s, p)) => {
                    self.push(
                        "model.projector",
                        Some(&p),
                        Status::Ok,
                        format!("not given; the BLIP-2 file holds llama_proj.weight {s:?}"),
                    );
                    shapes.projector = Some((s, p));
                }
                None => self.push(
                    "model.projector",
                    None,
                    Status::Missing,
                    "not given and the BLIP-2 weights have no llama_proj: set projector = the MiniGPT-4 checkpoint (pretrained_minigpt4_7b.pth)",
                ),
            },
        }
        self.shapes(&shapes);
        if let Some(l) = &m.lora {
            self.lora_path("model.lora", l);
        }
        match m.dtype.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "f16" | "float16" | "fp16" | "half" | "bf16"
            | "bfloat16" => self.push("model.dtype", None, Status::Ok, m.dtype.clone()),
            other => self.push(
                "model.dtype",
                None,
                Status::Invalid,
                format!("dtype {other:?}: expected f32, f16 or bf16"),
            ),
        }
        self.device("model.device", &m.device);
    }

    fn resolve_file(&self, spec: &str) -> PathBuf {
        let p = Path::new(spec);
        if p.exists() || p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// BLIP-2 (HF folder / hub repo / LAVIS `.pth`) and EVA ViT; returns the `llama_proj.weight`
    /// shape when the BLIP-2 file is a full MiniGPT-4 state dict that carries it.
    fn blip2(&mut self, m: &EvalModelConfig, shapes: &mut Shapes) -> Option<(Vec<usize>, PathBuf)> {
        let sec = "model.blip2";
        let loc = self.locate(&m.blip2);
        let hf = |l: &Loc| -> Option<Location> {
            match l {
                Loc::Dir(d) => Some(Location::Dir(d.clone())),
                Loc::Hub(r) => Some(Location::Hub(r.clone())),
                Loc::File(f) if f.extension().is_some_and(|e| e == "safetensors") => Some(
                    Location::Dir(f.parent().map(Path::to_path_buf).unwrap_or_default()),
                ),
                _ => None,
            }
        };
        if let Loc::Missing(p) = &loc {
            self.push(
                sec,
                Some(p),
                Status::Missing,
                "BLIP-2 weights not found (HF Blip2 folder, hub repo id in the local cache, or LAVIS blip2_pretrained_flant5xxl.pth)",
            );
            if let Some(e) = &m.eva_vit {
                self.eva_vit(e);
            }
            return None;
        }
        if let Some(l) = hf(&loc) {
            let shown = loc_path(&loc);
            let Some(cfg_path) = l.file("config.json") else {
                self.push(
                    sec,
                    shown.as_deref(),
                    Status::Missing,
                    "HF BLIP-2 folder has no config.json",
                );
                return None;
            };
            let weights = weight_files(&l, "model.safetensors", "model.safetensors.index.json");
            match weights {
                Err(e) => self.push(sec, Some(&cfg_path), Status::Missing, e),
                Ok(None) => self.push(
                    sec,
                    shown.as_deref(),
                    Status::Missing,
                    "no model.safetensors or model.safetensors.index.json",
                ),
                Ok(Some(files)) => match read_json_value(&cfg_path) {
                    Err(e) => self.push(sec, Some(&cfg_path), Status::Invalid, e),
                    Ok(v) => {
                        let q = &v["qformer_config"];
                        let (hidden, how) = match q["hidden_size"].as_u64() {
                            Some(h) => (h as usize, "qformer_config.hidden_size"),
                            None => (768, "HF default (no qformer_config.hidden_size)"),
                        };
                        shapes.qformer_hidden =
                            Some((hidden, format!("{} {how}", cfg_path.display())));
                        self.push(
                            sec,
                            shown.as_deref(),
                            Status::Ok,
                            format!(
                                "HF BLIP-2, {} weight file(s), Q-Former hidden {hidden}",
                                files.len()
                            ),
                        );
                    }
                },
            }
            if let Some(e) = &m.eva_vit {
                self.push(
                    "model.eva_vit",
                    Some(Path::new(e)),
                    Status::Note,
                    "ignored: the HF BLIP-2 weights hold the vision tower",
                );
            }
            return None;
        }
        // LAVIS / MiniGPT-4 .pth: the pickle index gives names and shapes without the data.
        let Loc::File(p) = loc else { return None };
        let t = match tensor_shapes(&p) {
            Ok(t) => t,
            Err(e) => {
                self.push(sec, Some(&p), Status::Invalid, e);
                return None;
            }
        };
        let Some(qt) = t.get("query_tokens") else {
            self.push(
                sec,
                Some(&p),
                Status::Invalid,
                format!(
                    "no query_tokens among its {} tensors: not a BLIP-2 checkpoint",
                    t.len()
                ),
            );
            return None;
        };
        let hidden = qt.last().copied().unwrap_or(768);
        shapes.qformer_hidden = Some((hidden, format!("{} query_tokens {qt:?}", p.display())));
        let has_vit = t.keys().any(|k| k.starts_with("visual_encoder."));
        self.push(
            sec,
            Some(&p),
            Status::Ok,
            format!(
                "LAVIS checkpoint, {} tensors, Q-Former hidden {hidden}{}",
                t.len(),
                if has_vit { ", ViT inside" } else { "" }
            ),
        );
        match &m.eva_vit {
            Some(e) => self.eva_vit(e),
            None if !has_vit => self.push(
                "model.eva_vit",
                None,
                Status::Missing,
                "the LAVIS BLIP-2 file has no visual_encoder.*: set eva_vit = \"eva_vit_g.pth\"",
            ),
            None => {}
        }
        t.get("llama_proj.weight").map(|s| (s.clone(), p.clone()))
    }

    fn eva_vit(&mut self, spec: &str) {
        let sec = "model.eva_vit";
        let p = self.resolve_file(spec);
        if !self.require_file(sec, &p, "EVA ViT-g weights (eva_vit_g.pth)") {
            return;
        }
        match tensor_shapes(&p) {
            Err(e) => self.push(sec, Some(&p), Status::Invalid, e),
            Ok(t) => {
                let pos = t
                    .get("pos_embed")
                    .or_else(|| t.get("visual_encoder.pos_embed"));
                match pos {
                    Some(s) => self.push(
                        sec,
                        Some(&p),
                        Status::Ok,
                        format!("{} tensors, pos_embed {s:?}", t.len()),
                    ),
                    None => self.push(
                        sec,
                        Some(&p),
                        Status::Invalid,
                        "no pos_embed: not an EVA ViT state dict",
                    ),
                }
            }
        }
    }

    fn vicuna(&mut self, m: &EvalModelConfig, shapes: &mut Shapes) {
        let sec = "model.vicuna";
        let loc = match self.locate(&m.vicuna) {
            // A file inside the folder (config.json, a shard) names the folder.
            Loc::File(f) => Loc::Dir(f.parent().map(Path::to_path_buf).unwrap_or_default()),
            l => l,
        };
        let l = match &loc {
            Loc::Missing(p) => {
                self.push(
                    sec,
                    Some(p),
                    Status::Missing,
                    "Vicuna folder not found (HF LLaMA folder: config.json, tokenizer.json, weight shards)",
                );
                self.tokenizer(m, None);
                return;
            }
            Loc::Dir(d) => Location::Dir(d.clone()),
            Loc::Hub(r) => Location::Hub(r.clone()),
            Loc::File(_) => unreachable!("mapped to its folder above"),
        };
        let shown = loc_path(&loc);
        let cfg = match l.file("config.json") {
            None => {
                self.push(sec, shown.as_deref(), Status::Missing, "no config.json");
                None
            }
            Some(c) => match read_json_value(&c) {
                Err(e) => {
                    self.push(sec, Some(&c), Status::Invalid, e);
                    None
                }
                Ok(v) => match v["hidden_size"].as_u64() {
                    None => {
                        self.push(
                            sec,
                            Some(&c),
                            Status::Invalid,
                            "config.json has no hidden_size",
                        );
                        None
                    }
                    Some(h) => {
                        shapes.llm_hidden = Some(h as usize);
                        Some((h as usize, v["vocab_size"].as_u64().map(|x| x as usize)))
                    }
                },
            },
        };
        // Weights: safetensors (single / sharded) or pytorch .bin (single / sharded).
        let st = weight_files(&l, "model.safetensors", "model.safetensors.index.json");
        let files = match st {
            Ok(None) => weight_files(&l, "pytorch_model.bin", "pytorch_model.bin.index.json"),
            other => other,
        };
        match files {
            Err(e) => self.push(sec, shown.as_deref(), Status::Missing, e),
            Ok(None) => self.push(
                sec,
                shown.as_deref(),
                Status::Missing,
                "no weights: model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
            ),
            Ok(Some(files)) => {
                // The embedding's shape is the real [vocab, hidden] (Vicuna v0: 32001 rows).
                let embed = embed_shape(&l, &files);
                match (cfg, embed) {
                    (Some((h, vocab)), Some(e)) if e.len() == 2 => {
                        let vocab_ok = vocab.is_none_or(|v| v == e[0]);
                        if e[1] != h || !vocab_ok {
                            self.push(
                                sec,
                                shown.as_deref(),
                                Status::Mismatch,
                                format!(
                                    "model.embed_tokens.weight is {e:?} but config.json says vocab_size {} hidden_size {h}{}",
                                    vocab.map(|v| v.to_string()).unwrap_or("?".into()),
                                    if vocab.is_some_and(|v| v.abs_diff(e[0]) == 1) {
                                        " (Vicuna v0 has 32001 tokens: a delta applied to the wrong base?)"
                                    } else {
                                        ""
                                    }
                                ),
                            );
                        } else {
                            self.push(
                                sec,
                                shown.as_deref(),
                                Status::Ok,
                                format!("{} weight file(s), hidden {h}, embed {e:?}", files.len()),
                            );
                        }
                    }
                    (Some((h, _)), _) => self.push(
                        sec,
                        shown.as_deref(),
                        Status::Ok,
                        format!("{} weight file(s), hidden {h}", files.len()),
                    ),
                    (None, _) => {}
                }
            }
        }
        self.tokenizer(m, Some(&l));
    }

    fn tokenizer(&mut self, m: &EvalModelConfig, vicuna: Option<&Location>) {
        let sec = "model.tokenizer";
        let (json, sp, shown) = match &m.tokenizer {
            Some(t) => {
                let p = self.resolve_file(t);
                if p.is_file() {
                    (Some(p.clone()), None, p)
                } else {
                    let j = p.join("tokenizer.json");
                    let s = p.join("tokenizer.model");
                    (j.is_file().then_some(j), s.is_file().then_some(s), p)
                }
            }
            None => match vicuna {
                None => return, // the Vicuna folder itself is already reported missing
                Some(l) => (
                    l.file("tokenizer.json"),
                    l.file("tokenizer.model"),
                    match l {
                        Location::Dir(d) | Location::File(d) => d.clone(),
                        Location::Hub(r) => PathBuf::from(r),
                    },
                ),
            },
        };
        match (json, sp) {
            (Some(j), _) => self.push(sec, Some(&j), Status::Ok, "tokenizer.json"),
            (None, Some(s)) => self.push(
                sec,
                Some(&s),
                Status::Invalid,
                "only the SentencePiece tokenizer.model: convert once with transformers \
                 `AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)` to get tokenizer.json",
            ),
            (None, None) => {
                self.push(sec, Some(&shown), Status::Missing, "no tokenizer.json")
            }
        }
    }

    fn shapes(&mut self, s: &Shapes) {
        let sec = "model.shapes";
        let Some((w, p)) = &s.projector else { return };
        if w.len() != 2 {
            self.push(
                sec,
                Some(p),
                Status::Invalid,
                format!("llama_proj.weight is {w:?}, expected 2 dimensions [llm_hidden, qformer_hidden]"),
            );
            return;
        }
        let mut problems = Vec::new();
        if let Some(h) = s.llm_hidden {
            if w[0] != h {
                let hint = match (size_name(w[0]), size_name(h)) {
                    (Some(a), Some(b)) => format!(" (a {a} projector with a {b} LLM?)"),
                    _ => String::new(),
                };
                problems.push(format!(
                    "llama_proj.weight is {w:?} but vicuna hidden_size is {h}{hint}"
                ));
            }
        }
        if let Some((q, from)) = &s.qformer_hidden {
            if w[1] != *q {
                problems.push(format!(
                    "llama_proj.weight is {w:?} but the BLIP-2 Q-Former hidden size is {q} ({from})"
                ));
            }
        }
        if !problems.is_empty() {
            self.push(sec, Some(p), Status::Mismatch, problems.join("; "));
        } else if s.llm_hidden.is_some() && s.qformer_hidden.is_some() {
            self.push(
                sec,
                Some(p),
                Status::Ok,
                format!("llama_proj.weight {w:?} = [vicuna hidden, Q-Former hidden]"),
            );
        } else {
            self.push(
                sec,
                Some(p),
                Status::Note,
                format!("llama_proj.weight {w:?}: not compared (the other sizes are unknown)"),
            );
        }
    }

    fn lora_path(&mut self, sec: &str, spec: &str) {
        let p = self.resolve_file(spec);
        if p.is_dir() {
            let w = ["adapter_model.safetensors", "adapter_model.bin"]
                .iter()
                .map(|n| p.join(n))
                .find(|f| f.is_file());
            match w {
                None => self.push(
                    sec,
                    Some(&p),
                    Status::Missing,
                    "PEFT adapter folder has no adapter_model.safetensors or adapter_model.bin",
                ),
                Some(f) => match tensor_shapes(&f) {
                    Ok(t) => {
                        let n = t.keys().filter(|k| k.contains(".lora_")).count();
                        let st = if n == 0 { Status::Invalid } else { Status::Ok };
                        self.push(sec, Some(&f), st, format!("{n} LoRA tensors"));
                    }
                    Err(e) => self.push(sec, Some(&f), Status::Invalid, e),
                },
            }
        } else if self.require_file(sec, &p, "LoRA adapter") {
            match tensor_shapes(&p) {
                Ok(t) => {
                    let n = t.keys().filter(|k| k.contains(".lora_")).count();
                    let st = if n == 0 { Status::Invalid } else { Status::Ok };
                    self.push(sec, Some(&p), st, format!("{n} LoRA tensors"));
                }
                Err(e) => self.push(sec, Some(&p), Status::Invalid, e),
            }
        }
    }

    // ------------------------------------------------------------------------------ data

    fn data(&mut self, cfg: &LoopConfig) {
        let d = &cfg.data;
        let real = cfg.world.is_none();
        let mut first_image = None;
        for (sec, path, what) in [
            ("data.coco_instances", &d.coco_instances, "instances"),
            ("data.coco_captions", &d.coco_captions, "captions"),
        ] {
            match path {
                Some(p) if self.require_file(sec, p, &format!("COCO {what} JSON")) => {
                    match coco_head(p) {
                        Ok((keys, id)) => {
                            self.push(sec, Some(p), Status::Ok, format!("COCO JSON ({keys})"));
                            if first_image.is_none() {
                                first_image = id;
                            }
                        }
                        Err(e) => self.push(sec, Some(p), Status::Invalid, e),
                    }
                }
                Some(_) => {} // reported by require_file
                None if real => self.push(
                    sec,
                    None,
                    Status::Missing,
                    format!("not set: ABS needs the COCO {what} of the query-image pool without a [world]"),
                ),
                None => {}
            }
        }
        match &d.coco_images {
            Some(p) if self.require_dir("data.coco_images", p, "COCO image folder") => {
                match first_image {
                    Some(id) => {
                        // Same default as the loop's pool reader.
                        let pattern = if d.image_pattern.is_empty() {
                            "{image_id:012}.jpg"
                        } else {
                            d.image_pattern.as_str()
                        };
                        let f = p.join(image_file_name(pattern, id));
                        if f.is_file() {
                            self.push(
                                "data.coco_images",
                                Some(&f),
                                Status::Ok,
                                format!("image {id} found via image_pattern"),
                            );
                        } else {
                            self.push(
                                "data.coco_images",
                                Some(&f),
                                Status::Missing,
                                format!(
                                    "first annotated image {id} not found via image_pattern {:?}",
                                    d.image_pattern
                                ),
                            );
                        }
                    }
                    None => self.push("data.coco_images", Some(p), Status::Ok, "folder exists"),
                }
            }
            Some(_) => {} // reported by require_dir
            None if real => self.push(
                "data.coco_images",
                None,
                Status::Missing,
                "not set: the query-image pool's folder",
            ),
            None => {}
        }
        if real && d.base_datasets.is_empty() && cfg.train.replay_ratio > 0.0 {
            self.push(
                "data.base_datasets",
                None,
                Status::Missing,
                format!(
                    "none given but [train] replay_ratio is {}",
                    cfg.train.replay_ratio
                ),
            );
        }
        for ds in &d.base_datasets {
            let sec = format!("data.base_datasets.{}", ds.name);
            if !self.require_file(&sec, &ds.path, "dataset file") {
                if let Some(r) = &ds.image_root {
                    self.require_dir(&sec, r, "image_root");
                }
                continue;
            }
            let root = ds
                .image_root
                .clone()
                .unwrap_or_else(|| ds.path.parent().map(Path::to_path_buf).unwrap_or_default());
            if ds.image_root.is_some() && !self.require_dir(&sec, &root, "image_root") {
                continue;
            }
            match first_record(&ds.path, ds.format, &root, &ds.image_pattern) {
                Ok(Some(img)) if img.is_file() => self.push(
                    &sec,
                    Some(&ds.path),
                    Status::Ok,
                    "first record parses, its image exists",
                ),
                Ok(Some(img)) => self.push(
                    &sec,
                    Some(&img),
                    Status::Missing,
                    format!(
                        "image of the first record of {} not found",
                        ds.path.display()
                    ),
                ),
                Ok(None) => self.push(&sec, Some(&ds.path), Status::Ok, "file exists"),
                Err(e) => self.push(&sec, Some(&ds.path), Status::Invalid, e),
            }
        }
    }

    // ------------------------------------------------------------------------------ eval

    fn eval(&mut self, cfg: &LoopConfig) {
        for (sec, b) in [
            ("eval.mine", &cfg.eval.mine),
            ("eval.report", &cfg.eval.report),
        ] {
            match b {
                Some(b) => self.bench(sec, b),
                None if cfg.world.is_some() => self.push(
                    sec,
                    None,
                    Status::Note,
                    if sec == "eval.mine" {
                        "the world's A-OKVQA-format set (generated on first use)"
                    } else {
                        "the world's MMBench-format circular set (generated on first use)"
                    },
                ),
                None if sec == "eval.report" => self.push(
                    sec,
                    None,
                    Status::Note,
                    "no reporting benchmark: the report uses the mining benchmark",
                ),
                None => {}
            }
        }
    }

    fn bench(&mut self, sec: &str, b: &BenchSpec) {
        let bench = match b.benchmark.parse::<Benchmark>() {
            Ok(x) => Some(x),
            Err(e) => {
                self.push(sec, None, Status::Invalid, e);
                None
            }
        };
        if let (Some(bench), Some(m)) = (bench, &b.method) {
            match m.parse::<Method>() {
                Err(e) => self.push(sec, None, Status::Invalid, e),
                Ok(m) => {
                    let ok = match bench {
                        Benchmark::MMBench | Benchmark::Mme => m == Method::Generate,
                        Benchmark::Aokvqa => m == Method::Rank,
                        Benchmark::SeedBench => true,
                    };
                    if !ok {
                        self.push(
                            sec,
                            None,
                            Status::Invalid,
                            format!(
                                "{bench} is evaluated by {:?}, not {m:?}",
                                bench.default_method()
                            ),
                        );
                    }
                }
            }
        }
        if b.path.exists() {
            let head = if b.path.is_file() {
                read_head(&b.path, 4096)
            } else {
                Ok(String::new())
            };
            let shape = match (bench, head) {
                (_, Err(e)) => Err(e),
                (Some(Benchmark::MMBench), Ok(h)) => {
                    let cols: Vec<&str> = h.lines().next().unwrap_or("").split('\t').collect();
                    if ["question", "A", "B"].iter().all(|c| cols.contains(c)) {
                        Ok(format!("MMBench TSV ({} columns)", cols.len()))
                    } else {
                        Err("MMBench TSV header lacks question / A / B columns".to_string())
                    }
                }
                (Some(Benchmark::Aokvqa), Ok(h)) if b.path.is_file() => {
                    if h.trim_start_matches('\u{feff}')
                        .trim_start()
                        .starts_with('[')
                    {
                        Ok("A-OKVQA JSON".to_string())
                    } else {
                        Err("A-OKVQA file does not start with a JSON array".to_string())
                    }
                }
                (_, Ok(_)) => Ok("exists".to_string()),
            };
            match shape {
                Ok(d) => self.push(
                    sec,
                    Some(&b.path),
                    Status::Ok,
                    format!("{} {d}", b.benchmark),
                ),
                Err(e) => self.push(sec, Some(&b.path), Status::Invalid, e),
            }
        } else {
            self.push(
                sec,
                Some(&b.path),
                Status::Missing,
                format!("{} benchmark file not found", b.benchmark),
            );
        }
        if let Some(i) = &b.images {
            let s = format!("{sec}.images");
            if self.require_dir(&s, i, "benchmark image folder") {
                self.push(s, Some(i), Status::Ok, "folder exists");
            }
        }
        if let Some(t) = &b.taxonomy {
            match mde_core::taxonomy::Taxonomy::load(t) {
                Ok(tx) => self.push(
                    format!("{sec}.taxonomy"),
                    None,
                    Status::Ok,
                    format!("{t}: {} question types", tx.types.len()),
                ),
                Err(e) => self.push(
                    format!("{sec}.taxonomy"),
                    None,
                    Status::Invalid,
                    e.to_string(),
                ),
            }
        }
    }

    // --------------------------------------------------------------------------- teacher

    fn teacher(&mut self, cfg: &LoopConfig) {
        let t = &cfg.teacher;
        if t.kind == TeacherChoice::World {
            self.push(
                "teacher",
                None,
                Status::Ok,
                "grounded world teacher (offline)",
            );
            return;
        }
        let e = &t.endpoint;
        let url = parse_http_url(&e.base_url);
        match &url {
            Ok((scheme, host)) => self.push(
                "teacher.base_url",
                None,
                Status::Ok,
                format!("{scheme}://{host} (not contacted)"),
            ),
            Err(m) => self.push(
                "teacher.base_url",
                None,
                Status::Invalid,
                format!("{:?}: {m}", e.base_url),
            ),
        }
        if e.model.trim().is_empty() {
            self.push("teacher.model", None, Status::Invalid, "model is empty");
        } else {
            self.push("teacher.model", None, Status::Ok, e.model.clone());
        }
        let local = url.as_ref().is_ok_and(|(_, h)| is_local_host(h));
        match &e.api_key_env {
            None => self.push(
                "teacher.api_key_env",
                None,
                Status::Note,
                "no api_key_env: requests carry no key",
            ),
            Some(var) => {
                let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
                if set {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Ok,
                        format!("{var} is set"),
                    );
                } else if local {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Note,
                        format!("{var} is not set: no key is sent (fine for a local server)"),
                    );
                } else {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Missing,
                        format!("{var} is not set (export it before the run)"),
                    );
                }
            }
        }
        if e.kind == mde_gen::config::TeacherKind::Azure && e.azure_deployment.is_none() {
            self.push(
                "teacher.endpoint",
                None,
                Status::Invalid,
                "kind = \"azure\" needs azure_deployment",
            );
        }
        if e.vision {
            match &e.image_root {
                Some(r) => {
                    self.require_dir("teacher.image_root", r, "teacher image root");
                }
                None if e.allow_absolute_image_paths => self.push(
                    "teacher.image_root",
                    None,
                    Status::Note,
                    "vision = true without image_root: only absolute query image paths are sent (allow_absolute_image_paths = true)",
                ),
                None => self.push(
                    "teacher.image_root",
                    None,
                    Status::Invalid,
                    "vision = true needs image_root, the folder the query images are relative to: no local file outside it is ever sent to the teacher",
                ),
            }
        }
    }

    fn gen(&mut self, cfg: &LoopConfig) {
        match &cfg.gen.prompt.generate_template {
            Some(p) => {
                if self.require_file("gen.prompt", p, "generation template") {
                    match std::fs::read_to_string(p) {
                        Ok(s) if !s.trim().is_empty() => {
                            self.push("gen.prompt", Some(p), Status::Ok, "template readable")
                        }
                        Ok(_) => {
                            self.push("gen.prompt", Some(p), Status::Invalid, "template is empty")
                        }
                        Err(e) => self.push("gen.prompt", Some(p), Status::Invalid, e.to_string()),
                    }
                }
            }
            None => self.push(
                "gen.prompt",
                None,
                Status::Note,
                "embedded generation template (generate_v1)",
            ),
        }
    }

    fn train(&mut self, cfg: &LoopConfig) {
        let l = &cfg.train.lora;
        let unknown: Vec<&String> = l
            .target_modules
            .iter()
            .filter(|m| !LORA_TARGETS.contains(&m.as_str()))
            .collect();
        if !unknown.is_empty() {
            self.push(
                "train.lora",
                None,
                Status::Invalid,
                format!(
                    "unknown target_modules {unknown:?} (known: {})",
                    LORA_TARGETS.join(", ")
                ),
            );
        } else if l.r == 0 {
            self.push("train.lora", None, Status::Invalid, "r must be at least 1");
        } else {
            self.push(
                "train.lora",
                None,
                Status::Ok,
                format!(
                    "r {} alpha {} on {}",
                    l.r,
                    l.alpha,
                    l.target_modules.join(",")
                ),
            );
        }
        if let Some(a) = &l.init_adapter {
            let a = a.display().to_string();
            self.lora_path("train.lora.init_adapter", &a);
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

/// Hidden size -> model size of the LLaMA-1 family (for hints only).
fn size_name(h: usize) -> Option<&'static str> {
    match h {
        4096 => Some("7B"),
        5120 => Some("13B"),
        6656 => Some("33B"),
        8192 => Some("65B"),
        _ => None,
    }
}

fn read_json_value(p: &Path) -> Result<serde_json::Value, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_str(&s).map_err(|e| format!("not valid JSON: {e}"))
}

/// Weight files of a folder: the single file, else every shard named by the index (each must
/// exist). `Ok(None)`: neither the file nor the index.
fn weight_files(loc: &Location, single: &str, index: &str) -> Result<Option<Vec<PathBuf>>, String> {
    if let Some(p) = loc.file(single) {
        return Ok(Some(vec![p]));
    }
    let Some(idx) = loc.file(index) else {
        return Ok(None);
    };
    let v = read_json_value(&idx).map_err(|e| format!("{}: {e}", idx.display()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{}: no `weight_map` object", idx.display()))?;
    let names: std::collections::BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        match loc.file(n) {
            Some(p) => files.push(p),
            None => missing.push(n.to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} names {} shard(s) that are missing: {}",
            idx.display(),
            missing.len(),
            missing.join(", ")
        ));
    }
    Ok(Some(files))
}

/// Shape of `model.embed_tokens.weight` from the safetensors header of the shard holding it.
fn embed_shape(loc: &Location, files: &[PathBuf]) -> Option<Vec<usize>> {
    let key = "model.embed_tokens.weight";
    let file = if files.len() == 1 {
        files[0].clone()
    } else {
        let idx = loc.file("model.safetensors.index.json")?;
        let v = read_json_value(&idx).ok()?;
        loc.file(v["weight_map"][key].as_str()?)?
    };
    if file.extension()? != "safetensors" {
        return None;
    }
    safetensors_shapes(&file).ok()?.remove(key)
}

/// Tensor names and shapes of a `.safetensors` (header only) or `.pth`/`.bin` (pickle index only,
/// state dict under `model`, then `state_dict`, then the top level, as `read_tensors` does).
pub fn tensor_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, String> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return safetensors_shapes(path);
    }
    let mut last = String::new();
    for key in [Some("model"), Some("state_dict"), None] {
        match candle_core::pickle::read_pth_tensor_info(path, false, key) {
            Ok(v) if !v.is_empty() => {
                return Ok(v
                    .into_iter()
                    .map(|t| (t.name, t.layout.dims().to_vec()))
                    .collect())
            }
            Ok(_) => {}
            Err(e) => last = e.to_string(),
        }
    }
    if last.is_empty() {
        Err("no tensors found (looked under keys `model`, `state_dict` and the top level)".into())
    } else {
        Err(format!("cannot read as a PyTorch zip checkpoint: {last}"))
    }
}

/// Reads only the safetensors header: 8-byte little-endian length, then that much JSON.
pub fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        "not a safetensors file (shorter than its 8-byte header length)".to_string()
    })?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || n + 8 > len {
        return Err(format!(
            "not a safetensors file (header length {n} does not fit the file's {len} bytes)"
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|e| format!("cannot read header: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| format!("safetensors header is not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("safetensors header is not a JSON object")?;
    let mut out = HashMap::new();
    for (k, t) in obj {
        if k == "__metadata__" {
            continue;
        }
        let shape = t["shape"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("safetensors header: tensor {k} has no integer `shape`"))?;
        out.insert(k.clone(), shape);
    }
    Ok(out)
}

fn read_head(p: &Path, max: usize) -> Result<String, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::with_capacity(max);
    f.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Looks at the first 64 KB of a COCO annotation file: a JSON object with COCO's top-level
/// keys; returns the keys seen and the id of the first image entry when it lies in that window.
fn coco_head(p: &Path) -> Result<(String, Option<u64>), String> {
    let head = read_head(p, 64 << 10)?;
    let t = head.trim_start_matches('\u{feff}').trim_start();
    if !t.starts_with('{') {
        return Err("does not start with a JSON object: not a COCO annotation file".into());
    }
    let keys: Vec<&str> = ["info", "licenses", "images", "annotations", "categories"]
        .into_iter()
        .filter(|k| t.contains(&format!("\"{k}\"")))
        .collect();
    if !keys.contains(&"images") && !keys.contains(&"annotations") {
        return Err(
            "no \"images\" or \"annotations\" key in its first 64 KB: not a COCO annotation file"
                .into(),
        );
    }
    // The first image entry is a flat object: `"images": [{... "id": N}`.
    let id = t.find("\"images\"").and_then(|i| {
        let rest = &t[i..];
        let open = rest.find('{')?;
        let close = rest[open..].find('}')? + open;
        let obj: serde_json::Value = serde_json::from_str(&rest[open..=close]).ok()?;
        obj["id"].as_u64()
    });
    Ok((keys.join(", "), id))
}

/// The image path of a dataset's first record, if the file is JSONL (or a JSON array whose
/// first record lies in the first 1 MB). Errors name what does not parse.
fn first_record(
    path: &Path,
    format: DatasetFormat,
    root: &Path,
    pattern: &str,
) -> Result<Option<PathBuf>, String> {
    let head = read_head(path, 1 << 20)?;
    let t = head.trim_start_matches('\u{feff}').trim_start();
    let first: &str = if t.starts_with('[') {
        // A JSON array: take the first flat-enough object if it parses on its own.
        let Some(open) = t.find('{') else {
            return Ok(None);
        };
        let mut depth = 0usize;
        let mut end = None;
        let mut in_str = false;
        let mut esc = false;
        for (i, ch) in t[open..].char_indices() {
            match ch {
                _ if esc => esc = false,
                '\\' if in_str => esc = true,
                '"' => in_str = !in_str,
                '{' if !in_str => depth += 1,
                '}' if !in_str => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => &t[open..=e],
            None => return Ok(None),
        }
    } else {
        match t.lines().next() {
            Some(l) if head.len() < (1 << 20) || t.contains('\n') => l,
            _ => return Ok(None),
        }
    };
    match format {
        DatasetFormat::Records => {
            let r: TrainRecord = serde_json::from_str(first)
                .map_err(|e| format!("first record is not an mde_train TrainRecord: {e}"))?;
            r.to_sample().map_err(|e| format!("first record: {e}"))?;
            Ok(Some(root.join(&r.image)))
        }
        DatasetFormat::GptvqaV1 => {
            let r: mde_core::records::GptVqaV1 = serde_json::from_str(first)
                .map_err(|e| format!("first record is not a GPTVQA v1 record: {e}"))?;
            Ok(Some(root.join(image_file_name(pattern, r.image_id))))
        }
    }
}

/// `http(s)://host[:port][/path]` -> (scheme, host[:port]).
fn parse_http_url(s: &str) -> Result<(String, String), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("not a URL: expected http:// or https://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?}: expected http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL are not supported: use api_key_env".into());
    }
    let host = if let Some(r) = authority.strip_prefix('[') {
        // IPv6 literal.
        let (h, tail) = r.split_once(']').ok_or("unclosed [ in the host")?;
        if !tail.is_empty() && !tail.strip_prefix(':').is_some_and(valid_port) {
            return Err(format!("bad port in {authority:?}"));
        }
        h.to_string()
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if let Some(p) = port {
            if !valid_port(p) {
                return Err(format!("bad port {p:?}"));
            }
        }
        h.to_string()
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("bad host {host:?}"));
    }
    Ok((scheme, authority.to_string()))
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.parse::<u16>().is_ok()
}

fn is_local_host(authority: &str) -> bool {
    let host = authority
        .strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| authority.rsplit_once(':').map_or(authority, |(h, _)| h));
    if host == "localhost" || host.ends_with(".local") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("https://api.openai.com/v1").unwrap().1,
            "api.openai.com"
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:8000/v1").unwrap().1,
            "127.0.0.1:8000"
        );
        assert!(parse_http_url("ftp://x/v1").is_err());
        assert!(parse_http_url("api.openai.com/v1").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
        assert!(parse_http_url("http:///v1").is_err());
        assert!(is_local_host("127.0.0.1:8000"));
        assert!(is_local_host("localhost:11434"));
        assert!(is_local_host("[::1]:8000"));
        assert!(!is_local_host("api.openai.com"));
    }

    #[test]
    fn coco_head_reads_first_image() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.json");
        std::fs::write(
            &p,
            r#"{"info": {"year": 2017}, "images": [{"file_name": "000000000009.jpg", "id": 9}, {"id": 10}], "annotations": []}"#,
        )
        .unwrap();
        let (keys, id) = coco_head(&p).unwrap();
        assert_eq!(id, Some(9));
        assert!(keys.contains("annotations"), "{keys}");
        std::fs::write(&p, "[1, 2]").unwrap();
        assert!(coco_head(&p).is_err());
    }
}
