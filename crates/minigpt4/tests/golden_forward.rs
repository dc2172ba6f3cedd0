//! Golden conformance of the model against the PyTorch fixture (data-driven: fixture root from
//! `MDE_GOLDEN_DIR`, default `../../../shared/fixtures/minigpt4-tiny` from the crate dir).
//! Every size, id and tolerance is read from the fixture files.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use minigpt4::config::Blip2Config;
use minigpt4::generation::{generate, left_pad, GenerationConfig};
use minigpt4::llama::{causal_lm_loss, LoraConfig};
use minigpt4::model::{MiniGpt4, ModelPaths};
use serde_json::Value;

fn root() -> PathBuf {
    std::env::var("MDE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        })
}

struct Fx {
    root: PathBuf,
    json: Value,
    fwd: HashMap<String, Tensor>,
}

fn fixture() -> Result<Fx> {
    let root = root();
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("expected/expected.json")).context("expected.json")?,
    )?;
    let fwd =
        candle_core::safetensors::load(root.join("expected/forward.safetensors"), &Device::Cpu)?;
    Ok(Fx { root, json, fwd })
}

impl Fx {
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
    fn t(&self, k: &str) -> Result<&Tensor> {
        self.fwd
            .get(k)
            .ok_or_else(|| anyhow!("forward.safetensors lacks {k}"))
    }
    fn hf_model(&self) -> Result<MiniGpt4> {
        Ok(MiniGpt4::load(
            &ModelPaths {
                blip2: self.p("blip2"),
                vicuna: self.p("vicuna"),
                projector: Some(self.p("minigpt4/pretrained_minigpt4.pth")),
                ..Default::default()
            },
            DType::F32,
            &Device::Cpu,
        )?)
    }
    /// Row of `image` in the forward tensors (order of `batched_generation.order`).
    fn image_row(&self, image: &str, fallback: usize) -> usize {
        self.json["batched_generation"]["order"]
            .as_array()
            .and_then(|o| o.iter().position(|x| x.as_str() == Some(image)))
            .unwrap_or(fallback)
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn check(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    let d = max_abs(got, want).with_context(|| name.to_string())?;
    println!("{name}: max abs diff {d:.3e} (tol {tol:.0e})");
    anyhow::ensure!(d <= tol, "{name}: max abs diff {d} > {tol}");
    Ok(())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

const EMB_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-3;

fn check_encoders(fx: &Fx, m: &MiniGpt4, label: &str) -> Result<()> {
    let px = fx.t("pixel_values")?;
    let pre = m.vision.forward_pre_ln(px)?;
    check(
        &format!("{label} vision_pre_ln"),
        &pre,
        fx.t("vision_pre_ln")?,
        EMB_TOL,
    )?;
    let v = m.vision.forward(px)?;
    check(
        &format!("{label} vision_out"),
        &v,
        fx.t("vision_out")?,
        EMB_TOL,
    )?;
    let q = m.qformer.forward(&v)?;
    check(
        &format!("{label} qformer_out"),
        &q,
        fx.t("qformer_out")?,
        EMB_TOL,
    )?;
    let e = m.project(&q, false)?;
    check(
        &format!("{label} img_embeds"),
        &e,
        fx.t("img_embeds")?,
        EMB_TOL,
    )?;
    Ok(())
}

/// Prompt embeddings of every chat entry, in order.
fn chat_embeds(fx: &Fx, m: &MiniGpt4, img: &Tensor) -> Result<Vec<Tensor>> {
    let chats = fx.json["chat"]
        .as_array()
        .ok_or_else(|| anyhow!("no chat list"))?;
    chats
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let segs: Vec<Vec<u32>> = c["segment_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            let row = fx.image_row(c["image"].as_str().unwrap_or(""), i);
            let n_img = segs.len() - 1;
            let imgs = vec![img.get(row)?; n_img];
            Ok(m.embed_segments(&segs, &imgs)?)
        })
        .collect()
}

fn gen_cfg(fx: &Fx, n: usize) -> GenerationConfig {
    let kw = &fx.json["chat"][0]["generate_kwargs"];
    GenerationConfig {
        max_new_tokens: n,
        num_beams: 1,
        do_sample: false,
        eos_token_ids: kw["eos_token_id"]
            .as_u64()
            .map(|x| vec![x as u32])
            .unwrap_or_default(),
        output_step_logits: true,
        ..Default::default()
    }
}

fn check_chats(fx: &Fx, m: &MiniGpt4, label: &str, full: bool) -> Result<()> {
    let img = m.encode_images(fx.t("pixel_values")?)?;
    let embeds = chat_embeds(fx, m, &img)?;
    let chats = fx.json["chat"].as_array().unwrap();
    for (i, (c, e)) in chats.iter().zip(&embeds).enumerate() {
        let k = format!("chat{}", i + 1);
        // Segment ids in the tensors file agree with the JSON.
        for (s, seg) in c["segment_ids"].as_array().unwrap().iter().enumerate() {
            if let Ok(t) = fx.t(&format!("{k}_seg{s}_ids")) {
                let t: Vec<u32> = t
                    .to_dtype(DType::I64)?
                    .to_vec1::<i64>()?
                    .iter()
                    .map(|&x| x as u32)
                    .collect();
                anyhow::ensure!(
                    t == ids(seg),
                    "{k} seg{s} ids differ between json and safetensors"
                );
            }
        }
        check(
            &format!("{label} {k}_inputs_embeds"),
            e,
            fx.t(&format!("{k}_inputs_embeds"))?,
            EMB_TOL,
        )?;
        let logits = m
            .forward_embeds(&e.unsqueeze(0)?, None, None, false)?
            .squeeze(0)?;
        check(
            &format!("{label} {k}_logits"),
            &logits,
            fx.t(&format!("{k}_logits"))?,
            LOGIT_TOL,
        )?;
        if !full {
            continue;
        }
        // Training path agrees with the inference path.
        let lt = m
            .forward_embeds(&e.unsqueeze(0)?, None, None, true)?
            .squeeze(0)?;
        check(
            &format!("{label} {k}_logits (train path)"),
            &lt,
            &logits,
            1e-4,
        )?;
        let want = ids(&c["generated_ids"]);
        let out = generate(
            &m.llama,
            std::slice::from_ref(e),
            &gen_cfg(fx, want.len()),
            None,
        )?;
        anyhow::ensure!(
            out[0].tokens == want,
            "{k} generated {:?}, want {:?}",
            out[0].tokens,
            want
        );
        let steps = Tensor::stack(&out[0].step_logits, 0)?;
        check(
            &format!("{label} {k}_gen_step_logits"),
            &steps,
            fx.t(&format!("{k}_gen_step_logits"))?,
            LOGIT_TOL,
        )?;
    }
    if full {
        let (x, mask, pos) = left_pad(&embeds)?;
        check(
            "batch_inputs_embeds",
            &x,
            fx.t("batch_inputs_embeds")?,
            EMB_TOL,
        )?;
        let wm = fx
            .t("batch_attention_mask")?
            .to_dtype(DType::I64)?
            .to_vec2::<i64>()?;
        let gm = mask.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        anyhow::ensure!(wm == gm, "batch_attention_mask differs");
        let wp = fx
            .t("batch_position_ids")?
            .to_dtype(DType::I64)?
            .to_vec2::<i64>()?;
        let gp = pos.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        anyhow::ensure!(wp == gp, "batch_position_ids differ");
        let want = fx
            .t("batch_generated_ids")?
            .to_dtype(DType::I64)?
            .to_vec2::<i64>()?;
        let out = generate(&m.llama, &embeds, &gen_cfg(fx, want[0].len()), None)?;
        let wsl = fx.t("batch_gen_step_logits")?;
        for (r, o) in out.iter().enumerate() {
            let w: Vec<u32> = want[r].iter().map(|&x| x as u32).collect();
            anyhow::ensure!(o.tokens == w, "batch row {r}: {:?} vs {:?}", o.tokens, w);
            check(
                &format!("batch_gen_step_logits[{r}]"),
                &Tensor::stack(&o.step_logits, 0)?,
                &wsl.get(r)?,
                LOGIT_TOL,
            )?;
        }
    }
    Ok(())
}

#[test]
fn hf_layout_matches_pytorch() -> Result<()> {
    let fx = fixture()?;
    let m = fx.hf_model()?;
    check_encoders(&fx, &m, "hf")?;
    check_chats(&fx, &m, "hf", true)
}

/// The transposed weight storage of inference (`set_inference_layout`, used by `MiniGpt4Eval`
/// and `mde ask`) gives the same numbers, greedy tokens and batched decoding; training restores
/// the row-major storage.
#[test]
fn inference_layout_matches_pytorch() -> Result<()> {
    let fx = fixture()?;
    let mut m = fx.hf_model()?;
    m.set_inference_layout(true)?;
    assert!(m.llama.lm_head.has_inference_layout());
    assert!(m.llama_proj.has_inference_layout());
    check_encoders(&fx, &m, "hf, inference layout")?;
    check_chats(&fx, &m, "hf, inference layout", true)?;
    m.make_projector_trainable()?;
    assert!(!m.llama_proj.has_inference_layout());
    m.enable_lora(&minigpt4::llama::LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into()],
        seed: 0,
    })?;
    assert!(!m.llama.lm_head.has_inference_layout());
    Ok(())
}

