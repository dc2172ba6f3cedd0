//! Generation, storage and loading of a world directory.
//!
//! Layout (COCO-style, so the sampler and the benchmark loaders read it like the real data):
//! ```text
//! <dir>/manifest.json                          config, its hash, counts, content hash (written last)
//! <dir>/coco/train2017/{id:012}.jpg            candidate pool + base-training images
//! <dir>/coco/val2017/{id:012}.jpg              benchmark images (A-OKVQA set and MMBench set)
//! <dir>/coco/annotations/instances_{train,val}2017.json   COCO instances (category = "red circle")
//! <dir>/coco/annotations/captions_{train,val}2017.json    five captions per image
//! <dir>/coco/annotations/scenes_{train,val}2017.json      full ground truth (background, quality, geometry)
//! <dir>/bench/aokvqa/aokvqa_v1p0_val.json      A-OKVQA v1p0 schema (+ question_type, image_path)
//! <dir>/bench/aokvqa/question_types.json       {question_id: type}
//! <dir>/bench/mmbench/MMBench_WORLD.tsv        MMBench TSV with circular copies
//! <dir>/train/base_vqa_unbalanced.json         [VqaRecord] with scarce weak types
//! <dir>/train/base_vqa_balanced.json           [VqaRecord] equal per type (the control)
//! <dir>/train/base_captions.json               [CaptionRecord] of the pool images
//! ```
//! Image ids are allocated in blocks so that changing one set's size leaves the others' ids alone:
//! pool 1.., unbalanced base 1_000_001.., balanced base 2_000_001.., A-OKVQA 3_000_001..,
//! MMBench 4_000_001...
use crate::bench::{self, AokvqaItem, CaptionRecord, MmbenchRow, VqaRecord};
use crate::captions::captions;
use crate::config::{ImageFormat, WorldConfig};
use crate::questions::{ask, plain_mention, QType, Question};
use crate::render::{decode, encode_jpeg, encode_png, render};
use crate::scene::{polygon, sample_scene, Quality, Scene, SceneRequest};
use crate::WorldError;
use base64::Engine;
use mde_core::io::{read_json, write_json};
use mde_core::records::{coco, ObjectBox};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Bump when generation changes in a way that alters output for the same config.
pub const GENERATOR_VERSION: u32 = 2;

/// Base image ids of the id blocks.
pub const POOL_ID_BASE: u64 = 1;
pub const BASE_UNBALANCED_ID_BASE: u64 = 1_000_001;
pub const BASE_BALANCED_ID_BASE: u64 = 2_000_001;
pub const AOKVQA_ID_BASE: u64 = 3_000_001;
pub const MMBENCH_ID_BASE: u64 = 4_000_001;

/// Which base VQA set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseVariant {
    /// Weak types scarce (the loop's starting point).
    Unbalanced,
    /// Equal count per type (the control experiment).
    Balanced,
}

impl BaseVariant {
    /// The config and file name (`unbalanced`, `balanced`).
    pub fn name(self) -> &'static str {
        match self {
            BaseVariant::Unbalanced => "unbalanced",
            BaseVariant::Balanced => "balanced",
        }
    }
}

/// Counts of what a world holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub train_images: usize,
    pub val_images: usize,
    pub aokvqa_questions: usize,
    pub mmbench_questions: usize,
    pub mmbench_rows: usize,
    pub base_unbalanced: usize,
    pub base_balanced: usize,
    pub base_captions: usize,
    /// Questions per type in the unbalanced base set.
    pub base_unbalanced_per_type: BTreeMap<String, usize>,
}

/// `manifest.json`: written last, so its presence marks a complete world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator_version: u32,
    pub config: WorldConfig,
    /// sha256 of the generator version and the canonical config JSON.
    pub config_hash: String,
    /// sha256 over every generated file (relative path + bytes, in generation order).
    pub content_hash: String,
    pub counts: Counts,
}

