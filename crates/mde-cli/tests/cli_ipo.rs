//! `mde ipo` end to end through the binary: init, manual versions via the library, status, diff,
//! activate, and a clear error outside a workspace.
use std::process::Command;

fn mde(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mde"))
        .args(args)
        .output()
        .expect("run mde");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ipo_commands_work_on_a_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ipo");
    let ws_s = ws.to_str().unwrap();
    let tpl = dir.path().join("t.txt");
    std::fs::write(&tpl, "line one {captions}\nline two\n").unwrap();

    let (ok, _, err) = mde(&["ipo", "--dir", ws_s, "status"]);
    assert!(!ok && err.contains("not an IPO workspace"), "{err}");

    let (ok, out, err) = mde(&[
        "ipo",
        "--dir",
        ws_s,
        "init",
        "--template",
        tpl.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("active v1"), "{out}");

    let ipo = mde_ipo::Ipo::open(&ws).unwrap();
    ipo.store
        .add(
            Some(1),
            "line one {captions}\nline 2\n",
            mde_ipo::versions::VersionSource::Manual,
            "rename",
        )
        .unwrap();

    let (ok, out, err) = mde(&["ipo", "--dir", ws_s, "diff"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("- line two") && out.contains("+ line 2"),
        "{out}"
    );

    let (ok, out, _) = mde(&["ipo", "--dir", ws_s, "status"]);
    assert!(
        ok && out.contains("active version: v2") && out.contains("no trial batch"),
        "{out}"
    );

    let (ok, _, _) = mde(&["ipo", "--dir", ws_s, "activate", "1"]);
    assert!(ok);
    let (ok, out, _) = mde(&["ipo", "--dir", ws_s, "active"]);
    assert!(ok && out.trim().ends_with("v1/template.txt"), "{out}");
    let (ok, _, err) = mde(&["ipo", "--dir", ws_s, "activate", "7"]);
    assert!(!ok && err.contains("no prompt version v7"), "{err}");
}
