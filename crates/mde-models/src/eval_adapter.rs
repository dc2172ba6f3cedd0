//! MiniGPT-4 as an [`mde_core::model::EvalModel`]: the benchmark runners of `mde-eval` drive it
//! without knowing anything about prompts or tensors.
//!
//! The adapter builds the prompt each benchmark was evaluated with:
//!
//! | style | prompt | answer |
//! |---|---|---|
//! | `MMBench` | OpenCompass's MiniGPT-4 prompt ([`prompt::mmbench_prompt`]), BOS | beam search 5, 30 new tokens, length penalty -1 |
//! | `AokvqaRank` | [`prompt::aokvqa_rank_prompt`] (released: `<img>`, no BOS; clean: `<Img>`, BOS) | mean CE of each `(L) choice` |
//! | `SeedRank` | the A-OKVQA ranking prompt in its clean form (`<Img>`, BOS) | mean CE of each `(L) choice` |
//! | `McqRank` | the clean ranking prompt with `{hint} {question}` and the choices' own letters, BOS | mean CE of each `(L) choice` |
//! | `Mme`, `Chat` | Vicuna-v0 chat (`CONV_VISION_Vicuna0`), BOS; choices appended as `(A) .. (B) ..` | greedy, 300 new tokens |
//!
//! `AnswerRank` (the choice texts after a QA prompt) is ranked the same way. "Mean CE" is the
//! released protocol; `rank_score = "sum"` ([`RankScore::Sum`]) ranks by total log-likelihood.
//!
//! Generation stops on EOS and on both tokenizations of `###`; the text is post-processed as
//! MiniGPT-4's `Chat.answer` does (the runner applies the benchmark's own answer extraction).
//!
//! Ranking a batch costs two LLM forwards whatever its size: one over every request's prompt
//! (right-padded, filling a KV cache), one over every candidate of every request (the cache rows
//! repeated per candidate), and the vocabulary head only on the positions that predict
//! candidate tokens. Image embeddings are cached by a hash of the image bytes (bounded, LRU), so
//! MMBench's circular copies of a question encode their image once; see
//! [`MiniGpt4Eval::clear_image_cache`] for when the cache must be dropped by hand.
//!
//! ```no_run
//! use mde_core::model::EvalModel;
//! use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
//! let mut cfg: EvalModelConfig = serde_json::from_str(r#"{"blip2": "blip2", "vicuna": "vicuna",
//!     "projector": "minigpt4/pretrained_minigpt4.pth"}"#).unwrap();
//! cfg.resolve_paths(std::path::Path::new("/models"));
//! let model = MiniGpt4Eval::load(&cfg).unwrap();
//! println!("{} (batch {})", model.name(), model.max_batch());
//! ```
//!
//! Model config (as `mde eval --model CONFIG.toml` reads it; relative paths are relative to the
//! config file):
//!
//! ```toml
//! blip2 = "blip2_pretrained_flant5xxl.pth"   # or an HF BLIP-2 folder / repo id
//! eva_vit = "eva_vit_g.pth"                  # when the LAVIS file has no visual_encoder.*
//! vicuna = "vicuna-7b"                       # HF LLaMA folder
//! projector = "pretrained_minigpt4.pth"      # llama_proj checkpoint
//! lora = "round2/adapter"                    # optional PEFT adapter folder or file
//! dtype = "f16"                              # f32 | f16 | bf16
//! device = "cuda:0"                          # cpu | cuda | cuda:N
//! max_batch = 4
//! rank_score = "mean"                        # mean (released) | sum
//! [mmbench]                                  # optional GenerationConfig overrides
//! num_beams = 5
//! ```
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use image::RgbImage;
use mde_core::model::{EvalModel, EvalRequest, ImageInput, ModelError, PromptStyle};
use serde::Deserialize;

use minigpt4::error::{Error, Result};
use minigpt4::generation::{generate, GenerationConfig};
use minigpt4::llama::KvCache;
use minigpt4::model::{MiniGpt4, ModelPaths};
use minigpt4::preprocess::{decode_rgb, ImageProcessor};
use minigpt4::prompt::{self, AokvqaPromptStyle, ChatTemplate};
use minigpt4::tokenizer::LlamaTokenizer;

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_max_batch() -> usize {
    4
}
/// Default byte budget of the image-embedding cache (per model, on the model's device).
pub const DEFAULT_IMAGE_CACHE_BYTES: usize = 256 << 20;
/// OpenCompass's MiniGPT-4 MMBench decoding: beam 5, max_length 30, length_penalty -1.
fn default_mmbench() -> GenerationConfig {
    GenerationConfig {
        num_beams: 5,
        max_new_tokens: 30,
        length_penalty: -1.0,
        ..Default::default()
    }
}
/// MiniGPT-4 chat defaults (300 new tokens), greedy so evaluations are reproducible.
fn default_chat() -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 300,
        ..Default::default()
    }
}

