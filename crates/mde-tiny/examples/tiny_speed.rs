//! Sizes the closed loop: ms per training step (forward + backward + AdamW over every LLaMA and
//! projector parameter) of the default tiny MiniGPT-4 on a batch of world images, plus the
//! frozen vision/Q-Former forward and the inference forward.
//!
//! ```text
//! cargo run --release -p mde-loop --example tiny_speed -- [batch=32] [text_tokens=24] [iters=5]
//! ```

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use mde_tiny::tiny::{build_base_model, load_trainable, CorpusSource, TinyModelConfig};
use mde_world::{World, WorldConfig};
use minigpt4::preprocess::{load_rgb, ImageProcessor};

fn main() -> anyhow::Result<()> {
    minigpt4::runtime::tune_process();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .context("arguments are numbers: batch text_tokens iters")
        })
        .collect::<anyhow::Result<_>>()?;
    let batch = args.first().copied().unwrap_or(32);
    let text = args.get(1).copied().unwrap_or(24);
    let iters = args.get(2).copied().unwrap_or(5).max(1);
    let dev = Device::Cpu;

    let tmp = tempfile::tempdir()?;
    let t0 = Instant::now();
    let world = World::generate(&WorldConfig::tiny(0), tmp.path().join("world"))?;
    let t_world = t0.elapsed();
    let cfg = TinyModelConfig::default();
    let t0 = Instant::now();
    let base = build_base_model(
        &cfg,
        CorpusSource::WorldDir(world.dir()),
        &tmp.path().join("base"),
        0,
    )?;
    let t_build = t0.elapsed();
    let tok = base.tokenizer()?;
    println!(
        "tiny world {:.2}s; tokenizer + model build {:.2}s; vocab {}, {} parameters",
        t_world.as_secs_f64(),
        t_build.as_secs_f64(),
        base.manifest.vocab_size,
        base.manifest.num_parameters
    );
    let sample = "</Img> What color is the large circle?###Assistant: The answer is (B) red.###";
    println!(
        "pieces of {sample:?}: {:?}",
        tok.encode_pieces(sample, false)?
    );

    let (model, varmap) = load_trainable(&base, &dev)?;
    let nq = cfg.num_query_tokens;
    // Real images and question/answer texts, cut or padded to `text` tokens.
    let items = world.load_aokvqa()?;
    let proc = ImageProcessor::eval(cfg.image_size as u32);
    let mut px = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    for b in 0..batch {
        let it = &items[b % items.len()];
        let img = load_rgb(world.dir().join("coco").join(&it.image_path)).or_else(|_| {
            load_rgb(world.image_path(it.image_id).context("image")?).map_err(anyhow::Error::from)
        })?;
        px.push(proc.process_eval(&img, &dev)?);
        let s = format!(
            "</Img> {}###Assistant: The answer is ({}) {}.###",
            it.question,
            (b'A' + it.correct_choice_idx as u8) as char,
            it.choices[it.correct_choice_idx]
        );
        let mut t: Vec<i64> = tok.encode(&s, false)?.into_iter().map(i64::from).collect();
        t.resize(text, tok.pad_id() as i64);
        ids.push(tok.bos_id() as i64);
        labels.push(-100);
        ids.extend(std::iter::repeat_n(-1, nq));
        labels.extend(std::iter::repeat_n(-100, nq));
        ids.extend(&t);
        labels.extend(&t);
    }
    let seq = 1 + nq + text;
    let px = Tensor::stack(&px, 0)?;
    let ids = Tensor::from_vec(ids, (batch, seq), &dev)?;
    let labels = Tensor::from_vec(labels, (batch, seq), &dev)?;

    let trainable: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("llama_"))
        .map(|(_, v)| v.clone())
        .collect();
    let n_train: usize = trainable.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        trainable,
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;

    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?; // warm-up
        let t0 = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0 / iters as f64)
    };
    let mut qf = None;
    let ms_vis = time(&mut || {
        qf = Some(model.qformer_features(&px)?.detach());
        Ok(())
    })?;
    let qf = qf.context("q-former output")?;
    let mut last_loss = 0f32;
    let ms_train = time(&mut || {
        let img = model.project(&qf, true)?;
        let emb = model.embed_layout(&ids, &img)?;
        let logits = model.forward_embeds(&emb, None, None, true)?;
        let loss = minigpt4::llama::causal_lm_loss(&logits, &labels)?;
        last_loss = loss.to_scalar::<f32>()?;
        opt.backward_step(&loss)?;
        Ok(())
    })?;
    // Breakdown of one step (forward in the differentiable path, backward, optimizer).
    let (mut f_ms, mut b_ms, mut o_ms) = (0.0, 0.0, 0.0);
    for _ in 0..iters {
        let t0 = Instant::now();
        let img = model.project(&qf, true)?;
        let emb = model.embed_layout(&ids, &img)?;
        let logits = model.forward_embeds(&emb, None, None, true)?;
        let loss = minigpt4::llama::causal_lm_loss(&logits, &labels)?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        f_ms += (t1 - t0).as_secs_f64() * 1000.0 / iters as f64;
        b_ms += (t2 - t1).as_secs_f64() * 1000.0 / iters as f64;
        o_ms += (t3 - t2).as_secs_f64() * 1000.0 / iters as f64;
    }
    let ms_infer = time(&mut || {
        let img = model.project(&qf, false)?;
        let emb = model.embed_layout(&ids, &img)?;
        let _ = model
            .forward_embeds(&emb, None, None, false)?
            .to_dtype(DType::F32)?;
        Ok(())
    })?;
    println!(
        "batch {batch} x seq {seq} ({nq} image + 1 bos + {text} text), {n_train} trainable (LLaMA + projector), threads {}",
        candle_core::utils::get_num_threads()
    );
    println!("vision + Q-Former forward (frozen): {ms_vis:.1} ms");
    println!(
        "projector + LLaMA forward + backward + AdamW step: {ms_train:.1} ms (loss {last_loss:.3})"
    );
    println!("  breakdown: forward (train path) + loss {f_ms:.1} ms, backward {b_ms:.1} ms, AdamW {o_ms:.1} ms");
    println!("projector + LLaMA inference forward: {ms_infer:.1} ms");
    println!(
        "training step incl. frozen vision: {:.1} ms",
        ms_vis + ms_train
    );
    Ok(())
}
