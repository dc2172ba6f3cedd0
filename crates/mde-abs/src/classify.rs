//! Question-type classification of bad cases through a teacher LLM.
//!
//! Questions go to the teacher in numbered batches (50 per call as released); the reply must be
//! exactly one line `N. (k) Type name` per question, in order, with `k` the type's number in the
//! taxonomy and the name agreeing with it. A reply with the wrong count, a wrong number or an
//! unknown/contradictory type is rejected and the batch asked again (bounded); a batch that never
//! parses is reported, and its questions stay unlabelled, never guessed. Labels are cached in an
//! append-only JSONL file keyed by taxonomy + question hash so a re-run pays only for the misses.
use crate::error::{AbsError, Result};
use mde_core::io::JsonlStore;
use mde_core::records::BadCase;
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::{ChatMessage, Teacher, TeacherRequest, TeacherTask};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Default classification prompt. Slots: `{types}` (numbered "k. Name: definition" lines),
/// `{questions}` (numbered "N. question" lines), `{count}` (number of questions).
pub const DEFAULT_TEMPLATE: &str = "\
You sort visual questions into question types. Each question below was asked about an image; \
decide which single type from the list best describes the ability needed to answer it.

Question types:
{types}

Questions:
{questions}

Reply with exactly {count} lines, one per question and in the same order, each written as \
\"<question number>. (<type number>) <type name>\", for example \"1. (3) Attribute Recognition\". \
Do not add any other text.";

/// Classifier options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierConfig {
    /// Questions per teacher call (released: 50).
    pub batch_size: usize,
    /// Calls per batch before it is reported as failed.
    pub max_attempts: usize,
    /// Prompt template with `{types}`, `{questions}` and optionally `{count}`.
    pub template: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            batch_size: 50,
            max_attempts: 3,
            template: DEFAULT_TEMPLATE.into(),
            temperature: 0.7,
            max_tokens: 2048,
        }
    }
}

/// One cached label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationRecord {
    /// `{taxonomy key}:{question hash}`.
    pub key: String,
    pub taxonomy: String,
    pub question: String,
    pub type_id: String,
}

/// A batch that never produced a valid reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchFailure {
    pub questions: Vec<String>,
    pub attempts: usize,
    /// Why each attempt was rejected.
    pub errors: Vec<String>,
    /// The last reply text (for inspection).
    pub last_reply: String,
}

/// Outcome of a classification run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassifyReport {
    /// Question -> type id, for every question that got a label (cache or teacher).
    pub labels: HashMap<String, String>,
    /// Distinct questions answered from the cache.
    pub from_cache: usize,
    /// Distinct questions labelled by the teacher in this run.
    pub classified: usize,
    /// Bad cases that already had a type (not sent).
    pub already_typed: usize,
    /// Teacher calls made (including rejected replies).
    pub calls: usize,
    /// Batches that failed every attempt; their questions are unlabelled.
    pub failures: Vec<BatchFailure>,
}

/// FNV-1a, 64-bit: a stable hash (unlike `DefaultHasher`, fixed across Rust versions), enough
/// for cache keys; the record also stores the question to detect collisions.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Cache namespace of a taxonomy: its name plus a hash of its type ids, so editing a
/// user-defined taxonomy does not reuse stale labels.
pub fn taxonomy_key(t: &Taxonomy) -> String {
    format!("{}-{:08x}", t.name, fnv1a(&t.ids().join("\n")) as u32)
}

/// Cache key of a question under a taxonomy.
pub fn cache_key(taxonomy_key: &str, question: &str) -> String {
    format!("{taxonomy_key}:{:016x}", fnv1a(question.trim()))
}

/// Batches questions to a teacher and parses its numbered replies.
pub struct Classifier {
    taxonomy: Taxonomy,
    tax_key: String,
    cfg: ClassifierConfig,
    cache: Option<JsonlStore<ClassificationRecord>>,
}

