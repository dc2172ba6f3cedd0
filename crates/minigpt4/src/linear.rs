//! A linear layer (`y = x Wᵀ + b`, torch layout `W: [out, in]`) with optional LoRA adapter and
//! optional trainable base weights.
//!
//! LoRA follows PEFT: `y = base(x) + B(A(dropout(x))) * alpha / r`, with `A: [r, in]` and
//! `B: [out, r]` held as candle [`Var`]s. The LoRA branch always runs in f32 (as MiniGPT-4/
//! DataEngine do under fp16 autocast for the adapter) and is cast back to the base dtype.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Shape, Storage, Tensor, Var, D,
};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// A LoRA adapter attached to a [`Linear`].
#[derive(Debug)]
pub struct LoraAdapter {
    /// `[r, in]`, f32.
    pub a: Var,
    /// `[out, r]`, f32.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability on the adapter input (training only).
    pub dropout: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl LoraAdapter {
    /// Adapter from given A/B tensors (converted to f32 Vars).
    pub fn from_tensors(
        a: &Tensor,
        b: &Tensor,
        alpha: f64,
        dropout: f32,
        seed: u64,
    ) -> Result<Self> {
        let (r, _in) = a.dims2()?;
        let (_out, r2) = b.dims2()?;
        if r != r2 {
            return Err(Error::Mismatch(format!(
                "LoRA A is {:?} but B is {:?}: ranks differ",
                a.dims(),
                b.dims()
            )));
        }
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale: alpha / r as f64,
            dropout,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        })
    }

    /// PEFT default init: A ~ kaiming_uniform(a=sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)) drawn from a
    /// seeded ChaCha8 stream (not torch's generator: values differ from PEFT, the law is the
    /// same), B = 0.
    pub fn peft_init(
        in_features: usize,
        out_features: usize,
        r: usize,
        alpha: f64,
        dropout: f32,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vals: Vec<f32> = (0..r * in_features)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(vals, (r, in_features), device)?;
        let b = Tensor::zeros((out_features, r), DType::F32, device)?;
        Self::from_tensors(&a, &b, alpha, dropout, seed.wrapping_add(0x9e37_79b9))
    }

    /// The dropout stream's state (activation checkpointing replays a layer's masks).
    pub(crate) fn rng_state(&self) -> Result<ChaCha8Rng> {
        Ok(self
            .rng
            .lock()
            .map_err(|_| Error::Invalid("poisoned rng".into()))?
            .clone())
    }

    /// Puts the dropout stream back to `state`.
    pub(crate) fn set_rng_state(&self, state: ChaCha8Rng) -> Result<()> {
        *self
            .rng
            .lock()
            .map_err(|_| Error::Invalid("poisoned rng".into()))? = state;
        Ok(())
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.a.as_tensor().dim(0).unwrap_or(0)
    }

    /// `B A * scale` as `[out, in]` f32.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }

    /// The inverted-dropout mask of the adapter input (`None` when not training or p = 0):
    /// 0 or `1 / (1 - p)` per element, drawn from the adapter's seeded stream.
    fn dropout_mask(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        if !train || self.dropout <= 0.0 {
            return Ok(None);
        }
        let n = x.elem_count();
        let keep = 1.0 - self.dropout;
        let mask: Vec<f32> = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| Error::Invalid("poisoned rng".into()))?;
            (0..n)
                .map(|_| {
                    if rng.random::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        Ok(Some(Tensor::from_vec(mask, x.shape(), x.device())?))
    }

    /// `B(A(x ∘ mask)) * scale` in f32.
    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xf = x.to_dtype(DType::F32)?;
        if let Some(m) = mask {
            xf = (xf * m)?;
        }
        let h = matmul_t(&xf, self.a.as_tensor())?;
        let h = matmul_t(&h, self.b.as_tensor())?;
        Ok((h * self.scale)?)
    }
}

