//! Prompt rendering from versioned template files with `{placeholder}` slots.
//!
//! Generation template slots: `{captions}` (one per line), `{boxes}` (one
//! `category: [x1, y1, x2, y2]` per line, 3 decimals), `{question_type}`, `{type_definition}`,
//! `{examples}` (the in-context examples in REFERENCE §3's text format, blank-line separated).
//! Classification template slots: `{types}`, `{questions}`, `{n}`, `{example_type}`.
//! `{{` and `}}` write literal braces. An unknown placeholder is an error, so a typo in an edited
//! template is caught before any request is sent.
use crate::error::{GenError, Result};
use mde_core::records::{GenQuery, InContextExample, ObjectBox, CHOICE_LETTERS};
use mde_core::teacher::{ChatMessage, TeacherRequest, TeacherTask};
use std::collections::BTreeMap;
use std::path::Path;

/// The project's generation prompt, version 1 (`crates/mde-gen/prompts/generate_v1.txt`, also at `configs/prompts/`).
pub const GENERATE_V1: &str = include_str!("../prompts/generate_v1.txt");
/// The project's classification prompt, version 1 (`crates/mde-gen/prompts/classify_v1.txt`).
pub const CLASSIFY_V1: &str = include_str!("../prompts/classify_v1.txt");

const GENERATE_SLOTS: &[&str] = &[
    "captions",
    "boxes",
    "question_type",
    "type_definition",
    "examples",
];
const CLASSIFY_SLOTS: &[&str] = &["types", "questions", "n", "example_type"];

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Slot(String),
}

impl Template {
    /// Parses `text`, accepting only the placeholders in `allowed`.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Self> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if matches!(chars.peek(), Some((_, '{'))) => {
                    chars.next();
                    lit.push('{');
                }
                '}' if matches!(chars.peek(), Some((_, '}'))) => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| GenError::Template(format!("unclosed '{{' at byte {i}")))?;
                    let name = &rest[..end];
                    if !allowed.contains(&name) {
                        return Err(GenError::Template(format!(
                            "unknown placeholder {{{name}}} at byte {i} (allowed: {})",
                            allowed.join(", ")
                        )));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Slot(name.to_string()));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => return Err(GenError::Template(format!("unmatched '}}' at byte {i}"))),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Self {
            source: text.to_string(),
            parts,
        })
    }

    /// Fills the slots; a slot without a value is an error.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> Result<String> {
        let mut out = String::with_capacity(self.source.len() + 1024);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Slot(name) => out.push_str(
                    values
                        .get(name.as_str())
                        .ok_or_else(|| GenError::Template(format!("no value for {{{name}}}")))?,
                ),
            }
        }
        Ok(out)
    }

    /// The template text as loaded.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Formats a normalised box as `category: [x1, y1, x2, y2]` with 3 decimals.
pub fn format_box(b: &ObjectBox) -> String {
    format!(
        "{}: [{:.3}, {:.3}, {:.3}, {:.3}]",
        b.category, b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]
    )
}

/// One in-context example in REFERENCE §3's text format.
pub fn format_example(e: &InContextExample) -> String {
    let choices: Vec<String> = e
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {}", letter(i), c))
        .collect();
    let answer = e
        .choices
        .get(e.answer_idx)
        .map(String::as_str)
        .unwrap_or("");
    format!(
        "Question: {}\nChoices: {}\nAnswer: The answer is ({}): {}.\nQuestion type: {}",
        e.question,
        choices.join(" "),
        letter(e.answer_idx),
        answer,
        e.question_type
    )
}

fn letter(i: usize) -> char {
    CHOICE_LETTERS.get(i).copied().unwrap_or('?')
}

/// Renders generation requests for queries.
#[derive(Debug, Clone)]
pub struct GeneratePrompt {
    template: Template,
    as_system: bool,
}

