//! The model section of the check: a MiniGPT-4 checkpoint's files, their tensor shapes and
//! whether they fit together (projector against Q-Former and Vicuna sizes), the tokenizer and
//! LoRA adapters.

use super::*;

impl Checker {
    pub(super) fn minigpt4(&mut self, m: &EvalModelConfig) {
        let mut shapes = Shapes {
            llm_hidden: None,
            qformer_hidden: None,
            projector: None,
        };
        let blip2_proj = self.blip2(m, &mut shapes);
        if let Some(c) = &m.blip2_config {
            let p = self.resolve_file(c);
            if self.require_file("model.blip2_config", &p, "BLIP-2 config.json") {
                match read_json_value(&p) {
                    Ok(_) => self.push("model.blip2_config", Some(&p), Status::Ok, "readable"),
                    Err(e) => self.push("model.blip2_config", Some(&p), Status::Invalid, e),
                }
            }
        }
        self.vicuna(m, &mut shapes);
        match &m.projector {
            Some(spec) => {
                let p = self.resolve_file(spec);
                if self.require_file("model.projector", &p, "MiniGPT-4 checkpoint") {
                    match tensor_shapes(&p) {
                        Err(e) => self.push("model.projector", Some(&p), Status::Invalid, e),
                        Ok(t) => match t.get("llama_proj.weight") {
                            Some(s) => {
                                let bias = t.get("llama_proj.bias").cloned();
                                if bias.is_none() {
                                    self.push(
                                        "model.projector",
                                        Some(&p),
                                        Status::Invalid,
                                        "has llama_proj.weight but no llama_proj.bias",
                                    );
                                } else {
                                    self.push(
                                        "model.projector",
                                        Some(&p),
                                        Status::Ok,
                                        format!("llama_proj.weight {s:?}"),
                                    );
                                }
                                shapes.projector = Some((s.clone(), p.clone()));
                            }
                            None => self.push(
                                "model.projector",
                                Some(&p),
                                Status::Invalid,
                                format!("no llama_proj.weight among its {} tensors", t.len()),
                            ),
                        },
                    }
                }
            }
            None => match blip2_proj {
                Some((s, p)) => {
                    self.push(
                        "model.projector",
                        Some(&p),
                        Status::Ok,
                        format!("not given; the BLIP-2 file holds llama_proj.weight {s:?}"),
                    );
                    shapes.projector = Some((s, p));
                }
                None => self.push(
                    "model.projector",
                    None,
                    Status::Missing,
                    "not given and the BLIP-2 weights have no llama_proj: set projector = the MiniGPT-4 checkpoint (pretrained_minigpt4_7b.pth)",
                ),
            },
        }
        self.shapes(&shapes);
        if let Some(l) = &m.lora {
            self.lora_path("model.lora", l);
        }
        match m.dtype.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "f16" | "float16" | "fp16" | "half" | "bf16"
            | "bfloat16" => self.push("model.dtype", None, Status::Ok, m.dtype.clone()),
            other => self.push(
                "model.dtype",
                None,
                Status::Invalid,
                format!("dtype {other:?}: expected f32, f16 or bf16"),
            ),
        }
        self.device("model.device", &m.device);
    }

    pub(super) fn resolve_file(&self, spec: &str) -> PathBuf {
        let p = Path::new(spec);
        if p.exists() || p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// BLIP-2 (HF folder / hub repo / LAVIS `.pth`) and EVA ViT; returns the `llama_proj.weight`
    /// shape when the BLIP-2 file is a full MiniGPT-4 state dict that carries it.
    pub(super) fn blip2(
        &mut self,
        m: &EvalModelConfig,
        shapes: &mut Shapes,
    ) -> Option<(Vec<usize>, PathBuf)> {
        let sec = "model.blip2";
        let loc = self.locate(&m.blip2);
        let hf = |l: &Loc| -> Option<Location> {
            match l {
                Loc::Dir(d) => Some(Location::Dir(d.clone())),
                Loc::Hub(r) => Some(Location::Hub(r.clone())),
                Loc::File(f) if f.extension().is_some_and(|e| e == "safetensors") => Some(
                    Location::Dir(f.parent().map(Path::to_path_buf).unwrap_or_default()),
                ),
                _ => None,
            }
        };
        if let Loc::Missing(p) = &loc {
            self.push(
                sec,
                Some(p),
                Status::Missing,
                "BLIP-2 weights not found (HF Blip2 folder, hub repo id in the local cache, or LAVIS blip2_pretrained_flant5xxl.pth)",
            );
            if let Some(e) = &m.eva_vit {
                self.eva_vit(e);
            }
            return None;
        }
        if let Some(l) = hf(&loc) {
            let shown = loc_path(&loc);
            let Some(cfg_path) = l.file("config.json") else {
                self.push(
                    sec,
                    shown.as_deref(),
                    Status::Missing,
                    "HF BLIP-2 folder has no config.json",
                );
                return None;
            };
            let weights = weight_files(&l, "model.safetensors", "model.safetensors.index.json");
            match weights {
                Err(e) => self.push(sec, Some(&cfg_path), Status::Missing, e),
                Ok(None) => self.push(
                    sec,
                    shown.as_deref(),
                    Status::Missing,
                    "no model.safetensors or model.safetensors.index.json",
                ),
                Ok(Some(files)) => match read_json_value(&cfg_path) {
                    Err(e) => self.push(sec, Some(&cfg_path), Status::Invalid, e),
                    Ok(v) => {
                        let q = &v["qformer_config"];
                        let (hidden, how) = match q["hidden_size"].as_u64() {
                            Some(h) => (h as usize, "qformer_config.hidden_size"),
                            None => (768, "HF default (no qformer_config.hidden_size)"),
                        };
                        shapes.qformer_hidden =
                            Some((hidden, format!("{} {how}", cfg_path.display())));
                        self.push(
                            sec,
                            shown.as_deref(),
                            Status::Ok,
                            format!(
                                "HF BLIP-2, {} weight file(s), Q-Former hidden {hidden}",
                                files.len()
                            ),
                        );
                    }
                },
            }
            if let Some(e) = &m.eva_vit {
                self.push(
                    "model.eva_vit",
                    Some(Path::new(e)),
                    Status::Note,
                    "ignored: the HF BLIP-2 weights hold the vision tower",
                );
            }
            return None;
        }
        // LAVIS / MiniGPT-4 .pth: the pickle index gives names and shapes without the data.
        let Loc::File(p) = loc else { return None };
        let t = match tensor_shapes(&p) {
            Ok(t) => t,
            Err(e) => {
                self.push(sec, Some(&p), Status::Invalid, e);
                return None;
            }
        };
        let Some(qt) = t.get("query_tokens") else {
            self.push(
                sec,
                Some(&p),
                Status::Invalid,
                format!(
                    "no query_tokens among its {} tensors: not a BLIP-2 checkpoint",
                    t.len()
                ),
            );
            return None;
        };
        let hidden = qt.last().copied().unwrap_or(768);
        shapes.qformer_hidden = Some((hidden, format!("{} query_tokens {qt:?}", p.display())));
        let has_vit = t.keys().any(|k| k.starts_with("visual_encoder."));
        self.push(
            sec,
            Some(&p),
            Status::Ok,
            format!(
                "LAVIS checkpoint, {} tensors, Q-Former hidden {hidden}{}",
                t.len(),
                if has_vit { ", ViT inside" } else { "" }
            ),
        );
        match &m.eva_vit {
            Some(e) => self.eva_vit(e),
            None if !has_vit => self.push(
                "model.eva_vit",
                None,
                Status::Missing,
                "the LAVIS BLIP-2 file has no visual_encoder.*: set eva_vit = \"eva_vit_g.pth\"",
            ),
            None => {}
        }
        t.get("llama_proj.weight").map(|s| (s.clone(), p.clone()))
    }

    pub(super) fn eva_vit(&mut self, spec: &str) {
        let sec = "model.eva_vit";
        let p = self.resolve_file(spec);
        if !self.require_file(sec, &p, "EVA ViT-g weights (eva_vit_g.pth)") {
            return;
        }
        match tensor_shapes(&p) {
            Err(e) => self.push(sec, Some(&p), Status::Invalid, e),
            Ok(t) => {
                let pos = t
                    .get("pos_embed")
                    .or_else(|| t.get("visual_encoder.pos_embed"));
                match pos {
                    Some(s) => self.push(
                        sec,
                        Some(&p),
                        Status::Ok,
                        format!("{} tensors, pos_embed {s:?}", t.len()),
                    ),
                    None => self.push(
                        sec,
                        Some(&p),
                        Status::Invalid,
                        "no pos_embed: not an EVA ViT state dict",
                    ),
                }
            }
        }
    }

    pub(super) fn vicuna(&mut self, m: &EvalModelConfig, shapes: &mut Shapes) {
        let sec = "model.vicuna";
        let loc = match self.locate(&m.vicuna) {
            // A file inside the folder (config.json, a shard) names the folder.
            Loc::File(f) => Loc::Dir(f.parent().map(Path::to_path_buf).unwrap_or_default()),
            l => l,
        };
        let l = match &loc {
            Loc::Missing(p) => {
                self.push(
                    sec,
                    Some(p),
                    Status::Missing,
                    "Vicuna folder not found (HF LLaMA folder: config.json, tokenizer.json, weight shards)",
                );
                self.tokenizer(m, None);
                return;
            }
            Loc::Dir(d) => Location::Dir(d.clone()),
            Loc::Hub(r) => Location::Hub(r.clone()),
            Loc::File(_) => unreachable!("mapped to its folder above"),
        };
        let shown = loc_path(&loc);
        let cfg = match l.file("config.json") {
            None => {
                self.push(sec, shown.as_deref(), Status::Missing, "no config.json");
                None
            }
            Some(c) => match read_json_value(&c) {
                Err(e) => {
                    self.push(sec, Some(&c), Status::Invalid, e);
                    None
                }
                Ok(v) => match v["hidden_size"].as_u64() {
                    None => {
                        self.push(
                            sec,
                            Some(&c),
                            Status::Invalid,
                            "config.json has no hidden_size",
                        );
                        None
                    }
                    Some(h) => {
                        shapes.llm_hidden = Some(h as usize);
                        Some((h as usize, v["vocab_size"].as_u64().map(|x| x as usize)))
                    }
                },
            },
        };
        // Weights: safetensors (single / sharded) or pytorch .bin (single / sharded).
        let st = weight_files(&l, "model.safetensors", "model.safetensors.index.json");
        let files = match st {
            Ok(None) => weight_files(&l, "pytorch_model.bin", "pytorch_model.bin.index.json"),
            other => other,
        };
        match files {
            Err(e) => self.push(sec, shown.as_deref(), Status::Missing, e),
            Ok(None) => self.push(
                sec,
                shown.as_deref(),
                Status::Missing,
                "no weights: model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
            ),
            Ok(Some(files)) => {
                // The embedding's shape is the real [vocab, hidden] (Vicuna v0: 32001 rows).
                let embed = embed_shape(&l, &files);
                match (cfg, embed) {
                    (Some((h, vocab)), Some(e)) if e.len() == 2 => {
                        let vocab_ok = vocab.is_none_or(|v| v == e[0]);
                        if e[1] != h || !vocab_ok {
                            self.push(
                                sec,
                                shown.as_deref(),
                                Status::Mismatch,
                                format!(
                                    "model.embed_tokens.weight is {e:?} but config.json says vocab_size {} hidden_size {h}{}",
                                    vocab.map(|v| v.to_string()).unwrap_or("?".into()),
                                    if vocab.is_some_and(|v| v.abs_diff(e[0]) == 1) {
                                        " (Vicuna v0 has 32001 tokens: a delta applied to the wrong base?)"
                                    } else {
                                        ""
                                    }
                                ),
                            );
                        } else {
                            self.push(
                                sec,
                                shown.as_deref(),
                                Status::Ok,
                                format!("{} weight file(s), hidden {h}, embed {e:?}", files.len()),
                            );
                        }
                    }
                    (Some((h, _)), _) => self.push(
                        sec,
                        shown.as_deref(),
                        Status::Ok,
                        format!("{} weight file(s), hidden {h}", files.len()),
                    ),
                    (None, _) => {}
                }
            }
        }
        self.tokenizer(m, Some(&l));
    }

    pub(super) fn tokenizer(&mut self, m: &EvalModelConfig, vicuna: Option<&Location>) {
        let sec = "model.tokenizer";
        let (json, sp, shown) = match &m.tokenizer {
            Some(t) => {
                let p = self.resolve_file(t);
                if p.is_file() {
                    (Some(p.clone()), None, p)
                } else {
                    let j = p.join("tokenizer.json");
                    let s = p.join("tokenizer.model");
                    (j.is_file().then_some(j), s.is_file().then_some(s), p)
                }
            }
            None => match vicuna {
                None => return, // the Vicuna folder itself is already reported missing
                Some(l) => (
                    l.file("tokenizer.json"),
                    l.file("tokenizer.model"),
                    match l {
                        Location::Dir(d) | Location::File(d) => d.clone(),
                        Location::Hub(r) => PathBuf::from(r),
                    },
                ),
            },
        };
        match (json, sp) {
            (Some(j), _) => self.push(sec, Some(&j), Status::Ok, "tokenizer.json"),
            (None, Some(s)) => self.push(
                sec,
                Some(&s),
                Status::Invalid,
                "only the SentencePiece tokenizer.model: convert once with transformers \
                 `AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)` to get tokenizer.json",
            ),
            (None, None) => {
                self.push(sec, Some(&shown), Status::Missing, "no tokenizer.json")
            }
        }
    }

    pub(super) fn shapes(&mut self, s: &Shapes) {
        let sec = "model.shapes";
        let Some((w, p)) = &s.projector else { return };
        if w.len() != 2 {
            self.push(
                sec,
                Some(p),
                Status::Invalid,
                format!("llama_proj.weight is {w:?}, expected 2 dimensions [llm_hidden, qformer_hidden]"),
            );
            return;
        }
        let mut problems = Vec::new();
        if let Some(h) = s.llm_hidden {
            if w[0] != h {
                let hint = match (size_name(w[0]), size_name(h)) {
                    (Some(a), Some(b)) => format!(" (a {a} projector with a {b} LLM?)"),
                    _ => String::new(),
                };
                problems.push(format!(
                    "llama_proj.weight is {w:?} but vicuna hidden_size is {h}{hint}"
                ));
            }
        }
        if let Some((q, from)) = &s.qformer_hidden {
            if w[1] != *q {
                problems.push(format!(
                    "llama_proj.weight is {w:?} but the BLIP-2 Q-Former hidden size is {q} ({from})"
                ));
            }
        }
        if !problems.is_empty() {
            self.push(sec, Some(p), Status::Mismatch, problems.join("; "));
        } else if s.llm_hidden.is_some() && s.qformer_hidden.is_some() {
            self.push(
                sec,
                Some(p),
                Status::Ok,
                format!("llama_proj.weight {w:?} = [vicuna hidden, Q-Former hidden]"),
            );
        } else {
            self.push(
                sec,
                Some(p),
                Status::Note,
                format!("llama_proj.weight {w:?}: not compared (the other sizes are unknown)"),
            );
        }
    }

    pub(super) fn lora_path(&mut self, sec: &str, spec: &str) {
        let p = self.resolve_file(spec);
        if p.is_dir() {
            let w = ["adapter_model.safetensors", "adapter_model.bin"]
                .iter()
                .map(|n| p.join(n))
                .find(|f| f.is_file());
            match w {
                None => self.push(
                    sec,
                    Some(&p),
                    Status::Missing,
                    "PEFT adapter folder has no adapter_model.safetensors or adapter_model.bin",
                ),
                Some(f) => match tensor_shapes(&f) {
                    Ok(t) => {
                        let n = t.keys().filter(|k| k.contains(".lora_")).count();
                        let st = if n == 0 { Status::Invalid } else { Status::Ok };
                        self.push(sec, Some(&f), st, format!("{n} LoRA tensors"));
                    }
                    Err(e) => self.push(sec, Some(&f), Status::Invalid, e),
                },
            }
        } else if self.require_file(sec, &p, "LoRA adapter") {
            match tensor_shapes(&p) {
                Ok(t) => {
                    let n = t.keys().filter(|k| k.contains(".lora_")).count();
                    let st = if n == 0 { Status::Invalid } else { Status::Ok };
                    self.push(sec, Some(&p), st, format!("{n} LoRA tensors"));
                }
                Err(e) => self.push(sec, Some(&p), Status::Invalid, e),
            }
        }
    }
}