/// The model config file of `mde eval` / `mde ask`: where the MiniGPT-4 pieces are and how to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalModelConfig {
    /// HF BLIP-2 folder / repo id, or a LAVIS `.pth`.
    pub blip2: String,
    #[serde(default)]
    pub eva_vit: Option<String>,
    #[serde(default)]
    pub blip2_config: Option<String>,
    /// Vicuna / LLaMA HF folder or repo id.
    pub vicuna: String,
    /// Tokenizer folder or `tokenizer.json` (default: the Vicuna folder).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// MiniGPT-4 checkpoint with `llama_proj.*`.
    #[serde(default)]
    pub projector: Option<String>,
    /// PEFT LoRA adapter: a folder with `adapter_model.safetensors` (+ `adapter_config.json`),
    /// or a weights file (`.safetensors`, or a DataEngine/MiniGPT-4 `.pth`).
    #[serde(default)]
    pub lora: Option<String>,
    /// LoRA alpha when no `adapter_config.json` gives it (released configs: 16).
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Display name (default: derived from the Vicuna path and the adapter).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_mmbench")]
    pub mmbench: GenerationConfig,
    #[serde(default = "default_chat")]
    pub chat: GenerationConfig,
    /// How ranking scores a candidate: `"mean"` (released) or `"sum"`, see [`RankScore`].
    #[serde(default)]
    pub rank_score: RankScore,
}

impl EvalModelConfig {
    /// Resolves relative paths against `base` (the config file's folder) when the file exists
    /// there; anything else (a Hugging Face repo id) is left as written.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |s: &mut String| {
            let p = Path::new(s.as_str());
            if p.is_relative() && base.join(p).exists() {
                *s = base.join(p).display().to_string();
            }
        };
        fix(&mut self.blip2);
        fix(&mut self.vicuna);
        for s in [
            &mut self.eva_vit,
            &mut self.blip2_config,
            &mut self.tokenizer,
            &mut self.projector,
            &mut self.lora,
        ]
        .into_iter()
        .flatten()
        {
            fix(s);
        }
    }

    /// Checks the values that are sizes or settings (not the files): `max_batch` at least 1,
    /// `lora_alpha` finite, both generation tables ([`GenerationConfig::validate`], keys
    /// `mmbench.*` / `chat.*`), dtype and rank score names. Callers that read the config from a
    /// file add it with [`Error::in_file`].
    pub fn validate(&self) -> Result<()> {
        minigpt4::config::check::at_least("max_batch", self.max_batch, 1)?;
        if let Some(a) = self.lora_alpha {
            minigpt4::config::check::finite("lora_alpha", a)?;
        }
        self.mmbench
            .validate()
            .map_err(|e| e.in_section("mmbench."))?;
        self.chat.validate().map_err(|e| e.in_section("chat."))?;
        if self.parse_dtype().is_err() {
            return Err(Error::bad_value(
                "dtype",
                format!("{:?}", self.dtype),
                "must be \"f32\", \"f16\" or \"bf16\"",
            ));
        }
        Ok(())
    }

    fn parse_dtype(&self) -> Result<DType> {
        parse_dtype(&self.dtype)
    }

    fn parse_device(&self) -> Result<Device> {
        parse_device(&self.device)
    }
}

/// `f32`/`float32`/`fp32`, `f16`/`float16`/`fp16`/`half`, `bf16`/`bfloat16` (any case).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::Config(format!(
            "dtype {other:?}: expected f32, f16 or bf16"
        ))),
    }
}

/// `cpu`, `cuda`/`gpu` (device 0) or `cuda:N` (any case).
pub fn parse_device(s: &str) -> Result<Device> {
    let d = s.to_ascii_lowercase();
    if d == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match d.as_str() {
        "cuda" | "gpu" => 0,
        _ => d
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Config(format!("device {d:?}: expected cpu, cuda or cuda:N")))?,
    };
    Ok(Device::new_cuda(ordinal)?)
}

