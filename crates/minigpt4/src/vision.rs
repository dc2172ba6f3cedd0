//! EVA ViT-g vision tower of MiniGPT-4 (+ `ln_vision`), in HF BLIP-2 naming
//! (`vision_model.*`; LAVIS names are mapped onto it by `weights.rs`).
//!
//! Pre-LN blocks `x + attn(norm1(x))`, `x + mlp(norm2(x))`; a `qkv` projection whose bias is
//! `[q_bias, 0, v_bias]`; queries scaled by `head_dim^-0.5`; exact (erf) GELU; no final norm
//! inside the ViT. `ln_vision` (HF `post_layernorm`) uses eps 1e-5 by default.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::VisionConfig;
use crate::error::Result;
use crate::linear::Linear;

/// LayerNorm with explicit eps: the fused kernel for inference, the differentiable
/// `layer_norm_slow` for training (the fused op has no backward in candle).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
    /// Inference path (fused kernel).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// `train` selects the differentiable path.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let x = x.contiguous()?;
        Ok(candle_nn::ops::layer_norm(
            &x,
            &self.weight,
            &self.bias,
            self.eps as f32,
        )?)
    }
}

/// Softmax over the last dim: fused kernel for inference, differentiable ops for training.
pub(crate) fn softmax_t(x: &Tensor, train: bool) -> Result<Tensor> {
    if train {
        crate::fused::softmax_last_dim(x)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

#[derive(Debug)]
struct Attention {
    qkv: Linear,
    projection: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        // Current HF conversions store `qkv.bias = [q_bias, 0, v_bias]`; older ones kept
        // `q_bias` / `v_bias` separately (as LAVIS does).
        let qkv = if !vb.contains_tensor("qkv.bias") && vb.contains_tensor("q_bias") {
            let q = vb.get(d, "q_bias")?;
            let v = vb.get(d, "v_bias")?;
            let bias = Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?;
            Linear::from_weights(vb.get((3 * d, d), "qkv.weight")?, Some(bias))
        } else {
            Linear::new(d, 3 * d, true, vb.pp("qkv"))?
        };
        Ok(Self {
            qkv,
            projection: Linear::new(d, d, true, vb.pp("projection"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let qkv = self.qkv.forward_t(x, train)?;
        if train {
            let spec = crate::fused::AttnSpec {
                heads: self.num_heads,
                scale: (self.head_dim as f64).powf(-0.5),
                scale_at: crate::fused::ScaleAt::Query,
                mask: None,
                rope: None,
            };
            if crate::fused::attention_ok(&[&qkv], &spec) {
                let out = crate::fused::attention_packed(&qkv, &spec)?;
                return self.projection.forward_t(&out, train);
            }
        }
        let qkv = qkv
            .reshape((b, n, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (self.head_dim as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = q.matmul(&k.t()?.contiguous()?)?;
        let attn = softmax_t(&attn, train)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        self.projection.forward_t(&out, train)
    }
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(cfg, vb.pp("self_attn"))?,
            norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Linear::new(d, cfg.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Linear::new(cfg.intermediate_size, d, true, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward_t(&self.norm1.forward_t(x, train)?, train)?)?;
        let h = self
            .fc1
            .forward_t(&self.norm2.forward_t(&x, train)?, train)?;
        let h = crate::act::gelu_erf(&h, train)?;
        let h = self.fc2.forward_t(&h, train)?;
        Ok((x + h)?)
    }
}

/// The ViT plus `ln_vision`.
#[derive(Debug)]
pub struct VisionModel {
    pub cfg: VisionConfig,
    class_embedding: Tensor,
    position_embedding: Tensor,
    patch_weight: Tensor,
    patch_bias: Tensor,
    blocks: Vec<Block>,
    /// MiniGPT-4's `ln_vision` (HF `post_layernorm`).
    pub ln_vision: LayerNorm,
}

impl VisionModel {
    /// `vb` points at `vision_model` (HF naming).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            class_embedding: emb.get((1, 1, d), "class_embedding")?,
            position_embedding: emb.get((1, cfg.seq_len(), d), "position_embedding")?,
            patch_weight: emb.get(
                (d, 3, cfg.patch_size, cfg.patch_size),
                "patch_embedding.weight",
            )?,
            patch_bias: emb.get(d, "patch_embedding.bias")?,
            blocks,
            ln_vision: LayerNorm::new(d, cfg.ln_vision_eps, vb.pp("post_layernorm"))?,
        })
    }

    /// Every linear layer of the tower.
    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.attn.qkv,
                    &mut b.attn.projection,
                    &mut b.fc1,
                    &mut b.fc2,
                ]
            })
            .collect()
    }

    /// ViT output before `ln_vision`: `[B, 3, S, S] -> [B, 1 + (S/p)^2, D]`.
    pub fn forward_pre_ln(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_pre_ln_t(pixel_values, false)
    }

    /// [`VisionModel::forward_pre_ln`]; `train` selects the differentiable path (conv2d,
    /// `layer_norm_slow`, `ops::softmax`).
    pub fn forward_pre_ln_t(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        crate::runtime::inference(train, pixel_values.device(), || {
            self.forward_pre_ln_impl(pixel_values, train)
        })
    }

    fn forward_pre_ln_impl(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let dt = self.patch_weight.dtype();
        // The patch conv runs in f32 for half-precision models: candle's CPU conv2d has no bf16
        // matmul, and the conv is a negligible share of the work. f64 stays f64 (gradient checks).
        let cdt = if dt == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let x = pixel_values.to_dtype(cdt)?;
        let w = self.patch_weight.to_dtype(cdt)?;
        let x = x.conv2d(&w, 0, self.cfg.patch_size, 1, 1)?;
        let x = x.broadcast_add(&self.patch_bias.to_dtype(cdt)?.reshape((1, (), 1, 1))?)?;
        let x = x.to_dtype(dt)?;
        let b = x.dim(0)?;
        // [B, D, gh, gw] -> [B, gh*gw, D], patches in row-major order.
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let cls = self
            .class_embedding
            .broadcast_as((b, 1, x.dim(D::Minus1)?))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding)?;
        for blk in &self.blocks {
            x = blk.forward_t(&x, train)?;
        }
        Ok(x)
    }

    /// ViT output after `ln_vision`: the Q-Former's `encoder_hidden_states`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_t(pixel_values, false)
    }

    /// [`VisionModel::forward`]; `train` selects the differentiable path.
    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        crate::runtime::inference(train, pixel_values.device(), || {
            self.ln_vision
                .forward_t(&self.forward_pre_ln_t(pixel_values, train)?, train)
        })
    }
}

impl Module for VisionModel {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        VisionModel::forward(self, xs).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}
