//! Parser and post-processing tests: a corpus of good and broken replies with their expected
//! outcome, and a seeded fuzz test (random strings and mutations of real replies) proving that
//! parsing, filtering, validation and template rendering never panic.
use mde_core::records::{GenQuery, ObjectBox, TeacherReplyRecord};
use mde_gen::parse::{parse_reply, parse_sections, strip_boxes, DropReason};
use mde_gen::postprocess::{postprocess, PostprocessConfig, ValidationMode};
use mde_gen::prompt::{parse_classification, Template};
use mde_gen::validate::{ValidationConfig, Validator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GOOD: &str =
    "Question: What color is the umbrella held by the woman [0.210, 0.105, 0.480, 0.930]?\n\
Choices: (A) Red (B) Blue (C) Green (D) Yellow\n\
Answer: The answer is (B): Blue.\n\
Explanations: The woman [0.210, 0.105, 0.480, 0.930] holds a blue umbrella over her head.";

/// (reply, expected): Ok((question, choices, answer_idx, rationale)) or the drop reason.
#[allow(clippy::type_complexity)]
fn corpus() -> Vec<(
    String,
    Result<(&'static str, Vec<&'static str>, usize, &'static str), DropReason>,
)> {
    vec![
        (
            GOOD.into(),
            Ok((
                "What color is the umbrella held by the woman?",
                vec!["Red", "Blue", "Green", "Yellow"],
                1,
                "Explanations: The woman holds a blue umbrella over her head.",
            )),
        ),
        // Choices on separate lines with trailing dots; "Explanation:" header; 5 choices (E).
        (
            "Question: How many dogs are there?\nChoices:\n(A) One.\n(B) Two.\n(C) Three.\n(D) Four.\n(E) Five.\nAnswer: The answer is (E): Five.\nExplanation: Five dogs sit on the grass.".into(),
            Ok(("How many dogs are there?", vec!["One", "Two", "Three", "Four", "Five"], 4, "Explanation: Five dogs sit on the grass.")),
        ),
        // Lecture header; preamble before Question.
        (
            "Sure! Here it is.\nQuestion: Is it day or night?\nChoices: (A) Day (B) Night (C) Dawn (D) Dusk\nAnswer: (A)\nLecture: Shadows are short.".into(),
            Ok(("Is it day or night?", vec!["Day", "Night", "Dawn", "Dusk"], 0, "Lecture: Shadows are short.")),
        ),
        // Parentheses inside a choice split it (released quirk, reproduced).
        (
            "Question: Q?\nChoices: (A) A cup (mug) (B) A plate (C) A fork (D) A knife\nAnswer: The answer is (B): A plate.\nReasoning: r.".into(),
            Ok(("Q?", vec!["A cup", "A plate", "A fork", "A knife"], 1, "Reasoning: r.")),
        ),
        ("Skip. The image has no animals.".into(), Err(DropReason::DropWord("Skip"))),
        (GOOD.replace("over her head", "at these coordinates"), Err(DropReason::DropWord("coordinates"))),
        (GOOD.replace("holds", "inside the bounding box holds"), Err(DropReason::DropWord("bounding box"))),
        (GOOD.replace("Question:", "Q:"), Err(DropReason::MissingSection("Question"))),
        (GOOD.replace("Answer:", "Solution:"), Err(DropReason::MissingSection("Answer"))),
        ("Answer: (A)\nChoices: (A) x (B) y\nQuestion: q".into(), Err(DropReason::SectionOrder)),
        ("Question: q\nChoices: none\nAnswer: (A)".into(), Err(DropReason::NoChoices)),
        (GOOD.replace("(B): Blue", "Blue"), Err(DropReason::AnswerLetter)),
        (GOOD.replace("(B): Blue", "(b): Blue"), Err(DropReason::AnswerLetter)),
        (GOOD.replace("(B): Blue", "(AB): Blue"), Err(DropReason::AnswerLetter)),
        (GOOD.replace("held by the woman [", "held by the woman located at ["), Err(DropReason::LocatedAt)),
        (GOOD.replace("(D) Yellow", "(D) Yellow located at[0.1, 0.1, 0.2, 0.2]"), Err(DropReason::LocatedAt)),
        (GOOD.replace("holds a blue", "according to the description holds a blue"), Err(DropReason::Description)),
        (String::new(), Err(DropReason::MissingSection("Question"))),
    ]
}

#[test]
fn corpus_matches_expectations() {
    for (i, (text, expected)) in corpus().into_iter().enumerate() {
        let got = parse_reply(&text);
        match (got, expected) {
            (Ok(p), Ok((q, c, a, r))) => {
                assert_eq!(p.question, q, "case {i}");
                assert_eq!(p.choices, c, "case {i}");
                assert_eq!(p.answer_idx, a, "case {i}");
                assert_eq!(p.rationale, r, "case {i}");
            }
            (Err(g), Err(e)) => assert_eq!(g, e, "case {i}: {text:?}"),
            (g, e) => panic!("case {i}: got {g:?}, expected {e:?} for {text:?}"),
        }
    }
}

#[test]
fn box_stripping_tidies_punctuation() {
    assert_eq!(
        strip_boxes("Is the dog [0.1, 0.2, 0.3, 0.4] , or the cat [0.5,0.5,0.6,0.6] bigger?"),
        "Is the dog, or the cat bigger?"
    );
    assert_eq!(strip_boxes("[0.1, 0.2, 0.3, 0.4] A man."), "A man.");
    assert_eq!(strip_boxes("no boxes here"), "no boxes here");
}

fn query() -> GenQuery {
    GenQuery {
        id: "q".into(),
        question_type: "attribute_recognition".into(),
        captions: vec!["A woman with a blue umbrella walks in the rain.".into()],
        boxes: vec![
            ObjectBox {
                category: "person".into(),
                bbox: [0.21, 0.105, 0.48, 0.93],
            },
            ObjectBox {
                category: "umbrella".into(),
                bbox: [0.15, 0.02, 0.6, 0.4],
            },
        ],
        ..Default::default()
    }
}

const ALPHABET: &[&str] = &[
    "Question:",
    "Choices:",
    "Answer:",
    "Explanation:",
    "Explanations:",
    "Reason:",
    "Lecture:",
    "(",
    ")",
    "[",
    "]",
    "(A)",
    "(B)",
    "(E)",
    "(Z)",
    "located at [",
    "description",
    "Skip",
    "0.123",
    ", ",
    ".",
    "\n",
    " ",
    "é",
    "日本",
    "🙂",
    "{",
    "}",
    "{captions}",
    "1.",
    "(3)",
    "dog",
    "woman",
    "Question type:",
    "\u{0}",
    "\t",
    "Explanation",
];

fn random_text(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..40);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.2) {
                char::from_u32(rng.random_range(0..0x2FFFF))
                    .unwrap_or('x')
                    .to_string()
            } else {
                ALPHABET[rng.random_range(0..ALPHABET.len())].to_string()
            }
        })
        .collect()
}

