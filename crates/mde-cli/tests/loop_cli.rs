//! `mde loop` as a user runs it, on the CI-sized loop of `configs/loop-tiny.toml`: `--help`,
//! `--check`, and a run killed with SIGKILL at several points (mid pretraining of the cached
//! base model, mid round 0, mid generation, mid round training) and re-run each time, which must
//! end exactly where an uninterrupted run of the same config ends: the loop is deterministic
//! (seeded sampling and generation, bit-exact training resume), so any difference is a resume bug.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

fn mde() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mde"))
}

fn tiny_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/loop-tiny.toml")
}

/// Copies the tiny config into `dir` with its cache in `cache` (so a test never touches the
/// checkout's `.cache`); returns the copy's path.
fn config_copy(dir: &Path, name: &str, cache: &Path) -> Result<PathBuf> {
    let src = tiny_config();
    let text = std::fs::read_to_string(&src).with_context(|| src.display().to_string())?;
    let mut t: toml::Table = text.parse().with_context(|| src.display().to_string())?;
    let run = t
        .entry("run")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .context("[run] is not a table")?;
    run.insert(
        "cache_dir".into(),
        toml::Value::String(cache.display().to_string()),
    );
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(&t)?)?;
    Ok(path)
}

fn rounds_of(config: &Path) -> Result<usize> {
    let t: toml::Table = std::fs::read_to_string(config)?.parse()?;
    Ok(t.get("run")
        .and_then(|r| r.get("rounds"))
        .and_then(|r| r.as_integer())
        .unwrap_or(2) as usize)
}

#[test]
fn loop_help_names_the_options() -> Result<()> {
    let out = mde().args(["loop", "--help"]).output()?;
    ensure!(out.status.success(), "mde loop --help failed: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    for opt in ["--config", "--out", "--check", "--base-steps", "--ablation"] {
        ensure!(
            text.contains(opt),
            "`mde loop --help` does not mention {opt}:\n{text}"
        );
    }
    Ok(())
}

/// `mde loop --config <a copy of the tiny config> ARGS --check`; the copy's cache folder is
/// returned so that a test can see whether work started.
fn check_tiny(tmp: &Path, args: &[&str]) -> Result<(std::process::Output, PathBuf)> {
    let cache = tmp.join("cache");
    let cfg = config_copy(tmp, "loop.toml", &cache)?;
    let out = mde()
        .arg("loop")
        .arg("--config")
        .arg(&cfg)
        .args(args)
        .arg("--check")
        .output()?;
    Ok((out, cache))
}

#[test]
fn check_passes_on_the_tiny_config_and_starts_no_work() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (out, cache) = check_tiny(tmp.path(), &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The exit status and the printed verdict must agree.
    let says_ok = stdout.contains("all inputs present");
    ensure!(
        out.status.success() == says_ok,
        "exit status {} disagrees with the report:\n{stdout}\n{stderr}",
        out.status
    );
    // The tiny config generates everything it needs (a [world]), so nothing can be missing.
    ensure!(
        says_ok,
        "--check found problems in the tiny config:\n{stdout}\n{stderr}"
    );
    ensure!(
        stdout.contains("[world]") && stdout.contains("[model]"),
        "--check did not report on the world and the model:\n{stdout}"
    );
    ensure!(
        !cache.exists(),
        "--check started work: {} was created",
        cache.display()
    );
    Ok(())
}

#[test]
fn overrides_are_validated_before_any_work() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (out, cache) = check_tiny(tmp.path(), &["--base-steps", "0"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "--base-steps 0 was accepted");
    ensure!(stderr.contains("[base] steps"), "unclear error: {stderr}");
    ensure!(!cache.exists(), "a rejected config started work");
    Ok(())
}

/// A condition on the files of a run that triggers its kill.
type KillWhen = Box<dyn Fn() -> bool>;

/// How a supervised `mde loop` ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// Killed (SIGKILL) once `at` held, while it was still running.
    Killed,
    /// Exited on its own.
    Exited(std::process::ExitStatus),
}

