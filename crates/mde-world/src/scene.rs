//! The ground truth of one image: background, image quality and the objects with their exact
//! geometry. Everything the questions, captions and the teacher say is derived from a [`Scene`].
use crate::config::WorldConfig;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Object shapes the world can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    pub fn from_name(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Plural used in captions ("two circles", "three crosses").
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
        }
    }
}

/// Object colours: a name and the saturated RGB used to paint it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    pub fn from_name(s: &str) -> Option<Color> {
        Color::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn rgb(self) -> [f32; 3] {
        match self {
            Color::Red => [215.0, 35.0, 35.0],
            Color::Green => [30.0, 160.0, 50.0],
            Color::Blue => [35.0, 70.0, 215.0],
            Color::Yellow => [235.0, 200.0, 20.0],
            Color::Purple => [140.0, 50.0, 180.0],
            Color::Orange => [240.0, 130.0, 20.0],
        }
    }
}

/// Two object sizes; the radius is `small_radius` / `large_radius` of the config (at 64 px).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// Background pattern kinds (the `image_scene` question asks for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundKind {
    Plain,
    Gradient,
    Stripes,
    Checkerboard,
}

impl BackgroundKind {
    pub const ALL: [BackgroundKind; 4] = [
        BackgroundKind::Plain,
        BackgroundKind::Gradient,
        BackgroundKind::Stripes,
        BackgroundKind::Checkerboard,
    ];

    /// The answer text used in questions and captions.
    pub fn phrase(self) -> &'static str {
        match self {
            BackgroundKind::Plain => "a plain color",
            BackgroundKind::Gradient => "a smooth gradient",
            BackgroundKind::Stripes => "stripes",
            BackgroundKind::Checkerboard => "a checkerboard pattern",
        }
    }
}

/// Light background tints (objects are saturated, so every pair contrasts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundTint {
    White,
    Gray,
    Beige,
    LightBlue,
    Mint,
}

impl BackgroundTint {
    pub const ALL: [BackgroundTint; 5] = [
        BackgroundTint::White,
        BackgroundTint::Gray,
        BackgroundTint::Beige,
        BackgroundTint::LightBlue,
        BackgroundTint::Mint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackgroundTint::White => "white",
            BackgroundTint::Gray => "gray",
            BackgroundTint::Beige => "beige",
            BackgroundTint::LightBlue => "light blue",
            BackgroundTint::Mint => "mint green",
        }
    }

    pub fn rgb(self) -> [f32; 3] {
        match self {
            BackgroundTint::White => [238.0, 238.0, 238.0],
            BackgroundTint::Gray => [190.0, 190.0, 190.0],
            BackgroundTint::Beige => [232.0, 220.0, 195.0],
            BackgroundTint::LightBlue => [200.0, 222.0, 240.0],
            BackgroundTint::Mint => [205.0, 235.0, 210.0],
        }
    }
}

/// The background of a scene. `angle` orients gradients and stripes (0 = horizontal variation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Background {
    pub kind: BackgroundKind,
    pub tint: BackgroundTint,
    /// Direction of variation in degrees: 0, 45, 90 or 135.
    pub angle: u32,
    /// Stripe width / checker cell in pixels (at the image's size).
    pub period: u32,
    /// Brightness drop of the dark stripes / checker cells (0 = plain look, 1 = black); the
    /// gradient darkens by `contrast + 0.05` across the image.
    #[serde(default = "default_contrast")]
    pub contrast: f64,
}

/// The background contrast of generator version 2.
pub fn default_contrast() -> f64 {
    0.45
}

/// Image-quality degradation applied after drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Clean,
    Blurry,
    Dark,
    Noisy,
}

impl Quality {
    pub const ALL: [Quality; 4] = [
        Quality::Clean,
        Quality::Blurry,
        Quality::Dark,
        Quality::Noisy,
    ];

    /// The answer text of the `image_quality` question.
    pub fn phrase(self) -> &'static str {
        match self {
            Quality::Clean => "clear and sharp",
            Quality::Blurry => "blurry",
            Quality::Dark => "too dark",
            Quality::Noisy => "grainy with noise",
        }
    }
}

