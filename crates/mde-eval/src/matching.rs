//! VLMEvalKit's heuristic option extraction (`vlmeval/utils/matching_util.py` @ e8e78f05) and the
//! two earlier versions of it, plus the Python string semantics it relies on.
//!
//! `can_infer(answer, choices)` returns a letter, `'Z'` (a refusal: always wrong) or `None`
//! (Python `False`: nothing extracted).
//!
//! ```
//! use mde_eval::matching::{can_infer, Choices, MatchOptions};
//! let choices: Choices = vec![('A', "cat".into()), ('B', "dog".into())];
//! assert_eq!(can_infer("The answer is B.", &choices, &MatchOptions::default()), Some('B'));
//! assert_eq!(can_infer("dog", &choices, &MatchOptions::default()), Some('B'));
//! assert_eq!(can_infer("b", &choices, &MatchOptions::default()), None);
//! ```
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Python string semantics
// ---------------------------------------------------------------------------------------------

/// Python `str.isspace()` for one character: Rust's `char::is_whitespace` plus `\x1c`..`\x1f`.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python `str.split()` without arguments: split on runs of Python whitespace, no empty tokens.
pub fn py_split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_is_space).filter(|t| !t.is_empty())
}

/// Python `str.strip()` without arguments.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// Python `str.lower()` (full Unicode lowercasing, final sigma included; may change the length).
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// Python `len(str)`: code points.
pub fn py_len(s: &str) -> usize {
    s.chars().count()
}

/// True for Python's `x in list(string.ascii_uppercase)`: a single `A`..`Z`.
pub fn is_single_upper(s: &str) -> bool {
    s.len() == 1 && s.as_bytes()[0].is_ascii_uppercase()
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Choices as `build_choices` makes them: `(letter, str(option))` for every non-NaN single
/// uppercase letter column, in `A`..`Z` order.
pub type Choices = Vec<(char, String)>;

/// Which version of `matching_util.py` to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionVersion {
    /// HEAD (e8e78f05): last-4-token rule, `can_infer_text` length guard, PR #1552 regex fallback.
    #[default]
    Current,
    /// `0bccf452` (2025-08-04 .. 2026-06-17): as `Current` without the regex fallback.
    Pre1552,
    /// `c026693a` (2024-03 .. 2025-08-04): a single letter anywhere, no length guard, no regex.
    Pre1175,
}

impl ExtractionVersion {
    /// Name used in fixtures (`pre_1552`, `pre_1175`, `current`).
    pub fn name(self) -> &'static str {
        match self {
            ExtractionVersion::Current => "current",
            ExtractionVersion::Pre1552 => "pre_1552",
            ExtractionVersion::Pre1175 => "pre_1175",
        }
    }
    /// Parses [`ExtractionVersion::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "current" | "head" => Some(ExtractionVersion::Current),
            "pre_1552" => Some(ExtractionVersion::Pre1552),
            "pre_1175" => Some(ExtractionVersion::Pre1175),
            _ => None,
        }
    }
}

/// Options of the extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MatchOptions {
    pub version: ExtractionVersion,
    /// Env `VERBOSE` set to any non-empty value (even `"0"`): enables the "A might be a
    /// quantifier" guard. The fixtures were produced without it (default `false`).
    pub verbose: bool,
}

impl MatchOptions {
    /// Options for a given version, `VERBOSE` unset.
    pub fn version(version: ExtractionVersion) -> Self {
        MatchOptions {
            version,
            verbose: false,
        }
    }
}

const REJECT_TO_ANSWER: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

/// `_VERBOSE_ANSWER_RE = (?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**` with Python's `re`
/// semantics spelled out: `\s` is Python's whitespace set, and IGNORECASE adds the `ı`/`i` and
/// `ſ`/`s` equivalences.
fn verbose_answer_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let ws = r"[\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]";
        let (c, o, r, e, t, a, n, s, w, i) =
            ("[cC]", "[oO]", "[rR]", "[eE]", "[tT]", "[aA]", "[nN]", "[sS\u{17F}]", "[wW]", "[iI\u{131}]");
        let pat = format!(
            "(?:{c}{o}{r}{r}{e}{c}{t}{ws}+)?{a}{n}{s}{w}{e}{r}{ws}+{i}{s}{ws}+\\**([ABCDabcd])\\**"
        );
        Regex::new(&pat).expect("static regex")
    })
}

fn choice_in(choices: &[(char, String)], letter: char) -> bool {
    choices.iter().any(|(k, _)| *k == letter)
}

