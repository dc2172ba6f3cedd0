//! The model interface the benchmark runners drive.
//!
//! Runners (crate `mde-eval`) know benchmarks, files and bookkeeping; models know prompts, tokens
//! and tensors. [`EvalModel`] is the seam between them: a runner hands over the decoded parts of a
//! question plus a [`PromptStyle`], and the *model adapter* builds the exact prompt its original
//! implementation uses (MiniGPT-4's OpenCompass MMBench prompt, the released A-OKVQA ranking
//! prompt with its quirks, ...). A LLaVA backend therefore plugs in without touching the runners.
//!
//! This module stays dependency-free: images travel as raw RGB or encoded (PNG/JPEG) bytes and are
//! decoded by the adapter.
//!
//! ```
//! use mde_core::model::{EvalModel, EvalRequest, ImageInput, ModelError, PromptStyle};
//!
//! /// Answers "A" to everything and prefers the shortest candidate.
//! struct Fixed;
//! impl EvalModel for Fixed {
//!     fn name(&self) -> String { "fixed".into() }
//!     fn max_batch(&self) -> usize { 8 }
//!     fn generate(&mut self, reqs: &[EvalRequest]) -> Result<Vec<String>, ModelError> {
//!         Ok(reqs.iter().map(|_| "A".to_string()).collect())
//!     }
//!     fn rank(&mut self, reqs: &[EvalRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
//!         Ok(reqs.iter().map(|r| r.choices.iter().map(|c| c.len() as f32).collect()).collect())
//!     }
//! }
//! let req = EvalRequest {
//!     id: "q1".into(),
//!     image: ImageInput::Rgb { width: 1, height: 1, data: vec![0, 0, 0] },
//!     question: "What is it?".into(),
//!     hint: None,
//!     choices: vec!["cat".into(), "horse".into()],
//!     choice_letters: vec![],
//!     style: PromptStyle::AokvqaRank { released_quirks: true },
//! };
//! let scores = Fixed.rank(std::slice::from_ref(&req)).unwrap();
//! assert_eq!(scores[0], vec![3.0, 5.0]);
//! ```
use std::fmt;

/// An image handed to a model.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageInput {
    /// Decoded 8-bit RGB pixels, row-major, `data.len() == width * height * 3`.
    Rgb {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
    /// An encoded image file (PNG, JPEG, ...) as read from disk or a base64 TSV field.
    Encoded { data: Vec<u8> },
}

impl ImageInput {
    /// Checks the RGB buffer size; encoded bytes are only checked for being non-empty (the
    /// adapter's decoder reports anything else).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ImageInput::Rgb {
                width,
                height,
                data,
            } => {
                let want = *width as usize * *height as usize * 3;
                if *width == 0 || *height == 0 || data.len() != want {
                    return Err(format!(
                        "RGB image {width}x{height} needs {want} bytes, got {}",
                        data.len()
                    ));
                }
                Ok(())
            }
            ImageInput::Encoded { data } if data.is_empty() => Err("empty image file".into()),
            ImageInput::Encoded { .. } => Ok(()),
        }
    }
}

// Manual Debug so that a failing assertion does not print megabytes of pixels.
impl fmt::Debug for ImageInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageInput::Rgb {
                width,
                height,
                data,
            } => {
                write!(f, "Rgb({width}x{height}, {} bytes)", data.len())
            }
            ImageInput::Encoded { data } => write!(f, "Encoded({} bytes)", data.len()),
        }
    }
}

/// Which prompt (and answer convention) the adapter must reproduce. The runner picks the style
/// of the benchmark; the adapter owns the template text, special tokens and decoding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptStyle {
    /// The model's plain chat template with `question` as the user turn (choices, when present,
    /// are appended by the adapter in its own chat convention).
    Chat,
    /// MMBench generation (OpenCompass prompt: hint, question, "There are several options:" and
    /// one "L. text" line per choice; beam search, short answers).
    MMBench,
    /// A-OKVQA likelihood ranking of "(L) choice" continuations after a multiple-choice prompt.
    /// `released_quirks` reproduces the released evaluation (lowercase `<img>`, no BOS); `false`
    /// uses the training template (`<Img>`, BOS).
    AokvqaRank { released_quirks: bool },
    /// MME yes/no generation: the question already ends with "Please answer yes or no.".
    Mme,
    /// SEED-Bench likelihood ranking of the choices (the official protocol ranks candidates).
    SeedRank,
    /// Likelihood ranking of a multiple-choice question with an optional hint (MMBench scored
    /// by ranking, for models too small to follow the generation prompt): the training-format
    /// prompt `{hint} {question}` + `(L) choice` listing with the choices' own letters, each
    /// `(L) choice` continuation scored. The runner turns the best choice into its letter.
    McqRank,
    /// Likelihood ranking of the choice texts themselves after a QA-format prompt without an
    /// option listing (`{hint} {question}\n###Assistant: The answer is`, BOS first): for models
    /// trained in the `qa` format (question, then "The answer is {answer}."), where the letter of
    /// an option carries no meaning. The runner turns the best choice into its letter / text.
    AnswerRank,
}