/// One drawn object. `cx, cy, r` are in pixels; `bbox` is the COCO box `[x, y, w, h]` of the exact
/// drawn extent (the shape's outline, before anti-aliasing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub cx: f64,
    pub cy: f64,
    pub r: f64,
    pub bbox: [f64; 4],
}

impl Object {
    /// "red circle": the COCO category name of the object (colour + shape, unique in its image).
    pub fn category(&self) -> String {
        format!("{} {}", self.color.name(), self.shape.name())
    }

    /// "large red circle".
    pub fn full_name(&self) -> String {
        format!(
            "{} {} {}",
            self.size.name(),
            self.color.name(),
            self.shape.name()
        )
    }

    /// Box as (x1, y1, x2, y2) in pixels.
    pub fn xyxy(&self) -> [f64; 4] {
        [
            self.bbox[0],
            self.bbox[1],
            self.bbox[0] + self.bbox[2],
            self.bbox[1] + self.bbox[3],
        ]
    }

    /// Box normalised to 0..1 and rounded to 3 decimals, as in the sampler's image information.
    pub fn norm_box(&self, width: u32, height: u32) -> [f64; 4] {
        let b = self.xyxy();
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        [
            r3(b[0] / width as f64),
            r3(b[1] / height as f64),
            r3(b[2] / width as f64),
            r3(b[3] / height as f64),
        ]
    }
}

/// The complete ground truth of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub image_id: u64,
    /// COCO-style split name without the year ("train", "val").
    pub split: String,
    /// File name inside `{split}2017/`.
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub background: Background,
    pub quality: Quality,
    pub objects: Vec<Object>,
    /// Seed of the per-pixel noise, so the image can be re-rendered from this record alone.
    pub noise_seed: u64,
}

impl Scene {
    /// Path of the image relative to the COCO root, e.g. `train2017/000000000001.jpg`.
    pub fn rel_path(&self) -> String {
        format!("{}2017/{}", self.split, self.file_name)
    }

    /// The object whose category (colour + shape) is `name`.
    pub fn find(&self, name: &str) -> Option<&Object> {
        self.objects.iter().find(|o| o.category() == name)
    }
}

/// Geometry: the polygon of a shape (None for the circle), in pixels.
pub fn polygon(shape: Shape, cx: f64, cy: f64, r: f64) -> Option<Vec<(f64, f64)>> {
    match shape {
        Shape::Circle => None,
        // A square of the same visual weight as the circle: half-side 0.85 r.
        Shape::Square => {
            let h = 0.85 * r;
            Some(vec![
                (cx - h, cy - h),
                (cx + h, cy - h),
                (cx + h, cy + h),
                (cx - h, cy + h),
            ])
        }
        Shape::Triangle => Some(vec![
            (cx, cy - r),
            (cx + r, cy + 0.8 * r),
            (cx - r, cy + 0.8 * r),
        ]),
        Shape::Star => {
            let mut v = Vec::with_capacity(10);
            for i in 0..10 {
                let rad = if i % 2 == 0 { r } else { 0.45 * r };
                let a = -std::f64::consts::FRAC_PI_2 + i as f64 * std::f64::consts::PI / 5.0;
                v.push((cx + rad * a.cos(), cy + rad * a.sin()));
            }
            Some(v)
        }
        Shape::Cross => {
            let t = 0.36 * r;
            Some(vec![
                (cx - t, cy - r),
                (cx + t, cy - r),
                (cx + t, cy - t),
                (cx + r, cy - t),
                (cx + r, cy + t),
                (cx + t, cy + t),
                (cx + t, cy + r),
                (cx - t, cy + r),
                (cx - t, cy + t),
                (cx - r, cy + t),
                (cx - r, cy - t),
                (cx - t, cy - t),
            ])
        }
    }
}

/// Exact COCO bbox `[x, y, w, h]` of a shape's outline.
pub fn shape_bbox(shape: Shape, cx: f64, cy: f64, r: f64) -> [f64; 4] {
    let (x1, y1, x2, y2) = match polygon(shape, cx, cy, r) {
        None => (cx - r, cy - r, cx + r, cy + r),
        Some(p) => p
            .iter()
            .fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |a, &(x, y)| {
                (a.0.min(x), a.1.min(y), a.2.max(x), a.3.max(y))
            }),
    };
    let r4 = |v: f64| (v * 10000.0).round() / 10000.0;
    [r4(x1), r4(y1), r4(x2 - x1), r4(y2 - y1)]
}

