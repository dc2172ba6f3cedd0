//! Text generation over prompt embeddings: greedy, sampling (temperature, top-k, top-p,
//! seeded), beam search (HF length penalty), EOS and stop token sequences, batched with left
//! padding (zero embeddings, mask 0, position ids `cumsum(mask) - 1` clamped at 0) and a KV cache.
//! Batched greedy decoding gives the same tokens as single runs.

use candle_core::{DType, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::llama::{KvCache, Llama};

/// Decoding settings. Defaults: greedy, 300 new tokens, no stop sequences.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Beam search when > 1 (ignores sampling settings).
    pub num_beams: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    /// HF applies top_k = 50 by default when sampling; 0 disables it.
    pub top_k: usize,
    pub seed: u64,
    /// HF beam score = sum logprob / len^length_penalty.
    pub length_penalty: f64,
    pub eos_token_ids: Vec<u32>,
    /// A row stops once its tokens end with one of these sequences (e.g. `[[835], [2277, 29937]]`).
    pub stop_sequences: Vec<Vec<u32>>,
    /// A row also stops when it emits one of these ids (e.g. pieces that merely contain
    /// "###" such as `.###`, see `LlamaTokenizer::ids_containing_stop_text`).
    pub stop_token_ids: Vec<u32>,
    /// Keep the raw logits of every step (tests, debugging).
    pub output_step_logits: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 300,
            num_beams: 1,
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 50,
            seed: 42,
            length_penalty: 1.0,
            eos_token_ids: vec![],
            stop_sequences: vec![],
            stop_token_ids: vec![],
            output_step_logits: false,
        }
    }
}

impl GenerationConfig {
    /// Checks the decoding settings: `max_new_tokens` and `num_beams` at least 1, `temperature`
    /// finite and >= 0, `top_p` in (0, 1], `length_penalty` finite. Checked whether or not
    /// sampling is on, so a bad value never waits for the setting that would use it. Every
    /// generation entry point calls it; CLIs call it before loading a model.
    pub fn validate(&self) -> Result<()> {
        use crate::config::check;
        check::at_least("max_new_tokens", self.max_new_tokens, 1)?;
        check::at_least("num_beams", self.num_beams, 1)?;
        check::non_negative("temperature", self.temperature)?;
        check::unit_open_closed("top_p", self.top_p)?;
        check::finite("length_penalty", self.length_penalty)
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    StopSequence,
    Length,
}

/// One generated sequence. `tokens` includes the final EOS / stop tokens when they ended it.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// `[vocab]` f32 logits of each step (when `output_step_logits`).
    pub step_logits: Vec<Tensor>,
    /// Beam search only: the final beam score.
    pub score: Option<f64>,
}

/// Position ids `cumsum(mask) - 1`, 0 where that is negative (HF).
pub fn positions_from_mask(mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (b, t) = (m.len(), m.first().map(|r| r.len()).unwrap_or(0));
    let mut v = Vec::with_capacity(b * t);
    for row in &m {
        let mut c: i64 = 0;
        for &x in row {
            if x != 0.0 {
                c += 1;
            }
            v.push((c - 1).max(0) as u32);
        }
    }
    Ok(Tensor::from_vec(v, (b, t), mask.device())?)
}

/// Left-pads prompt embeddings (`[T_i, hidden]` each) with zero vectors to
/// `(embeds [B, T, hidden], mask [B, T] u32, position_ids [B, T] u32)`.
pub fn left_pad(prompts: &[Tensor]) -> Result<(Tensor, Tensor, Tensor)> {
    let first = prompts
        .first()
        .ok_or_else(|| Error::Invalid("no prompt".into()))?;
    let (dev, dt) = (first.device().clone(), first.dtype());
    let h = first.dim(1)?;
    let t = prompts
        .iter()
        .map(|p| p.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tmax = *t.iter().max().unwrap_or(&0);
    let mut rows = Vec::new();
    let mut mask = Vec::new();
    for (p, &ti) in prompts.iter().zip(&t) {
        let pad = tmax - ti;
        rows.push(if pad > 0 {
            Tensor::cat(&[&Tensor::zeros((pad, h), dt, &dev)?, p], 0)?
        } else {
            p.clone()
        });
        mask.extend((0..tmax).map(|i| u32::from(i >= pad)));
    }
    let mask = Tensor::from_vec(mask, (prompts.len(), tmax), &dev)?;
    let pos = positions_from_mask(&mask)?;
    Ok((Tensor::stack(&rows, 0)?, mask, pos))
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(v: &[f32], cfg: &GenerationConfig, rng: &mut ChaCha8Rng) -> u32 {
    let t = cfg.temperature.max(1e-6) as f32;
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal));
    if cfg.top_k > 0 && cfg.top_k < idx.len() {
        idx.truncate(cfg.top_k);
    }
    let m = v[idx[0]] / t;
    let mut p: Vec<f64> = idx.iter().map(|&i| ((v[i] / t - m) as f64).exp()).collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    if cfg.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token), as HF.
        let mut c = 0.0;
        let mut keep = p.len();
        for (i, &x) in p.iter().enumerate() {
            c += x;
            if c >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
    }
    let r: f64 = rng.random();
    let mut c = 0.0;
    for (k, &x) in p.iter().enumerate() {
        c += x;
        if r < c {
            return idx[k] as u32;
        }
    }
    idx[p.len() - 1] as u32
}

