//! Prompts and token segments of MiniGPT-4 (Vicuna v0) and MLLM-DataEngine.
//!
//! * Chat (`CONV_VISION_Vicuna0`): `system + "###" + "Human: " + "<Img><ImageHere></Img> " + q +
//!   "###" + "Assistant: "`, split on `<ImageHere>`; only the first segment gets `<s>`.
//! * MMBench (OpenCompass's MiniGPT-4 prompt) and its answer-letter extraction.
//! * A-OKVQA rank-based evaluation prompt, with the released quirks (lowercase `<img>`, no BOS)
//!   by default ([`AokvqaPromptStyle::Released`]) or the clean form.
//! * Answer post-processing of generated ids.
//! * Training texts: QA / QMA / QMAE `(mask_text, text)` builders, the caption instructions,
//!   and the stage-2 prompt pieces.
//!
//! ```no_run
//! use minigpt4::prompt::{ChatTemplate, tokenize_segments};
//! use minigpt4::tokenizer::LlamaTokenizer;
//! let tok = LlamaTokenizer::from_dir("vicuna").unwrap();
//! let prompt = ChatTemplate::vicuna0().single_turn("What is in the image?");
//! let segs = tokenize_segments(&tok, &prompt, true).unwrap(); // 2 segments, BOS on the first
//! assert_eq!(segs.len(), 2);
//! ```

use crate::tokenizer::{LlamaTokenizer, Result};

/// Placeholder the image embeddings replace.
pub const IMAGE_PLACEHOLDER: &str = "<ImageHere>";
/// The image slot as MiniGPT-4 writes it in user turns.
pub const IMAGE_SLOT: &str = "<Img><ImageHere></Img>";
/// Turn separator and stop text of Vicuna v0.
pub const SEP: &str = "###";
/// System text of `CONV_VISION_Vicuna0`.
pub const VICUNA0_SYSTEM: &str = "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.";
/// Stage-2 instruction template (`prompt_template` in MiniGPT-4's configs).
pub const TRAIN_PROMPT_TEMPLATE: &str = "###Human: {} ###Assistant: ";
/// First training prompt piece (before the image embeddings).
pub const TRAIN_PIECE_BEFORE_IMAGE: &str = "###Human: <Img>";
/// Start of the text piece after the image embeddings (followed by the sample text and `###`).
pub const TRAIN_PIECE_AFTER_IMAGE: &str = "</Img> ";
/// MiniGPT-4's `cc_sbu_align` caption instructions (`prompts/alignment.txt`), without the image
/// slot.
pub const CAPTION_INSTRUCTIONS: [&str; 4] = [
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
];

/// A Vicuna-v0 style conversation template (`SeparatorStyle.SINGLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub system: String,
    /// Role prefixes, e.g. `("Human: ", "Assistant: ")`.
    pub roles: (String, String),
    pub sep: String,
}

impl ChatTemplate {
    /// MiniGPT-4's `CONV_VISION_Vicuna0`.
    pub fn vicuna0() -> Self {
        Self {
            system: VICUNA0_SYSTEM.to_string(),
            roles: ("Human: ".into(), "Assistant: ".into()),
            sep: SEP.into(),
        }
    }

    /// `get_prompt()` of a conversation: `system + sep`, then each turn as `role + message +
    /// sep`; a turn with no message (the pending assistant reply) is just `role`.
    pub fn render(&self, turns: &[(bool, Option<&str>)]) -> String {
        let mut out = format!("{}{}", self.system, self.sep);
        for (is_user, msg) in turns {
            let role = if *is_user {
                &self.roles.0
            } else {
                &self.roles.1
            };
            match msg {
                Some(m) => {
                    out.push_str(role);
                    out.push_str(m);
                    out.push_str(&self.sep);
                }
                None => out.push_str(role),
            }
        }
        out
    }

    /// Prompt for one image and one question: the image slot, a space, the question, then the
    /// open assistant turn.
    pub fn single_turn(&self, question: &str) -> String {
        let user = format!("{IMAGE_SLOT} {question}");
        self.render(&[(true, Some(&user)), (false, None)])
    }
}

