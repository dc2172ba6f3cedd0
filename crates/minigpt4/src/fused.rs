//! Fused CPU kernels *with backward* for the training path: softmax over the last dim,
//! RMSNorm, LayerNorm, rotary embedding and the cross-entropy of selected rows.
//!
//! Why: candle-nn's fused kernels (`ops::softmax_last_dim`, `ops::rms_norm`, `ops::layer_norm`,
//! `rotary_emb::rope`) have no backward, so the differentiable path used to spell each of them as
//! 4-8 element-wise tensor ops, every one allocating a fresh tensor forward and again backward.
//! On the tiny loop model that was most of a training step (perf: `binary_map_vec_par`, reductions,
//! `memset` and page faults together well above the gemm time). Each function here is one
//! custom op whose backward is one more pass.
//!
//! Every function takes the fused path for contiguous-able f32 tensors on the CPU and falls back
//! to the composite differentiable ops (the previous code, bit-for-bit the same formulas in the
//! same order of operations) for other dtypes and devices, so callers need not care.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let x = Var::new(&[[1f32, 2., 3.], [0., 0., 1.]], &Device::Cpu)?;
//! let p = minigpt4::fused::softmax_last_dim(x.as_tensor())?;
//! let g = (p.sqr()?.sum_all()?).backward()?;
//! assert_eq!(g.get(x.as_tensor()).unwrap().dims(), &[2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;

/// Rows handled per parallel task: fixed (not thread-dependent) so that per-task partial sums
/// of weight gradients are added in the same order on any number of threads.
const ROWS_PER_TASK: usize = 64;

fn fused_ok(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.elem_count() > 0)
}

/// The contiguous f32 elements of a CPU op input, or an error naming the op (`what`).
pub(crate) fn f32s<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected an f32 tensor")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn last_dim(l: &Layout, what: &str) -> candle_core::Result<usize> {
    match l.shape().dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{what}: expected a non-empty last dimension"),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `cpu_fwd` of an op whose forward value was computed beforehand with untracked tensor ops:
/// takes the value out of `slot` (once) and returns a copy of its contiguous f32 storage.
pub(crate) fn hand_out(
    slot: &std::sync::Mutex<Option<Tensor>>,
    what: &str,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let out = slot
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned lock")))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: forward ran twice")))?
        .contiguous()?;
    let (st, l) = out.storage_and_layout();
    let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
        (&*st, l.contiguous_offsets())
    else {
        candle_core::bail!("{what}: expected a contiguous f32 CPU result");
    };
    Ok((CpuStorage::F32(v[a..b].to_vec()), out.shape().clone()))
}

