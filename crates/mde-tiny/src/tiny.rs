//! The embedded default's tiny MiniGPT-4: sizes ([`TinyModelConfig`]), a seeded random
//! initialisation, and [`build_base_model`], which trains the tokenizer and writes the model in
//! the real on-disk layouts the `minigpt4` loaders read:
//!
//! ```text
//! out_dir/
//!   blip2/config.json, blip2/model.safetensors        HF BLIP-2 naming (vision_model.*, qformer.*, query_tokens)
//!   vicuna/config.json, vicuna/model.safetensors      HF LLaMA naming (model.*, lm_head.weight)
//!   vicuna/tokenizer.json, tokenizer_config.json, special_tokens_map.json
//!   minigpt4/projector.safetensors                    llama_proj.{weight,bias} (weights.rs reads
//!                                                     safetensors as well as MiniGPT-4's .pth)
//!   manifest.json                                     config, seed, corpus hash, file hashes
//! ```
//!
//! The set of tensors is not listed here: the model is built once through
//! `minigpt4::MiniGpt4::new` with a VarBuilder backend that *creates* every tensor the model
//! code asks for (so the files always match what the loaders need), seeded per tensor name so
//! the result does not depend on construction order. Same config + seed + corpus gives
//! byte-identical files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use minigpt4::config::{LlamaConfig, MiniGpt4Config, QFormerConfig, VisionConfig};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::{MiniGpt4, ModelPaths};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::tokenizer_train::{self, TokenizerTrainConfig};
use crate::{Result, TinyError};

/// Bumped whenever the written layout or the init changes (invalidates old manifests).
pub const FORMAT_VERSION: u32 = 2;

/// Sizes and init of the tiny model. Defaults follow docs/LOOP_FEASIBILITY.md (sizes that learn
/// on 2 CPU cores) with 16 queries and cross-attention in every Q-Former layer, which give the
/// spatial question types more to work with than the prototype's 8 pooled queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TinyModelConfig {
    /// Square input side in pixels (the world's images are 64 px: no resampling).
    pub image_size: usize,
    pub patch_size: usize,
    pub vit_hidden: usize,
    pub vit_layers: usize,
    pub vit_heads: usize,
    pub vit_mlp: usize,
    pub num_query_tokens: usize,
    pub qformer_hidden: usize,
    pub qformer_layers: usize,
    pub qformer_heads: usize,
    pub qformer_mlp: usize,
    /// Layer i cross-attends to the image when `i % freq == 0` (1 = every layer).
    pub cross_attention_frequency: usize,
    pub llm_hidden: usize,
    pub llm_layers: usize,
    pub llm_heads: usize,
    pub llm_mlp: usize,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// Upper bound of the tokenizer's vocabulary (the model uses the tokenizer's actual size).
    pub vocab_size: usize,
    pub tokenizer_min_frequency: u64,
    /// Std of the normal init of every weight matrix and embedding (HF `initializer_range`);
    /// norm weights are 1 and biases 0. With `init = "fan_in"` it scales `1/sqrt(fan_in)`.
    pub init_std: f64,
    /// How weights are initialised: `normal` (N(0, init_std) everywhere, as HF) or `fan_in`.
    pub init: InitScheme,
    /// Std of the vision tower's learned position embeddings (default: `init_std`). At
    /// `init_std` 0.05 the patch projections are ~15x larger than the position embeddings, and
    /// from-scratch training left the ViT nearly position-blind: shapes and quadrants stayed at
    /// chance (docs/RESULTS.md, 'The visual encoder').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision_pos_init_std: Option<f64>,
}

/// Initialisation of weight matrices and embeddings (norm weights are always 1, biases 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// N(0, init_std) for every matrix, table and learned token (HF `_init_weights`).
    #[default]
    Normal,
    /// Matrices and convolutions N(0, init_std^2 / fan_in) and tables/learned tokens
    /// (embeddings, position/CLS embeddings, query tokens) N(0, 1). A width-64 layer at std
    /// 0.02 shrinks its input ~6x, which starves a from-scratch vision tower of gradient; this
    /// keeps every layer near unit gain (what PyTorch's defaults do for the prototype).
    FanIn,
}

