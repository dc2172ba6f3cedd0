//! Loading MiniGPT-4 weights from the layouts users have:
//!
//! * HF BLIP-2 folder (`config.json` + `model.safetensors` or sharded safetensors with
//!   `model.safetensors.index.json`): `vision_model.*`, `qformer.*`, `query_tokens`;
//! * LAVIS `.pth` (`{"model": state_dict}`, e.g. `blip2_pretrained_flant5xxl.pth`) with the ViT
//!   either inside (`visual_encoder.*`) or in a raw `eva_vit_g.pth` (no prefix). Extra ViT blocks
//!   beyond the configured depth, `position_ids`, `t5_proj.*`/`opt_proj.*` and text-side keys
//!   are ignored, like MiniGPT-4's `strict=False` load;
//! * MiniGPT-4 projector `.pth` (`{"model": {"llama_proj.weight", "llama_proj.bias"}}`) or a
//!   safetensors file with the same keys;
//! * Vicuna/LLaMA HF folder: `config.json` and `model.safetensors`, sharded safetensors with an
//!   index, or `pytorch_model*.bin` (single or sharded with an index).
//!
//! A location is a local path or a Hugging Face repo id (`owner/name`), looked up in the local
//! hub cache only (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`): nothing is ever downloaded, which is also what
//! `HF_HUB_OFFLINE=1` asks for.
//!
//! LAVIS files have no config. Sizes come from tensor shapes; what shapes cannot tell (number of
//! heads, ViT depth when the file has extra blocks, cross-attention frequency when only one
//! layer has it) comes from an optional [`Blip2Config`], else from these rules: ViT heads = 16
//! when the width is 1408 (EVA ViT-g, head dim 88) else width / 64; ViT depth = 39 when the file
//! has the 40 blocks of EVA ViT-g at width 1408 (MiniGPT-4 drops the last one), else the number
//! of blocks; Q-Former heads = hidden / 64 (BERT); cross-attention frequency = 2.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Blip2Config, LlamaConfig, QFormerConfig, VisionConfig};
use crate::error::{Error, Result};

/// A model location: local file, local folder, or a repo in the local HF hub cache.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Dir(PathBuf),
    /// Repo id and its snapshot files found in the cache.
    Hub(String),
}

impl Location {
    /// Local path if it exists, else a hub repo id (`owner/name`) present in the cache.
    pub fn parse(spec: &str) -> Result<Self> {
        let p = PathBuf::from(spec);
        if p.is_dir() {
            return Ok(Location::Dir(p));
        }
        if p.is_file() {
            return Ok(Location::File(p));
        }
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() == 2 && parts.iter().all(|s| !s.is_empty()) && !spec.starts_with('.') {
            return Ok(Location::Hub(spec.to_string()));
        }
        Err(Error::Invalid(format!(
            "`{spec}` is neither an existing file/folder nor a Hugging Face repo id"
        )))
    }

    /// Path of `name` inside this location (folder file, cached hub file, or the file itself).
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        match self {
            Location::File(p) => {
                (p.file_name().and_then(|f| f.to_str()) == Some(name)).then(|| p.clone())
            }
            Location::Dir(d) => {
                let p = d.join(name);
                p.is_file().then_some(p)
            }
            Location::Hub(repo) => hub_cache().model(repo.clone()).get(name),
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::File(p) | Location::Dir(p) => p.display().to_string(),
            Location::Hub(r) => format!("hub repo {r} (local cache)"),
        }
    }

    fn require(&self, name: &str) -> Result<PathBuf> {
        self.file(name).ok_or_else(|| {
            let hint = if matches!(self, Location::Hub(_))
                && std::env::var("HF_HUB_OFFLINE").is_ok()
            {
                " (HF_HUB_OFFLINE is set; only the local cache is searched)"
            } else if matches!(self, Location::Hub(_)) {
                " (only the local cache is searched; download it first, e.g. with huggingface-cli)"
            } else {
                ""
            };
            Error::Invalid(format!("{}: no file `{name}`{hint}", self.describe()))
        })
    }
}

/// The local hub cache: `HF_HUB_CACHE` if set, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => hf_hub::Cache::new(PathBuf::from(p)),
        _ => hf_hub::Cache::from_env(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.into(),
        source: e,
    })?;
    parse_json(&s, path)
}

