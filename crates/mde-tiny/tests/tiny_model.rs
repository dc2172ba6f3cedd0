//! The tiny base model: tokenizer pipeline and round trips, the real loaders, a forward pass
//! and greedy generation on a world image, reproducibility and reuse.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use mde_tiny::tiny::{
    build_base_model, load_trainable, BaseModel, CorpusSource, InitScheme, TinyModelConfig,
};
use mde_world::{BaseVariant, World, WorldConfig};
use minigpt4::generation::{generate, GenerationConfig};
use minigpt4::preprocess::{load_rgb, ImageProcessor};
use minigpt4::MiniGpt4;

fn world(dir: &Path) -> anyhow::Result<World> {
    Ok(World::generate(&WorldConfig::tiny(7), dir)?)
}

/// A smaller model than the default so that the test stays quick in the dev profile.
fn small_cfg() -> TinyModelConfig {
    TinyModelConfig {
        llm_layers: 2,
        vocab_size: 600,
        ..Default::default()
    }
}

fn world_texts(w: &World) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for r in w.load_base_vqa(BaseVariant::Unbalanced)? {
        v.push(r.question.clone());
        v.extend(r.choices.iter().cloned());
        v.push(r.raw_instructions.clone());
        v.push(format!(
            "The answer is ({}) {}.###",
            (b'A' + r.correct_choice_idx as u8) as char,
            r.answer
        ));
    }
    for c in w.load_base_captions()? {
        v.push(c.caption);
    }
    for a in w.load_aokvqa()? {
        v.push(a.question);
        v.extend(a.rationales);
    }
    Ok(v)
}

#[test]
fn tokenizer_pipeline_and_round_trip() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = world(&tmp.path().join("world"))?;
    let cfg = small_cfg();
    let base = build_base_model(
        &cfg,
        CorpusSource::WorldDir(w.dir()),
        &tmp.path().join("base"),
        3,
    )?;
    let tok = base.tokenizer()?;
    // Ids and pipeline as in LLaMA's tokenizer.json.
    assert_eq!(tok.vocab_size(), base.manifest.vocab_size);
    assert!(tok.vocab_size() <= cfg.vocab_size);
    assert_eq!(tok.unk_id(), Some(0));
    assert_eq!((tok.bos_id(), tok.eos_id()), (1, 2));
    assert_eq!(tok.token_to_id("<0x00>"), Some(3));
    assert_eq!(tok.token_to_id("<0xFF>"), Some(258));
    assert_eq!(tok.pad_id() as usize, tok.vocab_size() - 1);
    assert_eq!(tok.id_to_token(tok.pad_id()).as_deref(), Some("$$"));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.vicuna_dir().join("tokenizer.json"))?)?;
    assert_eq!(j["pre_tokenizer"]["type"], "Metaspace");
    assert_eq!(j["pre_tokenizer"]["prepend_scheme"], "first");
    assert_eq!(j["pre_tokenizer"]["split"], false);
    assert_eq!(j["model"]["type"], "BPE");
    assert_eq!(j["model"]["byte_fallback"], true);
    let dec: Vec<&str> = j["decoder"]["decoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(dec, ["Replace", "ByteFallback", "Fuse", "Strip"]);
    assert_eq!(j["added_tokens"].as_array().unwrap().len(), 3);
    // Learned pieces exist (the corpus words are mostly single pieces).
    assert!(tok.vocab_size() > 259 + 50, "vocab {}", tok.vocab_size());

    // Round trip and compactness on world texts.
    let texts = world_texts(&w)?;
    assert!(!texts.is_empty());
    let (mut n_tok, mut n_words) = (0usize, 0usize);
    for t in &texts {
        let ids = tok.encode(t, true)?;
        assert_eq!(ids[0], tok.bos_id());
        assert!(!ids.contains(&0), "{t:?} has <unk>");
        assert_eq!(tok.decode(&ids, true)?, *t, "round trip of {t:?}");
        n_tok += ids.len() - 1;
        n_words += t.split_whitespace().count();
    }
    assert!(
        (n_tok as f64) < 2.0 * n_words as f64,
        "{n_tok} tokens for {n_words} words"
    );
    // Unseen characters fall back to bytes and still round-trip.
    let odd = "Ünïcødé ✓ text";
    assert_eq!(tok.decode(&tok.encode(odd, false)?, true)?, odd);

    // "###" is never glued to neighbours: answers end with a clean stop sequence.
    assert!(tok.ids_containing_stop_text().is_empty());
    let stops = tok.stop_sequences();
    assert!(!stops.is_empty());
    for t in texts.iter().filter(|t| t.ends_with("###")) {
        let ids = tok.encode(t, false)?;
        assert!(
            stops.iter().any(|s| ids.ends_with(s)),
            "{t:?} -> {:?}",
            tok.encode_pieces(t, false)?
        );
    }
    // Likelihood ranking scores a choice's own pieces after "The answer is": they must be the
    // pieces training saw there (no `▁red.` piece that glues the answer to its full stop).
    let prefix = tok.encode("The answer is", false)?;
    let stop = vec![tok.token_to_id(".").expect("`.` is a piece")];
    for r in w.load_base_vqa(BaseVariant::Unbalanced)? {
        for c in &r.choices {
            let full = tok.encode(&format!("The answer is {c}."), false)?;
            let parts = [prefix.clone(), tok.encode(c, false)?, stop.clone()].concat();
            assert_eq!(
                full,
                parts,
                "{c:?}: {:?}",
                tok.encode_pieces(&format!("The answer is {c}."), false)?
            );
        }
    }
    let seg = tok.encode_pieces("###Human: <Img>", false)?;
    assert_eq!(
        seg.concat().replace('▁', " ").trim_start(),
        "###Human: <Img>"
    );
    Ok(())
}