impl GeneratePrompt {
    /// The embedded v1 template.
    pub fn v1() -> Self {
        Self {
            template: Template::parse(GENERATE_V1, GENERATE_SLOTS)
                .expect("embedded template is valid"),
            as_system: false,
        }
    }

    /// A template from text (e.g. a version produced by IPO).
    pub fn from_text(text: &str) -> Result<Self> {
        Ok(Self {
            template: Template::parse(text, GENERATE_SLOTS)?,
            as_system: false,
        })
    }

    /// A template file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| GenError::Template(format!("{}: {e}", path.display())))?;
        Self::from_text(&text).map_err(|e| GenError::Template(format!("{}: {e}", path.display())))
    }

    /// Send the prompt as a system message (default: one user message, as the original).
    pub fn with_system_role(mut self, yes: bool) -> Self {
        self.as_system = yes;
        self
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The prompt text for one query.
    pub fn render_text(&self, q: &GenQuery) -> Result<String> {
        let mut v = BTreeMap::new();
        v.insert(
            "captions",
            q.captions
                .iter()
                .map(|c| c.trim())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        v.insert(
            "boxes",
            q.boxes
                .iter()
                .map(format_box)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        v.insert("question_type", q.question_type.clone());
        v.insert("type_definition", q.type_definition.clone());
        v.insert(
            "examples",
            q.examples
                .iter()
                .map(format_example)
                .collect::<Vec<_>>()
                .join("\n\n"),
        );
        self.template.render(&v)
    }

    /// A full request (original sampling settings, `TeacherTask::Generate` attached so offline
    /// teachers can answer from ground truth). `image` is attached for vision teachers.
    pub fn request(&self, q: &GenQuery) -> Result<TeacherRequest> {
        let text = self.render_text(q)?;
        let mut msg = if self.as_system {
            ChatMessage::system(text)
        } else {
            ChatMessage::user(text)
        };
        if let Some(p) = &q.image_path {
            msg.images.push(p.clone());
        }
        Ok(TeacherRequest {
            messages: vec![msg],
            task: TeacherTask::Generate { query: q.clone() },
            ..Default::default()
        })
    }
}

/// Renders classification requests and parses their replies (REFERENCE §2).
#[derive(Debug, Clone)]
pub struct ClassifyPrompt {
    template: Template,
}

impl ClassifyPrompt {
    pub fn v1() -> Self {
        Self {
            template: Template::parse(CLASSIFY_V1, CLASSIFY_SLOTS)
                .expect("embedded template is valid"),
        }
    }

    pub fn from_text(text: &str) -> Result<Self> {
        Ok(Self {
            template: Template::parse(text, CLASSIFY_SLOTS)?,
        })
    }

    /// `types` are (name, definition) pairs, numbered from 1 in the prompt.
    pub fn render_text(&self, questions: &[String], types: &[(String, String)]) -> Result<String> {
        let mut v = BTreeMap::new();
        v.insert(
            "types",
            types
                .iter()
                .enumerate()
                .map(|(i, (n, d))| format!("({}) {}: {}", i + 1, n, d))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        v.insert(
            "questions",
            questions
                .iter()
                .enumerate()
                .map(|(i, q)| format!("{}. {}", i + 1, q.replace('\n', " ")))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        v.insert("n", questions.len().to_string());
        v.insert(
            "example_type",
            types.first().map(|t| t.0.clone()).unwrap_or_default(),
        );
        self.template.render(&v)
    }

    pub fn request(
        &self,
        questions: &[String],
        types: &[(String, String)],
    ) -> Result<TeacherRequest> {
        Ok(TeacherRequest {
            messages: vec![ChatMessage::user(self.render_text(questions, types)?)],
            task: TeacherTask::Classify {
                questions: questions.to_vec(),
                types: types.iter().map(|t| t.0.clone()).collect(),
            },
            ..Default::default()
        })
    }
}

/// Parses "N. (k) Type" lines into 0-based type indices, one per question. The number of such
/// lines must equal `n_questions` and they must be numbered 1..=n in order (REFERENCE §2: the
/// batch is otherwise rejected and retried). The type number wins; when it is missing or out of
/// range the name is looked up (case-insensitive).
pub fn parse_classification(
    reply: &str,
    n_questions: usize,
    types: &[String],
) -> std::result::Result<Vec<usize>, String> {
    let re =
        regex::Regex::new(r"^\s*(\d+)\s*[.)]\s*(?:\((\d+)\))?\s*(.*?)\s*$").expect("valid regex");
    let mut out = Vec::new();
    for line in reply.lines() {
        let Some(c) = re.captures(line) else { continue };
        let num: usize = c[1]
            .parse()
            .map_err(|_| format!("bad line number in {line:?}"))?;
        let by_num = c
            .get(2)
            .and_then(|m| m.as_str().parse::<usize>().ok())
            .filter(|k| (1..=types.len()).contains(k))
            .map(|k| k - 1);
        let name = c[3].trim().trim_end_matches('.');
        let by_name = types.iter().position(|t| t.eq_ignore_ascii_case(name));
        let idx = by_num
            .or(by_name)
            .ok_or_else(|| format!("line {num}: no known type in {line:?}"))?;
        if num != out.len() + 1 {
            return Err(format!(
                "expected line {} but found line {num}",
                out.len() + 1
            ));
        }
        out.push(idx);
    }
    if out.len() != n_questions {
        return Err(format!(
            "{} answer lines for {n_questions} questions",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_slots_and_errors() {
        let t = Template::parse("a {x} {{lit}} b", &["x"]).unwrap();
        let mut v = BTreeMap::new();
        v.insert("x", "1".to_string());
        assert_eq!(t.render(&v).unwrap(), "a 1 {lit} b");
        assert!(Template::parse("a {y}", &["x"]).is_err());
        assert!(Template::parse("a {x", &["x"]).is_err());
        assert!(Template::parse("a }", &["x"]).is_err());
    }

    #[test]
    fn renders_all_slots() {
        let q = GenQuery {
            id: "q".into(),
            question_type: "image_scene".into(),
            type_definition: "the scene".into(),
            captions: vec!["A cat.".into(), "A sofa.".into()],
            boxes: vec![ObjectBox {
                category: "cat".into(),
                bbox: [0.1, 0.25, 0.5, 0.3333333],
            }],
            examples: vec![InContextExample {
                question: "Where?".into(),
                choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                answer_idx: 2,
                question_type: "image_scene".into(),
                source_id: String::new(),
            }],
            ..Default::default()
        };
        let p = GeneratePrompt::v1();
        let s = p.render_text(&q).unwrap();
        assert!(s.contains("cat: [0.100, 0.250, 0.500, 0.333]"));
        assert!(s.contains("A cat.\nA sofa."));
        assert!(s.contains("Choices: (A) a (B) b (C) c (D) d\nAnswer: The answer is (C): c.\nQuestion type: image_scene"));
        assert!(!s.contains('{'), "unfilled slot in {s}");
    }

    #[test]
    fn classification_parsing() {
        let types = vec!["a_type".to_string(), "b_type".to_string()];
        assert_eq!(
            parse_classification("1. (2) b_type\n2. (1) a_type\n", 2, &types).unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            parse_classification("Sure:\n1. b_type\n2) (9) a_type", 2, &types).unwrap(),
            vec![1, 0]
        );
        assert!(parse_classification("1. (2) b_type\n", 2, &types).is_err());
        assert!(parse_classification("2. (2) b_type\n1. (1) a_type", 2, &types).is_err());
        let p = ClassifyPrompt::v1()
            .render_text(
                &["Q one?".into(), "Q two?".into()],
                &[("a_type".into(), "def a".into())],
            )
            .unwrap();
        assert!(p.contains("1. Q one?\n2. Q two?") && p.contains("(1) a_type: def a"));
    }
}
