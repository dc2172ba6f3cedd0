//! CPU benchmark of one `Trainer` optimizer step on the closed loop's tiny MiniGPT-4
//! (mde-loop's `TinyModelConfig` default sizes: 64 px images, ViT 2x64, Q-Former 2x64 with 16
//! queries, LLaMA 3x128, vocab 1024), random seeded weights, f32, in modes `llm+fc`
//! (vision frozen, eval preprocessing: the feature cache applies), `full`, and `lora+fc`
//! (LoRA r 16 on all 7 linear types of the LLaMA, frozen base weights, dropout 0.05).
//! Images are generated 64x64 JPEGs; text uses the golden fixture's tokenizer.
//!
//! `cargo run --release -p mde-train --example bench_full_step [-- BATCH [STEPS [SHARDS [MODES]]]]`
//!
//! SHARDS is `TrainConfig::shards` (default 1); MODES a comma list of mode names (default
//! `llm+fc,full,lora+fc`).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mde_train::data::{RecordKind, TrainRecord};
use mde_train::trainer::{ImageMode, LoraSettings, OptimSettings};
use mde_train::{RunOptions, TrainConfig, TrainDataset, TrainMode, Trainer};
use minigpt4::config::{LlamaConfig, MiniGpt4Config, QFormerConfig, TokenIds, VisionConfig};
use minigpt4::model::MiniGpt4;
use minigpt4::tokenizer::LlamaTokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_config(vocab: usize) -> MiniGpt4Config {
    MiniGpt4Config {
        vision: VisionConfig {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 256,
            patch_size: 8,
            image_size: 64,
            layer_norm_eps: 1e-6,
            ln_vision_eps: 1e-5,
        },
        qformer: QFormerConfig {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 256,
            cross_attention_frequency: 1,
            encoder_hidden_size: 64,
            layer_norm_eps: 1e-12,
            num_query_tokens: 16,
        },
        llama: LlamaConfig {
            vocab_size: vocab,
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: Some(4),
            head_dim: Some(32),
            rms_norm_eps: 1e-6,
            rope_theta: Some(10000.0),
            rope_parameters: None,
            tie_word_embeddings: false,
            max_position_embeddings: Some(256),
            bos_token_id: Some(TokenIds::One(1)),
            eos_token_id: Some(TokenIds::One(2)),
            attention_bias: false,
            mlp_bias: false,
        },
    }
}

/// A model whose every parameter is a Var in the returned map (root names), random init.
fn random_model(cfg: &MiniGpt4Config, dev: &Device) -> Result<(MiniGpt4, VarMap)> {
    let vm = VarMap::new();
    let m = MiniGpt4::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in names {
        let v = &data[n];
        let t = v.as_tensor();
        let vals: Vec<f32> = if t.rank() == 1 {
            let one = if n.contains("bias") { 0.0 } else { 1.0 };
            vec![one; t.elem_count()]
        } else {
            (0..t.elem_count())
                .map(|_| (rng.random::<f32>() - 0.5) * 0.07)
                .collect()
        };
        v.set(&Tensor::from_vec(vals, t.shape(), dev)?)?;
    }
    drop(data);
    Ok((m, vm))
}

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let steps: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let shards: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let modes: Vec<TrainMode> = args
        .get(4)
        .map_or("llm+fc,full,lora+fc", String::as_str)
        .split(',')
        .map(|m| {
            serde_json::from_value(serde_json::Value::String(m.into()))
                .with_context(|| format!("unknown mode {m}"))
        })
        .collect::<Result<_>>()?;
    let tok_path = std::env::var("MDE_GOLDEN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/fixtures/minigpt4-tiny")
        })
        .join("vicuna/tokenizer.json");
    let tok =
        LlamaTokenizer::from_file(&tok_path).with_context(|| tok_path.display().to_string())?;
    let dev = Device::Cpu;
    let cfg = tiny_config(1024.max(tok.vocab_size()));

    // 256 distinct 64x64 JPEGs with captions of about 15 words.
    let dir = tempfile::tempdir()?;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let words = [
        "a", "red", "blue", "circle", "square", "left", "of", "the", "small", "big",
    ];
    let mut records = Vec::new();
    for i in 0..256 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, (i * 7 % 256) as u8])
        });
        let p = dir.path().join(format!("{i}.jpg"));
        img.save(&p)?;
        let answer: Vec<&str> = (0..15)
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        records.push(TrainRecord {
            image: p,
            kind: RecordKind::Caption,
            question: String::new(),
            choices: vec![],
            answer_idx: None,
            answer: Some(answer.join(" ")),
            rationale: None,
        });
    }
    let ds = vec![TrainDataset {
        name: "bench".into(),
        ratio: None,
        records,
    }];
    for mode in modes {
        let (m, vm) = random_model(&cfg, &dev)?;
        let run = tempfile::tempdir()?;
        let tc = TrainConfig {
            mode,
            lora: LoraSettings {
                r: 16,
                alpha: 32.0,
                target_modules: minigpt4::llama::LORA_TARGETS.map(String::from).to_vec(),
                ..Default::default()
            },
            shards,
            optim: OptimSettings {
                init_lr: 1e-4,
                warmup_steps: 1,
                ..Default::default()
            },
            batch_size: batch,
            accum_steps: 1,
            max_epoch: 1,
            iters_per_epoch: 1000,
            checkpoint_every: 0,
            image_mode: ImageMode::Eval,
            ..Default::default()
        };
        let mut t = if mode.needs_varmap() {
            Trainer::new_full(m, vm, tok.clone(), ds.clone(), tc, run.path())?
        } else {
            // Frozen base weights must not be Vars (or backward computes their gradients).
            let frozen: std::collections::HashMap<String, Tensor> =
                minigpt4::model::detached_tensors(&vm)?
                    .into_iter()
                    .collect();
            let m = MiniGpt4::new(&cfg, VarBuilder::from_tensors(frozen, DType::F32, &dev))?;
            Trainer::new(m, tok.clone(), ds.clone(), tc, run.path())?
        };
        let params: usize = t
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum();
        // One warm-up step (fills the caches for the 256 images only partly: steady state is
        // what a long run sees once every image has been seen).
        let t0 = Instant::now();
        t.run(
            None,
            RunOptions {
                stop_after: Some(1),
                progress: false,
            },
        )?;
        let first = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let r = t.run(
            None,
            RunOptions {
                stop_after: Some(1 + steps),
                progress: false,
            },
        )?;
        let ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
        println!(
            "mode {:7} batch {batch} shards {shards}: {ms:8.1} ms/step (first step {first:.1} ms), {params} trainable params, last loss {:.4}",
            mode.name(),
            r.last().map_or(f32::NAN, |r| r.loss)
        );
    }
    Ok(())
}
