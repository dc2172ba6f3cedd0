//! Runner bookkeeping: predictions for generated benchmarks, batching, resume after an
//! interruption (no redo, no duplicate), official-format files re-read by the scorers, and bad
//! cases / type weights from the scorers' verdicts.
//!
//! The model here is a small deterministic test double: it "knows" the answer when the option text
//! starts with "right" and the question does not contain "tricky". It tests the runner, not a model.
use anyhow::Result;
use mde_core::model::{EvalModel, EvalRequest, ImageInput, ModelError, PromptStyle};
use mde_core::records::{BadCase, Prediction, TypeWeights};
use mde_eval::badcase::{mine_bad_cases, write_mined};
use mde_eval::runner::{
    load_items, run_predictions, score_predictions, write_official_predictions, Benchmark,
    ImageLoader, RunConfig,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Deterministic test double with call accounting and an optional failure point.
#[derive(Default)]
struct Oracle {
    max_batch: usize,
    /// Fail the call that would bring the number of answered items above this.
    fail_after_items: Option<usize>,
    answered: usize,
    calls: usize,
    seen: Vec<String>,
    styles: HashSet<String>,
    /// Answer MMBench with free text instead of "L. text" for questions containing "wordy".
    requests: Vec<EvalRequest>,
}

impl Oracle {
    fn new(max_batch: usize) -> Self {
        Oracle {
            max_batch,
            ..Default::default()
        }
    }

    fn pick(r: &EvalRequest) -> usize {
        let right = r
            .choices
            .iter()
            .position(|c| c.starts_with("right"))
            .unwrap_or(0);
        if r.question.contains("tricky") {
            (right + 1) % r.choices.len()
        } else {
            right
        }
    }

    fn account(&mut self, reqs: &[EvalRequest]) -> Result<(), ModelError> {
        assert!(
            !reqs.is_empty() && reqs.len() <= self.max_batch,
            "batch of {} (max {})",
            reqs.len(),
            self.max_batch
        );
        if let Some(limit) = self.fail_after_items {
            if self.answered + reqs.len() > limit {
                return Err(ModelError::Backend("simulated crash".into()));
            }
        }
        for r in reqs {
            r.image.validate().map_err(|m| ModelError::InvalidInput {
                id: r.id.clone(),
                msg: m,
            })?;
            assert!(matches!(r.image, ImageInput::Encoded { .. }));
            self.seen.push(r.id.clone());
            self.styles.insert(format!("{:?}", r.style));
            self.requests.push(r.clone());
        }
        self.calls += 1;
        self.answered += reqs.len();
        Ok(())
    }
}

impl EvalModel for Oracle {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn generate(&mut self, reqs: &[EvalRequest]) -> Result<Vec<String>, ModelError> {
        self.account(reqs)?;
        Ok(reqs
            .iter()
            .map(|r| {
                if r.choices.is_empty() {
                    // Yes/no: answer yes when the question says so, with a trailing newline the
                    // official file format must not see.
                    return if r.question.contains("say-yes") {
                        "Yes\nindeed".into()
                    } else {
                        "No".into()
                    };
                }
                let i = Self::pick(r);
                if r.question.contains("wordy") {
                    format!("I believe it is {}", r.choices[i])
                } else {
                    format!("{}. {}###Human: ignored", r.letter(i), r.choices[i])
                }
            })
            .collect())
    }
    fn rank(&mut self, reqs: &[EvalRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.account(reqs)?;
        Ok(reqs
            .iter()
            .map(|r| {
                let best = Self::pick(r);
                (0..r.choices.len())
                    .map(|i| if i == best { 0.5 } else { 2.0 + i as f32 })
                    .collect()
            })
            .collect())
    }
}

/// A PNG-like payload per image (long enough that its base64 is not taken for an index
/// reference by the MMBench loader); the test double never decodes it.
fn image_bytes(tag: &str) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(tag.as_bytes());
    v.resize(96, b'.');
    v
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes an MMBench TSV (VLMEvalKit layout) with circular copies; returns (path, main questions
/// and whether the oracle gets each group right).
/// (main index, answered right by the oracle, category) of each main question.
type Mains = Vec<(i64, bool, String)>;

fn write_mmbench(dir: &Path) -> Result<(std::path::PathBuf, Mains)> {
    let mut lines = vec![
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tl2-category\tsplit"
            .to_string(),
    ];
    let mut mains = Vec::new();
    let cats = ["counting", "color", "counting", "position", "color"];
    for q in 0..5i64 {
        let question = match q {
            1 => "What is tricky here?".to_string(),
            3 => "Describe the wordy scene".to_string(),
            _ => format!("Question number {q}?"),
        };
        let hint = if q % 2 == 0 {
            format!("hint {q}")
        } else {
            String::new()
        };
        let opts = vec![
            format!("right answer {q}"),
            format!("wrong a{q}"),
            format!("wrong b{q}"),
            format!("wrong c{q}"),
        ];
        let rot = (q as usize) % 4; // main question's correct letter position
        let mut base = opts.clone();
        base.rotate_right(rot);
        for k in 0..4usize {
            let mut o = base.clone();
            o.rotate_left(k);
            let idx = q + (k as i64) * 1_000_000;
            let ans = (b'A' + o.iter().position(|x| x.starts_with("right")).unwrap() as u8) as char;
            let image = if k == 0 {
                b64(&image_bytes(&format!("mm{q}")))
            } else {
                q.to_string()
            };
            lines.push(format!(
                "{idx}\t{question}\t{hint}\t{}\t{}\t{}\t{}\t{ans}\t{}\t{image}\tperception\tdev",
                o[0], o[1], o[2], o[3], cats[q as usize]
            ));
        }
        mains.push((
            q,
            !question.contains("tricky"),
            cats[q as usize].to_string(),
        ));
    }
    let path = dir.join("MMBench_DEV_EN.tsv");
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok((path, mains))
}

#[test]
fn mmbench_generation_scoring_and_bad_cases() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (data, mains) = write_mmbench(dir.path())?;
    let items = load_items(Benchmark::MMBench, &data, None)?;
    assert_eq!(items.len(), mains.len() * 4);
    let out = dir.path().join("run");
    let mut model = Oracle::new(3);
    let mut cfg = RunConfig::new(Benchmark::MMBench);
    cfg.batch_size = Some(8); // the model's max_batch (3) wins
    let run = run_predictions(
        &mut model,
        &items,
        &out.join("predictions.jsonl"),
        &cfg,
        &ImageLoader::new(None),
    )?;
    assert_eq!(run.new, items.len());
    assert_eq!(run.batches, items.len().div_ceil(3));
    assert_eq!(
        model.styles,
        HashSet::from([format!("{:?}", PromptStyle::MMBench)])
    );
    // Hints reach the model only when present; the empty hint is NaN in the TSV.
    let r0 = model.requests.iter().find(|r| r.id == "0").unwrap();
    assert_eq!(r0.hint.as_deref(), Some("hint 0"));
    assert!(model
        .requests
        .iter()
        .find(|r| r.id == "1")
        .unwrap()
        .hint
        .is_none());
    // OpenCompass post-processing: "L. text###..." gives the letter; free text stays text.
    for p in &run.predictions {
        let wordy = items
            .iter()
            .any(|i| i.id == p.id && i.question.contains("wordy"));
        if wordy {
            // The released character-set strip of "</Img>" eats the leading "I".
            assert!(p.text.starts_with("believe it is right answer"), "{p:?}");
            assert_eq!(p.choice_idx, None);
        } else {
            assert_eq!(p.text.len(), 1, "{p:?}");
            assert!(p.choice_idx.is_some());
        }
    }

    let files =
        write_official_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    assert_eq!(files, vec![out.join("predictions.tsv")]);
    let head = std::fs::read_to_string(&files[0])?;
    assert!(
        head.starts_with("\"index\"\t\"question\"\t\"hint\"\t\"A\""),
        "{}",
        &head[..80]
    );
    assert!(!head.lines().next().unwrap().contains("\"image\""));
    let scored = score_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    for (q, right, _) in &mains {
        assert_eq!(
            scored.verdicts.get(&q.to_string()),
            Some(right),
            "group {q}"
        );
    }
    assert_eq!(scored.verdicts.len(), mains.len());

    let mined = mine_bad_cases(&items, &run.predictions, &scored.verdicts);
    let wrong: Vec<&(i64, bool, String)> = mains.iter().filter(|m| !m.1).collect();
    assert_eq!(mined.bad_cases.len(), wrong.len());
    for (bc, m) in mined.bad_cases.iter().zip(&wrong) {
        assert_eq!(bc.id, m.0.to_string());
        assert_eq!(bc.question_type.as_deref(), Some(m.2.as_str()));
        assert!(bc.choices[bc.answer_idx].starts_with("right"), "{bc:?}");
        assert!(bc.model_answer.contains("wrong"), "{bc:?}");
    }
    let outcomes: Vec<(&str, bool)> = mains.iter().map(|m| (m.2.as_str(), m.1)).collect();
    assert_eq!(mined.weights, TypeWeights::from_outcomes(outcomes));
    let (bc_path, w_path) = write_mined(&out, &mined)?;
    let back: Vec<BadCase> = mde_core::io::read_jsonl(&bc_path)?;
    assert_eq!(back, mined.bad_cases);
    assert!(w_path.is_file());
    Ok(())
}

/// Writes an A-OKVQA val file and its COCO images; returns (data path, image root).
fn write_aokvqa(dir: &Path, n: usize) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let root = dir.join("coco");
    std::fs::create_dir_all(root.join("val2017"))?;
    let mut qs = Vec::new();
    for i in 0..n {
        let image_id = 1000 + i as u64;
        std::fs::write(
            root.join(format!("val2017/{image_id:012}.jpg")),
            image_bytes(&format!("a{i}")),
        )?;
        let correct = i % 4;
        let mut choices: Vec<String> = (0..4).map(|k| format!("wrong {i}.{k}")).collect();
        choices[correct] = format!("right {i}");
        let q = if i % 3 == 1 {
            format!("tricky question {i}?")
        } else {
            format!("question {i}?")
        };
        qs.push(serde_json::json!({
            "split": "val", "image_id": image_id, "question_id": format!("q{i}"), "question": q,
            "choices": choices, "correct_choice_idx": correct,
            "direct_answers": vec![format!("right {i}"); 10], "difficult_direct_answer": i == 5,
            "rationales": ["r1", "r2", "r3"]
        }));
    }
    let data = dir.join("aokvqa_v1p0_val.json");
    std::fs::write(&data, serde_json::to_vec(&qs)?)?;
    Ok((data, root))
}

#[test]
fn aokvqa_ranking_resumes_without_redo_or_duplicates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let n = 11;
    let (data, root) = write_aokvqa(dir.path(), n)?;
    let items = load_items(Benchmark::Aokvqa, &data, Some(&root))?;
    let store = dir.path().join("run/predictions.jsonl");
    let images = ImageLoader::new(Some(root.clone()));
    let cfg = RunConfig::new(Benchmark::Aokvqa);

    // First run crashes in the third batch (batches of 2: 4 items saved).
    let mut m1 = Oracle {
        fail_after_items: Some(5),
        ..Oracle::new(2)
    };
    let err = run_predictions(&mut m1, &items, &store, &cfg, &images).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert!(
        err.to_string().contains("q4"),
        "error names the batch's first item: {err}"
    );
    assert_eq!(m1.seen.len(), 4);
    let saved: Vec<Prediction> = mde_core::io::read_jsonl(&store)?;
    assert_eq!(saved.len(), 4);

    // A torn line left by a kill mid-write is dropped on resume.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&store)?;
        f.write_all(b"{\"id\":\"q4\",\"text\":\"ha")?;
    }

    let mut m2 = Oracle::new(3);
    let run = run_predictions(&mut m2, &items, &store, &cfg, &images)?;
    assert_eq!(run.resumed, 4);
    assert_eq!(run.new, n - 4);
    assert_eq!(m2.seen.len(), n - 4, "nothing is asked twice");
    assert!(m1.seen.iter().all(|id| !m2.seen.contains(id)));
    assert_eq!(
        m2.styles,
        HashSet::from([format!(
            "{:?}",
            PromptStyle::AokvqaRank {
                released_quirks: true
            }
        )])
    );
    let all: Vec<Prediction> = mde_core::io::read_jsonl(&store)?;
    assert_eq!(all.len(), n, "no duplicate lines");
    assert_eq!(all.iter().map(|p| &p.id).collect::<HashSet<_>>().len(), n);
    assert_eq!(
        run.predictions
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>()
    );

    // A third run has nothing to do.
    let mut m3 = Oracle::new(3);
    let again = run_predictions(&mut m3, &items, &store, &cfg, &images)?;
    assert_eq!((again.new, m3.calls), (0, 0));

    for p in &run.predictions {
        let it = items.iter().find(|i| i.id == p.id).unwrap();
        let idx = p.choice_idx.unwrap();
        assert_eq!(p.scores.len(), 4);
        // Released post-processing: lowercase, cut at the first ".".
        assert_eq!(
            p.text,
            it.choices[idx].to_lowercase().split('.').next().unwrap()
        );
    }

    let out = dir.path().join("run");
    let files =
        write_official_predictions(Benchmark::Aokvqa, &data, &out, &items, &run.predictions)?;
    assert_eq!(files, vec![out.join("predictions_val.json")]);
    let scored = score_predictions(Benchmark::Aokvqa, &data, &out, &items, &run.predictions)?;
    let expect_right: Vec<bool> = (0..n).map(|i| i % 3 != 1).collect();
    for (i, right) in expect_right.iter().enumerate() {
        assert_eq!(scored.verdicts[&format!("q{i}")], *right, "q{i}");
    }
    let mc = scored.json["MC"].as_f64().unwrap();
    let n_right = expect_right.iter().filter(|r| **r).count();
    assert!(
        (mc - n_right as f64 / n as f64 * 100.0).abs() < 1e-9,
        "MC {mc}"
    );
    // DA skips the one difficult question.
    let da = scored.json["DA"].as_f64().unwrap();
    let da_right = (0..n).filter(|&i| i != 5 && expect_right[i]).count();
    assert!(
        (da - da_right as f64 / (n - 1) as f64 * 100.0).abs() < 1e-9,
        "DA {da}"
    );

    // A-OKVQA carries no question type: bad cases without type, no weights.
    let mined = mine_bad_cases(&items, &run.predictions, &scored.verdicts);
    assert_eq!(mined.bad_cases.len(), n - n_right);
    assert!(mined.bad_cases.iter().all(|b| b.question_type.is_none()));
    assert!(mined.weights.weights.is_empty());
    Ok(())
}

