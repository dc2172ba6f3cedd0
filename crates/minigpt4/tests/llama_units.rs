//! Self-consistency tests of the decoder on random weights: GQA vs MHA with repeated K/V
//! heads, KV-cache decoding vs full forward, batched left-padded generation vs single runs,
//! beam search with one beam vs greedy, seeded sampling, stop sequences, half precision.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use minigpt4::config::LlamaConfig;
use minigpt4::generation::{generate, FinishReason, GenerationConfig};
use minigpt4::llama::{KvCache, Llama};

fn cfg(kv: usize, theta: f64) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": kv, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": theta}, "tie_word_embeddings": false
    }))
    .unwrap()
}

fn randn(shape: &[usize], std: f64, dev: &Device) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, dev).unwrap()
}

/// Random weights; when `kv < heads` also returns the equivalent MHA weights.
fn weights(c: &LlamaConfig) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let hd = c.head_dim();
    let (nh, nkv) = (c.num_attention_heads, c.num_kv_heads());
    let mut w = HashMap::new();
    let mut mha = HashMap::new();
    let s = 1.0 / (h as f64).sqrt();
    w.insert(
        "model.embed_tokens.weight".into(),
        randn(&[v, h], 1.0, &dev),
    );
    w.insert("lm_head.weight".into(), randn(&[v, h], s, &dev));
    w.insert(
        "model.norm.weight".into(),
        (randn(&[h], 0.1, &dev) + 1.0).unwrap(),
    );
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        w.insert(
            format!("{p}self_attn.q_proj.weight"),
            randn(&[nh * hd, h], s, &dev),
        );
        w.insert(
            format!("{p}self_attn.k_proj.weight"),
            randn(&[nkv * hd, h], s, &dev),
        );
        w.insert(
            format!("{p}self_attn.v_proj.weight"),
            randn(&[nkv * hd, h], s, &dev),
        );
        w.insert(
            format!("{p}self_attn.o_proj.weight"),
            randn(&[h, nh * hd], s, &dev),
        );
        w.insert(format!("{p}mlp.gate_proj.weight"), randn(&[i, h], s, &dev));
        w.insert(format!("{p}mlp.up_proj.weight"), randn(&[i, h], s, &dev));
        w.insert(
            format!("{p}mlp.down_proj.weight"),
            randn(&[h, i], 1.0 / (i as f64).sqrt(), &dev),
        );
        w.insert(
            format!("{p}input_layernorm.weight"),
            (randn(&[h], 0.1, &dev) + 1.0).unwrap(),
        );
        w.insert(
            format!("{p}post_attention_layernorm.weight"),
            (randn(&[h], 0.1, &dev) + 1.0).unwrap(),
        );
    }
    for (k, t) in &w {
        if (k.contains("k_proj") || k.contains("v_proj")) && nkv < nh {
            // HF repeat_kv: query head j uses kv head j / (nh / nkv).
            let rep = nh / nkv;
            let t3 = t
                .reshape((nkv, 1, hd, h))
                .unwrap()
                .repeat((1, rep, 1, 1))
                .unwrap();
            mha.insert(k.clone(), t3.reshape((nh * hd, h)).unwrap());
        } else {
            mha.insert(k.clone(), t.clone());
        }
    }
    (w, mha)
}