#[test]
fn lavis_layout_matches_pytorch() -> Result<()> {
    let fx = fixture()?;
    let cfg = Some(fx.p("blip2/config.json"));
    for eva in [None, Some(fx.p("lavis/eva_vit_g.pth"))] {
        let label = if eva.is_some() {
            "lavis+eva_vit_g"
        } else {
            "lavis"
        };
        let m = MiniGpt4::load(
            &ModelPaths {
                blip2: fx.p("lavis/blip2_pretrained.pth"),
                eva_vit: eva,
                blip2_config: cfg.clone(),
                vicuna: fx.p("vicuna"),
                projector: Some(fx.p("minigpt4/pretrained_minigpt4.pth")),
            },
            DType::F32,
            &Device::Cpu,
        )?;
        // Sizes inferred from shapes agree with the HF config.
        let hf: Blip2Config =
            serde_json::from_str(&std::fs::read_to_string(fx.p("blip2/config.json"))?)?;
        let (hv, hq) = hf.into_parts();
        assert_eq!(m.vision.cfg.num_hidden_layers, hv.num_hidden_layers);
        assert_eq!(m.vision.cfg.intermediate_size, hv.intermediate_size);
        assert_eq!(m.qformer.cfg.num_query_tokens, hq.num_query_tokens);
        assert_eq!(m.qformer.cfg.intermediate_size, hq.intermediate_size);
        check_encoders(&fx, &m, label)?;
        check_chats(&fx, &m, label, false)?;
    }
    Ok(())
}

