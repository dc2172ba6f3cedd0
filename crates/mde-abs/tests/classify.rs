//! Classification through the Teacher trait: strict parsing, bounded retries, failure reports,
//! on-disk cache, typed items skipped.
use mde_abs::{Classifier, ClassifierConfig};
use mde_core::records::{BadCase, ImageRef};
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::{
    BoxFuture, Teacher, TeacherError, TeacherReply, TeacherRequest, TeacherTask,
};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Minimal executor: the futures here never wait on I/O.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// How the test teacher misbehaves on a given call (1-based); calls not listed answer well.
#[derive(Clone)]
enum Fault {
    DropLastLine,
    UnknownType,
    NameDisagrees,
    Preamble,
    Retryable,
    Fatal,
}

/// A teacher that classifies by keyword ("colour" -> Attribute Recognition, "where" -> Object
/// Localization, else Image Scene) from the prompt's numbered question list, with injected faults.
struct KeywordTeacher {
    taxonomy: Taxonomy,
    faults: Mutex<Vec<(usize, Fault)>>,
    calls: AtomicUsize,
    prompts: Mutex<Vec<String>>,
}

impl KeywordTeacher {
    fn new(faults: Vec<(usize, Fault)>) -> Self {
        Self {
            taxonomy: Taxonomy::mmbench_v1(),
            faults: Mutex::new(faults),
            calls: AtomicUsize::new(0),
            prompts: Mutex::new(vec![]),
        }
    }
    fn answer(&self, questions: &[String]) -> Vec<String> {
        questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let id = if q.contains("colour") {
                    "attribute_recognition"
                } else if q.contains("Where") {
                    "object_localization"
                } else {
                    "image_scene"
                };
                let k = self.taxonomy.number_of(id).unwrap();
                format!("{}. ({k}) {}", i + 1, self.taxonomy.by_id(id).unwrap().name)
            })
            .collect()
    }
}

impl Teacher for KeywordTeacher {
    fn name(&self) -> String {
        "keyword-teacher".into()
    }
    fn complete<'a>(
        &'a self,
        req: &'a TeacherRequest,
    ) -> BoxFuture<'a, Result<TeacherReply, TeacherError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.prompts
                .lock()
                .unwrap()
                .push(req.messages[0].content.clone());
            let TeacherTask::Classify { questions, types } = &req.task else {
                return Err(TeacherError::fatal("expected a classify task"));
            };
            assert!(!types.is_empty());
            let mut lines = self.answer(questions);
            let fault = self
                .faults
                .lock()
                .unwrap()
                .iter()
                .find(|(c, _)| *c == call)
                .map(|(_, f)| f.clone());
            match fault {
                Some(Fault::DropLastLine) => {
                    lines.pop();
                }
                Some(Fault::UnknownType) => {
                    lines[0] = "1. (3) Optical Character Recognition".into()
                }
                Some(Fault::NameDisagrees) => lines[0] = "1. (3) Image Scene".into(),
                Some(Fault::Preamble) => lines.insert(0, "Here are the types:".into()),
                Some(Fault::Retryable) => {
                    return Err(TeacherError::retryable("429 too many requests"))
                }
                Some(Fault::Fatal) => return Err(TeacherError::fatal("401 invalid key")),
                None => {}
            }
            Ok(TeacherReply {
                text: lines.join("\n"),
                model: "kw".into(),
                ..Default::default()
            })
        })
    }
}

fn questions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("What colour is object {i}?"),
            1 => format!("Where is object {i}?"),
            _ => format!("What place is shown in picture {i}?"),
        })
        .collect()
}

fn expected(q: &str) -> &'static str {
    if q.contains("colour") {
        "attribute_recognition"
    } else if q.contains("Where") {
        "object_localization"
    } else {
        "image_scene"
    }
}

#[test]
fn batches_parse_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("classify_cache.jsonl");
    let qs = questions(120);
    let teacher = KeywordTeacher::new(vec![]);
    let mut c = Classifier::new(Taxonomy::mmbench_v1(), ClassifierConfig::default())
        .unwrap()
        .with_cache(&cache)
        .unwrap();
    let r = block_on(c.classify_questions(&teacher, &qs)).unwrap();
    assert_eq!(r.calls, 3); // 50 + 50 + 20
    assert_eq!((r.classified, r.from_cache), (120, 0));
    for q in &qs {
        assert_eq!(r.labels[q], expected(q));
    }
    let prompts = teacher.prompts.lock().unwrap().clone();
    assert!(
        prompts[0].contains("1. What colour is object 0?")
            && prompts[0].contains("\n50. Where is object 49?\n")
    );
    assert!(prompts[2].contains("20. ") && !prompts[2].contains("21. "));
    assert!(prompts[0].contains("18. Knowledge-based Reasoning: "));

    // A re-run (new classifier on the same cache) pays nothing; a new question pays one call.
    let teacher2 = KeywordTeacher::new(vec![]);
    let mut c2 = Classifier::new(Taxonomy::mmbench_v1(), ClassifierConfig::default())
        .unwrap()
        .with_cache(&cache)
        .unwrap();
    let mut more = qs.clone();
    more.push("Where is the new thing?".into());
    more.push(qs[0].clone()); // duplicates are asked once
    let r2 = block_on(c2.classify_questions(&teacher2, &more)).unwrap();
    assert_eq!((r2.calls, r2.from_cache, r2.classified), (1, 120, 1));
    assert_eq!(r2.labels["Where is the new thing?"], "object_localization");
    // Another taxonomy does not reuse those labels: it asks the teacher again (whose
    // MMBench-numbered replies then fail the SEED taxonomy's strict parser).
    let teacher3 = KeywordTeacher::new(vec![]);
    let mut c3 = Classifier::new(Taxonomy::seed_bench(), ClassifierConfig::default())
        .unwrap()
        .with_cache(&cache)
        .unwrap();
    let r3 = block_on(c3.classify_questions(&teacher3, &qs[..5])).unwrap();
    assert_eq!(r3.from_cache, 0);
    assert_eq!(r3.calls, 3);
    assert_eq!(r3.failures.len(), 1);
    assert!(r3.labels.is_empty());
    assert_eq!(
        c3.parse_reply("1. (4) Instance Location", 1).unwrap(),
        vec!["instance_location".to_string()]
    );
}

