//! Training the tiny model's LLaMA-style BPE tokenizer from scratch with the `tokenizers` crate.
//!
//! The saved `tokenizer.json` has exactly the pipeline of LLaMA's (and of the golden fixture's):
//! no normalizer, `Metaspace("▁", prepend_scheme = first, split = false)`, BPE with
//! `byte_fallback` and `fuse_unk`, decoder `Replace("▁"→" ") + ByteFallback + Fuse + Strip(1)`,
//! post-processor `<s> $A`. Ids: `<unk>`=0, `<s>`=1, `</s>`=2, `<0x00>`..`<0xFF>` = 3..258,
//! learned pieces after that, and MiniGPT-4's pad piece `$$` last.
//!
//! Two deliberate deviations from a plain `BpeTrainer` run, both for *why* reasons:
//! * Training splits words at `▁` (`split = true`) and isolates runs of `#`; the saved
//!   tokenizer does neither (`split = false`, like LLaMA). Since no learned merge then spans a word boundary, both give the same
//!   pieces, and pieces never glue phrases together ("▁the▁red").
//! * Merges whose result contains `#` but is not `##`/`###` are dropped (with every merge that
//!   builds on them), so `###` is always written as `###`, `##`+`#`, ... and never hides inside
//!   a piece such as `.###` or `###Human`: the generator's token-level stop list then sees it.
//! * Merges whose result mixes letters or digits with ASCII punctuation are dropped too, as
//!   SentencePiece's script split keeps them apart in LLaMA's vocabulary. Otherwise training
//!   text "The answer is red." learns the piece `▁red.`, while likelihood ranking scores the
//!   candidate "red" as `▁red`, a piece the model never saw in that place: ranking then
//!   measures tokenisation, not the answer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
    TokenizerImpl,
};

use crate::{Result, TinyError};

/// The piece MiniGPT-4 uses as pad token (`$$`, set in code there).
pub const PAD_PIECE: &str = "$$";
/// Special tokens at ids 0, 1, 2.
pub const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Prompt-template strings of MiniGPT-4 (training, chat, A-OKVQA ranking, MMBench) so that they
/// are part of the corpus whatever the world's texts are.
pub fn prompt_template_texts() -> Vec<String> {
    let mut v: Vec<String> = [
        minigpt4::prompt::TRAIN_PIECE_BEFORE_IMAGE,
        minigpt4::prompt::TRAIN_PIECE_AFTER_IMAGE,
        minigpt4::prompt::VICUNA0_SYSTEM,
        "###Human: <Img>",
        "</Img>",
        "###Assistant:",
        "###Assistant: ",
        "###Assistant: The answer is",
        "The answer is",
        "###",
        "###Human: <img>",
        "</img>",
        "There are several options:",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for l in ["A", "B", "C", "D"] {
        v.push(format!("({l})"));
        v.push(format!("The answer is ({l})"));
        v.push(format!("{l}. "));
    }
    v.extend(
        minigpt4::prompt::CAPTION_INSTRUCTIONS
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// The texts of a generated world, in the shapes the loop will tokenize them: questions with
/// their options (`(A) ..`), answers with and without `###`, captions, rationales, teacher
/// replies, wrapped in MiniGPT-4's prompt template; plus [`prompt_template_texts`]. Ordered
/// deterministically (files are read in a fixed order).
/// The smallest vocabulary the tokenizer trainer accepts: the fixed ids (specials, 256 bytes,
/// `$$`) and 16 merges. `TinyModelConfig::validate` checks it, so `--check` fails early.
pub(crate) fn min_vocab_size() -> usize {
    SPECIALS.len() + 256 + 1 + 17
}

pub fn world_corpus(world: &mde_world::World) -> Result<Vec<String>> {
    let w = TinyError::WorldGen;
    let mut out = prompt_template_texts();
    let mut qa = |q: &str, choices: &[String], ans: usize, rationales: &[String]| {
        let ct = minigpt4::prompt::choice_text(choices);
        out.push(format!("</Img> {q}\n{ct}\n###Assistant: "));
        out.push(format!("</Img> {q}###Assistant: "));
        if let Some(c) = choices.get(ans) {
            let letter = (b'A' + ans as u8) as char;
            out.push(format!("The answer is ({letter}) {c}.###"));
            out.push(format!("{c}###"));
        }
        out.push(minigpt4::prompt::aokvqa_rank_prompt(
            q,
            choices,
            minigpt4::prompt::AokvqaPromptStyle::Clean,
        ));
        out.extend(minigpt4::prompt::aokvqa_candidates(choices));
        out.extend(rationales.iter().cloned());
    };
    let mut replies = Vec::new();
    for variant in [
        mde_world::BaseVariant::Unbalanced,
        mde_world::BaseVariant::Balanced,
    ] {
        for r in world.load_base_vqa(variant).map_err(w)? {
            qa(&r.question, &r.choices, r.correct_choice_idx, &r.rationales);
            replies.push(r.raw_instructions);
        }
    }
    for r in world.load_aokvqa().map_err(w)? {
        qa(&r.question, &r.choices, r.correct_choice_idx, &r.rationales);
    }
    out.extend(replies);
    for c in world.load_base_captions().map_err(w)? {
        out.push(format!("{}###", c.caption));
        out.push(c.caption);
    }
    Ok(out)
}

/// How to train the tokenizer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerTrainConfig {
    /// Upper bound on the final vocabulary (specials + 256 bytes + learned pieces + `$$`). The
    /// trainer stops earlier when the corpus has nothing left to merge.
    pub vocab_size: usize,
    /// Minimum pair frequency of a merge.
    pub min_frequency: u64,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 768,
            min_frequency: 2,
        }
    }
}