/// MiniGPT-4 ready for benchmark evaluation.
pub struct MiniGpt4Eval {
    pub model: MiniGpt4,
    pub tokenizer: LlamaTokenizer,
    pub processor: ImageProcessor,
    pub mmbench: GenerationConfig,
    pub chat: GenerationConfig,
    max_batch: usize,
    name: String,
    images: ImageCache,
    rank_score: RankScore,
}

/// How a ranking candidate's token log-probabilities become its score.
///
/// `Mean` is the released A-OKVQA protocol (mean token cross-entropy). It favours candidates
/// whose later tokens are predictable continuations of the first ("they are the same size" against
/// "the red circle"): an uncertain model then picks the longer text. `Sum` ranks by the
/// candidate's total log-likelihood, which does not depend on how many tokens a text happens to
/// split into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankScore {
    /// Mean token log-probability (the released protocol).
    #[default]
    Mean,
    /// Total log-probability of the candidate's tokens.
    Sum,
}

impl std::str::FromStr for RankScore {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(RankScore::Mean),
            "sum" => Ok(RankScore::Sum),
            _ => Err(format!("unknown rank score {s:?} (expected mean or sum)")),
        }
    }
}

impl RankScore {
    /// The score (lower is better) of a candidate of `len` tokens whose token cross-entropies
    /// sum to `ce`.
    pub fn score(self, ce: f32, len: usize) -> f32 {
        match self {
            RankScore::Mean => ce / len as f32,
            RankScore::Sum => ce,
        }
    }
}

/// Identity of an image's bytes: a SipHash of the bytes plus their length and the RGB size (a
/// 64-bit collision among a benchmark's few thousand images is practically impossible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ImageKey {
    hash: u64,
    len: usize,
    rgb: Option<(u32, u32)>,
}

impl ImageKey {
    fn of(img: &ImageInput) -> Self {
        let (data, rgb) = match img {
            ImageInput::Encoded { data } => (data, None),
            ImageInput::Rgb {
                width,
                height,
                data,
            } => (data, Some((*width, *height))),
        };
        // DefaultHasher::new() uses fixed keys: the same bytes always give the same hash.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        ImageKey {
            hash: h.finish(),
            len: data.len(),
            rgb,
        }
    }
}

/// Bounded LRU cache of image embeddings `[num_query, hidden]`, valid for one set of image-side
/// weights (the projector's tensors are fingerprinted; see [`MiniGpt4Eval::clear_image_cache`]).
#[derive(Debug)]
struct ImageCache {
    budget: usize,
    used: usize,
    tick: u64,
    map: HashMap<ImageKey, (Tensor, usize, u64)>,
    /// Tensor ids of `llama_proj` weight and bias when the entries were computed.
    weights: Option<(candle_core::TensorId, Option<candle_core::TensorId>)>,
    hits: u64,
    misses: u64,
}

impl ImageCache {
    fn new(budget: usize) -> Self {
        ImageCache {
            budget,
            used: 0,
            tick: 0,
            map: HashMap::new(),
            weights: None,
            hits: 0,
            misses: 0,
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.used = 0;
    }

    fn get(&mut self, k: &ImageKey) -> Option<Tensor> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|e| {
            e.2 = t;
            e.0.clone()
        })
    }

    fn insert(&mut self, k: ImageKey, v: Tensor) {
        let bytes = v.elem_count() * v.dtype().size_in_bytes();
        if bytes > self.budget {
            return;
        }
        while self.used + bytes > self.budget {
            // Evict the least recently used entry (a linear scan: a few thousand entries at most).
            let Some(old) = self.map.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| *k) else {
                break;
            };
            if let Some((_, b, _)) = self.map.remove(&old) {
                self.used -= b;
            }
        }
        self.tick += 1;
        if let Some((_, b, _)) = self.map.insert(k, (v, bytes, self.tick)) {
            self.used -= b;
        }
        self.used += bytes;
    }
}

