//! Adaptive Bad-case Sampling (ABS) for MLLM-DataEngine: the bad-case pool, question-type
//! classification through a teacher LLM, per-type allocation strategies, an image embedding
//! index for similarity search, and the construction of generation queries from COCO-style
//! captions and boxes.
//!
//! Defaults reproduce the released sampler (see [`SamplerConfig`]); the allocation strategy
//! ([`Strategy`]), a floor weight, per-type quotas and the similarity share are options.
//!
//! ```
//! use mde_abs::{sample, AnnotationDb, BadCasePool, ImageIndex, SampleInputs, SamplerConfig};
//! use mde_core::records::{coco, BadCase, ImageRef, TypeWeights};
//! use mde_core::taxonomy::Taxonomy;
//!
//! // Two candidate images with one object each, and their embeddings.
//! let instances = coco::Instances {
//!     images: (1..=2).map(|id| coco::Image { id, file_name: format!("{id}.jpg"), width: 100, height: 50 }).collect(),
//!     annotations: (1..=2).map(|id| coco::Annotation { image_id: id, category_id: 1, bbox: [10.0, 5.0, 50.0, 25.0], ..Default::default() }).collect(),
//!     categories: vec![coco::Category { id: 1, name: "dog".into(), supercategory: String::new() }],
//! };
//! let db = AnnotationDb::from_coco(&instances, None).unwrap();
//! let index = ImageIndex::from_rows(vec![1, 2], &[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
//!
//! let taxonomy = Taxonomy::mmbench_v1();
//! let cases: Vec<BadCase> = (0..2).map(|i| BadCase {
//!     id: format!("b{i}"), question: "What colour is the dog?".into(),
//!     choices: vec!["brown".into(), "white".into()], answer_idx: 0,
//!     image: ImageRef::Coco { image_id: 1 }, question_type: Some("attribute_recognition".into()),
//!     ..Default::default()
//! }).collect();
//! let (pool, _) = BadCasePool::new(cases, &taxonomy).unwrap();
//! let weights = TypeWeights::from_json(serde_json::json!({"attribute_recognition": 0.4})).unwrap();
//!
//! let inputs = SampleInputs { pool: &pool, weights: &weights, taxonomy: &taxonomy, images: &db,
//!                             index: Some(&index), examples: None };
//! let cfg = SamplerConfig { n_queries: 5, seed: 1, ..Default::default() };
//! let (queries, report) = sample(&inputs, &cfg).unwrap();
//! assert_eq!(queries.len(), 2); // only two images: the sampler stops and says why
//! assert!(report.stop_reason.is_some());
//! assert_eq!(queries[0].boxes[0].bbox, [0.1, 0.1, 0.6, 0.6]);
//! ```

pub mod classify;
pub mod coco;
pub mod error;
pub mod index;
pub mod pool;
pub mod sampler;

pub use classify::{Classifier, ClassifierConfig, ClassifyReport, DEFAULT_TEMPLATE};
pub use coco::{render_box, render_boxes, render_captions, AnnotationDb, ImageRecord};
pub use error::{AbsError, Result};
pub use index::{EncodeExamples, ExampleImages, FirstOf, ImageEncoder, ImageIndex};
pub use pool::{BadCasePool, PoolReport};
pub use sampler::{
    allocate, render_example, sample, write_sample, Allocation, SampleInputs, SampleReport,
    SamplerConfig, Strategy,
};