#[test]
fn limit_and_missing_images_are_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (data, root) = write_aokvqa(dir.path(), 6)?;
    let items = load_items(Benchmark::Aokvqa, &data, Some(&root))?;
    let mut cfg = RunConfig::new(Benchmark::Aokvqa);
    cfg.limit = Some(3);
    let mut m = Oracle::new(4);
    let store = dir.path().join("p.jsonl");
    let run = run_predictions(
        &mut m,
        &items,
        &store,
        &cfg,
        &ImageLoader::new(Some(root.clone())),
    )?;
    assert_eq!(run.predictions.len(), 3);
    // Limited runs are scored on the evaluated items only.
    let out = dir.path().join("o");
    write_official_predictions(
        Benchmark::Aokvqa,
        &data,
        &out,
        &items[..3],
        &run.predictions,
    )?;
    let scored = score_predictions(
        Benchmark::Aokvqa,
        &data,
        &out,
        &items[..3],
        &run.predictions,
    )?;
    assert_eq!(scored.json["questions"], 3);

    std::fs::remove_file(root.join("val2017/000000001004.jpg"))?;
    cfg.limit = None;
    let err = run_predictions(
        &mut Oracle::new(4),
        &items,
        &store,
        &cfg,
        &ImageLoader::new(Some(root)),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("q4") && msg.contains("000000001004.jpg"),
        "{msg}"
    );
    // An image reference escaping the root is refused.
    let mut evil = items[0].clone();
    evil.id = "evil".into();
    evil.image = mde_core::records::ImageRef::Path {
        path: "../../etc/passwd".into(),
    };
    let err = ImageLoader::new(Some(dir.path().join("coco")))
        .load(&evil)
        .unwrap_err()
        .to_string();
    assert!(err.contains("evil") && err.contains("escapes"), "{err}");
    // The blind loader never touches the files: even the missing and the escaping references
    // get the same uniform image.
    let blank = ImageLoader::blank();
    let a = blank.load(&evil)?;
    let b = blank.load(&items[0])?;
    assert_eq!(a, b);
    a.validate().map_err(anyhow::Error::msg)?;
    match a {
        mde_core::model::ImageInput::Rgb { data, .. } => {
            assert!(data.chunks(3).all(|px| px == mde_eval::runner::BLANK_RGB))
        }
        other => panic!("expected raw pixels, got {other:?}"),
    }
    Ok(())
}

