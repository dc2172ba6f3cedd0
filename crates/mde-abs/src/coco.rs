//! Image information for generation queries, read from official COCO `instances_*.json` and
//! `captions_*.json` files.
//!
//! The real `instances_train2017.json` is ~450 MB, most of it `segmentation` polygons that the
//! sampler never uses. The loader streams the file through a buffered reader and deserialises each
//! annotation into a lean struct without a `segmentation` field, so serde skips the polygons
//! token by token without allocating them; peak memory is the kept boxes, not the file.
use crate::error::{AbsError, Result};
use mde_core::records::{coco, ObjectBox};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// What the sampler knows about one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageRecord {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// (category id, [x, y, w, h] in pixels), in file order.
    pub objects: Vec<(u64, [f32; 4])>,
    /// All captions, in file order.
    pub captions: Vec<String>,
}

/// Per-image captions and boxes plus the category names.
#[derive(Debug, Clone, Default)]
pub struct AnnotationDb {
    images: HashMap<u64, ImageRecord>,
    categories: HashMap<u64, String>,
}

#[derive(Deserialize)]
struct LeanImage {
    id: u64,
    #[serde(default)]
    file_name: String,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

/// An annotation without `segmentation`, `area`, ...: unknown fields are skipped by serde.
#[derive(Deserialize)]
struct LeanAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f32; 4],
}

#[derive(Deserialize)]
struct LeanInstances {
    images: Vec<LeanImage>,
    annotations: Vec<LeanAnnotation>,
    categories: Vec<coco::Category>,
}

#[derive(Deserialize)]
struct LeanCaption {
    image_id: u64,
    caption: String,
}

#[derive(Deserialize)]
struct LeanCaptions {
    #[serde(default)]
    images: Vec<LeanImage>,
    annotations: Vec<LeanCaption>,
}

fn open_json<T: for<'de> Deserialize<'de>>(path: &Path, expected: &str) -> Result<T> {
    let file = File::open(path).map_err(|e| mde_core::CoreError::io(path, e))?;
    // A large buffer keeps the per-byte reader overhead low on a 450 MB file.
    let reader = BufReader::with_capacity(1 << 20, file);
    serde_json::from_reader(reader)
        .map_err(|e| AbsError::invalid(path, format!("expected {expected} ({e})")))
}

impl AnnotationDb {
    /// Loads an instances file and optionally a captions file.
    pub fn load(instances: impl AsRef<Path>, captions: Option<&Path>) -> Result<Self> {
        let mut db = Self::load_instances(instances)?;
        if let Some(c) = captions {
            db.add_captions_file(c)?;
        }
        Ok(db)
    }

    /// Loads a COCO `instances_*.json` (images, annotations, categories), skipping segmentations.
    pub fn load_instances(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inst: LeanInstances = open_json(
            path,
            "a COCO instances file with images, annotations and categories",
        )?;
        let mut db = AnnotationDb::default();
        for c in inst.categories {
            db.categories.insert(c.id, c.name);
        }
        for im in inst.images {
            db.add_image(path, im)?;
        }
        for (i, a) in inst.annotations.into_iter().enumerate() {
            if !db.categories.contains_key(&a.category_id) {
                return Err(AbsError::invalid(
                    path,
                    format!(
                        "annotations[{i}]: category_id {} is not in categories",
                        a.category_id
                    ),
                ));
            }
            let Some(img) = db.images.get_mut(&a.image_id) else {
                return Err(AbsError::invalid(
                    path,
                    format!("annotations[{i}]: image_id {} is not in images", a.image_id),
                ));
            };
            img.objects.push((a.category_id, a.bbox));
        }
        Ok(db)
    }