impl Classifier {
    /// Checks the template has the `{types}` and `{questions}` slots.
    pub fn new(taxonomy: Taxonomy, cfg: ClassifierConfig) -> Result<Self> {
        for slot in ["{types}", "{questions}"] {
            if !cfg.template.contains(slot) {
                return Err(AbsError::Input(format!(
                    "classification template lacks the {slot} slot"
                )));
            }
        }
        if cfg.batch_size == 0 || cfg.max_attempts == 0 {
            return Err(AbsError::Input(
                "batch_size and max_attempts must be at least 1".into(),
            ));
        }
        let tax_key = taxonomy_key(&taxonomy);
        Ok(Self {
            taxonomy,
            tax_key,
            cfg,
            cache: None,
        })
    }

    /// Uses (creating or resuming) a JSONL cache of labels.
    pub fn with_cache(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.cache = Some(JsonlStore::open(
            path.as_ref().to_path_buf(),
            |r: &ClassificationRecord| r.key.clone(),
        )?);
        Ok(self)
    }

    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// The prompt for one batch.
    pub fn render_prompt(&self, questions: &[&str]) -> String {
        let types: Vec<String> = self
            .taxonomy
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.definition.is_empty() {
                    format!("{}. {}", i + 1, t.name)
                } else {
                    format!("{}. {}: {}", i + 1, t.name, t.definition)
                }
            })
            .collect();
        // A newline inside a question would break the one-line-per-question numbering.
        let qs: Vec<String> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                format!(
                    "{}. {}",
                    i + 1,
                    q.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
            .collect();
        self.cfg
            .template
            .replace("{types}", &types.join("\n"))
            .replace("{questions}", &qs.join("\n"))
            .replace("{count}", &questions.len().to_string())
    }

    /// Parses a reply for a batch of `n` questions into type ids, strictly: `n` non-empty lines
    /// `N. (k) Name` with N = 1..n in order, k a valid type number and Name naming type k.
    pub fn parse_reply(&self, reply: &str, n: usize) -> std::result::Result<Vec<String>, String> {
        let lines: Vec<&str> = reply
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() != n {
            return Err(format!("expected {n} lines, got {}", lines.len()));
        }
        let mut out = Vec::with_capacity(n);
        for (i, line) in lines.iter().enumerate() {
            let bad = |why: &str| format!("line {} {line:?}: {why}", i + 1);
            let (num, rest) = line
                .split_once('.')
                .ok_or_else(|| bad("expected \"N. (k) Type\""))?;
            let num: usize = num
                .trim()
                .parse()
                .map_err(|_| bad("expected a question number before '.'"))?;
            if num != i + 1 {
                return Err(bad(&format!("expected question number {}", i + 1)));
            }
            let rest = rest.trim_start();
            let rest = rest
                .strip_prefix('(')
                .ok_or_else(|| bad("expected \"(k)\" after the number"))?;
            let (k, name) = rest
                .split_once(')')
                .ok_or_else(|| bad("unclosed \"(k)\""))?;
            let k: usize = k
                .trim()
                .parse()
                .map_err(|_| bad("type number is not a number"))?;
            let by_num = self
                .taxonomy
                .by_number(k)
                .ok_or_else(|| bad(&format!("type number {k} is out of range")))?;
            let name = name.trim().trim_end_matches('.').trim();
            let by_name = self
                .taxonomy
                .lookup(name)
                .ok_or_else(|| bad(&format!("unknown type {name:?}")))?;
            if by_name.id != by_num.id {
                return Err(bad(&format!(
                    "type number {k} is {:?} but the name says {name:?}",
                    by_num.name
                )));
            }
            out.push(by_num.id.clone());
        }
        Ok(out)
    }

    /// Labels distinct questions (cache first, then the teacher in batches).
    pub async fn classify_questions(
        &mut self,
        teacher: &dyn Teacher,
        questions: &[String],
    ) -> Result<ClassifyReport> {
        let mut report = ClassifyReport::default();
        // Index the cache once (records() is a Vec; a lookup per question would be quadratic).
        let cache_map: HashMap<&str, &ClassificationRecord> = self
            .cache
            .as_ref()
            .map(|s| s.records().iter().map(|r| (r.key.as_str(), r)).collect())
            .unwrap_or_default();
        let mut todo: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for q in questions {
            if !seen.insert(q.as_str()) {
                continue;
            }
            let key = cache_key(&self.tax_key, q);
            // A known type id is required too: a cache written under an edited taxonomy of the
            // same name and ids cannot hand out a label the taxonomy no longer has.
            match cache_map.get(key.as_str()) {
                Some(r) if r.question == q.trim() && self.taxonomy.by_id(&r.type_id).is_some() => {
                    report.labels.insert(q.clone(), r.type_id.clone());
                    report.from_cache += 1;
                }
                _ => todo.push(q.clone()),
            }
        }
        drop(cache_map);
        for batch in todo.chunks(self.cfg.batch_size) {
            let refs: Vec<&str> = batch.iter().map(|s| s.as_str()).collect();
            let req = TeacherRequest {
                messages: vec![ChatMessage::user(self.render_prompt(&refs))],
                temperature: self.cfg.temperature,
                max_tokens: self.cfg.max_tokens,
                stop: vec![],
                task: TeacherTask::Classify {
                    questions: batch.to_vec(),
                    types: self
                        .taxonomy
                        .names()
                        .into_iter()
                        .map(String::from)
                        .collect(),
                },
                ..Default::default()
            };
            let mut failure = BatchFailure {
                questions: batch.to_vec(),
                ..Default::default()
            };
            let mut labels = None;
            for _ in 0..self.cfg.max_attempts {
                report.calls += 1;
                failure.attempts += 1;
                match teacher.complete(&req).await {
                    Err(e) if !e.retryable => {
                        return Err(AbsError::Teacher {
                            teacher: teacher.name(),
                            message: e.message,
                        });
                    }
                    Err(e) => failure.errors.push(format!("teacher error: {}", e.message)),
                    Ok(reply) => match self.parse_reply(&reply.text, batch.len()) {
                        Ok(l) => {
                            labels = Some(l);
                            break;
                        }
                        Err(why) => {
                            failure.errors.push(why);
                            failure.last_reply = reply.text;
                        }
                    },
                }
            }
            match labels {
                Some(l) => {
                    for (q, t) in batch.iter().zip(l) {
                        if let Some(store) = self.cache.as_mut() {
                            store.append(&ClassificationRecord {
                                key: cache_key(&self.tax_key, q),
                                taxonomy: self.tax_key.clone(),
                                question: q.trim().to_string(),
                                type_id: t.clone(),
                            })?;
                        }
                        report.labels.insert(q.clone(), t);
                        report.classified += 1;
                    }
                }
                None => report.failures.push(failure),
            }
        }
        Ok(report)
    }

    /// Fills `question_type` of the bad cases that lack one. Cases of failed batches stay
    /// untyped (see `failures`).
    pub async fn classify_bad_cases(
        &mut self,
        teacher: &dyn Teacher,
        cases: &mut [BadCase],
    ) -> Result<ClassifyReport> {
        let untyped = |c: &BadCase| {
            c.question_type
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
        };
        let questions: Vec<String> = cases
            .iter()
            .filter(|c| untyped(c))
            .map(|c| c.question.clone())
            .collect();
        let mut report = self.classify_questions(teacher, &questions).await?;
        report.already_typed = cases.len() - questions.len();
        for c in cases.iter_mut().filter(|c| untyped(c)) {
            if let Some(t) = report.labels.get(&c.question) {
                c.question_type = Some(t.clone());
            }
        }
        Ok(report)
    }
}