#[test]
fn mme_generation_writes_official_results_and_scores_all_tasks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tmpl = dir.path().join("questions");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&tmpl)?;
    let mut expected: HashMap<String, bool> = HashMap::new();
    for (t, task) in mde_eval::mme::all_tasks().enumerate() {
        std::fs::create_dir_all(images.join(task))?;
        let mut text = String::new();
        for img in 0..2 {
            let name = format!("{task}_{img}.jpg");
            std::fs::write(images.join(task).join(&name), image_bytes(&name))?;
            for (k, gt) in ["Yes", "No"].iter().enumerate() {
                // The oracle says yes exactly for "say-yes" questions; make some of them wrong.
                let say_yes = (t + img + k) % 3 != 0;
                let q = format!(
                    "Is this {task} {img}/{k} {}? Please answer yes or no.",
                    if say_yes { "say-yes" } else { "plain" }
                );
                text.push_str(&format!("{name}\t{q}\t{gt}\n"));
                let line = img * 2 + k + 1;
                expected.insert(format!("{task}/{line}"), (*gt == "Yes") == say_yes);
            }
        }
        std::fs::write(tmpl.join(format!("{task}.txt")), text)?;
    }
    let items = load_items(Benchmark::Mme, &tmpl, Some(&images))?;
    assert_eq!(items.len(), expected.len());
    let out = dir.path().join("run");
    let mut m = Oracle::new(5);
    let run = run_predictions(
        &mut m,
        &items,
        &out.join("predictions.jsonl"),
        &RunConfig::new(Benchmark::Mme),
        &ImageLoader::new(Some(images)),
    )?;
    assert_eq!(m.styles, HashSet::from([format!("{:?}", PromptStyle::Mme)]));
    let files = write_official_predictions(Benchmark::Mme, &tmpl, &out, &items, &run.predictions)?;
    assert!(files.contains(&out.join("results/OCR.txt")));
    let ocr = std::fs::read_to_string(out.join("results/OCR.txt"))?;
    assert_eq!(ocr.lines().count(), 4);
    assert!(ocr.lines().all(|l| l.split('\t').count() == 4), "{ocr}");
    let scored = score_predictions(Benchmark::Mme, &tmpl, &out, &items, &run.predictions)?;
    assert_eq!(scored.verdicts, expected);
    assert!(scored.json["official"]["perception_total"].is_number());
    assert!(
        scored.json["vlmevalkit"]["score"].is_object(),
        "{}",
        scored.json["vlmevalkit"]
    );
    let mined = mine_bad_cases(&items, &run.predictions, &scored.verdicts);
    assert_eq!(
        mined.bad_cases.len(),
        expected.values().filter(|v| !**v).count()
    );
    assert_eq!(mined.weights.weights.len(), 14);
    Ok(())
}

