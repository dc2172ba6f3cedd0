//! Validation of replies against the query's annotations (captions + boxes).
//!
//! Flags and the IPO failure category each maps to:
//!
//! | flag | detects | category |
//! |---|---|---|
//! | `unmatched_box` | a `[x1, y1, x2, y2]` in the reply that matches no annotated box within the tolerance | incorrect bbox |
//! | `illusion` | an object word (lexicon) in the question or correct choice that is neither an annotated category (or its synonym) nor a caption word | illusion |
//! | `type_mismatch` | the reply declares a "Question type:" other than the requested one | wrong question type |
//! | `answer_out_of_range` | answer letter beyond the number of choices | illogical question |
//! | `duplicate_choices` | two choices equal (case/space-insensitive) | illogical question |
//! | `answer_in_question` | the correct choice's text appears in the question and no distractor does | illogical question |
//! | `choice_count` | not exactly four choices | illogical question |
//! | `depth_claim` | distance/depth/size-comparison wording (rule 9) | incorrect 3D perception |
//! | `skip` | the teacher answered "Skip" | other |
//! | `unparseable` | the reply has no parseable Question/Choices/Answer | other |
//!
//! Limits of the lexicon approach (illusion): only words in the lexicon are checked (the COCO
//! categories, their plurals and common synonyms, plus every category seen in the queries file
//! and any user lexicon). Objects outside it are never flagged; a word used figuratively ("a
//! bear of a man") or a caption word used for a different thing passes; synonyms not listed
//! are flagged (false positives); plural handling is rule-based. Distractor choices and the
//! rationale are not checked: wrong choices are meant to name absent things, and rationales
//! legitimately say "there is no dog".
use crate::parse::RawParsed;
use mde_core::records::{GenQuery, ObjectBox};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

/// A validation finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    UnmatchedBox,
    Illusion,
    TypeMismatch,
    AnswerOutOfRange,
    DuplicateChoices,
    AnswerInQuestion,
    ChoiceCount,
    DepthClaim,
    Skip,
    Unparseable,
}

/// The failure categories of the IPO ablation (REFERENCE §1): shared with the IPO crate.
pub use mde_core::records::FailureCategory;

impl Flag {
    pub fn name(self) -> &'static str {
        match self {
            Flag::UnmatchedBox => "unmatched_box",
            Flag::Illusion => "illusion",
            Flag::TypeMismatch => "type_mismatch",
            Flag::AnswerOutOfRange => "answer_out_of_range",
            Flag::DuplicateChoices => "duplicate_choices",
            Flag::AnswerInQuestion => "answer_in_question",
            Flag::ChoiceCount => "choice_count",
            Flag::DepthClaim => "depth_claim",
            Flag::Skip => "skip",
            Flag::Unparseable => "unparseable",
        }
    }

    pub fn category(self) -> FailureCategory {
        match self {
            Flag::UnmatchedBox => FailureCategory::IncorrectBbox,
            Flag::Illusion => FailureCategory::Illusion,
            Flag::TypeMismatch => FailureCategory::WrongQuestionType,
            Flag::AnswerOutOfRange
            | Flag::DuplicateChoices
            | Flag::AnswerInQuestion
            | Flag::ChoiceCount => FailureCategory::IllogicalQuestion,
            Flag::DepthClaim => FailureCategory::Incorrect3dPerception,
            Flag::Skip | Flag::Unparseable => FailureCategory::Custom("other".into()),
        }
    }
}

/// One flag with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagHit {
    pub flag: Flag,
    pub category: FailureCategory,
    pub detail: String,
}

