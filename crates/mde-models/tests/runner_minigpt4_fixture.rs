//! The tiny MiniGPT-4 fixture (MDE_GOLDEN_DIR) driven through the A-OKVQA ranking runner by the
//! real model adapter: predictions are the argmin of the model's mean cross-entropies, batching
//! does not change the scores, the released prompt quirk is really used, and the official
//! prediction file is re-read by the scorer.
use anyhow::{Context, Result};
use mde_core::model::{EvalModel, EvalRequest, ImageInput, PromptStyle};
use mde_core::records::Prediction;
use mde_eval::runner::{
    load_items, run_predictions, score_predictions, write_official_predictions, Benchmark,
    ImageLoader, RunConfig,
};
use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

fn load_model(g: &Path, max_batch: usize) -> Result<MiniGpt4Eval> {
    let cfg: EvalModelConfig = serde_json::from_value(serde_json::json!({
        "blip2": g.join("blip2").display().to_string(),
        "vicuna": g.join("vicuna").display().to_string(),
        "projector": g.join("minigpt4/pretrained_minigpt4.pth").display().to_string(),
        "max_batch": max_batch,
    }))?;
    Ok(MiniGpt4Eval::load(&cfg)?)
}

/// Four A-OKVQA questions over the fixture's images (copied into a COCO layout).
fn write_benchmark(g: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("coco");
    std::fs::create_dir_all(root.join("val2017"))?;
    let imgs: Vec<PathBuf> = ["image.png", "image2.png"]
        .iter()
        .map(|n| g.join(n))
        .filter(|p| p.is_file())
        .collect();
    anyhow::ensure!(!imgs.is_empty(), "no fixture image in {}", g.display());
    let questions = [
        (
            "What shape is red?",
            ["square", "circle", "triangle", "line"],
        ),
        (
            "How many circles are there?",
            ["one", "two", "three", "Four."],
        ),
        (
            "What color is the background?",
            ["grey", "blue", "green", "white"],
        ),
        (
            "Which object is at the top?",
            ["the line", "the square", "the circle", "Nothing"],
        ),
    ];
    let mut qs = Vec::new();
    for (i, (q, choices)) in questions.iter().enumerate() {
        let image_id = 42 + i as u64;
        std::fs::copy(
            &imgs[i % imgs.len()],
            root.join(format!("val2017/{image_id:012}.jpg")),
        )?;
        qs.push(serde_json::json!({
            "split": "val", "image_id": image_id, "question_id": format!("fx{i}"), "question": q,
            "choices": choices, "correct_choice_idx": i % 4, "direct_answers": vec![choices[i % 4]; 10],
            "difficult_direct_answer": false, "rationales": []
        }));
    }
    let data = dir.join("aokvqa_v1p0_val.json");
    std::fs::write(&data, serde_json::to_vec(&qs)?)?;
    Ok((data, root))
}

