//! The parsers that take outside data, as functions of raw bytes: the fuzz targets of
//! `fuzz/fuzz_targets/` (coverage-guided, cargo-fuzz on nightly) and the seeded smoke test of the
//! workspace suite (`crates/mde-cli/tests/fuzz_smoke.rs`) both call these, so the suite runs
//! exactly what was fuzzed. Each function feeds the bytes to a parser and ignores the result:
//! an error is the right answer to bad input; a panic, a hang or an abort is the bug being
//! hunted.
#![allow(dead_code)]
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `data` to a file named `name` in a per-thread scratch folder (the loaders read paths)
/// and returns its path.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("scratch dir");
    }
    DIR.with(|d| {
        let p = d.path().join(name);
        let mut f = std::fs::File::create(&p).expect("scratch file");
        f.write_all(data).expect("write scratch");
        p
    })
}

fn scratch_dir(name: &str) -> PathBuf {
    let p = scratch(".probe", b"");
    let d = p.parent().unwrap().join(name);
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Benchmark TSVs: the TSV reader itself, then every TSV-based benchmark loader and the MMBench
/// dataset builder (VLMEvalKit layouts of MMBench, MME and SEED-Bench).
pub fn tsv(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = mde_eval::tsv::parse_tsv(text) {
            for r in 0..t.nrows().min(64) {
                for c in 0..t.ncols() {
                    let _ = t.py_str(r, c);
                    let _ = t.int(r, c);
                    let _ = t.float(r, c);
                }
            }
            let _ = mde_eval::mmbench::McqDataset::from_table(t);
        }
    }
    let p = scratch("bench.tsv", data);
    for b in [
        mde_eval::runner::Benchmark::MMBench,
        mde_eval::runner::Benchmark::Mme,
        mde_eval::runner::Benchmark::SeedBench,
    ] {
        let _ = mde_eval::runner::load_items(b, &p, Some(p.parent().unwrap()));
    }
}

/// Benchmark JSON: A-OKVQA questions and predictions, SEED-Bench annotations and predictions.
pub fn bench_json(data: &[u8]) {
    let p = scratch("bench.json", data);
    let _ = mde_eval::runner::load_items(mde_eval::runner::Benchmark::Aokvqa, &p, None);
    let _ = mde_eval::runner::load_items(mde_eval::runner::Benchmark::SeedBench, &p, None);
    let _ = mde_eval::aokvqa::read_predictions(&p);
    let _ = mde_eval::seedbench::read_predictions(&p);
}

/// Teacher replies: the Q&A reply parser and filters, the chat-completion body parser, the
/// `Retry-After` parser, and the replies store as `mde postprocess` reads it.
pub fn teacher_reply(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = mde_gen::parse::parse_reply(&text);
    let _ = mde_gen::client::parse_retry_after(&text, 1.7e9);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = mde_gen::client::parse_completion(&v, "model");
    }
    let p = scratch("replies.jsonl", data);
    let _ = mde_core::io::read_jsonl::<mde_core::records::TeacherReplyRecord>(&p);
    let _ = mde_core::io::JsonlStore::<mde_core::records::TeacherReplyRecord>::open(
        &p,
        |r: &mde_core::records::TeacherReplyRecord| r.query_id.clone(),
    );
}

/// Weight files: safetensors headers and PyTorch zip pickles (`.pth`), through the loader
/// every model path uses.
pub fn weights(data: &[u8]) {
    let _ = minigpt4::weights::read_tensors(&scratch("w.safetensors", data));
    let _ = minigpt4::weights::read_tensors(&scratch("w.pth", data));
}

/// TOML configs: the loop config (every section, its validation) and the generation config.
pub fn toml_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch_dir("cfg");
    let _ = mde_loop::config::LoopConfig::parse(text, Some(&dir.join("loop.toml")));
    let p = scratch("gen.toml", data);
    let _ = mde_gen::GenConfig::load(&p);
    let _ = Path::new(".");
}

/// One fuzz target: it takes any bytes and must return without panicking.
pub type Target = fn(&[u8]);

/// All targets by name, for the smoke test and the corpus tools.
pub const TARGETS: &[(&str, Target)] = &[
    ("tsv", tsv),
    ("bench_json", bench_json),
    ("teacher_reply", teacher_reply),
    ("weights", weights),
    ("toml_config", toml_config),
];
