//! Question types of the world and their generators.
//!
//! The world uses six ids of the v1 taxonomy (REFERENCE §2), each with templates a tiny model
//! can learn (spatial questions are deliberately coarse, see LOOP_FEASIBILITY lesson 1):
//!
//! | type | templates | answers |
//! |---|---|---|
//! | `attribute_recognition` | "What color is the circle?" / "What shape is the red object?" | 4 colours / 4 shapes |
//! | `object_localization` | "How many shapes are there in the image?" / "In which part of the image is the red circle?" | counts / quadrants (object fully inside one) |
//! | `attribute_comparison` | "Which is larger, the red circle or the blue square?" | A / B / same size / neither |
//! | `spatial_relationship` | "Is the red circle on the left or on the right of the blue square?" (gap >= 1/8 image) | left / right / same place / absent |
//! | `image_quality` | "How would you describe the quality of this image?" | clear / blurry / too dark / noisy |
//! | `image_scene` | "What does the background of the image look like?" | plain / gradient / stripes / checkerboard |
//!
//! Every question has four choices and exactly one is correct w.r.t. the [`Scene`].
use crate::config::WorldConfig;
use crate::scene::{Object, Quality, Scene, Size};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The question types of the world (ids of the v1 taxonomy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QType {
    #[serde(rename = "attribute_recognition")]
    AttributeRecognition,
    #[serde(rename = "object_localization")]
    ObjectLocalization,
    #[serde(rename = "attribute_comparison")]
    AttributeComparison,
    #[serde(rename = "spatial_relationship")]
    SpatialRelationship,
    #[serde(rename = "image_quality")]
    ImageQuality,
    #[serde(rename = "image_scene")]
    ImageScene,
}

impl QType {
    pub const ALL: [QType; 6] = [
        QType::AttributeRecognition,
        QType::ObjectLocalization,
        QType::AttributeComparison,
        QType::SpatialRelationship,
        QType::ImageQuality,
        QType::ImageScene,
    ];

    /// Taxonomy id (snake_case).
    pub fn id(self) -> &'static str {
        match self {
            QType::AttributeRecognition => "attribute_recognition",
            QType::ObjectLocalization => "object_localization",
            QType::AttributeComparison => "attribute_comparison",
            QType::SpatialRelationship => "spatial_relationship",
            QType::ImageQuality => "image_quality",
            QType::ImageScene => "image_scene",
        }
    }

    pub fn from_id(s: &str) -> Option<QType> {
        QType::ALL.into_iter().find(|t| t.id() == s)
    }

    /// One-sentence definition (what the type asks about), as put into prompts.
    pub fn definition(self) -> &'static str {
        match self {
            QType::AttributeRecognition => "Recognise an attribute of a single object, such as its color or shape.",
            QType::ObjectLocalization => {
                "Find objects in the image: how many there are, or in which part of the image an object is."
            }
            QType::AttributeComparison => "Compare an attribute, such as the size, of two objects in the image.",
            QType::SpatialRelationship => "Tell how two objects are placed relative to each other in the image.",
            QType::ImageQuality => "Judge the technical quality of the image, such as blur, darkness or noise.",
            QType::ImageScene => "Describe the overall scene of the image, such as its background.",
        }
    }

    /// MMBench-style L2 category of the type.
    pub fn l2_category(self) -> &'static str {
        match self {
            QType::AttributeRecognition | QType::ObjectLocalization => {
                "fine-grained_perception (instance-level)"
            }
            QType::AttributeComparison | QType::SpatialRelationship => {
                "fine-grained_perception (cross-instance)"
            }
            QType::ImageQuality | QType::ImageScene => "coarse_perception",
        }
    }
}

/// Which template produced a question (drives the explanation and the independent checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    ColorOfShape,
    ShapeOfColor,
    CountAll,
    Quadrant,
    Larger,
    LeftRight,
    Quality,
    Background,
}