/// Runs `mde loop --config cfg --out out --no-progress`; kills it as soon as `kill_when` holds.
fn run_loop(
    cfg: &Path,
    out: &Path,
    log: &Path,
    kill_when: Option<&dyn Fn() -> bool>,
) -> Result<Ended> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = mde()
        .arg("loop")
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .env("MDE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()?;
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ended::Exited(status));
        }
        if kill_when.is_some_and(|f| f()) {
            child.kill()?;
            child.wait()?;
            return Ok(Ended::Killed);
        }
        if t0.elapsed() > Duration::from_secs(600) {
            child.kill()?;
            child.wait()?;
            bail!("mde loop ran for 10 minutes; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Any `base-*/train/latest.json` in `cache`: the base pretraining wrote a checkpoint.
fn base_checkpoint_in(cache: &Path) -> bool {
    std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().starts_with("base-")
                    && e.path().join("train").join("latest.json").exists()
            })
        })
        .unwrap_or(false)
}

/// Every line of a JSONL file, parsed (a torn or garbled line is an error).
fn jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
        })
        .collect()
}

fn files_named(root: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(root)? {
        let p = e?.path();
        if p.is_dir() {
            files_named(&p, ext, out)?;
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    Ok(())
}

/// The key field of the append-only stores of a run, by file name.
fn store_key(file: &str) -> Option<&'static str> {
    match file {
        "predictions.jsonl" | "queries.jsonl" => Some("id"),
        "replies.jsonl" => Some("query_id"),
        "labels.jsonl" => Some("key"),
        _ => None,
    }
}

/// Checks that every keyed JSONL store under `run` holds each key once; returns the stores by
/// path relative to `run`, keyed records sorted by key (without timestamps).
fn stores(run: &Path) -> Result<BTreeMap<String, BTreeMap<String, Value>>> {
    let mut files = Vec::new();
    files_named(run, "jsonl", &mut files)?;
    let mut out = BTreeMap::new();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(key) = store_key(&name) else {
            continue;
        };
        let mut by_key = BTreeMap::new();
        for (i, r) in jsonl(&f)?.into_iter().enumerate() {
            let k = r
                .get(key)
                .and_then(|v| v.as_str())
                .with_context(|| format!("{} record {}: no {key:?}", f.display(), i + 1))?
                .to_string();
            ensure!(
                by_key.insert(k.clone(), r).is_none(),
                "{}: duplicate {key} {k:?} after kill and resume",
                f.display()
            );
        }
        let rel = f.strip_prefix(run)?.to_string_lossy().into_owned();
        // The reply's creation time is the one field that differs between two runs.
        for r in by_key.values_mut() {
            if let Some(o) = r.as_object_mut() {
                o.remove("created");
            }
        }
        out.insert(rel, by_key);
    }
    Ok(out)
}