/// A generated world: paths plus the in-memory ground truth.
#[derive(Debug, Clone)]
pub struct World {
    dir: PathBuf,
    manifest: Manifest,
    scenes: BTreeMap<u64, Scene>,
    captions: BTreeMap<u64, Vec<String>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An independent ChaCha stream per (seed, stream, index): items don't depend on generation order.
pub fn item_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix(splitmix(seed ^ splitmix(stream)) ^ index))
}

/// FNV-1a of a string (stable across runs and platforms), to seed per-query streams.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// sha256 of the generator version and the config.
pub fn config_hash(cfg: &WorldConfig) -> String {
    let mut h = Sha256::new();
    h.update(GENERATOR_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(cfg).expect("config serialises"));
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Area of a shape (pixels²), for the COCO `area` field.
fn shape_area(o: &crate::scene::Object) -> f64 {
    match polygon(o.shape, o.cx, o.cy, o.r) {
        None => std::f64::consts::PI * o.r * o.r,
        Some(p) => {
            let mut s = 0.0;
            for i in 0..p.len() {
                let (x1, y1) = p[i];
                let (x2, y2) = p[(i + 1) % p.len()];
                s += x1 * y2 - x2 * y1;
            }
            (s.abs() / 2.0 * 100.0).round() / 100.0
        }
    }
}

/// A generated question with the scene it was asked about.
struct Item {
    scene: Scene,
    question: Question,
}

/// Draws scenes until one supports a question of `qtype` (deterministic: one rng stream).
fn gen_item(
    cfg: &WorldConfig,
    rng: &mut ChaCha8Rng,
    image_id: u64,
    split: &str,
    qtype: QType,
) -> Result<Item, WorldError> {
    for _ in 0..200 {
        let req = SceneRequest {
            // Balanced answers: the quality question sees every quality equally often.
            quality: (qtype == QType::ImageQuality).then(|| Quality::ALL[rng.random_range(0..4)]),
            background: None,
            min_objects: match qtype {
                QType::AttributeComparison | QType::SpatialRelationship => 2,
                _ => 1,
            },
        };
        let scene = sample_scene(cfg, rng, image_id, split, req);
        if let Some(question) = ask(cfg, &scene, qtype, rng) {
            return Ok(Item { scene, question });
        }
    }
    Err(WorldError::Config(format!(
        "could not draw a scene for a {} question in 200 tries; enlarge the image or object counts",
        qtype.id()
    )))
}

/// Largest-remainder allocation of `n` over weights (deterministic, exact total).
fn allocate(n: usize, types: &[QType], weights: &BTreeMap<String, f64>) -> Vec<(QType, usize)> {
    let w: Vec<f64> = types
        .iter()
        .map(|t| weights.get(t.id()).copied().unwrap_or(0.0))
        .collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return types.iter().map(|t| (*t, 0)).collect();
    }
    let exact: Vec<f64> = w.iter().map(|x| x / total * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut rest = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..types.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if rest == 0 {
            break;
        }
        if w[i] > 0.0 {
            counts[i] += 1;
            rest -= 1;
        }
    }
    types.iter().copied().zip(counts).collect()
}

/// A base-62 id like A-OKVQA's 22-character question ids.
fn question_id(rng: &mut ChaCha8Rng) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..22)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// Collects every written file into the content hash.
struct Writer {
    root: PathBuf,
    hash: Sha256,
}

