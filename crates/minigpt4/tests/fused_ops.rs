//! The fused training kernels of `minigpt4::fused` against candle's composite differentiable
//! ops: same forward values and same gradients (within f32 rounding), on random inputs whose
//! shapes include rows longer than one parallel task and odd widths.

use candle_core::{DType, Device, Tensor, Var, D};
use minigpt4::fused;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic values in [-2, 2) from a small LCG: no dependence on candle's RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs `f` on fresh Vars of `inputs`, backpropagates `sum(out * probe)` and returns the output
/// and the gradient of every input.
fn run(
    inputs: &[Tensor],
    probe_seed: u64,
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let probe = rand(out.dims(), probe_seed);
    let loss = (&out * &probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grads = ts
        .iter()
        .map(|t| g.get(t).expect("a gradient reaches every input").clone())
        .collect();
    (out, grads)
}

fn check(
    name: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> Tensor,
    reference: &dyn Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let (yf, gf) = run(inputs, 99, fused);
    let (yr, gr) = run(inputs, 99, reference);
    let d = max_diff(&yf, &yr);
    assert!(d <= tol, "{name}: forward differs by {d}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        let d = max_diff(a, b);
        assert!(d <= tol, "{name}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn softmax_matches_composite() {
    for (shape, seed) in [(vec![3usize, 5], 1u64), (vec![2, 4, 70, 33], 2)] {
        let x = rand(&shape, seed);
        check(
            "softmax",
            &[x],
            &|t| fused::softmax_last_dim(&t[0]).unwrap(),
            &|t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn softmax_of_a_strided_view() {
    let x = rand(&[4, 6], 3);
    let xt = x.t().unwrap();
    let a = fused::softmax_last_dim(&xt).unwrap();
    let b = candle_nn::ops::softmax(&xt, D::Minus1).unwrap();
    assert!(max_diff(&a, &b) < 1e-6);
}

#[test]
fn rms_norm_matches_composite() {
    // 150 rows: more than two parallel tasks of 64 rows, so the weight-gradient partial sums
    // are combined.
    let x = rand(&[3, 50, 24], 4);
    let w = rand(&[24], 5);
    let eps = 1e-6;
    check(
        "rms_norm",
        &[x, w],
        &|t| fused::rms_norm(&t[0], &t[1], eps).unwrap(),
        &|t| {
            let var = (t[0].sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / 24.0).unwrap();
            let xn = t[0]
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap();
            xn.broadcast_mul(&t[1]).unwrap()
        },
        2e-5,
    );
}

#[test]
fn layer_norm_matches_composite() {
    let x = rand(&[2, 70, 17], 6);
    let w = rand(&[17], 7);
    let b = rand(&[17], 8);
    for eps in [1e-12, 1e-5] {
        check(
            "layer_norm",
            &[x.clone(), w.clone(), b.clone()],
            &|t| fused::layer_norm(&t[0], &t[1], &t[2], eps).unwrap(),
            &|t| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], eps as f32).unwrap(),
            5e-5,
        );
    }
}

#[test]
fn rope_matches_composite_and_inference_kernel() {
    let (b, h, t, d) = (2, 3, 7, 8);
    let x = rand(&[b, h, t, d], 9);
    let ang = rand(&[b, t, d / 2], 10);
    let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
    let composite = |t: &[Tensor]| {
        let c = Tensor::cat(&[&cos, &cos], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let s = Tensor::cat(&[&sin, &sin], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let x1 = t[0].narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = t[0].narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (t[0].broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
    };
    check(
        "rope",
        std::slice::from_ref(&x),
        &|t| fused::rope(&t[0], &cos, &sin).unwrap(),
        &composite,
        1e-6,
    );
    let inference = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
    assert!(max_diff(&fused::rope(&x, &cos, &sin).unwrap(), &inference) < 1e-6);
}

#[test]
fn cross_entropy_matches_log_softmax_gather() {
    let logits = rand(&[37, 101], 11);
    let targets: Vec<u32> = (0..37u32).map(|i| (i * 29) % 101).collect();
    let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    check(
        "cross_entropy",
        &[logits],
        &|x| fused::cross_entropy_rows(&x[0], &t).unwrap(),
        &|x| {
            candle_nn::ops::log_softmax(&x[0], D::Minus1)
                .unwrap()
                .gather(&t.unsqueeze(1).unwrap(), 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .neg()
                .unwrap()
        },
        2e-6,
    );
}

#[test]
fn cross_entropy_rejects_a_target_outside_the_vocabulary() {
    let logits = rand(&[2, 5], 12);
    let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let err = fused::cross_entropy_rows(&logits, &t)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 5 outside the vocabulary of 5"),
        "{err}"
    );
}

#[test]
fn non_f32_inputs_take_the_composite_path() {
    let x = rand(&[3, 8], 13).to_dtype(DType::F64).unwrap();
    let a = fused::softmax_last_dim(&x).unwrap();
    let b = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
    assert_eq!(a.dtype(), DType::F64);
    assert_eq!(
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        0.0
    );
}

/// The composite attention every model spelled out before: split heads, optional rope,
/// scale (queries or scores), `q kᵀ`, mask, softmax, `@ v`, merge heads.
fn composite_attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &fused::AttnSpec) -> Tensor {
    let split = |x: &Tensor| {
        let (b, t, hd) = x.dims3().unwrap();
        x.reshape((b, t, spec.heads, hd / spec.heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (mut qh, mut kh, vh) = (split(q), split(k), split(v));
    if let Some((c, s)) = &spec.rope {
        qh = fused::rope(&qh, c, s).unwrap();
        kh = fused::rope(&kh, c, s).unwrap();
    }
    let kt = kh.t().unwrap().contiguous().unwrap();
    let mut scores = match spec.scale_at {
        fused::ScaleAt::Query => (qh * spec.scale).unwrap().matmul(&kt).unwrap(),
        fused::ScaleAt::Scores => (qh.matmul(&kt).unwrap() * spec.scale).unwrap(),
    };
    if let Some(m) = &spec.mask {
        scores = scores.broadcast_add(m).unwrap();
    }
    let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
    let (b, h, t, d) = p.matmul(&vh).unwrap().dims4().unwrap();
    p.matmul(&vh)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, h * d))
        .unwrap()
}

#[test]
fn attention_matches_composite_self_cross_rope_and_packed() {
    let (b, h, d) = (2usize, 3usize, 4usize);
    let w = h * d;
    // Self-attention with rope and a causal additive mask (LLaMA).
    let t = 6;
    let ang = rand(&[b, t, d / 2], 20);
    let causal: Vec<f32> = (0..t * t)
        .map(|i| if i % t > i / t { f32::MIN } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(causal, (1, 1, t, t), &Device::Cpu).unwrap();
    let spec = fused::AttnSpec {
        heads: h,
        scale: 1.0 / (d as f64).sqrt(),
        scale_at: fused::ScaleAt::Scores,
        mask: Some(mask),
        rope: Some((ang.cos().unwrap(), ang.sin().unwrap())),
    };
    let inputs = [
        rand(&[b, t, w], 21),
        rand(&[b, t, w], 22),
        rand(&[b, t, w], 23),
    ];
    assert!(fused::attention_ok(&[&inputs[0]], &spec));
    check(
        "attention (rope, mask)",
        &inputs,
        &|x| fused::attention(&x[0], &x[1], &x[2], &spec).unwrap(),
        &|x| composite_attention(&x[0], &x[1], &x[2], &spec),
        2e-5,
    );
    // Cross-attention, queries shorter than keys (Q-Former).
    let spec = fused::AttnSpec {
        heads: h,
        scale: 1.0 / (d as f64).sqrt(),
        scale_at: fused::ScaleAt::Scores,
        mask: None,
        rope: None,
    };
    let inputs = [
        rand(&[b, 3, w], 24),
        rand(&[b, 7, w], 25),
        rand(&[b, 7, w], 26),
    ];
    check(
        "cross-attention",
        &inputs,
        &|x| fused::attention(&x[0], &x[1], &x[2], &spec).unwrap(),
        &|x| composite_attention(&x[0], &x[1], &x[2], &spec),
        2e-5,
    );
    // Packed qkv with query scaling (EVA ViT).
    let spec = fused::AttnSpec {
        heads: h,
        scale: (d as f64).powf(-0.5),
        scale_at: fused::ScaleAt::Query,
        mask: None,
        rope: None,
    };
    check(
        "packed attention",
        &[rand(&[b, 5, 3 * w], 27)],
        &|x| fused::attention_packed(&x[0], &spec).unwrap(),
        &|x| {
            let n = |i: usize| x[0].narrow(D::Minus1, i * w, w).unwrap();
            composite_attention(&n(0), &n(1), &n(2), &spec)
        },
        2e-5,
    );
}
