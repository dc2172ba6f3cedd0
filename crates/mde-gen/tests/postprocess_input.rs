//! `postprocess_file`: one record per query id (the first complete line), duplicates and a torn
//! last line reported in the summary, an invalid middle line is an error naming file and line.
use mde_core::records::{GenQuery, ObjectBox, TeacherReplyRecord};
use mde_gen::postprocess::{postprocess_file, PostprocessConfig};

const GOOD: &str = "Question: Where is the cat [0.100, 0.100, 0.500, 0.500]?\nChoices: (A) On the sofa (B) Under the bed (C) In a box (D) On a car\nAnswer: The answer is (A): On the sofa.\nExplanation: The cat lies on the sofa.";

fn q(id: &str) -> GenQuery {
    GenQuery {
        id: id.into(),
        question_type: "Instance Location".into(),
        image_id: 7,
        captions: vec!["A cat on a sofa.".into()],
        boxes: vec![ObjectBox {
            category: "cat".into(),
            bbox: [0.1, 0.1, 0.5, 0.5],
        }],
        ..Default::default()
    }
}

fn line(id: &str, text: &str) -> String {
    let r = TeacherReplyRecord {
        query_id: id.into(),
        text: text.into(),
        ..Default::default()
    };
    serde_json::to_string(&r).unwrap() + "\n"
}

#[test]
fn duplicates_and_torn_last_line_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("replies.jsonl");
    let second = GOOD.replace("On the sofa", "On a chair");
    let mut text = String::new();
    text += &line("a", GOOD); // line 1: kept
    text += &line("b", GOOD); // line 2
    text += &line("a", &second); // line 3: duplicate of line 1
    text += &line("b", GOOD); // line 4: duplicate of line 2
    text += "{\"query_id\":\"c\",\"te"; // line 5: torn (kill -9 mid-append)
    std::fs::write(&p, text).unwrap();
    let queries = vec![q("a"), q("b"), q("c")];
    let out = postprocess_file(&p, &queries, &PostprocessConfig::default()).unwrap();

    // The dataset has one record per query id, and for `a` it is the first reply.
    let ids: Vec<&str> = out.items.iter().map(|i| i.query_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(out.items[0].raw.contains("On the sofa"));
    assert_eq!(out.stats.replies, 2);

    // The summary (postprocess_summary.json is `stats`) reports duplicates and the torn line.
    let s = serde_json::to_value(&out.stats).unwrap();
    let input = &s["input"];
    assert_eq!(input["duplicate_keys"]["count"], 2);
    let d0 = &input["duplicate_keys"]["examples"][0];
    assert_eq!(
        (&d0["key"], &d0["kept"], &d0["kept_line"], &d0["line"]),
        (
            &serde_json::json!("a"),
            &serde_json::json!("first"),
            &serde_json::json!(1),
            &serde_json::json!(3)
        )
    );
    assert_eq!(input["torn_lines"]["count"], 1);
    assert_eq!(input["torn_lines"]["examples"][0], 5);
    assert!(input["file"].as_str().unwrap().ends_with("replies.jsonl"));
    let summary = out.stats.input.summary();
    assert!(summary.contains("replies.jsonl"), "{summary}");
    assert!(summary.contains("2 duplicate keys"), "{summary}");
    assert!(summary.contains("torn last line 5"), "{summary}");
}

#[test]
fn clean_file_reports_nothing_and_unknown_queries_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("replies.jsonl");
    std::fs::write(&p, line("a", GOOD) + &line("zz", GOOD)).unwrap();
    let out = postprocess_file(&p, &[q("a")], &PostprocessConfig::default()).unwrap();
    assert_eq!(out.items.len(), 1);
    assert_eq!(out.stats.input.duplicate_keys.count, 0);
    assert_eq!(out.stats.input.torn_lines.count, 0);
    assert_eq!(out.stats.input.unknown_ids.examples, ["zz"]);
    assert_eq!(out.stats.drop_reasons["unknown_query"], 1);
}

#[test]
fn invalid_middle_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("replies.jsonl");
    std::fs::write(&p, line("a", GOOD) + "{oops\n" + &line("b", GOOD)).unwrap();
    let e = postprocess_file(&p, &[q("a"), q("b")], &PostprocessConfig::default()).unwrap_err();
    assert!(e.contains("replies.jsonl:2"), "{e}");
}

#[test]
fn in_memory_duplicates_keep_the_first() {
    let replies: Vec<TeacherReplyRecord> = ["a", "a"]
        .iter()
        .map(|id| serde_json::from_str(line(id, GOOD).trim()).unwrap())
        .collect();
    let out = mde_gen::postprocess(&replies, &[q("a")], &PostprocessConfig::default()).unwrap();
    assert_eq!(out.items.len(), 1);
    assert_eq!(out.stats.input.duplicate_keys.count, 1);
    assert_eq!(out.stats.input.duplicate_keys.examples[0].line, Some(2));
}