impl Writer {
    fn image(&mut self, rel: &str, bytes: &[u8]) -> Result<(), WorldError> {
        let path = self.root.join(rel);
        self.hash.update(rel.as_bytes());
        self.hash.update(bytes);
        std::fs::write(&path, bytes)
            .map_err(|e| WorldError::Core(mde_core::CoreError::io(&path, e)))
    }
    fn json<T: Serialize>(&mut self, rel: &str, v: &T) -> Result<(), WorldError> {
        // Compact JSON, like the distributed COCO / A-OKVQA files (they are large).
        let path = self.root.join(rel);
        let mut bytes = serde_json::to_vec(v).map_err(|e| {
            WorldError::Core(mde_core::CoreError::Json {
                path: path.clone(),
                source: e,
            })
        })?;
        bytes.push(b'\n');
        mde_core::io::atomic_write(&path, &bytes)?;
        self.hash.update(rel.as_bytes());
        self.hash.update(&bytes);
        Ok(())
    }
    fn text(&mut self, rel: &str, s: &str) -> Result<(), WorldError> {
        let path = self.root.join(rel);
        mde_core::io::atomic_write(&path, s.as_bytes())?;
        self.hash.update(rel.as_bytes());
        self.hash.update(s.as_bytes());
        Ok(())
    }
}

