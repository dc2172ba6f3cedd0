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
//! | `Mme`, `Chat` | Vicuna-v0 chat (`CONV_VISION_Vicuna0`), BOS; choices appended as `(A) .. (B) ..` | greedy, 300 new tokens |
//!
//! Generation stops on EOS and on both tokenizations of `###`; the text is post-processed as
//! MiniGPT-4's `Chat.answer` does (the runner applies the benchmark's own answer extraction).
//!
//! ```no_run
//! use mde_core::model::EvalModel;
//! use minigpt4::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
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
//! [mmbench]                                  # optional GenerationConfig overrides
//! num_beams = 5
//! ```
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use mde_core::model::{EvalModel, EvalRequest, ImageInput, ModelError, PromptStyle};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::generation::{generate, GenerationConfig};
use crate::model::{MiniGpt4, ModelPaths};
use crate::preprocess::{decode_rgb, ImageProcessor};
use crate::prompt::{self, AokvqaPromptStyle, ChatTemplate};
use crate::tokenizer::LlamaTokenizer;

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_max_batch() -> usize {
    4
}
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

    fn parse_dtype(&self) -> Result<DType> {
        match self.dtype.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(Error::Config(format!(
                "dtype {other:?}: expected f32, f16 or bf16"
            ))),
        }
    }

    fn parse_device(&self) -> Result<Device> {
        let d = self.device.to_ascii_lowercase();
        if d == "cpu" {
            return Ok(Device::Cpu);
        }
        let ordinal = match d.as_str() {
            "cuda" | "gpu" => 0,
            _ => d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Error::Config(format!("device {d:?}: expected cpu, cuda or cuda:N"))
                })?,
        };
        Ok(Device::new_cuda(ordinal)?)
    }
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
}

impl MiniGpt4Eval {
    /// Wraps a loaded model. The image size comes from the vision config.
    pub fn new(model: MiniGpt4, tokenizer: LlamaTokenizer, name: impl Into<String>) -> Self {
        let size = model.config().vision.image_size as u32;
        MiniGpt4Eval {
            model,
            tokenizer,
            processor: ImageProcessor::eval(size),
            mmbench: default_mmbench(),
            chat: default_chat(),
            max_batch: default_max_batch(),
            name: name.into(),
        }
    }

    /// Sets the largest batch per call.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Loads every piece named by `cfg`.
    pub fn load(cfg: &EvalModelConfig) -> Result<Self> {
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
        let mut me = Self::new(model, tokenizer, name).with_max_batch(cfg.max_batch);
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

    /// Decodes and encodes the images of a batch: one `[num_query, hidden]` tensor per request.
    fn image_embeds(&self, reqs: &[EvalRequest]) -> std::result::Result<Vec<Tensor>, ModelError> {
        let mut imgs = Vec::with_capacity(reqs.len());
        for r in reqs {
            let bad = |msg: String| ModelError::InvalidInput {
                id: r.id.clone(),
                msg,
            };
            let img = match &r.image {
                ImageInput::Encoded { data } => decode_rgb(data).map_err(|e| bad(e.to_string()))?,
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
        (0..reqs.len())
            .map(|i| emb.get(i).map_err(backend))
            .collect()
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
    let tensors = crate::weights::read_tensors(&file)?;
    let from_cfg = match cfg_file {
        Some(c) => {
            let bytes = std::fs::read(&c).map_err(|e| Error::Io {
                path: c.clone(),
                source: e,
            })?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: c.clone(),
                source: e,
            })?;
            v.get("lora_alpha").and_then(|a| a.as_f64())
        }
        None => None,
    };
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
        let images = self.image_embeds(reqs)?;
        let mut out = Vec::with_capacity(reqs.len());
        for (r, img) in reqs.iter().zip(&images) {
            if r.choices.is_empty() {
                return Err(ModelError::InvalidInput {
                    id: r.id.clone(),
                    msg: "no choices to rank".into(),
                });
            }
            let prefix = self.prompt_embeds(r, img)?;
            let cands = prompt::aokvqa_candidates(&r.choices)
                .iter()
                .map(|c| self.tokenizer.encode(c, false))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(backend)?;
            out.push(
                self.model
                    .score_candidates(&prefix, &cands)
                    .map_err(backend)?,
            );
        }
        Ok(out)
    }
}