#[test]
fn projector_size_mismatch_is_a_clear_error() -> Result<()> {
    let fx = fixture()?;
    let dir = tempfile::tempdir()?;
    // A projector whose output width differs from the LLM's hidden size.
    let m = fx.hf_model()?;
    let (o, i) = m.llama_proj.weight.dims2()?;
    let w = Tensor::zeros((o + 3, i), DType::F32, &Device::Cpu)?;
    let b = Tensor::zeros(o + 3, DType::F32, &Device::Cpu)?;
    let p = dir.path().join("proj.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([
            ("llama_proj.weight".to_string(), w),
            ("llama_proj.bias".to_string(), b),
        ]),
        &p,
    )?;
    let err = MiniGpt4::load(
        &ModelPaths {
            blip2: fx.p("blip2"),
            vicuna: fx.p("vicuna"),
            projector: Some(p.display().to_string()),
            ..Default::default()
        },
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("llama_proj is {i}->{}", o + 3)) && err.contains("hidden size"),
        "{err}"
    );
    Ok(())
}

struct TrainBatch {
    tokens: Tensor,
    mask: Tensor,
    labels: Tensor,
    qformer_out: Tensor,
    tr: HashMap<String, Tensor>,
}

fn train_batch(fx: &Fx) -> Result<TrainBatch> {
    let tr =
        candle_core::safetensors::load(fx.root.join("expected/train.safetensors"), &Device::Cpu)?;
    let g = |k: &str| {
        tr.get(k)
            .cloned()
            .ok_or_else(|| anyhow!("train.safetensors lacks {k}"))
    };
    // -1 marks image rows in train_token_ids; cross-check with train_is_image.
    let tokens = g("train_token_ids")?;
    let is_img = g("train_is_image")?
        .to_dtype(DType::I64)?
        .to_vec2::<i64>()?;
    let tv = tokens.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    for (a, b) in tv.iter().flatten().zip(is_img.iter().flatten()) {
        anyhow::ensure!(
            (*a < 0) == (*b != 0),
            "train_token_ids and train_is_image disagree"
        );
    }
    Ok(TrainBatch {
        tokens,
        mask: g("train_attention_mask")?,
        labels: g("train_labels")?,
        qformer_out: g("train_qformer_out")?,
        tr,
    })
}