/// Built-in object lexicon: `word=canonical` (COCO categories, plurals handled separately).
const LEXICON: &str = "person=person,man=person,woman=person,men=person,women=person,people=person,boy=person,girl=person,child=person,children=person,kid=person,baby=person,guy=person,lady=person,player=person,skier=person,surfer=person,skateboarder=person,rider=person,\
bicycle=bicycle,bike=bicycle,car=car,motorcycle=motorcycle,motorbike=motorcycle,airplane=airplane,plane=airplane,aeroplane=airplane,jet=airplane,bus=bus,train=train,truck=truck,boat=boat,ship=boat,\
traffic light=traffic light,fire hydrant=fire hydrant,hydrant=fire hydrant,stop sign=stop sign,parking meter=parking meter,bench=bench,bird=bird,cat=cat,kitten=cat,dog=dog,puppy=dog,horse=horse,sheep=sheep,lamb=sheep,cow=cow,cattle=cow,elephant=elephant,bear=bear,zebra=zebra,giraffe=giraffe,\
backpack=backpack,umbrella=umbrella,handbag=handbag,purse=handbag,tie=tie,suitcase=suitcase,luggage=suitcase,frisbee=frisbee,skis=skis,ski=skis,snowboard=snowboard,sports ball=sports ball,ball=sports ball,kite=kite,baseball bat=baseball bat,bat=baseball bat,baseball glove=baseball glove,mitt=baseball glove,skateboard=skateboard,surfboard=surfboard,tennis racket=tennis racket,racket=tennis racket,\
bottle=bottle,wine glass=wine glass,cup=cup,mug=cup,fork=fork,knife=knife,knives=knife,spoon=spoon,bowl=bowl,banana=banana,apple=apple,sandwich=sandwich,orange=orange,broccoli=broccoli,carrot=carrot,hot dog=hot dog,pizza=pizza,donut=donut,doughnut=donut,cake=cake,\
chair=chair,couch=couch,sofa=couch,potted plant=potted plant,plant=potted plant,bed=bed,dining table=dining table,table=dining table,toilet=toilet,tv=tv,television=tv,laptop=laptop,mouse=mouse,remote=remote,keyboard=keyboard,cell phone=cell phone,phone=cell phone,cellphone=cell phone,smartphone=cell phone,\
microwave=microwave,oven=oven,toaster=toaster,sink=sink,refrigerator=refrigerator,fridge=refrigerator,book=book,clock=clock,vase=vase,scissors=scissors,teddy bear=teddy bear,hair drier=hair drier,hair dryer=hair drier,toothbrush=toothbrush";

/// Validation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Max absolute coordinate difference for a reply box to match an annotated box.
    pub box_tolerance: f64,
    /// Extra lexicon file: one `word` or `word=canonical` per line (`#` comments).
    pub lexicon_file: Option<std::path::PathBuf>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            box_tolerance: 0.02,
            lexicon_file: None,
        }
    }
}

/// Validates replies against annotations.
#[derive(Debug, Clone)]
pub struct Validator {
    tolerance: f64,
    /// Lexicon term (lowercase, singular, may contain a space) -> canonical object.
    lexicon: HashMap<String, String>,
    max_words: usize,
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| singular(&w.to_lowercase()))
        .collect()
}

/// Rule-based singular form (irregulars first).
pub fn singular(w: &str) -> String {
    match w {
        "men" => return "man".into(),
        "women" => return "woman".into(),
        "people" => return "person".into(),
        "children" => return "child".into(),
        "mice" => return "mouse".into(),
        "knives" => return "knife".into(),
        "sheep" | "skis" | "scissors" | "bus" | "glass" | "cattle" | "species" => return w.into(),
        _ => {}
    }
    if w.len() > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    for suf in ["ches", "shes", "sses", "xes", "uses"] {
        if w.len() > suf.len() && w.ends_with(suf) {
            return w[..w.len() - 2].to_string();
        }
    }
    if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        return w[..w.len() - 1].to_string();
    }
    w.to_string()
}

fn norm_phrase(s: &str) -> String {
    words(s).join(" ")
}

fn re_box() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        let n = r"\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*";
        Regex::new(&format!(r"\[{n},{n},{n},{n}\]")).expect("valid regex")
    })
}

fn re_depth() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"(?i)\b(distance|distances|closer|closest|nearer|nearest|farther|farthest|further away|depth|how far|how close|bigger than|larger than|smaller than|taller than|shorter than)\b")
            .expect("valid regex")
    })
}

fn re_type_line() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(?m)^\s*Question type:\s*(.+?)\s*$").expect("valid regex"))
}

/// Boxes written in a reply as `[a, b, c, d]`.
pub fn reply_boxes(text: &str) -> Vec<[f64; 4]> {
    re_box()
        .captures_iter(text)
        .filter_map(|c| {
            let mut b = [0.0; 4];
            for (i, v) in b.iter_mut().enumerate() {
                *v = c[i + 1].parse().ok()?;
            }
            Some(b)
        })
        .collect()
}