#[test]
fn seedbench_ranking_writes_leaderboard_jsonl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut qs = Vec::new();
    for i in 0..6 {
        std::fs::write(
            dir.path().join(format!("img{i}.jpg")),
            image_bytes(&format!("s{i}")),
        )?;
        let correct = (i * 3) % 4;
        let mut c: Vec<String> = (0..4).map(|k| format!("opt {k}")).collect();
        c[correct] = "right one".into();
        let letter = ["A", "B", "C", "D"][correct];
        let question = if i == 2 { "a tricky one" } else { "which?" };
        qs.push(serde_json::json!({
            "answer": letter, "choice_a": c[0], "choice_b": c[1], "choice_c": c[2], "choice_d": c[3],
            "data_id": format!("img{i}.jpg"), "data_type": "image",
            "question": question,
            "question_id": format!("{}", 100 + i), "question_type_id": 1 + (i % 2)
        }));
    }
    let data = dir.path().join("SEED-Bench.json");
    std::fs::write(
        &data,
        serde_json::to_vec(&serde_json::json!({
            "questions": qs, "question_type": {"Scene Understanding": 1, "Instance Identity": 2}
        }))?,
    )?;
    let items = load_items(Benchmark::SeedBench, &data, None)?;
    let out = dir.path().join("run");
    let run = run_predictions(
        &mut Oracle::new(4),
        &items,
        &out.join("predictions.jsonl.store"),
        &RunConfig::new(Benchmark::SeedBench),
        &ImageLoader::new(Some(dir.path().to_path_buf())),
    )?;
    write_official_predictions(Benchmark::SeedBench, &data, &out, &items, &run.predictions)?;
    let lines = mde_eval::seedbench::read_predictions(&out.join("predictions.jsonl"))?;
    assert_eq!(lines.len(), 6);
    assert!(lines
        .iter()
        .all(|l| ["A", "B", "C", "D"].contains(&l.prediction.as_str())));
    let scored = score_predictions(Benchmark::SeedBench, &data, &out, &items, &run.predictions)?;
    for i in 0..6 {
        assert_eq!(scored.verdicts[&format!("{}", 100 + i)], i != 2);
    }
    let mined = mine_bad_cases(&items, &run.predictions, &scored.verdicts);
    assert_eq!(mined.bad_cases.len(), 1);
    assert_eq!(
        mined.bad_cases[0].question_type.as_deref(),
        Some("Scene Understanding")
    );
    assert_eq!(mined.weights.weights["Scene Understanding"], 0.333);
    assert_eq!(mined.weights.weights["Instance Identity"], 0.0);
    Ok(())
}