/// Parses a JSON text read from `path`; a type error or missing field names the key serde was
/// at (`vision_config.hidden_size`), syntax errors the line and column.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // `?` stands for a position serde could not name (e.g. a key cut off by EOF).
        let at = e.path().to_string();
        let key = at.trim_end_matches('?').trim_end_matches('.').to_string();
        let source = e.into_inner();
        if key.is_empty() {
            Error::Json {
                path: path.into(),
                source,
            }
        } else {
            Error::JsonKey {
                path: path.into(),
                key,
                source,
            }
        }
    })?;
    de.end().map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    Ok(v)
}

/// Reads every tensor of a `.safetensors`, `.pth`/`.pt`/`.bin` file. For pickles the state dict
/// is taken from key `model`, then `state_dict`, then the top level; finding no tensor is an error.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let name = path.display().to_string();
    if !path.is_file() {
        return Err(Error::Io {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    if name.ends_with(".safetensors") {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{name}: cannot read safetensors: {e}")))?;
        return Ok(t);
    }
    for key in [Some("model"), Some("state_dict"), None] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(v) if !v.is_empty() => return Ok(v.into_iter().collect()),
            Ok(_) => {}
            Err(e) if key.is_none() => {
                return Err(Error::Invalid(format!(
                    "{name}: cannot read as a PyTorch zip checkpoint: {e}"
                )))
            }
            Err(_) => {}
        }
    }
    Err(Error::Invalid(format!(
        "{name}: no tensors found (looked under keys `model`, `state_dict` and the top level)"
    )))
}

fn vb_from(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    dev: &Device,
) -> Result<VarBuilder<'static>> {
    // Move to the device once; VarBuilder converts the dtype on `get`.
    let t = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(dev)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(VarBuilder::from_tensors(t, dtype, dev))
}

/// Vision + Q-Former weights in HF naming, with their configs.
pub struct Blip2Weights {
    pub vision: VisionConfig,
    pub qformer: QFormerConfig,
    /// Root VarBuilder: `vision_model.*`, `qformer.*`, `query_tokens`.
    pub vb: VarBuilder<'static>,
    /// `llama_proj.*` when the BLIP-2 file also held them (full MiniGPT-4 state dicts).
    pub llama_proj: Option<(Tensor, Tensor)>,
    /// Where each piece came from (for error messages).
    pub source: String,
}

fn safetensors_files(loc: &Location, single: &str, index: &str) -> Result<Option<Vec<PathBuf>>> {
    if let Some(p) = loc.file(single) {
        return Ok(Some(vec![p]));
    }
    if let Some(idx) = loc.file(index) {
        let v: serde_json::Value = read_json(&idx)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Config(format!("{}: no `weight_map` object", idx.display())))?;
        let files: BTreeSet<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        let paths = files
            .iter()
            .map(|f| loc.require(f))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Some(paths));
    }
    Ok(None)
}

/// HF BLIP-2 folder (or hub repo): `config.json` + safetensors.
pub fn load_blip2_hf(loc: &Location, dtype: DType, dev: &Device) -> Result<Blip2Weights> {
    let cfg_path = loc.require("config.json")?;
    let cfg: Blip2Config = read_json(&cfg_path)?;
    cfg.validate().map_err(|e| e.in_file(&cfg_path))?;
    let (vision, qformer) = cfg.into_parts();
    let files = safetensors_files(loc, "model.safetensors", "model.safetensors.index.json")?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                loc.describe()
            ))
        })?;
    // SAFETY: the files are memory-mapped read-only; they must not be modified while loaded.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, dev)? };
    if !vb.contains_tensor("query_tokens") {
        return Err(Error::MissingKey {
            file: files[0].display().to_string(),
            key: "query_tokens".into(),
        });
    }
    Ok(Blip2Weights {
        vision,
        qformer,
        vb,
        llama_proj: None,
        source: loc.describe(),
    })
}