fn image_pixels(w: &World, base: &BaseModel) -> anyhow::Result<Tensor> {
    let id = w.pool_image_ids()[0];
    let img = load_rgb(w.image_path(id).expect("pool image"))?;
    let proc = ImageProcessor::eval(base.manifest.config.image_size as u32);
    Ok(proc.process_eval(&img, &Device::Cpu)?.unsqueeze(0)?)
}

#[test]
fn loads_forwards_and_generates() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = world(&tmp.path().join("world"))?;
    let cfg = small_cfg();
    let base = build_base_model(
        &cfg,
        CorpusSource::WorldDir(w.dir()),
        &tmp.path().join("base"),
        11,
    )?;
    let model = MiniGpt4::load(&base.model_paths(), DType::F32, &Device::Cpu)?;
    let mc = model.config();
    assert_eq!(mc, base.config());
    assert_eq!(mc.llama.vocab_size, base.manifest.vocab_size);
    let tok = base.tokenizer()?;

    let px = image_pixels(&w, &base)?;
    let img = model.encode_images(&px)?;
    assert_eq!(img.dims(), &[1, cfg.num_query_tokens, cfg.llm_hidden]);
    let q = &w.load_aokvqa()?[0];
    let seg0 = tok.encode("###Human: <Img>", true)?;
    let seg1 = tok.encode(&format!("</Img> {}###Assistant: ", q.question), false)?;
    let prompt = model.embed_segments(&[seg0.clone(), seg1.clone()], &[img.get(0)?])?;
    let t = seg0.len() + cfg.num_query_tokens + seg1.len();
    assert_eq!(prompt.dims(), &[t, cfg.llm_hidden]);
    let logits = model.forward_embeds(&prompt.unsqueeze(0)?, None, None, false)?;
    assert_eq!(logits.dims(), &[1, t, base.manifest.vocab_size]);
    let lv = logits.flatten_all()?.to_vec1::<f32>()?;
    assert!(lv.iter().all(|x| x.is_finite()));
    // Random init: logits are small but not constant.
    let spread =
        lv.iter().cloned().fold(f32::MIN, f32::max) - lv.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3 && spread < 50.0, "logit spread {spread}");
    let last = logits.i((0, t - 1))?;
    let argmax = last.argmax(D::Minus1)?.to_scalar::<u32>()?;

    let gcfg = GenerationConfig {
        max_new_tokens: 5,
        eos_token_ids: vec![],
        ..Default::default()
    };
    let out = generate(&model.llama, &[prompt], &gcfg, None)?;
    assert_eq!(out[0].tokens.len(), 5);
    assert_eq!(
        out[0].tokens[0], argmax,
        "greedy step 0 must be the argmax of the full forward"
    );
    assert!(out[0]
        .tokens
        .iter()
        .all(|&i| (i as usize) < base.manifest.vocab_size));
    let _text = tok.decode(&out[0].tokens, true)?;

    // The all-Var copy computes the same logits and yields gradients for every LLaMA tensor.
    let (tm, varmap) = load_trainable(&base, &Device::Cpu)?;
    let img2 = tm.project(&tm.qformer_features(&px)?.detach(), true)?;
    let p2 = tm.embed_segments(&[seg0, seg1], &[img2.get(0)?])?;
    let l2 = tm.forward_embeds(&p2.unsqueeze(0)?, None, None, true)?;
    let diff = (l2 - &logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "trainable copy differs by {diff}");
    let loss = candle_nn::loss::cross_entropy(
        &logits_last(&tm, &p2)?,
        &Tensor::new(&[5u32], &Device::Cpu)?,
    )?;
    let grads = loss.backward()?;
    let data = varmap.data().lock().unwrap();
    let with_grad = data
        .iter()
        .filter(|(k, v)| k.starts_with("llama_") && grads.get(v.as_tensor()).is_some())
        .count();
    let llama_vars = data.keys().filter(|k| k.starts_with("llama_")).count();
    assert_eq!(
        with_grad, llama_vars,
        "every projector/LLaMA tensor gets a gradient"
    );
    Ok(())
}