/// Constraints a scene must meet (used when a question type needs a particular image).
#[derive(Debug, Clone, Copy, Default)]
pub struct SceneRequest {
    pub quality: Option<Quality>,
    pub background: Option<BackgroundKind>,
    pub min_objects: usize,
}

/// Draws a random scene. Objects never overlap (2 px clearance) and lie fully inside the image;
/// each colour + shape combination occurs at most once, so "the red circle" is unambiguous.
pub fn sample_scene<R: Rng>(
    cfg: &WorldConfig,
    rng: &mut R,
    image_id: u64,
    split: &str,
    req: SceneRequest,
) -> Scene {
    let w = cfg.image_size;
    let h = cfg.image_size;
    let scale = cfg.image_size as f64 / 64.0;
    let kind = req
        .background
        .unwrap_or_else(|| BackgroundKind::ALL[rng.random_range(0..4)]);
    let tint = BackgroundTint::ALL[rng.random_range(0..BackgroundTint::ALL.len())];
    let angle = [0u32, 45, 90, 135][rng.random_range(0..4)];
    // Bands of 5-7 px at 45% contrast survive the blur (two 5-px box passes) and the noise of
    // the quality variants, so the background kind stays visible in every image.
    let period = ((rng.random_range(5..=7) as f64) * scale).round().max(2.0) as u32;
    let quality = req.quality.unwrap_or_else(|| {
        let u: f64 = rng.random();
        let p = &cfg.quality_probs;
        if u < p[0] {
            Quality::Clean
        } else if u < p[0] + p[1] {
            Quality::Blurry
        } else if u < p[0] + p[1] + p[2] {
            Quality::Dark
        } else {
            Quality::Noisy
        }
    });
    let min_n = cfg.min_objects.max(req.min_objects).min(cfg.max_objects);
    let n = rng.random_range(min_n..=cfg.max_objects);
    let mut objects: Vec<Object> = Vec::with_capacity(n);
    let mut attempts = 0;
    while objects.len() < n && attempts < 400 {
        attempts += 1;
        let shape = cfg.shapes[rng.random_range(0..cfg.shapes.len())];
        let color = cfg.colors[rng.random_range(0..cfg.colors.len())];
        if objects
            .iter()
            .any(|o| o.color == color && (cfg.unique_colors || o.shape == shape))
        {
            continue;
        }
        let size = if rng.random_bool(0.5) {
            Size::Small
        } else {
            Size::Large
        };
        let r = match size {
            Size::Small => cfg.small_radius,
            Size::Large => cfg.large_radius,
        } * scale;
        let lo = r + 1.0;
        let hi_x = w as f64 - r - 1.0;
        let hi_y = h as f64 - r - 1.0;
        if hi_x <= lo || hi_y <= lo {
            continue;
        }
        // Centres on a quarter-pixel grid keep the annotations short and exact.
        let cx = (rng.random_range(lo..hi_x) * 4.0).round() / 4.0;
        let cy = (rng.random_range(lo..hi_y) * 4.0).round() / 4.0;
        let clear = objects.iter().all(|o| {
            let d = ((o.cx - cx).powi(2) + (o.cy - cy).powi(2)).sqrt();
            d >= o.r + r + 2.0 * scale
        });
        if !clear {
            continue;
        }
        let bbox = shape_bbox(shape, cx, cy, r);
        objects.push(Object {
            shape,
            color,
            size,
            cx,
            cy,
            r,
            bbox,
        });
    }
    Scene {
        image_id,
        split: split.to_string(),
        file_name: format!("{:012}.{}", image_id, cfg.image_format.extension()),
        width: w,
        height: h,
        background: Background {
            kind,
            tint,
            angle,
            period,
            contrast: cfg.background_contrast,
        },
        quality,
        objects,
        noise_seed: rng.random(),
    }
}
