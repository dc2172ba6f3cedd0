//! Reply parsing and the released post-processing rules (REFERENCE §5), reproduced exactly by
//! default. Every rejection carries a [`DropReason`] so the run summary can show a histogram.
//!
//! Order of the rules (as released): drop words on the raw reply; section finding; choice
//! splitting; answer letter; `located at [` drop; `[...]` box stripping with punctuation tidy;
//! `description` drop. The parser works on arbitrary text and never panics (fuzz-tested).
use regex::Regex;
use std::sync::OnceLock;

/// Substrings that make the released script drop a reply (case-sensitive, as released).
pub const DROP_WORDS: &[&str] = &["coordinates", "coordinate", "bounding box", "skip", "Skip"];

/// Explanation headers in priority order. "Explanation:" also matches "Explanations:" (the
/// released prefix match).
pub const EXPLANATION_HEADERS: &[&str] = &[
    "Explanation:",
    "Reason:",
    "Reasoning:",
    "Lecture:",
    "Explanatory note:",
    "Explaination:",
];

/// Why a reply was not turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Contains one of [`DROP_WORDS`].
    DropWord(&'static str),
    /// A required section header is missing ("Question:", "Choices:", "Answer:").
    MissingSection(&'static str),
    /// Sections out of order (Question < Choices < Answer).
    SectionOrder,
    /// No choice text between ")" and "(".
    NoChoices,
    /// No "(X)" in the answer section, or X not in A-E.
    AnswerLetter,
    /// Question/choices/rationale match `located at\s*\[`.
    LocatedAt,
    /// Rationale mentions "description".
    Description,
    /// Dropped by validation (keep-and-flag off), with the flag name.
    Validation(String),
    /// The reply's query id is not in the queries file.
    UnknownQuery,
}

impl DropReason {
    /// Stable key for histograms.
    pub fn key(&self) -> String {
        match self {
            DropReason::DropWord(w) => format!("drop_word:{w}"),
            DropReason::MissingSection(s) => format!("missing_section:{s}"),
            DropReason::SectionOrder => "section_order".into(),
            DropReason::NoChoices => "no_choices".into(),
            DropReason::AnswerLetter => "answer_letter".into(),
            DropReason::LocatedAt => "located_at".into(),
            DropReason::Description => "description".into(),
            DropReason::Validation(f) => format!("validation:{f}"),
            DropReason::UnknownQuery => "unknown_query".into(),
        }
    }
}

/// The sections of a reply, before any filtering.
#[derive(Debug, Clone, PartialEq)]
pub struct RawParsed {
    pub question: String,
    pub choices: Vec<String>,
    /// 0-based index of the answer letter (A=0 .. E=4); may exceed `choices.len()`.
    pub answer_idx: usize,
    /// Rationale including its header; the last line when no header was found.
    pub rationale: String,
}

/// A reply that passed every rule: boxes stripped, punctuation tidied.
pub type CleanParsed = RawParsed;

/// First matching drop word, if any.
pub fn drop_word(text: &str) -> Option<&'static str> {
    DROP_WORDS.iter().copied().find(|w| text.contains(w))
}

/// Finds the explanation header: the first of [`EXPLANATION_HEADERS`] present in `text`.
/// Returns its byte position.
fn find_explanation(text: &str) -> Option<usize> {
    for h in EXPLANATION_HEADERS {
        if *h == "Explanation:" {
            // Prefix match: "Explanation" followed by ':' or 's:'.
            let mut from = 0;
            while let Some(p) = text[from..].find("Explanation") {
                let at = from + p;
                let rest = &text[at + "Explanation".len()..];
                if rest.starts_with(':') || rest.starts_with("s:") {
                    return Some(at);
                }
                from = at + "Explanation".len();
            }
        } else if let Some(p) = text.find(h) {
            return Some(p);
        }
    }
    None
}

