//! One way to report what was wrong with an input file without failing on it: duplicate keys
//! (and which occurrence was kept), ids that the reference set does not have, a torn last line
//! (what a kill in the middle of an append leaves), and records skipped for a stated reason.
//!
//! Readers and scorers fill an [`InputIssues`] per input file; callers log
//! [`InputIssues::summary`] as a warning and serialise the value into their JSON summaries, so the
//! same fields appear everywhere (`postprocess_summary.json`, `scores.json`). Counts are exact;
//! only the first [`MAX_EXAMPLES`] examples of each kind are kept.
//!
//! ```
//! use mde_core::input_report::{InputIssues, Kept};
//! let mut issues = InputIssues::new("replies.jsonl");
//! issues.duplicate("q1", Kept::First, Some(1), Some(4));
//! issues.torn_line(7);
//! assert!(!issues.is_clean());
//! assert_eq!(
//!     issues.summary(),
//!     "replies.jsonl: 1 duplicate key (kept the first occurrence; first: q1 line 4, kept line 1); torn last line 7 ignored"
//! );
//! let json = serde_json::to_value(&issues).unwrap();
//! assert_eq!(json["duplicate_keys"]["count"], 1);
//! assert_eq!(json["torn_lines"]["examples"][0], 7);
//! ```
use crate::error::{CoreError, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// How many examples of each kind of issue are kept (counts are always exact).
pub const MAX_EXAMPLES: usize = 5;

/// A count with the first few examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issues<T> {
    pub count: usize,
    pub examples: Vec<T>,
}

impl<T> Default for Issues<T> {
    fn default() -> Self {
        Issues {
            count: 0,
            examples: Vec::new(),
        }
    }
}

impl<T> Issues<T> {
    /// Counts one more issue, keeping it as an example while fewer than [`MAX_EXAMPLES`] are kept.
    pub fn push(&mut self, example: T) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds the counts and examples of `other` (examples still capped).
    pub fn merge(&mut self, other: Issues<T>) {
        self.count += other.count;
        for e in other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e);
            }
        }
    }
}

/// Which occurrence of a duplicated key the reader kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    First,
    Last,
}

/// One duplicated key: the occurrence that was dropped (`line`) and the one kept (`kept_line`).
/// Lines are 1-based file lines where the reader knows them, else record positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateKey {
    pub key: String,
    pub kept: Kept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// A record that was skipped, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub reason: String,
}

/// What was tolerated in one input file (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InputIssues {
    /// The file as the caller named it.
    pub file: String,
    pub duplicate_keys: Issues<DuplicateKey>,
    /// Ids present in the file but not in the reference set (benchmark, queries).
    pub unknown_ids: Issues<String>,
    /// Line numbers of torn (unterminated, unparsable) last lines that were ignored.
    pub torn_lines: Issues<usize>,
    pub skipped: Issues<SkippedRecord>,
}

impl InputIssues {
    pub fn new(file: impl Into<String>) -> Self {
        InputIssues {
            file: file.into(),
            ..Default::default()
        }
    }

    /// Records a duplicated key; `kept_line` is the occurrence kept, `line` the one dropped.
    pub fn duplicate(
        &mut self,
        key: impl Into<String>,
        kept: Kept,
        kept_line: Option<usize>,
        line: Option<usize>,
    ) {
        self.duplicate_keys.push(DuplicateKey {
            key: key.into(),
            kept,
            kept_line,
            line,
        });
    }

    /// Records an id that the reference set does not have.
    pub fn unknown(&mut self, id: impl Into<String>) {
        self.unknown_ids.push(id.into());
    }

    /// Records an ignored torn last line.
    pub fn torn_line(&mut self, line: usize) {
        self.torn_lines.push(line);
    }