fn train_loss(m: &MiniGpt4, b: &TrainBatch) -> Result<(Tensor, Tensor, Tensor)> {
    let img = m.project(&b.qformer_out, true)?;
    let emb = m.embed_layout(&b.tokens, &img)?;
    let (bs, t, _) = emb.dims3()?;
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu)?
        .unsqueeze(0)?
        .repeat((bs, 1))?;
    let logits = m.forward_embeds(&emb, Some(&b.mask), Some(&pos), true)?;
    let loss = causal_lm_loss(&logits, &b.labels)?;
    Ok((loss, logits, emb))
}

#[test]
fn training_path_gradients_reach_llama_proj() -> Result<()> {
    let fx = fixture()?;
    let b = train_batch(&fx)?;
    let mut m = fx.hf_model()?;
    let vars = m.make_projector_trainable()?;
    let (loss, logits, emb) = train_loss(&m, &b)?;
    check(
        "train_inputs_embeds_step0",
        &emb,
        &b.tr["train_inputs_embeds_step0"],
        EMB_TOL,
    )?;
    // Attended positions only.
    let mask = b.mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let lm = logits.broadcast_mul(&mask)?;
    let wm = b.tr["train_logits_step0"].broadcast_mul(&mask)?;
    check("train_logits_step0", &lm, &wm, LOGIT_TOL)?;
    let want = fx.json["training"]["fc"]["losses"][0].as_f64().unwrap();
    let got = loss.to_scalar::<f32>()? as f64;
    println!("loss {got} want {want}");
    anyhow::ensure!(((got - want) / want).abs() <= 1e-4, "loss {got} vs {want}");
    let grads = loss.backward()?;
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| anyhow!("no gradient for {name}"))?;
        check(
            &format!("grad {name}"),
            g,
            &b.tr[&format!("train_fc_grad_step0_{name}")],
            1e-5,
        )?;
    }
    Ok(())
}