/// Fills `dx` row by row with `row(dx, x, g, acc)` in parallel tasks of [`ROWS_PER_TASK`] rows,
/// each task with its own zeroed `acc` of `acc_len` values (per-task weight-gradient sums);
/// returns the task sums added in task order.
fn rows_with_sums(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    d: usize,
    acc_len: usize,
    row: impl Fn(&mut [f32], &[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(ROWS_PER_TASK * d)
        .zip(x.par_chunks(ROWS_PER_TASK * d))
        .zip(g.par_chunks(ROWS_PER_TASK * d))
        .map(|((dx, x), g)| {
            let mut acc = vec![0f32; acc_len];
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                row(dx, x, g, &mut acc);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; acc_len];
    for p in partial {
        for (a, b) in sum.iter_mut().zip(p) {
            *a += b;
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// softmax

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "minigpt4-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "softmax")?;
        let d = last_dim(l, "softmax")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - m).exp();
                sum += *y;
            }
            for y in y.iter_mut() {
                *y /= sum;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `(y, g) -> y * (g - <g, y>)` per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "minigpt4-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32s(s1, l1, "softmax backward")?;
        let g = f32s(s2, l2, "softmax backward")?;
        let d = last_dim(l1, "softmax backward")?;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d)
            .zip(y.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(dx, (y, g))| {
                let s = dot(g, y);
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = y * (g - s);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return Ok(candle_nn::ops::softmax(x, D::Minus1)?);
    }
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

/// Per row: `r = sqrt(mean(x²) + eps)`.
fn rms(x: &[f32], eps: f32) -> f32 {
    (dot(x, x) / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "minigpt4-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "rms norm")?;
        let w = f32s(s2, l2, "rms norm weight")?;
        let d = last_dim(l1, "rms norm")?;
        if w.len() != d {
            candle_core::bail!("rms norm: weight has {} values for rows of {d}", w.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = rms(x, self.eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = (x / r) * w;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count() / d;
        let out = x.apply_op3_no_bwd(w, &g.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = out.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = out.narrow(0, n, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(x, w, g) -> [n + 1, d]`: rows `0..n` are `dx`, row `n` is `dw`.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "minigpt4-rms-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "rms norm backward")?;
        let w = f32s(s2, l2, "rms norm backward")?;
        let g = f32s(s3, l3, "rms norm backward")?;
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; (n + 1) * d];
        let (dx, dw) = out.split_at_mut(n * d);
        let sums = rows_with_sums(dx, x, g, d, d, |dx, x, g, dw| {
            let r = rms(x, self.eps);
            let mut mean_uxn = 0f32;
            for i in 0..d {
                let xn = x[i] / r;
                dw[i] += g[i] * xn;
                mean_uxn += (g[i] * w[i]) * xn;
            }
            mean_uxn /= d as f32;
            for i in 0..d {
                dx[i] = (g[i] * w[i] - (x[i] / r) * mean_uxn) / r;
            }
        });
        dw.copy_from_slice(&sums);
        Ok((CpuStorage::F32(out), Shape::from((n + 1, d))))
    }
}

/// `x / sqrt(mean(x²) + eps) * w` over the last dimension (HF LlamaRMSNorm in f32),
/// differentiable in `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused_ok(&[x, w]) {
        let h = x.dim(D::Minus1)?;
        let var = (x.sqr()?.sum_keepdim(D::Minus1)? / h as f64)?;
        let xn = x.broadcast_div(&(var + eps)?.sqrt()?)?;
        return Ok(xn.broadcast_mul(w)?);
    }
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

struct LayerNorm {
    eps: f32,
}

/// Per row: mean and `sqrt(var + eps)` (biased variance, as torch).
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "minigpt4-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "layer norm")?;
        let w = f32s(s2, l2, "layer norm weight")?;
        let b = f32s(s3, l3, "layer norm bias")?;
        let d = last_dim(l1, "layer norm")?;
        if w.len() != d || b.len() != d {
            candle_core::bail!(
                "layer norm: weight/bias have {}/{} values for rows of {d}",
                w.len(),
                b.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let (mean, sd) = moments(x, self.eps);
            for i in 0..d {
                y[i] = ((x[i] - mean) / sd) * w[i] + b[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count() / d;
        let out = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = out.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = out.narrow(0, n, 1)?.reshape(w.shape())?;
        let db = out.narrow(0, n + 1, 1)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, w, g) -> [n + 2, d]`: rows `0..n` are `dx`, row `n` is `dw`, row `n + 1` is `db`.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "minigpt4-layer-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "layer norm backward")?;
        let w = f32s(s2, l2, "layer norm backward")?;
        let g = f32s(s3, l3, "layer norm backward")?;
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; (n + 2) * d];
        let (dx, dwdb) = out.split_at_mut(n * d);
        // acc = [dw | db]
        let sums = rows_with_sums(dx, x, g, d, 2 * d, |dx, x, g, acc| {
            let (mean, sd) = moments(x, self.eps);
            let (mut mean_u, mut mean_uxh) = (0f32, 0f32);
            for i in 0..d {
                let xh = (x[i] - mean) / sd;
                let u = g[i] * w[i];
                acc[i] += g[i] * xh;
                acc[d + i] += g[i];
                mean_u += u;
                mean_uxh += u * xh;
            }
            mean_u /= d as f32;
            mean_uxh /= d as f32;
            for i in 0..d {
                dx[i] = (g[i] * w[i] - mean_u - ((x[i] - mean) / sd) * mean_uxh) / sd;
            }
        });
        dwdb.copy_from_slice(&sums);
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

/// LayerNorm over the last dimension (`(x - mean) / sqrt(var + eps) * w + b`), differentiable
/// in `x`, `w` and `b`; falls back to `candle_nn::ops::layer_norm_slow`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused_ok(&[x, w, b]) {
        return Ok(candle_nn::ops::layer_norm_slow(x, w, b, eps as f32)?);
    }
    Ok(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )?)
}

// ---------------------------------------------------------------------------------------------
// rotary embedding (HF rotate-half convention)

/// `x: [B, H, T, D]`, `cos`/`sin`: `[B, T, D/2]`. `sign = -1` rotates by `-θ`: the transpose,
/// i.e. the backward.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    sign: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "minigpt4-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "rope")?;
        let (b, h, t, d) = l.shape().dims4()?;
        let half = d / 2;
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let candle_core::Storage::Cpu(cs) = &*cs else {
            candle_core::bail!("rope: cos is not on the CPU")
        };
        let candle_core::Storage::Cpu(ss) = &*ss else {
            candle_core::bail!("rope: sin is not on the CPU")
        };
        let cos = f32s(cs, cl, "rope cos")?;
        let sin = f32s(ss, sl, "rope sin")?;
        if d % 2 != 0 || cos.len() != b * t * half || sin.len() != cos.len() {
            candle_core::bail!(
                "rope: x is [{b}, {h}, {t}, {d}] but cos/sin hold {}",
                cos.len()
            );
        }
        let sign = self.sign;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t * d)
            .zip(x.par_chunks(t * d))
            .enumerate()
            .for_each(|(bh, (y, x))| {
                let bi = bh / h;
                for ti in 0..t {
                    let c = &cos[(bi * t + ti) * half..][..half];
                    let s = &sin[(bi * t + ti) * half..][..half];
                    let (x, y) = (&x[ti * d..][..d], &mut y[ti * d..][..d]);
                    for i in 0..half {
                        let (x1, x2, si) = (x[i], x[i + half], sign * s[i]);
                        y[i] = x1 * c[i] - x2 * si;
                        y[i + half] = x2 * c[i] + x1 * si;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            sign: -self.sign,
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}

/// Rotary embedding, rotate-half convention: `x: [B, H, T, D]`, `cos`/`sin`: `[B, T, D/2]`
/// (constants: no gradient flows to them). Differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x, cos, sin]) || x.rank() != 4 || cos.rank() != 3 {
        let c = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let s = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        return Ok((x.broadcast_mul(&c)? + rot.broadcast_mul(&s)?)?);
    }
    Ok(x.contiguous()?.apply_op1(Rope {
        cos: cos.detach().contiguous()?,
        sin: sin.detach().contiguous()?,
        sign: 1.0,
    })?)
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

/// `(logits [N, V], targets [N] u32) -> [N]`: `logsumexp(row) - row[target]`.
struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "minigpt4-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "cross-entropy logits")?;
        let (n, v) = l1.shape().dims2()?;
        let t = targets(s2, l2, n, v)?;
        let mut out = vec![0f32; n];
        out.par_iter_mut()
            .zip(x.par_chunks(v).zip(t.par_iter()))
            .for_each(|(o, (row, &t))| {
                *o = logsumexp(row) - row[t as usize];
            });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(t, &g.contiguous()?, &CrossEntropyBwd)?;
        Ok((Some(dx), None))
    }
}

fn logsumexp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln()
}

fn targets<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    n: usize,
    v: usize,
) -> candle_core::Result<&'a [u32]> {
    let CpuStorage::U32(t) = s else {
        candle_core::bail!("cross-entropy: targets must be u32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("cross-entropy: targets must be contiguous")
    };
    let t = &t[a..b];
    if t.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", t.len());
    }
    if let Some(bad) = t.iter().find(|&&x| x as usize >= v) {
        candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {v}");
    }
    Ok(t)
}

/// `(logits, targets, g [N]) -> (softmax(row) - onehot(target)) * g[row]`.
struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "minigpt4-cross-entropy-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "cross-entropy backward")?;
        let (n, v) = l1.shape().dims2()?;
        let t = targets(s2, l2, n, v)?;
        let g = f32s(s3, l3, "cross-entropy backward")?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(t.par_iter().zip(g.par_iter()))
            .for_each(|((dx, row), (&t, &g))| {
                let lse = logsumexp(row);
                for (d, &x) in dx.iter_mut().zip(row) {
                    *d = (x - lse).exp() * g;
                }
                dx[t as usize] -= g;
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Per-row cross-entropy `-log softmax(logits)[target]`: `logits: [N, V]`, `targets: [N]`
/// (u32, each `< V`) -> `[N]` f32, differentiable in `logits`.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let targets = targets.to_dtype(DType::U32)?;
    if !fused_ok(&[&logits]) {
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        return Ok(lsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?);
    }
    Ok(logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)?)
}

// ---------------------------------------------------------------------------------------------
// attention core

/// Where an attention applies its `1/sqrt(head_dim)` factor: EVA's ViT scales the queries,
/// BERT (Q-Former) and LLaMA scale the scores. Both orders are kept so forward values stay
/// bit-identical to each model's own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleAt {
    Query,
    Scores,
}

/// The parts of a multi-head attention around its projections.
#[derive(Debug, Clone)]
pub struct AttnSpec {
    pub heads: usize,
    /// The factor itself (e.g. `head_dim^-0.5`).
    pub scale: f64,
    pub scale_at: ScaleAt,
    /// Additive mask broadcastable to `[B, H, Tq, Tk]` (a constant: no gradient).
    pub mask: Option<Tensor>,
    /// Rotary `(cos, sin)`, `[B, T, head_dim / 2]`, applied to queries and keys (self-attention).
    pub rope: Option<(Tensor, Tensor)>,
}

/// Whether [`attention`] / [`attention_packed`] can take these inputs (f32 on the CPU); callers
/// keep their composite code for the other cases.
pub fn attention_ok(inputs: &[&Tensor], spec: &AttnSpec) -> bool {
    fused_ok(inputs)
        && spec.mask.as_ref().is_none_or(|m| fused_ok(&[m]))
        && spec
            .rope
            .as_ref()
            .is_none_or(|(c, s)| fused_ok(&[c, s]) && c.rank() == 3)
}

/// Tensors the backward needs, saved by the forward.
struct AttnSaved {
    /// `[B, H, Tq, Tk]` softmax output.
    p: Tensor,
    /// Heads after rope (and, for [`ScaleAt::Query`], after scaling): `[B, H, T, d]`.
    qh: Tensor,
    kh: Tensor,
    vh: Tensor,
}

struct Attention {
    spec: AttnSpec,
    /// `(B, Tq, H, d)`.
    dims: (usize, usize, usize, usize),
    /// The forward value (handed out once) and the saved tensors.
    out: std::sync::Mutex<Option<Tensor>>,
    saved: AttnSaved,
    packed: bool,
}

fn split_heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    Ok(x.reshape((b, t, h, hd / h))?
        .transpose(1, 2)?
        .contiguous()?)
}

fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, t, h * d))?)
}

fn rope_no_bwd(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Rope {
        cos: cos.detach().contiguous()?,
        sin: sin.detach().contiguous()?,
        sign,
    })
}

/// Untracked forward: `(out [B, Tq, H*d], saved)`.
fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: &AttnSpec,
) -> Result<(Tensor, AttnSaved)> {
    let mut qh = split_heads(&q.detach(), spec.heads)?;
    let mut kh = split_heads(&k.detach(), spec.heads)?;
    let vh = split_heads(&v.detach(), spec.heads)?;
    if let Some((c, s)) = &spec.rope {
        qh = rope_no_bwd(&qh, c, s, 1.0)?;
        kh = rope_no_bwd(&kh, c, s, 1.0)?;
    }
    let mut scores = match spec.scale_at {
        ScaleAt::Query => {
            qh = (qh * spec.scale)?;
            qh.matmul(&kh.t()?.contiguous()?)?
        }
        ScaleAt::Scores => (qh.matmul(&kh.t()?.contiguous()?)? * spec.scale)?,
    };
    if let Some(m) = &spec.mask {
        scores = scores.broadcast_add(m)?;
    }
    let p = scores.apply_op1_no_bwd(&Softmax)?;
    let out = merge_heads(&p.matmul(&vh)?)?;
    Ok((out, AttnSaved { p, qh, kh, vh }))
}

impl Attention {
    fn take_out(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        hand_out(&self.out, "attention")
    }

    /// `(dq, dk, dv)`, each `[B, T, H*d]`.
    fn grads(&self, g: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let AttnSaved { p, qh, kh, vh } = &self.saved;
        let (b, tq, h, d) = self.dims;
        let go = g
            .detach()
            .reshape((b, tq, h, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let dv = p.t()?.matmul(&go)?;
        let dp = go.matmul(&vh.t()?)?;
        let mut ds = p.apply_op2_no_bwd(&dp, &SoftmaxBwd)?;
        if self.spec.scale_at == ScaleAt::Scores {
            ds = (ds * self.spec.scale)?;
        }
        let mut dq = ds.matmul(kh)?;
        let mut dk = ds.t()?.matmul(qh)?;
        if self.spec.scale_at == ScaleAt::Query {
            dq = (dq * self.spec.scale)?;
        }
        if let Some((c, s)) = &self.spec.rope {
            dq = rope_no_bwd(&dq, c, s, -1.0)?;
            dk = rope_no_bwd(&dk, c, s, -1.0)?;
        }
        let m = |x: &Tensor| -> candle_core::Result<Tensor> {
            merge_heads(x).map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        Ok((m(&dq)?, m(&dk)?, m(&dv)?))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "minigpt4-attention"
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
        self.take_out()
    }
    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.grads(g)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "minigpt4-attention-packed"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.take_out()
    }
    fn bwd(&self, _qkv: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        debug_assert!(self.packed);
        let (dq, dk, dv) = self.grads(g)?;
        Ok(Some(Tensor::cat(&[&dq, &dk, &dv], 2)?))
    }
}

fn build_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: &AttnSpec,
    packed: bool,
) -> Result<Attention> {
    let (b, tq, hd) = q.dims3()?;
    if spec.heads == 0 || hd % spec.heads != 0 {
        return Err(crate::error::Error::Invalid(format!(
            "attention: width {hd} is not a multiple of {} heads",
            spec.heads
        )));
    }
    let (out, saved) = attention_forward(q, k, v, spec)?;
    Ok(Attention {
        spec: spec.clone(),
        dims: (b, tq, spec.heads, hd / spec.heads),
        out: std::sync::Mutex::new(Some(out)),
        saved,
        packed,
    })
}

/// Multi-head attention core as one autograd node: `q: [B, Tq, H*d]`, `k`, `v: [B, Tk, H*d]`
/// (the projections' outputs) -> `[B, Tq, H*d]` (before the output projection). Forward values
/// equal the composite ops (`split heads, [rope], scale, q kᵀ, + mask, softmax, @ v, merge`);
/// backward is six matmuls. Check [`attention_ok`] first.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttnSpec) -> Result<Tensor> {
    let op = build_attention(q, k, v, spec, false)?;
    Ok(q.apply_op3(k, v, op)?)
}

/// [`attention`] on a packed `qkv: [B, T, 3*H*d]` (queries, keys, values side by side, as
/// EVA's fused `qkv` linear writes them).
pub fn attention_packed(qkv: &Tensor, spec: &AttnSpec) -> Result<Tensor> {
    let w = qkv.dim(D::Minus1)? / 3;
    let (q, k, v) = (
        qkv.narrow(D::Minus1, 0, w)?,
        qkv.narrow(D::Minus1, w, w)?,
        qkv.narrow(D::Minus1, 2 * w, w)?,
    );
    let op = build_attention(&q, &k, &v, spec, true)?;
    Ok(qkv.apply_op1(op)?)
}
