//! Question-type taxonomies as data: the 18 MMBench-derived types used by the released sampler
//! (v1), the 9 SEED-Bench image dimensions (v2), and user-defined taxonomies loaded from JSON.
//!
//! A type is found by its snake_case id, its display name or its 1-based number, so replies of a
//! classifier ("3. (5) Object Localization") and files from other tools resolve to one id.
//!
//! ```
//! use mde_core::taxonomy::Taxonomy;
//! let t = Taxonomy::mmbench_v1();
//! assert_eq!(t.lookup("Object Localization").unwrap().id, "object_localization");
//! assert_eq!(t.lookup("5").unwrap().id, "object_localization");
//! assert_eq!(Taxonomy::seed_bench().by_number(9).unwrap().name, "Text Understanding");
//! ```
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One question type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionType {
    /// Stable snake_case id (what records store).
    pub id: String,
    /// Display name (what prompts and classifier replies use); defaults to the id.
    #[serde(default)]
    pub name: String,
    /// One-sentence definition put into prompts.
    #[serde(default)]
    pub definition: String,
}

/// An ordered list of question types; a type's number is its 1-based position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Taxonomy {
    /// Short name of the taxonomy ("mmbench_v1", "seed_bench", or the file's own name); it is
    /// part of the classification cache key.
    pub name: String,
    pub types: Vec<QuestionType>,
}

const MMBENCH_V1: [(&str, &str, &str); 18] = [
    ("identity_reasoning", "Identity Reasoning",
     "Infer who or what a person or thing is (role, occupation, species, brand) from visual clues such as clothing, tools or surroundings."),
    ("physical_property_reasoning", "Physical Property Reasoning",
     "Reason about physical properties implied by appearance, such as material, weight, hardness, temperature or state of matter."),
    ("attribute_recognition", "Attribute Recognition",
     "Recognise a visible attribute of an object, such as its colour, shape, texture, pattern or material."),
    ("function_reasoning", "Function Reasoning",
     "Infer what an object is used for or what purpose it serves in the scene."),
    ("object_localization", "Object Localization",
     "Tell where an object is in the image, for example which region or side of the picture it occupies."),
    ("attribute_comparison", "Attribute Comparison",
     "Compare an attribute such as size, colour, length or quantity between two or more objects in the image."),
    ("nature_relation", "Nature Relation",
     "Understand relations among living things or natural phenomena shown, such as predator and prey, symbiosis or life cycles."),
    ("future_prediction", "Future Prediction",
     "Predict what is most likely to happen next given the current scene, motion or activity."),
    ("image_scene", "Image Scene",
     "Identify the overall setting or environment of the image, such as a kitchen, a beach or a city street."),
    ("spatial_relationship", "Spatial Relationship",
     "Describe where two objects are relative to each other, such as left of, above, behind or next to."),
    ("image_quality", "Image Quality",
     "Judge technical properties of the picture itself, such as sharpness, blur, noise, brightness or exposure."),
    ("physical_relation", "Physical Relation",
     "Understand physical interactions between objects, such as one supporting, containing, touching or holding another."),
    ("action_recognition", "Action Recognition",
     "Recognise the action or activity that a person, animal or object is performing."),
    ("social_relation", "Social Relation",
     "Infer the social relationship between the people shown, such as family members, friends, colleagues or strangers."),
    ("image_style", "Image Style",
     "Identify the artistic or photographic style of the image, such as a photo, sketch, oil painting or cartoon."),
    ("image_emotion", "Image Emotion",
     "Recognise the mood the image conveys or the emotion expressed by the people or animals in it."),
    ("image_topic", "Image Topic",
     "Identify the main subject or theme that the image as a whole is about."),
    ("knowledge-based_reasoning", "Knowledge-based Reasoning",
     "Answer by combining what is visible with common-sense or world knowledge that the image alone does not show."),
];

const SEED_BENCH: [(&str, &str, &str); 9] = [
    ("scene_understanding", "Scene Understanding",
     "Grasp the global content of the image: the setting, the overall situation and what the picture mainly shows."),
    ("instance_identity", "Instance Identity",
     "Recognise what a particular object or person is, i.e. its category or identity."),
    ("instance_attributes", "Instance Attributes",
     "Recognise attributes of a particular object, such as its colour, shape, material or state."),
    ("instance_location", "Instance Location",
     "Tell where a particular object is located within the image."),
    ("instances_counting", "Instances Counting",
     "Count how many objects of a given kind appear in the image."),
    ("spatial_relation", "Spatial Relation",
     "Describe the relative positions of two or more objects, such as left of, above or in front of."),
    ("instance_interaction", "Instance Interaction",
     "Understand how people or objects interact with each other, including actions and social relations between them."),
    ("visual_reasoning", "Visual Reasoning",
     "Draw conclusions that need reasoning over the visual content together with common sense, beyond plain recognition."),
    ("text_understanding", "Text Understanding",
     "Read and interpret text that appears inside the image, such as signs, labels or captions."),
];

