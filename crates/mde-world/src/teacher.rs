//! The grounded offline teacher: answers generation queries from the world's ground truth, in the
//! text format a real teacher LLM returns (REFERENCE §4), so the whole parse/filter/validate path
//! runs unchanged without network access.
//!
//! - `Generate { query }`: one Q&A of the query's type about the query's image:
//!   `Question: ...\nChoices: (A) .. (B) .. (C) .. (D) ..\nAnswer: The answer is (X): ...\nExplanations: ...`.
//!   Objects in the explanation are cited with their normalised box (`the red circle [0.1, 0.2,
//!   0.3, 0.4]`), as the IPO prompt asks; the post-processing strips the boxes. A type the image
//!   cannot support gives `Skip` plus a reason.
//! - With `error_rate > 0`, a seeded fraction of replies carry one deliberate error
//!   ([`InjectedError`]) for the validator to catch; [`WorldTeacher::planned_error`] tells which.
//! - `Classify { questions, types }`: one `N. (k) type` line per question (k = 1-based position of
//!   the type in `types`), from the world's question templates.
//! - Token usage: whitespace-separated words as a proxy.
use crate::config::WorldConfig;
use crate::questions::{ask, classify_question, plain_mention, QType, Question};
use crate::scene::{Object, Scene};
use crate::world::{fnv1a, World};
use mde_core::records::GenQuery;
use mde_core::teacher::{
    BoxFuture, Teacher, TeacherError, TeacherReply, TeacherRequest, TeacherTask,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of the grounded teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeacherOptions {
    /// Seed of the per-query streams (a query's reply depends only on this and its id).
    pub seed: u64,
    /// Fraction of generation replies that carry a deliberate error.
    pub error_rate: f64,
    /// Cite object boxes after object mentions in explanations.
    pub cite_boxes: bool,
    /// Model name reported in replies.
    pub model: String,
}

impl Default for TeacherOptions {
    fn default() -> Self {
        TeacherOptions {
            seed: 0,
            error_rate: 0.0,
            cite_boxes: true,
            model: "mde-world-grounded".into(),
        }
    }
}

/// Kinds of deliberate errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedError {
    /// The explanation cites a box far from the object's real one.
    WrongBox,
    /// The question asks about an object that is not in the image.
    InventedObject,
    /// The question is of another type than the one asked for.
    WrongType,
}

/// The grounded offline teacher. Cheap to clone (the ground truth is shared).
#[derive(Debug, Clone)]
pub struct WorldTeacher {
    cfg: WorldConfig,
    scenes: Arc<HashMap<u64, Scene>>,
    opts: TeacherOptions,
}

/// Counts whitespace-separated words (the token proxy).
pub fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn fmt_box(b: [f64; 4]) -> String {
    format!("[{:.3}, {:.3}, {:.3}, {:.3}]", b[0], b[1], b[2], b[3])
}

impl WorldTeacher {
    pub fn new(world: &World, opts: TeacherOptions) -> Self {
        let scenes = world
            .scenes()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        WorldTeacher {
            cfg: world.config().clone(),
            scenes: Arc::new(scenes),
            opts,
        }
    }

    /// Loads the world at `dir` and builds a teacher over it.
    pub fn from_dir(
        dir: impl AsRef<std::path::Path>,
        opts: TeacherOptions,
    ) -> Result<Self, crate::WorldError> {
        Ok(Self::new(&World::load(dir)?, opts))
    }

    pub fn options(&self) -> &TeacherOptions {
        &self.opts
    }