impl MiniGpt4Eval {
    /// Wraps a loaded model. The image size comes from the vision config. Frozen f32 CPU weights
    /// are stored for inference ([`MiniGpt4::set_inference_layout`]); trainable ones stay as
    /// they are.
    pub fn new(mut model: MiniGpt4, tokenizer: LlamaTokenizer, name: impl Into<String>) -> Self {
        if let Err(e) = model.set_inference_layout(true) {
            // Only a failed copy can get here; the row-major storage still works, just slower.
            tracing::warn!("keeping the row-major weight storage: {e}");
        }
        let size = model.config().vision.image_size as u32;
        MiniGpt4Eval {
            model,
            tokenizer,
            processor: ImageProcessor::eval(size),
            mmbench: default_mmbench(),
            chat: default_chat(),
            max_batch: default_max_batch(),
            name: name.into(),
            images: ImageCache::new(DEFAULT_IMAGE_CACHE_BYTES),
            rank_score: RankScore::Mean,
        }
    }

    /// Sets how ranking candidates are scored (default: [`RankScore::Mean`], the released
    /// protocol).
    pub fn with_rank_score(mut self, score: RankScore) -> Self {
        self.rank_score = score;
        self
    }

    /// Sets the byte budget of the image-embedding cache (0 disables it).
    pub fn with_image_cache_bytes(mut self, bytes: usize) -> Self {
        self.images = ImageCache::new(bytes);
        self
    }

    /// Drops every cached image embedding. The cache notices by itself when `llama_proj` is
    /// replaced (new tensors) and is bypassed while the projector is trainable (weights updated in
    /// place by an optimiser); call this after changing the vision tower, the Q-Former or the
    /// projector's values in place in any other way.
    pub fn clear_image_cache(&mut self) {
        self.images.clear();
    }

    /// (hits, misses) of the image-embedding lookups so far, one per request (a repeat inside
    /// one batch counts as a hit).
    pub fn image_cache_stats(&self) -> (u64, u64) {
        (self.images.hits, self.images.misses)
    }

