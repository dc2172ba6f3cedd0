//! `mde loop` as a user runs it, on the CI-sized loop of `configs/loop-tiny.toml`: `--help`,
//! `--check`, and a run killed with SIGKILL at several points (mid pretraining of the cached
//! visual encoder and base model, mid round 0, mid generation, mid round training) and re-run
//! each time, which must end exactly where an uninterrupted run of the same config ends: the
//! loop is deterministic (seeded sampling and generation, bit-exact training resume), so any
//! difference is a resume bug. Every file of the run and of its cache is compared with the
//! uninterrupted run's, reports and summaries included, byte for byte but for the wall-clock
//! fields listed in [`WALL_CLOCK_KEYS`].

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

/// Any `{prefix}*/train/latest.json` in `cache`: the base pretraining (`base-`) or the
/// visual-encoder pretraining (`vision-`) wrote a checkpoint.
fn checkpoint_in(cache: &Path, prefix: &str) -> bool {
    std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().starts_with(prefix)
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
    // The killed run and the uninterrupted one live in folders of the same layout
    // (`ROOT/{loop.toml,cache,run}`), so that their files can be compared with the root
    // replaced.
    let (killed, reference) = (t.join("killed"), t.join("ref"));
    std::fs::create_dir_all(&killed)?;
    std::fs::create_dir_all(&reference)?;
    let cache = killed.join("cache");
    let cfg = config_copy(&killed, "loop.toml", &cache)?;
    let rounds = rounds_of(&cfg)?;
    ensure!(
        rounds >= 1,
        "the tiny config must run at least one generated round"
    );
    let run = killed.join("run");
    let log = t.join("killed.log");
    let last = format!("round_{rounds}");

    // Kill points, in the order the loop reaches them; each re-run resumes and is killed at
    // the next one. The cache starts cold, so the first lands inside the visual-encoder
    // pretraining, the second inside the base pretraining.
    let (c, r) = (cache.clone(), run.clone());
    let c2 = cache.clone();
    let kill_points: Vec<(&str, KillWhen)> = vec![
        (
            "a checkpoint of the visual-encoder pretraining",
            Box::new(move || checkpoint_in(&c2, "vision-")),
        ),
        (
            "a checkpoint of the base pretraining",
            Box::new(move || checkpoint_in(&c, "base-")),
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
    // What a writer killed between its temp and its rename leaves (a kill above may or may not
    // have left some): the resumed run must remove these when it writes the same targets, and
    // the comparison of the file trees below finds any temp left anywhere.
    let planted = plant_stale_temps(&run, &last)?;
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

    for p in &planted {
        ensure!(!p.exists(), "the resumed run left {}", p.display());
    }

    // The uninterrupted run, in its own folder and with its own (cold) cache, so that the
    // pretraining is compared too.
    let ref_cfg = config_copy(&reference, "loop.toml", &reference.join("cache"))?;
    let ref_run = reference.join("run");
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
    // Every other file, reports and summaries first among them: the same.
    same_trees(&killed, &reference)
}

/// A pid that runs no process (Linux pids stop at 2^22).
const DEAD_PID: u32 = 4_000_000_000;

/// Plants the leftovers of killed temp-then-rename writers (a half-written checkpoint folder
/// of the last round's training, a temp of report.json) where the resumed run writes again;
/// returns them. None without `/proc`, where a dead writer cannot be told from a live one.
fn plant_stale_temps(run: &Path, last: &str) -> Result<Vec<PathBuf>> {
    if !Path::new("/proc/self").exists() {
        return Ok(Vec::new());
    }
    let ck = run
        .join(last)
        .join("train")
        .join(mde_core::io::temp_name("checkpoint-000006", DEAD_PID));
    std::fs::create_dir_all(&ck)?;
    std::fs::write(ck.join("trainable.safetensors"), b"half written")?;
    let report = run.join("report");
    std::fs::create_dir_all(&report)?;
    let rj = report.join(mde_core::io::temp_name("report.json", DEAD_PID));
    std::fs::write(&rj, b"{\"half")?;
    Ok(vec![ck, rj])
}

/// The JSON fields that hold wall-clock time and nothing else, in every JSON file of a run
/// and its cache (checked: no other field of these files holds a timing):
/// - `seconds`: every step's `done.json` (the step's wall time); a training summary's wall time
///   (`TrainSummary` in `round_k/train/done.json` and `report.json`, `PretrainInfo` in
///   `base/done.json` and the cache's `base-*/pretrain.json`, `VisionPretrainInfo` in the
///   cache's `vision-*/done.json` and nested in those); a round's step timings (`report.json`).
/// - `total_seconds`: the run's wall time (`report.json`).
///
/// `report.md` shows the same timings; it is compared as the rendering of `report.json` with
/// these fields zeroed (and must be exactly the rendering of its `report.json`).
const WALL_CLOCK_KEYS: &[&str] = &["seconds", "total_seconds"];

/// `generate/summary.json` is the teacher runner's account of its last invocation (what that
/// process sent and received, at what rate): after a kill it counts the replies stored before
/// as `already_done`. Only its fields about the store are compared.
const RUNNER_SUMMARY_KEYS: &[&str] = &[
    "teacher",
    "replies_path",
    "total_queries",
    "store_total_tokens",
    "store_cost",
    "finished",
];

fn all_files(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            all_files(root, &p, out)?;
        } else {
            out.insert(p.strip_prefix(root)?.to_string_lossy().into_owned(), p);
        }
    }
    Ok(())
}

