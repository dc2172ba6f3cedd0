//! LLaMA / Vicuna decoder (HF `LlamaForCausalLM` naming) with two numerically equivalent paths:
//!
//! * inference (`train = false`): fused candle kernels (`ops::rms_norm`, `ops::softmax_last_dim`,
//!   `rotary_emb::rope`), which have no backward;
//! * training (`train = true`): only differentiable ops (`rms_norm_slow`-style, `ops::softmax`,
//!   rotate-half RoPE written with `cat`/`mul`), so gradients flow back to `llama_proj` and LoRA.
//!
//! Supports MHA and GQA (`num_key_value_heads`), RoPE base from the config (HF rotate-half
//! convention), explicit per-row position ids, a padding attention mask (left padding) and a KV
//! cache. Logits are returned for every position, in f32.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::linear::{matmul_t, Linear, LoraAdapter};

/// The LoRA target module names understood by [`Llama::enable_lora`].
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Per-layer key/value cache: `k, v: [B, kv_heads, S, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }
    /// Number of cached positions.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }
    /// Reorders / repeats the batch rows (beam search).
    pub fn index_select(&self, idx: &Tensor) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(idx, 0)?, v.index_select(idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

/// RMSNorm computed in f32 (as HF) and cast back.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dt = x.dtype();
        if train && dt == DType::F32 {
            Ok(crate::fused::rms_norm(x, &self.weight, self.eps)?)
        } else if train {
            let xf = x.to_dtype(DType::F32)?;
            let h = xf.dim(D::Minus1)?;
            let var = (xf.sqr()?.sum_keepdim(D::Minus1)? / h as f64)?;
            let xn = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            Ok(xn.to_dtype(dt)?.broadcast_mul(&self.weight)?)
        } else if dt == DType::F32 {
            Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &self.weight,
                self.eps as f32,
            )?)
        } else {
            // Keep HF's order (normalise in f32, cast, then scale) for half dtypes.
            let xf = x.to_dtype(DType::F32)?.contiguous()?;
            let ones = Tensor::ones(xf.dim(D::Minus1)?, DType::F32, xf.device())?;
            let xn = candle_nn::ops::rms_norm(&xf, &ones, self.eps as f32)?;
            Ok(xn.to_dtype(dt)?.broadcast_mul(&self.weight)?)
        }
    }
}

/// Rotary embedding; `cos`/`sin`: `[B, T, head_dim/2]`, `x`: `[B, H, T, head_dim]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, train: bool) -> Result<Tensor> {
    if train {
        crate::fused::rope(x, cos, sin)
    } else {
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
    }
}