fn build(c: &LlamaConfig, w: &HashMap<String, Tensor>, dt: DType) -> Llama {
    Llama::new(c, VarBuilder::from_tensors(w.clone(), dt, &Device::Cpu)).unwrap()
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
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

fn full(m: &Llama, e: &Tensor, train: bool) -> Tensor {
    let t = e.dim(0).unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&e.unsqueeze(0).unwrap(), &pos, None, None, train)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn gqa_equals_mha_with_repeated_heads_and_paths_agree() -> Result<()> {
    let c = cfg(2, 500000.0);
    let (w, mha_w) = weights(&c);
    let gqa = build(&c, &w, DType::F32);
    let mha = build(&cfg(4, 500000.0), &mha_w, DType::F32);
    let e = gqa.embed_ids(&[3, 7, 11, 19, 23, 5, 2])?;
    let a = full(&gqa, &e, false);
    let b = full(&mha, &e, false);
    assert!(maxdiff(&a, &b) < 1e-5, "{}", maxdiff(&a, &b));
    let t = full(&gqa, &e, true);
    assert!(maxdiff(&a, &t) < 1e-5);
    // rope theta matters.
    let other = build(&cfg(2, 10000.0), &w, DType::F32);
    assert!(maxdiff(&a, &full(&other, &e, false)) > 1e-3);
    Ok(())
}

#[test]
fn kv_cache_matches_full_forward() -> Result<()> {
    let c = cfg(2, 10000.0);
    let m = build(&c, &weights(&c).0, DType::F32);
    let ids = [3u32, 7, 11, 19, 23, 5, 2, 40];
    let e = m.embed_ids(&ids)?;
    let f = full(&m, &e, false);
    let mut cache = KvCache::new(c.num_hidden_layers);
    let pos = Tensor::arange(0u32, 5, &Device::Cpu)?.unsqueeze(0)?;
    let p = m.forward(
        &e.narrow(0, 0, 5)?.unsqueeze(0)?,
        &pos,
        None,
        Some(&mut cache),
        false,
    )?;
    assert!(maxdiff(&p.squeeze(0)?, &f.narrow(0, 0, 5)?) < 1e-5);
    for k in 5..ids.len() {
        let pos = Tensor::new(&[[k as u32]], &Device::Cpu)?;
        let s = m.forward(
            &e.narrow(0, k, 1)?.unsqueeze(0)?,
            &pos,
            None,
            Some(&mut cache),
            false,
        )?;
        assert!(maxdiff(&s.squeeze(0)?, &f.narrow(0, k, 1)?) < 1e-5);
    }
    Ok(())
}

#[test]
fn batched_generation_equals_single_runs() -> Result<()> {
    let c = cfg(1, 10000.0);
    let m = build(&c, &weights(&c).0, DType::F32);
    let prompts = vec![
        m.embed_ids(&[1, 5, 9])?,
        m.embed_ids(&[1, 8, 6, 4, 33, 12])?,
        m.embed_ids(&[2])?,
    ];
    let gc = GenerationConfig {
        max_new_tokens: 10,
        output_step_logits: true,
        ..Default::default()
    };
    let batch = generate(&m, &prompts, &gc, None)?;
    for (p, b) in prompts.iter().zip(&batch) {
        let single = generate(&m, std::slice::from_ref(p), &gc, None)?;
        assert_eq!(single[0].tokens, b.tokens);
        let d = maxdiff(
            &Tensor::stack(&single[0].step_logits, 0)?,
            &Tensor::stack(&b.step_logits, 0)?,
        );
        assert!(d < 1e-4, "{d}");
    }
    // One beam is greedy.
    let beam = generate(
        &m,
        &prompts[..1],
        &GenerationConfig {
            num_beams: 1,
            ..gc.clone()
        },
        None,
    )?;
    assert_eq!(beam[0].tokens, batch[0].tokens);
    let b1 = minigpt4::generation::beam_search(
        &m,
        &prompts[0],
        &GenerationConfig {
            num_beams: 1,
            ..gc.clone()
        },
    )?;
    assert_eq!(b1.tokens, batch[0].tokens);
    // The beam score is the HF score of its tokens: sum of log-probs / len^length_penalty.
    for (nb, lp) in [(4usize, 1.0f64), (3, -1.0)] {
        let b = minigpt4::generation::beam_search(
            &m,
            &prompts[1],
            &GenerationConfig {
                num_beams: nb,
                length_penalty: lp,
                ..gc.clone()
            },
        )?;
        assert_eq!(b.tokens.len(), 10);
        let mut ids = vec![1u32, 8, 6, 4, 33, 12];
        ids.extend(&b.tokens);
        let lg = full(&m, &m.embed_ids(&ids)?, false);
        let lsm = candle_nn::ops::log_softmax(&lg, 1)?.to_vec2::<f32>()?;
        let sum: f64 = b
            .tokens
            .iter()
            .enumerate()
            .map(|(k, &t)| lsm[5 + k][t as usize] as f64)
            .sum();
        let want = sum / (b.tokens.len() as f64).powf(lp);
        assert!(
            (want - b.score.unwrap()).abs() < 1e-3,
            "{want} vs {:?}",
            b.score
        );
    }
    Ok(())
}

#[test]
fn stop_sequences_eos_and_seeded_sampling() -> Result<()> {
    let c = cfg(2, 10000.0);
    let m = build(&c, &weights(&c).0, DType::F32);
    let p = vec![m.embed_ids(&[1, 5, 9])?];
    let g = generate(
        &m,
        &p,
        &GenerationConfig {
            max_new_tokens: 8,
            ..Default::default()
        },
        None,
    )?;
    let toks = &g[0].tokens;
    assert_eq!(g[0].finish, FinishReason::Length);
    // Stop on the 2-token sequence at positions 2..4, and on EOS = the 2nd token.
    let stop = toks[2..4].to_vec();
    let s = generate(
        &m,
        &p,
        &GenerationConfig {
            max_new_tokens: 8,
            stop_sequences: vec![stop.clone()],
            ..Default::default()
        },
        None,
    )?;
    assert!(s[0].tokens.ends_with(&stop) && s[0].tokens.len() <= 4);
    assert_eq!(s[0].finish, FinishReason::StopSequence);
    let e = generate(
        &m,
        &p,
        &GenerationConfig {
            max_new_tokens: 8,
            eos_token_ids: vec![toks[1]],
            ..Default::default()
        },
        None,
    )?;
    assert_eq!(e[0].finish, FinishReason::Eos);
    assert!(e[0].tokens.len() <= 2);
    let st = generate(
        &m,
        &p,
        &GenerationConfig {
            max_new_tokens: 8,
            stop_token_ids: vec![toks[2]],
            ..Default::default()
        },
        None,
    )?;
    assert_eq!(st[0].finish, FinishReason::StopSequence);
    assert_eq!(st[0].tokens.last(), Some(&toks[2]));
    assert!(st[0].tokens.len() <= 3);
    let sc = GenerationConfig {
        max_new_tokens: 8,
        do_sample: true,
        temperature: 1.5,
        top_p: 0.95,
        seed: 7,
        ..Default::default()
    };
    let a = generate(&m, &p, &sc, None)?;
    let b = generate(&m, &p, &sc, None)?;
    assert_eq!(a[0].tokens, b[0].tokens);
    let d = generate(
        &m,
        &p,
        &GenerationConfig {
            seed: 8,
            ..sc.clone()
        },
        None,
    )?;
    let z = generate(&m, &p, &GenerationConfig { seed: 9, ..sc }, None)?;
    assert!(a[0].tokens != d[0].tokens || a[0].tokens != z[0].tokens);
    Ok(())
}

#[test]
fn half_precision_runs_close_to_f32() -> Result<()> {
    let c = cfg(2, 10000.0);
    let w = weights(&c).0;
    let m32 = build(&c, &w, DType::F32);
    let e = m32.embed_ids(&[3, 7, 11, 19])?;
    let a = full(&m32, &e, false);
    for dt in [DType::F16, DType::BF16] {
        let mh = build(&c, &w, dt);
        let eh = mh.embed_ids(&[3, 7, 11, 19])?;
        let b = full(&mh, &eh, false);
        assert_eq!(b.dtype(), DType::F32);
        let d = maxdiff(&a, &b);
        assert!(d < 0.2, "{dt:?}: {d}");
    }
    Ok(())
}