#[test]
fn lora_gradients_match_peft() -> Result<()> {
    let fx = fixture()?;
    let b = train_batch(&fx)?;
    let mut m = fx.hf_model()?;
    let lc = &fx.json["training"]["lora"]["lora_config"];
    let alpha = lc["lora_alpha"].as_f64().unwrap();
    let init: HashMap<String, Tensor> =
        b.tr.iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("train_lora_init.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
    let n = m.llama.load_lora(&init, alpha, 0.0, 0)?;
    assert_eq!(n * 2, init.len());
    m.make_projector_trainable()?;
    let (loss, _, _) = train_loss(&m, &b)?;
    let grads = loss.backward()?;
    for (name, v) in m.trainable_vars() {
        let key = if name.starts_with("llama_proj") {
            format!("train_lora_grad_step0_{name}")
        } else {
            format!("train_lora_grad_step0.{name}")
        };
        let g = grads
            .get(v.as_tensor())
            .cloned()
            .unwrap_or(v.as_tensor().zeros_like()?);
        check(&format!("lora grad {name}"), &g, &b.tr[&key], 1e-5)?;
    }
    // PEFT-like init API: targets, shapes and B = 0 as in the fixture's init adapter.
    let mut m2 = fx.hf_model()?;
    let targets: Vec<String> = lc["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    m2.enable_lora(&LoraConfig {
        r: lc["r"].as_u64().unwrap() as usize,
        alpha,
        dropout: 0.0,
        target_modules: targets,
        seed: 1,
    })?;
    let vars = m2.trainable_vars();
    assert_eq!(vars.len(), init.len());
    for (k, v) in vars {
        let want = &init[&k];
        assert_eq!(v.as_tensor().dims(), want.dims(), "{k}");
        if k.contains("lora_B") {
            assert_eq!(max_abs(v.as_tensor(), want)?, 0.0);
        } else {
            let bound = 1.0 / (want.dim(1)? as f32).sqrt();
            let mx = v
                .as_tensor()
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(mx <= bound && mx > 0.0);
        }
    }
    // Merging keeps the function: with non-zero B, merged logits == adapter logits.
    let fin: HashMap<String, Tensor> =
        b.tr.iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("train_lora_final.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
    let mut m3 = fx.hf_model()?;
    m3.llama.load_lora(&fin, alpha, 0.0, 0)?;
    let e = m3.llama.embed_ids(&[1, 5, 9, 11])?.unsqueeze(0)?;
    let before = m3.forward_embeds(&e, None, None, false)?;
    m3.llama.merge_lora()?;
    let after = m3.forward_embeds(&e, None, None, false)?;
    check("merged lora logits", &after, &before, 1e-4)?;
    Ok(())
}

#[test]
fn scoring_matches_full_forward() -> Result<()> {
    let fx = fixture()?;
    let m = fx.hf_model()?;
    let img = m.encode_images(fx.t("pixel_values")?)?;
    let e = &chat_embeds(&fx, &m, &img)?[0];
    let cands: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![300], vec![42, 43]];
    let scores = m.score_candidates(e, &cands)?;
    for (c, s) in cands.iter().zip(&scores) {
        let full = Tensor::cat(&[e.clone(), m.llama.embed_ids(c)?], 0)?.unsqueeze(0)?;
        let lg = m.forward_embeds(&full, None, None, false)?.squeeze(0)?;
        let t = e.dim(0)?;
        let lsm = candle_nn::ops::log_softmax(&lg, 1)?.to_vec2::<f32>()?;
        let want: f32 = -c
            .iter()
            .enumerate()
            .map(|(k, &tok)| lsm[t - 1 + k][tok as usize])
            .sum::<f32>()
            / c.len() as f32;
        assert!((want - s).abs() < 1e-4, "{s} vs {want}");
    }
    Ok(())
}