/// The parts of report.json that the run's inputs determine (not timings).
fn results(run: &Path) -> Result<Vec<Value>> {
    let r: Value = serde_json::from_slice(&std::fs::read(run.join("report/report.json"))?)?;
    let rounds = r["rounds"].as_array().context("report.json: no rounds")?;
    Ok(rounds
        .iter()
        .map(|x| {
            serde_json::json!({
                "round": x["round"],
                "mine": x["mine"],
                "report": x["report"],
                "error_rates": x["error_rates"],
                "sampling_probabilities": x["sampling_probabilities"],
                "queries_per_type": x["queries_per_type"],
                "accepted_per_type": x["accepted_per_type"],
                "dropped": x["dropped"],
                "train_steps": x["train"]["steps"],
                "train_final_loss": x["train"]["final_loss"],
                "train_examples": x["train"]["examples"],
            })
        })
        .collect())
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // MDE_LOOP_CLI_DIR keeps the runs and their logs for inspection (it must be empty).
    let t = &match std::env::var_os("MDE_LOOP_CLI_DIR") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    std::fs::create_dir_all(t)?;
    let cache = t.join("cache");
    let cfg = config_copy(t, "loop.toml", &cache)?;
    let rounds = rounds_of(&cfg)?;
    ensure!(
        rounds >= 1,
        "the tiny config must run at least one generated round"
    );
    let run = t.join("run");
    let log = t.join("killed.log");
    let last = format!("round_{rounds}");

    // Kill points, in the order the loop reaches them; each re-run resumes and is killed at
    // the next one. The cache starts cold, so the first lands inside the base pretraining.
    let (c, r) = (cache.clone(), run.clone());
    let kill_points: Vec<(&str, KillWhen)> = vec![
        (
            "a checkpoint of the base pretraining",
            Box::new(move || base_checkpoint_in(&c)),
        ),
        ("base/done.json", {
            let r = r.clone();
            Box::new(move || r.join("base/done.json").exists())
        }),
        ("generate/replies.jsonl of the last round", {
            let p = r.join(&last).join("generate/replies.jsonl");
            Box::new(move || p.exists())
        }),
        ("a checkpoint of the last round's training", {
            let p = r.join(&last).join("train/latest.json");
            Box::new(move || p.exists())
        }),
    ];
    for (what, when) in &kill_points {
        let ended = run_loop(&cfg, &run, &log, Some(when.as_ref()))?;
        ensure!(
            ended == Ended::Killed,
            "the run ended ({ended:?}) before {what} appeared; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let ended = run_loop(&cfg, &run, &log, None)?;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    match ended {
        Ended::Exited(s) if s.success() => {}
        e => bail!("the resumed run failed ({e:?}):\n{log_text}"),
    }
    ensure!(
        log_text.contains("done in"),
        "no final summary:\n{log_text}"
    );

    // The uninterrupted run, in its own folder and with its own (cold) cache, so that the
    // base pretraining is compared too.
    let ref_cfg = config_copy(t, "ref.toml", &t.join("cache_ref"))?;
    let ref_run = t.join("ref");
    let ref_log = t.join("ref.log");
    match run_loop(&ref_cfg, &ref_run, &ref_log, None)? {
        Ended::Exited(s) if s.success() => {}
        e => bail!(
            "the uninterrupted run failed ({e:?}):\n{}",
            std::fs::read_to_string(&ref_log).unwrap_or_default()
        ),
    }

    // No store holds a key twice, and every store holds what the uninterrupted run's holds.
    let got = stores(&run)?;
    let want = stores(&ref_run)?;
    for must in [
        "classify/labels.jsonl",
        "round_0/eval_mine/predictions.jsonl",
    ] {
        ensure!(got.contains_key(must), "the resumed run has no {must}");
    }
    ensure!(
        got.contains_key(&format!("{last}/generate/replies.jsonl")),
        "the resumed run has no {last}/generate/replies.jsonl"
    );
    ensure!(
        got.keys().collect::<Vec<_>>() == want.keys().collect::<Vec<_>>(),
        "stores differ: {:?} vs {:?}",
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, records) in &got {
        let other = &want[path];
        let keys: HashSet<&String> = records.keys().collect();
        ensure!(
            keys == other.keys().collect(),
            "{path}: the resumed run holds other keys than the uninterrupted one"
        );
        for (k, v) in records {
            ensure!(
                v == &other[k],
                "{path} {k}: resumed {v} vs uninterrupted {}",
                other[k]
            );
        }
    }
    // The generated training data and the report agree exactly.
    let v1 = |dir: &Path| -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join(&last).join("postprocess/gptvqa_v1.json"),
        )?)?)
    };
    ensure!(
        v1(&run)? == v1(&ref_run)?,
        "gptvqa_v1.json differs after resume"
    );
    let (a, b) = (results(&run)?, results(&ref_run)?);
    ensure!(a.len() == rounds + 1, "report.json has {} rounds", a.len());
    for (x, y) in a.iter().zip(&b) {
        ensure!(
            x == y,
            "report.json differs after resume:\nresumed {x:#}\nuninterrupted {y:#}"
        );
    }
    Ok(())
}

/// The README's form: a relative `--out` (and the default cache beside it), run from another
/// working directory. Bad-case image paths must come out absolute so that ABS finds them.
#[test]
fn relative_out_folder_runs_to_a_report() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cfg = std::fs::canonicalize(tiny_config())?;
    let st = mde()
        .current_dir(tmp.path())
        .args(["loop", "--config"])
        .arg(&cfg)
        .args(["--out", "runs/rel", "--no-progress"])
        .status()?;
    assert!(st.success(), "mde loop with a relative --out failed");
    assert!(tmp.path().join("runs/rel/report/report.json").exists());
    assert!(tmp.path().join("runs/.cache").is_dir());
    Ok(())
}
