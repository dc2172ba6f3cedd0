//! A corpus of broken inputs, run through every subcommand as a user would: broken benchmark
//! files (TSV/JSON), prediction and reply files, configs (TOML and `config.json`), weights,
//! images, paths that leave their root, and a teacher that hangs or answers garbage.
//!
//! Every case must end in one of two ways, within [`CASE_TIMEOUT`]:
//! - **refused**: a non-zero exit whose message names the file and the key, column or line;
//! - **reported**: a zero exit that says what was skipped (a warning in the log).
//!
//! And never: a panic, a hang, an exit 0 without a word. The corpus is built from the shared
//! fixtures (read from `MDE_EVAL_FIXTURES` / `MDE_GOLDEN_DIR` when set), so it follows their
//! hidden twins.
#[path = "../../mde-gen/tests/support/server.rs"]
mod server;
mod support;
use support::{eval_fx, golden};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No case may run longer (the slowest loads the tiny model once).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How a case must end.
#[derive(Debug, Clone)]
enum Want {
    /// Non-zero exit; stderr holds every string.
    Refused(Vec<String>),
    /// Exit 0; stderr holds every string (the report of what was skipped).
    Reported(Vec<String>),
}

struct Case {
    name: String,
    args: Vec<String>,
    want: Want,
}

fn refused(name: &str, args: Vec<String>, must: &[&str]) -> Case {
    Case {
        name: name.into(),
        args,
        want: Want::Refused(must.iter().map(|s| s.to_string()).collect()),
    }
}

fn reported(name: &str, args: Vec<String>, must: &[&str]) -> Case {
    Case {
        name: name.into(),
        args,
        want: Want::Reported(must.iter().map(|s| s.to_string()).collect()),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// Runs `mde` with a deadline; returns (exit success, stderr) or an error for a hang.
fn run_mde(a: &[String]) -> Result<(bool, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(a)
        // No NO_COLOR: a log written to a pipe must be plain without it.
        .env_remove("NO_COLOR")
        .env("RUST_BACKTRACE", "0")
        .env_remove("MDE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    // Drain stderr on a thread so a chatty child cannot block on a full pipe.
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let text = reader.join().unwrap_or_default();
                return Ok((st.success(), text));
            }
            Ok(None) if t0.elapsed() > CASE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("hung for more than {CASE_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Runs every case; returns the list of failures (empty = all good).
fn check(cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for c in &cases {
        let (ok, err) = match run_mde(&c.args) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", c.name));
                continue;
            }
        };
        let mut why = Vec::new();
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            why.push("panicked".to_string());
        }
        if err.contains('\u{1b}') {
            why.push("ANSI escapes in a log written to a pipe".to_string());
        }
        let must = match &c.want {
            Want::Refused(m) => {
                if ok {
                    why.push("exit 0 (expected a refusal)".into());
                }
                m
            }
            Want::Reported(m) => {
                if !ok {
                    why.push("non-zero exit (expected a reported skip)".into());
                }
                m
            }
        };
        for m in must {
            if !err.contains(m.as_str()) {
                why.push(format!("stderr lacks `{m}`"));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  mde {}\n  stderr: {}",
                c.name,
                why.join("; "),
                c.args.join(" "),
                err.trim().replace('\n', "\n          ")
            ));
        }
    }
    eprintln!("{} cases, {} failed", cases.len(), failures.len());
    failures
}