    fn add_image(&mut self, path: &Path, im: LeanImage) -> Result<()> {
        if let Some(existing) = self.images.get_mut(&im.id) {
            // Captions and instances files list the same images: fill what is missing.
            if existing.file_name.is_empty() {
                existing.file_name = im.file_name;
            }
            if existing.width == 0 || existing.height == 0 {
                existing.width = im.width;
                existing.height = im.height;
            }
            return Ok(());
        }
        if im.width == 0 || im.height == 0 {
            return Err(AbsError::invalid(
                path,
                format!("image {}: width and height must be positive", im.id),
            ));
        }
        self.images.insert(
            im.id,
            ImageRecord {
                id: im.id,
                file_name: im.file_name,
                width: im.width,
                height: im.height,
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Adds the captions of a COCO `captions_*.json`. Captions of images absent from the
    /// instances file are an error (the two files should describe the same split).
    pub fn add_captions_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let caps: LeanCaptions = open_json(
            path,
            "a COCO captions file with annotations [{image_id, caption}]",
        )?;
        for (i, c) in caps.annotations.into_iter().enumerate() {
            let Some(img) = self.images.get_mut(&c.image_id) else {
                return Err(AbsError::invalid(
                    path,
                    format!(
                        "annotations[{i}]: image_id {} is not in the instances file",
                        c.image_id
                    ),
                ));
            };
            img.captions.push(c.caption.trim().to_string());
        }
        // Only to complete file names for images whose instance entry lacked one.
        for im in caps.images {
            if self.images.contains_key(&im.id) {
                self.add_image(path, im)?;
            }
        }
        Ok(())
    }

    /// Builds the database from in-memory COCO structures (e.g. the synthetic world's).
    pub fn from_coco(
        instances: &coco::Instances,
        captions: Option<&coco::Captions>,
    ) -> Result<Self> {
        let mut db = AnnotationDb::default();
        let here = Path::new("<instances>");
        for c in &instances.categories {
            db.categories.insert(c.id, c.name.clone());
        }
        for im in &instances.images {
            db.add_image(
                here,
                LeanImage {
                    id: im.id,
                    file_name: im.file_name.clone(),
                    width: im.width,
                    height: im.height,
                },
            )?;
        }
        for (i, a) in instances.annotations.iter().enumerate() {
            if !db.categories.contains_key(&a.category_id) {
                return Err(AbsError::invalid(
                    here,
                    format!("annotations[{i}]: unknown category_id {}", a.category_id),
                ));
            }
            let Some(img) = db.images.get_mut(&a.image_id) else {
                return Err(AbsError::invalid(
                    here,
                    format!("annotations[{i}]: unknown image_id {}", a.image_id),
                ));
            };
            img.objects.push((a.category_id, a.bbox.map(|v| v as f32)));
        }
        if let Some(caps) = captions {
            for (i, c) in caps.annotations.iter().enumerate() {
                let Some(img) = db.images.get_mut(&c.image_id) else {
                    return Err(AbsError::invalid(
                        "<captions>",
                        format!("annotations[{i}]: unknown image_id {}", c.image_id),
                    ));
                };
                img.captions.push(c.caption.trim().to_string());
            }
        }
        Ok(db)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn image(&self, id: u64) -> Option<&ImageRecord> {
        self.images.get(&id)
    }

    /// All image ids, sorted (a deterministic order for seeded sampling).
    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.images.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn category_name(&self, id: u64) -> Option<&str> {
        self.categories.get(&id).map(|s| s.as_str())
    }

    /// Number of annotated objects of an image (0 for unknown images).
    pub fn object_count(&self, id: u64) -> usize {
        self.images.get(&id).map_or(0, |r| r.objects.len())
    }

    /// The image's objects with boxes as (x1, y1, x2, y2) normalised by width/height and rounded
    /// to 3 decimals, as the released sampler gives them to the teacher.
    pub fn boxes(&self, id: u64) -> Vec<ObjectBox> {
        let Some(r) = self.images.get(&id) else {
            return vec![];
        };
        let (w, h) = (r.width as f64, r.height as f64);
        r.objects
            .iter()
            .map(|(cat, b)| {
                let [x, y, bw, bh] = b.map(|v| v as f64);
                ObjectBox {
                    category: self.categories.get(cat).cloned().unwrap_or_default(),
                    bbox: [
                        round3(x / w),
                        round3(y / h),
                        round3((x + bw) / w),
                        round3((y + bh) / h),
                    ],
                }
            })
            .collect()
    }
}

fn round3(x: f64) -> f64 {
    py_round(x, 3)
}

/// Python's `round(x, n)` (exact ties to even), shared with the weights in mde-core.
pub use mde_core::io::round_to as py_round;

/// Formats a float the way Python's `repr` prints a value rounded to a few decimals
/// (`1.0`, `0.5`, `0.123`), so rendered boxes read like the released ones.
pub fn py_float(x: f64) -> String {
    let s = format!("{x}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

/// `category: [x1, y1, x2, y2]`.
pub fn render_box(b: &ObjectBox) -> String {
    let c: Vec<String> = b.bbox.iter().map(|v| py_float(*v)).collect();
    format!("{}: [{}]", b.category, c.join(", "))
}

/// One box per line.
pub fn render_boxes(boxes: &[ObjectBox]) -> String {
    boxes.iter().map(render_box).collect::<Vec<_>>().join("\n")
}

/// One caption per line.
pub fn render_captions(captions: &[String]) -> String {
    captions.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(round3(2.0 / 3.0)), "0.667");
        assert_eq!(py_float(0.0), "0.0");
        // Python: round(0.0625, 3) == 0.062, round(0.1235, 3) == 0.123, round(1.0005, 3) == 1.0
        assert_eq!(py_round(0.0625, 3), 0.062);
        assert_eq!(py_round(0.1235, 3), 0.123);
        assert_eq!(py_round(1.0005, 3), 1.0);
        assert_eq!(py_round(2.675, 2), 2.67);
    }

    #[test]
    fn loads_official_layout_and_skips_segmentation() {
        let dir = tempfile::tempdir().unwrap();
        let inst = dir.path().join("instances.json");
        std::fs::write(
            &inst,
            r#"{"info": {"year": 2017}, "licenses": [],
                "images": [{"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480, "license": 1}],
                "annotations": [
                  {"id": 1, "image_id": 7, "category_id": 3, "bbox": [64, 48, 320, 240], "area": 5.0, "iscrowd": 0,
                   "segmentation": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]},
                  {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 640, 480], "iscrowd": 1,
                   "segmentation": {"counts": [1, 2, 3], "size": [480, 640]}}],
                "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}]}"#,
        )
        .unwrap();
        let caps = dir.path().join("captions.json");
        std::fs::write(
            &caps,
            r#"{"images": [{"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480}],
                "annotations": [{"id": 9, "image_id": 7, "caption": "A car. "}, {"id": 10, "image_id": 7, "caption": "Cars"}]}"#,
        )
        .unwrap();
        let db = AnnotationDb::load(&inst, Some(&caps)).unwrap();
        assert_eq!(db.object_count(7), 2);
        let b = db.boxes(7);
        assert_eq!(render_box(&b[0]), "car: [0.1, 0.1, 0.6, 0.6]");
        assert_eq!(render_box(&b[1]), "car: [0.0, 0.0, 1.0, 1.0]");
        assert_eq!(
            render_captions(&db.image(7).unwrap().captions),
            "A car.\nCars"
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"images": [], "annotations": [{"image_id": 1, "category_id": 3, "bbox": [0,0,1,1]}], "categories": [{"id": 3, "name": "car"}]}"#).unwrap();
        let err = AnnotationDb::load_instances(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("annotations[0]"),
            "{err}"
        );
    }
}