/// Splits the choices section: text between each ")" and the next "(", trailing "." removed,
/// empties dropped.
pub fn split_choices(section: &str) -> Vec<String> {
    section
        .split(')')
        .skip(1)
        .map(|piece| {
            let upto = piece.split('(').next().unwrap_or("");
            upto.trim().trim_end_matches('.').trim().to_string()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// The answer letter: text between the first "(" and the next ")" of the answer section; must be
/// one of A-E. Returns its 0-based index.
pub fn answer_letter(section: &str) -> Option<usize> {
    let open = section.find('(')?;
    let close = section[open + 1..].find(')')? + open + 1;
    let inner = section[open + 1..close].trim();
    let mut chars = inner.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    ('A'..='E').contains(&c).then(|| (c as u8 - b'A') as usize)
}

/// Section finding, choice splitting and answer letter, without the content filters.
pub fn parse_sections(text: &str) -> Result<RawParsed, DropReason> {
    let q = text
        .find("Question:")
        .ok_or(DropReason::MissingSection("Question"))?;
    let c = text
        .find("Choices:")
        .ok_or(DropReason::MissingSection("Choices"))?;
    let a = text
        .find("Answer:")
        .ok_or(DropReason::MissingSection("Answer"))?;
    if !(q < c && c < a) {
        return Err(DropReason::SectionOrder);
    }
    let question = text[q + "Question:".len()..c].trim().to_string();
    let choices = split_choices(&text[c + "Choices:".len()..a]);
    if choices.is_empty() {
        return Err(DropReason::NoChoices);
    }
    let after_answer = a + "Answer:".len();
    let header = find_explanation(&text[after_answer..]).map(|p| p + after_answer);
    let answer_section = &text[after_answer..header.unwrap_or(text.len())];
    let answer_idx = answer_letter(answer_section).ok_or(DropReason::AnswerLetter)?;
    let rationale = match header {
        Some(h) => text[h..].trim().to_string(),
        None => text.trim().lines().last().unwrap_or("").trim().to_string(),
    };
    Ok(RawParsed {
        question,
        choices,
        answer_idx,
        rationale,
    })
}

fn re_located_at() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"located at\s*\[").expect("valid regex"))
}

fn re_box() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\s*\[[^\[\]]*\]").expect("valid regex"))
}

