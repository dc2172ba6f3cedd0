//! Golden conformance of prompts and tokenization against `expected/expected.json` (fixture
//! root from `MDE_GOLDEN_DIR`): chat prompt strings, segments and segment ids, training prompts,
//! the tokenizer's special ids and the `###` stop sequences.

use std::path::PathBuf;

use anyhow::{Context, Result};
use minigpt4::prompt::{
    apply_prompt_template, split_segments, tokenize_segments, ChatTemplate, IMAGE_PLACEHOLDER,
};
use minigpt4::tokenizer::LlamaTokenizer;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

fn expected() -> Result<Value> {
    let p = golden_dir().join("expected/expected.json");
    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

fn tokenizer() -> Result<LlamaTokenizer> {
    Ok(LlamaTokenizer::from_dir(golden_dir().join("vicuna"))?)
}

fn ids(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .context("expected an array of ids")?
        .iter()
        .map(|x| {
            x.as_u64()
                .map(|u| u as u32)
                .context("expected an integer id")
        })
        .collect()
}

fn s(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .with_context(|| format!("{what}: expected a string"))
}

#[test]
fn special_ids_come_from_the_tokenizer() -> Result<()> {
    let exp = expected()?;
    let tok = tokenizer()?;
    let cfg = &exp["config"]["tokenizer"];
    assert_eq!(
        u64::from(tok.bos_id()),
        cfg["bos_id"].as_u64().context("bos_id")?
    );
    assert_eq!(
        u64::from(tok.eos_id()),
        cfg["eos_id"].as_u64().context("eos_id")?
    );
    assert_eq!(tok.unk_id().map(u64::from), cfg["unk_id"].as_u64());
    assert_eq!(
        u64::from(tok.pad_id()),
        cfg["pad_token_id"].as_u64().context("pad_token_id")?
    );
    assert_eq!(
        tok.vocab_size() as u64,
        cfg["vocab_size"].as_u64().context("vocab_size")?
    );
    Ok(())
}

#[test]
fn chat_prompts_segments_and_ids() -> Result<()> {
    let exp = expected()?;
    let tok = tokenizer()?;
    let conv = &exp["config"]["conv_template"];
    let template = ChatTemplate {
        system: s(&conv["system"], "conv_template.system")?,
        roles: (
            s(&conv["roles"][0], "roles[0]")?,
            s(&conv["roles"][1], "roles[1]")?,
        ),
        sep: s(&conv["sep"], "conv_template.sep")?,
    };
    // The built-in Vicuna v0 template must be the one the fixture used.
    assert_eq!(template, ChatTemplate::vicuna0());
    let chats = exp["chat"].as_array().context("expected.json: chat")?;
    assert!(!chats.is_empty());
    for (i, chat) in chats.iter().enumerate() {
        let q = s(&chat["question"], "chat.question")?;
        let prompt = template.single_turn(&q);
        assert_eq!(
            prompt,
            s(&chat["prompt"], "chat.prompt")?,
            "chat[{i}] prompt"
        );
        let want_segs: Vec<String> = chat["segments"]
            .as_array()
            .context("segments")?
            .iter()
            .map(|v| s(v, "segment"))
            .collect::<Result<_>>()?;
        assert_eq!(split_segments(&prompt), want_segs, "chat[{i}] segments");
        let flags: Vec<bool> = chat["segment_add_special_tokens"]
            .as_array()
            .context("segment_add_special_tokens")?
            .iter()
            .map(|v| v.as_bool().context("bool"))
            .collect::<Result<_>>()?;
        // BOS on the first segment only.
        assert!(flags[0] && flags[1..].iter().all(|f| !f));
        let got = tokenize_segments(&tok, &prompt, true)?;
        let want: Vec<Vec<u32>> = chat["segment_ids"]
            .as_array()
            .context("segment_ids")?
            .iter()
            .map(ids)
            .collect::<Result<_>>()?;
        assert_eq!(got, want, "chat[{i}] segment ids");
        if let Some(pieces) = chat["segment_tokens"].as_array() {
            for (k, seg) in want_segs.iter().enumerate() {
                let want_p: Vec<String> = pieces[k]
                    .as_array()
                    .context("segment_tokens")?
                    .iter()
                    .map(|v| s(v, "piece"))
                    .collect::<Result<_>>()?;
                assert_eq!(
                    tok.encode_pieces(seg, flags[k])?,
                    want_p,
                    "chat[{i}] seg {k} pieces"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn training_prompts_and_token_rows() -> Result<()> {
    let exp = expected()?;
    let tok = tokenizer()?;
    let batch = &exp["training"]["batch"];
    let template = s(&exp["config"]["prompt_template"], "config.prompt_template")?;
    let end_sym = s(&exp["config"]["end_sym"], "config.end_sym")?;
    let instructions = batch["instructions"]
        .as_array()
        .context("training.batch.instructions")?;
    let prompts = batch["prompts"]
        .as_array()
        .context("training.batch.prompts")?;
    let answers = batch["answers"]
        .as_array()
        .context("training.batch.answers")?;
    assert_eq!(instructions.len(), prompts.len());
    let n_img = exp["config"]["qformer"]["num_query_tokens"]
        .as_u64()
        .context("num_query_tokens")? as usize;
    for (i, instr) in instructions.iter().enumerate() {
        let prompt = apply_prompt_template(&template, &s(instr, "instruction")?);
        assert_eq!(prompt, s(&prompts[i], "prompt")?, "training prompt {i}");
        // cond rows: segments without special tokens, -1 for each image row.
        let segs = tokenize_segments(&tok, &prompt, false)?;
        assert_eq!(segs.len(), prompt.matches(IMAGE_PLACEHOLDER).count() + 1);
        let mut row: Vec<i64> = Vec::new();
        for (k, seg) in segs.iter().enumerate() {
            if k > 0 {
                row.extend(std::iter::repeat_n(-1, n_img));
            }
            row.extend(seg.iter().map(|&x| i64::from(x)));
        }
        let want: Vec<i64> = batch["cond_token_rows"][i]
            .as_array()
            .context("cond_token_rows")?
            .iter()
            .map(|v| v.as_i64().context("int"))
            .collect::<Result<_>>()?;
        assert_eq!(row, want, "cond row {i}");
        let with_end = format!("{}{end_sym}", s(&answers[i], "answer")?);
        assert_eq!(
            with_end,
            s(&batch["answers_with_end_sym"][i], "answers_with_end_sym")?
        );
        let ans = tok.encode(&with_end, false)?;
        let regress: Vec<u32> = ids(&batch["regress_ids"][i])?;
        let mask = ids(&batch["regress_attention_mask"][i])?;
        let n = mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(ans, regress[..n].to_vec(), "answer ids {i}");
        assert!(regress[n..].iter().all(|&x| x == tok.pad_id()));
    }
    Ok(())
}

#[test]
fn stop_sequences_spell_the_separator() -> Result<()> {
    let tok = tokenizer()?;
    let stops = tok.stop_sequences();
    assert!(!stops.is_empty());
    for seq in &stops {
        let text: String = seq.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
        assert_eq!(text, "###");
    }
    // The single-piece tokenization exists in this vocabulary and comes first.
    if let Some(id) = tok.token_to_id("###") {
        assert_eq!(stops[0], vec![id]);
    }
    Ok(())
}

#[test]
fn missing_tokenizer_error_names_path() {
    let err = LlamaTokenizer::from_dir("/nonexistent/vicuna")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/vicuna/tokenizer.json"), "{err}");
    assert!(err.contains("tokenizer.model"), "{err}");
}