    fn query_rng(&self, query_id: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.opts.seed ^ fnv1a(query_id).rotate_left(17))
    }

    /// The error this teacher intends for a query (before checking that the image allows it;
    /// [`WorldTeacher::generate`] returns the error it actually made).
    pub fn planned_error(&self, query_id: &str) -> Option<InjectedError> {
        let mut rng = self.query_rng(query_id);
        Self::draw_error(&mut rng, self.opts.error_rate)
    }

    fn draw_error(rng: &mut ChaCha8Rng, rate: f64) -> Option<InjectedError> {
        let u: f64 = rng.random();
        let k = rng.random_range(0..3);
        (u < rate).then_some(
            [
                InjectedError::WrongBox,
                InjectedError::InventedObject,
                InjectedError::WrongType,
            ][k],
        )
    }

    /// Answers a generation query: the reply text and the error actually injected.
    pub fn generate(
        &self,
        query: &GenQuery,
    ) -> Result<(String, Option<InjectedError>), TeacherError> {
        let scene = self.scenes.get(&query.image_id).ok_or_else(|| {
            TeacherError::fatal(format!(
                "query {}: image {} is not in this world",
                query.id, query.image_id
            ))
        })?;
        let mut rng = self.query_rng(&query.id);
        let planned = Self::draw_error(&mut rng, self.opts.error_rate);
        let Some(qtype) = QType::from_id(query.question_type.trim()) else {
            return Ok((
                format!(
                    "Skip\nReason: the image only shows simple colored shapes, so a \"{}\" question cannot be asked about it.",
                    query.question_type
                ),
                None,
            ));
        };
        let cite_true = |o: &Object| {
            if self.opts.cite_boxes {
                format!(
                    "{} {}",
                    plain_mention(o),
                    fmt_box(o.norm_box(scene.width, scene.height))
                )
            } else {
                plain_mention(o)
            }
        };
        match planned {
            Some(InjectedError::InventedObject) => {
                if let Some(text) = self.invented(scene, &mut rng) {
                    return Ok((text, planned));
                }
            }
            Some(InjectedError::WrongType) => {
                let mut others: Vec<QType> = self
                    .cfg
                    .types
                    .iter()
                    .copied()
                    .filter(|t| *t != qtype)
                    .collect();
                others.shuffle(&mut rng);
                for t in others {
                    if let Some(q) = ask(&self.cfg, scene, t, &mut rng) {
                        return Ok((self.format(scene, &q, &cite_true), planned));
                    }
                }
            }
            _ => {}
        }
        let Some(q) = ask(&self.cfg, scene, qtype, &mut rng) else {
            return Ok((skip_reason(qtype, scene), None));
        };
        if planned == Some(InjectedError::WrongBox) && !scene.objects.is_empty() {
            // Displace the first cited object's box by about a third of the image.
            let target = q.objects.first().copied().unwrap_or(0);
            let cite_wrong = |o: &Object| {
                let b = o.norm_box(scene.width, scene.height);
                if std::ptr::eq(o, &scene.objects[target]) {
                    let (w, h) = (b[2] - b[0], b[3] - b[1]);
                    let nx = if b[0] > 0.5 { b[0] - 0.4 } else { b[0] + 0.4 }.clamp(0.0, 1.0 - w);
                    let ny = if b[1] > 0.5 { b[1] - 0.35 } else { b[1] + 0.35 }.clamp(0.0, 1.0 - h);
                    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
                    format!(
                        "{} {}",
                        plain_mention(o),
                        fmt_box([r3(nx), r3(ny), r3(nx + w), r3(ny + h)])
                    )
                } else {
                    cite_true(o)
                }
            };
            let mut text = self.format(scene, &q, &cite_wrong);
            if q.objects.is_empty() {
                text.push_str(&format!(
                    " This is easy to judge around {}.",
                    cite_wrong(&scene.objects[target])
                ));
            }
            return Ok((text, planned));
        }
        Ok((self.format(scene, &q, &cite_true), None))
    }

    fn format(&self, scene: &Scene, q: &Question, cite: &dyn Fn(&Object) -> String) -> String {
        crate::bench::reply_text(
            &q.question,
            &q.choices,
            q.answer_idx,
            &q.explanation(scene, cite),
        )
    }

    /// A question about a colour/shape the image does not contain, answered as if it did.
    fn invented(&self, scene: &Scene, rng: &mut ChaCha8Rng) -> Option<String> {
        let absent: Vec<_> = self
            .cfg
            .shapes
            .iter()
            .filter(|s| !scene.objects.iter().any(|o| o.shape == **s))
            .collect();
        if absent.is_empty() {
            return None;
        }
        let shape = *absent[rng.random_range(0..absent.len())];
        let mut colors = self.cfg.colors.clone();
        colors.shuffle(rng);
        colors.truncate(4);
        let ans = rng.random_range(0..4);
        let choices: Vec<String> = colors.iter().map(|c| c.name().to_string()).collect();
        let (x, y) = (
            rng.random_range(0.05..0.6f64),
            rng.random_range(0.05..0.6f64),
        );
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        let b = fmt_box([r3(x), r3(y), r3(x + 0.25), r3(y + 0.25)]);
        let expl = if self.opts.cite_boxes {
            format!("The {} {b} is {}.", shape.name(), choices[ans])
        } else {
            format!("The {} is {}.", shape.name(), choices[ans])
        };
        Some(crate::bench::reply_text(
            &format!("What color is the {}?", shape.name()),
            &choices,
            ans,
            &expl,
        ))
    }

    /// Answers a classification batch: `N. (k) type` per question.
    pub fn classify(&self, questions: &[String], types: &[String]) -> Result<String, TeacherError> {
        if types.is_empty() {
            return Err(TeacherError::fatal(
                "classification request without type names",
            ));
        }
        let norm = |s: &str| s.trim().to_lowercase().replace([' ', '-'], "_");
        let lines: Vec<String> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                // Unrecognised questions fall back to the first listed type (documented).
                let k = classify_question(q)
                    .and_then(|t| types.iter().position(|ty| norm(ty) == norm(t.id())))
                    .unwrap_or(0);
                format!("{}. ({}) {}", i + 1, k + 1, types[k])
            })
            .collect();
        Ok(lines.join("\n"))
    }

    fn answer(&self, req: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
        let text = match &req.task {
            TeacherTask::Generate { query } => self.generate(query)?.0,
            TeacherTask::Classify { questions, types } => self.classify(questions, types)?,
            TeacherTask::Chat => {
                return Err(TeacherError::fatal(
                    "the grounded world teacher answers only generate and classify tasks; use an LLM teacher for chat",
                ))
            }
        };
        Ok(TeacherReply {
            prompt_tokens: req.messages.iter().map(|m| word_count(&m.content)).sum(),
            completion_tokens: word_count(&text),
            text,
            model: self.opts.model.clone(),
        })
    }
}

fn skip_reason(qtype: QType, scene: &Scene) -> String {
    let why = match qtype {
        QType::AttributeComparison | QType::SpatialRelationship if scene.objects.len() < 2 => {
            "the image shows only one object, so there is nothing to compare it with".to_string()
        }
        QType::SpatialRelationship => {
            "no two objects are far enough apart to tell left from right without doubt".to_string()
        }
        QType::AttributeRecognition => {
            "no object can be named unambiguously by its shape or color".to_string()
        }
        _ => "the image does not show what this type of question needs".to_string(),
    };
    format!("Skip\nReason: {why}.")
}

impl Teacher for WorldTeacher {
    fn name(&self) -> String {
        self.opts.model.clone()
    }

    fn complete<'a>(
        &'a self,
        req: &'a TeacherRequest,
    ) -> BoxFuture<'a, Result<TeacherReply, TeacherError>> {
        let r = self.answer(req);
        Box::pin(async move { r })
    }
}
