//! MMBench by likelihood ranking (`Method::Rank`): the runner asks for `McqRank` scores, writes the
//! best option's letter as the prediction, and the unchanged official circular scorer scores it.
//!
//! Two models: a small deterministic test double (runner logic: letters, circular groups, hints)
//! and the tiny MiniGPT-4 fixture (MDE_GOLDEN_DIR) through the real adapter (prompt text, batched
//! two-forward ranking == per-request reference, image-embedding cache).
use anyhow::{Context, Result};
use base64::Engine;
use mde_core::model::{EvalModel, EvalRequest, ModelError, PromptStyle};
use mde_core::records::BenchItem;
use mde_eval::runner::{
    load_items, run_predictions, score_predictions, write_official_predictions, Benchmark,
    ImageLoader, Method, RunConfig,
};
use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval, RankScore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes an MMBench TSV (VLMEvalKit layout) with four circular copies per question: main row
/// `q` holds the base64 image, copy `q + k*1e6` refers to it by index and has its options
/// rotated left by `k`. `images[q % len]` is question q's image; even questions get a hint.
fn write_mmbench(dir: &Path, images: &[Vec<u8>], questions: &[(&str, [&str; 4])]) -> PathBuf {
    let mut lines = vec![
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tl2-category\tsplit"
            .to_string(),
    ];
    for (q, (question, opts)) in questions.iter().enumerate() {
        let hint = if q % 2 == 0 {
            format!("Look at picture {q}.")
        } else {
            String::new()
        };
        for k in 0..4usize {
            let mut o: Vec<&str> = opts.to_vec();
            o.rotate_left(k);
            // The first option of the main row is the right one.
            let ans = (b'A' + o.iter().position(|x| *x == opts[0]).unwrap() as u8) as char;
            let image = if k == 0 {
                b64(&images[q % images.len()])
            } else {
                q.to_string()
            };
            lines.push(format!(
                "{}\t{question}\t{hint}\t{}\t{}\t{}\t{}\t{ans}\tcat{}\t{image}\tperception\tdev",
                q + k * 1_000_000,
                o[0],
                o[1],
                o[2],
                o[3],
                q % 2
            ));
        }
    }
    let path = dir.join("MMBench_DEV_EN.tsv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The circular verdict of every main question, computed from the predictions and the answers:
/// right iff every copy's predicted letter is its answer.
fn expected_verdicts(
    items: &[BenchItem],
    preds: &HashMap<String, mde_core::records::Prediction>,
) -> HashMap<String, bool> {
    let mut v: HashMap<String, bool> = HashMap::new();
    for it in items {
        let main = (it.id.parse::<i64>().unwrap() % 1_000_000).to_string();
        let letters = mde_eval::runner::choice_letters(it);
        let right = preds[&it.id].text == letters[it.answer_idx.unwrap()].to_string();
        *v.entry(main).or_insert(true) &= right;
    }
    v
}

/// Test double: the lowest score goes to the option starting with "right", except that a
/// "fickle" question is answered right only when that option is shown as (A) or (B) (so its
/// circular group fails while its main row may be right).
struct Ranker {
    max_batch: usize,
    seen: Vec<EvalRequest>,
}

impl EvalModel for Ranker {
    fn name(&self) -> String {
        "ranker".into()
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn generate(&mut self, _: &[EvalRequest]) -> Result<Vec<String>, ModelError> {
        Err(ModelError::Backend("this test model only ranks".into()))
    }
    fn rank(&mut self, reqs: &[EvalRequest]) -> Result<Vec<Vec<f32>>, ModelError> {
        assert!(reqs.len() <= self.max_batch);
        self.seen.extend(reqs.iter().cloned());
        Ok(reqs
            .iter()
            .map(|r| {
                let right = r.choices.iter().position(|c| c.starts_with("right"));
                let mut best = right.unwrap_or(0);
                if r.question.contains("fickle") && best > 1 {
                    best = 3 - best;
                }
                (0..r.choices.len())
                    .map(|i| if i == best { 0.25 } else { 1.0 + i as f32 })
                    .collect()
            })
            .collect())
    }
}

#[test]
fn mmbench_rank_predictions_score_through_the_circular_scorer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = |t: &str| {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        v.extend_from_slice(t.as_bytes());
        v.resize(96, b'.');
        v
    };
    let questions = [
        (
            "Which is it?",
            ["right one", "wrong x", "wrong y", "wrong z"],
        ),
        (
            "A fickle question?",
            ["right two", "bad a", "bad b", "bad c"],
        ),
        ("Third?", ["right three", "no 1", "no 2", "no 3"]),
    ];
    let data = write_mmbench(dir.path(), &[img("a"), img("b")], &questions);
    let items = load_items(Benchmark::MMBench, &data, None)?;
    let mut cfg = RunConfig::new(Benchmark::MMBench);
    cfg.method = "rank".parse::<Method>().map_err(anyhow::Error::msg)?;
    let mut model = Ranker {
        max_batch: 5,
        seen: vec![],
    };
    let out = dir.path().join("run");
    let run = run_predictions(
        &mut model,
        &items,
        &out.join("p.jsonl"),
        &cfg,
        &ImageLoader::default(),
    )?;
    assert_eq!(run.predictions.len(), items.len());
    assert_eq!(run.batches, items.len().div_ceil(5));
    for r in &model.seen {
        assert_eq!(r.style, PromptStyle::McqRank);
        let main: usize = r.id.parse::<usize>()? % 1_000_000;
        assert_eq!(r.hint.is_some(), main.is_multiple_of(2), "{}", r.id);
    }
    // Predictions are the chosen option's letter.
    for (p, it) in run.predictions.iter().zip(&items) {
        let idx = p.choice_idx.context("a ranked prediction has a choice")?;
        assert_eq!(
            p.text,
            mde_eval::runner::choice_letters(it)[idx].to_string()
        );
        assert_eq!(Some(idx), mde_core::model::argmin(&p.scores));
    }
    write_official_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    let scored = score_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    let want = expected_verdicts(&items, &run.by_id());
    assert_eq!(scored.verdicts, want);
    // The fickle question fails its circular group, the others pass.
    assert_eq!(want.values().filter(|v| !**v).count(), 1);
    assert!(!want["1"]);
    Ok(())
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

fn close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}");
        for (p, q) in x.iter().zip(y) {
            assert!(
                (p - q).abs() <= 1e-4 * p.abs().max(1.0),
                "{what}: {x:?} vs {y:?}"
            );
        }
    }
}

