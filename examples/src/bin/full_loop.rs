//! One round of the data engine composed by hand from the library crates and the loop's steps
//! (`mde_loop::steps`), without the CLI and without `mde_loop::run::LoopRun`: how a lab embeds
//! the pieces in its own pipeline.
//!
//! ```text
//! cargo run --release -p mde-examples --bin full_loop -- [out_dir]
//! ```
//!
//! world -> tiny base model -> evaluate (mining + report benchmarks) -> classify untyped
//! questions -> mine bad cases -> ABS sample -> teacher generation -> postprocess/validate ->
//! GPTVQA v1 -> LoRA+projector training -> evaluate again. Everything is offline: the synthetic
//! world supplies the images, the benchmarks and a grounded teacher. Sizes are those of
//! `configs/loop-tiny.toml` with twice the training steps, so it runs in seconds; the point is
//! the plumbing, not the accuracy (the before/after numbers are noise at this size).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use mde_abs::{
    AnnotationDb, BadCasePool, EncodeExamples, ExampleImages, FirstOf, SampleInputs, SamplerConfig,
    Strategy,
};
use mde_core::records::{BenchItem, ImageRef, Prediction};
use mde_core::taxonomy::Taxonomy;
use mde_core::teacher::Teacher;
use mde_eval::badcase::{mine_bad_cases, question_type_of};
use mde_eval::runner::{load_items, Benchmark, ImageLoader, Method, RunConfig};
use mde_eval::step::{self, accuracy_by_type, EvalDir, TypeCount};
use mde_gen::{PostprocessConfig, PromptConfig, RunnerConfig, TeacherConfig};
use mde_tiny::base::{pretrained_base, world_vqa_records, BaseSection};

use mde_loop::layout::{GenerateFiles, PostprocessFiles, SampleFiles};
use mde_loop::steps;
use mde_models::encoder::ModelEncoder;
use mde_models::eval_adapter::MiniGpt4Eval;
use mde_tiny::tiny::TinyModelConfig;
use mde_train::data::{load_dataset, DatasetFormat, DatasetSpec, RecordKind};
use mde_train::trainer::{
    ImageMode, LoraSettings, OptimSettings, RunOptions, TrainConfig, TrainDataset, TrainMode,
    Trainer,
};
use mde_world::{BaseVariant, TeacherOptions, World, WorldConfig, WorldTeacher};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::MiniGpt4;

/// The pool images' file names in the world's COCO layout (`train2017/{id:012}.jpg`).
const POOL_PATTERN: &str = "{image_id:012}.jpg";

/// A benchmark as the example evaluates it.
struct Bench {
    name: &'static str,
    kind: Benchmark,
    path: PathBuf,
    images: Option<PathBuf>,
    items: Vec<BenchItem>,
}

/// What one evaluation leaves behind: what mining needs, and per-type accuracy to print.
struct Evaluated {
    predictions: Vec<Prediction>,
    verdicts: HashMap<String, bool>,
    per_type: BTreeMap<String, TypeCount>,
}

fn evaluate(model: &mut MiniGpt4Eval, b: &Bench, dir: &Path) -> Result<Evaluated> {
    let mut rc = RunConfig::new(b.kind);
    // A model this small cannot follow free-form prompts: score the options' likelihoods.
    rc.method = Method::Rank;
    rc.released_quirks = false;
    rc.batch_size = Some(16);
    // The library's evaluate step: predictions.jsonl is append-only and keyed by item id (an
    // interrupted evaluation resumes when this example is re-run), and scoring goes through
    // the official file formats, exactly as the benchmark's own tools.
    let images = ImageLoader::new(b.images.clone());
    let run = EvalDir::new(dir);
    let ev = step::evaluate(model, b.kind, &b.path, &b.items, &rc, &images, &run)?;
    let scored = ev.scored?;
    step::write_scores(&run, b.kind, ev.outcome.predictions.len(), &scored)?;
    Ok(Evaluated {
        per_type: accuracy_by_type(&ev.selected, &scored.verdicts),
        predictions: ev.outcome.predictions,
        verdicts: scored.verdicts,
    })
}

