//! `mde loop --check`: the released 7B config in a clean checkout, and the shape checks on
//! real-format files (the golden tiny fixture, sizes read from its configs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use mde_loop::check::{check, CheckReport, Status};
use mde_loop::config::LoopConfig;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> PathBuf {
    match std::env::var_os("MDE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        }
    }
}

fn json(p: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
    )?)
}

fn item<'a>(r: &'a CheckReport, section: &str) -> &'a mde_loop::check::CheckItem {
    r.items
        .iter()
        .find(|i| i.section == section)
        .unwrap_or_else(|| panic!("no item {section} in\n{}", r.to_text()))
}

/// The 7B config copied one folder below an empty temp dir, so every `../models`, `../data`
/// path points at nothing, whatever this machine holds.
fn clean_copy(dir: &Path, edit: impl Fn(String) -> String) -> Result<PathBuf> {
    let text = std::fs::read_to_string(repo_root().join("configs/minigpt4-7b.toml"))?;
    std::fs::create_dir_all(dir.join("configs"))?;
    let p = dir.join("configs/minigpt4-7b.toml");
    std::fs::write(&p, edit(text))?;
    Ok(p)
}

#[test]
fn released_7b_config_parses_and_reports_every_missing_input() -> Result<()> {
    // The file as shipped parses.
    let real = LoopConfig::load(repo_root().join("configs/minigpt4-7b.toml"))?;
    assert!(real.world.is_none());
    let dir = tempfile::tempdir()?;
    let cfg = LoopConfig::load(clean_copy(dir.path(), |t| t)?)?;
    let r = check(&cfg, Some(&dir.path().join("runs/7b")));
    let text = r.to_text();
    assert!(!r.is_ok(), "{text}");
    let mut expected: Vec<String> = [
        "model.blip2",
        "model.eva_vit",
        "model.vicuna",
        "model.projector",
        "data.coco_instances",
        "data.coco_captions",
        "data.coco_images",
        "eval.mine",
        "eval.report",
        "eval.mine.images",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in &cfg.data.base_datasets {
        expected.push(format!("data.base_datasets.{}", d.name));
    }
    for s in &expected {
        assert!(
            r.section(s).any(|i| i.status == Status::Missing),
            "{s} should be reported missing:\n{text}"
        );
    }
    // Every reported path lies in the empty temp dir or is the output folder (nothing else
    // of the machine was consulted), and the summary counts the problems.
    assert!(
        text.trim_end()
            .ends_with(&format!("{} problems", r.problems())),
        "{text}"
    );
    assert!(r.problems() >= expected.len());
    // The key variable is reported set / not set as the environment says, never its value.
    let key = item(&r, "teacher.api_key_env");
    match std::env::var("OPENAI_API_KEY") {
        Ok(v) if !v.is_empty() => {
            assert_eq!(key.status, Status::Ok);
            assert!(!text.contains(&v) && !serde_json::to_string(&r)?.contains(&v));
        }
        _ => {
            assert_eq!(key.status, Status::Missing, "{text}");
            assert!(
                key.detail.contains("OPENAI_API_KEY is not set"),
                "{}",
                key.detail
            );
        }
    }
    assert_eq!(item(&r, "train.lora").status, Status::Ok);
    assert_eq!(item(&r, "output").status, Status::Ok, "{text}");
    // JSON form round-trips through serde_json.
    let v: serde_json::Value = serde_json::to_value(&r)?;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(r.items.len()));
    Ok(())
}

#[test]
fn api_key_is_reported_set_without_its_value() -> Result<()> {
    // PATH is always set: use it as the "key" so nothing mutates the environment.
    let path_value = std::env::var("PATH")?;
    assert!(!path_value.is_empty());
    let dir = tempfile::tempdir()?;
    let p = clean_copy(dir.path(), |t| {
        t.replace("api_key_env = \"OPENAI_API_KEY\"", "api_key_env = \"PATH\"")
    })?;
    let r = check(&LoopConfig::load(p)?, None);
    let key = item(&r, "teacher.api_key_env");
    assert_eq!(key.status, Status::Ok);
    assert!(key.detail.contains("PATH is set"), "{}", key.detail);
    assert!(!r.to_text().contains(&path_value));
    assert!(!serde_json::to_string(&r)?.contains(&path_value));
    // An unset variable on a public endpoint is a problem.
    let p = clean_copy(dir.path(), |t| {
        t.replace(
            "api_key_env = \"OPENAI_API_KEY\"",
            "api_key_env = \"MDE_CHECK_TEST_VARIABLE_THAT_IS_NEVER_SET\"",
        )
    })?;
    let r = check(&LoopConfig::load(p)?, None);
    assert_eq!(item(&r, "teacher.api_key_env").status, Status::Missing);
    // A malformed URL is invalid, without any network call.
    let p = clean_copy(dir.path(), |t| {
        t.replace("https://api.openai.com/v1", "api.openai.com/v1")
    })?;
    let r = check(&LoopConfig::load(p)?, None);
    assert_eq!(item(&r, "teacher.base_url").status, Status::Invalid);
    Ok(())
}