/// `can_infer_option(answer, choices)`.
pub fn can_infer_option(
    answer: &str,
    choices: &[(char, String)],
    opts: &MatchOptions,
) -> Option<char> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    if REJECT_TO_ANSWER.iter().any(|r| answer.contains(r)) {
        return Some('Z');
    }
    let modified: String = answer
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let splits: Vec<&str> = py_split_whitespace(&modified).collect();
    let mut buf = [0u8; 4];
    let position = |ch: char, buf: &mut [u8; 4]| {
        let s: &str = ch.encode_utf8(buf);
        splits.iter().position(|t| *t == s)
    };
    let count = choices
        .iter()
        .filter(|(k, _)| position(*k, &mut buf).is_some())
        .count();
    if count == 1 {
        // `for ch in choices:` — the VERBOSE guard is checked on the first iteration.
        if opts.verbose && splits.contains(&"A") && splits.len() > 3 {
            return None;
        }
        for (ch, _) in choices {
            if let Some(pos) = position(*ch, &mut buf) {
                let ok = match opts.version {
                    ExtractionVersion::Pre1175 => true,
                    _ => (pos as i64) > splits.len() as i64 - 5,
                };
                if ok {
                    return Some(*ch);
                }
            }
        }
    } else if count == 0 && splits.contains(&"Z") {
        return Some('Z');
    }
    if opts.version == ExtractionVersion::Current {
        if let Some(m) = verbose_answer_re().captures(answer) {
            let letter = m[1]
                .chars()
                .next()
                .expect("one letter")
                .to_ascii_uppercase();
            if choice_in(choices, letter) {
                return Some(letter);
            }
        }
    }
    None
}

/// `can_infer_text(answer, choices)`: the unique option whose lowercased text is a substring of the
/// lowercased answer.
pub fn can_infer_text(
    answer: &str,
    choices: &[(char, String)],
    version: ExtractionVersion,
) -> Option<char> {
    let answer = py_lower(answer);
    if version != ExtractionVersion::Pre1175 {
        let total: usize = choices.iter().map(|(_, v)| py_len(v)).sum();
        if py_len(&answer) > 2 * total {
            return None;
        }
    }
    let mut found = None;
    for (k, v) in choices {
        if answer.contains(py_lower(v).as_str()) {
            if found.is_some() {
                return None;
            }
            found = Some(*k);
        }
    }
    found
}

/// `can_infer(answer, choices)`: option stage, then text stage.
pub fn can_infer(answer: &str, choices: &[(char, String)], opts: &MatchOptions) -> Option<char> {
    can_infer_option(answer, choices, opts)
        .or_else(|| can_infer_text(answer, choices, opts.version))
}

/// Both stages of one extraction, as the fixtures record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inference {
    /// `can_infer_option` result.
    pub option_stage: Option<char>,
    /// `can_infer_text` result (computed even when not needed).
    pub text_stage: Option<char>,
    /// `can_infer` result.
    pub extracted: Option<char>,
}

/// Runs both stages and combines them like `can_infer`.
pub fn infer_detailed(answer: &str, choices: &[(char, String)], opts: &MatchOptions) -> Inference {
    let option_stage = can_infer_option(answer, choices, opts);
    let text_stage = can_infer_text(answer, choices, opts.version);
    Inference {
        option_stage,
        text_stage,
        extracted: option_stage.or(text_stage),
    }
}

/// `extract_answer_from_item` with `model=None` (exact matching): the extracted letter, or `'Z'`.
pub fn extract_answer_exact(answer: &str, choices: &[(char, String)], opts: &MatchOptions) -> char {
    can_infer(answer, choices, opts).unwrap_or('Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abcd() -> Choices {
        vec![
            ('A', "wooden violin".into()),
            ('B', "river".into()),
            ('C', "cat".into()),
            ('D', "black cat".into()),
        ]
    }

    #[test]
    fn spec_examples() {
        let o = MatchOptions::default();
        let c = abcd();
        for (p, want) in [
            ("B", Some('B')),
            ("**B**", Some('B')),
            ("Answer: B", Some('B')),
            (" B \n", Some('B')),
            ("b", None),
            ("（A）", None),
            ("b. river", Some('B')),
            ("B and C", None),
            ("The answer is a wooden violin.", Some('A')),
            ("The answer is bold", Some('B')),
            ("B. I think so, yes, it is B", None),
            ("Z", Some('Z')),
            ("Cannot determine the answer from this image.", Some('Z')),
            ("nan", None),
            ("cat", Some('C')),
            ("black cat", None),
        ] {
            assert_eq!(can_infer(p, &c, &o), want, "{p:?}");
        }
        let legacy = MatchOptions::version(ExtractionVersion::Pre1175);
        assert_eq!(
            can_infer("B. I think so, yes, it is B", &c, &legacy),
            Some('B')
        );
        let verbose = MatchOptions { verbose: true, ..o };
        assert_eq!(can_infer("A small black cat", &c, &verbose), None);
        assert_eq!(can_infer("A small black cat", &c, &o), Some('A'));
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(
            py_split_whitespace("a\x1cb\u{85}c  d").collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(py_lower("İ").chars().count(), 2);
    }
}