#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.head_dim(),
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(h, nh * hd, bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * hd, bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * hd, bias, vb.pp("v_proj"))?,
            o_proj: Linear::new(nh * hd, h, bias, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let hd = self.head_dim;
        let q = self.q_proj.forward_t(x, train)?;
        let k = self.k_proj.forward_t(x, train)?;
        let v = self.v_proj.forward_t(x, train)?;
        if train && cache.is_none() && self.num_heads == self.num_kv_heads {
            let spec = crate::fused::AttnSpec {
                heads: self.num_heads,
                scale: 1.0 / (hd as f64).sqrt(),
                scale_at: crate::fused::ScaleAt::Scores,
                mask: mask.cloned(),
                rope: Some((cos.clone(), sin.clone())),
            };
            if crate::fused::attention_ok(&[&q, &k, &v], &spec) {
                let out = crate::fused::attention(&q, &k, &v, &spec)?;
                return self.o_proj.forward_t(&out, true);
            }
        }
        self.forward_heads(q, k, v, cos, sin, mask, cache, train)
    }

    /// The unfused attention core on projected `q`, `k`, `v` (`[B, T, heads * head_dim]`).
    #[allow(clippy::too_many_arguments)]
    fn forward_heads(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let hd = self.head_dim;
        let q = q.reshape((b, t, self.num_heads, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, t, self.num_kv_heads, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, t, self.num_kv_heads, hd))?.transpose(1, 2)?;
        let q = apply_rope(&q, cos, sin, train)?;
        let k = apply_rope(&k, cos, sin, train)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (
                        Tensor::cat(&[&pk, &k], 2)?,
                        Tensor::cat(&[&pv, &v.contiguous()?], 2)?,
                    ),
                    None => (k.contiguous()?, v.contiguous()?),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let n_rep = self.num_heads / self.num_kv_heads;
        let (k, v) = if n_rep > 1 {
            let s = k.dim(2)?;
            let rep = |x: &Tensor| -> Result<Tensor> {
                Ok(x.unsqueeze(2)?
                    .broadcast_as((b, self.num_kv_heads, n_rep, s, hd))?
                    .reshape((b, self.num_heads, s, hd))?)
            };
            (rep(&k)?, rep(&v)?)
        } else {
            (k, v)
        };
        // Scores and softmax in f32 whatever the weight dtype.
        let dt = q.dtype();
        let qf = q.to_dtype(DType::F32)?.contiguous()?;
        let kf = k.to_dtype(DType::F32)?;
        let mut scores = (qf.matmul(&kf.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = if train {
            crate::fused::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let out = probs.to_dtype(dt)?.matmul(&v.contiguous()?)?;
        let out = out.transpose(1, 2)?.reshape((b, t, self.num_heads * hd))?;
        self.o_proj.forward_t(&out, train)
    }
}

#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::new(h, i, b, vb.pp("gate_proj"))?,
            up_proj: Linear::new(h, i, b, vb.pp("up_proj"))?,
            down_proj: Linear::new(i, h, b, vb.pp("down_proj"))?,
        })
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = self.gate_proj.forward_t(x, train)?.silu()?;
        let u = self.up_proj.forward_t(x, train)?;
        self.down_proj.forward_t(&(g * u)?, train)
    }
}

#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    /// The seven linear layers, in [`LORA_TARGETS`] order.
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.self_attn.q_proj,
            &self.self_attn.k_proj,
            &self.self_attn.v_proj,
            &self.self_attn.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ]
    }

    /// One training or inference forward of the layer.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let r = self.input_layernorm.forward(x, train)?;
        let a = self.self_attn.forward(&r, cos, sin, mask, slot, train)?;
        let x = (x + a)?;
        let r = self.post_attention_layernorm.forward(&x, train)?;
        Ok((&x + self.mlp.forward(&r, train)?)?)
    }

    /// The linear layer named `target` (one of [`LORA_TARGETS`]).
    pub fn linear_mut(&mut self, target: &str) -> Option<&mut Linear> {
        Some(match target {
            "q_proj" => &mut self.self_attn.q_proj,
            "k_proj" => &mut self.self_attn.k_proj,
            "v_proj" => &mut self.self_attn.v_proj,
            "o_proj" => &mut self.self_attn.o_proj,
            "gate_proj" => &mut self.mlp.gate_proj,
            "up_proj" => &mut self.mlp.up_proj,
            "down_proj" => &mut self.mlp.down_proj,
            _ => return None,
        })
    }
    pub fn linear(&self, target: &str) -> Option<&Linear> {
        Some(match target {
            "q_proj" => &self.self_attn.q_proj,
            "k_proj" => &self.self_attn.k_proj,
            "v_proj" => &self.self_attn.v_proj,
            "o_proj" => &self.self_attn.o_proj,
            "gate_proj" => &self.mlp.gate_proj,
            "up_proj" => &self.mlp.up_proj,
            "down_proj" => &self.mlp.down_proj,
            _ => return None,
        })
    }
}

fn module_prefix(target: &str) -> &'static str {
    match target {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => "self_attn",
        _ => "mlp",
    }
}