/// Removes every `[...]` group and tidies what is left: no space before `,.;:?!)`, no space after
/// `(`, empty `()` removed, doubled punctuation such as ", ," or ",." collapsed to the last mark,
/// runs of spaces collapsed, ends trimmed.
pub fn strip_boxes(s: &str) -> String {
    static TIDY: OnceLock<[(Regex, &'static str); 5]> = OnceLock::new();
    let tidy = TIDY.get_or_init(|| {
        [
            (Regex::new(r"\(\s*\)").expect("valid regex"), ""),
            (Regex::new(r"[ \t]+([,.;:?!)])").expect("valid regex"), "$1"),
            (Regex::new(r"\([ \t]+").expect("valid regex"), "("),
            (Regex::new(r"[,;:]([,.;:?!])").expect("valid regex"), "$1"),
            (Regex::new(r"[ \t]{2,}").expect("valid regex"), " "),
        ]
    });
    let mut out = re_box().replace_all(s, "").into_owned();
    for (re, rep) in tidy.iter() {
        out = re.replace_all(&out, *rep).into_owned();
    }
    out.trim().to_string()
}

/// The content filters applied after parsing (located-at drop, box stripping, description drop).
pub fn apply_filters(p: RawParsed) -> Result<CleanParsed, DropReason> {
    let la = re_located_at();
    if la.is_match(&p.question)
        || p.choices.iter().any(|c| la.is_match(c))
        || la.is_match(&p.rationale)
    {
        return Err(DropReason::LocatedAt);
    }
    let question = strip_boxes(&p.question);
    let choices: Vec<String> = p.choices.iter().map(|c| strip_boxes(c)).collect();
    let rationale = strip_boxes(&p.rationale);
    if rationale.contains("description") {
        return Err(DropReason::Description);
    }
    Ok(RawParsed {
        question,
        choices,
        answer_idx: p.answer_idx,
        rationale,
    })
}

/// All released rules in order: drop words, sections, filters.
pub fn parse_reply(text: &str) -> Result<CleanParsed, DropReason> {
    if let Some(w) = drop_word(text) {
        return Err(DropReason::DropWord(w));
    }
    apply_filters(parse_sections(text)?)
}

/// The rationale without its header (for formats that carry plain text).
pub fn rationale_body(rationale: &str) -> &str {
    let r = rationale.trim_start();
    for h in EXPLANATION_HEADERS
        .iter()
        .chain(std::iter::once(&"Explanations:"))
    {
        if let Some(rest) = r.strip_prefix(h) {
            return rest.trim();
        }
    }
    r.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "Question: What is the man [0.100, 0.200, 0.300, 0.400] holding?\nChoices: (A) A kite. (B) An umbrella (C) A dog (D) A phone\nAnswer: The answer is (B): An umbrella.\nExplanations: The man [0.100, 0.200, 0.300, 0.400] holds an open umbrella above his head.";

    #[test]
    fn good_reply() {
        let p = parse_reply(GOOD).unwrap();
        assert_eq!(p.question, "What is the man holding?");
        assert_eq!(p.choices, vec!["A kite", "An umbrella", "A dog", "A phone"]);
        assert_eq!(p.answer_idx, 1);
        assert_eq!(
            p.rationale,
            "Explanations: The man holds an open umbrella above his head."
        );
        assert_eq!(
            rationale_body(&p.rationale),
            "The man holds an open umbrella above his head."
        );
    }

    #[test]
    fn drops() {
        assert_eq!(
            parse_reply("Skip. No person here."),
            Err(DropReason::DropWord("Skip"))
        );
        assert_eq!(
            parse_reply(&GOOD.replace("open", "bounding box")),
            Err(DropReason::DropWord("bounding box"))
        );
        assert_eq!(
            parse_reply(&GOOD.replace("Choices:", "Options:")),
            Err(DropReason::MissingSection("Choices"))
        );
        assert_eq!(
            parse_reply(&GOOD.replace("(B): An", "B: An")),
            Err(DropReason::AnswerLetter)
        );
        assert_eq!(
            parse_reply(&GOOD.replace("(B): An", "(F): An")),
            Err(DropReason::AnswerLetter)
        );
        assert_eq!(
            parse_reply(&GOOD.replace("the man [", "the man located at [")),
            Err(DropReason::LocatedAt)
        );
        assert_eq!(
            parse_reply(&GOOD.replace("holds", "per the description holds")),
            Err(DropReason::Description)
        );
    }

    #[test]
    fn headers_and_fallback() {
        let r = parse_reply(&GOOD.replace("Explanations:", "Reason:")).unwrap();
        assert!(r.rationale.starts_with("Reason: "));
        // No header: the rationale is the last line.
        let t = "Question: Q?\nChoices: (A) x (B) y (C) z (D) w\nAnswer: The answer is (C): z.\nBecause z.";
        let r = parse_reply(t).unwrap();
        assert_eq!((r.answer_idx, r.rationale.as_str()), (2, "Because z."));
        // Priority: "Explanation:" beats "Reason:" even when later.
        let t = "Question: Q?\nChoices: (A) x (B) y\nAnswer: (A)\nReason: r1\nExplanation: e1";
        assert_eq!(parse_reply(t).unwrap().rationale, "Explanation: e1");
    }

    #[test]
    fn tidy() {
        assert_eq!(
            strip_boxes("the cat [0.1, 0.2, 0.3, 0.4], which sits"),
            "the cat, which sits"
        );
        assert_eq!(
            strip_boxes("near the sofa [0.1, 0.2, 0.3, 0.4]."),
            "near the sofa."
        );
        assert_eq!(
            strip_boxes("the dog ([0.1, 0.2, 0.3, 0.4]) runs"),
            "the dog runs"
        );
        assert_eq!(strip_boxes("a [x] , b"), "a, b");
    }
}