/// A generated 4-choice question with its ground-truth answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub qtype: QType,
    pub template: Template,
    pub question: String,
    pub choices: Vec<String>,
    pub answer_idx: usize,
    /// Indices into `scene.objects` of the objects the question is about.
    pub objects: Vec<usize>,
}

impl Question {
    pub fn answer(&self) -> &str {
        &self.choices[self.answer_idx]
    }

    /// A one-to-two sentence explanation derived from the ground truth. `cite` renders an object
    /// mention; [`plain_mention`] gives "the red circle", the teacher appends the normalised box.
    pub fn explanation(&self, scene: &Scene, cite: &dyn Fn(&Object) -> String) -> String {
        let o = |k: usize| &scene.objects[self.objects[k]];
        match self.template {
            Template::ColorOfShape => {
                format!("The {} is {}, which is the color that shows in the image.", strip_the(&cite(o(0))), o(0).color.name())
            }
            Template::ShapeOfColor => {
                format!("Looking at {}, its outline has the form of a {}.", cite(o(0)), o(0).shape.name())
            }
            Template::CountAll => {
                let names: Vec<String> = scene.objects.iter().map(|x| format!("a {}", strip_the(&cite(x)))).collect();
                format!(
                    "The image shows {} {}: {}.",
                    scene.objects.len(),
                    if scene.objects.len() == 1 { "shape" } else { "shapes" },
                    join_list(&names)
                )
            }
            Template::Quadrant => format!(
                "{} lies entirely in the {} part of the image.",
                capitalise(&cite(o(0))),
                quadrant_of(o(0), scene.width, scene.height).unwrap_or("middle")
            ),
            Template::Larger => {
                let (a, b) = (o(0), o(1));
                if a.size == b.size {
                    format!("{} and {} are both {}, so they are the same size.", capitalise(&cite(a)), cite(b), a.size.name())
                } else {
                    let larger = if a.size == Size::Large { a } else { b };
                    format!(
                        "{} is {} and {} is {}, so {} is larger.",
                        capitalise(&cite(a)),
                        a.size.name(),
                        cite(b),
                        b.size.name(),
                        plain_mention(larger)
                    )
                }
            }
            Template::LeftRight => {
                let (a, b) = (o(0), o(1));
                let side = if a.xyxy()[2] <= b.xyxy()[0] { "left" } else { "right" };
                format!("{} is clearly on the {} of {}, with open space between the two.", capitalise(&cite(a)), side, cite(b))
            }
            Template::Quality => match scene.quality {
                Quality::Clean => "The edges of the shapes are crisp and the lighting is even, so the picture is clear and sharp.".into(),
                Quality::Blurry => "The edges of all the shapes are smeared and soft, so the picture is blurry.".into(),
                Quality::Dark => "The whole picture is very dim and the colors are hard to see, so it is too dark.".into(),
                Quality::Noisy => "Random speckles cover the whole picture, so it looks grainy with noise.".into(),
            },
            Template::Background => format!(
                "Behind the shapes the background shows {} in {} tones.",
                scene.background.kind.phrase(),
                scene.background.tint.name()
            ),
        }
    }
}

/// "the red circle".
pub fn plain_mention(o: &Object) -> String {
    format!("the {}", o.category())
}

fn strip_the(s: &str) -> &str {
    s.strip_prefix("the ").unwrap_or(s)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// "a, b and c".
pub fn join_list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Quadrant names, answer texts of the "where" template.
pub const QUADRANTS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];

/// The quadrant an object lies in entirely (1 px clearance from the centre lines), if any.
pub fn quadrant_of(o: &Object, width: u32, height: u32) -> Option<&'static str> {
    let b = o.xyxy();
    let m = (width as f64 / 64.0).max(1.0);
    let (mx, my) = (width as f64 / 2.0, height as f64 / 2.0);
    let left = b[2] <= mx - m;
    let right = b[0] >= mx + m;
    let top = b[3] <= my - m;
    let bottom = b[1] >= my + m;
    match (left, right, top, bottom) {
        (true, _, true, _) => Some("top left"),
        (_, true, true, _) => Some("top right"),
        (true, _, _, true) => Some("bottom left"),
        (_, true, _, true) => Some("bottom right"),
        _ => None,
    }
}