/// Maps one LAVIS key (without `visual_encoder.` for ViT keys) to HF naming; `None` = ignored.
fn lavis_vit_key(k: &str, depth: usize) -> Option<String> {
    let v = "vision_model.";
    Some(match k {
        "cls_token" => format!("{v}embeddings.class_embedding"),
        "pos_embed" => format!("{v}embeddings.position_embedding"),
        "patch_embed.proj.weight" => format!("{v}embeddings.patch_embedding.weight"),
        "patch_embed.proj.bias" => format!("{v}embeddings.patch_embedding.bias"),
        _ => {
            let rest = k.strip_prefix("blocks.")?;
            let (n, tail) = rest.split_once('.')?;
            let n: usize = n.parse().ok()?;
            if n >= depth {
                return None;
            }
            let tail = match tail {
                t if t.starts_with("norm1.") => t.replacen("norm1.", "layer_norm1.", 1),
                t if t.starts_with("norm2.") => t.replacen("norm2.", "layer_norm2.", 1),
                "attn.qkv.weight" => "self_attn.qkv.weight".into(),
                "attn.q_bias" | "attn.v_bias" => {
                    return Some(format!("{v}encoder.layers.{n}.{tail}"))
                }
                t if t.starts_with("attn.proj.") => {
                    t.replacen("attn.proj.", "self_attn.projection.", 1)
                }
                t if t.starts_with("mlp.") => t.to_string(),
                _ => return None,
            };
            format!("{v}encoder.layers.{n}.{tail}")
        }
    })
}

fn lavis_qformer_key(k: &str) -> Option<String> {
    if k == "query_tokens" {
        return Some(k.into());
    }
    if let Some(r) = k.strip_prefix("ln_vision.") {
        return Some(format!("vision_model.post_layernorm.{r}"));
    }
    if let Some(r) = k.strip_prefix("Qformer.bert.embeddings.LayerNorm.") {
        return Some(format!("qformer.layernorm.{r}"));
    }
    let r = k.strip_prefix("Qformer.bert.encoder.layer.")?;
    let (n, tail) = r.split_once('.')?;
    let keep = [
        "attention.",
        "crossattention.",
        "intermediate_query.",
        "output_query.",
    ];
    if !keep.iter().any(|p| tail.starts_with(p)) {
        return None; // text-side FFN etc.
    }
    let tail = tail
        .replacen("attention.self.", "attention.attention.", 1)
        .replacen("crossattention.self.", "crossattention.attention.", 1);
    Some(format!("qformer.encoder.layer.{n}.{tail}"))
}

fn dims_of(t: &HashMap<String, Tensor>, key: &str, file: &str) -> Result<Vec<usize>> {
    t.get(key)
        .map(|x| x.dims().to_vec())
        .ok_or_else(|| Error::MissingKey {
            file: file.into(),
            key: key.into(),
        })
}

/// [`dims_of`] for a tensor that must have `rank` dims, none of them 0.
fn dims_n(t: &HashMap<String, Tensor>, key: &str, file: &str, rank: usize) -> Result<Vec<usize>> {
    let d = dims_of(t, key, file)?;
    if d.len() != rank || d.contains(&0) {
        return Err(Error::Mismatch(format!(
            "{file}: `{key}` has shape {d:?}, expected {rank} non-zero dims"
        )));
    }
    Ok(d)
}

fn count_layers(keys: impl Iterator<Item = String>, prefix: &str) -> usize {
    keys.filter_map(|k| {
        k.strip_prefix(prefix)
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok())
    })
    .map(|n| n + 1)
    .max()
    .unwrap_or(0)
}

