//! Records exchanged between the stages of the loop. All are plain serde structs written as JSON
//! or JSONL; optional fields default so that files from other tools load.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Letters used for choices, in order.
pub const CHOICE_LETTERS: [char; 26] = [
    'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S',
    'T', 'U', 'V', 'W', 'X', 'Y', 'Z',
];

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageRef {
    /// A file path, relative to an image root (or absolute).
    Path { path: String },
    /// Base64-encoded image bytes (PNG/JPEG), as in MMBench TSVs.
    Base64 { data: String },
    /// A COCO image id, resolved through an annotation file / image root.
    Coco { image_id: u64 },
}

impl Default for ImageRef {
    fn default() -> Self {
        ImageRef::Path {
            path: String::new(),
        }
    }
}

/// One benchmark question in a benchmark-independent form (the runners' input).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchItem {
    /// Unique id within the benchmark (MMBench index, A-OKVQA question_id, ...).
    pub id: String,
    /// Benchmark name, e.g. "mmbench", "aokvqa", "mme", "seedbench".
    pub benchmark: String,
    pub question: String,
    /// Multiple-choice options in order (A, B, ...); empty for yes/no or open questions.
    #[serde(default)]
    pub choices: Vec<String>,
    /// Index of the correct choice, when multiple choice.
    #[serde(default)]
    pub answer_idx: Option<usize>,
    /// Free-form ground-truth answers (A-OKVQA direct answers, MME "Yes"/"No").
    #[serde(default)]
    pub answers: Vec<String>,
    #[serde(default)]
    pub hint: Option<String>,
    pub image: ImageRef,
    /// Category / dimension as given by the benchmark (MMBench category, SEED dimension name).
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub l2_category: Option<String>,
    /// Question type in the sampler's taxonomy, when known.
    #[serde(default)]
    pub question_type: Option<String>,
    /// Benchmark-specific extras kept verbatim.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A model's answer to one benchmark item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    /// Raw text the model produced (or the chosen candidate for ranking).
    pub text: String,
    /// Chosen choice index for ranking-based evaluation.
    #[serde(default)]
    pub choice_idx: Option<usize>,
    /// Per-choice scores (mean token cross-entropy) for ranking-based evaluation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f32>,
}

/// A wrong answer turned into a seed for data generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadCase {
    pub id: String,
    pub benchmark: String,
    pub question: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub answer_idx: usize,
    /// What the model answered (text), for inspection.
    #[serde(default)]
    pub model_answer: String,
    pub image: ImageRef,
    /// Question type, from the benchmark or from classification.
    #[serde(default)]
    pub question_type: Option<String>,
}

/// Accuracy statistics of one question type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeStat {
    pub total: usize,
    pub wrong: usize,
    /// wrong / total rounded to 3 decimals (the released weight).
    pub error_rate: f64,
}

/// The sampler's input: per-type error statistics. Serialised as
/// `{"weights": {type: error_rate}, "stats": {type: {total, wrong, error_rate}}}`; a bare
/// `{type: weight}` map (the released format) also loads via [`TypeWeights::from_json`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeWeights {
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub stats: BTreeMap<String, TypeStat>,
}

impl TypeWeights {
    /// Builds weights from (type, correct?) outcomes: error rate rounded to 3 decimals.
    pub fn from_outcomes<'a>(outcomes: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut stats: BTreeMap<String, TypeStat> = BTreeMap::new();
        for (t, correct) in outcomes {
            let s = stats.entry(t.to_string()).or_default();
            s.total += 1;
            if !correct {
                s.wrong += 1;
            }
        }
        let mut weights = BTreeMap::new();
        for (t, s) in stats.iter_mut() {
            s.error_rate = crate::io::round_to(s.wrong as f64 / s.total.max(1) as f64, 3);
            weights.insert(t.clone(), s.error_rate);
        }
        TypeWeights { weights, stats }
    }

    /// Parses either this struct's JSON or a bare `{type: weight}` object.
    pub fn from_json(value: serde_json::Value) -> Result<Self, String> {
        if value.get("weights").is_some() {
            return serde_json::from_value(value).map_err(|e| e.to_string());
        }
        let weights: BTreeMap<String, f64> = serde_json::from_value(value).map_err(|e| {
            format!("expected {{\"weights\": {{type: rate}}}} or {{type: rate}}: {e}")
        })?;
        Ok(TypeWeights {
            weights,
            stats: BTreeMap::new(),
        })
    }
}

/// One annotated object of an image, box normalised to 0..1 (x1, y1, x2, y2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectBox {
    pub category: String,
    pub bbox: [f64; 4],
}

/// An in-context example shown to the teacher (a bad case with its ground truth).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InContextExample {
    pub question: String,
    pub choices: Vec<String>,
    pub answer_idx: usize,
    pub question_type: String,
    /// Id of the bad case it came from.
    #[serde(default)]
    pub source_id: String,
}

