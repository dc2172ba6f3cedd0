//! The human side of IPO: deciding on drafts and labelling trial items. [`Reviewer`] abstracts the
//! person so the workflow can be scripted; [`TerminalReviewer`] is the interactive implementation
//! (any `BufRead`/`Write`, so tests drive it with scripted input).
use crate::steps::Review;
use crate::trial::{Label, TrialItem};
use crate::IpoError;
use mde_core::records::FailureCategory;
use std::io::{BufRead, Write};

/// What the user does with a proposed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Accept,
    /// Accept with this edited text.
    Edit(String),
    Reject,
}

/// The person in the loop.
pub trait Reviewer {
    /// Decides on a revised prompt proposed in `step` ("critique" or "correction").
    fn decide(&mut self, step: &str, current: &str, review: &Review) -> Result<Decision, IpoError>;
    /// Labels one trial item; `None` stops labelling (resume later).
    fn label(&mut self, item: &TrialItem) -> Result<Option<Label>, IpoError>;
}

/// Interactive reviewer on a terminal (or any reader/writer pair).
pub struct TerminalReviewer<R, W> {
    input: R,
    output: W,
    /// Editor command for "edit" (e.g. from $EDITOR); without one, the edited text is read from
    /// the input up to a line holding a single ".".
    pub editor: Option<String>,
}

impl<R: BufRead, W: Write> TerminalReviewer<R, W> {
    pub fn new(input: R, output: W) -> Self {
        Self {
            input,
            output,
            editor: std::env::var("EDITOR")
                .ok()
                .filter(|e| !e.trim().is_empty()),
        }
    }

    fn say(&mut self, text: &str) -> Result<(), IpoError> {
        self.output
            .write_all(text.as_bytes())
            .and_then(|_| self.output.flush())
            .map_err(|e| IpoError::io("<terminal>", e))
    }

    fn read_line(&mut self) -> Result<Option<String>, IpoError> {
        let mut s = String::new();
        let n = self
            .input
            .read_line(&mut s)
            .map_err(|e| IpoError::io("<terminal>", e))?;
        Ok(if n == 0 {
            None
        } else {
            Some(s.trim_end_matches(['\n', '\r']).to_string())
        })
    }

    fn edit(&mut self, text: &str) -> Result<String, IpoError> {
        if let Some(editor) = self.editor.clone() {
            let dir = std::env::temp_dir().join(format!("mde-ipo-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| IpoError::io(&dir, e))?;
            let path = dir.join("prompt.txt");
            std::fs::write(&path, text).map_err(|e| IpoError::io(&path, e))?;
            let mut parts = editor.split_whitespace();
            let prog = parts.next().unwrap_or("vi");
            let status = std::process::Command::new(prog)
                .args(parts)
                .arg(&path)
                .status()
                .map_err(|e| {
                    IpoError::Invalid(format!("could not start editor {editor:?}: {e}"))
                })?;
            if !status.success() {
                return Err(IpoError::Invalid(format!(
                    "editor {editor:?} exited with {status}"
                )));
            }
            return std::fs::read_to_string(&path).map_err(|e| IpoError::io(&path, e));
        }
        self.say("Enter the edited prompt; finish with a line containing only \".\"\n")?;
        let mut out = String::new();
        while let Some(line) = self.read_line()? {
            if line == "." {
                break;
            }
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }
}

fn show_item(item: &TrialItem) -> String {
    let mut s = format!(
        "\n=== {} ({}) image {} ===\n",
        item.id, item.query.question_type, item.query.image_id
    );
    s.push_str(&format!("captions: {}\n", item.query.captions.join(" | ")));
    for b in &item.query.boxes {
        s.push_str(&format!(
            "  {}: [{:.3}, {:.3}, {:.3}, {:.3}]\n",
            b.category, b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]
        ));
    }
    s.push_str(&format!("--- reply ---\n{}\n", item.reply.trim()));
    if !item.prelabels.is_empty() {
        let cats: Vec<String> = item
            .prelabels
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        s.push_str(&format!(
            "validator suggests: {} ({})\n",
            cats.join(", "),
            item.notes.join("; ")
        ));
    }
    s
}

impl<R: BufRead, W: Write> Reviewer for TerminalReviewer<R, W> {
    fn decide(
        &mut self,
        step: &str,
        _current: &str,
        review: &Review,
    ) -> Result<Decision, IpoError> {
        let mut s = format!("\n=== {step}: findings ===\n");
        for (i, f) in review.findings.iter().enumerate() {
            s.push_str(&format!("{}. {f}\n", i + 1));
        }
        for (i, e) in review.edits.iter().enumerate() {
            s.push_str(&format!("edit {}: {e}\n", i + 1));
        }
        let Some(revised) = review.revised.clone() else {
            self.say(&format!("{s}(no revised prompt proposed)\n"))?;
            return Ok(Decision::Reject);
        };
        s.push_str(&format!(
            "--- proposed prompt ---\n{revised}\n--- [a]ccept / [e]dit / [r]eject? "
        ));
        self.say(&s)?;
        loop {
            match self.read_line()?.as_deref().map(str::trim) {
                Some("a") | Some("accept") => return Ok(Decision::Accept),
                Some("e") | Some("edit") => return Ok(Decision::Edit(self.edit(&revised)?)),
                Some("r") | Some("reject") | None => return Ok(Decision::Reject),
                Some(_) => self.say("please answer a, e or r: ")?,
            }
        }
    }

    fn label(&mut self, item: &TrialItem) -> Result<Option<Label>, IpoError> {
        let cats: Vec<&str> = FailureCategory::BUILTIN
            .iter()
            .map(|c| c.as_str())
            .collect();
        self.say(&format!(
            "{}[enter] accept suggestion, [o]k, [f CAT[,CAT]] fail ({} or your own), [q]uit: ",
            show_item(item),
            cats.join(", ")
        ))?;
        loop {
            let Some(line) = self.read_line()? else {
                return Ok(None);
            };
            let line = line.trim();
            let failures: Vec<FailureCategory> = match line {
                "q" | "quit" => return Ok(None),
                "o" | "ok" => vec![],
                "" => item.prelabels.clone(),
                _ => match line
                    .strip_prefix("f ")
                    .or_else(|| line.strip_prefix("fail "))
                {
                    Some(rest) => rest
                        .split(',')
                        .map(FailureCategory::parse)
                        .filter(|c| !c.as_str().is_empty())
                        .collect(),
                    None => {
                        self.say("please answer enter, o, f CAT or q: ")?;
                        continue;
                    }
                },
            };
            if failures.is_empty() {
                return Ok(Some(Label {
                    item_id: item.id.clone(),
                    ok: true,
                    failures,
                    explanation: String::new(),
                    at: 0,
                }));
            }
            self.say("one-line explanation: ")?;
            let explanation = self.read_line()?.unwrap_or_default();
            let explanation = if explanation.trim().is_empty() {
                item.notes.join("; ")
            } else {
                explanation
            };
            return Ok(Some(Label {
                item_id: item.id.clone(),
                ok: false,
                failures,
                explanation,
                at: 0,
            }));
        }
    }
}