/// `x [.., in] @ w[out, in]ᵀ` for 2D/3D/4D `x`, reshaping to 2D so the gemm sees one matrix.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims
        .last()
        .ok_or_else(|| Error::Invalid("matmul on a scalar".into()))?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let out = w.dim(0)?;
    let x2 = x.reshape((rows, inp))?;
    let wt = w.t()?;
    let y = if rows == 1 && gemv_ok(&x2, &wt) {
        x2.apply_op1_no_bwd(&GemvT { wt })?
    } else {
        x2.matmul(&wt)?
    };
    let mut od = dims.clone();
    *od.last_mut().unwrap() = out;
    Ok(y.reshape(od)?)
}

/// Whether the one-row product `x Wᵀ` can use [`GemvT`]: untracked f32 CPU operands with `Wᵀ`
/// stored row-major (the inference layout of [`Linear::set_inference_layout`]).
fn gemv_ok(x2: &Tensor, wt: &Tensor) -> bool {
    !x2.track_op()
        && !wt.track_op()
        && x2.device().is_cpu()
        && wt.device().is_cpu()
        && x2.dtype() == DType::F32
        && wt.dtype() == DType::F32
        && wt.is_contiguous()
        && x2.dims()[1] == wt.dims()[0]
        && wt.elem_count() > 0
}

/// `y[1, out] = x[1, in] @ Wᵀ[in, out]` with `Wᵀ` row-major, as `sum_k x_k Wᵀ[k, :]` over blocks
/// of output columns that stay in L1, blocks in parallel.
///
/// Why: decoding multiplies one row by every weight; with the transposed storage the gemm crate
/// took 3.0 ms for the small config's `lm_head` (512 -> 32,000) against 2.4 ms for the row-major
/// weight. This kernel streams `Wᵀ` once, four rows per pass over one thread's slice of `y`:
/// 1.8 ms on 2 threads, 2.4 ms on 1 (`examples/bench_linear.rs`).
struct GemvT {
    /// `[in, out]`, contiguous.
    wt: Tensor,
}

impl CustomOp1 for GemvT {
    fn name(&self) -> &'static str {
        "minigpt4-gemv-t"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        // Smallest slice of `y` per task: narrower products run on one thread (splitting a
        // 1,376-wide one over two took 0.043 ms against 0.033 ms).
        const BLOCK: usize = 2048;
        let x = crate::fused::f32s(s, l, "gemv input")?;
        let (k, n) = self.wt.dims2()?;
        if x.len() != k {
            candle_core::bail!("gemv: x has {} elements but Wᵀ is [{k}, {n}]", x.len());
        }
        let (ws, wl) = self.wt.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("gemv: expected a CPU weight")
        };
        let w = crate::fused::f32s(ws, wl, "gemv weight")?;
        let mut y = vec![0f32; n];
        let block = n
            .div_ceil(rayon::current_num_threads().max(1))
            .next_multiple_of(16)
            .max(BLOCK);
        y.par_chunks_mut(block)
            .enumerate()
            .for_each(|(blk, yb)| axpy_rows(x, w, n, blk * block, yb));
        Ok((CpuStorage::F32(y), Shape::from((1, n))))
    }
}

