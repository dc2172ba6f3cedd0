//! Bad config corpus: a valid tiny config of each kind (Vicuna `config.json`, BLIP-2
//! `config.json`, the BLIP-2 hint of LAVIS files, PEFT `adapter_config.json`) is written to a
//! temp dir, then many mutated variants. Each load must return an error naming the file and the
//! key, and must never panic (a panic fails the test with the case name).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::{json, Value};

use minigpt4::config::{LlamaConfig, MiniGpt4Config, QFormerConfig, VisionConfig};
use minigpt4::generation::GenerationConfig;
use minigpt4::llama::LoraConfig;
use minigpt4::weights::{self, Location};

fn golden() -> PathBuf {
    std::env::var("MDE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/minigpt4-tiny")
        })
}

fn vicuna() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 512, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
    })
}

fn blip2() -> Value {
    json!({
        "model_type": "blip-2", "num_query_tokens": 8,
        "vision_config": {
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "patch_size": 8, "image_size": 32, "layer_norm_eps": 1e-6
        },
        "qformer_config": {
            "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 100, "cross_attention_frequency": 2,
            "encoder_hidden_size": 64, "layer_norm_eps": 1e-12
        }
    })
}

/// How a case changes the valid JSON.
enum Mutation {
    /// Set `path` (dot-separated) to a value.
    Set(&'static str, Value),
    /// Remove `path`.
    Remove(&'static str),
    /// Replace the whole text.
    Text(String),
    /// Replace `from` by `to` in the serialized text (values JSON cannot hold, like NaN).
    Replace(&'static str, &'static str),
    /// Several `Set`/`Remove` in a row.
    Many(Vec<Mutation>),
}
use Mutation::*;

fn apply(base: &Value, m: &Mutation) -> String {
    if let Many(ms) = m {
        let v = ms.iter().fold(base.clone(), |v, m| {
            serde_json::from_str(&apply(&v, m)).unwrap()
        });
        return serde_json::to_string_pretty(&v).unwrap();
    }
    let mut v = base.clone();
    match m {
        Set(path, _) | Remove(path) => {
            let keys: Vec<&str> = path.split('.').collect();
            let (last, parents) = keys.split_last().unwrap();
            let mut cur = &mut v;
            for k in parents {
                cur = cur.get_mut(*k).unwrap();
            }
            let obj = cur.as_object_mut().unwrap();
            match m {
                Set(_, x) => {
                    obj.insert(last.to_string(), x.clone());
                }
                _ => {
                    obj.remove(*last);
                }
            }
            serde_json::to_string_pretty(&v).unwrap()
        }
        Text(t) => t.clone(),
        Replace(from, to) => {
            let s = serde_json::to_string_pretty(&v).unwrap();
            assert!(s.contains(from), "`{from}` not in the valid config");
            s.replacen(from, to, 1)
        }
        Many(_) => unreachable!(),
    }
}

/// Runs `load` on every case; each must return an error containing the file name and every
/// `want` string. Panics are caught and reported with the case name.
fn run_corpus(
    kind: &str,
    base: &Value,
    file_name: &str,
    cases: &[(&str, Mutation, &[&str])],
    load: &dyn Fn(&Path) -> minigpt4::Result<()>,
) {
    let mut failures = Vec::new();
    for (name, m, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(file_name);
        std::fs::write(&file, apply(base, m)).unwrap();
        let got = catch_unwind(AssertUnwindSafe(|| load(dir.path())));
        match got {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{kind}/{name}: PANICKED: {msg}"));
            }
            Ok(Ok(())) => failures.push(format!("{kind}/{name}: accepted")),
            Ok(Err(e)) => {
                let s = e.to_string();
                println!("{kind}/{name}: {s}");
                let path = file.display().to_string();
                if !s.contains(&path) {
                    failures.push(format!("{kind}/{name}: error does not name {path}: {s}"));
                }
                for w in *want {
                    if !s.contains(w) {
                        failures.push(format!("{kind}/{name}: error lacks `{w}`: {s}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn load_vicuna(dir: &Path) -> minigpt4::Result<()> {
    weights::load_llama(&dir.display().to_string(), DType::F32, &Device::Cpu).map(|_| ())
}

fn load_blip2(dir: &Path) -> minigpt4::Result<()> {
    weights::load_blip2_hf(&Location::Dir(dir.to_path_buf()), DType::F32, &Device::Cpu).map(|_| ())
}

/// The valid configs get past the config checks: with the fixture weights they load; without
/// weights the error is about the missing weights, not the config.
#[test]
fn valid_tiny_configs_pass() {
    let g = golden();
    for (base, sub, load) in [
        (
            vicuna(),
            "vicuna",
            load_vicuna as fn(&Path) -> minigpt4::Result<()>,
        ),
        (blip2(), "blip2", load_blip2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), base.to_string()).unwrap();
        let weights = g.join(sub).join("model.safetensors");
        // The fixture's BLIP-2 sizes differ from the tiny config here; only Vicuna's match.
        if sub == "vicuna" && weights.is_file() {
            std::fs::copy(&weights, dir.path().join("model.safetensors")).unwrap();
            load(dir.path()).unwrap();
        } else {
            let e = load(dir.path()).unwrap_err().to_string();
            assert!(e.contains("model.safetensors"), "{sub}: {e}");
        }
    }
}

#[test]
fn vicuna_config_corpus() {
    let cases: Vec<(&str, Mutation, &[&str])> = vec![
        (
            "zero heads",
            Set("num_attention_heads", json!(0)),
            &["num_attention_heads = 0", "at least 1"],
        ),
        (
            "zero heads, no head_dim",
            Many(vec![
                Remove("head_dim"),
                Set("num_attention_heads", json!(0)),
            ]),
            &["num_attention_heads"],
        ),
        (
            "zero layers",
            Set("num_hidden_layers", json!(0)),
            &["num_hidden_layers = 0"],
        ),
        (
            "zero hidden",
            Set("hidden_size", json!(0)),
            &["hidden_size = 0"],
        ),
        (
            "zero intermediate",
            Set("intermediate_size", json!(0)),
            &["intermediate_size = 0"],
        ),
        (
            "zero vocab",
            Set("vocab_size", json!(0)),
            &["vocab_size = 0"],
        ),
        (
            "heads do not divide hidden",
            Many(vec![
                Remove("head_dim"),
                Remove("num_key_value_heads"),
                Set("num_attention_heads", json!(3)),
            ]),
            &["hidden_size = 64", "divisible by num_attention_heads (3)"],
        ),
        (
            "zero kv heads",
            Set("num_key_value_heads", json!(0)),
            &["num_key_value_heads = 0"],
        ),
        (
            "kv heads do not divide heads",
            Set("num_key_value_heads", json!(3)),
            &["num_key_value_heads = 3", "must divide num_attention_heads"],
        ),
        (
            "zero head_dim",
            Set("head_dim", json!(0)),
            &["head_dim = 0"],
        ),
        (
            "odd head_dim",
            Set("head_dim", json!(15)),
            &["head_dim = 15", "even"],
        ),
        (
            "negative eps",
            Set("rms_norm_eps", json!(-1e-6)),
            &["rms_norm_eps", "> 0"],
        ),
        (
            "zero eps",
            Set("rms_norm_eps", json!(0.0)),
            &["rms_norm_eps"],
        ),
        (
            "NaN eps",
            Replace("\"rms_norm_eps\": 1e-6", "\"rms_norm_eps\": NaN"),
            &["rms_norm_eps"],
        ),
        (
            "negative rope_theta",
            Set("rope_theta", json!(-10000.0)),
            &["rope_theta"],
        ),
        (
            "zero rope_parameters.rope_theta",
            Replace(
                "\"rope_theta\": 10000.0",
                "\"rope_parameters\": {\"rope_theta\": 0.0}",
            ),
            &["rope_parameters.rope_theta"],
        ),
        (
            "zero max_position_embeddings",
            Set("max_position_embeddings", json!(0)),
            &["max_position_embeddings = 0"],
        ),
        (
            "missing hidden_size",
            Remove("hidden_size"),
            &["missing field `hidden_size`"],
        ),
        (
            "missing num_attention_heads",
            Remove("num_attention_heads"),
            &["num_attention_heads"],
        ),
        (
            "heads is a string",
            Set("num_attention_heads", json!("four")),
            &["num_attention_heads", "invalid type"],
        ),
        (
            "negative heads",
            Set("num_attention_heads", json!(-4)),
            &["num_attention_heads"],
        ),
        (
            "fractional layers",
            Set("num_hidden_layers", json!(2.5)),
            &["num_hidden_layers"],
        ),
        (
            "eps is a string",
            Set("rms_norm_eps", json!("1e-6")),
            &["rms_norm_eps"],
        ),
        (
            "eos is an object",
            Set("eos_token_id", json!({"id": 2})),
            &["eos_token_id"],
        ),
        (
            "truncated JSON",
            Text("{\"vocab_size\": 512, \"hidd".into()),
            &["EOF"],
        ),
        ("empty file", Text(String::new()), &["EOF"]),
        ("not an object", Text("\"hello\"".into()), &["invalid type"]),
        (
            "trailing garbage",
            Text(format!("{} }}", vicuna())),
            &["trailing"],
        ),
    ];
    run_corpus("vicuna", &vicuna(), "config.json", &cases, &load_vicuna);
}

#[test]
fn blip2_config_corpus() {
    let cases: Vec<(&str, Mutation, &[&str])> = vec![
        (
            "vision zero heads",
            Set("vision_config.num_attention_heads", json!(0)),
            &["vision_config.num_attention_heads = 0", "at least 1"],
        ),
        (
            "vision heads do not divide hidden",
            Set("vision_config.num_attention_heads", json!(3)),
            &[
                "vision_config.hidden_size",
                "divisible by num_attention_heads",
            ],
        ),
        (
            "vision zero layers",
            Set("vision_config.num_hidden_layers", json!(0)),
            &["vision_config.num_hidden_layers = 0"],
        ),
        (
            "vision zero hidden",
            Set("vision_config.hidden_size", json!(0)),
            &["vision_config.hidden_size = 0"],
        ),
        (
            "patch_size 0",
            Set("vision_config.patch_size", json!(0)),
            &["vision_config.patch_size = 0"],
        ),
        (
            "image_size < patch_size",
            Set("vision_config.image_size", json!(4)),
            &["vision_config.image_size = 4", "at least patch_size"],
        ),
        (
            "image_size not a multiple of patch_size",
            Set("vision_config.image_size", json!(36)),
            &["vision_config.image_size = 36", "divisible by patch_size"],
        ),
        (
            "vision negative eps",
            Set("vision_config.layer_norm_eps", json!(-1.0)),
            &["vision_config.layer_norm_eps"],
        ),
        (
            "ln_vision NaN eps",
            Replace("\"layer_norm_eps\": 1e-6", "\"ln_vision_eps\": NaN"),
            &["vision_config.ln_vision_eps"],
        ),
        (
            "qformer zero heads",
            Set("qformer_config.num_attention_heads", json!(0)),
            &["qformer_config.num_attention_heads = 0"],
        ),
        (
            "qformer heads do not divide hidden",
            Set("qformer_config.num_attention_heads", json!(5)),
            &["qformer_config.hidden_size = 48"],
        ),
        (
            "qformer zero layers",
            Set("qformer_config.num_hidden_layers", json!(0)),
            &["qformer_config.num_hidden_layers = 0"],
        ),
        (
            "cross_attention_frequency 0",
            Set("qformer_config.cross_attention_frequency", json!(0)),
            &["qformer_config.cross_attention_frequency = 0"],
        ),
        (
            "encoder width differs from the ViT",
            Set("qformer_config.encoder_hidden_size", json!(32)),
            &["qformer_config.encoder_hidden_size = 32"],
        ),
        (
            "qformer zero eps",
            Set("qformer_config.layer_norm_eps", json!(0.0)),
            &["qformer_config.layer_norm_eps"],
        ),
        (
            "zero query tokens",
            Set("num_query_tokens", json!(0)),
            &["num_query_tokens = 0"],
        ),
        (
            "missing vision_config",
            Remove("vision_config"),
            &["vision_config"],
        ),
        (
            "missing qformer hidden_size",
            Remove("qformer_config.hidden_size"),
            &["qformer_config", "hidden_size"],
        ),
        (
            "vision heads is a string",
            Set("vision_config.num_attention_heads", json!("16")),
            &["vision_config.num_attention_heads", "invalid type"],
        ),
        (
            "patch_size negative",
            Set("vision_config.patch_size", json!(-14)),
            &["vision_config.patch_size"],
        ),
        (
            "truncated JSON",
            Text("{\"vision_config\": {\"hidden".into()),
            &["EOF"],
        ),
    ];
    run_corpus("blip2", &blip2(), "config.json", &cases, &load_blip2);

    // The same file as the head-count hint of a LAVIS checkpoint (`blip2_config`).
    let hint_cases: Vec<(&str, Mutation, &[&str])> = vec![
        (
            "hint vision zero heads",
            Set("vision_config.num_attention_heads", json!(0)),
            &["vision_config.num_attention_heads = 0"],
        ),
        (
            "hint cross_attention_frequency 0",
            Set("qformer_config.cross_attention_frequency", json!(0)),
            &["qformer_config.cross_attention_frequency = 0"],
        ),
        (
            "hint wrong type",
            Set("qformer_config.num_attention_heads", json!([12])),
            &["qformer_config.num_attention_heads"],
        ),
    ];
    run_corpus(
        "blip2 hint",
        &blip2(),
        "blip2_hint.json",
        &hint_cases,
        &|dir: &Path| {
            let hint = dir.join("blip2_hint.json").display().to_string();
            weights::load_blip2(
                &dir.display().to_string(),
                None,
                Some(&hint),
                DType::F32,
                &Device::Cpu,
            )
            .map(|_| ())
        },
    );
}

#[test]
fn lora_adapter_config_corpus() {
    let base = json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                      "target_modules": ["q_proj", "v_proj"]});
    let cases: Vec<(&str, Mutation, &[&str])> = vec![
        ("r 0", Set("r", json!(0)), &["r = 0", "at least 1"]),
        ("r negative", Set("r", json!(-8)), &["`r`"]),
        (
            "r is a string",
            Set("r", json!("8")),
            &["`r`", "invalid type"],
        ),
        (
            "alpha is a string",
            Set("lora_alpha", json!("16")),
            &["lora_alpha"],
        ),
        (
            "alpha NaN",
            Replace("\"lora_alpha\": 16", "\"lora_alpha\": NaN"),
            &["lora_alpha"],
        ),
        ("truncated JSON", Text("{\"r\": 8, ".into()), &["EOF"]),
    ];
    run_corpus(
        "lora",
        &base,
        "adapter_config.json",
        &cases,
        &|dir: &Path| {
            // An (empty) weights file: the config must be rejected before it is read.
            std::fs::write(dir.join("adapter_model.safetensors"), b"").unwrap();
            weights::load_lora_file(dir).map(|_| ())
        },
    );
}

/// Configs built in code are checked where the model is built, not only when read from files.
#[test]
fn in_code_configs_are_validated() {
    let v: VisionConfig = serde_json::from_value(blip2()["vision_config"].clone()).unwrap();
    let q: QFormerConfig = serde_json::from_value(blip2()["qformer_config"].clone()).unwrap();
    let l: LlamaConfig = serde_json::from_value(vicuna()).unwrap();
    let ok = MiniGpt4Config {
        vision: v.clone(),
        qformer: q.clone(),
        llama: l.clone(),
    };
    ok.validate().unwrap();

    let mut c = ok.clone();
    c.llama.num_attention_heads = 0;
    c.llama.head_dim = None;
    assert_eq!(c.llama.head_dim(), 0); // no division by zero
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("llama.num_attention_heads = 0"), "{e}");

    let mut c = ok.clone();
    c.vision.patch_size = 0;
    assert_eq!(c.vision.seq_len(), 1);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("vision.patch_size = 0"), "{e}");

    // Builders validate before reading any tensor.
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let mut bad = l.clone();
    bad.num_key_value_heads = Some(3);
    let e = minigpt4::llama::Llama::new(&bad, vb.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_key_value_heads = 3"), "{e}");
    let mut c = ok.clone();
    c.qformer.cross_attention_frequency = 0;
    let e = minigpt4::model::MiniGpt4::new(&c, vb.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("qformer.cross_attention_frequency = 0"), "{e}");

    let lora = LoraConfig {
        r: 0,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into()],
        seed: 0,
    };
    let e = lora.validate().unwrap_err().to_string();
    assert!(e.contains("r = 0"), "{e}");
    for (lc, want) in [
        (
            LoraConfig {
                r: 4,
                ..lora.clone()
            },
            None,
        ),
        (
            LoraConfig {
                r: 4,
                alpha: f64::NAN,
                ..lora.clone()
            },
            Some("alpha = NaN"),
        ),
        (
            LoraConfig {
                r: 4,
                dropout: 1.0,
                ..lora.clone()
            },
            Some("dropout = 1"),
        ),
        (
            LoraConfig {
                r: 4,
                target_modules: vec![],
                ..lora.clone()
            },
            Some("target_modules"),
        ),
        (
            LoraConfig {
                r: 4,
                target_modules: vec!["qkv".into()],
                ..lora.clone()
            },
            Some("\"qkv\""),
        ),
    ] {
        match (lc.validate(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
            (r, w) => panic!("{lc:?}: {r:?}, wanted {w:?}"),
        }
    }
}

#[test]
fn generation_settings_are_validated() {
    GenerationConfig::default().validate().unwrap();
    let cases: Vec<(GenerationConfig, &str)> = vec![
        (
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            "num_beams = 0: must be at least 1",
        ),
        (
            GenerationConfig {
                max_new_tokens: 0,
                ..Default::default()
            },
            "max_new_tokens = 0",
        ),
        (
            GenerationConfig {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature = -1",
        ),
        (
            GenerationConfig {
                temperature: f64::NAN,
                ..Default::default()
            },
            "temperature = NaN",
        ),
        (
            GenerationConfig {
                top_p: 7.0,
                ..Default::default()
            },
            "top_p = 7: must be in (0, 1]",
        ),
        (
            GenerationConfig {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p = 0",
        ),
        (
            GenerationConfig {
                length_penalty: f64::INFINITY,
                ..Default::default()
            },
            "length_penalty = inf",
        ),
    ];
    for (c, want) in cases {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e} (wanted {want})");
    }
}