/// Minimum horizontal gap between two boxes for a left/right question (1/8 of the width).
pub fn left_right_gap(width: u32) -> f64 {
    width as f64 / 8.0
}

/// Answer texts of the left/right template.
pub const LEFT_RIGHT_CHOICES: [&str; 4] = [
    "on the left",
    "on the right",
    "in the same place",
    "it is not in the picture",
];
/// Answer texts of the size template besides the two objects.
pub const SAME_SIZE: &str = "they are the same size";
pub const NEITHER: &str = "neither of them";

/// Puts `correct` and `others` in random order; returns the choices and the correct index.
fn shuffle_choices<R: Rng>(
    rng: &mut R,
    correct: String,
    others: Vec<String>,
) -> (Vec<String>, usize) {
    let mut all: Vec<(bool, String)> = std::iter::once((true, correct))
        .chain(others.into_iter().map(|o| (false, o)))
        .collect();
    all.shuffle(rng);
    let idx = all
        .iter()
        .position(|(c, _)| *c)
        .expect("correct choice present");
    (all.into_iter().map(|(_, s)| s).collect(), idx)
}

fn pick_distinct<R: Rng, T: Clone + PartialEq>(
    rng: &mut R,
    pool: &[T],
    exclude: &T,
    n: usize,
) -> Vec<T> {
    let mut cands: Vec<T> = pool.iter().filter(|x| *x != exclude).cloned().collect();
    cands.shuffle(rng);
    cands.truncate(n);
    cands
}

/// Asks a question of `qtype` about `scene`, or `None` when the scene cannot support one.
pub fn ask<R: Rng>(
    cfg: &WorldConfig,
    scene: &Scene,
    qtype: QType,
    rng: &mut R,
) -> Option<Question> {
    match qtype {
        QType::AttributeRecognition => {
            if rng.random_bool(0.5) {
                ask_color(cfg, scene, rng).or_else(|| ask_shape(cfg, scene, rng))
            } else {
                ask_shape(cfg, scene, rng).or_else(|| ask_color(cfg, scene, rng))
            }
        }
        QType::ObjectLocalization => {
            if rng.random_bool(cfg.where_fraction) {
                ask_quadrant(scene, rng).or_else(|| ask_count(cfg, scene, rng))
            } else {
                ask_count(cfg, scene, rng)
            }
        }
        QType::AttributeComparison => ask_larger(scene, rng),
        QType::SpatialRelationship => ask_left_right(scene, rng),
        QType::ImageQuality => {
            let correct = scene.quality.phrase().to_string();
            let others = Quality::ALL
                .iter()
                .filter(|q| **q != scene.quality)
                .map(|q| q.phrase().to_string())
                .collect();
            let (choices, answer_idx) = shuffle_choices(rng, correct, others);
            Some(Question {
                qtype,
                template: Template::Quality,
                question: "How would you describe the quality of this image?".into(),
                choices,
                answer_idx,
                objects: vec![],
            })
        }
        QType::ImageScene => {
            let k = scene.background.kind;
            let others = crate::scene::BackgroundKind::ALL
                .iter()
                .filter(|b| **b != k)
                .map(|b| b.phrase().to_string())
                .collect();
            let (choices, answer_idx) = shuffle_choices(rng, k.phrase().to_string(), others);
            Some(Question {
                qtype,
                template: Template::Background,
                question: "What does the background of the image look like?".into(),
                choices,
                answer_idx,
                objects: vec![],
            })
        }
    }
}