/// `y += sum_k x[k] * w[k * n + c0 ..][..y.len()]`, vectorised for the CPU it runs on.
fn axpy_rows(x: &[f32], w: &[f32], n: usize, c0: usize, y: &mut [f32]) {
    // Four rows of `w` per pass over `y`: a quarter of the `y` traffic, four read streams.
    #[inline(always)]
    fn body(x: &[f32], w: &[f32], n: usize, c0: usize, y: &mut [f32]) {
        let len = y.len();
        let row = |k: usize| &w[k * n + c0..k * n + c0 + len];
        let mut k = 0;
        while k + 4 <= x.len() {
            let (r0, r1, r2, r3) = (row(k), row(k + 1), row(k + 2), row(k + 3));
            let (x0, x1, x2, x3) = (x[k], x[k + 1], x[k + 2], x[k + 3]);
            for j in 0..len {
                y[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
            }
            k += 4;
        }
        for (kk, &xk) in x.iter().enumerate().skip(k) {
            for (y, &wv) in y.iter_mut().zip(row(kk)) {
                *y += xk * wv;
            }
        }
    }
    with_best_simd!(body(x: &[f32], w: &[f32], n: usize, c0: usize, y: &mut [f32]))
}

/// `x[rows, in] @ W[out, in]ᵀ` for a frozen `W`, as a custom op on `x` alone.
///
/// Why: candle's `Op::Matmul` backward computes the gradient of *both* operands, so a plain
/// `x.matmul(&w.t())` with a frozen `W` still pays a full `xᵀ @ grad` matmul (and a zeros + add of
/// `W`'s size) per layer in backward, only to throw the result away. This op records only `x` in
/// the graph and its backward is `grad @ W`, i.e. exactly candle's `lhs_grad` (same kernel, same
/// layouts, so results are bit-identical). CPU only: callers use the plain path elsewhere.
struct FrozenMatmulT {
    /// `W.t()`: a `[in, out]` strided view, the same rhs layout `matmul_t` hands the gemm.
    wt: Tensor,
}

impl CustomOp1 for FrozenMatmulT {
    fn name(&self) -> &'static str {
        "minigpt4-frozen-matmul-t"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (k2, n) = self.wt.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: x is [{m}, {k}] but Wᵀ is [{k2}, {n}]");
        }
        let (ws, wl) = self.wt.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("frozen matmul: weight is not on the CPU");
        };
        let y = x.matmul(ws, (1, m, n, k), xl, wl)?;
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // Same expression as candle's Matmul lhs_grad with rhs = W.t(): grad @ (W.t()).t().
        Ok(Some(grad.matmul(&self.wt.t()?)?))
    }
}

/// [`matmul_t`] for a frozen (untracked) `w`: in a graph that will be backpropagated (`x`
/// tracked) on the CPU, goes through [`FrozenMatmulT`] so backward skips `w`'s gradient;
/// otherwise (inference, other devices, empty shapes) it is exactly [`matmul_t`].
fn matmul_t_frozen(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let use_op = x.track_op()
        && !w.track_op()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == w.dtype()
        && x.rank() >= 1
        && x.elem_count() > 0
        && w.elem_count() > 0;
    if !use_op {
        return matmul_t(x, w);
    }
    let dims = x.dims().to_vec();
    let inp = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let (out, w_in) = w.dims2()?;
    if w_in != inp {
        return matmul_t(x, w); // lets candle report the shape mismatch as before
    }
    let x2 = x.reshape((rows, inp))?;
    let y = x2.apply_op1(FrozenMatmulT { wt: w.t()? })?;
    let mut od = dims;
    *od.last_mut().unwrap() = out;
    Ok(y.reshape(od)?)
}