impl Default for TinyModelConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            patch_size: 8,
            vit_hidden: 64,
            vit_layers: 2,
            vit_heads: 4,
            vit_mlp: 256,
            num_query_tokens: 16,
            qformer_hidden: 64,
            qformer_layers: 2,
            qformer_heads: 4,
            qformer_mlp: 256,
            cross_attention_frequency: 1,
            llm_hidden: 128,
            llm_layers: 3,
            llm_heads: 4,
            llm_mlp: 352,
            rope_theta: 10000.0,
            max_position_embeddings: 256,
            vocab_size: 1024,
            tokenizer_min_frequency: 2,
            init_std: 0.02,
            init: InitScheme::Normal,
            vision_pos_init_std: None,
        }
    }
}

impl TinyModelConfig {
    /// Checks divisibility and positivity constraints.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TinyError::Config(format!("[model] {m}")));
        let pos = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("vit_hidden", self.vit_hidden),
            ("vit_layers", self.vit_layers),
            ("vit_heads", self.vit_heads),
            ("vit_mlp", self.vit_mlp),
            ("num_query_tokens", self.num_query_tokens),
            ("qformer_hidden", self.qformer_hidden),
            ("qformer_layers", self.qformer_layers),
            ("qformer_heads", self.qformer_heads),
            ("qformer_mlp", self.qformer_mlp),
            ("cross_attention_frequency", self.cross_attention_frequency),
            ("llm_hidden", self.llm_hidden),
            ("llm_layers", self.llm_layers),
            ("llm_heads", self.llm_heads),
            ("llm_mlp", self.llm_mlp),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        for (k, v) in pos {
            if v == 0 {
                return bad(format!("{k} must be > 0"));
            }
        }
        let min_vocab = crate::tokenizer_train::min_vocab_size();
        if self.vocab_size < min_vocab {
            return bad(format!(
                "vocab_size {} is too small: the tokenizer needs at least {min_vocab} \
                 (specials, 256 bytes, `$$` and 16 merges)",
                self.vocab_size
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        for (k, h, n) in [
            ("vit", self.vit_hidden, self.vit_heads),
            ("qformer", self.qformer_hidden, self.qformer_heads),
            ("llm", self.llm_hidden, self.llm_heads),
        ] {
            if h % n != 0 {
                return bad(format!("{k}_hidden {h} is not a multiple of {k}_heads {n}"));
            }
        }
        if !(self.llm_hidden / self.llm_heads).is_multiple_of(2) {
            return bad("llm head dim must be even (RoPE rotates halves)".into());
        }
        if let Some(p) = self
            .vision_pos_init_std
            .filter(|p| !(*p > 0.0 && p.is_finite()))
        {
            return bad(format!("vision_pos_init_std must be > 0, got {p}"));
        }
        if !(self.init_std > 0.0 && self.init_std.is_finite()) {
            return bad(format!("init_std must be > 0, got {}", self.init_std));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad(format!("rope_theta must be > 0, got {}", self.rope_theta));
        }
        Ok(())
    }

    /// The tokenizer training settings.
    pub fn tokenizer(&self) -> TokenizerTrainConfig {
        TokenizerTrainConfig {
            vocab_size: self.vocab_size,
            min_frequency: self.tokenizer_min_frequency,
        }
    }

    /// The `minigpt4` config for a tokenizer of `vocab` ids.
    pub fn minigpt4_config(&self, vocab: usize) -> MiniGpt4Config {
        MiniGpt4Config {
            vision: VisionConfig {
                hidden_size: self.vit_hidden,
                num_hidden_layers: self.vit_layers,
                num_attention_heads: self.vit_heads,
                intermediate_size: self.vit_mlp,
                patch_size: self.patch_size,
                image_size: self.image_size,
                layer_norm_eps: 1e-6,
                ln_vision_eps: 1e-5,
            },
            qformer: QFormerConfig {
                hidden_size: self.qformer_hidden,
                num_hidden_layers: self.qformer_layers,
                num_attention_heads: self.qformer_heads,
                intermediate_size: self.qformer_mlp,
                cross_attention_frequency: self.cross_attention_frequency,
                encoder_hidden_size: self.vit_hidden,
                layer_norm_eps: 1e-12,
                num_query_tokens: self.num_query_tokens,
            },
            llama: LlamaConfig {
                vocab_size: vocab,
                hidden_size: self.llm_hidden,
                intermediate_size: self.llm_mlp,
                num_hidden_layers: self.llm_layers,
                num_attention_heads: self.llm_heads,
                num_key_value_heads: Some(self.llm_heads),
                head_dim: Some(self.llm_hidden / self.llm_heads),
                rms_norm_eps: 1e-6,
                rope_theta: Some(self.rope_theta),
                rope_parameters: None,
                tie_word_embeddings: false,
                max_position_embeddings: Some(self.max_position_embeddings),
                bos_token_id: Some(minigpt4::config::TokenIds::One(1)),
                eos_token_id: Some(minigpt4::config::TokenIds::One(2)),
                attention_bias: false,
                mlp_bias: false,
            },
        }
    }
}

/// Where the tokenizer corpus comes from.
#[derive(Debug, Clone, Copy)]
pub enum CorpusSource<'a> {
    /// A generated world folder (`mde_world::World::load`): see
    /// [`tokenizer_train::world_corpus`].
    WorldDir(&'a Path),
    /// Explicit texts (prompt template strings are added).
    Texts(&'a [String]),
}

/// What `manifest.json` records; a build with the same `key` is reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseManifest {
    pub format_version: u32,
    /// sha256 of (format version, config, seed, corpus hash).
    pub key: String,
    pub config: TinyModelConfig,
    pub seed: u64,
    pub corpus_sha256: String,
    pub corpus_texts: usize,
    /// Actual tokenizer vocabulary size (= LLaMA `vocab_size`).
    pub vocab_size: usize,
    pub num_parameters: usize,
    /// Relative path -> sha256 of every written file.
    pub files: BTreeMap<String, String>,
}

/// A written base model.
#[derive(Debug, Clone)]
pub struct BaseModel {
    pub root: PathBuf,
    pub manifest: BaseManifest,
    /// True when an existing matching build was reused.
    pub reused: bool,
}

impl BaseModel {
    pub fn blip2_dir(&self) -> PathBuf {
        self.root.join("blip2")
    }
    /// The Vicuna folder (LLaMA weights + tokenizer files).
    pub fn vicuna_dir(&self) -> PathBuf {
        self.root.join("vicuna")
    }
    pub fn projector_path(&self) -> PathBuf {
        self.root.join("minigpt4").join("projector.safetensors")
    }
    /// Paths for `minigpt4::MiniGpt4::load`.
    pub fn model_paths(&self) -> ModelPaths {
        ModelPaths {
            blip2: self.blip2_dir().display().to_string(),
            vicuna: self.vicuna_dir().display().to_string(),
            projector: Some(self.projector_path().display().to_string()),
            ..Default::default()
        }
    }
    /// The trained tokenizer through the `minigpt4` wrapper.
    pub fn tokenizer(&self) -> Result<LlamaTokenizer> {
        LlamaTokenizer::from_dir(self.vicuna_dir()).map_err(|e| TinyError::Tokenizer(e.to_string()))
    }
    /// The model config (sizes from the manifest).
    pub fn config(&self) -> MiniGpt4Config {
        self.manifest
            .config
            .minigpt4_config(self.manifest.vocab_size)
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn corpus_hash(texts: &[String]) -> String {
    let mut h = Sha256::new();
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// 64-bit FNV-1a of a tensor name (stream id of its RNG).
fn name_stream(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// How a tensor is initialised, from its name: norm weights 1, biases 0, everything else
/// (linears, convs, embeddings, CLS/position embeddings, query tokens) N(0, std) like HF's
/// `_init_weights` with `initializer_range`. The k-slice of the vision `qkv.bias` is therefore 0
/// as well, as in MiniGPT-4.
fn init_kind(name: &str) -> f64 {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if leaf == "bias" || leaf.ends_with("_bias") {
        return 0.0;
    }
    if leaf == "weight" && name.to_ascii_lowercase().contains("norm") {
        return 1.0;
    }
    f64::NAN // normal
}

/// Embedding tables and learned tokens (rows are looked up or added, not multiplied).
fn is_table(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("embed_tokens")
        || n.contains("query_tokens")
        || n.contains("position_embedding")
        || n.contains("pos_embed")
        || n.contains("class_embedding")
        || n.contains("cls_token")
}

/// The seeded tensor for `name` (f32, CPU): independent of the order tensors are created in.
fn init_tensor(
    name: &str,
    dims: &[usize],
    seed: u64,
    std: f64,
    scheme: InitScheme,
) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let kind = init_kind(name);
    if !kind.is_nan() {
        return Tensor::full(kind as f32, dims, &Device::Cpu);
    }
    let std = match scheme {
        InitScheme::Normal => std,
        InitScheme::FanIn if is_table(name) => 1.0,
        InitScheme::FanIn => {
            let fan_in: usize = dims.iter().skip(1).product();
            std / (fan_in.max(1) as f64).sqrt()
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(name_stream(name));
    let mut v = Vec::with_capacity(n);
    // Box-Muller on the RNG's own f64s: portable and identical on every platform.
    while v.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push((std * r * th.cos()) as f32);
        if v.len() < n {
            v.push((std * r * th.sin()) as f32);
        }
    }
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// VarBuilder backend that creates (and records) every tensor the model code requests.
struct InitBackend {
    seed: u64,
    std: f64,
    scheme: InitScheme,
    made: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl SimpleBackend for InitBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut made = self
            .made
            .lock()
            .map_err(|_| candle_core::Error::Msg("init backend poisoned".into()))?;
        let t = match made.get(name) {
            Some(t) if t.dims() == s.dims() => t.clone(),
            Some(t) => {
                return Err(candle_core::Error::Msg(format!(
                    "{name} requested with shape {:?} and {:?}",
                    t.dims(),
                    s.dims()
                )))
            }
            None => {
                let t = init_tensor(name, s.dims(), self.seed, self.std, self.scheme)?;
                made.insert(name.to_string(), t.clone());
                t
            }
        };
        t.to_dtype(dtype)?.to_device(dev)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "init backend: {name} requested without a shape"
        )))
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        // Makes the vision tower take the HF `qkv.bias` path and LLaMA build its own lm_head.
        true
    }
}

/// Every parameter of the tiny model in MiniGPT-4 root naming (`vision_model.*`, `qformer.*`,
/// `query_tokens`, `llama_proj.*`, `llama_model.*`), seeded.
pub fn init_parameters(
    cfg: &MiniGpt4Config,
    seed: u64,
    std: f64,
    scheme: InitScheme,
) -> Result<BTreeMap<String, Tensor>> {
    let made = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = InitBackend {
        seed,
        std,
        scheme,
        made: made.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    let model = MiniGpt4::new(cfg, vb)?;
    drop(model);
    let out = made
        .lock()
        .map_err(|_| TinyError::Internal("init backend poisoned".into()))?
        .clone();
    Ok(out)
}

pub(crate) type TensorMap = BTreeMap<String, Tensor>;

/// Splits MiniGPT-4 root-named tensors into the three files of the layout: BLIP-2
/// (`vision_model.*`, `qformer.*`, `query_tokens`), LLaMA (`llama_model.` prefix removed) and the
/// projector (`llama_proj.*`).
pub(crate) fn split_root_tensors(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> (TensorMap, TensorMap, TensorMap) {
    let (mut blip2, mut llama, mut proj) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (k, v) in tensors {
        if let Some(r) = k.strip_prefix("llama_model.") {
            llama.insert(r.to_string(), v);
        } else if k.starts_with("llama_proj.") {
            proj.insert(k, v);
        } else {
            blip2.insert(k, v);
        }
    }
    (blip2, llama, proj)
}

pub(crate) fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::tensor::serialize(data, Some(meta))
        .map_err(|e| TinyError::Internal(format!("safetensors serialization: {e}")))
}

fn blip2_config_json(c: &MiniGpt4Config) -> serde_json::Value {
    let v = &c.vision;
    let q = &c.qformer;
    json!({
        "_note": "Written by mde-loop (tiny MiniGPT-4, seeded random init). model.safetensors holds vision_model.*, qformer.* and query_tokens only. MiniGPT-4's ln_vision (= vision_model.post_layernorm) uses eps 1e-5.",
        "architectures": ["Blip2Model"],
        "model_type": "blip-2",
        "num_query_tokens": q.num_query_tokens,
        "initializer_range": 0.02,
        "use_decoder_only_language_model": true,
        "torch_dtype": "float32",
        "vision_config": {
            "model_type": "blip_2_vision_model",
            "hidden_act": "gelu",
            "hidden_size": v.hidden_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "intermediate_size": v.intermediate_size,
            "patch_size": v.patch_size,
            "image_size": v.image_size,
            "layer_norm_eps": v.layer_norm_eps,
            "ln_vision_eps": v.ln_vision_eps,
            "qkv_bias": true,
            "attention_dropout": 0.0
        },
        "qformer_config": {
            "model_type": "blip_2_qformer",
            "hidden_act": "gelu",
            "hidden_size": q.hidden_size,
            "num_hidden_layers": q.num_hidden_layers,
            "num_attention_heads": q.num_attention_heads,
            "intermediate_size": q.intermediate_size,
            "cross_attention_frequency": q.cross_attention_frequency,
            "encoder_hidden_size": q.encoder_hidden_size,
            "layer_norm_eps": q.layer_norm_eps,
            "attention_probs_dropout_prob": 0.0,
            "hidden_dropout_prob": 0.0,
            "max_position_embeddings": 32,
            "use_qformer_text_input": false
        },
        "text_config": llama_config_json(&c.llama)
    })
}

fn llama_config_json(l: &LlamaConfig) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": l.vocab_size,
        "hidden_size": l.hidden_size,
        "intermediate_size": l.intermediate_size,
        "num_hidden_layers": l.num_hidden_layers,
        "num_attention_heads": l.num_attention_heads,
        "num_key_value_heads": l.num_kv_heads(),
        "head_dim": l.head_dim(),
        "hidden_act": "silu",
        "max_position_embeddings": l.max_position_embeddings,
        "rms_norm_eps": l.rms_norm_eps,
        "rope_theta": l.rope_theta(),
        "rope_scaling": null,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": null,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": "float32"
    })
}

fn manifest_key(cfg: &TinyModelConfig, seed: u64, corpus: &str) -> Result<String> {
    let c = serde_json::to_string(cfg).map_err(|e| TinyError::Serialize {
        what: "the model config".into(),
        source: e,
    })?;
    Ok(sha256_hex(
        format!("mde-loop tiny v{FORMAT_VERSION}\n{c}\n{seed}\n{corpus}").as_bytes(),
    ))
}

/// True when `root/manifest.json` has `key` and every listed file still has its hash.
fn reusable(root: &Path, key: &str) -> Option<BaseManifest> {
    let m: BaseManifest = mde_core::io::read_json(root.join("manifest.json")).ok()?;
    if m.key != key || m.format_version != FORMAT_VERSION || m.files.is_empty() {
        return None;
    }
    for (rel, h) in &m.files {
        let bytes = std::fs::read(root.join(rel)).ok()?;
        if &sha256_hex(&bytes) != h {
            return None;
        }
    }
    Some(m)
}

/// Trains the tokenizer on the corpus and writes a seeded random tiny MiniGPT-4 into `out_dir`
/// (layout in the module docs). Idempotent: an existing build with the same config, seed and
/// corpus (and intact files) is reused. Same inputs give byte-identical files.
pub fn build_base_model(
    cfg: &TinyModelConfig,
    source: CorpusSource<'_>,
    out_dir: &Path,
    seed: u64,
) -> Result<BaseModel> {
    cfg.validate()?;
    let corpus = match source {
        CorpusSource::WorldDir(d) => {
            let world = mde_world::World::load(d)
                .map_err(|e| TinyError::World(format!("{}: {e}", d.display())))?;
            tokenizer_train::world_corpus(&world)?
        }
        CorpusSource::Texts(t) => {
            let mut v = tokenizer_train::prompt_template_texts();
            v.extend(t.iter().cloned());
            v
        }
    };
    let chash = corpus_hash(&corpus);
    let key = manifest_key(cfg, seed, &chash)?;
    if let Some(m) = reusable(out_dir, &key) {
        tracing::info!(dir = %out_dir.display(), "reusing tiny base model");
        return Ok(BaseModel {
            root: out_dir.to_path_buf(),
            manifest: m,
            reused: true,
        });
    }
    // Tokenizer.
    let tok = tokenizer_train::train_tokenizer(&corpus, &cfg.tokenizer())?;
    let vicuna = out_dir.join("vicuna");
    tokenizer_train::save_tokenizer_folder(&tok, &vicuna)?;
    let vocab = tok.get_vocab_size(true);
    // Weights.
    let mcfg = cfg.minigpt4_config(vocab);
    let mut params = init_parameters(&mcfg, seed, cfg.init_std, cfg.init)?;
    if let Some(std) = cfg.vision_pos_init_std {
        let name = "vision_model.embeddings.position_embedding";
        if let Some(dims) = params.get(name).map(|t| t.dims().to_vec()) {
            let t = init_tensor(name, &dims, seed, std, InitScheme::Normal)?;
            params.insert(name.to_string(), t);
        }
    }
    let num_parameters = params.values().map(|t| t.elem_count()).sum();
    let (blip2, llama, proj) = split_root_tensors(params);
    let write = |rel: &str, bytes: &[u8]| -> Result<()> {
        let p = out_dir.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| TinyError::Io {
                path: d.into(),
                source: e,
            })?;
        }
        mde_core::io::atomic_write(&p, bytes)?;
        Ok(())
    };
    let pretty = |v: &serde_json::Value| -> Result<Vec<u8>> {
        let mut s = serde_json::to_vec_pretty(v).map_err(|e| TinyError::Serialize {
            what: "a model file".into(),
            source: e,
        })?;
        s.push(b'\n');
        Ok(s)
    };
    write("blip2/config.json", &pretty(&blip2_config_json(&mcfg))?)?;
    write("blip2/model.safetensors", &safetensors_bytes(&blip2)?)?;
    write(
        "vicuna/config.json",
        &pretty(&llama_config_json(&mcfg.llama))?,
    )?;
    write("vicuna/model.safetensors", &safetensors_bytes(&llama)?)?;
    write("minigpt4/projector.safetensors", &safetensors_bytes(&proj)?)?;
    let mut files = BTreeMap::new();
    for rel in [
        "blip2/config.json",
        "blip2/model.safetensors",
        "vicuna/config.json",
        "vicuna/model.safetensors",
        "vicuna/tokenizer.json",
        "vicuna/tokenizer_config.json",
        "vicuna/special_tokens_map.json",
        "minigpt4/projector.safetensors",
    ] {
        let p = out_dir.join(rel);
        let bytes = std::fs::read(&p).map_err(|e| TinyError::Io { path: p, source: e })?;
        files.insert(rel.to_string(), sha256_hex(&bytes));
    }
    let manifest = BaseManifest {
        format_version: FORMAT_VERSION,
        key,
        config: cfg.clone(),
        seed,
        corpus_sha256: chash,
        corpus_texts: corpus.len(),
        vocab_size: vocab,
        num_parameters,
        files,
    };
    mde_core::io::write_json(out_dir.join("manifest.json"), &manifest)?;
    Ok(BaseModel {
        root: out_dir.to_path_buf(),
        manifest,
        reused: false,
    })
}