fn ask_color<R: Rng>(cfg: &WorldConfig, scene: &Scene, rng: &mut R) -> Option<Question> {
    let cands: Vec<usize> = (0..scene.objects.len())
        .filter(|&i| {
            scene
                .objects
                .iter()
                .filter(|o| o.shape == scene.objects[i].shape)
                .count()
                == 1
        })
        .collect();
    let &i = cands.choose_one(rng)?;
    let o = &scene.objects[i];
    let others = pick_distinct(rng, &cfg.colors, &o.color, 3)
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let (choices, answer_idx) = shuffle_choices(rng, o.color.name().to_string(), others);
    Some(Question {
        qtype: QType::AttributeRecognition,
        template: Template::ColorOfShape,
        question: format!("What color is the {}?", o.shape.name()),
        choices,
        answer_idx,
        objects: vec![i],
    })
}

fn ask_shape<R: Rng>(cfg: &WorldConfig, scene: &Scene, rng: &mut R) -> Option<Question> {
    let cands: Vec<usize> = (0..scene.objects.len())
        .filter(|&i| {
            scene
                .objects
                .iter()
                .filter(|o| o.color == scene.objects[i].color)
                .count()
                == 1
        })
        .collect();
    let &i = cands.choose_one(rng)?;
    let o = &scene.objects[i];
    let others = pick_distinct(rng, &cfg.shapes, &o.shape, 3)
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    let (choices, answer_idx) = shuffle_choices(rng, o.shape.name().to_string(), others);
    Some(Question {
        qtype: QType::AttributeRecognition,
        template: Template::ShapeOfColor,
        question: format!("What shape is the {} object?", o.color.name()),
        choices,
        answer_idx,
        objects: vec![i],
    })
}

/// Answer candidates of the counting template: 1..=max(max_objects, 4).
pub fn count_candidates(cfg: &WorldConfig) -> Vec<usize> {
    (1..=cfg.max_objects.max(4)).collect()
}

fn ask_count<R: Rng>(cfg: &WorldConfig, scene: &Scene, rng: &mut R) -> Option<Question> {
    let n = scene.objects.len();
    if n == 0 {
        return None;
    }
    let others = pick_distinct(rng, &count_candidates(cfg), &n, 3)
        .iter()
        .map(|c| c.to_string())
        .collect();
    let (choices, answer_idx) = shuffle_choices(rng, n.to_string(), others);
    Some(Question {
        qtype: QType::ObjectLocalization,
        template: Template::CountAll,
        question: "How many shapes are there in the image?".into(),
        choices,
        answer_idx,
        objects: (0..n).collect(),
    })
}

fn ask_quadrant<R: Rng>(scene: &Scene, rng: &mut R) -> Option<Question> {
    let cands: Vec<(usize, &str)> = scene
        .objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| quadrant_of(o, scene.width, scene.height).map(|q| (i, q)))
        .collect();
    let &(i, q) = cands.choose_one(rng)?;
    let others = QUADRANTS
        .iter()
        .filter(|x| **x != q)
        .map(|x| x.to_string())
        .collect();
    let (choices, answer_idx) = shuffle_choices(rng, q.to_string(), others);
    Some(Question {
        qtype: QType::ObjectLocalization,
        template: Template::Quadrant,
        question: format!(
            "In which part of the image is the {}?",
            scene.objects[i].category()
        ),
        choices,
        answer_idx,
        objects: vec![i],
    })
}