/// LAVIS / MiniGPT-4 layout: `blip2` is a `.pth` with `{"model": ...}` (query_tokens, ln_vision,
/// Qformer.*, optionally visual_encoder.* and llama_proj.*); `eva_vit` the raw ViT state dict
/// when the BLIP-2 file has no `visual_encoder.*`. `hint` supplies what shapes cannot tell
/// (heads, depth, cross-attention frequency); see the module docs for the defaults.
pub fn load_blip2_lavis(
    blip2: &Path,
    eva_vit: Option<&Path>,
    hint: Option<&Blip2Config>,
    dtype: DType,
    dev: &Device,
) -> Result<Blip2Weights> {
    let bname = blip2.display().to_string();
    let raw = read_tensors(blip2)?;
    // ViT tensors without prefix, and where they came from.
    let (vit, vit_file): (HashMap<String, Tensor>, String) = match eva_vit {
        Some(p) => {
            let t = read_tensors(p)?;
            let t = t
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.strip_prefix("visual_encoder.")
                            .map(String::from)
                            .unwrap_or(k),
                        v,
                    )
                })
                .collect();
            (t, p.display().to_string())
        }
        None => (
            raw.iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("visual_encoder.")
                        .map(|r| (r.to_string(), v.clone()))
                })
                .collect(),
            bname.clone(),
        ),
    };
    if vit.is_empty() {
        return Err(Error::Invalid(format!(
            "{bname} has no `visual_encoder.*` tensors: pass the EVA ViT (eva_vit_g.pth) separately"
        )));
    }
    let hv = hint.map(|h| &h.vision_config);
    let hq = hint.map(|h| &h.qformer_config);
    // --- vision config from shapes
    let cls = dims_of(&vit, "cls_token", &vit_file)?;
    let width = *cls.last().unwrap_or(&0);
    let pw = dims_n(&vit, "patch_embed.proj.weight", &vit_file, 4)?;
    let patch = pw[2];
    let pos = dims_n(&vit, "pos_embed", &vit_file, 3)?;
    let n_patches = pos[1] - 1;
    let grid = (n_patches as f64).sqrt().round() as usize;
    if grid * grid != n_patches {
        return Err(Error::Mismatch(format!(
            "{vit_file}: pos_embed has {} positions, not a square grid + CLS",
            pos[1]
        )));
    }
    let n_blocks = count_layers(vit.keys().cloned(), "blocks.");
    let depth = match hv {
        Some(h) => h.num_hidden_layers.min(n_blocks),
        None if width == 1408 && n_blocks == 40 => 39,
        None => n_blocks,
    };
    let mlp = dims_n(&vit, "blocks.0.mlp.fc1.weight", &vit_file, 2)?[0];
    let heads = match hv {
        Some(h) => h.num_attention_heads,
        None if width == 1408 => 16,
        None => (width / 64).max(1),
    };
    let vision = VisionConfig {
        hidden_size: width,
        num_hidden_layers: depth,
        num_attention_heads: heads,
        intermediate_size: mlp,
        patch_size: patch,
        image_size: grid * patch,
        layer_norm_eps: hv.map(|h| h.layer_norm_eps).unwrap_or(1e-6),
        ln_vision_eps: hv.map(|h| h.ln_vision_eps).unwrap_or(1e-5),
    };
    // --- rename
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in &vit {
        if let Some(nk) = lavis_vit_key(k, depth) {
            out.insert(nk, v.clone());
        }
    }
    for i in 0..depth {
        let p = format!("vision_model.encoder.layers.{i}.");
        let qb = out.remove(&format!("{p}attn.q_bias"));
        let vbias = out.remove(&format!("{p}attn.v_bias"));
        match (qb, vbias) {
            (Some(q), Some(v)) => {
                let k = q.zeros_like()?;
                out.insert(
                    format!("{p}self_attn.qkv.bias"),
                    Tensor::cat(&[&q, &k, &v], 0)?,
                );
            }
            _ => {
                return Err(Error::MissingKey {
                    file: vit_file.clone(),
                    key: format!("blocks.{i}.attn.q_bias / v_bias"),
                })
            }
        }
    }
    let mut llama_proj_w = None;
    let mut llama_proj_b = None;
    for (k, v) in &raw {
        if let Some(nk) = lavis_qformer_key(k) {
            out.insert(nk, v.clone());
        }
        if k == "llama_proj.weight" {
            llama_proj_w = Some(v.clone());
        }
        if k == "llama_proj.bias" {
            llama_proj_b = Some(v.clone());
        }
    }
    // --- Q-Former config from shapes
    let qt = dims_n(&out, "query_tokens", &bname, 3)?;
    let (nq, qh) = (qt[1], qt[2]);
    let nl = count_layers(out.keys().cloned(), "qformer.encoder.layer.");
    let cross: Vec<usize> = (0..nl)
        .filter(|i| {
            out.contains_key(&format!(
                "qformer.encoder.layer.{i}.crossattention.attention.key.weight"
            ))
        })
        .collect();
    let freq = match (hq, cross.as_slice()) {
        (Some(h), _) => h.cross_attention_frequency,
        (None, [_, b, ..]) => *b - cross[0],
        _ => 2,
    };
    let enc = match cross.first() {
        Some(i) => dims_n(
            &out,
            &format!("qformer.encoder.layer.{i}.crossattention.attention.key.weight"),
            &bname,
            2,
        )?[1],
        None => width,
    };
    if enc != width {
        return Err(Error::Mismatch(format!(
            "Q-Former cross-attention expects image width {enc} ({bname}) but the ViT width is {width} ({vit_file})"
        )));
    }
    let inter = dims_n(
        &out,
        "qformer.encoder.layer.0.intermediate_query.dense.weight",
        &bname,
        2,
    )?[0];
    let qformer = QFormerConfig {
        hidden_size: qh,
        num_hidden_layers: nl,
        num_attention_heads: hq
            .map(|h| h.num_attention_heads)
            .unwrap_or((qh / 64).max(1)),
        intermediate_size: inter,
        cross_attention_frequency: freq,
        encoder_hidden_size: enc,
        layer_norm_eps: hq.map(|h| h.layer_norm_eps).unwrap_or(1e-12),
        num_query_tokens: nq,
    };
    // Sizes read from shapes (or the hint) must make a buildable model too.
    vision
        .validate()
        .map_err(|e| e.in_section("vision.").in_file(&vit_file))?;
    qformer
        .validate()
        .map_err(|e| e.in_section("qformer.").in_file(&bname))?;
    let llama_proj = match (llama_proj_w, llama_proj_b) {
        (Some(w), Some(b)) => Some((
            w.to_dtype(dtype)?.to_device(dev)?,
            b.to_dtype(dtype)?.to_device(dev)?,
        )),
        _ => None,
    };
    Ok(Blip2Weights {
        vision,
        qformer,
        vb: vb_from(out, dtype, dev)?,
        llama_proj,
        source: match eva_vit {
            Some(p) => format!("{bname} + {}", p.display()),
            None => bname,
        },
    })
}

