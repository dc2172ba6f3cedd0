//! Teacher-LLM data generation for mde.
//!
//! - [`client`]: an OpenAI-compatible chat-completion [`Teacher`](mde_core::teacher::Teacher) on
//!   async-openai (OpenAI, Azure, vLLM, Ollama, llama.cpp server), with errors classified for
//!   retry (429/5xx/timeouts/connection/malformed body) and `Retry-After` exposed.
//! - [`runner`]: bounded-concurrency, retrying, budgeted, resumable generation into an
//!   append-only JSONL of [`TeacherReplyRecord`](mde_core::records::TeacherReplyRecord)s.
//! - [`prompt`]: generation and classification prompts from versioned template files.
//! - [`parse`]: the released reply parsing and post-processing rules (REFERENCE §5).
//! - [`validate`]: checks of replies against the image annotations, mapped to IPO failure types.
//! - [`postprocess`]: the whole pass plus GPTVQA v1/v2 and LLaVA exports.
//!
//! ```no_run
//! # async fn demo(queries: Vec<mde_core::records::GenQuery>) -> mde_gen::Result<()> {
//! use mde_gen::{build_teacher, GenConfig, GeneratePrompt, Runner};
//! let cfg = GenConfig::load("configs/teacher.toml")?;
//! let teacher = build_teacher(&cfg.teacher)?;
//! let prompt = GeneratePrompt::v1();
//! let runner = Runner::new(teacher, cfg.runner.clone());
//! let summary = runner
//!     .run(&queries, |q| prompt.request(q), "out/replies.jsonl", Some("out/summary.json".as_ref()))
//!     .await?;
//! println!("{} replies, {} failed", summary.completed, summary.failed);
//! # Ok(()) }
//! ```
//!
//! And offline, the released parsing rules:
//! ```
//! let reply = "Question: What is on the table?\nChoices: (A) A cup (B) A cat (C) A shoe (D) A car\n\
//!              Answer: The answer is (A): A cup.\nExplanation: A cup stands on the table.";
//! let p = mde_gen::parse::parse_reply(reply).unwrap();
//! assert_eq!((p.choices.len(), p.answer_idx), (4, 0));
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod parse;
pub mod postprocess;
pub mod prompt;
pub mod runner;
pub mod validate;

pub use client::{build_teacher, OpenAiTeacher};
pub use config::{GenConfig, PromptConfig, RunnerConfig, TeacherConfig, TeacherKind};
pub use error::{GenError, Result};
pub use postprocess::{postprocess, GenItem, PostprocessConfig, PostprocessOutput, ValidationMode};
pub use prompt::{ClassifyPrompt, GeneratePrompt};
pub use runner::{RunSummary, Runner};
pub use validate::{FailureCategory, Flag, Validator};

impl PromptConfig {
    /// The generation prompt this section selects: the template file (else the embedded v1),
    /// sent as a system message when `as_system` is set. The one place that reads the section,
    /// for `mde generate` and the loop alike.
    pub fn generate_prompt(&self) -> Result<GeneratePrompt> {
        let p = match &self.generate_template {
            Some(path) => GeneratePrompt::from_file(path)?,
            None => GeneratePrompt::v1(),
        };
        Ok(p.with_system_role(self.as_system))
    }
}

impl GenConfig {
    /// The generation prompt this config selects ([`PromptConfig::generate_prompt`]).
    pub fn generate_prompt(&self) -> Result<GeneratePrompt> {
        self.prompt.generate_prompt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_system` holds with and without a template file (the loop and `mde generate` both
    /// read `[gen.prompt]` through [`PromptConfig::generate_prompt`]).
    #[test]
    fn as_system_applies_with_and_without_a_template() {
        let q = mde_core::records::GenQuery {
            id: "q0".into(),
            question_type: "image_scene".into(),
            type_definition: "the scene".into(),
            captions: vec!["a cat".into()],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.txt");
        std::fs::write(&t, crate::prompt::GENERATE_V1).unwrap();
        for template in [None, Some(t)] {
            for as_system in [false, true] {
                let cfg = PromptConfig {
                    generate_template: template.clone(),
                    as_system,
                };
                let req = cfg.generate_prompt().unwrap().request(&q).unwrap();
                let want = if as_system { "system" } else { "user" };
                assert_eq!(
                    req.messages[0].role, want,
                    "{template:?} as_system={as_system}"
                );
            }
        }
    }
}
