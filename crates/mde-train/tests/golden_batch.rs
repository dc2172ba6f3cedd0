//! The training batch layout equals train_token_ids / train_is_image / train_attention_mask /
//! train_labels of the fixture exactly, built from expected.json's prompts and answers.
mod common;
use anyhow::{Context, Result};
use candle_core::Tensor;
use mde_train::batch::{build_batch, LayoutConfig, TrainSample};
use minigpt4::tokenizer::LlamaTokenizer;

fn rows(t: &Tensor) -> Result<Vec<Vec<i64>>> {
    Ok(t.to_dtype(candle_core::DType::I64)?.to_vec2::<i64>()?)
}

#[test]
fn batch_layout_matches_fixture() -> Result<()> {
    let exp = common::expected()?;
    let tensors = common::train_tensors()?;
    let tok = LlamaTokenizer::from_dir(common::golden_dir().join("vicuna"))?;
    let batch = &exp["training"]["batch"];
    let prompts = common::strings(&batch["prompts"], "training.batch.prompts")?;
    let answers = common::strings(&batch["answers"], "training.batch.answers")?;
    let end_sym = exp["config"]["end_sym"]
        .as_str()
        .context("config.end_sym")?;
    let n_img = exp["config"]["qformer"]["num_query_tokens"]
        .as_u64()
        .context("num_query_tokens")? as usize;
    let mut cfg = LayoutConfig::minigpt4(n_img);
    if let Some(m) = exp["config"]["max_txt_len"].as_u64() {
        cfg.max_txt_len = m as usize;
    }
    let samples: Vec<TrainSample> = prompts
        .iter()
        .zip(&answers)
        .map(|(p, a)| TrainSample {
            prompt: p.clone(),
            answer: a.clone(),
        })
        .collect();
    let b = build_batch(&tok, &samples, end_sym, cfg)?;
    let get = |k: &str| {
        tensors
            .get(k)
            .with_context(|| format!("train.safetensors: no {k}"))
    };
    assert_eq!(b.token_ids, rows(get("train_token_ids")?)?, "token ids");
    assert_eq!(b.is_image, rows(get("train_is_image")?)?, "is_image");
    assert_eq!(
        b.attention_mask,
        rows(get("train_attention_mask")?)?,
        "attention mask"
    );
    assert_eq!(b.labels, rows(get("train_labels")?)?, "labels");
    if let Some(n) = batch["n_target_tokens"].as_u64() {
        assert_eq!(b.n_targets() as u64, n);
    }
    if let Some(n) = batch["seq_len"].as_u64() {
        assert_eq!(b.seq_len() as u64, n);
    }
    Ok(())
}

#[test]
fn truncation_and_errors() -> Result<()> {
    let tok = LlamaTokenizer::from_dir(common::golden_dir().join("vicuna"))?;
    let s = TrainSample {
        prompt: minigpt4::prompt::instruction_prompt("Describe this image in detail."),
        answer: "The square is red and the circle is blue.".into(),
    };
    let mut cfg = LayoutConfig::minigpt4(4);
    cfg.max_txt_len = 3;
    let b = build_batch(&tok, std::slice::from_ref(&s), "###", cfg)?;
    assert_eq!(b.n_targets(), 3);
    let bad = TrainSample {
        prompt: "no image here".into(),
        answer: "x".into(),
    };
    let err = build_batch(&tok, &[bad], "###", cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("<ImageHere>"), "{err}");
    // QMA text split: exactly the answer part is supervised.
    let ch: Vec<String> = ["red", "blue", "green", "white"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = minigpt4::prompt::format_qma("What color is the square?", &ch, 0);
    let smp = mde_train::batch::sample_from_train_text(&t)?;
    assert!(smp.prompt.ends_with("###Assistant: "));
    assert_eq!(smp.answer, "The answer is (A) red.");
    Ok(())
}