/// One generation query built by the sampler and answered by a teacher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenQuery {
    /// Stable id, unique within a run (the resume key of generation).
    pub id: String,
    pub question_type: String,
    pub type_definition: String,
    pub image_id: u64,
    /// Path of the image file relative to the image root, when known.
    #[serde(default)]
    pub image_path: Option<String>,
    pub captions: Vec<String>,
    pub boxes: Vec<ObjectBox>,
    pub examples: Vec<InContextExample>,
    /// Whether the image was chosen by similarity (true) or at random (false).
    #[serde(default)]
    pub similar: bool,
}

/// A teacher reply as stored by the generation runner (append-only, keyed by query id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherReplyRecord {
    pub query_id: String,
    pub text: String,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub model: String,
    /// Unix seconds when the reply arrived.
    #[serde(default)]
    pub created: u64,
}

/// Generated Q&A record, GPTVQA v1 layout (the released DataEngine format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GptVqaV1 {
    pub image_id: u64,
    pub raw_instructions: String,
    pub question_type: String,
    pub question: String,
    pub choices: Vec<String>,
    pub correct_choice_idx: usize,
    pub rationales: Vec<String>,
}

/// Generated Q&A record, v2 layout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GptVqaV2 {
    pub instruction: String,
    pub answer: String,
    pub short_answer: String,
    pub options: Vec<String>,
    pub choice_answer: String,
    pub image: String,
    pub qtype: u32,
}

/// COCO `instances_*.json` / `captions_*.json` subset that mde reads and writes.
pub mod coco {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Image {
        pub id: u64,
        pub file_name: String,
        pub width: u32,
        pub height: u32,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Annotation {
        #[serde(default)]
        pub id: u64,
        pub image_id: u64,
        pub category_id: u64,
        /// [x, y, width, height] in pixels.
        pub bbox: [f64; 4],
        #[serde(default)]
        pub area: f64,
        #[serde(default)]
        pub iscrowd: u8,
        /// Extra attributes (synthetic world: colour, size, shape).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Category {
        pub id: u64,
        pub name: String,
        #[serde(default)]
        pub supercategory: String,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Caption {
        #[serde(default)]
        pub id: u64,
        pub image_id: u64,
        pub caption: String,
    }

    /// `instances_*.json`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Instances {
        pub images: Vec<Image>,
        pub annotations: Vec<Annotation>,
        pub categories: Vec<Category>,
    }

    /// `captions_*.json`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct Captions {
        pub images: Vec<Image>,
        pub annotations: Vec<Caption>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_to_three_decimals_and_load_bare_maps() {
        let w = TypeWeights::from_outcomes([("a", true), ("a", false), ("a", false), ("b", true)]);
        assert_eq!(w.weights["a"], 0.667);
        assert_eq!(w.weights["b"], 0.0);
        let bare = TypeWeights::from_json(serde_json::json!({"x": 0.5})).unwrap();
        assert_eq!(bare.weights["x"], 0.5);
        let full = TypeWeights::from_json(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(full, w);
    }
}

/// Failure categories of generated Q&A (the IPO ablation's table, plus user-defined ones).
/// Serialised as snake_case strings; unknown strings become `Custom`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCategory {
    IncorrectBbox,
    Illusion,
    Incorrect3dPerception,
    WrongQuestionType,
    IllogicalQuestion,
    Custom(String),
}

impl FailureCategory {
    /// The built-in categories, in the ablation table's order.
    pub const BUILTIN: [FailureCategory; 5] = [
        FailureCategory::IncorrectBbox,
        FailureCategory::Illusion,
        FailureCategory::Incorrect3dPerception,
        FailureCategory::WrongQuestionType,
        FailureCategory::IllogicalQuestion,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            FailureCategory::IncorrectBbox => "incorrect_bbox",
            FailureCategory::Illusion => "illusion",
            FailureCategory::Incorrect3dPerception => "incorrect_3d_perception",
            FailureCategory::WrongQuestionType => "wrong_question_type",
            FailureCategory::IllogicalQuestion => "illogical_question",
            FailureCategory::Custom(s) => s,
        }
    }

    /// Human-readable label for reports.
    pub fn label(&self) -> String {
        match self {
            FailureCategory::IncorrectBbox => "incorrect bounding box".into(),
            FailureCategory::Illusion => "illusion".into(),
            FailureCategory::Incorrect3dPerception => "incorrect 3D perception".into(),
            FailureCategory::WrongQuestionType => "wrong question type".into(),
            FailureCategory::IllogicalQuestion => "illogical question".into(),
            FailureCategory::Custom(s) => s.replace('_', " "),
        }
    }

    pub fn parse(s: &str) -> Self {
        let norm = s.trim().to_lowercase().replace([' ', '-'], "_");
        match norm.as_str() {
            "incorrect_bbox" | "incorrect_bounding_box" | "bbox" => FailureCategory::IncorrectBbox,
            "illusion" => FailureCategory::Illusion,
            "incorrect_3d_perception" | "3d" => FailureCategory::Incorrect3dPerception,
            "wrong_question_type" | "wrong_type" => FailureCategory::WrongQuestionType,
            "illogical_question" | "illogical" => FailureCategory::IllogicalQuestion,
            _ => FailureCategory::Custom(norm),
        }
    }
}

impl Serialize for FailureCategory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureCategory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(FailureCategory::parse(&s))
    }
}