#[test]
fn bad_replies_are_retried_then_reported() {
    let cfg = ClassifierConfig {
        batch_size: 10,
        max_attempts: 3,
        ..Default::default()
    };
    let qs = questions(30);
    // Batch 1: wrong count then fine (2 calls). Batch 2: unknown type, name/number mismatch,
    // preamble -> failed after 3 calls. Batch 3: retryable error then fine.
    let teacher = KeywordTeacher::new(vec![
        (1, Fault::DropLastLine),
        (3, Fault::UnknownType),
        (4, Fault::NameDisagrees),
        (5, Fault::Preamble),
        (6, Fault::Retryable),
    ]);
    let mut c = Classifier::new(Taxonomy::mmbench_v1(), cfg.clone()).unwrap();
    let r = block_on(c.classify_questions(&teacher, &qs)).unwrap();
    assert_eq!(r.calls, 2 + 3 + 2);
    assert_eq!(r.classified, 20);
    assert_eq!(r.failures.len(), 1);
    let f = &r.failures[0];
    assert_eq!(f.questions, qs[10..20].to_vec());
    assert_eq!(f.attempts, 3);
    assert!(f.errors[0].contains("unknown type"), "{:?}", f.errors);
    assert!(f.errors[1].contains("name says"), "{:?}", f.errors);
    assert!(f.errors[2].contains("expected 10 lines"), "{:?}", f.errors);
    for q in &qs[10..20] {
        assert!(
            !r.labels.contains_key(q),
            "failed batch must stay unlabelled"
        );
    }
    for q in qs[..10].iter().chain(&qs[20..]) {
        assert_eq!(r.labels[q], expected(q));
    }

    // A fatal teacher error stops the run with the teacher named.
    let fatal = KeywordTeacher::new(vec![(1, Fault::Fatal)]);
    let err = block_on(
        Classifier::new(Taxonomy::mmbench_v1(), cfg)
            .unwrap()
            .classify_questions(&fatal, &qs),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("keyword-teacher") && err.contains("401"),
        "{err}"
    );
}

#[test]
fn bad_cases_with_a_type_are_not_sent() {
    let mut cases: Vec<BadCase> = questions(6)
        .into_iter()
        .enumerate()
        .map(|(i, q)| BadCase {
            id: format!("c{i}"),
            question: q,
            choices: vec!["a".into(), "b".into()],
            image: ImageRef::Coco { image_id: i as u64 },
            question_type: (i < 2).then(|| "image_topic".to_string()),
            ..Default::default()
        })
        .collect();
    let teacher = KeywordTeacher::new(vec![]);
    let mut c = Classifier::new(Taxonomy::mmbench_v1(), ClassifierConfig::default()).unwrap();
    let r = block_on(c.classify_bad_cases(&teacher, &mut cases)).unwrap();
    assert_eq!((r.already_typed, r.classified, r.calls), (2, 4, 1));
    let prompt = teacher.prompts.lock().unwrap()[0].clone();
    assert!(!prompt.contains(&cases[0].question) && prompt.contains(&cases[2].question));
    assert_eq!(cases[0].question_type.as_deref(), Some("image_topic"));
    for c in &cases[2..] {
        assert_eq!(c.question_type.as_deref(), Some(expected(&c.question)));
    }
}

#[test]
fn strict_parser() {
    let c = Classifier::new(Taxonomy::mmbench_v1(), ClassifierConfig::default()).unwrap();
    assert_eq!(
        c.parse_reply("1. (5) Object Localization\n\n2. (9) image scene.\n", 2)
            .unwrap(),
        ["object_localization", "image_scene"]
    );
    for bad in [
        "1. (5) Object Localization",                               // count
        "2. (5) Object Localization\n1. (9) Image Scene",           // order
        "1. (19) Object Localization\n2. (9) Image Scene",          // range
        "1. Object Localization\n2. (9) Image Scene",               // no (k)
        "1. (5) Object Localization\n2. (9) Celebrity Recognition", // unknown
    ] {
        assert!(c.parse_reply(bad, 2).is_err(), "{bad}");
    }
    let no_slot = ClassifierConfig {
        template: "classify {questions}".into(),
        ..Default::default()
    };
    assert!(Classifier::new(Taxonomy::mmbench_v1(), no_slot).is_err());
}
