//! Peak memory and time of one LoRA backward on a LLaMA decoder, with and without activation
//! checkpointing (`Llama::train_loss_checkpointed`). Random frozen weights of the given widths
//! (default: Vicuna-7B's hidden 4096, MLP 11008, 32 heads, with few layers), LoRA r=8 on all seven
//! projections, one sequence of T tokens. Run each mode in its own process; the peak (`VmHWM`) is
//! reset just before the step. For RSS to follow live memory, run with glibc's mmap threshold
//! low (`MDE_MALLOC_DEFAULTS=1 MALLOC_MMAP_THRESHOLD_=65536`), else freed buffers stay resident:
//!
//! ```text
//! cargo run --release -p mde-train --example bench_checkpointing -- plain [LAYERS] [T] [HIDDEN] [MLP] [HEADS] [VOCAB] [f32|bf16|f16]
//! cargo run --release -p mde-train --example bench_checkpointing -- checkpointed [...]
//! ```

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use minigpt4::config::LlamaConfig;
use minigpt4::llama::{Llama, LoraConfig};

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn rss() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let a: Vec<String> = std::env::args().collect();
    let mode = a.get(1).map(String::as_str).unwrap_or("plain");
    let arg = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (layers, t, hidden, mlp, heads, vocab) = (
        arg(2, 2),
        arg(3, 256),
        arg(4, 4096),
        arg(5, 11008),
        arg(6, 32),
        arg(7, 32000),
    );
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp,
        "num_hidden_layers": layers, "num_attention_heads": heads, "rms_norm_eps": 1e-6,
    }))?;
    let dev = Device::Cpu;
    let dtype = match a.get(8).map(String::as_str) {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(o) => anyhow::bail!("dtype {o:?}: f32, bf16 or f16"),
    };
    // Names and shapes from a throwaway VarMap, then plain (frozen) seeded tensors.
    let vm = VarMap::new();
    let _ = Llama::new(&cfg, VarBuilder::from_varmap(&vm, dtype, &dev))?;
    let shapes: Vec<(String, Vec<usize>)> = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    drop(vm);
    let mut weights = HashMap::new();
    for (n, dims) in shapes {
        let std = 1.0 / (*dims.last().unwrap_or(&1) as f64).sqrt();
        let t = if dims.len() == 1 {
            Tensor::ones(dims.as_slice(), dtype, &dev)?
        } else {
            Tensor::randn(0f32, std as f32, dims.as_slice(), &dev)?.to_dtype(dtype)?
        };
        weights.insert(n, t);
    }
    let weight_mib: f64 = weights
        .values()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as f64)
        .sum::<f64>()
        / (1 << 20) as f64;
    let mut llama = Llama::new(&cfg, VarBuilder::from_tensors(weights, dtype, &dev))?;
    llama.enable_lora(&LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: minigpt4::llama::LORA_TARGETS.map(String::from).to_vec(),
        seed: 0,
    })?;
    let embeds = Tensor::randn(0f32, 1.0, (1, t, hidden), &dev)?.to_dtype(dtype)?;
    let pos = Tensor::arange(0i64, t as i64, &dev)?.unsqueeze(0)?;
    let labels: Vec<i64> = (0..t).map(|i| (i * 7 % vocab) as i64).collect();
    let labels = Tensor::from_vec(labels, (1, t), &dev)?;
    // Peak of the step alone: reset VmHWM to the current RSS (Linux: `5` > clear_refs), so the
    // setup's f32 temporaries do not count.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_, before) = rss();
    let t0 = Instant::now();
    let (loss, n_stores) = match mode {
        "plain" => {
            let l = llama.train_loss(&embeds, &pos, None, &labels)?;
            let v = l.to_scalar::<f32>()?;
            let g = l.backward()?;
            let bytes: usize = g
                .get_ids()
                .filter_map(|id| g.get_id(*id))
                .map(|t| t.elem_count() * 4)
                .sum();
            eprintln!("gradient store holds {} MiB", bytes >> 20);
            (v, 1)
        }
        "checkpointed" => {
            let (v, g) = llama.train_loss_checkpointed(&embeds, &pos, None, &labels, 1.0)?;
            let bytes: usize = g
                .iter()
                .flat_map(|s| {
                    s.get_ids()
                        .filter_map(|id| s.get_id(*id))
                        .map(|t| t.elem_count() * 4)
                        .collect::<Vec<_>>()
                })
                .sum();
            eprintln!("gradient stores hold {} MiB", bytes >> 20);
            (v, g.len())
        }
        m => anyhow::bail!("mode {m:?}: plain or checkpointed"),
    };
    let secs = t0.elapsed().as_secs_f64();
    let (peak, _) = rss();
    println!(
        "{mode}: layers {layers}, T {t}, hidden {hidden}, mlp {mlp}: loss {loss:.4} ({n_stores} stores), forward+backward {secs:.2} s; weights {weight_mib:.0} MiB {dtype:?}; peak RSS {peak:.0} MiB = {:.2} x weights (before the step {before:.0} MiB, step adds {:.0} MiB)",
        peak / weight_mib,
        peak - before
    );
    Ok(())
}
