//! BLIP-2 Q-Former, query path only (what MiniGPT-4 runs), in HF naming (`qformer.*`,
//! `query_tokens`).
//!
//! `LayerNorm(query_tokens)`, then per layer: self-attention (+residual, LayerNorm), on layers
//! `i % cross_attention_frequency == 0` cross-attention to the image tokens (+residual,
//! LayerNorm), then the query FFN `intermediate_query`/`output_query` (+residual, LayerNorm).
//! Post-LN BERT, exact GELU, eval mode (no dropout); the image mask is all ones (no mask).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::QFormerConfig;
use crate::error::Result;
use crate::linear::Linear;
use crate::vision::{softmax_t, LayerNorm};

#[derive(Debug)]
struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    num_heads: usize,
}

impl MultiHeadAttention {
    /// `vb` points at `attention` or `crossattention`.
    fn new(cfg: &QFormerConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let a = vb.pp("attention");
        Ok(Self {
            query: Linear::new(h, h, true, a.pp("query"))?,
            key: Linear::new(kv_dim, h, true, a.pp("key"))?,
            value: Linear::new(kv_dim, h, true, a.pp("value"))?,
            dense: Linear::new(h, h, true, vb.pp("output.dense"))?,
            norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            num_heads: cfg.num_attention_heads,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        Ok(x.reshape((b, n, self.num_heads, d / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    fn forward_t(&self, hidden: &Tensor, kv: &Tensor, train: bool) -> Result<Tensor> {
        let (b, n, d) = hidden.dims3()?;
        let hd = d / self.num_heads;
        let q = self.query.forward_t(hidden, train)?;
        let k = self.key.forward_t(kv, train)?;
        let v = self.value.forward_t(kv, train)?;
        let spec = crate::fused::AttnSpec {
            heads: self.num_heads,
            scale: 1.0 / (hd as f64).sqrt(),
            scale_at: crate::fused::ScaleAt::Scores,
            mask: None,
            rope: None,
        };
        let ctx = if train && crate::fused::attention_ok(&[&q, &k, &v], &spec) {
            crate::fused::attention(&q, &k, &v, &spec)?
        } else {
            let (q, k, v) = (self.split(&q)?, self.split(&k)?, self.split(&v)?);
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
            let probs = softmax_t(&scores, train)?;
            probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?
        };
        let out = self.dense.forward_t(&ctx, train)?;
        self.norm.forward_t(&(out + hidden)?, train)
    }
}

#[derive(Debug)]
struct QFormerLayer {
    attention: MultiHeadAttention,
    crossattention: Option<MultiHeadAttention>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl QFormerLayer {
    fn new(cfg: &QFormerConfig, idx: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let cross =
            cfg.cross_attention_frequency > 0 && idx.is_multiple_of(cfg.cross_attention_frequency);
        Ok(Self {
            attention: MultiHeadAttention::new(cfg, h, vb.pp("attention"))?,
            crossattention: if cross {
                Some(MultiHeadAttention::new(
                    cfg,
                    cfg.encoder_hidden_size,
                    vb.pp("crossattention"),
                )?)
            } else {
                None
            },
            intermediate: Linear::new(
                h,
                cfg.intermediate_size,
                true,
                vb.pp("intermediate_query.dense"),
            )?,
            output: Linear::new(cfg.intermediate_size, h, true, vb.pp("output_query.dense"))?,
            output_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output_query.LayerNorm"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, image: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.attention.forward_t(x, x, train)?;
        if let Some(c) = &self.crossattention {
            x = c.forward_t(&x, image, train)?;
        }
        let h = crate::act::gelu_erf(&self.intermediate.forward_t(&x, train)?, train)?;
        let h = self.output.forward_t(&h, train)?;
        self.output_norm.forward_t(&(h + x)?, train)
    }
}

/// Q-Former with its learned query tokens.
#[derive(Debug)]
pub struct QFormer {
    pub cfg: QFormerConfig,
    /// `[1, num_query_tokens, hidden]`.
    pub query_tokens: Tensor,
    layernorm: LayerNorm,
    layers: Vec<QFormerLayer>,
}

impl QFormer {
    /// `vb` is the BLIP-2 root: reads `query_tokens` and `qformer.*`.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let q = vb.pp("qformer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, q.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            query_tokens: vb.get((1, cfg.num_query_tokens, h), "query_tokens")?,
            layernorm: LayerNorm::new(h, cfg.layer_norm_eps, q.pp("layernorm"))?,
            layers,
        })
    }

    /// Every linear layer of the Q-Former.
    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in &mut self.layers {
            let QFormerLayer {
                attention,
                crossattention,
                intermediate,
                output,
                ..
            } = l;
            for a in std::iter::once(attention).chain(crossattention.as_mut()) {
                let MultiHeadAttention {
                    query,
                    key,
                    value,
                    dense,
                    ..
                } = a;
                v.extend([query, key, value, dense]);
            }
            v.extend([intermediate, output]);
        }
        v
    }

    /// `image_embeds: [B, N, encoder_hidden]` (after ln_vision) -> `[B, num_query, hidden]`.
    pub fn forward(&self, image_embeds: &Tensor) -> Result<Tensor> {
        self.forward_t(image_embeds, false)
    }

    /// [`QFormer::forward`]; `train` selects the differentiable path (`layer_norm_slow`,
    /// `ops::softmax`), so gradients reach the query tokens and every Q-Former weight.
    pub fn forward_t(&self, image_embeds: &Tensor, train: bool) -> Result<Tensor> {
        crate::runtime::inference(train, image_embeds.device(), || {
            self.forward_impl(image_embeds, train)
        })
    }

    fn forward_impl(&self, image_embeds: &Tensor, train: bool) -> Result<Tensor> {
        let b = image_embeds.dim(0)?;
        let image = image_embeds.to_dtype(self.query_tokens.dtype())?;
        let q =
            self.query_tokens
                .broadcast_as((b, self.cfg.num_query_tokens, self.cfg.hidden_size))?;
        let mut x = self.layernorm.forward_t(&q.contiguous()?, train)?;
        for l in &self.layers {
            x = l.forward_t(&x, &image, train)?;
        }
        Ok(x)
    }
}
