//! World configuration. Every field has a default (the embedded demo's world), so a TOML/JSON
//! config only needs the fields it changes.
use crate::questions::QType;
use crate::scene::{Color, Shape};
use crate::WorldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Encoding of the COCO-style image files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// Real JPEG files named `{image_id:012}.jpg` (the COCO layout the A-OKVQA tools expect).
    Jpeg,
    /// Lossless PNG files named `{image_id:012}.png`.
    Png,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

/// Everything that determines a world. Two worlds with equal configs are byte-identical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldConfig {
    pub seed: u64,
    /// Side of the square images in pixels (geometry scales with it; 64 is the reference).
    pub image_size: u32,
    pub image_format: ImageFormat,
    /// JPEG quality (1-100) when `image_format` is `jpeg`.
    pub jpeg_quality: u8,
    pub min_objects: usize,
    pub max_objects: usize,
    /// Shapes in use (at least 4: the shape question offers 4 shapes).
    pub shapes: Vec<Shape>,
    /// Colours in use (at least 4: the colour question offers 4 colours).
    pub colors: Vec<Color>,
    /// Object radius of "small" / "large" objects at 64 px.
    pub small_radius: f64,
    pub large_radius: f64,
    /// Probabilities of clean / blurry / dark / noisy images in unconditioned scenes.
    pub quality_probs: [f64; 4],
    /// Question types of the world (taxonomy ids, see [`QType`]).
    pub types: Vec<QType>,
    /// Images of the candidate pool (train2017) besides the base-training images.
    pub pool_images: usize,
    /// Size of each base VQA set (unbalanced and balanced; one question and one image per record).
    pub base_size: usize,
    /// Type mix of the unbalanced base set (normalised; types missing here get 0).
    pub base_type_weights: BTreeMap<String, f64>,
    /// Questions per type of the A-OKVQA-format set (bad-case mining), one image each (val2017).
    pub aokvqa_per_type: usize,
    /// Questions per type of the MMBench-format set (reporting), one image each.
    pub mmbench_per_type: usize,
    /// Fraction of `object_localization` questions that ask "where" (quadrant) instead of "how many".
    pub where_fraction: f64,
    /// Brightness drop of the dark stripes / checker cells (0.45: visible through blur and noise).
    pub background_contrast: f64,
    /// At most one object per colour in an image (default: per colour + shape), so that "the red
    /// object" alone names one object.
    pub unique_colors: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        let mut w = BTreeMap::new();
        // The weak types are deliberately scarce (3% each): the loop must find and fix them.
        for (t, v) in [
            ("attribute_recognition", 0.30),
            ("object_localization", 0.30),
            ("image_scene", 0.17),
            ("image_quality", 0.17),
            ("attribute_comparison", 0.03),
            ("spatial_relationship", 0.03),
        ] {
            w.insert(t.to_string(), v);
        }
        WorldConfig {
            seed: 0,
            image_size: 64,
            image_format: ImageFormat::Jpeg,
            jpeg_quality: 95,
            min_objects: 1,
            max_objects: 5,
            shapes: vec![Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross],
            colors: vec![Color::Red, Color::Green, Color::Blue, Color::Yellow],
            small_radius: 5.0,
            large_radius: 10.0,
            quality_probs: [0.55, 0.15, 0.15, 0.15],
            types: QType::ALL.to_vec(),
            pool_images: 2000,
            base_size: 20000,
            base_type_weights: w,
            aokvqa_per_type: 300,
            mmbench_per_type: 300,
            where_fraction: 0.4,
            background_contrast: crate::scene::default_contrast(),
            unique_colors: false,
        }
    }
}

impl WorldConfig {
    /// A small world for tests and quick demos.
    pub fn tiny(seed: u64) -> Self {
        WorldConfig {
            seed,
            pool_images: 40,
            base_size: 60,
            aokvqa_per_type: 6,
            mmbench_per_type: 5,
            ..Default::default()
        }
    }

    /// Checks the invariants the generators rely on.
    pub fn validate(&self) -> Result<(), WorldError> {
        let bad = |m: String| Err(WorldError::Config(m));
        if self.image_size < 32 || self.image_size > 1024 {
            return bad(format!(
                "image_size must be in 32..=1024, got {}",
                self.image_size
            ));
        }
        if self.shapes.len() < 4 || dedup_len(&self.shapes) != self.shapes.len() {
            return bad(format!(
                "shapes must list at least 4 distinct shapes, got {:?}",
                self.shapes
            ));
        }
        if self.colors.len() < 4 || dedup_len(&self.colors) != self.colors.len() {
            return bad(format!(
                "colors must list at least 4 distinct colours, got {:?}",
                self.colors
            ));
        }
        if self.min_objects < 1 || self.max_objects < self.min_objects || self.max_objects > 8 {
            return bad(format!(
                "need 1 <= min_objects <= max_objects <= 8, got {}..{}",
                self.min_objects, self.max_objects
            ));
        }
        if self.max_objects < 2 {
            return bad("max_objects must be at least 2 (comparison and relation questions need two objects)".into());
        }
        if !(self.small_radius > 0.0
            && self.large_radius > self.small_radius
            && self.large_radius <= 16.0)
        {
            return bad(format!(
                "need 0 < small_radius < large_radius <= 16 (at 64 px), got {} / {}",
                self.small_radius, self.large_radius
            ));
        }
        let s: f64 = self.quality_probs.iter().sum();
        if self.quality_probs.iter().any(|p| *p < 0.0) || (s - 1.0).abs() > 1e-6 {
            return bad(format!(
                "quality_probs must be non-negative and sum to 1, got {:?}",
                self.quality_probs
            ));
        }
        if self.types.is_empty() {
            return bad("types must not be empty".into());
        }
        for k in self.base_type_weights.keys() {
            if QType::from_id(k).is_none() {
                return bad(format!("base_type_weights: unknown question type {k:?}"));
            }
        }
        if self
            .base_type_weights
            .values()
            .any(|v| *v < 0.0 || !v.is_finite())
        {
            return bad("base_type_weights must be finite and non-negative".into());
        }
        if self.base_size > 0
            && self
                .types
                .iter()
                .all(|t| self.base_type_weights.get(t.id()).copied().unwrap_or(0.0) <= 0.0)
        {
            return bad("base_type_weights gives weight 0 to every configured type".into());
        }
        if self.unique_colors && self.max_objects > self.colors.len() {
            return bad(format!(
                "unique_colors needs max_objects <= the number of colours ({}), got {}",
                self.colors.len(),
                self.max_objects
            ));
        }
        if !(0.0..=0.9).contains(&self.background_contrast) {
            return bad(format!(
                "background_contrast must be in 0..=0.9, got {}",
                self.background_contrast
            ));
        }
        if !(0.0..=1.0).contains(&self.where_fraction) {
            return bad(format!(
                "where_fraction must be in 0..=1, got {}",
                self.where_fraction
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad(format!(
                "jpeg_quality must be in 1..=100, got {}",
                self.jpeg_quality
            ));
        }
        if self.mmbench_per_type * self.types.len() >= 1_000_000 {
            return bad("mmbench set too large: main indices must stay below 1,000,000".into());
        }
        Ok(())
    }
}

fn dedup_len<T: Ord + Clone>(v: &[T]) -> usize {
    let mut s = v.to_vec();
    s.sort();
    s.dedup();
    s.len()
}
