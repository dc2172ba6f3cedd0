//! The whole IPO workflow, scripted: version 1 -> critique (accepted) -> trial batch generated
//! through the real OpenAI-compatible client against a chat-completions server on 127.0.0.1 ->
//! terminal labelling with scripted input, interrupted and resumed -> statistics -> correction
//! (edited) -> version 3. Every version and label must be on disk.
use axum::routing::post;
use axum::{Json, Router};
use mde_core::records::{FailureCategory, GenQuery, InContextExample, ObjectBox};
use mde_gen::{PostprocessConfig, RunnerConfig, TeacherConfig};
use mde_ipo::review::TerminalReviewer;
use mde_ipo::versions::VersionSource;
use mde_ipo::{Ipo, StepOutcome};
use serde_json::{json, Value};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ADDED_RULE: &str = "13. Only mention boxes that appear in the object list above.";

fn reply_text(body: &Value) -> String {
    let all: String = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let template = all
        .split_once("<<<\n")
        .and_then(|(_, r)| r.split_once("\n>>>"))
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    if all.contains("You review prompts") {
        format!("ISSUES:\n1. \"bbox coordinates\" -- the prompt never says boxes must come from the object list\nREVISED PROMPT:\n{template}\n{ADDED_RULE}\nEND REVISED PROMPT\n")
    } else if all.contains("You improve prompts") {
        assert!(
            all.contains("points at nothing"),
            "the correction request must carry the labeller's explanation"
        );
        format!("CAUSES:\n1. Boxes were invented for objects not in the list.\nEDITS:\n1. Forbid boxes outside the list.\nREVISED PROMPT:\n{template}\n14. Never invent coordinates.\nEND REVISED PROMPT\n")
    } else if all.contains("BADBOX") {
        "Question: What colour is the square [0.900, 0.900, 0.950, 0.950]?\nChoices: (A) red (B) blue (C) green (D) yellow\nAnswer: The answer is (A): red.\nExplanations: The square is red.".into()
    } else {
        "Question: What colour is the square?\nChoices: (A) red (B) blue (C) green (D) yellow\nAnswer: The answer is (A): red.\nExplanations: The square is red.".into()
    }
}

