//! The data and evaluation sections of the check: COCO annotation files from their first KB,
//! JSONL datasets from their first record, benchmark files and image folders.

use super::*;

impl Checker {
    pub(super) fn data(&mut self, cfg: &LoopConfig) {
        let d = &cfg.data;
        let real = cfg.world.is_none();
        let mut first_image = None;
        for (sec, path, what) in [
            ("data.coco_instances", &d.coco_instances, "instances"),
            ("data.coco_captions", &d.coco_captions, "captions"),
        ] {
            match path {
                Some(p) if self.require_file(sec, p, &format!("COCO {what} JSON")) => {
                    match coco_head(p) {
                        Ok((keys, id)) => {
                            self.push(sec, Some(p), Status::Ok, format!("COCO JSON ({keys})"));
                            if first_image.is_none() {
                                first_image = id;
                            }
                        }
                        Err(e) => self.push(sec, Some(p), Status::Invalid, e),
                    }
                }
                Some(_) => {} // reported by require_file
                None if real => self.push(
                    sec,
                    None,
                    Status::Missing,
                    format!("not set: ABS needs the COCO {what} of the query-image pool without a [world]"),
                ),
                None => {}
            }
        }
        match &d.coco_images {
            Some(p) if self.require_dir("data.coco_images", p, "COCO image folder") => {
                match first_image {
                    Some(id) => {
                        // Same default as the loop's pool reader.
                        let pattern = if d.image_pattern.is_empty() {
                            "{image_id:012}.jpg"
                        } else {
                            d.image_pattern.as_str()
                        };
                        let f = p.join(image_file_name(pattern, id));
                        if f.is_file() {
                            self.push(
                                "data.coco_images",
                                Some(&f),
                                Status::Ok,
                                format!("image {id} found via image_pattern"),
                            );
                        } else {
                            self.push(
                                "data.coco_images",
                                Some(&f),
                                Status::Missing,
                                format!(
                                    "first annotated image {id} not found via image_pattern {:?}",
                                    d.image_pattern
                                ),
                            );
                        }
                    }
                    None => self.push("data.coco_images", Some(p), Status::Ok, "folder exists"),
                }
            }
            Some(_) => {} // reported by require_dir
            None if real => self.push(
                "data.coco_images",
                None,
                Status::Missing,
                "not set: the query-image pool's folder",
            ),
            None => {}
        }
        if real && d.base_datasets.is_empty() && cfg.train.replay_ratio > 0.0 {
            self.push(
                "data.base_datasets",
                None,
                Status::Missing,
                format!(
                    "none given but [train] replay_ratio is {}",
                    cfg.train.replay_ratio
                ),
            );
        }
        for ds in &d.base_datasets {
            let sec = format!("data.base_datasets.{}", ds.name);
            if !self.require_file(&sec, &ds.path, "dataset file") {
                if let Some(r) = &ds.image_root {
                    self.require_dir(&sec, r, "image_root");
                }
                continue;
            }
            let root = ds
                .image_root
                .clone()
                .unwrap_or_else(|| ds.path.parent().map(Path::to_path_buf).unwrap_or_default());
            if ds.image_root.is_some() && !self.require_dir(&sec, &root, "image_root") {
                continue;
            }
            match first_record(&ds.path, ds.format, &root, &ds.image_pattern) {
                Ok(Some(img)) if img.is_file() => self.push(
                    &sec,
                    Some(&ds.path),
                    Status::Ok,
                    "first record parses, its image exists",
                ),
                Ok(Some(img)) => self.push(
                    &sec,
                    Some(&img),
                    Status::Missing,
                    format!(
                        "image of the first record of {} not found",
                        ds.path.display()
                    ),
                ),
                Ok(None) => self.push(&sec, Some(&ds.path), Status::Ok, "file exists"),
                Err(e) => self.push(&sec, Some(&ds.path), Status::Invalid, e),
            }
        }
    }