/// One linear layer (`x Wᵀ + b`, plus a LoRA branch when `lora` is set) as a single autograd
/// node whose forward value was computed beforehand.
///
/// Why: candle's backward allocates, zero-fills and adds a gradient buffer for *every* input of
/// every node, views (reshape, transpose) included. The unfused LoRA linear is about a dozen
/// nodes (reshapes around each matmul, casts, scale, add); on the tiny loop model that
/// bookkeeping cost more than the matmuls. Here backward is five matmuls on plain tensors.
///
/// Arguments: `(x, W, bias)` without an adapter (bias slot = `W` when there is none; its
/// gradient is then not returned), `(x, A, B)` with one (`W` and bias frozen).
struct FusedLinear {
    /// The forward value, handed out once by `cpu_fwd`.
    out: Mutex<Option<Tensor>>,
    /// `[out, in]`, detached.
    w: Tensor,
    x_grad: bool,
    w_grad: bool,
    b_grad: bool,
    /// `(alpha / r, dropout mask)`.
    lora: Option<(f64, Option<Tensor>)>,
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "minigpt4-fused-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::fused::hand_out(&self.out, "fused linear")
    }

    fn bwd(
        &self,
        x: &Tensor,
        t2: &Tensor,
        t3: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out_f, in_f) = self.w.dims2()?;
        let rows = x.elem_count() / in_f;
        let g2 = g.detach().reshape((rows, out_f))?;
        let x2 = x.detach().reshape((rows, in_f))?;
        let base_dx = || g2.matmul(&self.w);
        match &self.lora {
            None => {
                let dx = if self.x_grad {
                    Some(base_dx()?.reshape(x.shape())?)
                } else {
                    None
                };
                let dw = if self.w_grad {
                    Some(g2.t()?.matmul(&x2)?)
                } else {
                    None
                };
                let db = if self.b_grad { Some(g2.sum(0)?) } else { None };
                Ok((dx, dw, db))
            }
            Some((scale, mask)) => {
                let (a, b) = (t2.detach(), t3.detach());
                let xm = match mask {
                    Some(m) => (&x2 * m.reshape((rows, in_f))?)?,
                    None => x2,
                };
                let h = xm.matmul(&a.t()?)?; // [rows, r]
                let dh = (g2.matmul(&b)? * *scale)?; // [rows, r]
                let db = (g2.t()?.matmul(&h)? * *scale)?; // [out, r]
                let da = dh.t()?.matmul(&xm)?; // [r, in]
                let dx = if self.x_grad {
                    let mut l = dh.matmul(&a)?;
                    if let Some(m) = mask {
                        l = (l * m.reshape((rows, in_f))?)?;
                    }
                    Some((base_dx()? + l)?.reshape(x.shape())?)
                } else {
                    None
                };
                Ok((dx, Some(da), Some(db)))
            }
        }
    }
}

