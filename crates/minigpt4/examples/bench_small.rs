//! CPU benchmark of the "small" MiniGPT-4 configuration with random weights (f32, batch 1):
//! vision encode (ViT + ln_vision + Q-Former + llama_proj), prefill of 96 positions (last
//! logits), per-token greedy decode with KV cache, and a LoRA train step (batch 4).
//!
//! `cargo run -p minigpt4 --example bench_small [-- CONFIG.json [REPEATS]]`
//! (CONFIG defaults to `shared/bench/small-config.json`; dependencies are built at opt-level 3
//! even in the dev profile, so this is representative of release speed for the heavy kernels.)

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use candle_nn::{VarBuilder, VarMap};
use minigpt4::config::{LlamaConfig, MiniGpt4Config, QFormerConfig, VisionConfig};
use minigpt4::generation::{generate, GenerationConfig};
use minigpt4::llama::{causal_lm_loss, LoraConfig};
use minigpt4::model::MiniGpt4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| {
        format!(
            "{}/../../../shared/bench/small-config.json",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?;
    let image_size = j["image_size"].as_u64().context("image_size")? as usize;
    let mut v = j["vision"].clone();
    v["image_size"] = image_size.into();
    v["ln_vision_eps"] = j["ln_vision_eps"].clone();
    let vision: VisionConfig = serde_json::from_value(v)?;
    let mut q = j["qformer"].clone();
    q["num_query_tokens"] = j["num_query_tokens"].clone();
    let qformer: QFormerConfig = serde_json::from_value(q)?;
    let llama: LlamaConfig = serde_json::from_value(j["llama"].clone())?;
    let cfg = MiniGpt4Config {
        vision,
        qformer,
        llama,
    };

    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let _random = MiniGpt4::new(&cfg, vb)?;
    // Random weights (seeded), std 1/sqrt(fan_in) for matrices, 1 for norms.
    let mut rng = ChaCha8Rng::seed_from_u64(1234);
    let mut vars = vm.all_vars();
    vars.sort_by_key(|v| v.as_tensor().elem_count());
    for var in vars {
        let t = var.as_tensor();
        let fan_in = *t.dims().last().unwrap_or(&1) as f64;
        let (mean, std) = if t.rank() == 1 {
            (1.0, 0.02)
        } else {
            (0.0, 1.0 / fan_in.sqrt())
        };
        let vals: Vec<f32> = (0..t.elem_count())
            .map(|_| {
                // Box-Muller normal from the seeded stream.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
                    as f32
            })
            .collect();
        var.set(&Tensor::from_vec(vals, t.shape(), &dev)?)?;
    }
    // A model loaded from files holds plain tensors, not Vars: rebuild it that way, and store
    // its weights as inference does (`MiniGpt4Eval`, `mde ask`; `MDE_BENCH_ROW_MAJOR=1` keeps
    // the row-major layout). `enable_lora` below restores the training layout.
    let data = minigpt4::model::detached_tensors(&vm)?
        .into_iter()
        .collect();
    let mut model = MiniGpt4::new(&cfg, VarBuilder::from_tensors(data, DType::F32, &dev))?;
    if std::env::var_os("MDE_BENCH_ROW_MAJOR").is_none() {
        model.set_inference_layout(true)?;
    }
    println!(
        "config {path}; threads {}",
        candle_core::utils::get_num_threads()
    );

    // Vision encode.
    let px = (Tensor::ones((1, 3, image_size, image_size), DType::F32, &dev)? * 0.1)?;
    let _ = model.encode_images(&px)?;
    let mut t = vec![];
    for _ in 0..reps {
        let s = Instant::now();
        let e = model.encode_images(&px)?;
        e.sum_all()?.to_scalar::<f32>()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    println!("vision_encode_ms {:.2}", median(t));

    // Prefill: 32 image rows + 64 text tokens = 96 positions.
    let img = model.encode_images(&px)?.get(0)?;
    let nq = img.dim(0)?;
    let text: Vec<u32> = (0..(96 - nq) as u32).map(|i| 100 + i).collect();
    let prompt = model.embed_segments(&[vec![1], text[1..].to_vec()], &[img])?;
    let tlen = prompt.dim(0)?;
    let pos = Tensor::arange(0u32, tlen as u32, &dev)?.unsqueeze(0)?;
    let mut t = vec![];
    for _ in 0..reps {
        let s = Instant::now();
        let l = model
            .llama
            .forward_last(&prompt.unsqueeze(0)?, &pos, None, None)?;
        l.sum_all()?.to_scalar::<f32>()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    println!("prefill_{tlen}_ms {:.2}", median(t));

    // Decode: 64 greedy tokens with KV cache (prefill included in the run, subtracted).
    let gc = GenerationConfig {
        max_new_tokens: 65,
        ..Default::default()
    };
    let s = Instant::now();
    let _ = generate(
        &model.llama,
        std::slice::from_ref(&prompt),
        &GenerationConfig {
            max_new_tokens: 1,
            ..gc.clone()
        },
        None,
    )?;
    let pre = s.elapsed().as_secs_f64() * 1e3;
    let s = Instant::now();
    let out = generate(&model.llama, std::slice::from_ref(&prompt), &gc, None)?;
    let all = s.elapsed().as_secs_f64() * 1e3;
    println!(
        "decode_ms_per_token {:.2} ({} tokens)",
        (all - pre) / 64.0,
        out[0].tokens.len() - 1
    );

    // LoRA train step: r 8, alpha 16 on q_proj,k_proj; batch 4 x (1 + nq + 63).
    model.enable_lora(&LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "k_proj".into()],
        seed: 1,
    })?;
    let vars: Vec<_> = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.05,
            ..Default::default()
        },
    )?;
    let b = 4usize;
    let seq = 1 + nq + 63;
    let mut ids = vec![];
    let mut labels = vec![];
    for r in 0..b {
        for p in 0..seq {
            let id = if p == 0 {
                1
            } else if p <= nq {
                -1
            } else {
                (200 + r * 7 + p) as i64 % 32000
            };
            ids.push(id);
            labels.push(if p > nq { id } else { -100 });
        }
    }
    let ids = Tensor::from_vec(ids, (b, seq), &dev)?;
    let labels = Tensor::from_vec(labels, (b, seq), &dev)?;
    let qf = model.qformer_features(&px)?.repeat((b, 1, 1))?;
    let mut t = vec![];
    for _ in 0..reps.min(3) {
        let s = Instant::now();
        let img = model.project(&qf, true)?;
        let emb = model.embed_layout(&ids, &img)?;
        let logits = model.forward_embeds(&emb, None, None, true)?;
        let loss = causal_lm_loss(&logits, &labels)?;
        opt.backward_step(&loss)?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    println!("lora_train_step_ms {:.2} (batch {b} x {seq})", median(t));
    Ok(())
}