/// Loads BLIP-2 vision + Q-Former from any supported layout. `spec`: HF folder/repo, or a LAVIS
/// `.pth`; `eva_vit`: separate raw ViT `.pth`; `config`: BLIP-2 `config.json` giving heads for
/// LAVIS files.
pub fn load_blip2(
    spec: &str,
    eva_vit: Option<&str>,
    config: Option<&str>,
    dtype: DType,
    dev: &Device,
) -> Result<Blip2Weights> {
    let loc = Location::parse(spec)?;
    let hint: Option<Blip2Config> = match config {
        Some(c) => {
            let h: Blip2Config = read_json(Path::new(c))?;
            h.validate().map_err(|e| e.in_file(c))?;
            Some(h)
        }
        None => None,
    };
    match &loc {
        Location::File(p) if p.extension().and_then(|e| e.to_str()) == Some("safetensors") => {
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            load_blip2_hf(&Location::Dir(dir), dtype, dev)
        }
        Location::File(p) => {
            let eva = eva_vit.map(PathBuf::from);
            load_blip2_lavis(p, eva.as_deref(), hint.as_ref(), dtype, dev)
        }
        _ => load_blip2_hf(&loc, dtype, dev),
    }
}

/// Reads `llama_proj.{weight,bias}` from a MiniGPT-4 checkpoint (`.pth` with `{"model": ...}`,
/// or safetensors). Returns `(weight [out, in], bias [out])`.
pub fn load_projector(path: &Path, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let t = read_tensors(path)?;
    let name = path.display().to_string();
    let get = |k: &str| -> Result<Tensor> {
        t.get(k).cloned().ok_or_else(|| Error::MissingKey {
            file: name.clone(),
            key: k.into(),
        })
    };
    Ok((
        get("llama_proj.weight")?.to_dtype(dtype)?.to_device(dev)?,
        get("llama_proj.bias")?.to_dtype(dtype)?.to_device(dev)?,
    ))
}

