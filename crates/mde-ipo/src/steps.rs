//! Steps 1 and 3: the teacher LLM critiques the prompt (confusing / conflicting passages and a
//! revised draft) and proposes corrections from labelled failures. Replies are requested in a
//! sectioned plain-text format and parsed leniently; a reply without a revised prompt still
//! yields its findings.
use crate::trial::{Label, TrialItem};
use crate::IpoError;
use mde_core::teacher::{ChatMessage, Teacher, TeacherRequest, TeacherTask};
use serde::{Deserialize, Serialize};

const REVISED_START: &str = "REVISED PROMPT:";
const REVISED_END: &str = "END REVISED PROMPT";

/// What the teacher said about a prompt (step 1) or about failures (step 3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Step 1: confusing or conflicting passages with why. Step 3: causes of the failures.
    pub findings: Vec<String>,
    /// Step 3: suggested edits (empty in step 1).
    pub edits: Vec<String>,
    /// The full revised prompt, when the teacher gave one.
    pub revised: Option<String>,
    /// The raw reply, kept for the record.
    pub raw: String,
}

/// The instruction for step 1, in our own words.
pub fn critique_messages(template: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(
            "You review prompts that instruct a language model to write multiple-choice questions about an image \
             that it can only see through captions and object boxes. You look for passages that are confusing, \
             ambiguous or that conflict with each other, and you propose a clearer version that keeps every \
             placeholder in curly braces unchanged.",
        ),
        ChatMessage::user(format!(
            "Here is the prompt template:\n<<<\n{template}\n>>>\n\nAnswer in exactly this layout:\n\
             ISSUES:\n1. <quote the passage> -- <why it is confusing or what it conflicts with>\n2. ...\n\
             {REVISED_START}\n<the complete revised template>\n{REVISED_END}\n\
             If nothing needs to change, write `ISSUES:` followed by `none` and omit the revised prompt."
        )),
    ]
}

/// The instruction for step 3: the template plus labelled failures with explanations.
pub fn correction_messages(template: &str, failures: &[(&TrialItem, &Label)]) -> Vec<ChatMessage> {
    let mut cases = String::new();
    for (k, (item, label)) in failures.iter().enumerate() {
        let cats: Vec<String> = label.failures.iter().map(|c| c.label()).collect();
        cases.push_str(&format!(
            "Case {}:\nQuestion type: {}\nCaptions:\n{}\nObjects:\n{}\nGenerated reply:\n{}\nFailure: {}\nReviewer's explanation: {}\n\n",
            k + 1,
            item.query.question_type,
            item.query.captions.join("\n"),
            item.query
                .boxes
                .iter()
                .map(|b| format!("{}: [{:.3}, {:.3}, {:.3}, {:.3}]", b.category, b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]))
                .collect::<Vec<_>>()
                .join("\n"),
            item.reply.trim(),
            cats.join(", "),
            label.explanation
        ));
    }
    vec![
        ChatMessage::system(
            "You improve prompts for generating visual multiple-choice questions. Given the prompt and cases where \
             its output was judged wrong by a human, you explain which part of the prompt caused each failure and \
             propose concrete edits. Keep every placeholder in curly braces unchanged.",
        ),
        ChatMessage::user(format!(
            "Prompt template:\n<<<\n{template}\n>>>\n\nFailed cases:\n{cases}Answer in exactly this layout:\n\
             CAUSES:\n1. ...\nEDITS:\n1. ...\n{REVISED_START}\n<the complete revised template>\n{REVISED_END}"
        )),
    ]
}

fn numbered_items(section: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in section.lines() {
        let t = line.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("none") {
            continue;
        }
        let body = t
            .split_once(['.', ')'])
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            .map(|(_, rest)| rest.trim())
            .or_else(|| t.strip_prefix("- ").map(str::trim));
        match body {
            Some(b) => out.push(b.to_string()),
            // continuation of the previous item
            None => match out.last_mut() {
                Some(last) => {
                    last.push(' ');
                    last.push_str(t);
                }
                None => out.push(t.to_string()),
            },
        }
    }
    out
}

fn section<'a>(text: &'a str, header: &str, next: &[&str]) -> Option<&'a str> {
    let start = text.find(header)? + header.len();
    let rest = &text[start..];
    let end = next
        .iter()
        .filter_map(|h| rest.find(h))
        .min()
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Parses a step-1 or step-3 reply.
pub fn parse_review(raw: &str) -> Review {
    let revised = raw.find(REVISED_START).map(|s| {
        let body = &raw[s + REVISED_START.len()..];
        let body = body.find(REVISED_END).map(|e| &body[..e]).unwrap_or(body);
        body.trim_matches(|c| c == '\n' || c == '\r')
            .trim_end()
            .to_string()
    });
    let revised = revised.filter(|r| !r.trim().is_empty());
    let findings_text = section(raw, "ISSUES:", &["EDITS:", REVISED_START])
        .or_else(|| section(raw, "CAUSES:", &["EDITS:", REVISED_START]))
        .unwrap_or("");
    let edits_text = section(raw, "EDITS:", &[REVISED_START]).unwrap_or("");
    Review {
        findings: numbered_items(findings_text),
        edits: numbered_items(edits_text),
        revised,
        raw: raw.to_string(),
    }
}

async fn ask(teacher: &dyn Teacher, messages: Vec<ChatMessage>) -> Result<Review, IpoError> {
    // Prompts are long; allow a long answer and no "###" stop (templates may contain it).
    let req = TeacherRequest {
        messages,
        max_tokens: 4096,
        stop: vec![],
        task: TeacherTask::Chat,
        ..Default::default()
    };
    let reply = teacher
        .complete(&req)
        .await
        .map_err(|e| IpoError::Teacher(e.message))?;
    Ok(parse_review(&reply.text))
}

/// Step 1: asks the teacher to critique `template`.
pub async fn critique(teacher: &dyn Teacher, template: &str) -> Result<Review, IpoError> {
    ask(teacher, critique_messages(template)).await
}

/// Step 3: asks the teacher for causes and edits given labelled failures.
pub async fn correct(
    teacher: &dyn Teacher,
    template: &str,
    failures: &[(&TrialItem, &Label)],
) -> Result<Review, IpoError> {
    ask(teacher, correction_messages(template, failures)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections() {
        let r = parse_review(
            "ISSUES:\n1. \"use boxes\" -- conflicts with rule 3\n   and rule 4\n2) vague wording\nREVISED PROMPT:\nNew {captions}\nline 2\nEND REVISED PROMPT\n",
        );
        assert_eq!(
            r.findings,
            vec![
                "\"use boxes\" -- conflicts with rule 3 and rule 4",
                "vague wording"
            ]
        );
        assert_eq!(r.revised.as_deref(), Some("New {captions}\nline 2"));
        let r = parse_review("CAUSES:\n1. a\nEDITS:\n- b\n- c\n");
        assert_eq!(r.findings, vec!["a"]);
        assert_eq!(r.edits, vec!["b", "c"]);
        assert_eq!(r.revised, None);
        let r = parse_review("ISSUES:\nnone\n");
        assert!(r.findings.is_empty() && r.revised.is_none());
    }
}
