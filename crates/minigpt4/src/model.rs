//! [`MiniGpt4`]: vision tower + Q-Former + `llama_proj` + LLaMA, with image encoding, prompt
//! embedding, full-sequence logits, training-path forward and candidate scoring.

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var, D};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::config::{LlamaConfig, MiniGpt4Config};
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::llama::{Llama, LoraConfig};
use crate::qformer::QFormer;
use crate::vision::VisionModel;
use crate::weights;

/// Where the pieces of a MiniGPT-4 model live (local paths or HF repo ids).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelPaths {
    /// HF BLIP-2 folder / repo id, or a LAVIS `.pth` (`blip2_pretrained*.pth`).
    pub blip2: String,
    /// Raw `eva_vit_g.pth` when the LAVIS file has no `visual_encoder.*`.
    #[serde(default)]
    pub eva_vit: Option<String>,
    /// BLIP-2 `config.json` giving head counts for LAVIS files (optional).
    #[serde(default)]
    pub blip2_config: Option<String>,
    /// Vicuna/LLaMA HF folder or repo id.
    pub vicuna: String,
    /// MiniGPT-4 checkpoint with `llama_proj.*` (optional if the BLIP-2 file has it).
    #[serde(default)]
    pub projector: Option<String>,
}

/// The whole model. Fields are public so trainers can reach the parts they train.
#[derive(Debug)]
pub struct MiniGpt4 {
    pub vision: VisionModel,
    pub qformer: QFormer,
    /// Linear Q-Former hidden -> LLM hidden, with bias.
    pub llama_proj: Linear,
    pub llama: Llama,
}

impl MiniGpt4 {
    /// Builds from one root VarBuilder in HF/MiniGPT-4 naming: `vision_model.*`, `qformer.*`,
    /// `query_tokens`, `llama_proj.*`, `llama_model.{model.*, lm_head.*}`.
    pub fn new(cfg: &MiniGpt4Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vision = VisionModel::new(&cfg.vision, vb.pp("vision_model"))?;
        let qformer = QFormer::new(&cfg.qformer, vb.clone())?;
        let llama_proj = Linear::new(
            cfg.qformer.hidden_size,
            cfg.llama.hidden_size,
            true,
            vb.pp("llama_proj"),
        )?;
        let llama = Llama::new(&cfg.llama, vb.pp("llama_model"))?;
        Self::from_parts(
            vision,
            qformer,
            llama_proj,
            llama,
            "llama_proj",
            "llama config",
        )
    }

    /// Assembles the parts after checking that they fit together.
    pub fn from_parts(
        vision: VisionModel,
        qformer: QFormer,
        llama_proj: Linear,
        llama: Llama,
        proj_src: &str,
        llama_src: &str,
    ) -> Result<Self> {
        let (i, o) = (llama_proj.in_features(), llama_proj.out_features());
        if o != llama.cfg.hidden_size {
            return Err(Error::Mismatch(format!(
                "llama_proj is {i}->{o} ({proj_src}) but the LLM hidden size is {} ({llama_src})",
                llama.cfg.hidden_size
            )));
        }
        if i != qformer.cfg.hidden_size {
            return Err(Error::Mismatch(format!(
                "llama_proj is {i}->{o} ({proj_src}) but the Q-Former hidden size is {}",
                qformer.cfg.hidden_size
            )));
        }
        if qformer.cfg.encoder_hidden_size != vision.cfg.hidden_size {
            return Err(Error::Mismatch(format!(
                "the Q-Former attends to width {} but the ViT width is {}",
                qformer.cfg.encoder_hidden_size, vision.cfg.hidden_size
            )));
        }
        Ok(Self {
            vision,
            qformer,
            llama_proj,
            llama,
        })
    }

    /// Loads every piece from [`ModelPaths`] in `dtype` on `device`.
    pub fn load(paths: &ModelPaths, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_impl(paths, dtype, device, None)
    }