/// Splits a prompt on `<ImageHere>`: N placeholders give N+1 text segments (possibly empty).
pub fn split_segments(prompt: &str) -> Vec<&str> {
    prompt.split(IMAGE_PLACEHOLDER).collect()
}

/// Tokenizes each segment on its own (each gets its own leading `▁`); `bos_first` adds `<s>`
/// to the first segment only, as MiniGPT-4's `get_context_emb` does.
pub fn tokenize_segments(
    tok: &LlamaTokenizer,
    prompt: &str,
    bos_first: bool,
) -> Result<Vec<Vec<u32>>> {
    split_segments(prompt)
        .into_iter()
        .enumerate()
        .map(|(i, s)| tok.encode(s, bos_first && i == 0))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// MMBench
// ---------------------------------------------------------------------------------------------

/// OpenCompass's MiniGPT-4 MMBench prompt: `"###Human: <Img><ImageHere></Img> [hint ]question
/// There are several options:\nA. ..\nB. ..\n ###Assistant:"`. `options` are `(letter, text)`
/// pairs in order; a missing/empty hint is omitted with its space.
pub fn mmbench_prompt(hint: Option<&str>, question: &str, options: &[(String, String)]) -> String {
    let mut opts = String::from("There are several options:\n");
    for (letter, text) in options {
        opts.push_str(&format!("{letter}. {text}\n"));
    }
    let image_prompt = format!("###Human: {IMAGE_SLOT}");
    match hint.filter(|h| !h.is_empty()) {
        Some(h) => format!("{image_prompt} {h} {question} {opts} ###Assistant:"),
        None => format!("{image_prompt} {question} {opts} ###Assistant:"),
    }
}

/// Python's `str.strip(chars)`: removes any of `chars` from both ends.
fn py_strip_chars<'a>(s: &'a str, chars: &str) -> &'a str {
    s.trim_matches(|c| chars.contains(c))
}

/// Python's `str.strip()` (whitespace as `str.isspace` defines it).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

/// OpenCompass's MiniGPT-4 answer cleaning: cut at `###`, keep the text after the last
/// `Assistant:`, then the (quirky, character-set) strips of `</s><s>` and `</Img>`.
pub fn clean_generated_text(text: &str) -> String {
    let t = text.split(SEP).next().unwrap_or("");
    let t = py_strip(t.rsplit("Assistant:").next().unwrap_or(""));
    let t = py_strip_chars(t, "</s><s>");
    let t = py_strip_chars(t, "</Img>");
    py_strip(t).to_string()
}

/// First match of the regex `([A-Z]\.)` (ASCII capital followed by a dot), as a letter.
pub fn first_option_letter(text: &str) -> Option<char> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(1))
        .find(|&i| b[i].is_ascii_uppercase() && b[i + 1] == b'.')
        .map(|i| b[i] as char)
}

/// MMBench answer extraction: the cleaned text's first `X.` letter, else the cleaned text (to
/// be handed to a choice extractor).
pub fn mmbench_extract(text: &str) -> String {
    let cleaned = clean_generated_text(text);
    match first_option_letter(&cleaned) {
        Some(l) => l.to_string(),
        None => cleaned,
    }
}

// ---------------------------------------------------------------------------------------------
// A-OKVQA ranking
// ---------------------------------------------------------------------------------------------

/// Which A-OKVQA evaluation prompt to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AokvqaPromptStyle {
    /// As released by MLLM-DataEngine: lowercase `<img>...</img>` and no BOS.
    #[default]
    Released,
    /// Consistent with training: `<Img>...</Img>` and BOS on the first segment.
    Clean,
}

impl AokvqaPromptStyle {
    /// Whether the first segment gets `<s>`.
    pub fn bos_first(self) -> bool {
        matches!(self, Self::Clean)
    }
}