fn norm_type(s: &str) -> String {
    s.trim()
        .trim_end_matches('.')
        .to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Validator {
    /// The built-in lexicon plus `extra_categories` (e.g. every category of the queries file) and
    /// the optional lexicon file.
    pub fn new(cfg: &ValidationConfig, extra_categories: &[String]) -> Result<Self, String> {
        let mut lexicon = HashMap::new();
        for entry in LEXICON.split(',') {
            if let Some((w, c)) = entry.split_once('=') {
                lexicon.insert(norm_phrase(w), norm_phrase(c));
            }
        }
        for c in extra_categories {
            let n = norm_phrase(c);
            if !n.is_empty() {
                lexicon.entry(n.clone()).or_insert(n);
            }
        }
        if let Some(path) = &cfg.lexicon_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (w, c) = line.split_once('=').unwrap_or((line, line));
                let (w, c) = (norm_phrase(w), norm_phrase(c));
                if w.is_empty() || c.is_empty() {
                    return Err(format!(
                        "{}:{}: expected `word` or `word=canonical`",
                        path.display(),
                        i + 1
                    ));
                }
                lexicon.insert(w, c);
            }
        }
        let max_words = lexicon
            .keys()
            .map(|k| k.split(' ').count())
            .max()
            .unwrap_or(1);
        Ok(Self {
            tolerance: cfg.box_tolerance,
            lexicon,
            max_words,
        })
    }

    /// Lexicon terms (canonical, term) mentioned in `text`, longest match first.
    fn mentions(&self, text: &str) -> Vec<(String, String)> {
        let ws = words(text);
        let mut out = Vec::new();
        let mut i = 0;
        while i < ws.len() {
            let mut matched = 0;
            for n in (1..=self.max_words.min(ws.len() - i)).rev() {
                let phrase = ws[i..i + n].join(" ");
                if let Some(c) = self.lexicon.get(&phrase) {
                    out.push((c.clone(), phrase));
                    matched = n;
                    break;
                }
            }
            i += matched.max(1);
        }
        out
    }

    /// Flags for one reply. `parsed` is the reply's sections before box stripping (None when the
    /// reply could not be parsed).
    pub fn validate(
        &self,
        raw: &str,
        parsed: Option<&RawParsed>,
        query: &GenQuery,
    ) -> Vec<FlagHit> {
        let mut hits: Vec<FlagHit> = Vec::new();
        fn push(hits: &mut Vec<FlagHit>, flag: Flag, detail: String) {
            hits.push(FlagHit {
                flag,
                category: flag.category(),
                detail,
            });
        }
        let trimmed = raw.trim_start();
        if trimmed.starts_with("Skip")
            || trimmed.starts_with("skip")
            || (parsed.is_none() && raw.contains("Skip"))
        {
            push(
                &mut hits,
                Flag::Skip,
                trimmed
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect(),
            );
        }
        for b in reply_boxes(raw) {
            if !query
                .boxes
                .iter()
                .any(|a| box_close(&a.bbox, &b, self.tolerance))
            {
                push(
                    &mut hits,
                    Flag::UnmatchedBox,
                    format!("[{:.3}, {:.3}, {:.3}, {:.3}]", b[0], b[1], b[2], b[3]),
                );
            }
        }
        if let Some(c) = re_type_line().captures(raw) {
            if norm_type(&c[1]) != norm_type(&query.question_type) {
                push(
                    &mut hits,
                    Flag::TypeMismatch,
                    format!("declared {:?}, requested {:?}", &c[1], query.question_type),
                );
            }
        }
        let Some(p) = parsed else {
            if !hits.iter().any(|h| h.flag == Flag::Skip) {
                push(&mut hits, Flag::Unparseable, String::new());
            }
            return hits;
        };
        if p.answer_idx >= p.choices.len() {
            push(
                &mut hits,
                Flag::AnswerOutOfRange,
                format!("answer {} of {} choices", p.answer_idx + 1, p.choices.len()),
            );
        }
        if p.choices.len() != 4 {
            push(
                &mut hits,
                Flag::ChoiceCount,
                format!("{} choices", p.choices.len()),
            );
        }
        let normed: Vec<String> = p
            .choices
            .iter()
            .map(|c| norm_phrase(&crate::parse::strip_boxes(c)))
            .collect();
        let mut seen = BTreeSet::new();
        for c in &normed {
            if !c.is_empty() && !seen.insert(c.clone()) {
                push(&mut hits, Flag::DuplicateChoices, c.clone());
            }
        }
        let question = format!(" {} ", norm_phrase(&crate::parse::strip_boxes(&p.question)));
        if let Some(ans) = normed.get(p.answer_idx) {
            let named = |c: &String| c.len() >= 3 && question.contains(&format!(" {c} "));
            if named(ans)
                && !normed
                    .iter()
                    .enumerate()
                    .any(|(i, c)| i != p.answer_idx && named(c))
            {
                push(&mut hits, Flag::AnswerInQuestion, ans.clone());
            }
        }
        if let Some(m) = re_depth().find(&p.question) {
            push(&mut hits, Flag::DepthClaim, m.as_str().to_string());
        }
        // Illusion: object words of the question and the correct answer must be in the image.
        let present_canon: BTreeSet<String> = query
            .boxes
            .iter()
            .map(|b: &ObjectBox| {
                let n = norm_phrase(&b.category);
                self.lexicon.get(&n).cloned().unwrap_or(n)
            })
            .collect();
        let caption_words: BTreeSet<String> =
            query.captions.iter().flat_map(|c| words(c)).collect();
        let caption_text = format!(
            " {} ",
            query
                .captions
                .iter()
                .map(|c| norm_phrase(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let mut checked = p.question.clone();
        if let Some(a) = p.choices.get(p.answer_idx) {
            checked.push(' ');
            checked.push_str(a);
        }
        let mut reported = BTreeSet::new();
        for (canon, term) in self.mentions(&crate::parse::strip_boxes(&checked)) {
            let in_captions = if term.contains(' ') {
                caption_text.contains(&format!(" {term} "))
            } else {
                caption_words.contains(&term)
            };
            if present_canon.contains(&canon) || in_captions {
                continue;
            }
            if reported.insert(term.clone()) {
                push(&mut hits, Flag::Illusion, term);
            }
        }
        hits
    }
}

fn box_close(a: &[f64; 4], b: &[f64; 4], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol + 1e-9)
}

/// Validation counts for summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationStats {
    /// Replies validated.
    pub replies: usize,
    /// Replies with at least one flag.
    pub flagged: usize,
    /// Flag name -> replies carrying it.
    pub flags: BTreeMap<String, usize>,
    /// Failure category -> replies carrying it.
    pub categories: BTreeMap<String, usize>,
}

