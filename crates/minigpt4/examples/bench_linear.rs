//! One linear layer's product `x Wᵀ` per weight storage, for the shapes of the small benchmark
//! config and a few others: the row-major `[out, in]` weight (as loaded) against the inference
//! layout of `Linear::set_inference_layout` (`Wᵀ` row-major; one-row products go through the
//! GEMV kernel). Median of 60 calls after one warm-up.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p minigpt4 --example bench_linear`

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use minigpt4::linear::Linear;

fn median_ms(f: &dyn Fn() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ts = Vec::with_capacity(60);
    for _ in 0..60 {
        let s = Instant::now();
        f()?;
        ts.push(s.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let dev = Device::Cpu;
    println!(
        "threads {}\n{:>6} {:>6} {:>6} {:>12} {:>12} {:>7}",
        candle_core::utils::get_num_threads(),
        "rows",
        "in",
        "out",
        "row-major",
        "inference",
        "ratio"
    );
    // (rows, in, out): decode and lm_head, batched decode, Q-Former queries, prefill of 96
    // positions, the ViT's 257 tokens, a LoRA batch of 4 x 96, the tiny model's training batch.
    let shapes = [
        (1, 512, 32000),
        (1, 512, 1376),
        (4, 512, 32000),
        (32, 384, 384),
        (32, 384, 1536),
        (96, 512, 512),
        (96, 512, 1376),
        (96, 1376, 512),
        (257, 384, 1152),
        (257, 384, 1536),
        (257, 1536, 384),
        (384, 512, 1376),
        (1312, 128, 352),
    ];
    for (rows, inp, out) in shapes {
        let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
        let mut lin = Linear::from_weights(w, None);
        let a = median_ms(&|| {
            lin.forward_t(&x, false)?;
            Ok(())
        })?;
        lin.set_inference_layout(true)?;
        let b = median_ms(&|| {
            lin.forward_t(&x, false)?;
            Ok(())
        })?;
        println!(
            "{rows:>6} {inp:>6} {out:>6} {a:>9.3} ms {b:>9.3} ms {:>6.2}x",
            a / b
        );
    }
    Ok(())
}