fn print_comparison(name: &str, before: &Evaluated, after: &Evaluated) {
    println!("{name}: per-type accuracy before -> after (items)");
    let total = |e: &Evaluated| {
        e.per_type
            .values()
            .fold(TypeCount::default(), |s, c| TypeCount {
                correct: s.correct + c.correct,
                total: s.total + c.total,
            })
    };
    for (t, b) in &before.per_type {
        let a = after.per_type.get(t).copied().unwrap_or_default();
        println!(
            "  {t:24} {:5.1}% -> {:5.1}%  ({})",
            b.percent(),
            a.percent(),
            b.total
        );
    }
    let (b, a) = (total(before), total(after));
    println!(
        "  {:24} {:5.1}% -> {:5.1}%  ({})",
        "overall",
        b.percent(),
        a.percent(),
        b.total
    );
}

fn main() -> Result<()> {
    minigpt4::runtime::tune_process();
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("runs/full_loop_example"));
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let device = Device::Cpu;
    let t0 = Instant::now();

    // 1. A synthetic world: images with exact annotations, benchmarks in their official
    //    formats, base training data. Generation is idempotent, so re-runs reuse it.
    let world_cfg = WorldConfig {
        seed: 5,
        pool_images: 60,
        base_size: 120,
        aokvqa_per_type: 8,
        mmbench_per_type: 4,
        ..Default::default()
    };
    let world = World::generate(&world_cfg, out.join("world"))?;
    println!(
        "world: {} ({:.1} s)",
        world.dir().display(),
        t0.elapsed().as_secs_f64()
    );

    // 2. The base model: a tiny MiniGPT-4 pretrained from scratch on the world's (deliberately
    //    unbalanced) VQA set, cached by a key of its inputs, in the real checkpoint layouts.
    let tiny = TinyModelConfig {
        vit_layers: 1,
        qformer_layers: 1,
        num_query_tokens: 8,
        llm_layers: 2,
        llm_hidden: 64,
        llm_mlp: 128,
        vocab_size: 600,
        ..Default::default()
    };
    let base_cfg = BaseSection {
        steps: 24,
        batch_size: 8,
        warmup_steps: 2,
        checkpoint_every: 8,
        ..Default::default()
    };
    let (base, pretrain) = pretrained_base(
        &world,
        &tiny,
        0,
        &base_cfg,
        &out.join("cache"),
        &device,
        false,
    )?;
    let paths = base.model_paths();
    let tok = base.tokenizer()?;
    println!(
        "base model: {} parameters, {} pretraining steps, loss {:?} -> {:?} ({:.1} s)",
        base.manifest.num_parameters,
        pretrain.steps,
        pretrain.first_loss,
        pretrain.final_loss,
        t0.elapsed().as_secs_f64()
    );
    let load_eval = |m: MiniGpt4, tok: LlamaTokenizer, name: &str| {
        MiniGpt4Eval::new(m, tok, name).with_max_batch(16)
    };

    // 3. Benchmarks: A-OKVQA-format items give the bad cases and error rates (mining), the
    //    held-out MMBench TSV measures the round (report).
    let coco = world.coco_dir();
    let mut benches = [
        Bench {
            name: "mining (aokvqa)",
            kind: Benchmark::Aokvqa,
            path: world.aokvqa_path(),
            images: Some(coco.clone()),
            items: load_items(Benchmark::Aokvqa, &world.aokvqa_path(), Some(&coco))?,
        },
        Bench {
            name: "report (mmbench)",
            kind: Benchmark::MMBench,
            path: world.mmbench_path(),
            images: None,
            items: load_items(Benchmark::MMBench, &world.mmbench_path(), None)?,
        },
    ];

    // 4. Error rates are per question type, but A-OKVQA items carry none: the teacher labels
    //    each distinct question once (cached in labels.jsonl), as the original does.
    let taxonomy = Taxonomy::load("mmbench_v1")?;
    let teacher: Arc<dyn Teacher> = Arc::new(WorldTeacher::new(
        &world,
        TeacherOptions {
            seed: 3,
            error_rate: 0.2,
            ..Default::default()
        },
    ));
    let mut untyped: Vec<String> = benches
        .iter()
        .flat_map(|b| &b.items)
        .filter(|it| question_type_of(it).is_none())
        .map(|it| it.question.clone())
        .collect();
    untyped.sort();
    untyped.dedup();
    let labels = steps::classify::run(
        teacher.as_ref(),
        taxonomy.clone(),
        Default::default(),
        &untyped,
        &out.join("classify_labels.jsonl"),
        false,
    )?;
    for it in benches.iter_mut().flat_map(|b| &mut b.items) {
        if question_type_of(it).is_none() {
            it.question_type = labels.get(&it.question).cloned();
        }
    }
    println!("classified {} untyped questions", untyped.len());

    // 5. Evaluate the base model on both benchmarks.
    let mut model0 = load_eval(
        MiniGpt4::load(&paths, DType::F32, &device)?,
        tok.clone(),
        "base",
    );
    let before: Vec<Evaluated> = benches
        .iter()
        .enumerate()
        .map(|(i, b)| evaluate(&mut model0, b, &out.join(format!("eval_before_{i}"))))
        .collect::<Result<_>>()?;
    println!(
        "evaluated the base model ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    // 6. Bad cases of the mining benchmark and its per-type error rates: what ABS samples from.
    let mined = mine_bad_cases(
        &benches[0].items,
        &before[0].predictions,
        &before[0].verdicts,
    );
    let (pool, _) = BadCasePool::new(mined.bad_cases.clone(), &taxonomy)?;
    println!(
        "mined {} bad cases of {} scored items",
        mined.bad_cases.len(),
        mined.scored
    );

    // 7. ABS: half of the queries take the image most similar to a bad case's image (embedded
    //    by the model's own Q-Former), half a random pool image; types are drawn by error rate.
    let db = AnnotationDb::load(
        world.instances_path("train"),
        Some(&world.captions_path("train")),
    )?;
    let pool_ids: BTreeSet<u64> = world.pool_image_ids().into_iter().collect();
    let pool_dir = coco.join("train2017");
    let sample_dir = SampleFiles::new(out.join("sample"));
    let queries = {
        let m = &model0.model;
        let enc = ModelEncoder::new(m, pool_dir.clone(), POOL_PATTERN.into(), Some(coco.clone()));
        let images: Vec<(u64, ImageRef)> = pool_ids
            .iter()
            .map(|&id| (id, ImageRef::Coco { image_id: id }))
            .collect();
        let index = steps::index::run(
            &enc,
            &images,
            steps::index::DEFAULT_BATCH,
            &out.join("index/pool.safetensors"),
            false,
        )?;
        // Bad-case images are benchmark (val) images, not in the index: embed them on demand.
        let enc_examples = EncodeExamples(&enc);
        let examples = FirstOf(vec![&index as &dyn ExampleImages, &enc_examples]);
        let scfg = SamplerConfig {
            n_queries: 48,
            seed: 3,
            strategy: Strategy::ErrorRate,
            min_cases: 1,
            // The base-training images of train2017 are not candidates: only the pool is new.
            exclude_images: db
                .ids()
                .into_iter()
                .filter(|id| !pool_ids.contains(id))
                .collect(),
            id_prefix: "r1_q".into(),
            ..Default::default()
        };
        let inputs = SampleInputs {
            pool: &pool,
            weights: &mined.weights,
            taxonomy: &taxonomy,
            images: &db,
            index: Some(&index),
            examples: Some(&examples),
        };
        let (queries, report) = steps::sample::run(&scfg, &inputs, &sample_dir)?;
        println!(
            "ABS: {} queries {:?} ({} by similarity)",
            queries.len(),
            report.per_type,
            report.similar
        );
        queries
    };
    drop(model0);

    // 8. Generation: the runner keeps replies in an append-only JSONL keyed by query id, so a
    //    killed run re-asks only the missing queries (this matters with a paid endpoint).
    let gen_dir = GenerateFiles::new(out.join("generate"));
    let runner = RunnerConfig {
        concurrency: 4,
        progress: false,
        ..Default::default()
    };
    let cfg = steps::generate::Config {
        endpoint: &TeacherConfig::default(),
        runner: &runner,
        prompt: &PromptConfig::default(),
        ctrl_c: false,
    };
    let inputs = steps::generate::Inputs {
        queries: &queries,
        queries_file: &sample_dir.queries(),
        teacher: teacher.clone(),
    };
    let summary = steps::generate::run(&cfg, inputs, &gen_dir)?;
    steps::generate::require_finished(&summary, &gen_dir)?;

    // 9. Parse, validate against the annotations (boxes, objects, types) and filter; the kept
    //    items become GPTVQA v1, the format the released data uses and training reads.
    let post_dir = PostprocessFiles::new(out.join("postprocess"));
    let post = steps::postprocess::run(
        &PostprocessConfig::default(),
        &gen_dir.replies(),
        &queries,
        &post_dir,
    )?;
    let v1_path = post_dir.v1();
    println!(
        "generated {} replies: kept {}, dropped {} {:?}",
        post.stats.replies, post.stats.kept, post.stats.dropped, post.stats.drop_reasons
    );

    // 10. Train LoRA + projector on the generated items, replaying the base data for half of
    //     each batch so the model does not forget what it knew.
    let generated = load_dataset(
        &DatasetSpec {
            name: "generated_r1".into(),
            path: v1_path,
            format: DatasetFormat::GptvqaV1,
            image_root: Some(pool_dir),
            image_pattern: POOL_PATTERN.into(),
            allow_absolute_image_paths: false,
            kind: Some(RecordKind::Qma),
            ratio: None,
        },
        Path::new("."),
    )?;
    let datasets = vec![
        TrainDataset {
            name: "base_vqa".into(),
            ratio: Some(0.5),
            records: world_vqa_records(&world, BaseVariant::Unbalanced, base_cfg.kind)?,
        },
        TrainDataset {
            name: "generated_r1".into(),
            ratio: Some(0.5),
            records: generated,
        },
    ];
    let tcfg = TrainConfig {
        mode: TrainMode::LoraFc,
        lora: LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            init_seed: 3,
            init_adapter: None,
        },
        optim: OptimSettings {
            init_lr: 1e-3,
            min_lr: 1e-4,
            warmup_lr: 1e-5,
            warmup_steps: 2,
            ..Default::default()
        },
        batch_size: 8,
        iters_per_epoch: 12,
        checkpoint_every: 6,
        seed: 4,
        grad_clip: Some(1.0),
        // Eval-mode image preprocessing: the tiny images are not worth random crops.
        image_mode: ImageMode::Eval,
        ..Default::default()
    };
    let model = MiniGpt4::load(&paths, DType::F32, &device)?;
    // Checkpoints in train/ let a re-run resume training mid-way (bit-exact).
    let mut trainer = Trainer::new(model, tok.clone(), datasets, tcfg, &out.join("train"))?;
    let reports = trainer.run(None, RunOptions::default())?;
    println!(
        "trained {} steps: loss {:?} -> {:?} ({:.1} s)",
        trainer.step(),
        reports.first().map(|r| r.loss),
        reports.last().map(|r| r.loss),
        t0.elapsed().as_secs_f64()
    );

    // 11. Evaluate the trained model the same way and compare.
    let mut model1 = load_eval(trainer.into_inference_model()?, tok, "round 1");
    for (i, (b, before)) in benches.iter().zip(&before).enumerate() {
        let after = evaluate(&mut model1, b, &out.join(format!("eval_after_{i}")))?;
        print_comparison(b.name, before, &after);
    }
    println!(
        "done in {:.1} s; files in {}",
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
