//! End-to-end checks of a generated world: determinism, answer correctness (recomputed
//! independently from the ground truth), annotation sanity, benchmark formats, the teacher.
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use mde_core::records::{coco, GenQuery, GptVqaV1};
use mde_core::teacher::{Teacher, TeacherRequest, TeacherTask};
use mde_world::bench::{CIRCULAR_OFFSET, MMBENCH_COLUMNS};
use mde_world::scene::{BackgroundKind, Quality, Size};
use mde_world::{
    BaseVariant, InjectedError, QType, Scene, TeacherOptions, World, WorldConfig, WorldTeacher,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// One shared world for the read-only tests (generation is the slow part).
fn shared() -> &'static (tempfile::TempDir, World) {
    static W: OnceLock<(tempfile::TempDir, World)> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WorldConfig {
            pool_images: 60,
            base_size: 240,
            aokvqa_per_type: 25,
            mmbench_per_type: 12,
            ..WorldConfig::tiny(11)
        };
        let w = World::generate(&cfg, dir.path()).unwrap();
        (dir, w)
    })
}

/// The correct answer text, recomputed from the scene without the generator's code.
fn solve(scene: &Scene, question: &str) -> Result<String> {
    let objs = &scene.objects;
    let by_name = |name: &str| -> Result<&mde_world::scene::Object> {
        let m: Vec<_> = objs
            .iter()
            .filter(|o| format!("{} {}", o.color.name(), o.shape.name()) == name)
            .collect();
        if m.len() != 1 {
            bail!("{name:?} matches {} objects", m.len());
        }
        Ok(m[0])
    };
    if let Some(s) = question
        .strip_prefix("What color is the ")
        .and_then(|r| r.strip_suffix('?'))
    {
        let m: Vec<_> = objs.iter().filter(|o| o.shape.name() == s).collect();
        if m.len() != 1 {
            bail!("shape {s} is not unique");
        }
        return Ok(m[0].color.name().into());
    }
    if let Some(c) = question
        .strip_prefix("What shape is the ")
        .and_then(|r| r.strip_suffix(" object?"))
    {
        let m: Vec<_> = objs.iter().filter(|o| o.color.name() == c).collect();
        if m.len() != 1 {
            bail!("colour {c} is not unique");
        }
        return Ok(m[0].shape.name().into());
    }
    if question == "How many shapes are there in the image?" {
        return Ok(objs.len().to_string());
    }
    if let Some(n) = question
        .strip_prefix("In which part of the image is the ")
        .and_then(|r| r.strip_suffix('?'))
    {
        let o = by_name(n)?;
        let (w, h) = (scene.width as f64, scene.height as f64);
        let (x0, y0, x1, y1) = (
            o.bbox[0],
            o.bbox[1],
            o.bbox[0] + o.bbox[2],
            o.bbox[1] + o.bbox[3],
        );
        let horiz = if x1 < w / 2.0 {
            "left"
        } else if x0 > w / 2.0 {
            "right"
        } else {
            bail!("straddles the vertical midline")
        };
        let vert = if y1 < h / 2.0 {
            "top"
        } else if y0 > h / 2.0 {
            "bottom"
        } else {
            bail!("straddles the horizontal midline")
        };
        return Ok(format!("{vert} {horiz}"));
    }
    if let Some(r) = question
        .strip_prefix("Which is larger, the ")
        .and_then(|r| r.strip_suffix('?'))
    {
        let (a, b) = r
            .split_once(" or the ")
            .ok_or_else(|| anyhow!("bad comparison question"))?;
        let (oa, ob) = (by_name(a)?, by_name(b)?);
        return Ok(if (oa.r - ob.r).abs() < 1e-9 {
            "they are the same size".into()
        } else if oa.r > ob.r {
            format!("the {a}")
        } else {
            format!("the {b}")
        });
    }
    if let Some(r) = question
        .strip_prefix("Is the ")
        .and_then(|r| r.strip_suffix('?'))
    {
        let (a, b) = r
            .split_once(" on the left or on the right of the ")
            .ok_or_else(|| anyhow!("bad relation question"))?;
        let (oa, ob) = (by_name(a)?, by_name(b)?);
        let gap_needed = scene.width as f64 / 8.0;
        if oa.bbox[0] + oa.bbox[2] + gap_needed <= ob.bbox[0] {
            return Ok("on the left".into());
        }
        if ob.bbox[0] + ob.bbox[2] + gap_needed <= oa.bbox[0] {
            return Ok("on the right".into());
        }
        bail!("objects too close for a left/right question");
    }
    if question == "How would you describe the quality of this image?" {
        return Ok(match scene.quality {
            Quality::Clean => "clear and sharp",
            Quality::Blurry => "blurry",
            Quality::Dark => "too dark",
            Quality::Noisy => "grainy with noise",
        }
        .into());
    }
    if question == "What does the background of the image look like?" {
        return Ok(match scene.background.kind {
            BackgroundKind::Plain => "a plain color",
            BackgroundKind::Gradient => "a smooth gradient",
            BackgroundKind::Stripes => "stripes",
            BackgroundKind::Checkerboard => "a checkerboard pattern",
        }
        .into());
    }
    bail!("unknown question template: {question}")
}

