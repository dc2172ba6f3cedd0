//! Probes a trained tiny base model: per question type, the accuracy of choosing the answer by
//! the training loss of each choice (true image vs another image) and by the evaluation ranking.
//!
//! ```text
//! cargo run --release -p mde-loop --example probe_base -- <model_dir> <world_dir> [per_type=40]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use mde_core::model::{EvalModel, EvalRequest, ImageInput, PromptStyle};
use mde_models::eval_adapter::MiniGpt4Eval;
use mde_train::batch::{build_batch, LayoutConfig};
use mde_train::data::{RecordKind, TrainRecord};
use mde_train::step::{loss, BatchTensors};
use minigpt4::preprocess::{load_rgb, ImageProcessor};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::{MiniGpt4, ModelPaths};

fn main() -> anyhow::Result<()> {
    minigpt4::runtime::tune_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir = PathBuf::from(args.first().context("model dir")?);
    let world = mde_world::World::load(args.get(1).context("world dir")?)?;
    let per_type: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let dev = Device::Cpu;
    let paths = ModelPaths {
        blip2: model_dir.join("blip2").display().to_string(),
        vicuna: model_dir.join("vicuna").display().to_string(),
        projector: Some(
            model_dir
                .join("minigpt4/projector.safetensors")
                .display()
                .to_string(),
        ),
        ..Default::default()
    };
    let model = MiniGpt4::load(&paths, DType::F32, &dev)?;
    let tok = LlamaTokenizer::from_dir(model_dir.join("vicuna"))?;
    let proc = ImageProcessor::eval(model.vision.cfg.image_size as u32);
    let nq = model.config().qformer.num_query_tokens;
    let items = world.load_aokvqa()?;
    // How much the image tokens differ between images, stage by stage: a collapsed vision path
    // gives the LLM (almost) the same tokens whatever the image.
    {
        let imgs = items
            .iter()
            .take(64)
            .map(|it| load_rgb(world.coco_dir().join(&it.image_path)))
            .collect::<Result<Vec<_>, _>>()?;
        let px = proc.process_batch_eval(&imgs, &dev)?;
        let vit = model.vision.forward(&px)?;
        let qf = model.qformer_features(&px)?;
        let spread = |t: &candle_core::Tensor| -> anyhow::Result<(f32, f32)> {
            // std over images (per position and channel), averaged; and the overall std.
            let across = t.var_keepdim(0)?.sqrt()?.mean_all()?.to_scalar::<f32>()?;
            let all = t.flatten_all()?.var(0)?.sqrt()?.to_scalar::<f32>()?;
            Ok((across, all))
        };
        let (a, b) = spread(&vit)?;
        println!("vit output: std across images {a:.4}, overall {b:.4}");
        let (a, b) = spread(&qf)?;
        println!("projected query tokens: std across images {a:.4}, overall {b:.4}");
    }
    let mut by_type: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for it in &items {
        let v = by_type.entry(it.question_type.clone()).or_default();
        if v.len() < per_type {
            v.push(it.clone());
        }
    }
    let mut eval = MiniGpt4Eval::new(
        MiniGpt4::load(&paths, DType::F32, &dev)?,
        tok.clone(),
        "probe",
    );
    for (t, its) in &by_type {
        let (mut ok_true, mut ok_other, mut ok_eval) = (0, 0, 0);
        let mut ce_true = 0.0f64;
        for (i, it) in its.iter().enumerate() {
            let img = load_rgb(world.coco_dir().join(&it.image_path))?;
            let other = &its[(i + 1) % its.len()];
            let img2 = load_rgb(world.coco_dir().join(&other.image_path))?;
            let scores = |im: &image::RgbImage| -> anyhow::Result<Vec<f32>> {
                let px = proc.process_eval(im, &dev)?.unsqueeze(0)?;
                let qf = model.qformer_features(&px)?;
                let mut out = vec![];
                for c in &it.choices {
                    let r = TrainRecord {
                        image: PathBuf::new(),
                        kind: RecordKind::Qa,
                        question: it.question.clone(),
                        choices: vec![],
                        answer_idx: None,
                        answer: Some(c.clone()),
                        rationale: None,
                    };
                    let s = r.to_sample().map_err(anyhow::Error::msg)?;
                    let b = build_batch(&tok, &[s], "###", LayoutConfig::minigpt4(nq))?;
                    let bt = BatchTensors::new(&b, &dev)?;
                    out.push(loss(&model, &qf, &bt)?.to_scalar::<f32>()?);
                }
                Ok(out)
            };
            let s1 = scores(&img)?;
            let s2 = scores(&img2)?;
            let am = |s: &[f32]| mde_core::model::argmin(s).unwrap_or(0);
            ok_true += usize::from(am(&s1) == it.correct_choice_idx);
            ok_other += usize::from(am(&s2) == it.correct_choice_idx);
            ce_true += s1[it.correct_choice_idx] as f64;
            let bytes = std::fs::read(world.coco_dir().join(&it.image_path))?;
            let req = EvalRequest {
                id: it.question_id.clone(),
                image: ImageInput::Encoded { data: bytes },
                question: it.question.clone(),
                hint: None,
                choices: it.choices.clone(),
                choice_letters: vec![],
                style: PromptStyle::AnswerRank,
            };
            let r = eval.rank(&[req])?;
            if i == 0 {
                println!("  {t}: train-loss scores {s1:?} / eval scores {:?}", r[0]);
            }
            ok_eval += usize::from(am(&r[0]) == it.correct_choice_idx);
        }
        let n = its.len() as f64;
        println!(
            "{t:24} train-loss acc {:.1}% (other image {:.1}%), eval-rank acc {:.1}%, mean CE(correct) {:.3}",
            100.0 * ok_true as f64 / n,
            100.0 * ok_other as f64 / n,
            100.0 * ok_eval as f64 / n,
            ce_true / n
        );
    }
    Ok(())
}