fn ends_with_stop(tokens: &[u32], cfg: &GenerationConfig) -> Option<FinishReason> {
    let last = *tokens.last()?;
    if cfg.eos_token_ids.contains(&last) {
        return Some(FinishReason::Eos);
    }
    if cfg.stop_token_ids.contains(&last) {
        return Some(FinishReason::StopSequence);
    }
    cfg.stop_sequences
        .iter()
        .any(|s| !s.is_empty() && tokens.ends_with(s))
        .then_some(FinishReason::StopSequence)
}

/// Generates for every prompt (`[T_i, hidden]` embeddings). `on_token(row, token)` is called
/// for each new token (streaming).
pub fn generate(
    llama: &Llama,
    prompts: &[Tensor],
    cfg: &GenerationConfig,
    mut on_token: Option<&mut dyn FnMut(usize, u32)>,
) -> Result<Vec<GenerationOutput>> {
    cfg.validate()?;
    if cfg.num_beams > 1 {
        return prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let out = beam_search(llama, p, cfg)?;
                if let Some(cb) = on_token.as_mut() {
                    out.tokens.iter().for_each(|&t| cb(i, t));
                }
                Ok(out)
            })
            .collect();
    }
    let b = prompts.len();
    let (x, mask, pos) = left_pad(
        &prompts
            .iter()
            .map(|p| p.to_dtype(llama.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?,
    )?;
    let dev = x.device().clone();
    let vocab = llama.cfg.vocab_size;
    let mut cache = KvCache::new(llama.layers.len());
    let mut mask_rows: Vec<Vec<u32>> = mask.to_vec2::<u32>()?;
    let mut next_pos: Vec<u32> = pos
        .to_vec2::<u32>()?
        .iter()
        .map(|r| r.last().map(|p| p + 1).unwrap_or(0))
        .collect();
    let mut last = llama.forward_last(&x, &pos, Some(&mask), Some(&mut cache))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut outs: Vec<GenerationOutput> = (0..b)
        .map(|_| GenerationOutput {
            tokens: vec![],
            finish: FinishReason::Length,
            step_logits: vec![],
            score: None,
        })
        .collect();
    let mut done = vec![false; b];
    for _step in 0..cfg.max_new_tokens {
        let rows = last.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut feed = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            if done[r] {
                feed.push(cfg.eos_token_ids.first().copied().unwrap_or(0));
                continue;
            }
            if row.len() != vocab {
                return Err(Error::Mismatch(format!(
                    "logits width {} != vocab {vocab}",
                    row.len()
                )));
            }
            let tok = if cfg.do_sample {
                sample(row, cfg, &mut rng)
            } else {
                argmax(row)
            };
            if cfg.output_step_logits {
                outs[r].step_logits.push(last.get(r)?);
            }
            outs[r].tokens.push(tok);
            if let Some(cb) = on_token.as_mut() {
                cb(r, tok);
            }
            if let Some(f) = ends_with_stop(&outs[r].tokens, cfg) {
                outs[r].finish = f;
                done[r] = true;
            }
            feed.push(tok);
        }
        if done.iter().all(|&d| d) || _step + 1 == cfg.max_new_tokens {
            break;
        }
        for m in mask_rows.iter_mut() {
            m.push(1);
        }
        let ids = Tensor::from_vec(feed, (b, 1), &dev)?;
        let emb = llama.embed(&ids)?;
        let p = Tensor::from_vec(next_pos.clone(), (b, 1), &dev)?;
        next_pos.iter_mut().for_each(|p| *p += 1);
        let s = mask_rows[0].len();
        let m = Tensor::from_vec(mask_rows.concat(), (b, s), &dev)?;
        last = llama.forward_last(&emb, &p, Some(&m), Some(&mut cache))?;
    }
    Ok(outs)
}