    // ------------------------------------------------------------------------------ eval

    pub(super) fn eval(&mut self, cfg: &LoopConfig) {
        for (sec, b) in [
            ("eval.mine", &cfg.eval.mine),
            ("eval.report", &cfg.eval.report),
        ] {
            match b {
                Some(b) => self.bench(sec, b),
                None if cfg.world.is_some() => self.push(
                    sec,
                    None,
                    Status::Note,
                    if sec == "eval.mine" {
                        "the world's A-OKVQA-format set (generated on first use)"
                    } else {
                        "the world's MMBench-format circular set (generated on first use)"
                    },
                ),
                None if sec == "eval.report" => self.push(
                    sec,
                    None,
                    Status::Note,
                    "no reporting benchmark: the report uses the mining benchmark",
                ),
                None => {}
            }
        }
    }

    pub(super) fn bench(&mut self, sec: &str, b: &BenchSpec) {
        let bench = match b.benchmark.parse::<Benchmark>() {
            Ok(x) => Some(x),
            Err(e) => {
                self.push(sec, None, Status::Invalid, e);
                None
            }
        };
        if let (Some(bench), Some(m)) = (bench, &b.method) {
            match m.parse::<Method>() {
                Err(e) => self.push(sec, None, Status::Invalid, e),
                Ok(m) => {
                    let ok = match bench {
                        Benchmark::MMBench | Benchmark::Mme => m == Method::Generate,
                        Benchmark::Aokvqa => m == Method::Rank,
                        Benchmark::SeedBench => true,
                    };
                    if !ok {
                        self.push(
                            sec,
                            None,
                            Status::Invalid,
                            format!(
                                "{bench} is evaluated by {:?}, not {m:?}",
                                bench.default_method()
                            ),
                        );
                    }
                }
            }
        }
        if b.path.exists() {
            let head = if b.path.is_file() {
                read_head(&b.path, 4096)
            } else {
                Ok(String::new())
            };
            let shape = match (bench, head) {
                (_, Err(e)) => Err(e),
                (Some(Benchmark::MMBench), Ok(h)) => {
                    let cols: Vec<&str> = h.lines().next().unwrap_or("").split('\t').collect();
                    if ["question", "A", "B"].iter().all(|c| cols.contains(c)) {
                        Ok(format!("MMBench TSV ({} columns)", cols.len()))
                    } else {
                        Err("MMBench TSV header lacks question / A / B columns".to_string())
                    }
                }
                (Some(Benchmark::Aokvqa), Ok(h)) if b.path.is_file() => {
                    if h.trim_start_matches('\u{feff}')
                        .trim_start()
                        .starts_with('[')
                    {
                        Ok("A-OKVQA JSON".to_string())
                    } else {
                        Err("A-OKVQA file does not start with a JSON array".to_string())
                    }
                }
                (_, Ok(_)) => Ok("exists".to_string()),
            };
            match shape {
                Ok(d) => self.push(
                    sec,
                    Some(&b.path),
                    Status::Ok,
                    format!("{} {d}", b.benchmark),
                ),
                Err(e) => self.push(sec, Some(&b.path), Status::Invalid, e),
            }
        } else {
            self.push(
                sec,
                Some(&b.path),
                Status::Missing,
                format!("{} benchmark file not found", b.benchmark),
            );
        }
        if let Some(i) = &b.images {
            let s = format!("{sec}.images");
            if self.require_dir(&s, i, "benchmark image folder") {
                self.push(s, Some(i), Status::Ok, "folder exists");
            }
        }
        if let Some(t) = &b.taxonomy {
            match mde_core::taxonomy::Taxonomy::load(t) {
                Ok(tx) => self.push(
                    format!("{sec}.taxonomy"),
                    None,
                    Status::Ok,
                    format!("{t}: {} question types", tx.types.len()),
                ),
                Err(e) => self.push(
                    format!("{sec}.taxonomy"),
                    None,
                    Status::Invalid,
                    e.to_string(),
                ),
            }
        }
    }
}