fn check_answer(scene: &Scene, question: &str, choices: &[String], idx: usize) -> Result<()> {
    let ans =
        solve(scene, question).with_context(|| format!("image {}: {question}", scene.image_id))?;
    if choices.len() != 4 {
        bail!("{question}: {} choices", choices.len());
    }
    let mut sorted = choices.to_vec();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != 4 {
        bail!("{question}: duplicate choices {choices:?}");
    }
    if choices.iter().filter(|c| **c == ans).count() != 1 || choices[idx] != ans {
        bail!(
            "image {}: {question} {choices:?} marked {idx}, correct is {ans:?}",
            scene.image_id
        );
    }
    Ok(())
}

#[test]
fn same_seed_same_bytes_other_seed_differs() -> Result<()> {
    let cfg = WorldConfig::tiny(3);
    let (a, b, c) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let wa = World::generate(&cfg, a.path())?;
    let wb = World::generate(&cfg, b.path())?;
    assert_eq!(wa.manifest().content_hash, wb.manifest().content_hash);
    for rel in [
        "coco/annotations/instances_train2017.json",
        "bench/mmbench/MMBench_WORLD.tsv",
        "train/base_vqa_unbalanced.json",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(rel))?,
            std::fs::read(b.path().join(rel))?,
            "{rel}"
        );
    }
    let id = wa.pool_image_ids()[0];
    assert_eq!(
        std::fs::read(wa.image_path(id).unwrap())?,
        std::fs::read(wb.image_path(id).unwrap())?
    );
    let wc = World::generate(&WorldConfig::tiny(4), c.path())?;
    assert_ne!(wa.manifest().content_hash, wc.manifest().content_hash);
    Ok(())
}

#[test]
fn generate_is_idempotent_and_refuses_other_configs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = WorldConfig::tiny(5);
    let w1 = World::generate(&cfg, dir.path())?;
    let before = std::fs::metadata(dir.path().join("manifest.json"))?.modified()?;
    let w2 = World::generate(&cfg, dir.path())?;
    assert_eq!(w1.manifest(), w2.manifest());
    assert_eq!(
        before,
        std::fs::metadata(dir.path().join("manifest.json"))?.modified()?
    );
    assert_eq!(w1.scenes(), w2.scenes());
    let err = World::generate(&WorldConfig::tiny(6), dir.path()).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
    // An interrupted run (no manifest) is regenerated.
    std::fs::remove_file(dir.path().join("manifest.json"))?;
    let w3 = World::generate(&cfg, dir.path())?;
    assert_eq!(w3.manifest().content_hash, w1.manifest().content_hash);
    Ok(())
}