fn ask_larger<R: Rng>(scene: &Scene, rng: &mut R) -> Option<Question> {
    let n = scene.objects.len();
    let mut same = vec![];
    let mut diff = vec![];
    for a in 0..n {
        for b in 0..n {
            if a != b {
                if scene.objects[a].size == scene.objects[b].size {
                    same.push((a, b));
                } else {
                    diff.push((a, b));
                }
            }
        }
    }
    // Outcomes A larger / B larger / same size are equally likely when the image allows:
    // a different-size pair in random order gives each of the first two with equal chance.
    let pool = match (same.is_empty(), diff.is_empty()) {
        (true, true) => return None,
        (false, true) => &same,
        (true, false) => &diff,
        (false, false) => {
            if rng.random_bool(1.0 / 3.0) {
                &same
            } else {
                &diff
            }
        }
    };
    let &(a, b) = pool.choose_one(rng)?;
    let (oa, ob) = (&scene.objects[a], &scene.objects[b]);
    let correct = if oa.size == ob.size {
        SAME_SIZE.to_string()
    } else if oa.size == Size::Large {
        plain_mention(oa)
    } else {
        plain_mention(ob)
    };
    let others: Vec<String> = [
        plain_mention(oa),
        plain_mention(ob),
        SAME_SIZE.to_string(),
        NEITHER.to_string(),
    ]
    .into_iter()
    .filter(|c| *c != correct)
    .collect();
    let (choices, answer_idx) = shuffle_choices(rng, correct, others);
    Some(Question {
        qtype: QType::AttributeComparison,
        template: Template::Larger,
        question: format!(
            "Which is larger, the {} or the {}?",
            oa.category(),
            ob.category()
        ),
        choices,
        answer_idx,
        objects: vec![a, b],
    })
}

fn ask_left_right<R: Rng>(scene: &Scene, rng: &mut R) -> Option<Question> {
    let gap = left_right_gap(scene.width);
    let n = scene.objects.len();
    let mut pairs = vec![];
    for a in 0..n {
        for b in 0..n {
            let (ba, bb) = (scene.objects[a].xyxy(), scene.objects[b].xyxy());
            if a != b && (ba[2] + gap <= bb[0] || bb[2] + gap <= ba[0]) {
                pairs.push((a, b));
            }
        }
    }
    let &(a, b) = pairs.choose_one(rng)?;
    let (oa, ob) = (&scene.objects[a], &scene.objects[b]);
    let correct = if oa.xyxy()[2] <= ob.xyxy()[0] {
        LEFT_RIGHT_CHOICES[0]
    } else {
        LEFT_RIGHT_CHOICES[1]
    };
    let others = LEFT_RIGHT_CHOICES
        .iter()
        .filter(|c| **c != correct)
        .map(|c| c.to_string())
        .collect();
    let (choices, answer_idx) = shuffle_choices(rng, correct.to_string(), others);
    Some(Question {
        qtype: QType::SpatialRelationship,
        template: Template::LeftRight,
        question: format!(
            "Is the {} on the left or on the right of the {}?",
            oa.category(),
            ob.category()
        ),
        choices,
        answer_idx,
        objects: vec![a, b],
    })
}

/// Classifies a question by the world's templates (exact for the world's own questions).
pub fn classify_question(text: &str) -> Option<QType> {
    let t = text.to_lowercase();
    if t.contains("what color is") || t.contains("what colour is") || t.contains("what shape is") {
        Some(QType::AttributeRecognition)
    } else if t.contains("how many") || t.contains("which part of the image") {
        Some(QType::ObjectLocalization)
    } else if t.contains("larger") || t.contains("smaller") || t.contains("bigger") {
        Some(QType::AttributeComparison)
    } else if t.contains("on the left or on the right")
        || t.contains("left of")
        || t.contains("right of")
    {
        Some(QType::SpatialRelationship)
    } else if t.contains("quality") || t.contains("blurry") {
        Some(QType::ImageQuality)
    } else if t.contains("background") || t.contains("scene") {
        Some(QType::ImageScene)
    } else {
        None
    }
}

/// `choose` for slices without importing `IndexedRandom` at every call site.
trait ChooseOne<T> {
    fn choose_one<R: Rng>(&self, rng: &mut R) -> Option<&T>;
}

impl<T> ChooseOne<T> for Vec<T> {
    fn choose_one<R: Rng>(&self, rng: &mut R) -> Option<&T> {
        if self.is_empty() {
            None
        } else {
            Some(&self[rng.random_range(0..self.len())])
        }
    }
}