fn write_projector(path: &Path, out_dim: usize, in_dim: usize) -> Result<()> {
    let w = Tensor::zeros((out_dim, in_dim), DType::F32, &Device::Cpu)?;
    let b = Tensor::zeros(out_dim, DType::F32, &Device::Cpu)?;
    candle_core::safetensors::save(
        &[("llama_proj.weight", w), ("llama_proj.bias", b)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        path,
    )?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn model_config(dir: &Path, blip2: &str, extra: &str) -> Result<LoopConfig> {
    let text = format!(
        r#"
[model]
kind = "minigpt4"
blip2 = "{blip2}"
vicuna = "vicuna"
projector = "projector.safetensors"
{extra}

[eval.mine]
benchmark = "aokvqa"
path = "aokvqa_val.json"

[teacher]
kind = "openai"
[teacher.endpoint]
base_url = "http://127.0.0.1:8000/v1"
model = "local"
"#
    );
    let p = dir.join("loop.toml");
    std::fs::write(&p, text)?;
    Ok(LoopConfig::load(&p)?)
}

#[test]
fn projector_shape_mismatch_names_both_shapes_and_the_fix_is_ok() -> Result<()> {
    let g = golden();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    copy_dir(&g.join("vicuna"), &d.join("vicuna"))?;
    copy_dir(&g.join("blip2"), &d.join("blip2"))?;
    let llm = json(&d.join("vicuna/config.json"))?["hidden_size"]
        .as_u64()
        .context("vicuna hidden_size")? as usize;
    let qf = json(&d.join("blip2/config.json"))?["qformer_config"]["hidden_size"]
        .as_u64()
        .context("qformer hidden_size")? as usize;
    std::fs::write(d.join("aokvqa_val.json"), "[]")?;

    // A projector for another LLM width.
    let wrong = llm + 16;
    write_projector(&d.join("projector.safetensors"), wrong, qf)?;
    let cfg = model_config(d, "blip2", "")?;
    let r = check(&cfg, None);
    let text = r.to_text();
    assert_eq!(item(&r, "model.blip2").status, Status::Ok, "{text}");
    assert_eq!(item(&r, "model.vicuna").status, Status::Ok, "{text}");
    assert_eq!(item(&r, "model.tokenizer").status, Status::Ok, "{text}");
    assert_eq!(item(&r, "model.projector").status, Status::Ok, "{text}");
    let s = item(&r, "model.shapes");
    assert_eq!(s.status, Status::Mismatch, "{text}");
    assert!(
        s.detail
            .contains(&format!("llama_proj.weight is [{wrong}, {qf}]"))
            && s.detail.contains(&format!("vicuna hidden_size is {llm}")),
        "{}",
        s.detail
    );
    assert!(!r.is_ok());

    // Right LLM width, wrong Q-Former width.
    write_projector(&d.join("projector.safetensors"), llm, qf + 8)?;
    let r = check(&model_config(d, "blip2", "")?, None);
    let s = item(&r, "model.shapes");
    assert_eq!(s.status, Status::Mismatch);
    assert!(
        s.detail.contains(&format!("Q-Former hidden size is {qf}")),
        "{}",
        s.detail
    );

    // The fix: [llm hidden, qformer hidden].
    write_projector(&d.join("projector.safetensors"), llm, qf)?;
    let r = check(&model_config(d, "blip2", "")?, None);
    assert_eq!(
        item(&r, "model.shapes").status,
        Status::Ok,
        "{}",
        r.to_text()
    );
    assert!(r.section("model.shapes").all(|i| !i.status.is_problem()));
    // The model inputs are all fine now (eval.mine file exists, teacher is local).
    assert!(
        r.items
            .iter()
            .filter(|i| i.section.starts_with("model."))
            .all(|i| !i.status.is_problem()),
        "{}",
        r.to_text()
    );
    Ok(())
}

#[test]
fn seven_b_llm_with_a_13b_projector_gets_the_hint() -> Result<()> {
    let g = golden();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    copy_dir(&g.join("vicuna"), &d.join("vicuna"))?;
    copy_dir(&g.join("blip2"), &d.join("blip2"))?;
    let qf = json(&d.join("blip2/config.json"))?["qformer_config"]["hidden_size"]
        .as_u64()
        .context("qformer hidden_size")? as usize;
    // A config that claims the 7B width over the tiny weights: the embedding disagrees too.
    let mut vc = json(&d.join("vicuna/config.json"))?;
    vc["hidden_size"] = 4096.into();
    std::fs::write(d.join("vicuna/config.json"), serde_json::to_string(&vc)?)?;
    std::fs::write(d.join("aokvqa_val.json"), "[]")?;
    write_projector(&d.join("projector.safetensors"), 5120, qf)?;
    let r = check(&model_config(d, "blip2", "")?, None);
    let s = item(&r, "model.shapes");
    assert_eq!(s.status, Status::Mismatch);
    assert!(
        s.detail.contains(&format!("[5120, {qf}]"))
            && s.detail.contains("4096")
            && s.detail.contains("13B projector with a 7B LLM"),
        "{}",
        s.detail
    );
    let v = item(&r, "model.vicuna");
    assert_eq!(v.status, Status::Mismatch, "{}", r.to_text());
    assert!(
        v.detail.contains("model.embed_tokens.weight"),
        "{}",
        v.detail
    );
    Ok(())
}

#[test]
fn lavis_checkpoints_are_read_from_their_pickle_index() -> Result<()> {
    let g = golden();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    copy_dir(&g.join("vicuna"), &d.join("vicuna"))?;
    std::fs::write(d.join("aokvqa_val.json"), "[]")?;
    // The real MiniGPT-4 projector .pth of the fixture, with the LAVIS BLIP-2 + raw EVA ViT.
    let blip2 = g.join("lavis/blip2_pretrained.pth");
    let eva = g.join("lavis/eva_vit_g.pth");
    let proj = g.join("minigpt4/pretrained_minigpt4.pth");
    let text = format!(
        r#"
[model]
kind = "minigpt4"
blip2 = "{}"
eva_vit = "{}"
vicuna = "vicuna"
projector = "{}"
[eval.mine]
benchmark = "aokvqa"
path = "aokvqa_val.json"
[teacher]
kind = "openai"
[teacher.endpoint]
base_url = "http://127.0.0.1:8000/v1"
"#,
        blip2.display(),
        eva.display(),
        proj.display()
    );
    std::fs::write(d.join("loop.toml"), text)?;
    let r = check(&LoopConfig::load(d.join("loop.toml"))?, None);
    let t = r.to_text();
    for s in [
        "model.blip2",
        "model.eva_vit",
        "model.vicuna",
        "model.projector",
        "model.shapes",
    ] {
        assert_eq!(item(&r, s).status, Status::Ok, "{s}\n{t}");
    }
    // The Q-Former width was read from query_tokens: it equals the HF config's.
    let qf = json(&g.join("blip2/config.json"))?["qformer_config"]["hidden_size"]
        .as_u64()
        .context("qformer hidden_size")?;
    assert!(
        item(&r, "model.blip2")
            .detail
            .contains(&format!("Q-Former hidden {qf}")),
        "{t}"
    );
    // A projector that is not a checkpoint at all is invalid, not a panic.
    std::fs::write(d.join("junk.pth"), b"not a zip")?;
    let text = std::fs::read_to_string(d.join("loop.toml"))?
        .replace(&proj.display().to_string(), "junk.pth");
    std::fs::write(d.join("loop.toml"), text)?;
    let r = check(&LoopConfig::load(d.join("loop.toml"))?, None);
    assert_eq!(item(&r, "model.projector").status, Status::Invalid);
    Ok(())
}

#[test]
fn data_files_are_checked_from_their_first_bytes() -> Result<()> {
    let g = golden();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("coco/train2017"))?;
    std::fs::write(
        d.join("coco/instances.json"),
        r#"{"info": {}, "images": [{"file_name": "000000000042.jpg", "id": 42, "width": 8, "height": 8}], "annotations": [], "categories": []}"#,
    )?;
    std::fs::write(d.join("coco/captions.json"), "[\"not coco\"]")?;
    std::fs::copy(
        g.join("image.png"),
        d.join("coco/train2017/000000000042.jpg"),
    )?;
    std::fs::write(
        d.join("base.jsonl"),
        "{\"image\": \"coco/train2017/000000000042.jpg\", \"kind\": \"caption\", \"answer\": \"a red square\"}\n",
    )?;
    std::fs::write(
        d.join("broken.jsonl"),
        "{\"image\": \"nowhere.jpg\", \"kind\": \"qma\", \"question\": \"q\"}\n",
    )?;
    std::fs::write(d.join("val.json"), "[]")?;
    let text = r#"
[data]
coco_instances = "coco/instances.json"
coco_captions = "coco/captions.json"
coco_images = "coco/train2017"
image_pattern = "{image_id:012}.jpg"
[[data.base_datasets]]
name = "good"
path = "base.jsonl"
image_root = "."
[[data.base_datasets]]
name = "broken"
path = "broken.jsonl"
[model]
kind = "minigpt4"
blip2 = "nowhere/blip2"
vicuna = "nowhere/vicuna"
[eval.mine]
benchmark = "aokvqa"
path = "val.json"
method = "generate"
taxonomy = "no_such_taxonomy.json"
[eval.report]
benchmark = "mmbench"
path = "val.json"
[teacher]
kind = "openai"
[teacher.endpoint]
base_url = "http://localhost:11434/v1"
model = "llava"
[train.lora]
target_modules = ["q_proj", "qkv"]
"#;
    // An unknown benchmark name fails when the config is read, naming the section, before
    // any check or work.
    std::fs::write(
        d.join("bad-bench.toml"),
        text.replace("benchmark = \"mmbench\"", "benchmark = \"nosuchbench\""),
    )?;
    let e = LoopConfig::load(d.join("bad-bench.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[eval.report] benchmark") && e.contains("nosuchbench"),
        "{e}"
    );
    std::fs::write(d.join("loop.toml"), text)?;
    let r = check(&LoopConfig::load(d.join("loop.toml"))?, None);
    let t = r.to_text();
    assert_eq!(item(&r, "data.coco_instances").status, Status::Ok, "{t}");
    assert_eq!(
        item(&r, "data.coco_captions").status,
        Status::Invalid,
        "{t}"
    );
    let img = item(&r, "data.coco_images");
    assert_eq!(img.status, Status::Ok, "{t}");
    assert!(img.detail.contains("42"), "{t}");
    assert_eq!(
        item(&r, "data.base_datasets.good").status,
        Status::Ok,
        "{t}"
    );
    assert_eq!(
        item(&r, "data.base_datasets.broken").status,
        Status::Invalid,
        "{t}"
    );
    assert!(
        r.section("eval.mine").any(|i| i.status == Status::Invalid),
        "aokvqa by generation\n{t}"
    );
    assert_eq!(
        item(&r, "eval.mine.taxonomy").status,
        Status::Invalid,
        "{t}"
    );
    assert!(
        r.section("eval.report")
            .any(|i| i.status == Status::Invalid),
        "{t}"
    );
    assert_eq!(item(&r, "train.lora").status, Status::Invalid, "{t}");
    assert!(item(&r, "train.lora").detail.contains("qkv"));
    // Local endpoint without a key: a note, not a problem.
    assert_eq!(item(&r, "teacher.api_key_env").status, Status::Note, "{t}");
    assert_eq!(item(&r, "model.blip2").status, Status::Missing, "{t}");
    assert_eq!(item(&r, "model.vicuna").status, Status::Missing, "{t}");

    // The image the first annotation names is gone: reported missing.
    std::fs::remove_file(d.join("coco/train2017/000000000042.jpg"))?;
    let r = check(&LoopConfig::load(d.join("loop.toml"))?, None);
    assert_eq!(item(&r, "data.coco_images").status, Status::Missing);
    assert_eq!(item(&r, "data.base_datasets.good").status, Status::Missing);
    Ok(())
}