impl ValidationStats {
    pub fn add(&mut self, hits: &[FlagHit]) {
        self.replies += 1;
        if !hits.is_empty() {
            self.flagged += 1;
        }
        let flags: BTreeSet<Flag> = hits.iter().map(|h| h.flag).collect();
        for f in &flags {
            *self.flags.entry(f.name().to_string()).or_default() += 1;
        }
        let cats: BTreeSet<FailureCategory> = flags.iter().map(|f| f.category()).collect();
        for c in cats {
            *self.categories.entry(c.as_str().to_string()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_sections;

    fn query() -> GenQuery {
        GenQuery {
            id: "q".into(),
            question_type: "object_localization".into(),
            captions: vec!["Two men stand next to a red bus.".into()],
            boxes: vec![
                ObjectBox {
                    category: "person".into(),
                    bbox: [0.1, 0.2, 0.3, 0.9],
                },
                ObjectBox {
                    category: "bus".into(),
                    bbox: [0.4, 0.1, 0.95, 0.8],
                },
            ],
            ..Default::default()
        }
    }

    fn flags(text: &str) -> Vec<Flag> {
        let v = Validator::new(&ValidationConfig::default(), &[]).unwrap();
        let p = parse_sections(text).ok();
        v.validate(text, p.as_ref(), &query())
            .into_iter()
            .map(|h| h.flag)
            .collect()
    }

    #[test]
    fn clean_reply_has_no_flags() {
        let t = "Question: Where is the man [0.100, 0.200, 0.300, 0.900] relative to the bus [0.400, 0.100, 0.950, 0.800]?\nChoices: (A) Left of it (B) Right of it (C) On top of it (D) Inside it\nAnswer: The answer is (A): Left of it.\nExplanation: He stands left of the bus.";
        assert_eq!(flags(t), Vec::<Flag>::new());
    }

    #[test]
    fn each_flag_fires() {
        let base = "Question: What is the man [0.100, 0.200, 0.300, 0.900] next to?\nChoices: (A) A bus (B) A tree (C) A car (D) A wall\nAnswer: The answer is (A): A bus.\nExplanation: x";
        assert_eq!(flags(base), Vec::<Flag>::new());
        assert!(flags(&base.replace("0.900]", "0.500]")).contains(&Flag::UnmatchedBox));
        assert!(flags(&base.replace("the man", "the dog")).contains(&Flag::Illusion));
        assert!(flags(&base.replace("(A): A bus", "(E): none")).contains(&Flag::AnswerOutOfRange));
        assert!(flags(&base.replace("(C) A car", "(C) a  bus")).contains(&Flag::DuplicateChoices));
        assert!(flags(&base.replace("next to?", "next to, a bus or not?"))
            .contains(&Flag::AnswerInQuestion));
        assert!(
            flags(&base.replace("next to?", "closer to the camera than?"))
                .contains(&Flag::DepthClaim)
        );
        assert!(flags(&format!("{base}\nQuestion type: image_style")).contains(&Flag::TypeMismatch));
        assert!(flags("Skip: no objects fit this type.").contains(&Flag::Skip));
        assert_eq!(flags("Nothing useful."), vec![Flag::Unparseable]);
        assert!(flags(&base.replace(" (D) A wall", "")).contains(&Flag::ChoiceCount));
    }

    #[test]
    fn singulars() {
        assert_eq!(singular("buses"), "bus");
        assert_eq!(singular("boxes"), "box");
        assert_eq!(singular("puppies"), "puppy");
        assert_eq!(singular("dogs"), "dog");
        assert_eq!(singular("glass"), "glass");
        assert_eq!(singular("horses"), "horse");
        assert_eq!(singular("benches"), "bench");
    }
}