/// `(A) c0 (B) c1 ...` for the given choices.
pub fn choice_text(choices: &[String]) -> String {
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {c}", letter(i)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Option letter of a 0-based index (`A`, `B`, ...).
pub fn letter(i: usize) -> char {
    (b'A' + (i % 26) as u8) as char
}

/// The A-OKVQA ranking prompt: `"###Human: <img><ImageHere></img> {q}\n{choices}\n###Assistant:
/// The answer is"`.
pub fn aokvqa_rank_prompt(question: &str, choices: &[String], style: AokvqaPromptStyle) -> String {
    let (open, close) = match style {
        AokvqaPromptStyle::Released => ("<img>", "</img>"),
        AokvqaPromptStyle::Clean => ("<Img>", "</Img>"),
    };
    format!(
        "###Human: {open}{IMAGE_PLACEHOLDER}{close} {question}\n{}\n###Assistant: The answer is",
        choice_text(choices)
    )
}

/// The candidate continuations scored by mean cross-entropy: `" (L) {choice}"` texts without the
/// leading space (tokenized on their own).
pub fn aokvqa_candidates(choices: &[String]) -> Vec<String> {
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {c}", letter(i)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Chat answer post-processing
// ---------------------------------------------------------------------------------------------

/// MiniGPT-4 `Chat.answer`: drop one leading `<unk>` then one leading `<s>`, decode keeping
/// special tokens, cut at `###`, keep the text after the last `Assistant:`, trim.
pub fn postprocess_answer_ids(tok: &LlamaTokenizer, ids: &[u32]) -> Result<String> {
    let mut ids = ids;
    if let (Some(&first), Some(unk)) = (ids.first(), tok.unk_id()) {
        if first == unk {
            ids = &ids[1..];
        }
    }
    if ids.first() == Some(&tok.bos_id()) {
        ids = &ids[1..];
    }
    let text = tok.decode(ids, false)?;
    Ok(postprocess_answer_text(&text))
}

/// Text part of [`postprocess_answer_ids`].
pub fn postprocess_answer_text(text: &str) -> String {
    let t = text.split(SEP).next().unwrap_or("");
    py_strip(t.rsplit("Assistant:").next().unwrap_or("")).to_string()
}

// ---------------------------------------------------------------------------------------------
// Training texts
// ---------------------------------------------------------------------------------------------

/// A training target: the first `len(tok(mask_text))` tokens of `text` are not supervised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainText {
    pub mask_text: String,
    pub text: String,
}

/// QA format: `mask = "{q}\n###Assistant: "`, `text = mask + "The answer is {answer}."`.
pub fn format_qa(question: &str, answer: &str) -> TrainText {
    let mask_text = format!("{question}\n###Assistant: ");
    let text = format!("{mask_text}The answer is {answer}.");
    TrainText { mask_text, text }
}

/// QMA format: question, `(A) .. (D) ..` choices, then `The answer is (L) {answer}.`.
pub fn format_qma(question: &str, choices: &[String], answer_idx: usize) -> TrainText {
    format_qmae(question, choices, answer_idx, None)
}

/// QMAE format: QMA plus `" {rationale}"` after the answer (the longest rationale in the
/// original; see [`longest`]).
pub fn format_qmae(
    question: &str,
    choices: &[String],
    answer_idx: usize,
    rationale: Option<&str>,
) -> TrainText {
    let mask_text = format!("{question}\n{}\n###Assistant: ", choice_text(choices));
    let answer = choices.get(answer_idx).map(String::as_str).unwrap_or("");
    let mut text = format!(
        "{mask_text}The answer is ({}) {answer}.",
        letter(answer_idx)
    );
    if let Some(r) = rationale.filter(|r| !r.is_empty()) {
        text.push(' ');
        text.push_str(r);
    }
    TrainText { mask_text, text }
}

/// The longest of several rationales (first one on ties), as DataEngine's QMAE picks it.
pub fn longest(texts: &[String]) -> Option<&str> {
    let mut best: Option<&String> = None;
    for t in texts {
        if best.is_none_or(|b| t.chars().count() > b.chars().count()) {
            best = Some(t);
        }
    }
    best.map(String::as_str)
}

/// Stage-2 instruction prompt: `"###Human: <Img><ImageHere></Img> {instruction} ###Assistant: "`.
pub fn instruction_prompt(instruction: &str) -> String {
    TRAIN_PROMPT_TEMPLATE.replacen("{}", &format!("{IMAGE_SLOT} {instruction}"), 1)
}

/// Fills MiniGPT-4's `prompt_template` with an instruction that already holds the image slot.
pub fn apply_prompt_template(template: &str, instruction_with_image: &str) -> String {
    template.replacen("{}", instruction_with_image, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_structure() {
        let p = ChatTemplate::vicuna0().single_turn("Q?");
        assert_eq!(
            p,
            format!("{VICUNA0_SYSTEM}###Human: <Img><ImageHere></Img> Q?###Assistant: ")
        );
        assert_eq!(split_segments(&p).len(), 2);
        assert_eq!(split_segments("a<ImageHere>b<ImageHere>").len(), 3);
    }

    #[test]
    fn mmbench_prompt_with_and_without_hint() {
        let opts = vec![
            ("A".to_string(), "cat".to_string()),
            ("B".to_string(), "dog".to_string()),
        ];
        assert_eq!(
            mmbench_prompt(None, "What?", &opts),
            "###Human: <Img><ImageHere></Img> What? There are several options:\nA. cat\nB. dog\n ###Assistant:"
        );
        assert_eq!(
            mmbench_prompt(Some("H"), "What?", &opts),
            "###Human: <Img><ImageHere></Img> H What? There are several options:\nA. cat\nB. dog\n ###Assistant:"
        );
    }

    #[test]
    fn mmbench_extraction() {
        assert_eq!(mmbench_extract("B. dog###Human: A."), "B");
        assert_eq!(mmbench_extract("Assistant: the answer is C. x"), "C");
        assert_eq!(mmbench_extract("a cat"), "a cat");
        // The released character-set strips eat a trailing 's' or 'g' (Python gives the same).
        assert_eq!(clean_generated_text("cats"), "cat");
        assert_eq!(clean_generated_text("a dog"), "a do");
        assert_eq!(first_option_letter("x A b. C."), Some('C'));
    }

    #[test]
    fn aokvqa_prompt_styles() {
        let ch: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let p = aokvqa_rank_prompt("Q?", &ch, AokvqaPromptStyle::Released);
        assert_eq!(
            p,
            "###Human: <img><ImageHere></img> Q?\n(A) a (B) b (C) c (D) d\n###Assistant: The answer is"
        );
        assert!(!AokvqaPromptStyle::Released.bos_first());
        assert!(aokvqa_rank_prompt("Q?", &ch, AokvqaPromptStyle::Clean)
            .contains("<Img><ImageHere></Img>"));
        assert_eq!(aokvqa_candidates(&ch)[2], "(C) c");
    }

    #[test]
    fn training_formats() {
        let qa = format_qa("Q?", "red");
        assert_eq!(qa.mask_text, "Q?\n###Assistant: ");
        assert_eq!(qa.text, "Q?\n###Assistant: The answer is red.");
        let ch: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let qma = format_qma("Q?", &ch, 1);
        assert_eq!(qma.mask_text, "Q?\n(A) a (B) b (C) c (D) d\n###Assistant: ");
        assert_eq!(
            qma.text,
            "Q?\n(A) a (B) b (C) c (D) d\n###Assistant: The answer is (B) b."
        );
        let qmae = format_qmae("Q?", &ch, 1, Some("Because."));
        assert!(qmae.text.ends_with("(B) b. Because."));
        assert!(qmae.text.starts_with(&qmae.mask_text));
        assert_eq!(
            instruction_prompt("Describe this image in detail."),
            "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "
        );
        let rs = vec!["ab".to_string(), "abcd".to_string(), "wxyz".to_string()];
        assert_eq!(longest(&rs), Some("abcd"));
    }

    #[test]
    fn answer_postprocessing() {
        assert_eq!(
            postprocess_answer_text(" red square.###Human: x"),
            "red square."
        );
        assert_eq!(postprocess_answer_text("foo Assistant: bar ###"), "bar");
    }
}