#[test]
fn bad_configs_are_rejected() {
    let bad = [
        WorldConfig {
            colors: vec![mde_world::scene::Color::Red; 4],
            ..Default::default()
        },
        WorldConfig {
            max_objects: 1,
            ..Default::default()
        },
        WorldConfig {
            quality_probs: [0.5, 0.5, 0.5, 0.0],
            ..Default::default()
        },
        WorldConfig {
            image_size: 8,
            ..Default::default()
        },
    ];
    for cfg in bad {
        let dir = tempfile::tempdir().unwrap();
        assert!(World::generate(&cfg, dir.path()).is_err(), "{cfg:?}");
    }
    let json = serde_json::json!({"seed": 1, "no_such_field": 2});
    assert!(serde_json::from_value::<WorldConfig>(json).is_err());
}

#[test]
fn annotations_match_geometry_and_stay_inside_images() -> Result<()> {
    let (_d, w) = shared();
    for split in ["train", "val"] {
        let inst: coco::Instances = mde_core::io::read_json(w.instances_path(split))?;
        let cats: HashMap<u64, &str> = inst
            .categories
            .iter()
            .map(|c| (c.id, c.name.as_str()))
            .collect();
        let imgs: HashMap<u64, &coco::Image> = inst.images.iter().map(|i| (i.id, i)).collect();
        let mut per_image: BTreeMap<u64, usize> = BTreeMap::new();
        for a in &inst.annotations {
            let img = imgs[&a.image_id];
            let [x, y, bw, bh] = a.bbox;
            assert!(x >= 0.0 && y >= 0.0 && bw > 0.0 && bh > 0.0, "{a:?}");
            assert!(
                x + bw <= img.width as f64 && y + bh <= img.height as f64,
                "{a:?}"
            );
            let scene = w.scene(a.image_id).unwrap();
            let attrs = a.attributes.as_ref().unwrap();
            let name = format!(
                "{} {}",
                attrs["color"].as_str().unwrap(),
                attrs["shape"].as_str().unwrap()
            );
            assert_eq!(cats[&a.category_id], name);
            let o = scene.find(&name).unwrap();
            assert_eq!(o.bbox, a.bbox);
            assert!(a.area > 0.0 && a.area <= bw * bh + 1e-6);
            *per_image.entry(a.image_id).or_default() += 1;
        }
        for i in &inst.images {
            let s = w.scene(i.id).unwrap();
            assert_eq!(per_image.get(&i.id).copied().unwrap_or(0), s.objects.len());
            assert!(w
                .coco_dir()
                .join(format!("{split}2017"))
                .join(&i.file_name)
                .exists());
            // Objects do not overlap.
            for (k, a) in s.objects.iter().enumerate() {
                for b in &s.objects[k + 1..] {
                    let d = ((a.cx - b.cx).powi(2) + (a.cy - b.cy).powi(2)).sqrt();
                    assert!(d >= a.r + b.r, "overlap in image {}", i.id);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn rendered_pixels_show_the_annotated_objects() -> Result<()> {
    let (_d, w) = shared();
    let mut checked = 0;
    for s in w
        .scenes()
        .values()
        .filter(|s| s.quality == Quality::Clean)
        .take(40)
    {
        let img = image::open(w.image_path(s.image_id).unwrap())?.to_rgb8();
        assert_eq!((img.width(), img.height()), (s.width, s.height));
        for o in &s.objects {
            let p = img.get_pixel(o.cx as u32, o.cy as u32).0;
            let want = o.color.rgb();
            let err: f32 = (0..3).map(|c| (p[c] as f32 - want[c]).abs()).sum::<f32>() / 3.0;
            assert!(
                err < 25.0,
                "image {} {}: pixel {p:?} vs {want:?}",
                s.image_id,
                o.category()
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
    Ok(())
}

#[test]
fn captions_mention_every_object() {
    let (_d, w) = shared();
    for s in w.scenes().values() {
        let caps = w.captions(s.image_id);
        assert_eq!(caps.len(), 5, "image {}", s.image_id);
        let mut distinct = caps.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5);
        for o in &s.objects {
            let name = format!("{} {}", o.color.name(), o.shape.name());
            assert!(
                caps[0].contains(&format!("{} {name}", o.size.name())),
                "{caps:?} lacks {name}"
            );
            assert!(
                caps.iter().filter(|c| c.contains(&name)).count() >= 4,
                "{caps:?} lacks {name}"
            );
        }
    }
}

#[test]
fn every_benchmark_and_base_answer_is_correct() -> Result<()> {
    let (_d, w) = shared();
    let cfg = w.config();
    let aok = w.load_aokvqa()?;
    assert_eq!(aok.len(), cfg.aokvqa_per_type * cfg.types.len());
    let types: BTreeMap<String, String> = mde_core::io::read_json(w.aokvqa_types_path())?;
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &aok {
        let s = w.scene(a.image_id).unwrap();
        assert_eq!(s.split, "val");
        check_answer(s, &a.question, &a.choices, a.correct_choice_idx)?;
        assert_eq!(a.direct_answers.len(), 10);
        assert!(a
            .direct_answers
            .iter()
            .all(|d| *d == a.choices[a.correct_choice_idx]));
        assert_eq!(a.rationales.len(), 3);
        assert_eq!(a.question_id.len(), 22);
        assert_eq!(types[&a.question_id], a.question_type);
        assert_eq!(format!("val2017/{:012}.jpg", a.image_id), a.image_path);
        *per_type.entry(&a.question_type).or_default() += 1;
    }
    assert!(per_type.values().all(|n| *n == cfg.aokvqa_per_type));
    // The official schema: the raw JSON holds the v1p0 keys with the right JSON types.
    let raw: Vec<serde_json::Value> = mde_core::io::read_json(w.aokvqa_path())?;
    for r in &raw {
        assert!(
            r["difficult_direct_answer"].is_boolean()
                && r["image_id"].is_u64()
                && r["correct_choice_idx"].is_u64()
        );
        assert!(r["question_id"].is_string() && r["choices"].as_array().unwrap().len() == 4);
    }
    for variant in [BaseVariant::Unbalanced, BaseVariant::Balanced] {
        let recs = w.load_base_vqa(variant)?;
        assert_eq!(recs.len(), cfg.base_size);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &recs {
            let s = w.scene(r.image_id).unwrap();
            assert_eq!(s.split, "train");
            assert!(w.coco_dir().join(&r.image).exists());
            check_answer(s, &r.question, &r.choices, r.correct_choice_idx)?;
            assert_eq!(r.answer, r.choices[r.correct_choice_idx]);
            assert_eq!(solve(s, &r.question)?, r.answer);
            *counts.entry(r.question_type.clone()).or_default() += 1;
        }
        // Records read as GPTVQA v1 (the generated-round format).
        let v1: Vec<GptVqaV1> = mde_core::io::read_json(w.base_vqa_path(variant))?;
        assert_eq!(v1.len(), recs.len());
        let total_w: f64 = cfg
            .types
            .iter()
            .map(|t| cfg.base_type_weights.get(t.id()).copied().unwrap_or(0.0))
            .sum();
        for t in &cfg.types {
            let n = counts.get(t.id()).copied().unwrap_or(0) as f64;
            let expect = match variant {
                BaseVariant::Balanced => cfg.base_size as f64 / cfg.types.len() as f64,
                BaseVariant::Unbalanced => {
                    cfg.base_type_weights.get(t.id()).copied().unwrap_or(0.0) / total_w
                        * cfg.base_size as f64
                }
            };
            assert!(
                (n - expect).abs() < 1.0,
                "{variant:?} {}: {n} vs {expect}",
                t.id()
            );
        }
    }
    let caps = w.load_base_captions()?;
    assert_eq!(caps.len(), cfg.pool_images * 5);
    Ok(())
}

#[test]
fn mmbench_tsv_has_official_columns_and_correct_circular_copies() -> Result<()> {
    let (_d, w) = shared();
    let cfg = w.config();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_path(w.mmbench_path())?;
    let header: Vec<String> = rdr.headers()?.iter().map(String::from).collect();
    assert_eq!(header, MMBENCH_COLUMNS.to_vec());
    let rows: Vec<Vec<String>> = rdr
        .records()
        .map(|r| r.map(|r| r.iter().map(String::from).collect()))
        .collect::<Result<_, _>>()?;
    let n_main = cfg.mmbench_per_type * cfg.types.len();
    assert_eq!(rows.len(), n_main * 4);
    let col = |name: &str| MMBENCH_COLUMNS.iter().position(|c| *c == name).unwrap();
    let by_index: HashMap<u64, &Vec<String>> = rows
        .iter()
        .map(|r| (r[col("index")].parse().unwrap(), r))
        .collect();
    assert_eq!(by_index.len(), rows.len());
    let letter = |r: &Vec<String>| (r[col("answer")].as_bytes()[0] - b'A') as usize;
    let mut per_cat: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r[col("index")].parse::<u64>().unwrap() < CIRCULAR_OFFSET)
    {
        let idx: u64 = r[col("index")].parse()?;
        let opts: Vec<String> = (0..4).map(|k| r[col("A") + k].clone()).collect();
        let ans = letter(r);
        // Ground truth via the image file named in the comment, and the embedded PNG equals it.
        let rel = &r[col("comment")];
        let id: u64 = rel
            .trim_start_matches("val2017/")
            .split('.')
            .next()
            .unwrap()
            .parse()?;
        let s = w.scene(id).unwrap();
        check_answer(s, &r[col("question")], &opts, ans)?;
        assert_eq!(
            QType::from_id(&r[col("category")]).map(|t| t.id()),
            Some(r[col("category")].as_str())
        );
        let png = base64::engine::general_purpose::STANDARD.decode(&r[col("image")])?;
        assert_eq!(&png[1..4], b"PNG");
        let a = image::load_from_memory(&png)?.to_rgb8();
        let b = image::open(w.image_path(id).unwrap())?.to_rgb8();
        assert_eq!(a, b, "embedded image differs from the file");
        assert_eq!(r[col("split")], "dev");
        *per_cat.entry(r[col("category")].clone()).or_default() += 1;
        for k in 1..4u64 {
            let c = by_index[&(idx + k * CIRCULAR_OFFSET)];
            assert_eq!(c[col("image")], idx.to_string());
            assert_eq!(c[col("question")], r[col("question")]);
            let copts: Vec<String> = (0..4).map(|j| c[col("A") + j].clone()).collect();
            // Labels rotated right by k: new label p shows old option (p + k) % 4.
            for p in 0..4 {
                assert_eq!(copts[p], opts[(p + k as usize) % 4]);
            }
            assert_eq!(
                copts[letter(c)],
                opts[ans],
                "copy {k} of {idx} answers a different option"
            );
        }
    }
    assert_eq!(per_cat.len(), cfg.types.len());
    assert!(per_cat.values().all(|n| *n == cfg.mmbench_per_type));
    // The k=1 rule from the spec: an answer A becomes D.
    let (o, a) = mde_world::bench::rotate(&["a".into(), "b".into(), "c".into(), "d".into()], 0, 1);
    assert_eq!(
        (o, a),
        (["b".to_string(), "c".into(), "d".into(), "a".into()], 3)
    );
    Ok(())
}

/// The parts of a reply located as REFERENCE §5 describes (a local check of the format).
struct Parsed {
    question: String,
    choices: Vec<String>,
    answer_idx: usize,
    rationale: String,
}

fn parse_reply(text: &str) -> Result<Parsed> {
    for banned in ["coordinates", "coordinate", "bounding box", "skip", "Skip"] {
        if text.contains(banned) {
            bail!("reply contains {banned:?}");
        }
    }
    let q = text
        .find("Question:")
        .ok_or_else(|| anyhow!("no Question:"))?;
    let c = text
        .find("Choices:")
        .ok_or_else(|| anyhow!("no Choices:"))?;
    let a = text.find("Answer:").ok_or_else(|| anyhow!("no Answer:"))?;
    let e = text
        .find("Explanation")
        .ok_or_else(|| anyhow!("no explanation header"))?;
    if !(q < c && c < a && a < e) {
        bail!("sections out of order");
    }
    let question = text[q + 9..c].trim().to_string();
    let choice_text = &text[c + 8..a];
    let mut choices = vec![];
    for part in choice_text.split(')').skip(1) {
        let s = part
            .split('(')
            .next()
            .unwrap()
            .trim()
            .trim_end_matches('.')
            .trim();
        if !s.is_empty() {
            choices.push(s.to_string());
        }
    }
    let ans = &text[a..e];
    let (o, cl) = (
        ans.find('(').ok_or_else(|| anyhow!("no ("))?,
        ans.find(')').ok_or_else(|| anyhow!("no )"))?,
    );
    let letter = ans[o + 1..cl].trim();
    if letter.len() != 1 || !("A"..="E").contains(&letter) {
        bail!("bad answer letter {letter:?}");
    }
    let answer_idx = (letter.as_bytes()[0] - b'A') as usize;
    let rationale = text[e..].trim().to_string();
    if regex_like_located_at(&question)
        || regex_like_located_at(&rationale)
        || rationale.contains("description")
    {
        bail!("filtered phrase");
    }
    Ok(Parsed {
        question,
        choices,
        answer_idx,
        rationale,
    })
}

fn regex_like_located_at(s: &str) -> bool {
    s.match_indices("located at")
        .any(|(i, m)| s[i + m.len()..].trim_start().starts_with('['))
}

fn strip_boxes(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in s.chars() {
        match ch {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

fn query_for(w: &World, id: &str, t: &str, image_id: u64) -> GenQuery {
    GenQuery {
        id: id.into(),
        question_type: t.into(),
        type_definition: QType::from_id(t)
            .map(|q| q.definition().to_string())
            .unwrap_or_default(),
        image_id,
        captions: w.captions(image_id).to_vec(),
        boxes: w.object_boxes(image_id),
        ..Default::default()
    }
}

#[test]
fn teacher_replies_parse_and_are_grounded() -> Result<()> {
    let (_d, w) = shared();
    let teacher = WorldTeacher::new(w, TeacherOptions::default());
    let pool = w.pool_image_ids();
    let (mut ok, mut skipped) = (0, 0);
    for (i, &id) in pool.iter().enumerate() {
        for t in &w.config().types {
            let q = query_for(w, &format!("q{i}_{}", t.id()), t.id(), id);
            let req = TeacherRequest {
                task: TeacherTask::Generate { query: q.clone() },
                ..Default::default()
            };
            let reply =
                futures::executor::block_on(teacher.complete(&req)).map_err(|e| anyhow!("{e}"))?;
            assert_eq!(
                reply.completion_tokens,
                reply.text.split_whitespace().count() as u64
            );
            if reply.text.starts_with("Skip") {
                assert!(reply.text.contains("Reason:"));
                skipped += 1;
                continue;
            }
            let p = parse_reply(&reply.text).with_context(|| reply.text.clone())?;
            let s = w.scene(id).unwrap();
            check_answer(s, &p.question, &p.choices, p.answer_idx)
                .with_context(|| reply.text.clone())?;
            assert_eq!(
                mde_world::questions::classify_question(&p.question),
                Some(*t)
            );
            // Every cited box is the cited object's true box.
            for b in w.object_boxes(id) {
                if let Some(pos) = p.rationale.find(&format!("{} [", b.category)) {
                    let rest = &p.rationale[pos + b.category.len() + 2..];
                    let nums: Vec<f64> = rest[..rest.find(']').unwrap()]
                        .split(", ")
                        .map(|x| x.parse().unwrap())
                        .collect();
                    assert_eq!(nums, b.bbox.to_vec(), "{}", reply.text);
                }
            }
            assert!(!strip_boxes(&p.rationale).contains('['));
            // Same query id → same reply.
            assert_eq!(
                teacher.generate(&q).map_err(|e| anyhow!("{e}"))?.0,
                reply.text
            );
            ok += 1;
        }
    }
    assert!(ok > skipped, "ok {ok} skipped {skipped}");
    // Types the world cannot ask give Skip with a reason; unknown images are an error.
    let q = query_for(w, "x", "social_relation", pool[0]);
    let (text, _) = teacher.generate(&q).map_err(|e| anyhow!("{e}"))?;
    assert!(text.starts_with("Skip\nReason:"), "{text}");
    assert!(teacher
        .generate(&query_for(w, "y", "image_scene", 999_999_999))
        .is_err());
    let chat = TeacherRequest::default();
    assert!(futures::executor::block_on(teacher.complete(&chat)).is_err());
    Ok(())
}

#[test]
fn teacher_injects_the_planned_errors_at_the_configured_rate() -> Result<()> {
    let (_d, w) = shared();
    let teacher = WorldTeacher::new(
        w,
        TeacherOptions {
            error_rate: 0.5,
            seed: 9,
            ..Default::default()
        },
    );
    let pool = w.pool_image_ids();
    let mut made: BTreeMap<String, usize> = BTreeMap::new();
    let n = 300;
    for i in 0..n {
        let id = pool[i % pool.len()];
        let t = QType::AttributeRecognition;
        let q = query_for(w, &format!("e{i}"), t.id(), id);
        let (text, err) = teacher.generate(&q).map_err(|e| anyhow!("{e}"))?;
        if let Some(e) = err {
            assert_eq!(Some(e), teacher.planned_error(&q.id));
        }
        if text.starts_with("Skip") {
            continue;
        }
        let s = w.scene(id).unwrap();
        let p = parse_reply(&text)?;
        let correct = check_answer(s, &p.question, &p.choices, p.answer_idx).is_ok()
            && mde_world::questions::classify_question(&p.question) == Some(t);
        let boxes_true = w.object_boxes(id).iter().all(|b| {
            match p.rationale.find(&format!("{} [", b.category)) {
                Some(pos) => p.rationale[pos..].contains(&format!(
                    "[{:.3}, {:.3}, {:.3}, {:.3}]",
                    b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]
                )),
                None => true,
            }
        });
        match err {
            None => assert!(correct && boxes_true, "{text}"),
            Some(InjectedError::WrongBox) => assert!(correct && !boxes_true, "{text}"),
            Some(InjectedError::InventedObject) => {
                assert!(solve(s, &p.question).is_err(), "{text}")
            }
            Some(InjectedError::WrongType) => {
                assert_ne!(
                    mde_world::questions::classify_question(&p.question),
                    Some(t),
                    "{text}"
                )
            }
        }
        *made.entry(format!("{err:?}")).or_default() += 1;
    }
    let errors: usize = made
        .iter()
        .filter(|(k, _)| *k != "None")
        .map(|(_, v)| v)
        .sum();
    assert!(errors > n / 4 && errors < n * 3 / 4, "{made:?}");
    assert_eq!(made.len(), 4, "every error kind occurs: {made:?}");
    // error_rate 0: no errors planned.
    let clean = WorldTeacher::new(w, TeacherOptions::default());
    assert!((0..100).all(|i| clean.planned_error(&format!("e{i}")).is_none()));
    Ok(())
}

#[test]
fn teacher_classifies_world_questions_exactly() -> Result<()> {
    let (_d, w) = shared();
    let teacher = WorldTeacher::new(w, TeacherOptions::default());
    let taxonomy: Vec<String> = [
        "identity_reasoning",
        "physical_property_reasoning",
        "attribute_recognition",
        "function_reasoning",
        "object_localization",
        "attribute_comparison",
        "nature_relation",
        "future_prediction",
        "image_scene",
        "spatial_relationship",
        "image_quality",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let aok = w.load_aokvqa()?;
    for batch in aok.chunks(50) {
        let questions: Vec<String> = batch.iter().map(|a| a.question.clone()).collect();
        let req = TeacherRequest {
            task: TeacherTask::Classify {
                questions: questions.clone(),
                types: taxonomy.clone(),
            },
            messages: vec![mde_core::teacher::ChatMessage::user("classify these")],
            ..Default::default()
        };
        let reply =
            futures::executor::block_on(teacher.complete(&req)).map_err(|e| anyhow!("{e}"))?;
        assert_eq!(reply.prompt_tokens, 2);
        let lines: Vec<&str> = reply.text.lines().collect();
        assert_eq!(lines.len(), batch.len());
        for (i, (line, a)) in lines.iter().zip(batch).enumerate() {
            let (num, rest) = line.split_once(". (").unwrap();
            assert_eq!(num.parse::<usize>()?, i + 1);
            let (k, name) = rest.split_once(") ").unwrap();
            assert_eq!(taxonomy[k.parse::<usize>()? - 1], name);
            assert_eq!(name, a.question_type);
        }
    }
    Ok(())
}

#[test]
fn sizes_and_image_format_options_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = WorldConfig {
        image_size: 56,
        image_format: mde_world::ImageFormat::Png,
        pool_images: 10,
        base_size: 12,
        aokvqa_per_type: 2,
        mmbench_per_type: 1,
        ..WorldConfig::tiny(2)
    };
    let w = World::generate(&cfg, dir.path())?;
    for s in w.scenes().values() {
        assert!(s.file_name.ends_with(".png"));
        let img = image::open(w.image_path(s.image_id).unwrap())?;
        assert_eq!((img.width(), img.height()), (56, 56));
        for o in &s.objects {
            assert!(o.bbox[0] >= 0.0 && o.bbox[0] + o.bbox[2] <= 56.0);
            assert!(matches!(o.size, Size::Small | Size::Large));
        }
    }
    let aok = w.load_aokvqa()?;
    for a in &aok {
        check_answer(
            w.scene(a.image_id).unwrap(),
            &a.question,
            &a.choices,
            a.correct_choice_idx,
        )?;
    }
    Ok(())
}

#[test]
fn the_abs_pool_is_the_pool_images_only() -> Result<()> {
    let (_d, w) = shared();
    let pool = w.pool_image_ids();
    assert_eq!(pool.len(), w.config().pool_images);
    let base: std::collections::BTreeSet<u64> = [BaseVariant::Unbalanced, BaseVariant::Balanced]
        .into_iter()
        .flat_map(|v| w.load_base_vqa(v).unwrap())
        .map(|r| r.image_id)
        .collect();
    assert!(!base.is_empty());
    assert!(
        pool.iter().all(|id| !base.contains(id)),
        "a base image in the pool"
    );
    // Every train2017 image is either in the pool or in a base set.
    assert_eq!(w.train_image_ids().len(), pool.len() + base.len());
    Ok(())
}

#[test]
fn unique_colors_and_background_contrast_knobs() -> Result<()> {
    use mde_world::scene::{sample_scene, SceneRequest};
    use rand::SeedableRng;
    let cfg = WorldConfig {
        unique_colors: true,
        max_objects: 4,
        min_objects: 4,
        ..WorldConfig::tiny(3)
    };
    cfg.validate()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for id in 0..50 {
        let s = sample_scene(&cfg, &mut rng, id, "train", SceneRequest::default());
        let mut colors: Vec<_> = s.objects.iter().map(|o| o.color).collect();
        colors.sort();
        colors.dedup();
        assert_eq!(
            colors.len(),
            s.objects.len(),
            "image {id}: a colour repeats"
        );
    }
    assert!(WorldConfig {
        max_objects: 5,
        ..cfg.clone()
    }
    .validate()
    .is_err());
    // Contrast 0 renders stripes and checkers as plain as a plain background (the light sensor
    // noise only); the default contrast does not.
    let spread = |contrast: f64| -> f32 {
        let cfg = WorldConfig {
            background_contrast: contrast,
            min_objects: 1,
            max_objects: 2,
            ..WorldConfig::tiny(3)
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let req = SceneRequest {
            quality: Some(Quality::Clean),
            background: Some(BackgroundKind::Checkerboard),
            min_objects: 1,
        };
        let mut s = sample_scene(&cfg, &mut rng, 0, "train", req);
        s.objects.clear();
        let img = mde_world::render::render(&s);
        let v: Vec<f32> = img.data.iter().step_by(3).map(|&x| x as f32).collect();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    assert!(spread(0.0) < 4.0, "{}", spread(0.0));
    assert!(spread(0.45) > 20.0, "{}", spread(0.45));
    Ok(())
}