/// Vicuna/LLaMA folder or hub repo: config and a root VarBuilder (`model.*`, `lm_head.*`).
pub fn load_llama(
    spec: &str,
    dtype: DType,
    dev: &Device,
) -> Result<(LlamaConfig, VarBuilder<'static>, String)> {
    let loc = Location::parse(spec)?;
    let loc = match loc {
        Location::File(p) => Location::Dir(p.parent().map(Path::to_path_buf).unwrap_or_default()),
        l => l,
    };
    let cfg_path = loc.require("config.json")?;
    let cfg: LlamaConfig = read_json(&cfg_path)?;
    cfg.validate().map_err(|e| e.in_file(&cfg_path))?;
    let desc = loc.describe();
    let vb = if let Some(files) =
        safetensors_files(&loc, "model.safetensors", "model.safetensors.index.json")?
    {
        // SAFETY: read-only memory maps of files that are not modified while loaded.
        unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, dev)? }
    } else {
        let files = if let Some(p) = loc.file("pytorch_model.bin") {
            vec![p]
        } else if let Some(idx) = loc.file("pytorch_model.bin.index.json") {
            let v: serde_json::Value = read_json(&idx)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Config(format!("{}: no `weight_map` object", idx.display()))
                })?;
            let files: BTreeSet<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            files
                .iter()
                .map(|f| loc.require(f))
                .collect::<Result<Vec<_>>>()?
        } else {
            return Err(Error::Invalid(format!(
                "{desc}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"
            )));
        };
        let mut all = HashMap::new();
        for f in files {
            for (k, v) in candle_core::pickle::read_all_with_key(&f, None)
                .map_err(|e| Error::Invalid(format!("{}: {e}", f.display())))?
            {
                all.insert(k, v);
            }
        }
        if all.is_empty() {
            return Err(Error::Invalid(format!(
                "{desc}: the .bin shards hold no tensors"
            )));
        }
        vb_from(all, dtype, dev)?
    };
    if !vb.contains_tensor("model.embed_tokens.weight") {
        return Err(Error::MissingKey {
            file: desc,
            key: "model.embed_tokens.weight".into(),
        });
    }
    Ok((cfg, vb, cfg_path.display().to_string()))
}

/// A LoRA adapter read from disk: tensors keyed by (PEFT or MiniGPT-4) names plus `lora_alpha`.
pub struct LoraFile {
    pub tensors: HashMap<String, Tensor>,
    /// From `adapter_config.json` when present.
    pub alpha: Option<f64>,
    pub r: Option<usize>,
    /// `llama_proj.{weight,bias}` when the file carries them (MiniGPT-4 checkpoints).
    pub llama_proj: Option<(Tensor, Tensor)>,
}

/// The keys of a PEFT `adapter_config.json` this crate reads (the others are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub r: Option<usize>,
    #[serde(default)]
    pub lora_alpha: Option<f64>,
}

impl AdapterConfig {
    /// `r` at least 1 and `lora_alpha` finite when given.
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = self.r {
            crate::config::check::at_least("r", r, 1)?;
        }
        if let Some(a) = self.lora_alpha {
            crate::config::check::finite("lora_alpha", a)?;
        }
        Ok(())
    }
}

/// Reads and validates an `adapter_config.json`; errors name the file and the key.
pub fn read_adapter_config(path: &Path) -> Result<AdapterConfig> {
    let c: AdapterConfig = read_json(path)?;
    c.validate().map_err(|e| e.in_file(path))?;
    Ok(c)
}

/// Reads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors` or
/// `adapter_model.bin`), or one file (`.safetensors`, or a MiniGPT-4 `.pth` with
/// `llama_model.base_model...lora_{A,B}.default.weight` keys and maybe `llama_proj.*`).
pub fn load_lora_file(path: &Path) -> Result<LoraFile> {
    let (file, cfg) = if path.is_dir() {
        let cfg = path.join("adapter_config.json");
        let f = ["adapter_model.safetensors", "adapter_model.bin"]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no adapter_model.safetensors or adapter_model.bin",
                    path.display()
                ))
            })?;
        (f, cfg.is_file().then_some(cfg))
    } else {
        let sib = path.with_file_name("adapter_config.json");
        (path.to_path_buf(), sib.is_file().then_some(sib))
    };
    // The config is checked before the (possibly large) weights are read.
    let (alpha, r) = match cfg {
        Some(c) => {
            let a = read_adapter_config(&c)?;
            (a.lora_alpha, a.r)
        }
        None => (None, None),
    };
    let all = read_tensors(&file)?;
    let llama_proj = match (all.get("llama_proj.weight"), all.get("llama_proj.bias")) {
        (Some(w), Some(b)) => Some((w.clone(), b.clone())),
        _ => None,
    };
    let tensors: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| k.contains(".lora_"))
        .collect();
    if tensors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no LoRA tensors (`*.lora_A/B*`)",
            file.display()
        )));
    }
    Ok(LoraFile {
        tensors,
        alpha,
        r,
        llama_proj,
    })
}
