//! Out-of-range settings are refused up front, naming the flag or the config key, with a
//! non-zero exit and no panic: `mde ask` decoding flags (checked before any model file is
//! looked at, so the model paths here do not exist) and `mde eval`'s model config
//! (`max_batch = 0` is an error, not a silent 1).
use std::process::{Command, Output};

fn mde(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running mde")
}

const MISSING: &str = "/nonexistent/mde-bad-args";

fn ask(extra: &[&str]) -> Output {
    let mut a = vec![
        "ask",
        "--image",
        "/nonexistent/mde-bad-args/image.png",
        "--question",
        "What is this?",
        "--blip2",
        MISSING,
        "--vicuna",
        MISSING,
        "--cpu",
    ];
    a.extend_from_slice(extra);
    mde(&a)
}

fn assert_refused(out: &Output, case: &str, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: exit 0\n{err}");
    assert!(!err.contains("panicked"), "{case}: panicked\n{err}");
    for w in want {
        assert!(err.contains(w), "{case}: stderr lacks `{w}`\n{err}");
    }
}

#[test]
fn ask_refuses_bad_decoding_flags_before_loading() {
    for (args, want) in [
        (
            &["--num-beams", "0"][..],
            &["--num-beams 0", "must be at least 1"][..],
        ),
        (&["--temperature", "-1"], &["--temperature -1", ">= 0"]),
        (&["--temperature=-1"], &["--temperature -1"]),
        (&["--top-p", "7"], &["--top-p 7: must be in (0, 1]"]),
        (&["--top-p", "0"], &["--top-p 0"]),
        (&["--max-new-tokens", "0"], &["--max-new-tokens 0"]),
        (
            &["--sample", "--temperature", "NaN"],
            &["--temperature NaN"],
        ),
    ] {
        let out = ask(args);
        assert_refused(&out, &args.join(" "), want);
        // Refused before any file is read: the missing paths are never mentioned.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(MISSING), "{args:?}: reached loading\n{err}");
    }
    // Control: with valid flags the same command gets to the (missing) model files.
    let out = ask(&["--num-beams", "2", "--length-penalty", "-1"]);
    assert_refused(&out, "valid flags", &[MISSING]);
}

#[test]
fn eval_refuses_zero_max_batch_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "max_batch = 0\n",
            &["max_batch = 0", "must be at least 1"][..],
        ),
        ("[mmbench]\nnum_beams = 0\n", &["mmbench.num_beams = 0"]),
        ("[chat]\ntop_p = 2.0\n", &["chat.top_p = 2"]),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("model{i}.toml"));
        std::fs::write(
            &model,
            format!("blip2 = \"{MISSING}\"\nvicuna = \"{MISSING}\"\n{extra}"),
        )
        .unwrap();
        let out = mde(&[
            "eval",
            "mmbench",
            "--data",
            "/nonexistent/mde-bad-args/MMBench_DEV_EN.tsv",
            "--model",
            model.to_str().unwrap(),
            "--out",
            dir.path().join(format!("out{i}")).to_str().unwrap(),
        ]);
        let mut w = want.to_vec();
        let name = format!("model{i}.toml");
        w.push(&name);
        assert_refused(&out, extra, &w);
    }
}