    /// [`MiniGpt4::load`] (same layouts, same checks) with every parameter held as a candle
    /// [`Var`] in the returned [`VarMap`], keyed by MiniGPT-4 root names: `vision_model.*`,
    /// `qformer.*`, `query_tokens`, `llama_proj.{weight,bias}`, `llama_model.{model.*,
    /// lm_head.weight}`. These are the names full training optimises and checkpoints.
    ///
    /// LAVIS vision files with separate `q_bias`/`v_bias` keep them as two Vars
    /// (`...self_attn.q_bias`, `...self_attn.v_bias`; the key bias stays zero, as in EVA-CLIP);
    /// a tied `lm_head` shares the `llama_model.model.embed_tokens.weight` Var.
    pub fn load_varmap(
        paths: &ModelPaths,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let map = VarMap::new();
        let model = Self::load_impl(paths, dtype, device, Some(&map))?;
        Ok((model, map))
    }

    fn load_impl(
        paths: &ModelPaths,
        dtype: DType,
        device: &Device,
        map: Option<&VarMap>,
    ) -> Result<Self> {
        // With a VarMap, every tensor the module constructors read becomes a Var there.
        let wrap = |vb: VarBuilder<'static>, prefix: &str| -> VarBuilder<'static> {
            match map {
                None => vb,
                Some(m) => {
                    let (dt, dev) = (vb.dtype(), vb.device().clone());
                    let backend = VarMapBackend {
                        src: vb,
                        prefix: prefix.to_string(),
                        map: m.clone(),
                    };
                    VarBuilder::from_backend(Box::new(backend), dt, dev)
                }
            }
        };
        let b = weights::load_blip2(
            &paths.blip2,
            paths.eva_vit.as_deref(),
            paths.blip2_config.as_deref(),
            dtype,
            device,
        )?;
        let bvb = wrap(b.vb.clone(), "");
        let vision = VisionModel::new(&b.vision, bvb.pp("vision_model"))
            .map_err(|e| Error::Invalid(format!("{}: vision tower: {e}", b.source)))?;
        let qformer = QFormer::new(&b.qformer, bvb.clone())
            .map_err(|e| Error::Invalid(format!("{}: Q-Former: {e}", b.source)))?;
        let (pw, pb, psrc) = match (&paths.projector, b.llama_proj) {
            (Some(p), _) => {
                let (w, bb) = weights::load_projector(Path::new(p), dtype, device)?;
                (w, bb, p.clone())
            }
            (None, Some((w, bb))) => (w, bb, b.source.clone()),
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "no llama_proj: {} has none, pass the MiniGPT-4 checkpoint as the projector",
                    b.source
                )))
            }
        };
        let llama_proj = match map {
            None => Linear::from_weights(pw, Some(pb)),
            Some(m) => {
                let (wv, bv) = (Var::from_tensor(&pw)?, Var::from_tensor(&pb)?);
                let mut data = m
                    .data()
                    .lock()
                    .map_err(|_| Error::Invalid("VarMap lock poisoned".into()))?;
                data.insert("llama_proj.weight".into(), wv.clone());
                data.insert("llama_proj.bias".into(), bv.clone());
                let mut l =
                    Linear::from_weights(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
                // The projector's own Vars are the map's, so `make_projector_trainable` and
                // `trainable_vars` hand out the very Vars the map holds.
                l.weight_var = Some(wv);
                l.bias_var = Some(bv);
                l
            }
        };
        let (lcfg, lvb, lsrc) = weights::load_llama(&paths.vicuna, dtype, device)?;
        let llama = Llama::new(&lcfg, wrap(lvb, "llama_model."))
            .map_err(|e| Error::Invalid(format!("{lsrc}: LLaMA: {e}")))?;
        Self::from_parts(vision, qformer, llama_proj, llama, &psrc, &lsrc)
    }

    /// Sizes of all parts.
    pub fn config(&self) -> MiniGpt4Config {
        MiniGpt4Config {
            vision: self.vision.cfg.clone(),
            qformer: self.qformer.cfg.clone(),
            llama: self.llama.cfg.clone(),
        }
    }
    pub fn llama_config(&self) -> &LlamaConfig {
        &self.llama.cfg
    }
    pub fn device(&self) -> &Device {
        self.llama.device()
    }
    pub fn dtype(&self) -> DType {
        self.llama.dtype()
    }

    /// `[B, 3, S, S]` -> Q-Former output `[B, num_query, qformer_hidden]` (inference path).
    pub fn qformer_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.qformer_features_t(pixel_values, false)
    }

    /// [`MiniGpt4::qformer_features`]; `train = true` runs only differentiable ops through the
    /// vision tower and the Q-Former, so gradients reach their weights (full training).
    pub fn qformer_features_t(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        crate::runtime::inference(train, pixel_values.device(), || {
            let v = self.vision.forward_t(pixel_values, train)?;
            self.qformer.forward_t(&v, train)
        })
    }

    /// Q-Former output -> LLM image embeddings (`llama_proj`). Differentiable when trainable.
    pub fn project(&self, qformer_out: &Tensor, train: bool) -> Result<Tensor> {
        let x = qformer_out.to_dtype(self.llama_proj.weight.dtype())?;
        self.llama_proj.forward_t(&x, train)
    }

    /// `[B, 3, S, S]` -> image embeddings `[B, num_query, llm_hidden]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        crate::runtime::on_compute_pool(pixel_values.device(), || {
            self.project(&self.qformer_features(pixel_values)?, false)
        })
    }

    /// `[text_0; image_0; text_1; image_1; ...; text_n]` embeddings `[T, hidden]` from token
    /// segments (already tokenised, BOS included where wanted) and per-image embeddings
    /// `[num_query, hidden]`. Needs `segments.len() == images.len() + 1`.
    pub fn embed_segments(&self, segments: &[Vec<u32>], images: &[Tensor]) -> Result<Tensor> {
        if segments.len() != images.len() + 1 {
            return Err(Error::Invalid(format!(
                "{} text segments need {} images, got {}",
                segments.len(),
                segments.len().saturating_sub(1),
                images.len()
            )));
        }
        let mut parts = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            if !seg.is_empty() {
                parts.push(self.llama.embed_ids(seg)?);
            }
            if let Some(img) = images.get(i) {
                let img = if img.rank() == 3 {
                    img.squeeze(0)?
                } else {
                    img.clone()
                };
                parts.push(img.to_dtype(self.dtype())?);
            }
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Training layout: `token_ids [B, T]` (i64) where `-1` marks image rows (consumed in order
    /// from `img_embeds[b]`, `[B, num_query, hidden]`) and any other value is a token id.
    /// Differentiable w.r.t. `img_embeds`.
    pub fn embed_layout(&self, token_ids: &Tensor, img_embeds: &Tensor) -> Result<Tensor> {
        let ids = token_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let mut rows = Vec::with_capacity(ids.len());
        for (b, row) in ids.iter().enumerate() {
            let img = img_embeds.get(b)?;
            let nimg = img.dim(0)?;
            let safe: Vec<u32> = row.iter().map(|&t| t.max(0) as u32).collect();
            let text = self.llama.embed_ids(&safe)?;
            let mut parts = Vec::new();
            let (mut i, mut k) = (0usize, 0usize);
            while i < row.len() {
                let is_img = row[i] < 0;
                let mut j = i;
                while j < row.len() && (row[j] < 0) == is_img {
                    j += 1;
                }
                if is_img {
                    if k + (j - i) > nimg {
                        return Err(Error::Invalid(format!(
                            "row {b} has more image rows than the {nimg} image embeddings"
                        )));
                    }
                    parts.push(img.narrow(0, k, j - i)?.to_dtype(self.dtype())?);
                    k += j - i;
                } else {
                    parts.push(text.narrow(0, i, j - i)?);
                }
                i = j;
            }
            rows.push(Tensor::cat(&parts, 0)?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Logits `[B, T, vocab]` (f32) for input embeddings `[B, T, hidden]`. Position ids default
    /// to `cumsum(mask) - 1` clamped at 0 (or 0..T without mask). `train` selects the
    /// differentiable path.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let pos = match (position_ids, attention_mask) {
            (Some(p), _) => p.clone(),
            (None, Some(m)) => crate::generation::positions_from_mask(m)?,
            (None, None) => Tensor::arange(0u32, t as u32, embeds.device())?
                .unsqueeze(0)?
                .repeat((b, 1))?,
        };
        self.llama
            .forward(embeds, &pos, attention_mask, None, train)
    }

    /// Training loss of a layout embedding: [`crate::llama::Llama::train_loss`] with the
    /// positions `0..T` of every row (training batches are right-padded).
    pub fn train_loss(
        &self,
        embeds: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        self.llama
            .train_loss(embeds, position_ids, Some(attention_mask), labels)
    }

    /// [`Linear::set_inference_layout`] on every linear layer of the model: frozen f32 CPU weights
    /// stored transposed, which makes inference with few rows per matmul (prefill, decoding,
    /// the Q-Former's queries) up to 3x faster per layer. `mde_models::eval_adapter::MiniGpt4Eval` and `mde ask` turn it
    /// on; training turns it off where it matters (see `set_inference_layout`).
    ///
    pub fn set_inference_layout(&mut self, on: bool) -> Result<()> {
        let mut all = self.vision.linears_mut();
        all.extend(self.qformer.linears_mut());
        all.push(&mut self.llama_proj);
        all.extend(self.llama.linears_mut());
        all.into_iter().try_for_each(|l| l.set_inference_layout(on))
    }

    /// Makes `llama_proj` trainable and returns its Vars (`llama_proj.weight`, `llama_proj.bias`).
    pub fn make_projector_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let (w, b) = self.llama_proj.make_trainable()?;
        let mut v = vec![("llama_proj.weight".to_string(), w)];
        if let Some(b) = b {
            v.push(("llama_proj.bias".to_string(), b));
        }
        Ok(v)
    }

    /// Adds fresh LoRA adapters to the LLaMA (see [`Llama::enable_lora`]).
    pub fn enable_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        self.llama.enable_lora(cfg)
    }

    /// Attaches a LoRA adapter from disk (see [`weights::load_lora_file`]). `alpha` overrides
    /// the file's `lora_alpha` (needed for files without `adapter_config.json`). When the file
    /// carries `llama_proj.*` (MiniGPT-4 checkpoints) the projector is replaced too.
    /// Returns the number of adapted modules.
    pub fn load_lora_adapter(&mut self, path: &Path, alpha: Option<f64>) -> Result<usize> {
        let f = weights::load_lora_file(path)?;
        let alpha = alpha.or(f.alpha).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no adapter_config.json with lora_alpha; pass alpha explicitly",
                path.display()
            ))
        })?;
        if let Some((w, b)) = f.llama_proj {
            let dt = self.llama_proj.weight.dtype();
            let dev = self.device().clone();
            let (w, b) = (
                w.to_dtype(dt)?.to_device(&dev)?,
                b.to_dtype(dt)?.to_device(&dev)?,
            );
            if w.dims() != self.llama_proj.weight.dims() {
                return Err(Error::Mismatch(format!(
                    "{}: llama_proj is {:?} but the model's is {:?}",
                    path.display(),
                    w.dims(),
                    self.llama_proj.weight.dims()
                )));
            }
            self.llama_proj = Linear::from_weights(w, Some(b));
        }
        let dev = self.device().clone();
        let tensors = f
            .tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&dev)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let n = self.llama.load_lora(&tensors, alpha, 0.0, 0)?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "{}: no LoRA pair matches a LLaMA layer",
                path.display()
            )));
        }
        Ok(n)
    }

    /// Every trainable Var: `llama_proj.*` (if made trainable) then LoRA A/B by PEFT key.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        if let Some(w) = &self.llama_proj.weight_var {
            v.push(("llama_proj.weight".to_string(), w.clone()));
        }
        if let Some(b) = &self.llama_proj.bias_var {
            v.push(("llama_proj.bias".to_string(), b.clone()));
        }
        v.extend(self.llama.lora_vars());
        v
    }

    /// Mean token cross-entropy of each candidate continuation after `prefix` (`[T, hidden]`
    /// embeddings), computed in one right-padded batch (causal attention makes the padding
    /// irrelevant). Lower is better; used for A-OKVQA ranking.
    pub fn score_candidates(&self, prefix: &Tensor, candidates: &[Vec<u32>]) -> Result<Vec<f32>> {
        Ok(self
            .candidate_cross_entropy(prefix, candidates)?
            .into_iter()
            .zip(candidates)
            .map(|(ce, c)| ce / c.len() as f32)
            .collect())
    }

    /// Total token cross-entropy (negative log-likelihood, summed in token order) of each
    /// candidate continuation after `prefix`; [`Self::score_candidates`] divides it by the length.
    pub fn candidate_cross_entropy(
        &self,
        prefix: &Tensor,
        candidates: &[Vec<u32>],
    ) -> Result<Vec<f32>> {
        if candidates.is_empty() {
            return Ok(vec![]);
        }
        if candidates.iter().any(|c| c.is_empty()) {
            return Err(Error::Invalid("empty candidate token list".into()));
        }
        let (tp, h) = prefix.dims2()?;
        let maxc = candidates.iter().map(|c| c.len()).max().unwrap_or(0);
        let total = tp + maxc;
        let dev = self.device().clone();
        let mut rows = Vec::new();
        let mut mask = Vec::new();
        for c in candidates {
            let mut parts = vec![prefix.to_dtype(self.dtype())?, self.llama.embed_ids(c)?];
            let pad = maxc - c.len();
            if pad > 0 {
                parts.push(Tensor::zeros((pad, h), self.dtype(), &dev)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            mask.extend((0..total).map(|i| u32::from(i < tp + c.len())));
        }
        let x = Tensor::stack(&rows, 0)?;
        let n = candidates.len();
        let mask = Tensor::from_vec(mask, (n, total), &dev)?;
        let pos = Tensor::arange(0u32, total as u32, &dev)?
            .unsqueeze(0)?
            .repeat((n, 1))?;
        let logits = self.llama.forward(&x, &pos, Some(&mask), None, false)?;
        // logits at tp-1+k predict candidate token k.
        let lsm = candle_nn::ops::log_softmax(&logits.narrow(1, tp - 1, maxc)?, D::Minus1)?;
        let lsm = lsm.to_vec3::<f32>()?;
        Ok(candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s: f32 = c
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| lsm[i][k][t as usize])
                    .sum();
                -s
            })
            .collect())
    }
}