/// A file's text with `root` replaced by `ROOT` (None for binary files).
fn text_of(path: &Path, root: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path)?;
    Ok(String::from_utf8(bytes)
        .ok()
        .map(|t| t.replace(&root.display().to_string(), "ROOT")))
}

fn null_wall_clock(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if WALL_CLOCK_KEYS.contains(&k.as_str()) {
                    *x = Value::Null;
                } else {
                    null_wall_clock(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(null_wall_clock),
        _ => {}
    }
}

/// `report.md` checked against its `report.json`, then rendered with the timings zeroed.
fn report_md_without_timings(md: &str, json: &str, rel: &str) -> Result<String> {
    let mut r: mde_loop::report::LoopReport =
        serde_json::from_str(json).with_context(|| format!("{rel}: report.json"))?;
    ensure!(
        mde_loop::report::render_markdown(&r) == md,
        "{rel} is not the rendering of its report.json"
    );
    r.total_seconds = 0.0;
    for x in &mut r.rounds {
        x.seconds.values_mut().for_each(|s| *s = 0.0);
        if let Some(t) = &mut x.train {
            t.seconds = 0.0;
        }
    }
    Ok(mde_loop::report::render_markdown(&r))
}

/// Every file under `a` has its twin under `b` and no file is missing: JSONL stores are
/// compared by key above (their order is the teacher's completion order); JSON files, once
/// `a` / `b` is replaced in them and [`WALL_CLOCK_KEYS`] are removed; `report.md` as its
/// rendering without timings; everything else (weights and optimizer states of checkpoints,
/// SVG charts, tokenizers, the world) byte for byte.
fn same_trees(a: &Path, b: &Path) -> Result<()> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    all_files(a, a, &mut fa)?;
    all_files(b, b, &mut fb)?;
    let only_a: Vec<&String> = fa.keys().filter(|k| !fb.contains_key(*k)).collect();
    let only_b: Vec<&String> = fb.keys().filter(|k| !fa.contains_key(*k)).collect();
    ensure!(
        only_a.is_empty() && only_b.is_empty(),
        "file trees differ: only in the resumed run {only_a:?}, only in the uninterrupted one \
         {only_b:?}"
    );
    let mut compared = 0;
    for (rel, pa) in &fa {
        let pb = &fb[rel];
        if rel.ends_with(".jsonl") {
            continue;
        }
        let (ta, tb) = (text_of(pa, a)?, text_of(pb, b)?);
        let (Some(ta), Some(tb)) = (ta, tb) else {
            ensure!(
                std::fs::read(pa)? == std::fs::read(pb)?,
                "{rel} differs after kill and resume"
            );
            compared += 1;
            continue;
        };
        if rel.ends_with(".json") {
            let (mut va, mut vb): (Value, Value) = (
                serde_json::from_str(&ta).with_context(|| format!("{rel}: not JSON"))?,
                serde_json::from_str(&tb).with_context(|| format!("{rel}: not JSON"))?,
            );
            if rel.ends_with("generate/summary.json") {
                let pick = |v: &Value| -> Value {
                    RUNNER_SUMMARY_KEYS
                        .iter()
                        .map(|k| (k.to_string(), v[*k].clone()))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                };
                (va, vb) = (pick(&va), pick(&vb));
            }
            null_wall_clock(&mut va);
            null_wall_clock(&mut vb);
            ensure!(
                va == vb,
                "{rel} differs after kill and resume (wall-clock fields {WALL_CLOCK_KEYS:?} \
                 aside):\nresumed {va:#}\nuninterrupted {vb:#}"
            );
        } else if rel.ends_with("report/report.md") {
            let json = |root: &Path| text_of(&root.join(rel.replace(".md", ".json")), root);
            let ma = report_md_without_timings(&ta, &json(a)?.unwrap_or_default(), rel)?;
            let mb = report_md_without_timings(&tb, &json(b)?.unwrap_or_default(), rel)?;
            ensure!(
                ma == mb,
                "{rel} differs after kill and resume (timings aside):\nresumed\n{ma}\n\
                 uninterrupted\n{mb}"
            );
        } else {
            ensure!(
                ta == tb,
                "{rel} differs after kill and resume:\nresumed\n{ta}\nuninterrupted\n{tb}"
            );
        }
        compared += 1;
    }
    for must in [
        "run/report/report.json",
        "run/report/report.md",
        "run/base/done.json",
    ] {
        ensure!(fa.contains_key(must), "no {must}");
    }
    ensure!(compared > 20, "only {compared} files compared");
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

    // The loop's postprocess step is `mde postprocess`: the round's replies and queries, with
    // the loop's `[gen.postprocess]`, give the same files byte for byte.
    if rounds_of(&cfg)? == 0 {
        return Ok(());
    }
    let rd = tmp.path().join("runs/rel/round_1");
    let loop_cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&cfg)?)?;
    let post_cfg = loop_cfg
        .get("gen")
        .and_then(|g| g.get("postprocess"))
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(Default::default()));
    let mut gen_toml = toml::Table::new();
    gen_toml.insert("postprocess".into(), post_cfg);
    let gen_path = tmp.path().join("postprocess.toml");
    std::fs::write(&gen_path, toml::to_string(&gen_toml)?)?;
    let cli_out = tmp.path().join("cli_post");
    let o = mde()
        .arg("postprocess")
        .arg("--replies")
        .arg(rd.join("generate/replies.jsonl"))
        .arg("--queries")
        .arg(rd.join("sample/queries.jsonl"))
        .arg("--config")
        .arg(&gen_path)
        .arg("--out")
        .arg(&cli_out)
        .output()?;
    ensure!(
        o.status.success(),
        "mde postprocess: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut compared = 0;
    for e in std::fs::read_dir(&cli_out)? {
        let name = e?.file_name();
        let (a, b) = (
            std::fs::read(cli_out.join(&name))?,
            std::fs::read(rd.join("postprocess").join(&name))
                .with_context(|| format!("the loop did not write {name:?}"))?,
        );
        ensure!(
            a == b,
            "{name:?} differs between the loop and mde postprocess"
        );
        compared += 1;
    }
    ensure!(compared >= 6, "{compared} files compared");
    Ok(())
}