/// Canonical form for lookups: lowercase, whitespace and underscores collapse to one `_`
/// ("Knowledge-based Reasoning" == "knowledge-based_reasoning").
fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut sep = false;
    for c in s.trim().chars() {
        if c.is_whitespace() || c == '_' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('_');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The JSON layouts accepted for user-defined taxonomies.
#[derive(Deserialize)]
#[serde(untagged)]
enum TaxonomyFile {
    Full {
        name: Option<String>,
        types: Vec<QuestionType>,
    },
    Bare(Vec<QuestionType>),
}

impl Taxonomy {
    fn from_table(name: &str, table: &[(&str, &str, &str)]) -> Self {
        let types = table
            .iter()
            .map(|(id, n, d)| QuestionType {
                id: id.to_string(),
                name: n.to_string(),
                definition: d.to_string(),
            })
            .collect();
        Taxonomy {
            name: name.to_string(),
            types,
        }
    }

    /// The 18 types of the released sampler (MMBench leaf abilities minus OCR, celebrity
    /// recognition and structuralized image-text understanding, plus knowledge-based reasoning).
    pub fn mmbench_v1() -> Self {
        Self::from_table("mmbench_v1", &MMBENCH_V1)
    }

    /// The 9 SEED-Bench image dimensions (v2), numbered 1..9 as in SEED-Bench.
    pub fn seed_bench() -> Self {
        Self::from_table("seed_bench", &SEED_BENCH)
    }

    /// A built-in taxonomy by name ("mmbench_v1"/"mmbench"/"v1", "seed_bench"/"seed"/"v2").
    pub fn builtin(name: &str) -> Option<Self> {
        match normalise(name).as_str() {
            "mmbench_v1" | "mmbench" | "v1" => Some(Self::mmbench_v1()),
            "seed_bench" | "seed" | "seedbench" | "v2" => Some(Self::seed_bench()),
            _ => None,
        }
    }

    /// Loads a built-in taxonomy by name, or else a JSON file (see [`Taxonomy::from_json_file`]).
    pub fn load(name_or_path: &str) -> Result<Self> {
        match Self::builtin(name_or_path) {
            Some(t) => Ok(t),
            None => Self::from_json_file(name_or_path),
        }
    }

    /// Loads a user-defined taxonomy: either `{"name": "...", "types": [{"id", "name",
    /// "definition"}, ...]}` or a bare array of types. Without a name the file stem is used.
    /// Ids must be unique and non-empty; a missing name defaults to the id.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file: TaxonomyFile = crate::io::read_json(path).map_err(|e| match e {
            CoreError::Json { path, source } => CoreError::invalid(
                path,
                format!("expected {{\"name\": .., \"types\": [{{\"id\", \"name\", \"definition\"}}]}} or a list of types ({source})"),
            ),
            other => other,
        })?;
        let (name, types) = match file {
            TaxonomyFile::Full { name, types } => (name, types),
            TaxonomyFile::Bare(types) => (None, types),
        };
        let name = name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Self::new(name, types).map_err(|msg| CoreError::invalid(path, msg))
    }

    /// Builds a taxonomy, checking that ids are non-empty and ids and names are unique (also
    /// after normalisation, so lookups are unambiguous). Empty names default to the id.
    pub fn new(
        name: impl Into<String>,
        mut types: Vec<QuestionType>,
    ) -> std::result::Result<Self, String> {
        if types.is_empty() {
            return Err("taxonomy has no types".into());
        }
        let mut seen = std::collections::HashMap::new();
        for (i, t) in types.iter_mut().enumerate() {
            if t.id.trim().is_empty() {
                return Err(format!("type #{} has an empty id", i + 1));
            }
            if t.name.trim().is_empty() {
                t.name = t.id.clone();
            }
            for key in [normalise(&t.id), normalise(&t.name)] {
                if let Some(prev) = seen.insert(key.clone(), i) {
                    if prev != i {
                        return Err(format!(
                            "types #{} and #{} share the id/name {key:?}",
                            prev + 1,
                            i + 1
                        ));
                    }
                }
            }
        }
        Ok(Taxonomy {
            name: name.into(),
            types,
        })
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Exact id match.
    pub fn by_id(&self, id: &str) -> Option<&QuestionType> {
        self.types.iter().find(|t| t.id == id)
    }

    /// Name match, ignoring case and space/underscore differences.
    pub fn by_name(&self, name: &str) -> Option<&QuestionType> {
        let n = normalise(name);
        self.types.iter().find(|t| normalise(&t.name) == n)
    }

    /// 1-based number.
    pub fn by_number(&self, number: usize) -> Option<&QuestionType> {
        number.checked_sub(1).and_then(|i| self.types.get(i))
    }

    /// 1-based number of a type id.
    pub fn number_of(&self, id: &str) -> Option<usize> {
        self.types.iter().position(|t| t.id == id).map(|i| i + 1)
    }

    /// Finds a type by id, name (both normalised) or number given as text.
    pub fn lookup(&self, key: &str) -> Option<&QuestionType> {
        if let Some(t) = self.by_id(key) {
            return Some(t);
        }
        let n = normalise(key);
        if let Some(t) = self
            .types
            .iter()
            .find(|t| normalise(&t.id) == n || normalise(&t.name) == n)
        {
            return Some(t);
        }
        key.trim()
            .parse::<usize>()
            .ok()
            .and_then(|k| self.by_number(k))
    }

    /// Type ids in order.
    pub fn ids(&self) -> Vec<&str> {
        self.types.iter().map(|t| t.id.as_str()).collect()
    }

    /// Type names in order.
    pub fn names(&self) -> Vec<&str> {
        self.types.iter().map(|t| t.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_unique_ids_and_definitions() {
        for t in [Taxonomy::mmbench_v1(), Taxonomy::seed_bench()] {
            let again = Taxonomy::new(t.name.clone(), t.types.clone()).unwrap();
            assert_eq!(again, t);
            assert!(t
                .types
                .iter()
                .all(|q| q.definition.ends_with('.') && q.id == normalise(&q.id)));
        }
        assert_eq!(Taxonomy::mmbench_v1().len(), 18);
        assert_eq!(Taxonomy::seed_bench().len(), 9);
    }

    #[test]
    fn lookups_by_id_name_and_number() {
        let t = Taxonomy::mmbench_v1();
        let kb = t.lookup("knowledge-based reasoning").unwrap();
        assert_eq!(kb.id, "knowledge-based_reasoning");
        assert_eq!(t.lookup(" Image  Style ").unwrap().id, "image_style");
        assert_eq!(t.lookup("IMAGE_STYLE").unwrap().id, "image_style");
        assert_eq!(t.number_of("identity_reasoning"), Some(1));
        assert_eq!(t.by_number(18).unwrap().id, "knowledge-based_reasoning");
        assert!(t.by_number(0).is_none() && t.by_number(19).is_none());
        assert!(t.lookup("ocr").is_none());
        let s = Taxonomy::seed_bench();
        assert_eq!(s.by_number(5).unwrap().id, "instances_counting");
        assert_eq!(Taxonomy::builtin("SEED").unwrap(), s);
    }

    #[test]
    fn user_taxonomy_from_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("world.json");
        std::fs::write(&p, r#"[{"id":"color","name":"Color","definition":"The colour."},{"id":"count","definition":"How many."}]"#).unwrap();
        let t = Taxonomy::from_json_file(&p).unwrap();
        assert_eq!(t.name, "world");
        assert_eq!(t.by_number(2).unwrap().name, "count");
        let p2 = dir.path().join("full.json");
        std::fs::write(&p2, r#"{"name":"w2","types":[{"id":"a","name":"A"}]}"#).unwrap();
        assert_eq!(Taxonomy::load(p2.to_str().unwrap()).unwrap().name, "w2");
        let bad = dir.path().join("dup.json");
        std::fs::write(&bad, r#"[{"id":"a"},{"id":"b","name":"A"}]"#).unwrap();
        let err = Taxonomy::from_json_file(&bad).unwrap_err().to_string();
        assert!(err.contains("dup.json") && err.contains("share"), "{err}");
        let bad2 = dir.path().join("shape.json");
        std::fs::write(&bad2, r#"{"types": 3}"#).unwrap();
        let err = Taxonomy::from_json_file(&bad2).unwrap_err().to_string();
        assert!(
            err.contains("shape.json") && err.contains("expected"),
            "{err}"
        );
    }
}