fn logits_last(m: &MiniGpt4, p: &Tensor) -> anyhow::Result<Tensor> {
    let l = m.forward_embeds(&p.unsqueeze(0)?, None, None, true)?;
    let t = l.dim(1)?;
    Ok(l.i((.., t - 1, ..))?)
}

/// Mean and (population) standard deviation of every element.
fn mean_sd(t: &Tensor) -> anyhow::Result<(f64, f64)> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok((mean, sd))
}

#[test]
fn reproducible_and_reused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "What color is the {} number {}? The answer is ({}) blue.###",
                ["circle", "square", "triangle"][i % 3],
                i % 7,
                ["A", "B", "C", "D"][i % 4]
            )
        })
        .collect();
    let cfg = TinyModelConfig {
        vocab_size: 400,
        llm_layers: 1,
        ..Default::default()
    };
    let a = build_base_model(&cfg, CorpusSource::Texts(&texts), &tmp.path().join("a"), 5)?;
    let b = build_base_model(&cfg, CorpusSource::Texts(&texts), &tmp.path().join("b"), 5)?;
    let c = build_base_model(&cfg, CorpusSource::Texts(&texts), &tmp.path().join("c"), 6)?;
    assert!(!a.reused && !b.reused);
    for rel in a.manifest.files.keys() {
        let fa = std::fs::read(a.root.join(rel))?;
        assert_eq!(
            fa,
            std::fs::read(b.root.join(rel))?,
            "{rel} differs for the same seed"
        );
    }
    assert_eq!(
        a.manifest.files["vicuna/tokenizer.json"],
        c.manifest.files["vicuna/tokenizer.json"]
    );
    assert_ne!(
        a.manifest.files["vicuna/model.safetensors"],
        c.manifest.files["vicuna/model.safetensors"]
    );
    assert_ne!(
        a.manifest.files["blip2/model.safetensors"],
        c.manifest.files["blip2/model.safetensors"]
    );
    // Same inputs: reused; a corrupted file or another config: rebuilt.
    let a2 = build_base_model(&cfg, CorpusSource::Texts(&texts), &a.root, 5)?;
    assert!(a2.reused);
    assert_eq!(a2.manifest, a.manifest);
    std::fs::write(a.root.join("minigpt4/projector.safetensors"), b"garbage")?;
    let a3 = build_base_model(&cfg, CorpusSource::Texts(&texts), &a.root, 5)?;
    assert!(!a3.reused);
    assert_eq!(a3.manifest, a.manifest);
    let cfg2 = TinyModelConfig {
        llm_mlp: 320,
        ..cfg.clone()
    };
    let a4 = build_base_model(&cfg2, CorpusSource::Texts(&texts), &a.root, 5)?;
    assert!(!a4.reused);
    assert_ne!(a4.manifest.key, a.manifest.key);
    // Init statistics: norms 1, biases 0, weights ~N(0, init_std).
    let t = candle_core::safetensors::load(a.root.join("vicuna/model.safetensors"), &Device::Cpu)?;
    let norm = t["model.norm.weight"].to_vec1::<f32>()?;
    assert!(norm.iter().all(|&x| x == 1.0));
    let (mean, sd) = mean_sd(&t["model.layers.0.self_attn.q_proj.weight"])?;
    assert!(
        mean.abs() < 0.002 && (sd - cfg.init_std).abs() < 0.002,
        "mean {mean} sd {sd}"
    );
    let bl = candle_core::safetensors::load(a.root.join("blip2/model.safetensors"), &Device::Cpu)?;
    let qkvb = bl["vision_model.encoder.layers.0.self_attn.qkv.bias"].to_vec1::<f32>()?;
    assert!(qkvb.iter().all(|&x| x == 0.0));
    // Bad config is a clear error.
    let bad = TinyModelConfig {
        llm_heads: 3,
        ..cfg
    };
    let e =
        build_base_model(&bad, CorpusSource::Texts(&texts), &tmp.path().join("d"), 5).unwrap_err();
    assert!(e.to_string().contains("llm_hidden"), "{e}");
    Ok(())
}