impl World {
    /// Generates the world into `dir`, or loads it when `dir` already holds a complete world of
    /// the same config (same config hash). A complete world of a *different* config is an error
    /// (never overwritten); a directory without a manifest (an interrupted run) is regenerated.
    pub fn generate(cfg: &WorldConfig, dir: impl AsRef<Path>) -> Result<World, WorldError> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let hash = config_hash(cfg);
        let mpath = dir.join("manifest.json");
        if mpath.exists() {
            let m: Manifest = read_json(&mpath)?;
            if m.config_hash == hash && m.generator_version == GENERATOR_VERSION {
                return World::load(&dir);
            }
            return Err(WorldError::Mismatch {
                path: mpath,
                msg: format!(
                    "holds a world of another config (hash {} vs requested {}); choose another directory",
                    m.config_hash, hash
                ),
            });
        }
        if cfg.base_size >= 1_000_000
            || cfg.pool_images >= 1_000_000
            || cfg.aokvqa_per_type * cfg.types.len() >= 1_000_000
        {
            return Err(WorldError::Config(
                "each set must hold fewer than 1,000,000 images".into(),
            ));
        }
        for sub in [
            "coco/train2017",
            "coco/val2017",
            "coco/annotations",
            "bench/aokvqa",
            "bench/mmbench",
            "train",
        ] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| WorldError::Core(mde_core::CoreError::io(&p, e)))?;
        }
        let mut w = Writer {
            root: dir.clone(),
            hash: Sha256::new(),
        };
        let mut train: Vec<Scene> = vec![];
        let mut val: Vec<Scene> = vec![];
        let mut counts = Counts::default();

        // 1. Candidate pool (what ABS draws query images from).
        for i in 0..cfg.pool_images {
            let mut rng = item_rng(cfg.seed, 1, i as u64);
            train.push(sample_scene(
                cfg,
                &mut rng,
                POOL_ID_BASE + i as u64,
                "train",
                SceneRequest::default(),
            ));
        }
        // 2. Base VQA sets: one question per fresh image.
        let mut base_sets = vec![];
        for (variant, stream, id_base) in [
            (BaseVariant::Unbalanced, 2u64, BASE_UNBALANCED_ID_BASE),
            (BaseVariant::Balanced, 3, BASE_BALANCED_ID_BASE),
        ] {
            let alloc = match variant {
                BaseVariant::Unbalanced => {
                    allocate(cfg.base_size, &cfg.types, &cfg.base_type_weights)
                }
                BaseVariant::Balanced => {
                    let uniform = cfg
                        .types
                        .iter()
                        .map(|t| (t.id().to_string(), 1.0))
                        .collect();
                    allocate(cfg.base_size, &cfg.types, &uniform)
                }
            };
            if variant == BaseVariant::Unbalanced {
                counts.base_unbalanced_per_type = alloc
                    .iter()
                    .map(|(t, n)| (t.id().to_string(), *n))
                    .collect();
            }
            let mut order: Vec<QType> = alloc
                .iter()
                .flat_map(|(t, n)| std::iter::repeat_n(*t, *n))
                .collect();
            order.shuffle(&mut item_rng(cfg.seed, stream, u64::MAX));
            let mut records = Vec::with_capacity(order.len());
            for (j, t) in order.iter().enumerate() {
                let mut rng = item_rng(cfg.seed, stream, j as u64);
                let it = gen_item(cfg, &mut rng, id_base + j as u64, "train", *t)?;
                let expl = it.question.explanation(&it.scene, &plain_mention);
                records.push(VqaRecord {
                    id: format!(
                        "{}_{:06}",
                        if variant == BaseVariant::Unbalanced {
                            "ub"
                        } else {
                            "bal"
                        },
                        j
                    ),
                    image_id: it.scene.image_id,
                    image: it.scene.rel_path(),
                    question_type: t.id().to_string(),
                    question: it.question.question.clone(),
                    choices: it.question.choices.clone(),
                    correct_choice_idx: it.question.answer_idx,
                    answer: it.question.answer().to_string(),
                    raw_instructions: bench::reply_text(
                        &it.question.question,
                        &it.question.choices,
                        it.question.answer_idx,
                        &expl,
                    ),
                    rationales: vec![expl],
                });
                train.push(it.scene);
            }
            base_sets.push((variant, records));
        }
        // 3. A-OKVQA-format set (bad-case mining).
        let mut aok = vec![];
        let mut seen_qid = HashSet::new();
        let mut k = 0u64;
        for (ti, t) in cfg.types.iter().enumerate() {
            for i in 0..cfg.aokvqa_per_type {
                let mut rng = item_rng(cfg.seed, 4, (ti * 1_000_000 + i) as u64);
                let it = gen_item(cfg, &mut rng, AOKVQA_ID_BASE + k, "val", *t)?;
                k += 1;
                let mut qid = question_id(&mut rng);
                while !seen_qid.insert(qid.clone()) {
                    qid = question_id(&mut rng);
                }
                let expl = it.question.explanation(&it.scene, &plain_mention);
                let ans = it.question.answer().to_string();
                aok.push(AokvqaItem {
                    split: "val".into(),
                    image_id: it.scene.image_id,
                    question_id: qid,
                    question: it.question.question.clone(),
                    choices: it.question.choices.clone(),
                    correct_choice_idx: it.question.answer_idx,
                    direct_answers: vec![ans.clone(); 10],
                    difficult_direct_answer: false,
                    rationales: vec![
                        expl,
                        format!("The answer is {ans}, as can be seen in the image."),
                        format!("Looking at the picture closely shows that it is {ans}."),
                    ],
                    question_type: t.id().to_string(),
                    image_path: it.scene.rel_path(),
                });
                val.push(it.scene);
            }
        }
        // Interleave the types (the file is read in order by humans and by --limit options).
        aok.shuffle(&mut item_rng(cfg.seed, 4, u64::MAX));
        // 4. MMBench-format set (reporting).
        let mut mm_items = vec![];
        let mut k = 0u64;
        for (ti, t) in cfg.types.iter().enumerate() {
            for i in 0..cfg.mmbench_per_type {
                let mut rng = item_rng(cfg.seed, 5, (ti * 1_000_000 + i) as u64);
                let it = gen_item(cfg, &mut rng, MMBENCH_ID_BASE + k, "val", *t)?;
                k += 1;
                mm_items.push(it);
            }
        }
        mm_items.shuffle(&mut item_rng(cfg.seed, 5, u64::MAX));

        // Images: train, then val (A-OKVQA then MMBench).
        let mut encoded: HashMap<u64, Vec<u8>> = HashMap::new();
        let mm_ids: HashSet<u64> = mm_items.iter().map(|it| it.scene.image_id).collect();
        let all: Vec<&Scene> = train
            .iter()
            .chain(val.iter())
            .chain(mm_items.iter().map(|it| &it.scene))
            .collect();
        // Rendering and encoding are pure per scene: done in parallel, in chunks, while hashing
        // and writing stay sequential in the fixed order (the world hash does not depend on
        // the thread count).
        for chunk in all.chunks(1024) {
            let bytes: Vec<Result<Vec<u8>, WorldError>> = chunk
                .par_iter()
                .map(|s| {
                    let img = render(s);
                    match cfg.image_format {
                        ImageFormat::Jpeg => encode_jpeg(&img, cfg.jpeg_quality),
                        ImageFormat::Png => encode_png(&img),
                    }
                    .map_err(|e| WorldError::Image {
                        path: dir.join("coco").join(s.rel_path()),
                        msg: e.to_string(),
                    })
                })
                .collect();
            for (s, bytes) in chunk.iter().zip(bytes) {
                let bytes = bytes?;
                w.image(&format!("coco/{}", s.rel_path()), &bytes)?;
                if mm_ids.contains(&s.image_id) {
                    encoded.insert(s.image_id, bytes);
                }
            }
        }
        let mut mains = vec![];
        for (i, it) in mm_items.iter().enumerate() {
            let bytes = &encoded[&it.scene.image_id];
            // MMBench carries PNG; decode the stored file so the pixels equal what the file holds.
            let png = match cfg.image_format {
                ImageFormat::Png => bytes.clone(),
                ImageFormat::Jpeg => {
                    decode(bytes)
                        .and_then(|img| encode_png(&img))
                        .map_err(|e| WorldError::Image {
                            path: dir.join("coco").join(it.scene.rel_path()),
                            msg: e.to_string(),
                        })?
                }
            };
            let q = &it.question;
            mains.push(MmbenchRow {
                index: i as u64,
                question: q.question.clone(),
                hint: String::new(),
                options: std::array::from_fn(|p| q.choices[p].clone()),
                answer: (b'A' + q.answer_idx as u8) as char,
                category: q.qtype.id().to_string(),
                image: base64::engine::general_purpose::STANDARD.encode(png),
                source: "mde-world".into(),
                l2_category: q.qtype.l2_category().into(),
                // The image file of the question (lets tools find the ground truth).
                comment: it.scene.rel_path(),
                split: "dev".into(),
            });
        }
        val.extend(mm_items.into_iter().map(|it| it.scene));

        // Annotations.
        let categories: Vec<coco::Category> = cfg
            .shapes
            .iter()
            .flat_map(|s| cfg.colors.iter().map(move |c| (*s, *c)))
            .enumerate()
            .map(|(i, (s, c))| coco::Category {
                id: i as u64 + 1,
                name: format!("{} {}", c.name(), s.name()),
                supercategory: s.name().into(),
            })
            .collect();
        let cat_id: HashMap<String, u64> =
            categories.iter().map(|c| (c.name.clone(), c.id)).collect();
        let mut all_captions = BTreeMap::new();
        for (split, scenes) in [("train", &train), ("val", &val)] {
            let images: Vec<coco::Image> = scenes
                .iter()
                .map(|s| coco::Image {
                    id: s.image_id,
                    file_name: s.file_name.clone(),
                    width: s.width,
                    height: s.height,
                })
                .collect();
            let mut anns = vec![];
            let mut caps = vec![];
            for s in scenes.iter() {
                for o in &s.objects {
                    let mut attrs = serde_json::Map::new();
                    attrs.insert("color".into(), o.color.name().into());
                    attrs.insert("size".into(), o.size.name().into());
                    attrs.insert("shape".into(), o.shape.name().into());
                    anns.push(coco::Annotation {
                        id: anns.len() as u64 + 1,
                        image_id: s.image_id,
                        category_id: cat_id[&o.category()],
                        bbox: o.bbox,
                        area: shape_area(o),
                        iscrowd: 0,
                        attributes: Some(attrs),
                    });
                }
                let cs = captions(s);
                for c in &cs {
                    caps.push(coco::Caption {
                        id: caps.len() as u64 + 1,
                        image_id: s.image_id,
                        caption: c.clone(),
                    });
                }
                all_captions.insert(s.image_id, cs);
            }
            w.json(
                &format!("coco/annotations/instances_{split}2017.json"),
                &coco::Instances {
                    images: images.clone(),
                    annotations: anns,
                    categories: categories.clone(),
                },
            )?;
            w.json(
                &format!("coco/annotations/captions_{split}2017.json"),
                &coco::Captions {
                    images,
                    annotations: caps,
                },
            )?;
            w.json(&format!("coco/annotations/scenes_{split}2017.json"), scenes)?;
        }
        let types: BTreeMap<&str, &str> = aok
            .iter()
            .map(|a| (a.question_id.as_str(), a.question_type.as_str()))
            .collect();
        w.json("bench/aokvqa/aokvqa_v1p0_val.json", &aok)?;
        w.json("bench/aokvqa/question_types.json", &types)?;
        let tsv = bench::mmbench_tsv(&mains);
        w.text("bench/mmbench/MMBench_WORLD.tsv", &tsv)?;
        for (variant, records) in &base_sets {
            let name = match variant {
                BaseVariant::Unbalanced => "unbalanced",
                BaseVariant::Balanced => "balanced",
            };
            w.json(&format!("train/base_vqa_{name}.json"), records)?;
        }
        let cap_records: Vec<CaptionRecord> = train
            .iter()
            .filter(|s| s.image_id < BASE_UNBALANCED_ID_BASE)
            .flat_map(|s| {
                all_captions[&s.image_id].iter().map(|c| CaptionRecord {
                    image_id: s.image_id,
                    image: s.rel_path(),
                    caption: c.clone(),
                })
            })
            .collect();
        w.json("train/base_captions.json", &cap_records)?;

        counts.train_images = train.len();
        counts.val_images = val.len();
        counts.aokvqa_questions = aok.len();
        counts.mmbench_questions = mains.len();
        counts.mmbench_rows = mains.len() * 4;
        counts.base_unbalanced = base_sets[0].1.len();
        counts.base_balanced = base_sets[1].1.len();
        counts.base_captions = cap_records.len();
        let manifest = Manifest {
            generator_version: GENERATOR_VERSION,
            config: cfg.clone(),
            config_hash: hash,
            content_hash: hex(&w.hash.finalize()),
            counts,
        };
        write_json(&mpath, &manifest)?;
        let scenes = train
            .into_iter()
            .chain(val)
            .map(|s| (s.image_id, s))
            .collect();
        Ok(World {
            dir,
            manifest,
            scenes,
            captions: all_captions,
        })
    }

    /// Loads a complete world (one with a manifest) from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<World, WorldError> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join("manifest.json");
        if !mpath.exists() {
            return Err(WorldError::Mismatch {
                path: mpath,
                msg: "missing: not a complete world directory (run World::generate)".into(),
            });
        }
        let manifest: Manifest = read_json(&mpath)?;
        let mut scenes = BTreeMap::new();
        let mut caps: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for split in ["train", "val"] {
            let spath = dir.join(format!("coco/annotations/scenes_{split}2017.json"));
            let list: Vec<Scene> = read_json(&spath)?;
            for s in list {
                if scenes.insert(s.image_id, s).is_some() {
                    return Err(WorldError::Mismatch {
                        path: spath.clone(),
                        msg: "duplicate image id".into(),
                    });
                }
            }
            let cpath = dir.join(format!("coco/annotations/captions_{split}2017.json"));
            let c: coco::Captions = read_json(&cpath)?;
            for a in c.annotations {
                caps.entry(a.image_id).or_default().push(a.caption);
            }
        }
        let expect = manifest.counts.train_images + manifest.counts.val_images;
        if scenes.len() != expect {
            return Err(WorldError::Mismatch {
                path: dir.join("coco/annotations"),
                msg: format!(
                    "scenes files hold {} images, manifest says {}",
                    scenes.len(),
                    expect
                ),
            });
        }
        Ok(World {
            dir,
            manifest,
            scenes,
            captions: caps,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &WorldConfig {
        &self.manifest.config
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The COCO root (holds `train2017/`, `val2017/`, `annotations/`).
    pub fn coco_dir(&self) -> PathBuf {
        self.dir.join("coco")
    }
    /// `instances_{split}2017.json` for split "train" or "val".
    pub fn instances_path(&self, split: &str) -> PathBuf {
        self.dir
            .join(format!("coco/annotations/instances_{split}2017.json"))
    }
    pub fn captions_path(&self, split: &str) -> PathBuf {
        self.dir
            .join(format!("coco/annotations/captions_{split}2017.json"))
    }
    pub fn aokvqa_path(&self) -> PathBuf {
        self.dir.join("bench/aokvqa/aokvqa_v1p0_val.json")
    }
    pub fn aokvqa_types_path(&self) -> PathBuf {
        self.dir.join("bench/aokvqa/question_types.json")
    }
    pub fn mmbench_path(&self) -> PathBuf {
        self.dir.join("bench/mmbench/MMBench_WORLD.tsv")
    }
    pub fn base_vqa_path(&self, variant: BaseVariant) -> PathBuf {
        match variant {
            BaseVariant::Unbalanced => self.dir.join("train/base_vqa_unbalanced.json"),
            BaseVariant::Balanced => self.dir.join("train/base_vqa_balanced.json"),
        }
    }
    pub fn base_captions_path(&self) -> PathBuf {
        self.dir.join("train/base_captions.json")
    }
    /// Absolute path of an image file.
    pub fn image_path(&self, image_id: u64) -> Option<PathBuf> {
        self.scenes
            .get(&image_id)
            .map(|s| self.coco_dir().join(s.rel_path()))
    }
    /// Ground truth of one image.
    pub fn scene(&self, image_id: u64) -> Option<&Scene> {
        self.scenes.get(&image_id)
    }
    /// All images (train and val), by id.
    pub fn scenes(&self) -> &BTreeMap<u64, Scene> {
        &self.scenes
    }
    /// The five captions of an image.
    pub fn captions(&self, image_id: u64) -> &[String] {
        self.captions
            .get(&image_id)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }
    /// Ids of the candidate pool ABS draws query images from: the `pool_images` train2017
    /// images generated for it, never used by the base sets (whose images are train2017 too,
    /// see [`World::train_image_ids`]).
    pub fn pool_image_ids(&self) -> Vec<u64> {
        let end = POOL_ID_BASE + self.config().pool_images as u64;
        self.scenes
            .range(POOL_ID_BASE..end)
            .filter(|(_, s)| s.split == "train")
            .map(|(&id, _)| id)
            .collect()
    }
    /// Ids of every train2017 image: the pool and the images of both base sets.
    pub fn train_image_ids(&self) -> Vec<u64> {
        self.scenes
            .values()
            .filter(|s| s.split == "train")
            .map(|s| s.image_id)
            .collect()
    }
    /// The objects of an image as the sampler passes them to a teacher ("red circle", 0..1 box).
    pub fn object_boxes(&self, image_id: u64) -> Vec<ObjectBox> {
        self.scenes
            .get(&image_id)
            .map(|s| {
                s.objects
                    .iter()
                    .map(|o| ObjectBox {
                        category: o.category(),
                        bbox: o.norm_box(s.width, s.height),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn load_aokvqa(&self) -> Result<Vec<AokvqaItem>, WorldError> {
        Ok(read_json(self.aokvqa_path())?)
    }
    pub fn load_base_vqa(&self, variant: BaseVariant) -> Result<Vec<VqaRecord>, WorldError> {
        Ok(read_json(self.base_vqa_path(variant))?)
    }
    pub fn load_base_captions(&self) -> Result<Vec<CaptionRecord>, WorldError> {
        Ok(read_json(self.base_captions_path())?)
    }
}