    /// Sets the largest batch per call. Config files with `max_batch = 0` are rejected at load
    /// ([`EvalModelConfig::validate`]); a 0 passed here in code means 1.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Loads every piece named by `cfg` (after [`EvalModelConfig::validate`]).
    pub fn load(cfg: &EvalModelConfig) -> Result<Self> {
        cfg.validate()?;
        let dtype = cfg.parse_dtype()?;
        let device = cfg.parse_device()?;
        let paths = ModelPaths {
            blip2: cfg.blip2.clone(),
            eva_vit: cfg.eva_vit.clone(),
            blip2_config: cfg.blip2_config.clone(),
            vicuna: cfg.vicuna.clone(),
            projector: cfg.projector.clone(),
        };
        let mut model = MiniGpt4::load(&paths, dtype, &device)?;
        if let Some(lora) = &cfg.lora {
            let (tensors, alpha) = read_lora(Path::new(lora), cfg.lora_alpha)?;
            let n = model.llama.load_lora(&tensors, alpha, 0.0, 0)?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "{lora}: no LoRA tensor matches a LLaMA layer"
                )));
            }
            tracing::info!("{lora}: {n} LoRA modules, alpha {alpha}");
        }
        let tok_path = cfg.tokenizer.clone().unwrap_or_else(|| cfg.vicuna.clone());
        let tp = Path::new(&tok_path);
        let tokenizer = if tp.is_file() {
            LlamaTokenizer::from_file(tp)
        } else {
            LlamaTokenizer::from_dir(tp)
        }
        .map_err(|e| Error::Config(format!("tokenizer {tok_path}: {e}")))?;
        let name = cfg.name.clone().unwrap_or_else(|| {
            let base = |s: &str| {
                Path::new(s)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            match &cfg.lora {
                Some(l) => format!("minigpt4-{}+lora:{}", base(&cfg.vicuna), base(l)),
                None => format!("minigpt4-{}", base(&cfg.vicuna)),
            }
        });
        let mut me = Self::new(model, tokenizer, name)
            .with_max_batch(cfg.max_batch)
            .with_rank_score(cfg.rank_score);
        me.mmbench = cfg.mmbench.clone();
        me.chat = cfg.chat.clone();
        Ok(me)
    }

    /// The prompt text of a request and whether its first segment gets BOS.
    pub fn prompt_for(&self, req: &EvalRequest) -> (String, bool) {
        let letters: Vec<char> = (0..req.choices.len()).map(|i| req.letter(i)).collect();
        match req.style {
            PromptStyle::MMBench => {
                let opts: Vec<(String, String)> = letters
                    .iter()
                    .zip(&req.choices)
                    .map(|(l, c)| (l.to_string(), c.clone()))
                    .collect();
                (
                    prompt::mmbench_prompt(req.hint.as_deref(), &req.question, &opts),
                    true,
                )
            }
            PromptStyle::AokvqaRank { released_quirks } => {
                let style = if released_quirks {
                    AokvqaPromptStyle::Released
                } else {
                    AokvqaPromptStyle::Clean
                };
                (
                    prompt::aokvqa_rank_prompt(&req.question, &req.choices, style),
                    style.bos_first(),
                )
            }
            PromptStyle::SeedRank => {
                let style = AokvqaPromptStyle::Clean;
                (
                    prompt::aokvqa_rank_prompt(&req.question, &req.choices, style),
                    style.bos_first(),
                )
            }
            PromptStyle::McqRank => {
                let q = match req.hint.as_deref().filter(|h| !h.is_empty()) {
                    Some(h) => format!("{h} {}", req.question),
                    None => req.question.clone(),
                };
                let opts = Self::candidates_for(req).join(" ");
                (
                    format!(
                        "###Human: <Img>{}</Img> {q}\n{opts}\n###Assistant: The answer is",
                        prompt::IMAGE_PLACEHOLDER
                    ),
                    true,
                )
            }
            PromptStyle::AnswerRank => {
                let q = match req.hint.as_deref().filter(|h| !h.is_empty()) {
                    Some(h) => format!("{h} {}", req.question),
                    None => req.question.clone(),
                };
                (
                    format!(
                        "###Human: <Img>{}</Img> {q}\n###Assistant: The answer is",
                        prompt::IMAGE_PLACEHOLDER
                    ),
                    true,
                )
            }
            PromptStyle::Mme | PromptStyle::Chat => {
                let mut q = match req.hint.as_deref().filter(|h| !h.is_empty()) {
                    Some(h) => format!("{h} {}", req.question),
                    None => req.question.clone(),
                };
                if !req.choices.is_empty() {
                    let opts: Vec<String> = letters
                        .iter()
                        .zip(&req.choices)
                        .map(|(l, c)| format!("({l}) {c}"))
                        .collect();
                    q = format!("{q}\n{}", opts.join(" "));
                }
                (ChatTemplate::vicuna0().single_turn(&q), true)
            }
        }
    }

    /// The candidate texts scored for a ranking request: `(L) choice` with the request's own
    /// letters for `McqRank`, A, B, C, ... otherwise (the released A-OKVQA candidates).
    pub fn candidates_for(req: &EvalRequest) -> Vec<String> {
        match req.style {
            PromptStyle::McqRank => req
                .choices
                .iter()
                .enumerate()
                .map(|(i, c)| format!("({}) {c}", req.letter(i)))
                .collect(),
            PromptStyle::AnswerRank => req.choices.clone(),
            _ => prompt::aokvqa_candidates(&req.choices),
        }
    }

    /// Decodes and encodes the images of a batch: one `[num_query, hidden]` tensor per request.
    /// Images already in the cache (or repeated inside the batch) are encoded once; the rest are
    /// encoded in one batch.
    fn image_embeds(
        &mut self,
        reqs: &[EvalRequest],
    ) -> std::result::Result<Vec<Tensor>, ModelError> {
        let proj = &self.model.llama_proj;
        let use_cache = self.images.budget > 0 && proj.weight_var.is_none();
        let fp = (proj.weight.id(), proj.bias.as_ref().map(|b| b.id()));
        if self.images.weights != Some(fp) {
            self.images.clear();
            self.images.weights = Some(fp);
        }
        let keys: Vec<ImageKey> = reqs.iter().map(|r| ImageKey::of(&r.image)).collect();
        let mut found: HashMap<ImageKey, Tensor> = HashMap::new();
        let mut todo: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if found.contains_key(k) || todo.iter().any(|&j| keys[j] == *k) {
                self.images.hits += 1;
                continue;
            }
            match self.images.get(k).filter(|_| use_cache) {
                Some(t) => {
                    self.images.hits += 1;
                    found.insert(*k, t);
                }
                None => {
                    self.images.misses += 1;
                    todo.push(i);
                }
            }
        }
        if !todo.is_empty() {
            let mut imgs = Vec::with_capacity(todo.len());
            for &i in &todo {
                let r = &reqs[i];
                let bad = |msg: String| ModelError::InvalidInput {
                    id: r.id.clone(),
                    msg,
                };
                let img = match &r.image {
                    ImageInput::Encoded { data } => {
                        decode_rgb(data).map_err(|e| bad(e.to_string()))?
                    }
                    ImageInput::Rgb {
                        width,
                        height,
                        data,
                    } => {
                        r.image.validate().map_err(bad)?;
                        RgbImage::from_raw(*width, *height, data.clone())
                            .ok_or_else(|| bad("RGB buffer does not match its size".into()))?
                    }
                };
                imgs.push(img);
            }
            let pixels = self
                .processor
                .process_batch_eval(&imgs, self.model.device())
                .map_err(backend)?;
            let emb = self.model.encode_images(&pixels).map_err(backend)?;
            for (n, &i) in todo.iter().enumerate() {
                // An owned copy: a view would keep the whole batch's storage alive in the cache.
                let t = emb.get(n).and_then(|t| t.copy()).map_err(backend)?;
                if use_cache {
                    self.images.insert(keys[i], t.clone());
                }
                found.insert(keys[i], t);
            }
        }
        Ok(keys.iter().map(|k| found[k].clone()).collect())
    }

    /// Tokenised candidates of a ranking request.
    fn candidate_ids(&self, r: &EvalRequest) -> std::result::Result<Vec<Vec<u32>>, ModelError> {
        if r.choices.is_empty() {
            return Err(ModelError::InvalidInput {
                id: r.id.clone(),
                msg: "no choices to rank".into(),
            });
        }
        let cands = Self::candidates_for(r)
            .iter()
            .map(|c| self.tokenizer.encode(c, false))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(backend)?;
        if cands.iter().any(|c| c.is_empty()) {
            return Err(ModelError::InvalidInput {
                id: r.id.clone(),
                msg: "a candidate tokenises to nothing".into(),
            });
        }
        Ok(cands)
    }

    /// The reference ranking path: one [`MiniGpt4::score_candidates`] forward per request (the
    /// prompt recomputed for every candidate). [`EvalModel::rank`] computes the same scores with
    /// two forwards per batch; this stays for checking that and for timing comparisons.
    pub fn rank_per_request(
        &mut self,
        reqs: &[EvalRequest],
    ) -> std::result::Result<Vec<Vec<f32>>, ModelError> {
        if reqs.is_empty() {
            return Ok(vec![]);
        }
        let images = self.image_embeds(reqs)?;
        let mut out = Vec::with_capacity(reqs.len());
        for (r, img) in reqs.iter().zip(&images) {
            let cands = self.candidate_ids(r)?;
            let prefix = self.prompt_embeds(r, img)?;
            let ce = self
                .model
                .candidate_cross_entropy(&prefix, &cands)
                .map_err(backend)?;
            out.push(
                ce.into_iter()
                    .zip(&cands)
                    .map(|(ce, c)| self.rank_score.score(ce, c.len()))
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Mean token cross-entropy of every candidate of every request, in two LLM forwards:
    ///
    /// 1. the prompts `[R, Tmax]`, right-padded (mask 0 on padding), filling a KV cache;
    /// 2. all candidates `[N, Cmax - 1]` (a candidate's last token predicts nothing), each row
    ///    attending to its request's cached prompt (cache rows repeated per candidate) at
    ///    positions `T_r + k`, padding masked.
    ///
    /// Candidate token 0 is predicted by the prompt's last position, token k by candidate
    /// position k - 1; the vocabulary head runs only on those positions. Same mask, positions and
    /// sums as [`MiniGpt4::score_candidates`], so the scores agree up to float rounding.
    fn score_batch(&self, prefixes: &[Tensor], cands: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<f32>>> {
        let llama = &self.model.llama;
        let dev = self.model.device().clone();
        let dt = self.model.dtype();
        let r = prefixes.len();
        let lens = prefixes
            .iter()
            .map(|p| p.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tmax = lens.iter().copied().max().unwrap_or(0);
        let hidden = llama.hidden_size();
        if lens.contains(&0) {
            return Err(Error::Invalid("empty prompt".into()));
        }
        // 1. Prompts.
        let mut rows = Vec::with_capacity(r);
        let mut mask = Vec::with_capacity(r * tmax);
        for (p, &l) in prefixes.iter().zip(&lens) {
            let p = p.to_dtype(dt)?;
            rows.push(if l < tmax {
                Tensor::cat(&[p, Tensor::zeros((tmax - l, hidden), dt, &dev)?], 0)?
            } else {
                p
            });
            mask.extend((0..tmax).map(|j| u32::from(j < l)));
        }
        let x = Tensor::stack(&rows, 0)?;
        let mask = Tensor::from_vec(mask, (r, tmax), &dev)?;
        let pos = Tensor::arange(0u32, tmax as u32, &dev)?
            .unsqueeze(0)?
            .repeat((r, 1))?;
        let mut cache = KvCache::new(llama.layers.len());
        let hp = llama.hidden_states(&x, &pos, Some(&mask), Some(&mut cache), false)?;
        let hp = hp.reshape((r * tmax, hidden))?;
        let last_idx: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (i * tmax + l - 1) as u32)
            .collect();
        let last = hp.index_select(&Tensor::from_vec(last_idx, r, &dev)?, 0)?; // [R, H]

        // 2. Candidates (all but their last token).
        let cin = cands
            .iter()
            .flatten()
            .map(|c| c.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let n: usize = cands.iter().map(|c| c.len()).sum();
        let mut rest_rows: Vec<u32> = Vec::new();
        let hc = if cin > 0 {
            let (mut owner, mut ids, mut cpos, mut cmask) = (vec![], vec![], vec![], vec![]);
            let mut row = 0usize;
            for (ri, cs) in cands.iter().enumerate() {
                for c in cs {
                    owner.push(ri as u32);
                    for k in 0..cin {
                        ids.push(if k + 1 < c.len() { c[k] } else { 0 });
                        cpos.push((lens[ri] + k) as u32);
                    }
                    cmask.extend((0..tmax).map(|j| u32::from(j < lens[ri])));
                    cmask.extend((0..cin).map(|k| u32::from(k + 1 < c.len())));
                    rest_rows.extend((0..c.len() - 1).map(|k| (row * cin + k) as u32));
                    row += 1;
                }
            }
            let mut cache = cache.index_select(&Tensor::from_vec(owner, n, &dev)?)?;
            let emb = llama.embed(&Tensor::from_vec(ids, (n, cin), &dev)?)?;
            let cpos = Tensor::from_vec(cpos, (n, cin), &dev)?;
            let cmask = Tensor::from_vec(cmask, (n, tmax + cin), &dev)?;
            let h = llama.hidden_states(&emb, &cpos, Some(&cmask), Some(&mut cache), false)?;
            Some(h.reshape((n * cin, hidden))?)
        } else {
            None
        };

        // Log-probabilities of the candidate tokens: request rows first, then candidate rows.
        let mut sel = vec![last];
        if let (Some(h), false) = (&hc, rest_rows.is_empty()) {
            let m = rest_rows.len();
            sel.push(h.index_select(&Tensor::from_vec(rest_rows, m, &dev)?, 0)?);
        }
        let hsel = Tensor::cat(&sel, 0)?;
        let logits = llama
            .lm_head
            .forward_t(&hsel.unsqueeze(0)?, false)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        // Target of every selected row, in the same order.
        // Row ri predicts token 0 of every candidate of request ri.
        let mut targets: Vec<u32> = Vec::with_capacity(n);
        let lsm_first = lsm.narrow(0, 0, r)?;
        let mut owner_rows = Vec::with_capacity(n);
        for (ri, cs) in cands.iter().enumerate() {
            for c in cs {
                owner_rows.push(ri as u32);
                targets.push(c[0]);
            }
        }
        let first = lsm_first
            .index_select(&Tensor::from_vec(owner_rows, n, &dev)?, 0)?
            .gather(&Tensor::from_vec(targets, (n, 1), &dev)?, 1)?
            .squeeze(1)?
            .to_vec1::<f32>()?;
        let rest_targets: Vec<u32> = cands
            .iter()
            .flatten()
            .flat_map(|c| c[1..].iter().copied())
            .collect();
        let rest = if rest_targets.is_empty() {
            vec![]
        } else {
            let m = rest_targets.len();
            lsm.narrow(0, r, m)?
                .gather(&Tensor::from_vec(rest_targets, (m, 1), &dev)?, 1)?
                .squeeze(1)?
                .to_vec1::<f32>()?
        };
        let mut out = Vec::with_capacity(r);
        let (mut ci, mut ri_rest) = (0usize, 0usize);
        for cs in cands {
            let mut scores = Vec::with_capacity(cs.len());
            for c in cs {
                // Summed in token order, as candidate_cross_entropy does.
                let mut s = first[ci];
                for k in 1..c.len() {
                    s += rest[ri_rest + k - 1];
                }
                ri_rest += c.len() - 1;
                ci += 1;
                scores.push(self.rank_score.score(-s, c.len()));
            }
            out.push(scores);
        }
        Ok(out)
    }

    /// Prompt embeddings `[T, hidden]` of one request with its image embeddings.
    fn prompt_embeds(
        &self,
        req: &EvalRequest,
        image: &Tensor,
    ) -> std::result::Result<Tensor, ModelError> {
        let (text, bos) = self.prompt_for(req);
        let segs = prompt::tokenize_segments(&self.tokenizer, &text, bos).map_err(backend)?;
        if segs.len() != 2 {
            return Err(ModelError::InvalidInput {
                id: req.id.clone(),
                msg: format!(
                    "the prompt must hold exactly one image slot, found {}",
                    segs.len() - 1
                ),
            });
        }
        self.model
            .embed_segments(&segs, std::slice::from_ref(image))
            .map_err(backend)
    }
}

fn backend(e: impl std::fmt::Display) -> ModelError {
    ModelError::Backend(e.to_string())
}

/// Reads a LoRA adapter (folder or file) and its alpha.
fn read_lora(path: &Path, alpha: Option<f64>) -> Result<(HashMap<String, Tensor>, f64)> {
    let (file, cfg_file): (PathBuf, Option<PathBuf>) = if path.is_dir() {
        let st = path.join("adapter_model.safetensors");
        let bin = path.join("adapter_model.bin");
        let f = if st.is_file() { st } else { bin };
        (
            f,
            Some(path.join("adapter_config.json")).filter(|p| p.is_file()),
        )
    } else {
        (
            path.to_path_buf(),
            path.parent()
                .map(|d| d.join("adapter_config.json"))
                .filter(|p| p.is_file()),
        )
    };
    let from_cfg = match cfg_file {
        Some(c) => minigpt4::weights::read_adapter_config(&c)?.lora_alpha,
        None => None,
    };
    let tensors = minigpt4::weights::read_tensors(&file)?;
    // The adapter's own config wins; the TOML value is for bare weight files; 16 is the released value.
    Ok((tensors, from_cfg.or(alpha).unwrap_or(16.0)))
}

impl EvalModel for MiniGpt4Eval {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn generate(&mut self, reqs: &[EvalRequest]) -> std::result::Result<Vec<String>, ModelError> {
        if reqs.is_empty() {
            return Ok(vec![]);
        }
        let images = self.image_embeds(reqs)?;
        let prompts = reqs
            .iter()
            .zip(&images)
            .map(|(r, i)| self.prompt_embeds(r, i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let stop = self.tokenizer.stop_sequences();
        let eos = vec![self.tokenizer.eos_id()];
        // Requests of one batch share a style (one benchmark per run), but group anyway.
        let mut out = vec![String::new(); reqs.len()];
        let mut groups: Vec<(bool, Vec<usize>)> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let mm = r.style == PromptStyle::MMBench;
            match groups.iter_mut().find(|(m, _)| *m == mm) {
                Some((_, v)) => v.push(i),
                None => groups.push((mm, vec![i])),
            }
        }
        for (mm, idx) in groups {
            let mut cfg = if mm {
                self.mmbench.clone()
            } else {
                self.chat.clone()
            };
            cfg.eos_token_ids = eos.clone();
            cfg.stop_sequences = stop.clone();
            let ps: Vec<Tensor> = idx.iter().map(|&i| prompts[i].clone()).collect();
            let gens = generate(&self.model.llama, &ps, &cfg, None).map_err(backend)?;
            for (&i, g) in idx.iter().zip(gens) {
                out[i] =
                    prompt::postprocess_answer_ids(&self.tokenizer, &g.tokens).map_err(backend)?;
            }
        }
        Ok(out)
    }

    fn rank(&mut self, reqs: &[EvalRequest]) -> std::result::Result<Vec<Vec<f32>>, ModelError> {
        if reqs.is_empty() {
            return Ok(vec![]);
        }
        let cands = reqs
            .iter()
            .map(|r| self.candidate_ids(r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let images = self.image_embeds(reqs)?;
        let prefixes = reqs
            .iter()
            .zip(&images)
            .map(|(r, i)| self.prompt_embeds(r, i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.score_batch(&prefixes, &cands).map_err(backend)
    }
}