async fn start_server(calls: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let text = reply_text(&body);
                Json(json!({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test-teacher",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn queries(n: usize) -> Vec<GenQuery> {
    (0..n)
        .map(|i| GenQuery {
            id: format!("q{i}"),
            question_type: "attribute_recognition".into(),
            type_definition: "recognise colour, shape or size of an object".into(),
            image_id: i as u64,
            captions: vec![format!(
                "A red square on a grey background{}.",
                if i % 2 == 1 { " BADBOX" } else { "" }
            )],
            boxes: vec![ObjectBox {
                category: "square".into(),
                bbox: [0.1, 0.1, 0.4, 0.4],
            }],
            examples: (0..2)
                .map(|k| InContextExample {
                    question: format!("What colour is object {k}?"),
                    choices: vec!["red".into(), "blue".into(), "green".into(), "yellow".into()],
                    answer_idx: k,
                    question_type: "attribute_recognition".into(),
                    source_id: format!("b{k}"),
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_goes_from_v1_to_an_accepted_version_through_all_three_steps() -> anyhow::Result<()>
{
    let calls = Arc::new(AtomicUsize::new(0));
    let base_url = start_server(calls.clone()).await;
    let teacher = mde_gen::build_teacher(&TeacherConfig {
        base_url,
        model: "test-teacher".into(),
        api_key_env: None,
        timeout_s: 10.0,
        ..Default::default()
    })?;
    let dir = tempfile::tempdir()?;
    let v1_text = mde_gen::GeneratePrompt::v1()
        .template()
        .source()
        .to_string();
    let ipo = Ipo::init(dir.path(), &v1_text)?;

    // Step 1: critique, accepted.
    let mut reviewer = TerminalReviewer::new(Cursor::new("a\n"), Vec::new());
    reviewer.editor = None;
    let (review, outcome) = ipo.critique_step(teacher.as_ref(), &mut reviewer).await?;
    assert_eq!(outcome, StepOutcome::NewVersion(2));
    assert_eq!(review.findings.len(), 1);
    let v2 = ipo.store.get(2)?;
    assert_eq!(v2.meta.parent, Some(1));
    assert_eq!(v2.meta.source, VersionSource::Critique);
    assert!(v2.template.contains(ADDED_RULE));
    assert!(ipo.store.diff(1, 2)?.contains(&format!("+ {ADDED_RULE}")));

    // Step 2: trial batch with the active version; odd queries get an invented box.
    let qs = queries(6);
    let runner_cfg = RunnerConfig {
        concurrency: 3,
        progress: false,
        ..Default::default()
    };
    let s = mde_ipo::trial_gen::generate_trial(
        &ipo,
        2,
        &qs,
        teacher.clone(),
        runner_cfg.clone(),
        &PostprocessConfig::default(),
    )
    .await?;
    assert_eq!((s.replies, s.added, s.prelabelled), (6, 6, 3));
    let trial = ipo.trial(2)?;
    for item in trial.items() {
        let bad = item.query.captions[0].contains("BADBOX");
        assert_eq!(
            item.prelabels.contains(&FailureCategory::IncorrectBbox),
            bad,
            "{}: {:?}",
            item.id,
            item.prelabels
        );
        if !bad {
            assert!(
                item.prelabels.is_empty(),
                "{}: {:?} {:?}",
                item.id,
                item.prelabels,
                item.notes
            );
        }
    }
    // Re-running the trial generation pays nothing and adds nothing.
    let before = calls.load(Ordering::SeqCst);
    let s = mde_ipo::trial_gen::generate_trial(
        &ipo,
        2,
        &qs,
        teacher.clone(),
        runner_cfg,
        &PostprocessConfig::default(),
    )
    .await?;
    assert_eq!((s.added, calls.load(Ordering::SeqCst)), (0, before));

    // Labelling: accept the suggestion for q0 (ok) and q1 (bbox failure + explanation), then quit.
    let mut reviewer = TerminalReviewer::new(
        Cursor::new("\n\nthe box points at nothing\nq\n"),
        Vec::new(),
    );
    assert_eq!(ipo.label_step(&mut reviewer)?, 2);
    // Resume: q2 marked illogical by hand, q3 accepted, q4 ok, q5 accepted with the validator's note.
    let mut reviewer = TerminalReviewer::new(
        Cursor::new(
            "f illogical_question\nanswer is obvious\n\nthe box points at nothing too\no\n\n\n",
        ),
        Vec::new(),
    );
    assert_eq!(ipo.label_step(&mut reviewer)?, 4);
    let trial = ipo.trial(2)?;
    assert!(trial.unlabelled().is_empty());
    assert!(trial.label("q0").unwrap().ok);
    assert_eq!(
        trial.label("q1").unwrap().explanation,
        "the box points at nothing"
    );
    assert_eq!(
        trial.label("q2").unwrap().failures,
        vec![FailureCategory::IllogicalQuestion]
    );
    assert!(
        !trial.label("q5").unwrap().explanation.is_empty(),
        "an accepted failure keeps the validator's note"
    );

    // Statistics.
    let stats = ipo.status()?;
    assert_eq!(stats.len(), 1);
    let st = &stats[0];
    assert_eq!((st.version, st.items, st.labelled, st.failed), (2, 6, 6, 4));
    assert_eq!(st.by_category["incorrect_bbox"], 3);
    assert_eq!(st.by_category["illogical_question"], 1);
    assert!((st.failure_rate - 4.0 / 6.0).abs() < 1e-12);
    assert!(!st.meets(0.05));
    let table = mde_ipo::stats::markdown_table(&stats);
    assert!(table.contains("| incorrect bounding box | 3 |"), "{table}");

    // Step 3: correction, edited by the user before acceptance.
    let edited = format!(
        "{}\n14. Never invent coordinates; use only the listed boxes.\n.\n",
        v2.template
    );
    let mut reviewer = TerminalReviewer::new(Cursor::new(format!("e\n{edited}")), Vec::new());
    reviewer.editor = None;
    let (review, outcome) = ipo
        .correction_step(teacher.as_ref(), &mut reviewer, 8)
        .await?;
    assert_eq!(outcome, StepOutcome::NewVersion(3));
    assert_eq!(review.edits.len(), 1);
    let v3 = ipo.store.get(3)?;
    assert_eq!(
        (v3.meta.parent, v3.meta.source),
        (Some(2), VersionSource::Correction)
    );
    assert!(v3.template.contains("use only the listed boxes"));
    assert_eq!(ipo.store.active()?, 3);
    // The new version still renders as a generation prompt (placeholders intact).
    mde_gen::GeneratePrompt::from_text(&v3.template)?.render_text(&qs[0])?;

    // Everything is on disk: reopening sees the same versions and labels.
    let reopened = Ipo::open(dir.path())?;
    assert_eq!(reopened.store.list()?, vec![1, 2, 3]);
    assert_eq!(reopened.trial(2)?.labels().count(), 6);
    Ok(())
}
