//! Golden 6-step stage-2 training (fc and LoRA modes) against expected.json losses and
//! train.safetensors gradients / final weights. Everything (batch, schedule, optimizer
//! hyper-parameters, LoRA init) is read from the fixture.
mod common;
use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use mde_train::batch::{build_batch, LayoutConfig, TrainSample};
use mde_train::optim::{AdamW, AdamWConfig};
use mde_train::peft::PeftAdapter;
use mde_train::schedule::LinearWarmupCosine;
use mde_train::step::{loss, train_step, BatchTensors};
use minigpt4::model::{MiniGpt4, ModelPaths};
use minigpt4::tokenizer::LlamaTokenizer;
use serde_json::Value;

struct Fx {
    exp: Value,
    tensors: HashMap<String, Tensor>,
    batch: BatchTensors,
    qformer_out: Tensor,
    sched: LinearWarmupCosine,
    opt_cfg: AdamWConfig,
}

fn fixture() -> Result<Fx> {
    let exp = common::expected()?;
    let tensors = common::train_tensors()?;
    let tok = LlamaTokenizer::from_dir(common::golden_dir().join("vicuna"))?;
    let b = &exp["training"]["batch"];
    let prompts = common::strings(&b["prompts"], "prompts")?;
    let answers = common::strings(&b["answers"], "answers")?;
    let samples: Vec<TrainSample> = prompts
        .iter()
        .zip(&answers)
        .map(|(p, a)| TrainSample {
            prompt: p.clone(),
            answer: a.clone(),
        })
        .collect();
    let n_img = exp["config"]["qformer"]["num_query_tokens"]
        .as_u64()
        .context("num_query_tokens")? as usize;
    let end_sym = exp["config"]["end_sym"].as_str().context("end_sym")?;
    let layout = build_batch(&tok, &samples, end_sym, LayoutConfig::minigpt4(n_img))?;
    let batch = BatchTensors::new(&layout, &Device::Cpu)?;
    let s = &exp["training"]["schedule"];
    let num = |k: &str| s[k].as_f64().with_context(|| format!("schedule.{k}"));
    let sched = LinearWarmupCosine {
        max_epoch: num("max_epoch")? as usize,
        iters_per_epoch: num("iters_per_epoch")? as usize,
        init_lr: num("init_lr")?,
        min_lr: num("min_lr")?,
        warmup_lr: num("warmup_lr")?,
        warmup_steps: num("warmup_steps")? as usize,
    };
    let o = &exp["training"]["optimizer"];
    let betas = common::f64s(&o["betas"], "betas")?;
    let opt_cfg = AdamWConfig {
        lr: sched.lr_at(0),
        beta1: betas[0],
        beta2: betas[1],
        eps: o["eps"].as_f64().context("eps")?,
        weight_decay: o["weight_decay"].as_f64().context("weight_decay")?,
    };
    let qformer_out = tensors
        .get("train_qformer_out")
        .context("train_qformer_out")?
        .clone();
    Ok(Fx {
        exp,
        tensors,
        batch,
        qformer_out,
        sched,
        opt_cfg,
    })
}

fn model() -> Result<MiniGpt4> {
    let root = common::golden_dir();
    let p = |r: &str| root.join(r).display().to_string();
    Ok(MiniGpt4::load(
        &ModelPaths {
            blip2: p("blip2"),
            vicuna: p("vicuna"),
            projector: Some(p("minigpt4/pretrained_minigpt4.pth")),
            ..Default::default()
        },
        DType::F32,
        &Device::Cpu,
    )?)
}

fn check_loss(got: f32, want: f64, what: &str) {
    let rel = ((got as f64 - want) / want).abs();
    eprintln!("{what}: loss {got} (want {want}, rel {rel:.1e})");
    assert!(rel <= 1e-4, "{what}: loss {got} vs {want} (rel {rel:e})");
}

