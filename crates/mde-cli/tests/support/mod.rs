//! Fixture locations and the tiny model's config, shared by the CLI tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The tiny MiniGPT-4 fixture (`MDE_GOLDEN_DIR`, default `../shared/fixtures/minigpt4-tiny`).
pub fn golden() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

/// The scorer conformance fixtures (`MDE_EVAL_FIXTURES`, default `../shared/fixtures/eval`).
pub fn eval_fx() -> PathBuf {
    match std::env::var_os("MDE_EVAL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/eval"),
    }
}

/// A model TOML for `mde eval` / `mde index` (the `EvalModelConfig` keys) naming these
/// weights on the CPU, followed by `extra` lines.
pub fn model_toml(blip2: &Path, vicuna: &Path, projector: &Path, extra: &str) -> String {
    format!(
        "blip2 = \"{}\"\nvicuna = \"{}\"\nprojector = \"{}\"\ndevice = \"cpu\"\n{extra}",
        blip2.display(),
        vicuna.display(),
        projector.display()
    )
}

/// [`model_toml`] of the tiny fixture model.
pub fn tiny_model_toml() -> String {
    let g = golden();
    model_toml(
        &g.join("blip2"),
        &g.join("vicuna"),
        &g.join("minigpt4/pretrained_minigpt4.pth"),
        "",
    )
}

/// A COCO instances file of `n` images (ids 1..=n) copied from the fixture's PNGs into
/// `dir/images` (one box each, one category): the image set `mde index` and `mde sample`
/// tests run on.
pub fn fixture_coco(dir: &Path, n: u64) -> anyhow::Result<FixtureCoco> {
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(golden())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    anyhow::ensure!(
        !pngs.is_empty(),
        "no fixture images in {}",
        golden().display()
    );
    let imgs = dir.join("images");
    std::fs::create_dir_all(&imgs)?;
    let (mut images, mut anns, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for id in 1..=n {
        let name = format!("{id:06}.png");
        std::fs::copy(&pngs[id as usize % pngs.len()], imgs.join(&name))?;
        images.push(serde_json::json!({"id": id, "file_name": name, "width": 32, "height": 32}));
        anns.push(
            serde_json::json!({"id": id, "image_id": id, "category_id": 1,
            "bbox": [1.0, 1.0, 10.0, 10.0], "area": 100.0}),
        );
        files.push((id, imgs.join(&name)));
    }
    let inst = dir.join("instances.json");
    std::fs::write(
        &inst,
        serde_json::json!({"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "shape"}]})
        .to_string(),
    )?;
    Ok(FixtureCoco {
        instances: inst,
        images: imgs,
        files,
    })
}

/// What [`fixture_coco`] wrote.
pub struct FixtureCoco {
    /// The COCO instances file.
    pub instances: PathBuf,
    /// The image folder.
    pub images: PathBuf,
    /// Each image's id and path.
    pub files: Vec<(u64, PathBuf)>,
}

/// Every file below `dir` (relative path -> bytes), leaving out the entries named in `skip`
/// (relative paths; a folder's whole subtree).
pub fn files(
    dir: &Path,
    skip: &[&str],
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    fn walk(
        root: &Path,
        d: &Path,
        skip: &[&str],
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) -> anyhow::Result<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.display().to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, skip, out)?;
            } else {
                out.insert(rel, std::fs::read(&p)?);
            }
        }
        Ok(())
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, skip, &mut out)?;
    Ok(out)
}