/// PEFT key of a LoRA matrix: `base_model.model.model.layers.{i}.{self_attn|mlp}.{t}.lora_{A|B}.weight`.
pub fn peft_key(layer: usize, target: &str, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{target}.lora_{which}.weight",
        module_prefix(target)
    )
}

/// LoRA settings for [`Llama::enable_lora`].
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub target_modules: Vec<String>,
    pub seed: u64,
}

impl LoraConfig {
    /// `r` at least 1, `alpha` finite, `dropout` in [0, 1), at least one known target module.
    pub fn validate(&self) -> Result<()> {
        use crate::config::check;
        check::at_least("r", self.r, 1)?;
        check::finite("alpha", self.alpha)?;
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(Error::bad_value(
                "dropout",
                self.dropout,
                "must be in [0, 1)",
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::bad_value(
                "target_modules",
                "[]",
                format!("must name at least one of {LORA_TARGETS:?}"),
            ));
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(Error::bad_value(
                "target_modules",
                format!("{t:?}"),
                format!("must be one of {LORA_TARGETS:?}"),
            ));
        }
        Ok(())
    }
}

/// The decoder.
#[derive(Debug)]
pub struct Llama {
    pub cfg: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    inv_freq: Vec<f32>,
}

impl Llama {
    /// Every linear layer, `lm_head` included.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in &mut self.layers {
            let Attention {
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                ..
            } = &mut l.self_attn;
            v.extend([q_proj, k_proj, v_proj, o_proj]);
            let Mlp {
                gate_proj,
                up_proj,
                down_proj,
            } = &mut l.mlp;
            v.extend([gate_proj, up_proj, down_proj]);
        }
        v.push(&mut self.lm_head);
        v
    }

    /// [`Linear::set_inference_layout`] on every linear layer.
    pub fn set_inference_layout(&mut self, on: bool) -> Result<()> {
        self.linears_mut()
            .into_iter()
            .try_for_each(|l| l.set_inference_layout(on))
    }

    /// `vb` is the root of an HF `LlamaForCausalLM` checkpoint (`model.*`, `lm_head.*`).
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let m = vb.pp("model");
        let embed_tokens = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            Linear::from_weights(embed_tokens.clone(), None)
        } else {
            Linear::new(cfg.hidden_size, cfg.vocab_size, false, vb.pp("lm_head"))?
        };
        let hd = cfg.head_dim();
        // HF: inv_freq = 1 / base^(arange(0, d, 2) / d), computed in float32.
        let base = cfg.rope_theta() as f32;
        let inv_freq = (0..hd / 2)
            .map(|i| 1f32 / base.powf((2 * i) as f32 / hd as f32))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            inv_freq,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Token embeddings: ids of any shape -> shape + `[hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let e = self.embed_tokens.index_select(&flat, 0)?;
        dims.push(self.cfg.hidden_size);
        Ok(e.reshape(dims)?)
    }

    /// Embeddings of a slice of ids: `[len, hidden]`.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::new(ids, self.device())?;
        self.embed(&t)
    }

    fn cos_sin(&self, position_ids: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let b = position_ids.len();
        let t = position_ids.first().map(|r| r.len()).unwrap_or(0);
        let h = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * h);
        let mut sin = Vec::with_capacity(b * t * h);
        for row in position_ids {
            for &p in row {
                for &f in &self.inv_freq {
                    // float32 product as in HF, then cos/sin.
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let dev = self.device();
        let dt = self.dtype();
        Ok((
            Tensor::from_vec(cos, (b, t, h), dev)?.to_dtype(dt)?,
            Tensor::from_vec(sin, (b, t, h), dev)?.to_dtype(dt)?,
        ))
    }

    /// Full forward. `embeds: [B, T, hidden]`; `position_ids: [B, T]` (any int dtype);
    /// `attention_mask: [B, past + T]` (1 = attend, 0 = padding) or `None` (no padding);
    /// `cache`: when given, past keys/values are used and extended. Returns f32 logits
    /// `[B, T, vocab]` for every position.
    pub fn forward(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        crate::runtime::inference(train, embeds.device(), || {
            let h = self.hidden_states(embeds, position_ids, attention_mask, cache, train)?;
            Ok(self.lm_head.forward_t(&h, train)?.to_dtype(DType::F32)?)
        })
    }

    /// The shifted causal-LM loss (mean over target tokens, f32 scalar) of a training forward.
    /// Equal to [`causal_lm_loss`] of [`Llama::forward`]'s logits, but only the positions whose
    /// next label is a target go through `lm_head` and the softmax: with short answers after
    /// long prompts that is a small fraction of the `T x vocab` logits.
    pub fn train_loss(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
    ) -> Result<Tensor> {
        let h = self.hidden_states(embeds, position_ids, attention_mask, None, true)?;
        self.head_loss(&h, labels)
    }

    /// The shifted mean cross-entropy of final hidden states `h` `[B, T, hidden]` (after the
    /// last norm): the LM head only on the positions that predict a target.
    fn head_loss(&self, h: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let (rows, targets) = shifted_targets(labels, b, t)?;
        let n = rows.len();
        let sel = h
            .reshape((b * t, d))?
            .index_select(&Tensor::from_vec(rows, n, h.device())?, 0)?;
        let logits = self.lm_head.forward_t(&sel, true)?;
        mean_cross_entropy(&logits, targets)
    }

    /// Checks `embeds` `[B, T, hidden]` against the model and `position_ids` `[B, T]` against
    /// `embeds`; returns the positions (negative ones, left padding, as 0).
    fn positions(&self, embeds: &Tensor, position_ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let (b, t, hs) = embeds.dims3()?;
        if hs != self.cfg.hidden_size {
            return Err(Error::Mismatch(format!(
                "input embeddings have width {hs} but the LLM hidden size is {}",
                self.cfg.hidden_size
            )));
        }
        let pos: Vec<Vec<u32>> = position_ids
            .to_dtype(DType::I64)?
            .to_vec2::<i64>()?
            .into_iter()
            .map(|r| r.into_iter().map(|p| p.max(0) as u32).collect())
            .collect();
        if pos.len() != b || pos.iter().any(|r| r.len() != t) {
            return Err(Error::Invalid(format!(
                "position_ids {:?} do not match embeddings {:?}",
                position_ids.dims(),
                embeds.dims()
            )));
        }
        Ok(pos)
    }

    /// Like [`Llama::forward`] but only the last position's logits: `[B, vocab]` f32 (saves the
    /// `T x vocab` head matmul during prefill).
    pub fn forward_last(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        crate::runtime::on_compute_pool(embeds.device(), || {
            let h = self.hidden_states(embeds, position_ids, attention_mask, cache, false)?;
            let t = h.dim(1)?;
            let last = h.narrow(1, t - 1, 1)?;
            Ok(self
                .lm_head
                .forward_t(&last, false)?
                .squeeze(1)?
                .to_dtype(DType::F32)?)
        })
    }

    /// Like [`Llama::forward`] but returns the final hidden states (after the last norm).
    pub fn hidden_states(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        crate::runtime::inference(train, embeds.device(), || {
            self.hidden_states_impl(embeds, position_ids, attention_mask, cache, train)
        })
    }

    fn hidden_states_impl(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let pos = self.positions(embeds, position_ids)?;
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        if let Some(c) = cache.as_mut() {
            if c.layers.len() != self.layers.len() {
                **c = KvCache::new(self.layers.len());
            }
        }
        let mask = self.build_mask(b, t, past, attention_mask)?;
        let (cos, sin) = self.cos_sin(&pos)?;
        let mut x = embeds.to_dtype(self.dtype())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &cos, &sin, mask.as_ref(), slot, train)?;
        }
        self.norm.forward(&x, train)
    }

    /// [`Llama::train_loss`] times `scale` and its gradients, with activation checkpointing per
    /// decoder layer: the forward keeps only each layer's input (detached), and the backward
    /// recomputes one layer at a time from its input, so the autograd graph never holds more
    /// than one layer's activations. Each layer's LoRA dropout masks are replayed from the
    /// adapter's stream as it was before the layer's forward, so the gradients equal the plain
    /// backward's up to float summation order.
    ///
    /// Returns the unscaled loss and the gradient stores of the backward passes: the head's,
    /// holding every layer's LoRA gradients too, and the input embeddings' (when they depend on
    /// trainable tensors, e.g. the projector); a trainable tensor has its gradient in exactly
    /// one of them. Only LoRA matrices inside the layers are supported as trainable layer parameters
    /// (the full modes train the layer weights themselves: use the plain backward).
    pub fn train_loss_checkpointed(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        scale: f64,
    ) -> Result<(f32, Vec<candle_core::backprop::GradStore>)> {
        let pos = self.positions(embeds, position_ids)?;
        let (b, t, _) = embeds.dims3()?;
        for (i, l) in self.layers.iter().enumerate() {
            if l.linears().iter().any(|lin| lin.weight.is_variable())
                || [
                    &l.input_layernorm.weight,
                    &l.post_attention_layernorm.weight,
                ]
                .iter()
                .any(|w| w.is_variable())
            {
                return Err(Error::Invalid(format!(
                    "activation checkpointing: layer {i} trains its own weights (a full training mode); it supports LoRA and projector training only"
                )));
            }
        }
        let mask = self.build_mask(b, t, 0, attention_mask)?;
        let (cos, sin) = self.cos_sin(&pos)?;
        // Forward: every layer from its detached input, keeping the inputs and the dropout
        // streams as they were before each layer.
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut streams = Vec::with_capacity(self.layers.len());
        let mut x = embeds.to_dtype(self.dtype())?.detach();
        for layer in &self.layers {
            let st: Vec<Option<rand_chacha::ChaCha8Rng>> = layer
                .linears()
                .iter()
                .map(|lin| lin.lora.as_ref().map(|a| a.rng_state()).transpose())
                .collect::<Result<_>>()?;
            streams.push(st);
            let y = layer
                .forward(&x, &cos, &sin, mask.as_ref(), None, true)?
                .detach();
            inputs.push(x);
            x = y;
        }
        // The head on the last layer's output as a leaf.
        let last = Var::from_tensor(&x)?;
        let loss = self.head_loss(&self.norm.forward(last.as_tensor(), true)?, labels)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let head = (loss * scale)?.backward()?;
        let mut grad = head.get(last.as_tensor()).cloned().ok_or_else(|| {
            Error::Invalid("checkpointing: no gradient reached the last layer".into())
        })?;
        let mut head = head;
        // Backward, one layer at a time. Only the gradients the caller needs leave a layer's
        // pass, detached: a gradient computed from the layer's activations still holds them
        // through its op history, so keeping the pass's store would keep every layer alive.
        let mut kept: Vec<(Tensor, Tensor)> = Vec::new();
        for ((layer, x_in), st) in self.layers.iter().zip(inputs).zip(streams).rev() {
            let mut now = Vec::with_capacity(7);
            for (lin, s) in layer.linears().iter().zip(st) {
                if let (Some(a), Some(s)) = (lin.lora.as_ref(), s) {
                    now.push(a.rng_state()?);
                    a.set_rng_state(s)?;
                }
            }
            let xv = Var::from_tensor(&x_in)?;
            let y = layer.forward(xv.as_tensor(), &cos, &sin, mask.as_ref(), None, true)?;
            let g = (y.to_dtype(DType::F32)? * grad.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            // The streams continue from where the forward left them.
            let mut now = now.into_iter();
            for lin in layer.linears() {
                if let Some(a) = lin.lora.as_ref() {
                    if let Some(s) = now.next() {
                        a.set_rng_state(s)?;
                    }
                }
            }
            grad = g.get(xv.as_tensor()).map(|t| t.detach()).ok_or_else(|| {
                Error::Invalid("checkpointing: no gradient reached a layer input".into())
            })?;
            for lin in layer.linears() {
                if let Some(a) = lin.lora.as_ref() {
                    for v in [&a.a, &a.b] {
                        if let Some(gv) = g.get(v.as_tensor()) {
                            kept.push((v.as_tensor().clone(), gv.detach()));
                        }
                    }
                }
            }
        }
        for (v, gv) in kept {
            head.insert(&v, gv);
        }
        let mut stores = vec![head];
        // Upstream of the LLM (the projector, in the trainer): the first layer's input gradient.
        if embeds.track_op() {
            let g = (embeds.to_dtype(DType::F32)? * grad.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            stores.push(g);
        }
        Ok((value, stores))
    }

    /// Additive f32 mask `[B, 1, T, past+T]`: causal, plus padding columns. Uses f32::MIN (as HF)
    /// so fully masked rows (left padding) stay finite.
    fn build_mask(
        &self,
        b: usize,
        t: usize,
        past: usize,
        am: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let s = past + t;
        let am: Option<Vec<Vec<f32>>> = match am {
            Some(m) => {
                let m = m.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                if m.len() != b || m.iter().any(|r| r.len() != s) {
                    return Err(Error::Invalid(format!(
                        "attention mask must be [{b}, {s}] (batch, past + new), got [{}, {}]",
                        m.len(),
                        m.first().map(|r| r.len()).unwrap_or(0)
                    )));
                }
                Some(m)
            }
            None => None,
        };
        if t == 1
            && am
                .as_ref()
                .is_none_or(|m| m.iter().all(|r| r.iter().all(|&v| v != 0.0)))
        {
            return Ok(None);
        }
        let mut v = vec![0f32; b * t * s];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..s {
                    let causal = j <= past + i;
                    let pad_ok = am.as_ref().is_none_or(|m| m[bi][j] != 0.0);
                    if !(causal && pad_ok) {
                        v[(bi * t + i) * s + j] = f32::MIN;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(v, (b, 1, t, s), self.device())?))
    }

    /// Attaches freshly initialised (PEFT-like) LoRA adapters to `cfg.target_modules` of every
    /// layer. A ~ U(-1/sqrt(in), 1/sqrt(in)) from a seeded ChaCha8 stream per module, B = 0.
    pub fn enable_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        cfg.validate()?;
        self.set_inference_layout(false)?;
        let dev = self.device().clone();
        for (li, layer) in self.layers.iter_mut().enumerate() {
            for (ti, t) in cfg.target_modules.iter().enumerate() {
                let lin = layer.linear_mut(t).ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown LoRA target module `{t}`; expected one of {LORA_TARGETS:?}"
                    ))
                })?;
                let seed = cfg
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((li * 64 + ti) as u64);
                let ad = LoraAdapter::peft_init(
                    lin.in_features(),
                    lin.out_features(),
                    cfg.r,
                    cfg.alpha,
                    cfg.dropout,
                    seed,
                    &dev,
                )?;
                lin.set_lora(ad)?;
            }
        }
        Ok(())
    }

    /// Attaches LoRA adapters from tensors keyed by PEFT names (`...layers.N.self_attn.q_proj.lora_A.weight`,
    /// `.lora_A.default.weight` or `llama_model.`-prefixed MiniGPT-4 names also accepted).
    /// Returns the number of adapted modules.
    pub fn load_lora(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        alpha: f64,
        dropout: f32,
        seed: u64,
    ) -> Result<usize> {
        let mut n = 0;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            for t in LORA_TARGETS {
                let find = |which: char| -> Option<&Tensor> {
                    let suffix = format!("layers.{li}.{}.{t}.lora_{which}", module_prefix(t));
                    tensors.iter().find_map(|(k, v)| {
                        let k = k.replace(".default.weight", ".weight");
                        (k.ends_with(&format!("{suffix}.weight"))).then_some(v)
                    })
                };
                if let (Some(a), Some(b)) = (find('A'), find('B')) {
                    let lin = layer.linear_mut(t).expect("known target");
                    let ad = LoraAdapter::from_tensors(
                        a,
                        b,
                        alpha,
                        dropout,
                        seed.wrapping_add((li * 64) as u64),
                    )?;
                    lin.set_lora(ad)
                        .map_err(|e| Error::Mismatch(format!("layer {li} {t}: {e}")))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Trainable LoRA variables by PEFT key, in layer/target order.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            for t in LORA_TARGETS {
                if let Some(l) = layer.linear(t).and_then(|l| l.lora.as_ref()) {
                    out.push((peft_key(li, t, 'A'), l.a.clone()));
                    out.push((peft_key(li, t, 'B'), l.b.clone()));
                }
            }
        }
        out
    }

    /// [`Linear::freeze`] on every linear layer that has an adapter or trainable weights
    /// (adapters merged, Vars dropped): the LLaMA for inference after LoRA training.
    pub fn freeze(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for t in LORA_TARGETS {
                if let Some(l) = layer.linear_mut(t) {
                    l.freeze()?;
                }
            }
        }
        self.lm_head.freeze()
    }

    /// Merges every adapter into its base weight (`W += B A * scale`).
    pub fn merge_lora(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for t in LORA_TARGETS {
                if let Some(l) = layer.linear_mut(t) {
                    l.merge()?;
                }
            }
        }
        Ok(())
    }
}

/// Mean shifted cross-entropy (HF causal-LM loss): `logits[:, t]` predicts `labels[:, t+1]`,
/// labels `-100` ignored, averaged over all non-ignored targets of the batch. Differentiable.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let (rows, targets) = shifted_targets(labels, b, t)?;
    let dev = logits.device();
    let n = rows.len();
    let lg = logits
        .reshape((b * t, v))?
        .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    mean_cross_entropy(&lg, targets)
}

/// Rows of the flattened `[B * T]` positions whose *next* label is a target, and those labels:
/// the HF shift (`logits[..., :-1]` against `labels[..., 1:]`, -100 ignored).
fn shifted_targets(labels: &Tensor, b: usize, t: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    if t < 2 {
        return Err(Error::Invalid(
            "need at least 2 positions for a shifted loss".into(),
        ));
    }
    if labels.dims() != [b, t] {
        return Err(Error::Invalid(format!(
            "labels are {:?} but the logits cover [{b}, {t}] positions",
            labels.dims()
        )));
    }
    let labv = labels
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for bi in 0..b {
        for ti in 0..t - 1 {
            let l = labv[bi * t + ti + 1];
            if l == -100 {
                continue;
            }
            if l < 0 {
                return Err(Error::Invalid(format!(
                    "label {l} at row {bi}, position {} (only -100 may be negative)",
                    ti + 1
                )));
            }
            rows.push((bi * t + ti) as u32);
            targets.push(l as u32);
        }
    }
    if rows.is_empty() {
        return Err(Error::Invalid(
            "no target token (all labels are -100)".into(),
        ));
    }
    Ok((rows, targets))
}

/// Mean cross-entropy of `logits: [N, V]` rows against `targets`.
fn mean_cross_entropy(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
    let n = targets.len();
    let t = Tensor::from_vec(targets, n, logits.device())?;
    let per_row = crate::fused::cross_entropy_rows(logits, &t)?;
    Ok((per_row.sum_all()? / n as f64)?)
}

/// `x @ wᵀ`, re-exported for callers building their own heads.
pub fn linear_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul_t(x, w)
}