#[test]
fn tiny_minigpt4_ranks_mmbench_batched_like_the_reference() -> Result<()> {
    let g = golden_dir();
    let dir = tempfile::tempdir()?;
    let images: Vec<Vec<u8>> = ["image.png", "image2.png"]
        .iter()
        .map(|n| g.join(n))
        .filter(|p| p.is_file())
        .map(std::fs::read)
        .collect::<std::io::Result<_>>()?;
    anyhow::ensure!(!images.is_empty(), "no fixture image in {}", g.display());
    let questions = [
        (
            "What shape is red?",
            ["square", "circle", "triangle", "line"],
        ),
        (
            "How many circles are there in the picture?",
            ["one", "two", "three", "four"],
        ),
        ("Background?", ["grey", "blue", "green", "a white wall"]),
    ];
    let data = write_mmbench(dir.path(), &images, &questions);
    let items = load_items(Benchmark::MMBench, &data, None)?;
    let mut cfg = RunConfig::new(Benchmark::MMBench);
    cfg.method = Method::Rank;
    let loader = ImageLoader::default();

    let mut model = load_model(&g, 5).context("loading the tiny fixture model")?;
    let out = dir.path().join("run");
    let run = run_predictions(&mut model, &items, &out.join("p.jsonl"), &cfg, &loader)?;
    assert_eq!(run.predictions.len(), items.len());
    // Circular copies share their image: each distinct image is encoded once.
    let (hits, misses) = model.image_cache_stats();
    let distinct = questions.len().min(images.len());
    assert_eq!(misses as usize, distinct, "hits {hits}");
    assert_eq!((hits + misses) as usize, items.len());

    // The same requests through the per-request reference path (no cache, batch 1).
    let mut reference = load_model(&g, 1)?.with_image_cache_bytes(0);
    let mut reqs = Vec::new();
    for it in &items {
        reqs.push(EvalRequest {
            id: it.id.clone(),
            image: loader.load(it)?,
            question: it.question.clone(),
            hint: it.hint.clone().filter(|h| !h.is_empty()),
            choices: it.choices.clone(),
            choice_letters: mde_eval::runner::choice_letters(it),
            style: PromptStyle::McqRank,
        });
    }
    let want: Vec<Vec<f32>> = reqs
        .iter()
        .map(|r| Ok(reference.rank_per_request(std::slice::from_ref(r))?[0].clone()))
        .collect::<Result<_>>()?;
    let got: Vec<Vec<f32>> = run.predictions.iter().map(|p| p.scores.clone()).collect();
    close(
        &got,
        &want,
        "runner (batched, cached) vs per-request reference",
    );
    // Mixed prompt lengths (hint / no hint) in one batch, and a cleared cache, change nothing.
    model.clear_image_cache();
    close(&model.rank(&reqs)?, &want, "one batch of every request");
    assert_eq!(reference.image_cache_stats().0, 0);

    // `RankScore::Sum` is the mean times the candidate's token count, on both paths.
    let lens: Vec<Vec<usize>> = reqs
        .iter()
        .map(|r| {
            MiniGpt4Eval::candidates_for(r)
                .iter()
                .map(|c| Ok(model.tokenizer.encode(c, false)?.len()))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let want_sum: Vec<Vec<f32>> = want
        .iter()
        .zip(&lens)
        .map(|(w, l)| w.iter().zip(l).map(|(m, n)| m * *n as f32).collect())
        .collect();
    let mut summed = load_model(&g, 5)?.with_rank_score(RankScore::Sum);
    close(&summed.rank(&reqs)?, &want_sum, "sum scores, batched");
    let mut summed_ref = load_model(&g, 1)?.with_rank_score(RankScore::Sum);
    let one: Vec<Vec<f32>> = reqs
        .iter()
        .map(|r| Ok(summed_ref.rank_per_request(std::slice::from_ref(r))?[0].clone()))
        .collect::<Result<_>>()?;
    close(&one, &want_sum, "sum scores, per request");

    // Prompt: the clean ranking prompt with the hint before the question, BOS first; without a
    // hint and with letters A.. it is exactly the SEED/A-OKVQA clean prompt.
    let with_hint = &reqs[0];
    let (p, bos) = model.prompt_for(with_hint);
    let hint = with_hint.hint.as_deref().context("question 0 has a hint")?;
    assert!(bos);
    assert!(
        p.starts_with(&format!(
            "###Human: <Img><ImageHere></Img> {hint} {}\n(A) ",
            with_hint.question
        )) && p.ends_with("\n###Assistant: The answer is"),
        "{p}"
    );
    let no_hint = reqs
        .iter()
        .find(|r| r.hint.is_none())
        .context("a question without hint")?;
    let mut seed = no_hint.clone();
    seed.style = PromptStyle::SeedRank;
    assert_eq!(model.prompt_for(no_hint), model.prompt_for(&seed));

    // The official file is scored by the unchanged circular scorer.
    write_official_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    let scored = score_predictions(Benchmark::MMBench, &data, &out, &items, &run.predictions)?;
    assert_eq!(scored.verdicts, expected_verdicts(&items, &run.by_id()));
    assert_eq!(scored.verdicts.len(), questions.len());
    Ok(())
}