/// Hidden size -> model size of the LLaMA-1 family (for hints only).
fn size_name(h: usize) -> Option<&'static str> {
    match h {
        4096 => Some("7B"),
        5120 => Some("13B"),
        6656 => Some("33B"),
        8192 => Some("65B"),
        _ => None,
    }
}

/// Weight files of a folder: the single file, else every shard named by the index (each must
/// exist). `Ok(None)`: neither the file nor the index.
fn weight_files(loc: &Location, single: &str, index: &str) -> Result<Option<Vec<PathBuf>>, String> {
    if let Some(p) = loc.file(single) {
        return Ok(Some(vec![p]));
    }
    let Some(idx) = loc.file(index) else {
        return Ok(None);
    };
    let v = read_json_value(&idx).map_err(|e| format!("{}: {e}", idx.display()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{}: no `weight_map` object", idx.display()))?;
    let names: std::collections::BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        match loc.file(n) {
            Some(p) => files.push(p),
            None => missing.push(n.to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} names {} shard(s) that are missing: {}",
            idx.display(),
            missing.len(),
            missing.join(", ")
        ));
    }
    Ok(Some(files))
}

/// Shape of `model.embed_tokens.weight` from the safetensors header of the shard holding it.
fn embed_shape(loc: &Location, files: &[PathBuf]) -> Option<Vec<usize>> {
    let key = "model.embed_tokens.weight";
    let file = if files.len() == 1 {
        files[0].clone()
    } else {
        let idx = loc.file("model.safetensors.index.json")?;
        let v = read_json_value(&idx).ok()?;
        loc.file(v["weight_map"][key].as_str()?)?
    };
    if file.extension()? != "safetensors" {
        return None;
    }
    safetensors_shapes(&file).ok()?.remove(key)
}
