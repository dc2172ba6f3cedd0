//! Training batch layout of MiniGPT-4 stage 2 (`MiniGPTBase.preparing_embedding`, instruction
//! branch, plus `concat_emb_input_output` and the target construction of `forward`).
//!
//! Per row: `[<s>] + cond_i[..L_i] + answer_i (right-padded) + cond padding`, where
//!
//! * `cond_i` = the prompt split on `<ImageHere>`, each text segment tokenized without special
//!   tokens, with `n_img` image rows between segments, truncated to `max_context_len`;
//! * `answer_i` = `tok(answer + end_sym)` without special tokens, truncated to `max_txt_len`,
//!   right-padded with the pad id to the longest answer (mask 0 on padding);
//! * cond padding = `max(L) - L_i` pad rows (mask 0), moved behind the answer.
//!
//! Labels are -100 everywhere except the answer tokens; answer tokens equal to the pad id are
//! ignored too (`masked_fill(ids == pad_id, -100)` in the original).

use minigpt4::prompt::split_segments;
use minigpt4::tokenizer::LlamaTokenizer;

use crate::error::{Result, TrainError};

/// Id placed in [`TrainBatch::token_ids`] at image rows.
pub const IMAGE_ROW_ID: i64 = -1;
/// Ignored label.
pub const IGNORE_INDEX: i64 = -100;

/// Length limits of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutConfig {
    /// Number of image rows per `<ImageHere>` (Q-Former query tokens: 32 real, 8 in fixture A).
    pub n_img: usize,
    /// Answer truncation (`max_txt_len`, 160 in MiniGPT-4).
    pub max_txt_len: usize,
    /// Prompt-embedding truncation (`max_context_len`, 3800 in MiniGPT-4).
    pub max_context_len: usize,
}

impl LayoutConfig {
    /// MiniGPT-4 defaults with `n_img` image rows.
    pub fn minigpt4(n_img: usize) -> Self {
        Self {
            n_img,
            max_txt_len: 160,
            max_context_len: 3800,
        }
    }
}

/// One training sample: a prompt holding `<ImageHere>` placeholders and the target answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSample {
    pub prompt: String,
    pub answer: String,
}

/// Token-level layout of a batch; all rows have `seq_len` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainBatch {
    /// Token ids, [`IMAGE_ROW_ID`] at image rows, pad id at padding.
    pub token_ids: Vec<Vec<i64>>,
    /// 1 at image rows.
    pub is_image: Vec<Vec<i64>>,
    /// 1 on real tokens (BOS, prompt, image, answer), 0 on padding.
    pub attention_mask: Vec<Vec<i64>>,
    /// Answer ids at answer positions, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<Vec<i64>>,
    /// Number of `<ImageHere>` placeholders (images) in each row.
    pub images_per_row: Vec<usize>,
}