/// One question for the model: the decoded image plus the question's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRequest {
    /// The benchmark item id (for error messages; the model must not depend on it).
    pub id: String,
    pub image: ImageInput,
    pub question: String,
    /// Context text shown before the question (MMBench hint), when the benchmark has one.
    pub hint: Option<String>,
    /// Options in letter order (A, B, ...); empty for open and yes/no questions. For ranking
    /// these are the candidates to score.
    pub choices: Vec<String>,
    /// The letter shown for each choice when it is not simply A, B, C, ... in order (MMBench
    /// keeps an option's original letter when an earlier option is blank); empty means in order.
    pub choice_letters: Vec<char>,
    pub style: PromptStyle,
}

impl EvalRequest {
    /// The letter of choice `i`: `choice_letters[i]` when given, else A, B, C, ...
    pub fn letter(&self, i: usize) -> char {
        self.choice_letters
            .get(i)
            .copied()
            .unwrap_or_else(|| (b'A' + (i % 26) as u8) as char)
    }
}

/// Requests for generation and ranking share one shape.
pub type GenerateRequest = EvalRequest;
/// See [`GenerateRequest`].
pub type RankRequest = EvalRequest;

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The request itself is unusable (undecodable image, no candidates, unsupported style).
    #[error("item {id}: {msg}")]
    InvalidInput { id: String, msg: String },
    /// The backend failed (tensor error, out of memory, ...): the whole batch is lost.
    #[error("model backend: {0}")]
    Backend(String),
}

/// A vision-language model as the benchmark runners see it.
///
/// Both methods take a batch (at most [`EvalModel::max_batch`] requests) and return one result
/// per request, in order. Implementations may run a batch sequentially.
pub trait EvalModel {
    /// A short name for logs and reports (e.g. "minigpt4-vicuna7b+lora").
    fn name(&self) -> String;

    /// The largest batch the model accepts in one call (at least 1).
    fn max_batch(&self) -> usize;

    /// Generates one answer per request (the text after the assistant tag, stop strings removed).
    fn generate(&mut self, reqs: &[GenerateRequest]) -> Result<Vec<String>, ModelError>;

    /// Scores every choice of every request: the mean token cross-entropy of the candidate
    /// continuation given the prompt (lower is better). `result[i].len() == reqs[i].choices.len()`.
    fn rank(&mut self, reqs: &[RankRequest]) -> Result<Vec<Vec<f32>>, ModelError>;
}

impl<M: EvalModel + ?Sized> EvalModel for Box<M> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn max_batch(&self) -> usize {
        (**self).max_batch()
    }
    fn generate(&mut self, reqs: &[GenerateRequest]) -> Result<Vec<String>, ModelError> {
        (**self).generate(reqs)
    }
    fn rank(&mut self, reqs: &[RankRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
        (**self).rank(reqs)
    }
}

/// Index of the smallest score, ignoring NaN; ties go to the first (as `torch.argmin`). `None`
/// when there is no finite-or-infinite score at all.
pub fn argmin(scores: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if s.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if s >= b => {}
            _ => best = Some((i, s)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_first_minimum_and_skips_nan() {
        assert_eq!(argmin(&[2.0, 1.0, 1.0]), Some(1));
        assert_eq!(argmin(&[f32::NAN, 3.0, 4.0]), Some(1));
        assert_eq!(argmin(&[f32::NAN]), None);
        assert_eq!(argmin(&[]), None);
    }

    #[test]
    fn rgb_size_is_checked() {
        assert!(ImageInput::Rgb {
            width: 2,
            height: 1,
            data: vec![0; 6]
        }
        .validate()
        .is_ok());
        let err = ImageInput::Rgb {
            width: 2,
            height: 2,
            data: vec![0; 6],
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("needs 12 bytes"), "{err}");
        assert!(ImageInput::Encoded { data: vec![] }.validate().is_err());
    }
}