/// Linear layer with optional LoRA and optional trainable weights.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`. When trainable this is `weight_var.as_tensor()` (same storage).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Set by [`Linear::make_trainable`].
    pub weight_var: Option<Var>,
    pub bias_var: Option<Var>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            weight_var: None,
            bias_var: None,
            lora: None,
        }
    }

    /// Loads `weight` (and `bias` when `bias` is true) with shape checks.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_weights(w, b))
    }

    pub fn in_features(&self) -> usize {
        self.weight.dim(1).unwrap_or(0)
    }
    pub fn out_features(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// Stores a frozen CPU weight transposed (`on`): the memory holds `[in, out]` row-major and
    /// `weight` stays an `[out, in]` view of it, so callers see no difference. `off` restores
    /// the row-major `[out, in]` storage. Variables (trainable weights), other devices and
    /// other dtypes than f32 (not measured; the GEMV kernel is f32 only) are left as they are.
    ///
    /// Why: `x Wᵀ` with a row-major `W` makes the gemm crate pack the whole weight matrix on every
    /// call, which costs as much as the product when `x` has few rows; with `Wᵀ` row-major it reads
    /// the weight in place. Measured on 2 cores (`examples/bench_linear.rs`, docs/perf/
    /// pytorch-s7.md): 96 x 512 -> 512 0.37 -> 0.12 ms, 96 x 512 -> 1376 0.86 -> 0.33 ms,
    /// 4 x 512 -> 32000 7.9 -> 1.6 ms; 1.1-1.3x from 257 to 384 rows, even at 1,312. The LoRA
    /// backward prefers the row-major `[out, in]` layout, so [`Linear::make_trainable`] and
    /// [`crate::llama::Llama::enable_lora`] restore it.
    pub fn set_inference_layout(&mut self, on: bool) -> Result<()> {
        if self.weight_var.is_some()
            || self.weight.is_variable()
            || !self.weight.device().is_cpu()
            || self.weight.dtype() != DType::F32
            || self.weight.rank() != 2
        {
            return Ok(());
        }
        if on && self.weight.is_contiguous() {
            self.weight = self.weight.t()?.contiguous()?.t()?;
        } else if !on && !self.weight.is_contiguous() {
            self.weight = self.weight.contiguous()?;
        }
        Ok(())
    }

    /// Whether the weight is stored transposed ([`Linear::set_inference_layout`]).
    pub fn has_inference_layout(&self) -> bool {
        self.weight.rank() == 2
            && !self.weight.is_contiguous()
            && self.weight.t().is_ok_and(|t| t.is_contiguous())
    }

    /// Turns weight and bias into [`Var`]s (gradients reach them); returns them. The Vars are
    /// f32 master weights whatever the layer's dtype, as mixed-precision training keeps them
    /// (AdamW's state and updates stay in f32); a half-precision model casts them to its
    /// compute dtype in every forward ([`Linear::forward_t`]), so the gradient reaching the
    /// Var is f32 too.
    pub fn make_trainable(&mut self) -> Result<(Var, Option<Var>)> {
        if self.weight_var.is_none() {
            self.set_inference_layout(false)?;
            let v = Var::from_tensor(&self.weight.to_dtype(DType::F32)?)?;
            self.weight = v.as_tensor().clone();
            self.weight_var = Some(v);
            if let Some(b) = &self.bias {
                let bv = Var::from_tensor(&b.to_dtype(DType::F32)?)?;
                self.bias = Some(bv.as_tensor().clone());
                self.bias_var = Some(bv);
            }
        }
        Ok((self.weight_var.clone().unwrap(), self.bias_var.clone()))
    }

    /// Attaches a LoRA adapter after checking its shapes.
    pub fn set_lora(&mut self, lora: LoraAdapter) -> Result<()> {
        let (r, i) = lora.a.as_tensor().dims2()?;
        let (o, r2) = lora.b.as_tensor().dims2()?;
        if i != self.in_features() || o != self.out_features() || r != r2 {
            return Err(Error::Mismatch(format!(
                "LoRA A {:?} / B {:?} do not fit a linear layer {}->{}",
                [r, i],
                [o, r2],
                self.in_features(),
                self.out_features()
            )));
        }
        self.lora = Some(lora);
        Ok(())
    }

    /// `W += B A * scale` and drops the adapter.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(l) = self.lora.take() {
            let dt = self.weight.dtype();
            let w = (self.weight.to_dtype(DType::F32)? + l.delta_weight()?)?.to_dtype(dt)?;
            match &self.weight_var {
                Some(v) => v.set(&w)?,
                None => self.weight = w,
            }
        }
        Ok(())
    }

    /// For inference after training: merges the adapter, drops the Vars and detaches weight and
    /// bias, so that forwards record no autograd graph (with Vars, candle keeps every
    /// intermediate tensor of a forward alive for a backward that never comes).
    pub fn freeze(&mut self) -> Result<()> {
        self.merge()?;
        self.weight = self.weight.detach();
        self.bias = self.bias.as_ref().map(|b| b.detach());
        self.weight_var = None;
        self.bias_var = None;
        Ok(())
    }

    /// Forward; `train` enables LoRA dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mask = match &self.lora {
            Some(l) => l.dropout_mask(x, train)?,
            None => None,
        };
        if train && self.fusable(x) {
            return self.forward_fused(x, mask);
        }
        // f32 master weights (a trained projector) in a half-precision model: cast per
        // forward (differentiable, so the f32 Var gets the gradient).
        let cast = |t: &Tensor| -> Result<Tensor> {
            if t.dtype() == x.dtype() {
                Ok(t.clone())
            } else {
                Ok(t.to_dtype(x.dtype())?)
            }
        };
        let mut y = matmul_t_frozen(x, &cast(&self.weight)?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&cast(b)?)?;
        }
        if let Some(l) = &self.lora {
            let d = l.forward_masked(x, mask.as_ref())?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }

    /// Whether a training forward can be one [`FusedLinear`] node: f32 on the CPU, and not the
    /// (unused) combination of a trainable base weight with an adapter.
    fn fusable(&self, x: &Tensor) -> bool {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        let tracked = x.track_op()
            || self.weight.track_op()
            || self.bias.as_ref().is_some_and(|b| b.track_op())
            || self.lora.is_some();
        tracked
            && cpu_f32(x)
            && cpu_f32(&self.weight)
            && self.bias.as_ref().is_none_or(cpu_f32)
            && !(self.lora.is_some() && self.weight.track_op())
            && x.rank() >= 1
            && x.elem_count() > 0
            && x.dim(D::Minus1).ok() == Some(self.in_features())
    }

    /// The training forward as a single graph node: values from untracked tensor ops (the same
    /// ops, in the same order, as the unfused path), gradients from [`FusedLinear::bwd`].
    fn forward_fused(&self, x: &Tensor, mask: Option<Tensor>) -> Result<Tensor> {
        let w = self.weight.detach();
        let xd = x.detach();
        let mut y = matmul_t(&xd, &w)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.detach())?;
        }
        if let Some(l) = &self.lora {
            let mut xf = xd.clone();
            if let Some(m) = &mask {
                xf = (xf * m)?;
            }
            let h = matmul_t(
                &matmul_t(&xf, &l.a.as_tensor().detach())?,
                &l.b.as_tensor().detach(),
            )?;
            y = (y + (h * l.scale)?)?;
        }
        let op = FusedLinear {
            out: Mutex::new(Some(y)),
            w,
            x_grad: x.track_op(),
            w_grad: self.weight.track_op(),
            b_grad: self.bias.as_ref().is_some_and(|b| b.track_op()),
            lora: self.lora.as_ref().map(|l| (l.scale, mask)),
        };
        // Argument slots: (x, W, bias) without an adapter, (x, A, B) with one.
        let (t2, t3) = match (&self.lora, &self.bias) {
            (Some(l), _) => (l.a.as_tensor().clone(), l.b.as_tensor().clone()),
            (None, Some(b)) => (self.weight.clone(), b.clone()),
            (None, None) => (self.weight.clone(), self.weight.clone()),
        };
        Ok(x.apply_op3(&t2, &t3, op)?)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(xs, false).map_err(|e| match e {
            Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// The frozen-weight path must give bit-identical outputs and input gradients to the plain
    /// matmul, and no gradient for the weight.
    #[test]
    fn frozen_matmul_matches_plain_matmul() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 5, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (3, 7), &dev)?;
        let v = Var::from_tensor(&x0)?;
        let tgt = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev)?;

        let plain = matmul_t(v.as_tensor(), &w)?;
        let frozen = matmul_t_frozen(v.as_tensor(), &w)?;
        assert_eq!(plain.to_vec3::<f32>()?, frozen.to_vec3::<f32>()?);

        let gp = (plain * &tgt)?.sum_all()?.backward()?;
        let gf = (frozen * &tgt)?.sum_all()?.backward()?;
        let (a, b) = (gp.get(&v).unwrap(), gf.get(&v).unwrap());
        assert_eq!(a.to_vec3::<f32>()?, b.to_vec3::<f32>()?);
        // W is not part of the frozen graph at all: no gradient is computed or stored for it.
        assert!(gf.get(&w).is_none());
        // The plain path stored one extra gradient (for the `W.t()` operand); proves the custom
        // op was taken rather than the plain fallback.
        assert_eq!(gf.get_ids().count() + 1, gp.get_ids().count());
        Ok(())
    }

    /// Largest absolute elementwise difference (the crate's unit tests share it).
    pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    /// The transposed storage changes no value beyond float rounding, for one row (the
    /// [`GemvT`] kernel: widths that are not a multiple of its blocks, inner sizes that are not a
    /// multiple of 4) and for several; `set_inference_layout(false)` restores the storage.
    #[test]
    fn inference_layout_gives_the_same_products() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        for (rows, inp, out) in [
            (1, 7, 5),
            (1, 517, 4099),
            (1, 64, 2048),
            (3, 33, 70),
            (130, 9, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
            let b = Tensor::randn(0f32, 1.0, out, &dev)?;
            let mut lin = Linear::from_weights(w.clone(), Some(b));
            let want = lin.forward_t(&x, false)?;
            lin.set_inference_layout(true)?;
            assert!(lin.has_inference_layout());
            assert_eq!(lin.weight.dims(), &[out, inp]);
            let got = lin.forward_t(&x, false)?;
            let tol = 1e-5 * (inp as f32).sqrt();
            assert!(max_abs(&got, &want)? < tol, "{rows}x{inp}->{out}");
            lin.set_inference_layout(false)?;
            assert!(!lin.has_inference_layout() && lin.weight.is_contiguous());
            assert_eq!(lin.weight.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        }
        // Trainable weights keep their storage.
        let mut lin = Linear::from_weights(Tensor::ones((4, 3), DType::F32, &dev)?, None);
        lin.make_trainable()?;
        lin.set_inference_layout(true)?;
        assert!(!lin.has_inference_layout());
        Ok(())
    }

    /// The fused training node must give the unfused path's outputs and the gradients of x,
    /// W and b (trainable linear) or of x, A and B (LoRA, with a dropout mask).
    #[test]
    fn fused_linear_matches_the_unfused_graph() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 5, 7), &dev)?;
        let w0 = Tensor::randn(0f32, 1.0, (3, 7), &dev)?;
        let b0 = Tensor::randn(0f32, 1.0, 3, &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev)?;

        // Trainable weight and bias.
        let mut lin = Linear::from_weights(w0.clone(), Some(b0.clone()));
        let (wv, bv) = lin.make_trainable()?;
        let bv = bv.unwrap();
        let xv = Var::from_tensor(&x0)?;
        assert!(lin.fusable(xv.as_tensor()));
        let yf = lin.forward_t(xv.as_tensor(), true)?;
        let gf = (&yf * &probe)?.sum_all()?.backward()?;
        let yr = matmul_t(xv.as_tensor(), wv.as_tensor())?.broadcast_add(bv.as_tensor())?;
        let gr = (&yr * &probe)?.sum_all()?.backward()?;
        assert_eq!(yf.to_vec3::<f32>()?, yr.to_vec3::<f32>()?);
        for t in [xv.as_tensor(), wv.as_tensor(), bv.as_tensor()] {
            let d = max_abs(gf.get(t).unwrap(), gr.get(t).unwrap())?;
            assert!(d < 1e-5, "trainable linear gradient differs by {d}");
        }

        // Frozen weight with a LoRA adapter (non-zero B so every gradient is informative) and
        // dropout; the reference draws the same mask from an adapter with the same seed.
        let a0 = Tensor::randn(0f32, 0.5, (4, 7), &dev)?;
        let bb0 = Tensor::randn(0f32, 0.5, (3, 4), &dev)?;
        let mut lin = Linear::from_weights(w0.clone(), Some(b0.clone()));
        lin.set_lora(LoraAdapter::from_tensors(&a0, &bb0, 8.0, 0.3, 7)?)?;
        let reference = LoraAdapter::from_tensors(&a0, &bb0, 8.0, 0.3, 7)?;
        let xv = Var::from_tensor(&x0)?;
        let yf = lin.forward_t(xv.as_tensor(), true)?;
        let gf = (&yf * &probe)?.sum_all()?.backward()?;
        let mask = reference.dropout_mask(&x0, true)?.unwrap();
        let yr = (matmul_t(xv.as_tensor(), &w0)?.broadcast_add(&b0)?
            + reference.forward_masked(xv.as_tensor(), Some(&mask))?)?;
        let gr = (&yr * &probe)?.sum_all()?.backward()?;
        assert_eq!(yf.to_vec3::<f32>()?, yr.to_vec3::<f32>()?);
        let l = lin.lora.as_ref().unwrap();
        for (name, f, r) in [
            ("x", xv.as_tensor(), xv.as_tensor()),
            ("A", l.a.as_tensor(), reference.a.as_tensor()),
            ("B", l.b.as_tensor(), reference.b.as_tensor()),
        ] {
            let d = max_abs(gf.get(f).unwrap(), gr.get(r).unwrap())?;
            assert!(d < 1e-5, "LoRA gradient of {name} differs by {d}");
        }
        // The frozen weight gets no gradient, and the whole linear is one graph node.
        assert!(gf.get(&w0).is_none());
        assert_eq!(gf.get_ids().count(), 4); // x, A, B and the output
        Ok(())
    }
}