    /// Records a skipped record.
    pub fn skip(&mut self, key: Option<String>, line: Option<usize>, reason: impl Into<String>) {
        self.skipped.push(SkippedRecord {
            key,
            line,
            reason: reason.into(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_clean(&self) -> bool {
        self.duplicate_keys.is_empty()
            && self.unknown_ids.is_empty()
            && self.torn_lines.is_empty()
            && self.skipped.is_empty()
    }

    /// Adds everything `other` recorded (its file name is dropped).
    pub fn merge(&mut self, other: InputIssues) {
        self.duplicate_keys.merge(other.duplicate_keys);
        self.unknown_ids.merge(other.unknown_ids);
        self.torn_lines.merge(other.torn_lines);
        self.skipped.merge(other.skipped);
    }

    /// One line for logs: `<file>: <issue>; <issue>`, or `<file>: no issues`.
    pub fn summary(&self) -> String {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        let d = &self.duplicate_keys;
        if d.count > 0 {
            let kept = match d.examples.first().map(|e| e.kept) {
                Some(Kept::Last) => "kept the last occurrence",
                _ => "kept the first occurrence",
            };
            let ex: Vec<String> = d
                .examples
                .iter()
                .map(|e| {
                    let mut t = e.key.clone();
                    if let Some(l) = e.line {
                        t.push_str(&format!(" line {l}"));
                    }
                    if let Some(k) = e.kept_line {
                        t.push_str(&format!(", kept line {k}"));
                    }
                    t
                })
                .collect();
            parts.push(format!(
                "{} duplicate key{} ({kept}; first: {})",
                d.count,
                s(d.count),
                ex.join("; ")
            ));
        }
        let u = &self.unknown_ids;
        if u.count > 0 {
            parts.push(format!(
                "{} unknown id{} (first: {})",
                u.count,
                s(u.count),
                u.examples.join(", ")
            ));
        }
        let t = &self.torn_lines;
        if t.count > 0 {
            let lines: Vec<String> = t.examples.iter().map(|l| l.to_string()).collect();
            parts.push(format!(
                "torn last line{} {} ignored",
                s(t.count),
                lines.join(", ")
            ));
        }
        let k = &self.skipped;
        if k.count > 0 {
            let ex: Vec<String> = k
                .examples
                .iter()
                .map(|e| {
                    let at = match (&e.key, e.line) {
                        (Some(key), Some(l)) => format!("{key} line {l}: "),
                        (Some(key), None) => format!("{key}: "),
                        (None, Some(l)) => format!("line {l}: "),
                        (None, None) => String::new(),
                    };
                    format!("{at}{}", e.reason)
                })
                .collect();
            parts.push(format!(
                "{} skipped record{} (first: {})",
                k.count,
                s(k.count),
                ex.join("; ")
            ));
        }
        if parts.is_empty() {
            parts.push("no issues".into());
        }
        format!("{}: {}", self.file, parts.join("; "))
    }
}

/// Records read from a JSONL file, with the 1-based line of each and what was tolerated.
#[derive(Debug, Clone)]
pub struct JsonlRead<T> {
    pub records: Vec<T>,
    /// File line of each record.
    pub lines: Vec<usize>,
    pub issues: InputIssues,
}

/// Reads a JSONL file like [`crate::io::read_jsonl`] (blank lines skipped; any invalid line that
/// is not an unterminated last line is an error naming the file and line), but reports a torn
/// last line in `issues` instead of dropping it silently.
pub fn read_jsonl_report<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<JsonlRead<T>> {
    let path = path.as_ref();
    let (text, torn_utf8) = crate::io::read_jsonl_text(path)?;
    let mut read = parse_jsonl_report(path, &text)?;
    if torn_utf8 {
        // The dropped tail is the line after the text's last newline.
        read.issues.torn_line(text.matches('\n').count() + 1);
    }
    Ok(read)
}

/// [`read_jsonl_report`] on text already read; `path` names the file in errors and in `issues`.
pub fn parse_jsonl_report<T: DeserializeOwned>(path: &Path, text: &str) -> Result<JsonlRead<T>> {
    let mut out = JsonlRead {
        records: Vec::new(),
        lines: Vec::new(),
        issues: InputIssues::new(path.display().to_string()),
    };
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let complete = line.ends_with('\n');
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(trimmed) {
            Ok(v) => {
                out.records.push(v);
                out.lines.push(i + 1);
            }
            // Only the last piece of the text can lack its newline.
            Err(_) if !complete => out.issues.torn_line(i + 1),
            Err(e) => {
                return Err(CoreError::JsonLine {
                    path: path.into(),
                    line: i + 1,
                    source: e,
                })
            }
        }
    }
    Ok(out)
}

impl<T> JsonlRead<T> {
    /// Keeps the first record of each key (file order) and reports every later one as a
    /// duplicate with both line numbers.
    pub fn dedup_first(&mut self, key: impl Fn(&T) -> String) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let records = std::mem::take(&mut self.records);
        let lines = std::mem::take(&mut self.lines);
        for (r, line) in records.into_iter().zip(lines) {
            let k = key(&r);
            match seen.get(&k) {
                Some(&kept) => self
                    .issues
                    .duplicate(k, Kept::First, Some(kept), Some(line)),
                None => {
                    seen.insert(k, line);
                    self.records.push(r);
                    self.lines.push(line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct R {
        id: String,
        v: u32,
    }

    #[test]
    fn counts_exact_examples_capped() {
        let mut i = InputIssues::new("p.json");
        for k in 0..12 {
            i.unknown(format!("x{k}"));
        }
        assert_eq!(i.unknown_ids.count, 12);
        assert_eq!(i.unknown_ids.examples.len(), MAX_EXAMPLES);
        assert_eq!(i.unknown_ids.examples[0], "x0");
        assert!(i
            .summary()
            .starts_with("p.json: 12 unknown ids (first: x0, x1,"));
    }

    #[test]
    fn clean_summary_and_merge() {
        let mut a = InputIssues::new("a.jsonl");
        assert!(a.is_clean());
        assert_eq!(a.summary(), "a.jsonl: no issues");
        let mut b = InputIssues::new("b");
        b.skip(Some("q9".into()), Some(3), "unknown query");
        b.duplicate("q1", Kept::Last, Some(5), Some(2));
        a.merge(b);
        assert_eq!((a.skipped.count, a.duplicate_keys.count), (1, 1));
        let s = a.summary();
        assert!(s.contains("kept the last occurrence"), "{s}");
        assert!(
            s.contains("1 skipped record (first: q9 line 3: unknown query)"),
            "{s}"
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut i = InputIssues::new("f");
        i.torn_line(4);
        i.duplicate("k", Kept::First, Some(1), Some(2));
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["duplicate_keys"]["examples"][0]["kept"], "first");
        let back: InputIssues = serde_json::from_value(v).unwrap();
        assert_eq!(back, i);
        // Missing fields default (older summaries).
        let empty: InputIssues = serde_json::from_str("{}").unwrap();
        assert!(empty.is_clean());
    }

    #[test]
    fn jsonl_torn_last_line_reported_middle_line_fails() {
        let p = Path::new("r.jsonl");
        let text = "{\"id\":\"a\",\"v\":1}\n\n{\"id\":\"b\",\"v\":2}\n{\"id\":\"a\",\"v\":3}\n{\"id\":\"c\",\"v\"";
        let mut r: JsonlRead<R> = parse_jsonl_report(p, text).unwrap();
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.lines, [1, 3, 4]);
        assert_eq!(r.issues.torn_lines.examples, [5]);
        r.dedup_first(|x| x.id.clone());
        assert_eq!(r.records.iter().map(|x| x.v).collect::<Vec<_>>(), [1, 2]);
        let d = &r.issues.duplicate_keys.examples[0];
        assert_eq!(
            (d.key.as_str(), d.kept_line, d.line),
            ("a", Some(1), Some(4))
        );
        // A complete last line without newline is a record, not a torn line.
        let r: JsonlRead<R> = parse_jsonl_report(p, "{\"id\":\"a\",\"v\":1}").unwrap();
        assert_eq!((r.records.len(), r.issues.torn_lines.count), (1, 0));
        // An invalid line that is not the last one is an error naming file and line.
        let e = parse_jsonl_report::<R>(
            p,
            "{\"id\":\"a\",\"v\":1}\nnot json\n{\"id\":\"b\",\"v\":1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("r.jsonl:2"), "{e}");
        // An invalid terminated last line is an error too (it was written completely).
        assert!(parse_jsonl_report::<R>(p, "not json\n").is_err());
    }
}