fn mutate(rng: &mut StdRng, base: &str) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for _ in 0..rng.random_range(1..8) {
        let len = chars.len();
        match rng.random_range(0..4) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..20)).min(len);
                chars.drain(i..j);
            }
            1 => {
                let i = rng.random_range(0..=len);
                let ins: Vec<char> = ALPHABET[rng.random_range(0..ALPHABET.len())]
                    .chars()
                    .collect();
                chars.splice(i..i, ins);
            }
            2 if len > 1 => {
                let (i, j) = (rng.random_range(0..len), rng.random_range(0..len));
                chars.swap(i, j);
            }
            _ => {
                let i = rng.random_range(0..=len);
                chars.insert(
                    i,
                    char::from_u32(rng.random_range(0x80..0x10FFF)).unwrap_or('?'),
                );
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn fuzz_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let validator = Validator::new(&ValidationConfig::default(), &["umbrella".into()]).unwrap();
    let q = query();
    let types = vec!["a".to_string(), "b".to_string()];
    let mut replies = Vec::new();
    let mut ok = 0;
    for i in 0..6000 {
        let text = if i % 2 == 0 {
            random_text(&mut rng)
        } else {
            mutate(&mut rng, GOOD)
        };
        let sections = parse_sections(&text);
        let _ = validator.validate(&text, sections.as_ref().ok(), &q);
        if let Ok(p) = parse_reply(&text) {
            ok += 1;
            // Invariants of an accepted reply.
            assert!(!p.choices.is_empty() && p.answer_idx < 5, "{text:?}");
            assert!(p.choices.iter().all(|c| !c.is_empty()));
            assert!(!p.rationale.contains("description"));
        }
        let _ = strip_boxes(&text);
        let _ = parse_classification(&text, 2, &types);
        let _ = Template::parse(&text, &["captions"]);
        // One query per reply: postprocess keeps one reply per query id.
        replies.push(TeacherReplyRecord {
            query_id: format!("{}-{i}", q.id),
            text,
            ..Default::default()
        });
    }
    // Mutations of a good reply often survive: the fuzzer reaches the accepting paths too.
    assert!(ok > 100, "only {ok} accepted");
    let queries: Vec<_> = replies
        .iter()
        .map(|r| mde_core::records::GenQuery {
            id: r.query_id.clone(),
            ..q.clone()
        })
        .collect();
    for mode in [
        ValidationMode::Flag,
        ValidationMode::Drop,
        ValidationMode::Off,
    ] {
        let cfg = PostprocessConfig {
            validation: mode,
            ..Default::default()
        };
        let out = postprocess(&replies, &queries, &cfg).unwrap();
        assert_eq!(out.stats.kept + out.stats.dropped, replies.len());
        assert!(out.stats.input.is_clean());
        assert_eq!(
            out.stats.drop_reasons.values().sum::<usize>(),
            out.stats.dropped
        );
        for it in &out.items {
            let _ = mde_gen::postprocess::to_v1(it);
            let _ = mde_gen::postprocess::to_v2(it);
            let _ = mde_gen::postprocess::to_llava(it);
        }
    }
}