/// Runs the fixture's 6 training steps in `mode` ("fc" or "lora") with candle's AdamW (two
/// instances: with / without weight decay, per the MiniGPT-4 runner rule listed in the JSON).
fn run_training(mode: &str, final_tol: f32) -> Result<()> {
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
    let fx = fixture()?;
    let b = train_batch(&fx)?;
    let mut m = fx.hf_model()?;
    let tr = &fx.json["training"];
    let mt = &tr[mode];
    if mode == "lora" {
        let alpha = mt["lora_config"]["lora_alpha"].as_f64().unwrap();
        let init: HashMap<String, Tensor> =
            b.tr.iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("train_lora_init.")
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect();
        m.llama.load_lora(&init, alpha, 0.0, 0)?;
    }
    m.make_projector_trainable()?;
    let vars = m.trainable_vars();
    let opt_cfg = &tr["optimizer"];
    let betas = opt_cfg["betas"].as_array().unwrap();
    let mk = |wd: f64| ParamsAdamW {
        lr: 0.0,
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: opt_cfg["eps"].as_f64().unwrap(),
        weight_decay: wd,
    };
    let wd = opt_cfg["weight_decay"].as_f64().unwrap();
    // JSON names are MiniGPT-4 parameter names: `llama_model.` prefix and PEFT's `.default`.
    let decay: Vec<String> = mt["weight_decay_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap()
                .trim_start_matches("llama_model.")
                .replace(".default.weight", ".weight")
        })
        .collect();
    let (dv, nv): (Vec<_>, Vec<_>) = vars.iter().partition(|(n, _)| decay.contains(n));
    assert_eq!(
        dv.len(),
        decay.len(),
        "every decayed parameter is trainable"
    );
    let mut od = AdamW::new(dv.into_iter().map(|(_, v)| v.clone()).collect(), mk(wd))?;
    let mut on = AdamW::new(nv.into_iter().map(|(_, v)| v.clone()).collect(), mk(0.0))?;
    let lrs = mt["lrs"].as_array().unwrap();
    let losses = mt["losses"].as_array().unwrap();
    for (step, (lr, want)) in lrs.iter().zip(losses).enumerate() {
        od.set_learning_rate(lr.as_f64().unwrap());
        on.set_learning_rate(lr.as_f64().unwrap());
        let (loss, _, _) = train_loss(&m, &b)?;
        let got = loss.to_scalar::<f32>()? as f64;
        let want = want.as_f64().unwrap();
        anyhow::ensure!(
            ((got - want) / want).abs() <= 1e-4,
            "{mode} step {step}: loss {got} vs {want}"
        );
        let grads = loss.backward()?;
        od.step(&grads)?;
        on.step(&grads)?;
    }
    for (name, v) in &vars {
        let key = if name.starts_with("llama_proj") {
            format!("train_{mode}_final_{name}")
        } else {
            format!("train_{mode}_final.{name}")
        };
        check(
            &format!("{mode} final {name}"),
            v.as_tensor(),
            &b.tr[&key],
            final_tol,
        )?;
    }
    let (loss, _, _) = train_loss(&m, &b)?;
    let want = mt["loss_after_final_step"].as_f64().unwrap();
    let got = loss.to_scalar::<f32>()? as f64;
    anyhow::ensure!(
        ((got - want) / want).abs() <= 1e-4,
        "{mode} final loss {got} vs {want}"
    );
    Ok(())
}

#[test]
fn fc_training_six_steps_match_pytorch() -> Result<()> {
    run_training("fc", 2e-5)
}

#[test]
fn lora_training_six_steps_match_pytorch() -> Result<()> {
    run_training("lora", 1e-4)
}

#[test]
fn lora_adapter_files_load() -> Result<()> {
    let fx = fixture()?;
    let b = train_batch(&fx)?;
    let e = {
        let m = fx.hf_model()?;
        m.llama.embed_ids(&[1, 5, 9, 11, 40])?.unsqueeze(0)?
    };
    // Reference: the final adapter tensors from train.safetensors.
    let alpha = fx.json["training"]["lora"]["lora_config"]["lora_alpha"]
        .as_f64()
        .unwrap();
    let fin: HashMap<String, Tensor> =
        b.tr.iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("train_lora_final.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
    let mut r = fx.hf_model()?;
    r.llama.load_lora(&fin, alpha, 0.0, 0)?;
    let want = r.forward_embeds(&e, None, None, false)?;
    // PEFT folder.
    let mut m = fx.hf_model()?;
    let n = m.load_lora_adapter(&fx.root.join("expected/lora_final_adapter"), None)?;
    assert_eq!(n * 2, fin.len());
    check(
        "peft adapter logits",
        &m.forward_embeds(&e, None, None, false)?,
        &want,
        1e-5,
    )?;
    // MiniGPT-4 checkpoint (optional in the fixture): LoRA + llama_proj.
    let ck = fx.root.join("expected/train_lora_final_minigpt4_ckpt.pth");
    if ck.is_file() {
        let mut m = fx.hf_model()?;
        m.load_lora_adapter(&ck, Some(alpha))?;
        check(
            "ckpt adapter logits",
            &m.forward_embeds(&e, None, None, false)?,
            &want,
            1e-5,
        )?;
        check(
            "ckpt llama_proj",
            &m.llama_proj.weight,
            &b.tr["train_lora_final_llama_proj.weight"],
            1e-4,
        )?;
    }
    Ok(())
}
