//! CPU benchmark of one stage-2 LoRA training step on the "small" MiniGPT-4 configuration
//! (`shared/bench/small-config.json`, workload `train_step`): LoRA r=8 alpha=16 on
//! q_proj,k_proj, everything else frozen, batch 4 of 1 BOS + 32 image + 63 text tokens,
//! forward + backward + AdamW (mde-train's torch-exact AdamW), random seeded weights, f32.
//!
//! `cargo run --release -p mde-train --example bench_train_step [-- CONFIG.json [STEPS]]`

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mde_train::batch::{TrainBatch, IGNORE_INDEX, IMAGE_ROW_ID};
use mde_train::optim::{AdamW, AdamWConfig};
use mde_train::step::{train_step, BatchTensors};
use minigpt4::config::{LlamaConfig, MiniGpt4Config, QFormerConfig, VisionConfig};
use minigpt4::llama::LoraConfig;
use minigpt4::model::MiniGpt4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| {
        format!(
            "{}/../../../shared/bench/small-config.json",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
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
    // Pass 1 discovers names and shapes; weights are then filled with seeded random values
    // and rebuilt as plain (non-Var) tensors so that the base model is frozen.
    let vm = VarMap::new();
    let _ = MiniGpt4::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let mut rng = ChaCha8Rng::seed_from_u64(1234);
    let mut named: Vec<(String, Tensor)> = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned varmap"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut weights = HashMap::new();
    for (n, t) in named {
        let fan_in = *t.dims().last().unwrap_or(&1) as f64;
        let (mean, std) = if t.rank() == 1 {
            (1.0, 0.02)
        } else {
            (0.0, 1.0 / fan_in.sqrt())
        };
        let vals: Vec<f32> = (0..t.elem_count())
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
                    as f32
            })
            .collect();
        weights.insert(n, Tensor::from_vec(vals, t.shape(), &dev)?);
    }
    let mut model = MiniGpt4::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
    model.enable_lora(&LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "k_proj".into()],
        seed: 0,
    })?;
    let vars = model.llama.lora_vars();
    let n_params: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let mut opt = AdamW::new_runner_groups(vars, AdamWConfig::default())?;

    // Batch: 1 BOS + 32 image rows + 63 text tokens, text supervised.
    let (b, n_img, n_txt) = (4usize, cfg.qformer.num_query_tokens, 63usize);
    let vocab = cfg.llama.vocab_size as i64;
    let mut layout = TrainBatch {
        token_ids: vec![],
        is_image: vec![],
        attention_mask: vec![],
        labels: vec![],
        images_per_row: vec![1; b],
    };
    for _ in 0..b {
        let txt: Vec<i64> = (0..n_txt).map(|_| rng.random_range(3..vocab)).collect();
        let mut ids = vec![1];
        ids.extend(std::iter::repeat_n(IMAGE_ROW_ID, n_img));
        ids.extend(&txt);
        let mut labels = vec![IGNORE_INDEX; 1 + n_img];
        labels.extend(&txt);
        let t = ids.len();
        layout
            .is_image
            .push((0..t).map(|k| i64::from(k >= 1 && k <= n_img)).collect());
        layout.attention_mask.push(vec![1; t]);
        layout.token_ids.push(ids);
        layout.labels.push(labels);
    }
    let batch = BatchTensors::new(&layout, &dev)?;
    let qf = Tensor::randn(0f32, 1.0, (b, n_img, cfg.qformer.hidden_size), &dev)?;
    println!(
        "config {path}; threads {}; LoRA params {n_params}; seq {}",
        candle_core::utils::get_num_threads(),
        layout.seq_len()
    );
    // Warm-up step.
    train_step(&model, &mut opt, 1e-4, &qf, &batch)?;
    let mut ms = Vec::with_capacity(steps);
    for _ in 0..steps {
        let s = Instant::now();
        let (loss, _) = train_step(&model, &mut opt, 1e-4, &qf, &batch)?;
        ms.push(s.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(loss);
    }
    // Breakdown: forward (loss) only, and forward + backward without the update.
    let mut fwd = Vec::new();
    let mut fb = Vec::new();
    for _ in 0..steps.min(3) {
        let s = Instant::now();
        let l = mde_train::step::loss(&model, &qf, &batch)?;
        let _ = l.to_scalar::<f32>()?;
        fwd.push(s.elapsed().as_secs_f64() * 1e3);
        let s = Instant::now();
        let l = mde_train::step::loss(&model, &qf, &batch)?;
        let _ = l.backward()?;
        fb.push(s.elapsed().as_secs_f64() * 1e3);
    }
    fwd.sort_by(|a, b| a.total_cmp(b));
    fb.sort_by(|a, b| a.total_cmp(b));
    println!(
        "breakdown: forward+loss median {:.1} ms; forward+backward median {:.1} ms",
        fwd[fwd.len() / 2],
        fb[fb.len() / 2]
    );
    ms.sort_by(|a, b| a.total_cmp(b));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "train_step: median {:.1} ms, mean {:.1} ms, min {:.1} ms over {steps} steps",
        ms[ms.len() / 2],
        mean,
        ms[0]
    );
    Ok(())
}