fn assert_all(cases: Vec<Case>) {
    let n = cases.len();
    let failures = check(cases);
    assert!(
        failures.is_empty(),
        "{} of {n} bad-input cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// An MMBench TSV with one column dropped, through the crate's pandas-compatible writer.
fn tsv_without(src: &Path, column: &str, out: &Path) {
    let t = mde_eval::tsv::read_tsv(src).unwrap();
    std::fs::write(out, t.to_tsv_without(column).unwrap()).unwrap();
}

// ------------------------------------------------------------------------------------------
// mde score: benchmark files and prediction files
// ------------------------------------------------------------------------------------------

#[test]
fn score_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fx = eval_fx();
    let out = s(&d.join("out"));
    let mut cases = Vec::new();
    let score = |bench: &str, data: &Path, preds: &Path| -> Vec<String> {
        args(&[
            "score",
            bench,
            "--data",
            &s(data),
            "--predictions",
            &s(preds),
            "--out",
            &out,
        ])
    };

    // --- MMBench
    let mm = fx.join("mmbench/MMBench_DEV_EN.tsv");
    let mm_preds = fx.join("mmbench/predictions.tsv");
    let missing = d.join("missing.tsv");
    cases.push(refused(
        "mmbench: data file missing",
        score("mmbench", &missing, &mm_preds),
        &["missing.tsv"],
    ));
    let no_answer = d.join("no_answer.tsv");
    tsv_without(&mm, "answer", &no_answer);
    cases.push(refused(
        "mmbench: data without the answer column",
        score("mmbench", &no_answer, &mm_preds),
        &["no_answer.tsv", "answer"],
    ));
    let no_index = d.join("no_index.tsv");
    tsv_without(&mm, "index", &no_index);
    cases.push(refused(
        "mmbench: data without the index column",
        score("mmbench", &no_index, &mm_preds),
        &["no_index.tsv", "index"],
    ));
    let unterminated = write(
        d,
        "unterminated.tsv",
        format!("{}2\t\"open quote\n", read(&mm)),
    );
    cases.push(refused(
        "mmbench: data with an unterminated quoted field",
        score("mmbench", &unterminated, &mm_preds),
        &["unterminated.tsv"],
    ));
    let binary = write(d, "binary.tsv", [0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96, b'\n']);
    cases.push(refused(
        "mmbench: predictions not UTF-8",
        score("mmbench", &mm, &binary),
        &["binary.tsv"],
    ));
    let empty = write(d, "empty.tsv", "");
    cases.push(refused(
        "mmbench: empty predictions",
        score("mmbench", &mm, &empty),
        &["empty.tsv"],
    ));
    let no_pred_col = d.join("no_prediction.tsv");
    tsv_without(&mm_preds, "prediction", &no_pred_col);
    cases.push(refused(
        "mmbench: predictions without the prediction column",
        score("mmbench", &mm, &no_pred_col),
        &["no_prediction.tsv", "prediction"],
    ));
    {
        let text = read(&mm_preds);
        let row = text.lines().nth(1).unwrap();
        let rest = row.split_once('\t').unwrap().1;
        let p = write(
            d,
            "unknown_index.tsv",
            format!("{text}\"987654321\"\t{rest}\n"),
        );
        cases.push(refused(
            "mmbench: predictions with an index the dataset lacks",
            score("mmbench", &mm, &p),
            &["unknown_index.tsv", "987654321"],
        ));
    }
    cases.push(refused(
        "mmbench: predictions path is a folder",
        score("mmbench", &mm, d),
        &[&s(d)],
    ));

    // --- A-OKVQA
    let ao = fx.join("aokvqa/aokvqa_v1p0_val.json");
    let ao_preds = fx.join("aokvqa/predictions_val.json");
    let not_json = write(d, "ao_not_json.json", "[{\"question_id\": \"a\",\n  oops]");
    cases.push(refused(
        "aokvqa: data not JSON",
        score("aokvqa", &not_json, &ao_preds),
        &["ao_not_json.json", "line 2"],
    ));
    let empty_list = write(d, "ao_empty.json", "[]");
    cases.push(refused(
        "aokvqa: empty data file",
        score("aokvqa", &empty_list, &ao_preds),
        &["ao_empty.json"],
    ));
    {
        let mut v: serde_json::Value = serde_json::from_str(&read(&ao)).unwrap();
        v[0].as_object_mut().unwrap().remove("question_id");
        let p = write(d, "ao_no_qid.json", v.to_string());
        cases.push(refused(
            "aokvqa: data entry without question_id",
            score("aokvqa", &p, &ao_preds),
            &["ao_no_qid.json", "question_id"],
        ));
        let mut v: serde_json::Value = serde_json::from_str(&read(&ao)).unwrap();
        v[0]["correct_choice_idx"] = serde_json::json!(99);
        let p = write(d, "ao_bad_choice.json", v.to_string());
        cases.push(refused(
            "aokvqa: correct_choice_idx out of range",
            score("aokvqa", &p, &ao_preds),
            &["ao_bad_choice.json", "correct_choice_idx"],
        ));
    }
    let p = write(d, "ao_preds_array.json", "[1, 2, 3]");
    cases.push(refused(
        "aokvqa: predictions an array",
        score("aokvqa", &ao, &p),
        &["ao_preds_array.json"],
    ));
    let p = write(d, "ao_preds_type.json", "{\"x\": {\"multiple_choice\": 5}}");
    // The official script compares any JSON value with Python `==` (a number is never equal
    // to a choice): such a value is scored, not refused; its unknown id is reported.
    cases.push(reported(
        "aokvqa: prediction of another type under an unknown id",
        score("aokvqa", &ao, &p),
        &["ao_preds_type.json", "unknown id"],
    ));
    let p = write(
        d,
        "ao_preds_torn.json",
        "{\"x\": {\"multiple_choice\": \"a\"",
    );
    cases.push(refused(
        "aokvqa: predictions cut off",
        score("aokvqa", &ao, &p),
        &["ao_preds_torn.json"],
    ));
    {
        let mut v: serde_json::Value = serde_json::from_str(&read(&ao_preds)).unwrap();
        v["definitely_not_a_question"] =
            serde_json::json!({"multiple_choice": "x", "direct_answer": "y"});
        let p = write(d, "ao_preds_unknown.json", v.to_string());
        cases.push(reported(
            "aokvqa: predictions with unknown ids are scored and counted",
            score("aokvqa", &ao, &p),
            &[
                "ao_preds_unknown.json",
                "unknown id",
                "definitely_not_a_question",
            ],
        ));
    }

    // --- SEED-Bench
    let sd = fx.join("seedbench/SEED-Bench.json");
    let sd_preds = fx.join("seedbench/predictions.jsonl");
    let p = write(d, "seed_no_questions.json", "{\"question_type\": {}}");
    cases.push(refused(
        "seedbench: data without questions",
        score("seedbench", &p, &sd_preds),
        &["seed_no_questions.json", "questions"],
    ));
    {
        let text = read(&sd_preds);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(1, "{\"question_id\": ");
        let p = write(d, "seed_bad_line.jsonl", lines.join("\n") + "\n");
        cases.push(refused(
            "seedbench: predictions with a broken line 2",
            score("seedbench", &sd, &p),
            &["seed_bad_line.jsonl", "2"],
        ));
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let mut unknown = first.clone();
        unknown["question_id"] = serde_json::json!("not_a_seed_question");
        let p = write(d, "seed_unknown.jsonl", format!("{text}{unknown}\n"));
        cases.push(reported(
            "seedbench: predictions with unknown ids are counted",
            score("seedbench", &sd, &p),
            &["seed_unknown.jsonl", "unknown id"],
        ));
        let mut bad_type = first.clone();
        bad_type["question_id"] = serde_json::json!([1, 2]);
        let p = write(d, "seed_bad_type.jsonl", format!("{bad_type}\n"));
        cases.push(refused(
            "seedbench: prediction with a non-string id",
            score("seedbench", &sd, &p),
            &["seed_bad_type.jsonl", "1"],
        ));
    }

    // --- MME
    let mme = fx.join("mme/MME.tsv");
    let mme_preds = fx.join("mme/predictions.tsv");
    let p = d.join("mme_no_prediction.tsv");
    tsv_without(&mme_preds, "prediction", &p);
    cases.push(refused(
        "mme: predictions without the prediction column",
        score("mme", &mme, &p),
        &["mme_no_prediction.tsv", "prediction"],
    ));
    let p = write(d, "mme_binary.tsv", [0u8, 159, 146, 150, 10]);
    cases.push(refused(
        "mme: binary predictions",
        score("mme", &mme, &p),
        &["mme_binary.tsv"],
    ));
    assert_all(cases);
}

// ------------------------------------------------------------------------------------------
// mde eval / mde ask: model configs, weights, images, benchmark files before inference
// ------------------------------------------------------------------------------------------

/// A copy of a fixture model folder with links to its files, so one file can be replaced.
fn model_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::symlink(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

fn replace(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(p, bytes).unwrap();
}

fn json_with(src: &Path, key: &str, v: serde_json::Value) -> String {
    let mut j: serde_json::Value = serde_json::from_str(&read(src)).unwrap();
    let mut at = &mut j;
    let parts: Vec<&str> = key.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = v;
    j.to_string()
}

#[test]
fn model_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let g = golden();
    let mm = eval_fx().join("mmbench/MMBench_DEV_EN.tsv");
    let mut cases = Vec::new();
    let model_toml = |name: &str, blip2: &Path, vicuna: &Path, projector: &Path, extra: &str| {
        write(
            d,
            name,
            support::model_toml(blip2, vicuna, projector, extra),
        )
    };
    let (blip2, vicuna, proj) = (
        g.join("blip2"),
        g.join("vicuna"),
        g.join("minigpt4/pretrained_minigpt4.pth"),
    );
    let eval = |model: &Path, data: &Path, out: &str| -> Vec<String> {
        args(&[
            "eval",
            "mmbench",
            "--data",
            &s(data),
            "--model",
            &s(model),
            "--out",
            &s(&d.join(out)),
            "--limit",
            "2",
            "--quiet",
        ])
    };

    // Model config TOML.
    let m = write(d, "syntax.toml", "blip2 = \"x\"\nvicuna = [\n");
    cases.push(refused(
        "eval: model TOML syntax error",
        eval(&m, &mm, "o1"),
        &["syntax.toml", "line 2"],
    ));
    let m = model_toml(
        "unknown_key.toml",
        &blip2,
        &vicuna,
        &proj,
        "max_bacth = 4\n",
    );
    cases.push(refused(
        "eval: unknown model key",
        eval(&m, &mm, "o2"),
        &["unknown_key.toml", "max_bacth"],
    ));
    let m = model_toml("zero_batch.toml", &blip2, &vicuna, &proj, "max_batch = 0\n");
    cases.push(refused(
        "eval: max_batch = 0",
        eval(&m, &mm, "o3"),
        &["zero_batch.toml", "max_batch"],
    ));
    let m = model_toml("dtype.toml", &blip2, &vicuna, &proj, "dtype = \"f17\"\n");
    cases.push(refused(
        "eval: unknown dtype",
        eval(&m, &mm, "o4"),
        &["dtype.toml", "f17"],
    ));
    let m = model_toml(
        "beams.toml",
        &blip2,
        &vicuna,
        &proj,
        "[mmbench]\nnum_beams = 0\n",
    );
    cases.push(refused(
        "eval: num_beams = 0",
        eval(&m, &mm, "o5"),
        &["beams.toml", "num_beams"],
    ));
    let m = model_toml("missing_w.toml", &d.join("nope"), &vicuna, &proj, "");
    cases.push(refused(
        "eval: weights folder missing",
        eval(&m, &mm, "o6"),
        &["nope"],
    ));

    // Benchmark checked before the model: a TSV without `answer` and weights that do not exist.
    let no_answer = d.join("MMBench_noanswer.tsv");
    tsv_without(&mm, "answer", &no_answer);
    let m = model_toml(
        "absent.toml",
        &d.join("absent"),
        &d.join("absent"),
        &d.join("absent.pth"),
        "",
    );
    cases.push(refused(
        "eval: MMBench TSV without answer, before loading the model",
        eval(&m, &no_answer, "o7"),
        &["MMBench_noanswer.tsv", "answer"],
    ));

    // Vicuna config.json values that are divisors, sizes, counts.
    let vicuna_cfg: serde_json::Value =
        serde_json::from_str(&read(&vicuna.join("config.json"))).unwrap();
    let heads = vicuna_cfg["num_attention_heads"].as_u64().unwrap();
    for (i, (key, v)) in [
        ("num_attention_heads", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(0)),
        // One more than the heads never divides them, whatever the fixture's head count.
        ("num_key_value_heads", serde_json::json!(heads + 1)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("num_hidden_layers", serde_json::json!("two")),
        ("vocab_size", serde_json::json!(-5)),
    ]
    .into_iter()
    .enumerate()
    {
        let vd = d.join(format!("vicuna_{i}"));
        model_copy(&vicuna, &vd);
        replace(
            &vd,
            "config.json",
            json_with(&vicuna.join("config.json"), key, v),
        );
        let m = model_toml(&format!("vicuna_{i}.toml"), &blip2, &vd, &proj, "");
        cases.push(refused(
            &format!("eval: vicuna config.json {key} bad"),
            eval(&m, &mm, &format!("ov{i}")),
            &[&format!("vicuna_{i}/config.json"), key],
        ));
    }
    // BLIP-2 config.json.
    for (i, (key, v)) in [
        ("vision_config.hidden_size", serde_json::json!(0)),
        ("vision_config.patch_size", serde_json::json!(0)),
        ("qformer_config.num_attention_heads", serde_json::json!(0)),
        ("num_query_tokens", serde_json::json!(0)),
    ]
    .into_iter()
    .enumerate()
    {
        let bd = d.join(format!("blip2_{i}"));
        model_copy(&blip2, &bd);
        replace(
            &bd,
            "config.json",
            json_with(&blip2.join("config.json"), key, v),
        );
        let m = model_toml(&format!("blip2_{i}.toml"), &bd, &vicuna, &proj, "");
        let last = key.rsplit('.').next().unwrap();
        cases.push(refused(
            &format!("eval: blip2 config.json {key} bad"),
            eval(&m, &mm, &format!("ob{i}")),
            &[&format!("blip2_{i}/config.json"), last],
        ));
    }
    // Weight files: truncated, garbage, a header that lies.
    let real = std::fs::read(vicuna.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(real[..8].try_into().unwrap()) as usize;
    let mut lying = real.clone();
    lying[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let mut bad_json = real[..8 + header_len].to_vec();
    bad_json[8] = b'[';
    bad_json.extend_from_slice(&real[8 + header_len..]);
    for (i, (what, bytes)) in [
        ("truncated", real[..real.len() / 2].to_vec()),
        ("header only", real[..8 + header_len].to_vec()),
        ("8 bytes", real[..8].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("header length past the end", lying),
        ("header not JSON", bad_json),
    ]
    .into_iter()
    .enumerate()
    {
        let vd = d.join(format!("vicuna_w{i}"));
        model_copy(&vicuna, &vd);
        replace(&vd, "model.safetensors", bytes);
        let m = model_toml(&format!("vicuna_w{i}.toml"), &blip2, &vd, &proj, "");
        cases.push(refused(
            &format!("eval: vicuna model.safetensors {what}"),
            eval(&m, &mm, &format!("ow{i}")),
            &[&format!("vicuna_w{i}/model.safetensors")],
        ));
    }
    let real_pth = std::fs::read(&proj).unwrap();
    for (i, (what, bytes)) in [
        ("truncated", real_pth[..real_pth.len() / 2].to_vec()),
        ("garbage", b"PK\x03\x04 not really a zip".to_vec()),
        ("empty", Vec::new()),
    ]
    .into_iter()
    .enumerate()
    {
        let p = write(d, &format!("proj_{i}.pth"), bytes);
        let m = model_toml(&format!("proj_{i}.toml"), &blip2, &vicuna, &p, "");
        cases.push(refused(
            &format!("eval: projector .pth {what}"),
            eval(&m, &mm, &format!("op{i}")),
            &[&format!("proj_{i}.pth")],
        ));
    }
    // Tokenizer.
    let vd = d.join("vicuna_tok");
    model_copy(&vicuna, &vd);
    replace(&vd, "tokenizer.json", "{\"version\": \"1.0\", \"model\": ");
    let m = model_toml("vicuna_tok.toml", &blip2, &vd, &proj, "");
    cases.push(refused(
        "eval: tokenizer.json broken",
        eval(&m, &mm, "ot"),
        &["tokenizer.json"],
    ));

    // mde ask: images.
    let ask = |image: &Path| -> Vec<String> {
        args(&[
            "ask",
            "--image",
            &s(image),
            "--question",
            "What is this?",
            "--blip2",
            &s(&blip2),
            "--vicuna",
            &s(&vicuna),
            "--projector",
            &s(&proj),
            "--cpu",
            "--max-new-tokens",
            "2",
        ])
    };
    let img = write(d, "not_an_image.png", b"\x89PNG\r\n\x1a\n but then nothing");
    cases.push(refused(
        "ask: a PNG that is not one",
        ask(&img),
        &["not_an_image.png"],
    ));
    let img = write(d, "empty.jpg", b"");
    cases.push(refused(
        "ask: an empty image file",
        ask(&img),
        &["empty.jpg"],
    ));
    cases.push(refused(
        "ask: image missing",
        ask(&d.join("gone.png")),
        &["gone.png"],
    ));
    let png = std::fs::read(g.join("image.png")).unwrap();
    let img = write(d, "half.png", &png[..png.len() / 2]);
    cases.push(refused("ask: a truncated PNG", ask(&img), &["half.png"]));

    // MMBench TSV whose image cell is not base64 of an image: the item is named.
    {
        let t = mde_eval::tsv::read_tsv(&mm).unwrap();
        let img_col = t.col("image").unwrap();
        let mut rows = t.raw_rows();
        for r in &mut rows {
            r[img_col] = Some("bm90IGFuIGltYWdl".into()); // base64 of "not an image"
        }
        let p = d.join("bad_images.tsv");
        std::fs::write(&p, mde_eval::tsv::to_tsv_minimal(&t.columns, &rows)).unwrap();
        let m = model_toml("good.toml", &blip2, &vicuna, &proj, "");
        let first_index = t.raw(0, t.col("index").unwrap()).unwrap().to_string();
        cases.push(refused(
            "eval: MMBench image cells that are not images",
            eval(&m, &p, "oi"),
            &[&first_index],
        ));
    }
    assert_all(cases);
}

// ------------------------------------------------------------------------------------------
// mde train / mde loop --check / mde sample: configs and records
// ------------------------------------------------------------------------------------------

fn train_cfg(d: &Path, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let g = golden();
    let mut cfg: toml::Table =
        toml::from_str(&read(&repo().join("configs/train-fixture.toml"))).unwrap();
    let model = cfg["model"].as_table_mut().unwrap();
    for (k, rel) in [
        ("blip2", "blip2"),
        ("vicuna", "vicuna"),
        ("projector", "minigpt4/pretrained_minigpt4.pth"),
    ] {
        model.insert(k.into(), s(&g.join(rel)).into());
    }
    edit(&mut cfg);
    write(d, name, toml::to_string(&cfg).unwrap())
}

fn train_data(d: &Path) {
    let img = std::fs::read(golden().join("image.png")).unwrap();
    write(d, "img/a.png", &img);
    let mut lines = String::new();
    for i in 0..4 {
        lines.push_str(
            &serde_json::json!({"image": "img/a.png", "kind": "caption", "answer": format!("a picture {i}")})
                .to_string(),
        );
        lines.push('\n');
    }
    write(d, "captions.jsonl", &lines);
    let qma = serde_json::json!([{"image": "img/a.png", "kind": "qma", "question": "What shape?",
        "choices": ["circle", "square"], "answer_idx": 0}]);
    write(d, "qma.json", qma.to_string());
}

#[test]
fn train_and_loop_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_data(d);
    let mut cases = Vec::new();
    let train = |cfg: &Path, out: &str| -> Vec<String> {
        args(&[
            "train",
            "--config",
            &s(cfg),
            "--out",
            &s(&d.join(out)),
            "--quiet",
            "--stop-after",
            "1",
        ])
    };
    let c = write(
        d,
        "t_syntax.toml",
        "[train]\nmode = \"lora+fc\"\nbatch_size = = 2\n",
    );
    cases.push(refused(
        "train: TOML syntax error",
        train(&c, "t1"),
        &["t_syntax.toml", "line 3"],
    ));
    let c = train_cfg(d, "t_unknown.toml", |t| {
        t["train"]
            .as_table_mut()
            .unwrap()
            .insert("bacth_size".into(), 2.into());
    });
    cases.push(refused(
        "train: unknown key",
        train(&c, "t2"),
        &["bacth_size"],
    ));
    for (i, (key, v)) in [
        ("batch_size", toml::Value::Integer(0)),
        ("iters_per_epoch", toml::Value::Integer(0)),
        ("max_epoch", toml::Value::Integer(0)),
        ("accum_steps", toml::Value::Integer(0)),
        ("max_txt_len", toml::Value::Integer(0)),
        ("mode", toml::Value::String("everything".into())),
    ]
    .into_iter()
    .enumerate()
    {
        let c = train_cfg(d, &format!("t_train_{i}.toml"), |t| {
            t["train"].as_table_mut().unwrap().insert(key.into(), v);
        });
        cases.push(refused(
            &format!("train: [train] {key} bad"),
            train(&c, &format!("tt{i}")),
            &[key],
        ));
    }
    for (i, (key, v)) in [
        ("r", toml::Value::Integer(0)),
        ("dropout", toml::Value::Float(1.5)),
        ("target_modules", toml::Value::Array(vec!["qq_proj".into()])),
    ]
    .into_iter()
    .enumerate()
    {
        let c = train_cfg(d, &format!("t_lora_{i}.toml"), |t| {
            t["train"]["lora"]
                .as_table_mut()
                .unwrap()
                .insert(key.into(), v);
        });
        cases.push(refused(
            &format!("train: [train.lora] {key} bad"),
            train(&c, &format!("tl{i}")),
            &[key],
        ));
    }
    for (i, (key, v)) in [
        ("init_lr", toml::Value::Float(-1.0)),
        ("init_lr", toml::Value::Float(f64::NAN)),
        ("weight_decay", toml::Value::Float(f64::INFINITY)),
    ]
    .into_iter()
    .enumerate()
    {
        let c = train_cfg(d, &format!("t_optim_{i}.toml"), |t| {
            t["train"]["optim"]
                .as_table_mut()
                .unwrap()
                .insert(key.into(), v);
        });
        cases.push(refused(
            &format!("train: [train.optim] {key} bad"),
            train(&c, &format!("to{i}")),
            &[key],
        ));
    }
    // Records.
    let datasets = |t: &mut toml::Table, path: &str| {
        let ds = t["datasets"].as_array_mut().unwrap();
        ds.truncate(1);
        ds[0]
            .as_table_mut()
            .unwrap()
            .insert("path".into(), path.into());
        t.remove("validation");
    };
    let rec = |img: &str| {
        serde_json::json!({"image": img, "kind": "caption", "answer": "a picture"}).to_string()
            + "\n"
    };
    write(d, "escape.jsonl", rec("../../../etc/passwd"));
    let c = train_cfg(d, "t_escape.toml", |t| datasets(t, "escape.jsonl"));
    cases.push(refused(
        "train: record image escaping the root",
        train(&c, "te1"),
        &["escape.jsonl", "etc/passwd"],
    ));
    write(d, "absolute.jsonl", rec("/etc/passwd"));
    let c = train_cfg(d, "t_abs.toml", |t| datasets(t, "absolute.jsonl"));
    cases.push(refused(
        "train: record image absolute",
        train(&c, "te2"),
        &["absolute.jsonl", "/etc/passwd"],
    ));
    write(
        d,
        "broken.jsonl",
        format!("{}{{\"image\": \n{}", rec("img/a.png"), rec("img/a.png")),
    );
    let c = train_cfg(d, "t_broken.toml", |t| datasets(t, "broken.jsonl"));
    cases.push(refused(
        "train: records with a broken line 2",
        train(&c, "te3"),
        &["broken.jsonl", "2"],
    ));
    let c = train_cfg(d, "t_nofile.toml", |t| datasets(t, "nothere.jsonl"));
    cases.push(refused(
        "train: dataset file missing",
        train(&c, "te4"),
        &["nothere.jsonl"],
    ));
    write(d, "missing_img.jsonl", rec("img/none.png"));
    let c = train_cfg(d, "t_noimg.toml", |t| datasets(t, "missing_img.jsonl"));
    cases.push(refused(
        "train: record image missing",
        train(&c, "te5"),
        &["img/none.png"],
    ));
    write(
        d,
        "qma_bad.json",
        serde_json::json!([{"image": "img/a.png", "kind": "qma",
        "question": "?", "choices": ["a", "b"], "answer_idx": 7}])
        .to_string(),
    );
    let c = train_cfg(d, "t_qma.toml", |t| datasets(t, "qma_bad.json"));
    cases.push(refused(
        "train: qma answer_idx out of range",
        train(&c, "te6"),
        &["qma_bad.json", "answer_idx"],
    ));

    // mde loop --check on edits of the tiny loop config.
    let base: toml::Table = toml::from_str(&read(&repo().join("configs/loop-tiny.toml"))).unwrap();
    let check = |name: &str, edit: &dyn Fn(&mut toml::Table)| -> Vec<String> {
        let mut t = base.clone();
        edit(&mut t);
        let p = write(d, name, toml::to_string(&t).unwrap());
        args(&[
            "loop",
            "--config",
            &s(&p),
            "--out",
            &s(&d.join("loop_out")),
            "--check",
        ])
    };
    let set = |sec: &'static str, key: &'static str, v: toml::Value| {
        move |t: &mut toml::Table| {
            t.entry(sec)
                .or_insert(toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap()
                .insert(key.into(), v.clone());
        }
    };
    for (i, (sec, key, v)) in [
        ("train", "steps", toml::Value::Integer(0)),
        ("train", "batch_size", toml::Value::Integer(0)),
        ("eval", "batch_size", toml::Value::Integer(0)),
        ("run", "rounds", toml::Value::Integer(-1)),
        ("abs", "queries_per_round", toml::Value::Integer(-3)),
        ("abs", "strategy", toml::Value::String("most_wrong".into())),
        ("abs", "similar_ratio", toml::Value::Float(2.0)),
        ("teacher", "kind", toml::Value::String("oracle".into())),
        ("teacher", "error_rate", toml::Value::Float(1.5)),
        ("model", "llm_hidden", toml::Value::Integer(0)),
        ("model", "vocab_size", toml::Value::Integer(0)),
        ("gen", "kind", toml::Value::String("essay".into())),
        ("run", "seeed", toml::Value::Integer(1)),
    ]
    .into_iter()
    .enumerate()
    {
        let f = set(sec, key, v);
        cases.push(refused(
            &format!("loop --check: [{sec}] {key} bad"),
            check(&format!("loop_{i}.toml"), &f),
            &[&format!("loop_{i}.toml"), key],
        ));
    }
    let p = write(
        d,
        "loop_syntax.toml",
        "[run]\nrounds = 1\n[world\nseed = 5\n",
    );
    cases.push(refused(
        "loop --check: TOML syntax error",
        args(&[
            "loop",
            "--config",
            &s(&p),
            "--out",
            &s(&d.join("lo")),
            "--check",
        ]),
        &["loop_syntax.toml", "line 3"],
    ));
    assert_all(cases);
}

#[test]
fn sample_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases = Vec::new();
    let bc = serde_json::json!({"id": "b1", "benchmark": "mmbench", "question": "q?",
        "choices": ["a", "b"], "answer_idx": 0, "image": {"kind": "coco", "image_id": 1},
        "question_type": "image_scene"});
    let good_bc = write(d, "bad_cases.jsonl", format!("{bc}\n{bc}\n"));
    let weights = write(d, "weights.json", "{\"image_scene\": 0.5}");
    let ann = write(
        d,
        "instances.json",
        serde_json::json!({"images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}],
            "categories": [{"id": 1, "name": "cat"}]})
        .to_string(),
    );
    let sample = |bc: &Path, w: &Path, a: &Path, extra: &[&str]| -> Vec<String> {
        let ratio = if extra.contains(&"--similar-ratio") {
            None
        } else {
            Some("0")
        };
        let mut v = args(&[
            "sample",
            "--bad-cases",
            &s(bc),
            "--weights",
            &s(w),
            "--annotations",
            &s(a),
            "--n",
            "2",
            "--out",
            &s(&d.join("sample_out")),
        ]);
        if let Some(r) = ratio {
            v.extend(args(&["--similar-ratio", r]));
        }
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let p = write(d, "bc_broken.jsonl", format!("{bc}\n{{\"id\": \n{bc}\n"));
    cases.push(refused(
        "sample: bad cases with a broken line 2",
        sample(&p, &weights, &ann, &[]),
        &["bc_broken.jsonl", "2"],
    ));
    let p = write(d, "bc_missing_field.jsonl", "{\"id\": \"b1\"}\n");
    cases.push(refused(
        "sample: bad case without fields",
        sample(&p, &weights, &ann, &[]),
        &["bc_missing_field.jsonl", "1"],
    ));
    let p = write(d, "w_bad.json", "{\"image_scene\": \"high\"}");
    cases.push(refused(
        "sample: weights not numbers",
        sample(&good_bc, &p, &ann, &[]),
        &["w_bad.json"],
    ));
    let p = write(d, "w_neg.json", "{\"image_scene\": -1.0}");
    cases.push(refused(
        "sample: negative weight",
        sample(&good_bc, &p, &ann, &[]),
        &["w_neg.json", "image_scene"],
    ));
    let p = write(d, "ann_bad.json", "{\"images\": [{\"id\": \"one\"}]}");
    cases.push(refused(
        "sample: COCO annotations malformed",
        sample(&good_bc, &weights, &p, &[]),
        &["ann_bad.json"],
    ));
    cases.push(refused(
        "sample: --similar-ratio above 1",
        sample(&good_bc, &weights, &ann, &["--similar-ratio", "2"]),
        &["similar"],
    ));
    cases.push(refused(
        "sample: unknown strategy",
        sample(&good_bc, &weights, &ann, &["--strategy", "most_wrong"]),
        &["most_wrong"],
    ));
    let p = write(d, "tax.json", "[{\"name\": 5}]");
    cases.push(refused(
        "sample: taxonomy file malformed",
        sample(&good_bc, &weights, &ann, &["--taxonomy", &s(&p)]),
        &["tax.json"],
    ));
    cases.push(refused(
        "sample: index missing with similar images asked for",
        sample(&good_bc, &weights, &ann, &["--similar-ratio", "0.5"]),
        &["index"],
    ));
    let p = write(d, "index.safetensors", b"garbage");
    cases.push(refused(
        "sample: index not safetensors",
        sample(
            &good_bc,
            &weights,
            &ann,
            &["--similar-ratio", "0.5", "--index", &s(&p)],
        ),
        &["index.safetensors"],
    ));
    assert_all(cases);
}

// ------------------------------------------------------------------------------------------
// mde generate / mde postprocess: queries, teacher configs, replies, a misbehaving teacher
// ------------------------------------------------------------------------------------------

fn query(i: usize, image: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "id": format!("q{i}"),
        "question_type": "image_scene",
        "type_definition": "the overall scene",
        "image_id": i,
        "captions": [format!("QID=q{i} a cat on a mat.")],
        "boxes": [],
        "examples": [],
        "image_path": image,
    })
}

fn jsonl(vals: &[serde_json::Value]) -> String {
    vals.iter().map(|v| v.to_string() + "\n").collect()
}

fn teacher(
    d: &Path,
    name: &str,
    base_url: &str,
    extra_teacher: &str,
    extra_runner: &str,
) -> PathBuf {
    write(
        d,
        name,
        format!(
            "[teacher]\nbase_url = \"{base_url}\"\nmodel = \"test-model\"\ntimeout_s = 1.0\nconnect_timeout_s = 1.0\n{extra_teacher}\n[runner]\nconcurrency = 2\nmax_attempts = 2\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\nprogress = false\n{extra_runner}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_corpus() {
    use server::{Fault, Plan};
    // One server whose behaviour depends on the query id: `hang*` sleeps past the client
    // timeout, `junk*` answers with a body that is not a completion, `drop*` breaks the
    // connection, `reject*` answers 400.
    let plan: Plan = Arc::new(|key: &str, _attempt: u32| {
        if key.starts_with("hang") {
            Some(Fault::Slow(Duration::from_secs(5)))
        } else if key.starts_with("junk") {
            Some(Fault::Malformed)
        } else if key.starts_with("drop") {
            Some(Fault::Drop)
        } else if key.starts_with("reject") {
            Some(Fault::BadRequest)
        } else {
            None
        }
    });
    let srv = server::start(plan, Duration::ZERO).await;
    let url = srv.base_url.clone();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let cases = tokio::task::spawn_blocking(move || {
        let d = d.as_path();
        let mut cases = Vec::new();
        let good_q = write(d, "queries.jsonl", jsonl(&[query(0, None), query(1, None)]));
        let good_t = teacher(d, "teacher.toml", &url, "", "");
        let gen = |q: &Path, t: &Path, out: &str| -> Vec<String> {
            args(&[
                "generate",
                "--queries",
                &s(q),
                "--teacher",
                &s(t),
                "--out",
                &s(&d.join(out)),
                "--no-progress",
            ])
        };
        // Queries.
        cases.push(refused("generate: queries missing", gen(&d.join("noq.jsonl"), &good_t, "g1"), &["noq.jsonl"]));
        let p = write(d, "q_broken.jsonl", format!("{}{{\"id\": \"q1\",\n{}", jsonl(&[query(0, None)]), jsonl(&[query(2, None)])));
        cases.push(refused("generate: queries with a broken line 2", gen(&p, &good_t, "g2"), &["q_broken.jsonl", "2"]));
        let p = write(d, "q_noid.jsonl", "{\"question_type\": \"image_scene\"}\n");
        cases.push(refused("generate: query without id", gen(&p, &good_t, "g3"), &["q_noid.jsonl", "id"]));
        let p = write(d, "q_dup.jsonl", jsonl(&[query(0, None), query(0, None)]));
        cases.push(refused("generate: duplicate query ids", gen(&p, &good_t, "g4"), &["q_dup.jsonl", "q0"]));
        let p = write(d, "q_empty.jsonl", "");
        cases.push(refused("generate: no queries", gen(&p, &good_t, "g5"), &["q_empty.jsonl"]));
        // Teacher configs.
        let t = write(d, "t_nomodel.toml", format!("[teacher]\nbase_url = \"{url}\"\nmodel = \"\"\n"));
        cases.push(refused("generate: teacher with an empty model", gen(&good_q, &t, "g6"), &["t_nomodel.toml", "model"]));
        let t = teacher(d, "t_unknown.toml", &url, "temprature = 0.5", "");
        cases.push(refused("generate: unknown teacher key", gen(&good_q, &t, "g7"), &["t_unknown.toml", "temprature"]));
        let t = teacher(d, "t_conc.toml", &url, "", "concurrency = 0");
        cases.push(refused("generate: concurrency 0", gen(&good_q, &t, "g8"), &["t_conc.toml", "concurrency"]));
        let t = teacher(d, "t_url.toml", "not a url", "", "");
        cases.push(refused("generate: base_url not a URL", gen(&good_q, &t, "g9"), &["base_url"]));
        let t = teacher(d, "t_temp.toml", &url, "temperature = -2.0", "");
        cases.push(refused("generate: negative temperature", gen(&good_q, &t, "g10"), &["temperature"]));
        let t = teacher(d, "t_timeout.toml", &url, "", "max_attempts = 0");
        cases.push(refused("generate: max_attempts 0", gen(&good_q, &t, "g11"), &["max_attempts"]));
        // Images and the path policy.
        let root = d.join("images");
        std::fs::create_dir_all(&root).unwrap();
        write(d, "outside/secret.png", b"\x89PNG secret");
        let t_vis = teacher(d, "t_vision.toml", &url, &format!("vision = true\nimage_root = \"{}\"", root.display()), "");
        let t_vis_noroot = teacher(d, "t_vision_noroot.toml", &url, "vision = true", "");
        for (i, (what, img)) in [
            ("absolute", "/etc/passwd"),
            ("escaping", "../outside/secret.png"),
            ("missing", "nothere.png"),
        ]
        .into_iter()
        .enumerate()
        {
            let p = write(d, &format!("q_img{i}.jsonl"), jsonl(&[query(0, Some(img))]));
            cases.push(refused(
                &format!("generate: query image {what}"),
                gen(&p, &t_vis, &format!("gi{i}")),
                &[&format!("q_img{i}.jsonl"), img],
            ));
        }
        let p = write(d, "q_img_rel.jsonl", jsonl(&[query(0, Some("a.png"))]));
        cases.push(refused("generate: vision without image_root", gen(&p, &t_vis_noroot, "gi9"), &["image_root"]));
        if std::os::unix::fs::symlink(d.join("outside/secret.png"), root.join("link.png")).is_ok() {
            let p = write(d, "q_link.jsonl", jsonl(&[query(0, Some("link.png"))]));
            cases.push(refused("generate: query image a symlink out of the root", gen(&p, &t_vis, "gl"), &["q_link.jsonl", "link.png"]));
        }
        // A teacher that hangs, answers garbage, drops the connection, rejects: the run ends
        // (no hang) and says which queries failed.
        for (i, id) in ["hang", "junk", "drop", "reject"].into_iter().enumerate() {
            let mut q = query(0, None);
            q["id"] = serde_json::json!(id);
            q["captions"] = serde_json::json!([format!("QID={id} a cat.")]);
            let p = write(d, &format!("q_{id}.jsonl"), jsonl(&[q]));
            cases.push(refused(&format!("generate: teacher {id}"), gen(&p, &good_t, &format!("gf{i}")), &[id]));
        }

        // mde postprocess.
        let reply = |id: &str| {
            serde_json::json!({"query_id": id, "text": "Question: What is shown?\nOptions: (A) a cat (B) a dog\nAnswer: (A) a cat\nRationale: The captions say so."})
        };
        let pp = |replies: &Path, out: &str| -> Vec<String> {
            args(&["postprocess", "--replies", &s(replies), "--queries", &s(&good_q), "--out", &s(&d.join(out))])
        };
        let r = write(d, "r_broken.jsonl", format!("{}not json\n{}", jsonl(&[reply("q0")]), jsonl(&[reply("q1")])));
        cases.push(refused("postprocess: replies with a broken line 2", pp(&r, "p1"), &["r_broken.jsonl", "2"]));
        let r = write(d, "r_torn.jsonl", format!("{}{{\"query_id\": \"q1\", \"te", jsonl(&[reply("q0")])));
        cases.push(reported("postprocess: torn last line", pp(&r, "p2"), &["r_torn.jsonl", "torn", "2"]));
        let r = write(d, "r_dup.jsonl", jsonl(&[reply("q0"), reply("q1"), reply("q0")]));
        cases.push(reported("postprocess: duplicate replies", pp(&r, "p3"), &["r_dup.jsonl", "duplicate", "q0"]));
        let r = write(d, "r_unknown.jsonl", jsonl(&[reply("q0"), reply("zz9")]));
        cases.push(reported("postprocess: reply of an unknown query", pp(&r, "p4"), &["unknown", "zz9"]));
        let r = write(d, "r_type.jsonl", "{\"query_id\": 5, \"text\": \"x\"}\n");
        cases.push(refused("postprocess: query_id not a string", pp(&r, "p5"), &["r_type.jsonl", "1"]));
        let mut a = pp(&write(d, "r_ok.jsonl", jsonl(&[reply("q0")])), "p6");
        a.extend(args(&["--config", &s(&d.join("none.toml"))]));
        cases.push(refused("postprocess: --config missing", a, &["none.toml"]));
        cases
    })
    .await
    .unwrap();
    let failures = tokio::task::spawn_blocking(move || check(cases))
        .await
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