impl TrainBatch {
    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.token_ids.len()
    }

    /// Row length.
    pub fn seq_len(&self) -> usize {
        self.token_ids.first().map_or(0, Vec::len)
    }

    /// Number of supervised targets after the causal shift (labels[1..] != -100).
    pub fn n_targets(&self) -> usize {
        self.labels
            .iter()
            .map(|r| r.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Flattened `[B * T]` views, row-major, for building tensors.
    pub fn flat(rows: &[Vec<i64>]) -> Vec<i64> {
        rows.iter().flatten().copied().collect()
    }
}

/// Builds the batch layout of MiniGPT-4's instruction branch.
pub fn build_batch(
    tok: &LlamaTokenizer,
    samples: &[TrainSample],
    end_sym: &str,
    cfg: LayoutConfig,
) -> Result<TrainBatch> {
    if samples.is_empty() {
        return Err(TrainError::Invalid("empty training batch".into()));
    }
    let pad = i64::from(tok.pad_id());
    // cond rows (without BOS)
    let mut conds: Vec<(Vec<i64>, Vec<i64>)> = Vec::with_capacity(samples.len());
    let mut images_per_row = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let segs = split_segments(&s.prompt);
        if segs.len() < 2 {
            return Err(TrainError::Invalid(format!(
                "sample {i}: the prompt has no <ImageHere> placeholder: {:?}",
                s.prompt
            )));
        }
        let mut ids = Vec::new();
        let mut img = Vec::new();
        for (k, seg) in segs.iter().enumerate() {
            if k > 0 {
                ids.extend(std::iter::repeat_n(IMAGE_ROW_ID, cfg.n_img));
                img.extend(std::iter::repeat_n(1, cfg.n_img));
            }
            let t = tok.encode(seg, false)?;
            img.extend(std::iter::repeat_n(0, t.len()));
            ids.extend(t.into_iter().map(i64::from));
        }
        ids.truncate(cfg.max_context_len);
        img.truncate(cfg.max_context_len);
        images_per_row.push(segs.len() - 1);
        conds.push((ids, img));
    }
    let max_cond = conds.iter().map(|c| c.0.len()).max().unwrap_or(0);
    // answers
    let answers: Vec<Vec<i64>> = samples
        .iter()
        .map(|s| {
            let mut a: Vec<i64> = tok
                .encode(&format!("{}{end_sym}", s.answer), false)?
                .into_iter()
                .map(i64::from)
                .collect();
            a.truncate(cfg.max_txt_len);
            Ok(a)
        })
        .collect::<Result<_>>()?;
    let max_ans = answers.iter().map(Vec::len).max().unwrap_or(0);
    let bos = i64::from(tok.bos_id());
    let mut out = TrainBatch {
        token_ids: Vec::new(),
        is_image: Vec::new(),
        attention_mask: Vec::new(),
        labels: Vec::new(),
        images_per_row,
    };
    for ((cond, img), ans) in conds.iter().zip(&answers) {
        let mut ids = vec![bos];
        let mut is_img = vec![0];
        let mut mask = vec![1];
        let mut labels = vec![IGNORE_INDEX];
        ids.extend(cond);
        is_img.extend(img);
        mask.extend(std::iter::repeat_n(1, cond.len()));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, cond.len()));
        for k in 0..max_ans {
            let (id, m) = if k < ans.len() { (ans[k], 1) } else { (pad, 0) };
            ids.push(id);
            is_img.push(0);
            mask.push(m);
            labels.push(if id == pad { IGNORE_INDEX } else { id });
        }
        let cond_pad = max_cond - cond.len();
        ids.extend(std::iter::repeat_n(pad, cond_pad));
        is_img.extend(std::iter::repeat_n(0, cond_pad));
        mask.extend(std::iter::repeat_n(0, cond_pad));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, cond_pad));
        out.token_ids.push(ids);
        out.is_image.push(is_img);
        out.attention_mask.push(mask);
        out.labels.push(labels);
    }
    Ok(out)
}

/// Turns a DataEngine / MiniGPT-4 `(instruction, answer)` pair into a [`TrainSample`] using a
/// `prompt_template` such as `"###Human: {} ###Assistant: "`. The instruction must already
/// hold the image slot (`<Img><ImageHere></Img> ...`).
pub fn sample_from_template(template: &str, instruction: &str, answer: &str) -> TrainSample {
    TrainSample {
        prompt: minigpt4::prompt::apply_prompt_template(template, instruction),
        answer: answer.to_string(),
    }
}

/// A QA/QMA/QMAE sample as a [`TrainSample`]: the masked part (question, choices,
/// `###Assistant: `) goes into the prompt after the image slot and the rest of the text is the
/// supervised answer, so exactly the `mask_text` tokens are unsupervised.
pub fn sample_from_train_text(t: &minigpt4::prompt::TrainText) -> Result<TrainSample> {
    let answer = t.text.strip_prefix(&t.mask_text).ok_or_else(|| {
        TrainError::Invalid(format!(
            "training text does not start with its mask text: {:?}",
            t.mask_text
        ))
    })?;
    Ok(TrainSample {
        prompt: format!("###Human: {} {}", minigpt4::prompt::IMAGE_SLOT, t.mask_text),
        answer: answer.to_string(),
    })
}