#[test]
fn tiny_minigpt4_ranks_aokvqa_through_the_runner() -> Result<()> {
    let g = golden_dir();
    let dir = tempfile::tempdir()?;
    let (data, root) = write_benchmark(&g, dir.path())?;
    let items = load_items(Benchmark::Aokvqa, &data, Some(&root))?;
    let images = ImageLoader::new(Some(root.clone()));
    let cfg = RunConfig::new(Benchmark::Aokvqa);

    let mut model = load_model(&g, 3).context("loading the tiny fixture model")?;
    let out = dir.path().join("run");
    let run = run_predictions(
        &mut model,
        &items,
        &out.join("predictions.jsonl"),
        &cfg,
        &images,
    )?;
    assert_eq!(run.predictions.len(), items.len());
    assert_eq!(run.batches, items.len().div_ceil(3));
    for (p, it) in run.predictions.iter().zip(&items) {
        assert_eq!(p.scores.len(), it.choices.len());
        assert!(p.scores.iter().all(|s| s.is_finite() && *s > 0.0), "{p:?}");
        let best = mde_core::model::argmin(&p.scores).unwrap();
        assert_eq!(p.choice_idx, Some(best));
        assert_eq!(
            p.text,
            it.choices[best].to_lowercase().split('.').next().unwrap()
        );
    }

    // Batch size 1 gives the same scores as batches of 3.
    let mut single = load_model(&g, 1)?;
    let run1 = run_predictions(
        &mut single,
        &items,
        &dir.path().join("single.jsonl"),
        &cfg,
        &images,
    )?;
    for (a, b) in run.predictions.iter().zip(&run1.predictions) {
        for (x, y) in a.scores.iter().zip(&b.scores) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }

    // The released prompt (lowercase <img>, no BOS) differs from the clean one: the quirk is used.
    let bytes = std::fs::read(root.join("val2017/000000000042.jpg"))?;
    let mut req = EvalRequest {
        id: "fx0".into(),
        image: ImageInput::Encoded { data: bytes },
        question: items[0].question.clone(),
        hint: None,
        choices: items[0].choices.clone(),
        choice_letters: vec![],
        style: PromptStyle::AokvqaRank {
            released_quirks: true,
        },
    };
    let (released_prompt, bos) = model.prompt_for(&req);
    assert!(
        released_prompt.contains("<img><ImageHere></img>") && !bos,
        "{released_prompt}"
    );
    let released = model.rank(std::slice::from_ref(&req))?;
    for (x, y) in released[0].iter().zip(&run.predictions[0].scores) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0));
    }
    req.style = PromptStyle::AokvqaRank {
        released_quirks: false,
    };
    let clean = model.rank(std::slice::from_ref(&req))?;
    assert!(
        clean[0]
            .iter()
            .zip(&released[0])
            .any(|(a, b)| (a - b).abs() > 1e-6),
        "{clean:?} vs {released:?}"
    );

    // Resume: nothing left to do; the official file is scored by the A-OKVQA scorer.
    let again = run_predictions(
        &mut model,
        &items,
        &out.join("predictions.jsonl"),
        &cfg,
        &images,
    )?;
    assert_eq!((again.new, again.batches), (0, 0));
    write_official_predictions(Benchmark::Aokvqa, &data, &out, &items, &run.predictions)?;
    let scored = score_predictions(Benchmark::Aokvqa, &data, &out, &items, &run.predictions)?;
    let expected_right: Vec<bool> = run
        .predictions
        .iter()
        .zip(&items)
        .map(|(p, it)| p.text == it.choices[it.answer_idx.unwrap()])
        .collect();
    for (p, right) in run.predictions.iter().zip(&expected_right) {
        assert_eq!(scored.verdicts[&p.id], *right);
    }
    let stored: Vec<Prediction> = mde_core::io::read_jsonl(out.join("predictions.jsonl"))?;
    assert_eq!(stored.len(), items.len());
    Ok(())
}

/// The adapter's chat generation reproduces the golden greedy decoding of `expected.json`
/// (prompt text, image preprocessing, batched generation and answer post-processing), read
/// entirely from the fixture.
#[test]
fn adapter_chat_generation_matches_golden_decoding() -> Result<()> {
    let g = golden_dir();
    let expected: serde_json::Value = mde_core::io::read_json(g.join("expected/expected.json"))?;
    let chats = expected["chat"]
        .as_array()
        .context("expected.json has no chat list")?;
    anyhow::ensure!(!chats.is_empty(), "empty chat list");
    let mut model = load_model(&g, chats.len())?;
    let mut reqs = Vec::new();
    let mut want = Vec::new();
    let mut max_news = Vec::new();
    for c in chats {
        let question = c["question"].as_str().context("chat.question")?;
        let image = c["image"].as_str().context("chat.image")?;
        let ids: Vec<u32> = serde_json::from_value(c["generated_ids"].clone())?;
        let max_new = c["generate_kwargs"]["max_new_tokens"]
            .as_u64()
            .context("max_new_tokens")? as usize;
        max_news.push(max_new);
        let req = EvalRequest {
            id: image.into(),
            image: ImageInput::Encoded {
                data: std::fs::read(g.join(image))?,
            },
            question: question.into(),
            hint: None,
            choices: vec![],
            choice_letters: vec![],
            style: PromptStyle::Chat,
        };
        let (prompt, bos) = model.prompt_for(&req);
        assert_eq!(prompt, c["prompt"].as_str().context("chat.prompt")?);
        assert!(bos);
        reqs.push(req);
        want.push(minigpt4::prompt::postprocess_answer_ids(
            &model.tokenizer,
            &ids,
        )?);
    }
    // One at a time with each chat's own length, then as one batch when the lengths agree.
    for ((req, w), &n) in reqs.iter().zip(&want).zip(&max_news) {
        model.chat.max_new_tokens = n;
        assert_eq!(
            &model.generate(std::slice::from_ref(req))?[0],
            w,
            "{}",
            req.id
        );
    }
    if max_news.iter().all(|&n| n == max_news[0]) {
        model.chat.max_new_tokens = max_news[0];
        assert_eq!(model.generate(&reqs)?, want);
    }
    Ok(())
}