#[test]
fn fan_in_init_scales_matrices_and_keeps_tables_at_unit_std() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let texts: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "the {} shape number {i} is red.###",
                ["big", "small"][i % 2]
            )
        })
        .collect();
    let cfg = TinyModelConfig {
        vocab_size: 300,
        llm_layers: 1,
        init: InitScheme::FanIn,
        init_std: 1.0,
        ..Default::default()
    };
    let a = build_base_model(&cfg, CorpusSource::Texts(&texts), tmp.path(), 3)?;
    let dev = Device::Cpu;
    let ll = candle_core::safetensors::load(a.root.join("vicuna/model.safetensors"), &dev)?;
    let bl = candle_core::safetensors::load(a.root.join("blip2/model.safetensors"), &dev)?;
    let close = |(m, sd): (f64, f64), want: f64, what: &str| {
        assert!(
            m.abs() < 0.1 * want && (sd - want).abs() < 0.08 * want,
            "{what}: mean {m} sd {sd}, want sd {want}"
        );
    };
    let h = cfg.llm_hidden as f64;
    close(
        mean_sd(&ll["model.layers.0.self_attn.q_proj.weight"])?,
        1.0 / h.sqrt(),
        "q_proj",
    );
    let mlp = cfg.llm_mlp as f64;
    close(
        mean_sd(&ll["model.layers.0.mlp.down_proj.weight"])?,
        1.0 / mlp.sqrt(),
        "down_proj",
    );
    close(
        mean_sd(&ll["model.embed_tokens.weight"])?,
        1.0,
        "embed_tokens",
    );
    let p = cfg.patch_size as f64;
    close(
        mean_sd(&bl["vision_model.embeddings.patch_embedding.weight"])?,
        1.0 / (3.0 * p * p).sqrt(),
        "patch_embedding",
    );
    close(mean_sd(&bl["query_tokens"])?, 1.0, "query_tokens");
    close(
        mean_sd(&bl["vision_model.embeddings.position_embedding"])?,
        1.0,
        "position_embedding",
    );
    let norm = ll["model.norm.weight"].to_vec1::<f32>()?;
    assert!(norm.iter().all(|&x| x == 1.0));
    Ok(())
}