/// Runs the golden schedule; returns the model after the steps.
fn run(fx: &Fx, mode: &str, mut m: MiniGpt4, grad_prefix: &str, grad_tol: f32) -> Result<MiniGpt4> {
    let mut vars = m.make_projector_trainable()?;
    vars.extend(m.llama.lora_vars());
    // The weight-decay split must be the one the fixture reports.
    let names_runner = |n: &str| -> String {
        mde_train::peft::LoraKey::parse(n)
            .map(|k| k.runner_key())
            .unwrap_or_else(|| n.to_string())
    };
    let runner_vars: Vec<(String, candle_core::Var)> = vars
        .iter()
        .map(|(n, v)| (names_runner(n), v.clone()))
        .collect();
    let mut opt = AdamW::new_runner_groups(runner_vars.clone(), fx.opt_cfg)?;
    if let Some(want) = fx.exp["training"][mode]["weight_decay_params"].as_array() {
        let mut want: Vec<String> = want
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        want.sort();
        let mut got = opt
            .groups()
            .iter()
            .find(|g| g.weight_decay > 0.0)
            .map(|g| g.names.clone())
            .unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "{mode}: weight-decay group");
    }
    let losses = common::f64s(&fx.exp["training"][mode]["losses"], "losses")?;
    for (step, want) in losses.iter().enumerate() {
        let (l, grads) = train_step(
            &m,
            &mut opt,
            fx.sched.lr_at(step),
            &fx.qformer_out,
            &fx.batch,
        )?;
        check_loss(l, *want, &format!("{mode} step {step}"));
        if step == 0 {
            let mut checked = 0;
            for (name, var) in &vars {
                let key = if name.starts_with("llama_proj") {
                    format!("{grad_prefix}_{name}")
                } else {
                    format!("train_lora_grad_step0.{name}")
                };
                let Some(want) = fx.tensors.get(&key) else {
                    continue;
                };
                let g = grads
                    .get(var.as_tensor())
                    .with_context(|| format!("no gradient for {name}"))?;
                let d = common::max_abs_diff(g, want)?;
                eprintln!("{mode} step-0 grad {name}: max abs diff {d:e}");
                assert!(d <= grad_tol, "{mode} grad {name}: max abs diff {d}");
                checked += 1;
            }
            assert_eq!(
                checked,
                vars.len(),
                "{mode}: step-0 gradients missing from the fixture"
            );
        }
    }
    if let Some(want) = fx.exp["training"][mode]["loss_after_final_step"].as_f64() {
        let l = loss(&m, &fx.qformer_out, &fx.batch)?.to_scalar::<f32>()?;
        check_loss(l, want, &format!("{mode} after final step"));
    }
    Ok(m)
}

#[test]
fn fc_mode_six_steps() -> Result<()> {
    let fx = fixture()?;
    if fx.exp["training"].get("fc").is_none() {
        return Ok(());
    }
    let m = run(&fx, "fc", model()?, "train_fc_grad_step0", 1e-5)?;
    for (k, t) in [
        ("weight", &m.llama_proj.weight),
        ("bias", m.llama_proj.bias.as_ref().context("bias")?),
    ] {
        let want = fx
            .tensors
            .get(&format!("train_fc_final_llama_proj.{k}"))
            .context("fc final")?;
        let d = common::max_abs_diff(t, want)?;
        eprintln!("fc final llama_proj.{k}: max abs diff {d:e}");
        assert!(d <= 2e-5, "fc final llama_proj.{k}: {d}");
    }
    Ok(())
}

#[test]
fn lora_mode_six_steps() -> Result<()> {
    let fx = fixture()?;
    if fx.exp["training"].get("lora").is_none() {
        return Ok(());
    }
    let init = PeftAdapter::load(
        &common::golden_dir().join("expected/lora_init_adapter"),
        &Device::Cpu,
    )?;
    let alpha = init.lora_alpha().context("lora_alpha")?;
    let mut m = model()?;
    let tensors: HashMap<String, Tensor> = init
        .tensors
        .iter()
        .map(|(k, t)| (k.peft_key(), t.clone()))
        .collect();
    let n = m.llama.load_lora(&tensors, alpha, 0.0, 0)?;
    assert_eq!(n * 2, init.tensors.len());
    let m = run(&fx, "lora", m, "train_lora_grad_step0", 1e-5)?;
    for (name, var) in m.llama.lora_vars() {
        let want = fx
            .tensors
            .get(&format!("train_lora_final.{name}"))
            .with_context(|| format!("final {name}"))?;
        let d = common::max_abs_diff(var.as_tensor(), want)?;
        eprintln!("lora final {name}: max abs diff {d:e}");
        assert!(d <= 1e-4, "lora final {name}: {d}");
    }
    for (k, t) in [
        ("weight", &m.llama_proj.weight),
        ("bias", m.llama_proj.bias.as_ref().context("bias")?),
    ] {
        let want = fx
            .tensors
            .get(&format!("train_lora_final_llama_proj.{k}"))
            .context("lora final proj")?;
        let d = common::max_abs_diff(t, want)?;
        assert!(d <= 1e-4, "lora final llama_proj.{k}: {d}");
    }
    Ok(())
}