fn tok_err(e: impl std::fmt::Display) -> TinyError {
    TinyError::Tokenizer(e.to_string())
}

/// A merge result is allowed unless it glues `#` to anything but `#`, or letters/digits to
/// ASCII punctuation (see module docs).
fn allowed_piece(p: &str) -> bool {
    let hashes = !p.contains('#') || p.chars().all(|c| c == '#');
    let mixed = p.chars().any(char::is_alphanumeric) && p.chars().any(|c| c.is_ascii_punctuation());
    hashes && !mixed
}

/// Trains the tokenizer on `corpus` (deterministic for a given corpus and config).
pub fn train_tokenizer(corpus: &[String], cfg: &TokenizerTrainConfig) -> Result<Tokenizer> {
    let fixed = SPECIALS.len() + 256 + 1; // specials, bytes, $$
    if cfg.vocab_size < min_vocab_size() {
        return Err(TinyError::Config(format!(
            "tokenizer vocab_size {} is too small: {} ids are fixed (specials, 256 bytes, `$$`)",
            cfg.vocab_size, fixed
        )));
    }
    if corpus.is_empty() {
        return Err(TinyError::Tokenizer("the training corpus is empty".into()));
    }
    // 1. Plain BPE training on words split at "▁".
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size - fixed)
        .min_frequency(cfg.min_frequency)
        .show_progress(false)
        .build();
    let mut t: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    // Runs of `#` are isolated as words of their own, so "###Assistant:" trains "Assistant:"
    // as a piece instead of fragments left over from forbidden "###A..." merges.
    let hashes = Split::new(
        SplitPattern::Regex("#+".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    t.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
        PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::First, true)),
        PreTokenizerWrapper::Split(hashes),
    ]))));
    t.train(&mut trainer, corpus.iter()).map_err(tok_err)?;
    let model = serde_json::to_value(t.get_model()).map_err(tok_err)?;
    let vocab: HashMap<String, u64> = serde_json::from_value(model["vocab"].clone())
        .map_err(|e| tok_err(format!("trained vocab: {e}")))?;
    let merges: Vec<(String, String)> = match &model["merges"] {
        Value::Array(a) => a
            .iter()
            .map(|m| match m {
                Value::Array(p) if p.len() == 2 => Ok((
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )),
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("bad merge {s:?}"))),
                other => Err(tok_err(format!("bad merge {other}"))),
            })
            .collect::<Result<_>>()?,
        _ => return Err(tok_err("trained model has no merges")),
    };
    // 2. Initial alphabet (pieces no merge produces), in trained-id order.
    let produced: BTreeSet<String> = merges.iter().map(|(a, b)| format!("{a}{b}")).collect();
    let mut by_id: Vec<(u64, String)> = vocab.into_iter().map(|(p, i)| (i, p)).collect();
    by_id.sort();
    let alphabet: Vec<String> = by_id
        .iter()
        .filter(|(_, p)| !produced.contains(p))
        .map(|(_, p)| p.clone())
        .collect();
    // 3. Keep merges whose inputs are formable and whose result is allowed.
    let mut formable: BTreeSet<String> = alphabet.iter().cloned().collect();
    let mut kept = Vec::new();
    for (a, b) in merges {
        let r = format!("{a}{b}");
        if formable.contains(&a)
            && formable.contains(&b)
            && allowed_piece(&r)
            && formable.insert(r.clone())
        {
            kept.push((a, b, r));
        }
    }
    // 4. Final vocabulary: specials, bytes, alphabet, merge results, `$$`.
    let mut pieces: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut seen: BTreeSet<String> = pieces.iter().cloned().collect();
    for p in alphabet.iter().chain(kept.iter().map(|(_, _, r)| r)) {
        if pieces.len() + 1 >= cfg.vocab_size {
            break;
        }
        if seen.insert(p.clone()) {
            pieces.push(p.clone());
        }
    }
    if seen.insert(PAD_PIECE.to_string()) {
        pieces.push(PAD_PIECE.to_string());
    }
    // Merges whose result did not fit are dropped with their dependants.
    let mut in_vocab: BTreeSet<&str> = pieces.iter().map(String::as_str).collect();
    let mut final_merges = Vec::new();
    for (a, b, r) in &kept {
        if in_vocab.contains(a.as_str())
            && in_vocab.contains(b.as_str())
            && in_vocab.contains(r.as_str())
        {
            final_merges.push(json!([a, b]));
        } else {
            in_vocab.remove(r.as_str());
        }
    }
    let vocab_json: serde_json::Map<String, Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_json, "merges": final_merges}
    });
    let s = serde_json::to_string(&tok).map_err(tok_err)?;
    s.parse::<Tokenizer>().map_err(tok_err)
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` (the HF
/// LLaMA layout) into `dir`, atomically.
pub fn save_tokenizer_folder(tok: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TinyError::Io {
        path: dir.into(),
        source: e,
    })?;
    let s = tok.to_string(true).map_err(tok_err)?;
    mde_core::io::atomic_write(dir.join("tokenizer.json"), s.as_bytes())?;
    let special = |c: &str| json!({"content": c, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false});
    let mut decoder = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        let mut v = special(s);
        v["special"] = json!(true);
        decoder.insert(i.to_string(), v);
    }
    let cfg = json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "add_prefix_space": true,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": false,
        "eos_token": "</s>",
        "legacy": false,
        "model_max_length": 2048,
        "pad_token": null,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>"
    });
    mde_core::io::write_json(dir.join("tokenizer_config.json"), &cfg)?;
    let map = json!({"bos_token": special("<s>"), "eos_token": special("</s>"), "unk_token": special("<unk>")});
    mde_core::io::write_json(dir.join("special_tokens_map.json"), &map)?;
    Ok(())
}