fn read_head(p: &Path, max: usize) -> Result<String, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::with_capacity(max);
    f.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Looks at the first 64 KB of a COCO annotation file: a JSON object with COCO's top-level
/// keys; returns the keys seen and the id of the first image entry when it lies in that window.
fn coco_head(p: &Path) -> Result<(String, Option<u64>), String> {
    let head = read_head(p, 64 << 10)?;
    let t = head.trim_start_matches('\u{feff}').trim_start();
    if !t.starts_with('{') {
        return Err("does not start with a JSON object: not a COCO annotation file".into());
    }
    let keys: Vec<&str> = ["info", "licenses", "images", "annotations", "categories"]
        .into_iter()
        .filter(|k| t.contains(&format!("\"{k}\"")))
        .collect();
    if !keys.contains(&"images") && !keys.contains(&"annotations") {
        return Err(
            "no \"images\" or \"annotations\" key in its first 64 KB: not a COCO annotation file"
                .into(),
        );
    }
    // The first image entry is a flat object: `"images": [{... "id": N}`.
    let id = t.find("\"images\"").and_then(|i| {
        let rest = &t[i..];
        let open = rest.find('{')?;
        let close = rest[open..].find('}')? + open;
        let obj: serde_json::Value = serde_json::from_str(&rest[open..=close]).ok()?;
        obj["id"].as_u64()
    });
    Ok((keys.join(", "), id))
}

/// The image path of a dataset's first record, if the file is JSONL (or a JSON array whose
/// first record lies in the first 1 MB). Errors name what does not parse.
fn first_record(
    path: &Path,
    format: DatasetFormat,
    root: &Path,
    pattern: &str,
) -> Result<Option<PathBuf>, String> {
    let head = read_head(path, 1 << 20)?;
    let t = head.trim_start_matches('\u{feff}').trim_start();
    let first: &str = if t.starts_with('[') {
        // A JSON array: take the first flat-enough object if it parses on its own.
        let Some(open) = t.find('{') else {
            return Ok(None);
        };
        let mut depth = 0usize;
        let mut end = None;
        let mut in_str = false;
        let mut esc = false;
        for (i, ch) in t[open..].char_indices() {
            match ch {
                _ if esc => esc = false,
                '\\' if in_str => esc = true,
                '"' => in_str = !in_str,
                '{' if !in_str => depth += 1,
                '}' if !in_str => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => &t[open..=e],
            None => return Ok(None),
        }
    } else {
        match t.lines().next() {
            Some(l) if head.len() < (1 << 20) || t.contains('\n') => l,
            _ => return Ok(None),
        }
    };
    match format {
        DatasetFormat::Records => {
            let r: TrainRecord = serde_json::from_str(first)
                .map_err(|e| format!("first record is not an mde_train TrainRecord: {e}"))?;
            r.to_sample().map_err(|e| format!("first record: {e}"))?;
            Ok(Some(root.join(&r.image)))
        }
        DatasetFormat::GptvqaV1 => {
            let r: mde_core::records::GptVqaV1 = serde_json::from_str(first)
                .map_err(|e| format!("first record is not a GPTVQA v1 record: {e}"))?;
            Ok(Some(root.join(image_file_name(pattern, r.image_id))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn coco_head_reads_first_image() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.json");
        std::fs::write(
            &p,
            r#"{"info": {"year": 2017}, "images": [{"file_name": "000000000009.jpg", "id": 9}, {"id": 10}], "annotations": []}"#,
        )
        .unwrap();
        let (keys, id) = coco_head(&p).unwrap();
        assert_eq!(id, Some(9));
        assert!(keys.contains("annotations"), "{keys}");
        std::fs::write(&p, "[1, 2]").unwrap();
        assert!(coco_head(&p).is_err());
    }
}