/// Full training reaches the vision tower and the Q-Former with correct gradients: for
/// `f = sum(image_embeds * R)`, the f32 gradients (fused training kernels) equal the f64 ones
/// (candle's composite ops), and those equal central finite differences.
#[test]
fn full_mode_image_path_gradients_match_finite_differences() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = world(&tmp.path().join("world"))?;
    let cfg = TinyModelConfig {
        vision_pos_init_std: Some(0.5),
        init_std: 0.05,
        ..small_cfg()
    };
    let base = build_base_model(
        &cfg,
        CorpusSource::WorldDir(w.dir()),
        &tmp.path().join("base"),
        5,
    )?;
    let (_, pos_sd) = mean_sd(
        &candle_core::safetensors::load(base.blip2_dir().join("model.safetensors"), &Device::Cpu)?
            ["vision_model.embeddings.position_embedding"],
    )?;
    assert!(
        (pos_sd - 0.5).abs() < 0.05,
        "position embedding sd {pos_sd}"
    );
    let px = Tensor::cat(
        &[
            image_pixels(&w, &base)?,
            image_pixels(&w, &base)?.flip(&[3])?,
        ],
        0,
    )?;
    let probe = [
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding",
        "vision_model.encoder.layers.0.self_attn.qkv.weight",
        "vision_model.encoder.layers.1.mlp.fc1.weight",
        "vision_model.post_layernorm.weight",
        "qformer.encoder.layer.0.crossattention.attention.key.weight",
        "qformer.encoder.layer.1.attention.attention.value.weight",
        "qformer.layernorm.bias",
        "query_tokens",
    ];
    let mut by_dtype = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let (m, vm) = MiniGpt4::load_varmap(&base.model_paths(), dt, &Device::Cpu)?;
        let px = px.to_dtype(dt)?;
        let f = |m: &MiniGpt4| -> anyhow::Result<Tensor> {
            let e = m.project(&m.qformer_features_t(&px, true)?, true)?;
            let r = Tensor::arange(0f32, e.elem_count() as f32, &Device::Cpu)?
                .affine(0.37, 0.0)?
                .sin()?
                .reshape(e.shape())?
                .to_dtype(dt)?;
            Ok((e * r)?.sum_all()?)
        };
        let grads = f(&m)?.backward()?;
        let vars = vm.data().lock().expect("varmap").clone();
        let mut got = Vec::new();
        for name in probe {
            let var = vars.get(name).expect(name);
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            if dt == DType::F64 {
                let orig = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                // The largest-gradient coordinate plus two fixed ones.
                let big = (0..g.len())
                    .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                    .unwrap_or(0);
                for i in [big, 0, orig.len() / 2] {
                    let eps = 1e-5;
                    let at = |d: f64| -> anyhow::Result<f64> {
                        let mut p = orig.clone();
                        p[i] += d;
                        var.set(&Tensor::from_vec(p, var.shape(), &Device::Cpu)?)?;
                        Ok(f(&m)?.to_scalar::<f64>()?)
                    };
                    let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
                    var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu)?)?;
                    assert!(
                        (fd - g[i]).abs() <= 1e-4 * fd.abs().max(g[i].abs()) + 1e-7,
                        "{name}[{i}]: autograd {} vs finite difference {fd}",
                        g[i]
                    );
                }
            }
            got.push(g);
        }
        by_dtype.push(got);
    }
    for (name, (a, b)) in probe.iter().zip(by_dtype[0].iter().zip(&by_dtype[1])) {
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "{name}: f32 vs f64 gradient differs by {diff} (scale {scale})"
        );
    }
    Ok(())
}
