//! The sampler embedded in someone else's pipeline: Adaptive Bad-case Sampling from in-memory
//! records with `mde-abs` and `mde-core` alone (no files, no model, no teacher).
//!
//! ```text
//! cargo run -p mde-examples --bin embedded_sampler
//! ```
//! Builds a pool of typed bad cases, per-type error rates, a COCO-style annotation set and an
//! embedding index (your encoder's vectors), samples generation queries with the released ABS
//! (types in proportion to their error rate, half the images by similarity), and prints them as
//! JSONL: what a teacher prompt is then built from.
use anyhow::Result;
use mde_abs::{sample, AnnotationDb, BadCasePool, ImageIndex, SampleInputs, SamplerConfig};
use mde_core::records::{coco, BadCase, ImageRef, TypeWeights};
use mde_core::taxonomy::Taxonomy;

fn main() -> Result<()> {
    // Six candidate images, one object each, with 3-d embeddings from "your" encoder.
    let names = ["dog", "cat", "car"];
    let instances = coco::Instances {
        images: (1..=6)
            .map(|id| coco::Image {
                id,
                file_name: format!("{id:012}.jpg"),
                width: 640,
                height: 480,
            })
            .collect(),
        annotations: (1..=6)
            .map(|id| coco::Annotation {
                image_id: id,
                category_id: (id - 1) % 3 + 1,
                bbox: [40.0 * id as f64, 30.0, 200.0, 150.0],
                ..Default::default()
            })
            .collect(),
        categories: names
            .iter()
            .enumerate()
            .map(|(i, n)| coco::Category {
                id: i as u64 + 1,
                name: n.to_string(),
                supercategory: String::new(),
            })
            .collect(),
    };
    let db = AnnotationDb::from_coco(&instances, None)?;
    let rows: Vec<Vec<f32>> = (1..=6)
        .map(|id: u64| {
            let k = ((id - 1) % 3) as usize;
            (0..3).map(|j| if j == k { 1.0 } else { 0.1 }).collect()
        })
        .collect();
    let index = ImageIndex::from_rows((1..=6).collect(), &rows)?;

    // Bad cases of two question types, as your evaluation found them.
    let taxonomy = Taxonomy::mmbench_v1();
    let case = |i: usize, t: &str, image_id: u64| BadCase {
        id: format!("b{i}"),
        benchmark: "mine".into(),
        question: "What is in the picture?".into(),
        choices: vec!["a dog".into(), "a cat".into()],
        answer_idx: 0,
        image: ImageRef::Coco { image_id },
        question_type: Some(t.into()),
        ..Default::default()
    };
    let cases = vec![
        case(0, "attribute_recognition", 1),
        case(1, "attribute_recognition", 2),
        case(2, "object_localization", 3),
        case(3, "object_localization", 1),
    ];
    let (pool, _) = BadCasePool::new(cases, &taxonomy)?;
    let weights = TypeWeights::from_json(serde_json::json!({
        "attribute_recognition": 0.6,
        "object_localization": 0.2,
    }))
    .map_err(anyhow::Error::msg)?;

    let inputs = SampleInputs {
        pool: &pool,
        weights: &weights,
        taxonomy: &taxonomy,
        images: &db,
        index: Some(&index),
        examples: None,
    };
    let cfg = SamplerConfig {
        n_queries: 4,
        seed: 7,
        min_cases: 1,
        ..Default::default()
    };
    let (queries, report) = sample(&inputs, &cfg)?;
    for q in &queries {
        println!("{}", serde_json::to_string(q)?);
    }
    eprintln!(
        "{} queries; per type {:?}; probabilities {:?}",
        queries.len(),
        report.per_type,
        report.allocation.probabilities
    );
    anyhow::ensure!(!queries.is_empty(), "the sampler built no query");
    Ok(())
}