/// Beam search for one prompt, following HF `BeamSearchScorer` (early_stopping = false):
/// 2·num_beams candidates per step; a candidate ending in EOS or a stop sequence becomes a
/// finished hypothesis scored `sum_logprobs / len^length_penalty` (len = generated tokens
/// before the EOS); the search stops when no running beam can beat the worst kept hypothesis;
/// at `max_new_tokens` the running beams join the hypotheses. Stop sequences are kept in the
/// returned tokens, EOS is not.
pub fn beam_search(
    llama: &Llama,
    prompt: &Tensor,
    cfg: &GenerationConfig,
) -> Result<GenerationOutput> {
    cfg.validate()?;
    let nb = cfg.num_beams;
    let dev = prompt.device().clone();
    let t0 = prompt.dim(0)?;
    let x = prompt.to_dtype(llama.dtype())?.unsqueeze(0)?;
    let pos = Tensor::arange(0u32, t0 as u32, &dev)?.unsqueeze(0)?;
    let mut cache = KvCache::new(llama.layers.len());
    let mut last = llama.forward_last(&x, &pos, None, Some(&mut cache))?; // [beams, V]
    let mut beams: Vec<(Vec<u32>, f64)> = vec![(vec![], 0.0)];
    let mut hyps: Vec<(f64, Vec<u32>, FinishReason)> = vec![];
    let lp = cfg.length_penalty;
    let norm = |sum: f64, len: usize| sum / (len.max(1) as f64).powf(lp);
    for step in 0..cfg.max_new_tokens {
        let lsm = candle_nn::ops::log_softmax(&last.to_dtype(DType::F32)?, D::Minus1)?
            .to_vec2::<f32>()?;
        let mut cands: Vec<(f64, usize, u32)> = Vec::new();
        for (bi, row) in lsm.iter().enumerate() {
            let base = beams[bi].1;
            // Keep the top 2*nb of this beam; the global top 2*nb is among them.
            let mut idx: Vec<usize> = (0..row.len()).collect();
            let k = (2 * nb).min(row.len());
            idx.select_nth_unstable_by(k - 1, |&a, &b| {
                row[b]
                    .partial_cmp(&row[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            for &i in &idx[..k] {
                cands.push((base + row[i] as f64, bi, i as u32));
            }
        }
        cands.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        cands.truncate(2 * nb);
        let mut next: Vec<(Vec<u32>, f64, usize)> = Vec::new();
        for (rank, (score, bi, tok)) in cands.iter().enumerate() {
            let mut toks = beams[*bi].0.clone();
            toks.push(*tok);
            match ends_with_stop(&toks, cfg) {
                Some(f) => {
                    if rank >= nb {
                        continue;
                    }
                    let len = if f == FinishReason::Eos {
                        toks.len() - 1
                    } else {
                        toks.len()
                    };
                    if f == FinishReason::Eos {
                        toks.pop();
                    }
                    hyps.push((norm(*score, len), toks, f));
                    hyps.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
                    hyps.truncate(nb);
                }
                None => next.push((toks, *score, *bi)),
            }
            if next.len() == nb {
                break;
            }
        }
        let cur_len = step + 1;
        let done = hyps.len() >= nb
            && next
                .first()
                .is_none_or(|b| hyps.last().map(|h| h.0).unwrap_or(f64::MIN) >= norm(b.1, cur_len));
        if done || next.is_empty() || step + 1 == cfg.max_new_tokens {
            if !done {
                for (toks, s, _) in &next {
                    let l = toks.len();
                    hyps.push((norm(*s, l), toks.clone(), FinishReason::Length));
                }
            }
            break;
        }
        let parents: Vec<u32> = next.iter().map(|n| n.2 as u32).collect();
        let feed: Vec<u32> = next.iter().map(|n| *n.0.last().unwrap()).collect();
        let n = next.len();
        cache = cache.index_select(&Tensor::from_vec(parents, n, &dev)?)?;
        beams = next.into_iter().map(|(t, s, _)| (t, s)).collect();
        let emb = llama.embed(&Tensor::from_vec(feed, (n, 1), &dev)?)?;
        let p = Tensor::full((t0 + step) as u32, (n, 1), &dev)?;
        last = llama.forward_last(&emb, &p, None, Some(&mut cache))?;
    }
    hyps.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let (score, tokens, finish) =
        hyps.into_iter()
            .next()
            .unwrap_or((0.0, vec![], FinishReason::Length));
    Ok(GenerationOutput {
        tokens,
        finish,
        step_logits: vec![],
        score: Some(score),
    })
}