/// A VarBuilder backend that reads each tensor from `src` and keeps it as a [`Var`] in `map`
/// under `prefix + name` (a name read twice gets the same Var).
struct VarMapBackend {
    src: VarBuilder<'static>,
    prefix: String,
    map: VarMap,
}

impl SimpleBackend for VarMapBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let mut data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(v) = data.get(&key) {
            if v.as_tensor().shape() != &s {
                candle_core::bail!(
                    "{key}: already loaded with shape {:?}, now wanted as {:?}",
                    v.as_tensor().dims(),
                    s.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let t = self
            .src
            .get_with_hints_dtype(s, name, h, dtype)?
            .to_device(dev)?;
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        data.insert(key, v);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let mut data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(v) = data.get(&key) {
            return Ok(v.as_tensor().clone());
        }
        let t = self.src.get_unchecked_dtype(name, dtype)?.to_device(dev)?;
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        data.insert(key, v);
        Ok(out)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let key = format!("{}{name}", self.prefix);
        let known = self.map.data().lock().map(|d| d.contains_key(&key));
        known.unwrap_or(false) || self.src.contains_tensor(name)
    }
}

/// The current values of every Var of `vm`, detached from the graph (name -> tensor), e.g. to
/// write a trained model or rebuild it without Vars (`VarBuilder::from_tensors`), as a model
/// loaded from files is.
pub fn detached_tensors(vm: &VarMap) -> Result<std::collections::BTreeMap<String, Tensor>> {
    Ok(vm
        .data()
        .lock()
        .map_err(|_| Error::Invalid("VarMap lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}