/// Loads a written base model with **every** parameter as a candle `Var` (in a [`VarMap`] keyed
/// by MiniGPT-4 root names: `vision_model.*`, `qformer.*`, `query_tokens`, `llama_proj.*`,
/// `llama_model.*`), for full fine-tuning from scratch. Values come from the written files.
pub fn load_trainable(base: &BaseModel, device: &Device) -> Result<(MiniGpt4, VarMap)> {
    Ok(MiniGpt4::load_varmap(
        &base.model_paths(),
        DType::F32,
        device,
    )?)
}

/// Parses a `[model]` TOML table: an optional `seed` (the init seed, default 0) plus the fields
/// of [`TinyModelConfig`] (unknown keys are an error naming the key).
pub fn model_section_from_toml(table: &toml::Table) -> Result<(TinyModelConfig, u64)> {
    let mut t = table.clone();
    let seed = match t.remove("seed") {
        None => 0,
        Some(toml::Value::Integer(s)) if s >= 0 => s as u64,
        Some(v) => {
            return Err(TinyError::Config(format!(
                "[model] seed must be a non-negative integer, got {v}"
            )))
        }
    };
    let cfg: TinyModelConfig = toml::Value::Table(t)
        .try_into()
        .map_err(|e| TinyError::Config(format!("[model]: {e}")))?;
    cfg.validate()?;
    Ok((cfg, seed))
}
