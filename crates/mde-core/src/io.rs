//! Never-lose-work file I/O: atomic writes and a resumable append-only JSONL store.
use crate::error::{CoreError, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, then rename.
/// A reader sees the old file or the new one, never a partial one. Stale temps of the same
/// target left by killed writers are removed first ([`clean_stale_temps`]).
pub fn atomic_write(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Best effort: a stale temp that cannot be removed must not fail the write.
    let _ = clean_stale_temps(dir, &file_name);
    let tmp = dir.join(temp_name(&file_name, std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| CoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| CoreError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    Ok(())
}

/// The name of the temp file or folder that a temp-then-rename writer of `target` (a file or
/// folder name) in process `pid` uses, in the target's directory: `.{target}.{pid}.tmp`.
/// Every writer of mde uses it, so that [`clean_stale_temps`] recognises its leftovers.
pub fn temp_name(target: &str, pid: u32) -> String {
    format!(".{target}.{pid}.tmp")
}

/// The target and writer pid of a temp name: `.{target}.{pid}.tmp` ([`temp_name`]), or
/// `.{target}.tmp-{pid}` (the checkpoint folders of mde-train before [`temp_name`]).
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (target, pid) = match rest.strip_suffix(".tmp") {
        Some(r) => r.rsplit_once('.')?,
        None => rest.rsplit_once(".tmp-")?,
    };
    if target.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((target, pid.parse().ok()?))
}

/// Whether process `pid` may still be running: on Linux, whether `/proc/{pid}` exists. Where
/// `/proc` is not mounted nothing can be told, and every pid counts as running.
pub fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Removes the stale temps of `target` in `dir`: entries named as [`parse_temp_name`] reads
/// them, of this exact target, whose writer is neither this process nor a running one
/// ([`process_alive`]): the leftovers of a writer killed between creating its temp and renaming
/// it (for a checkpoint folder, possibly gigabytes). Nothing else is touched: not the target,
/// not a temp of another target, not a temp of a live process. A temp folder is removed with
/// its contents, a symlink as a link. Returns the removed paths; a missing `dir` is no error.
pub fn clean_stale_temps(dir: &Path, target: &str) -> Result<Vec<PathBuf>> {
    clean_stale_temps_where(dir, |t| t == target)
}

/// [`clean_stale_temps`] for every target that `is_target` accepts (e.g. every
/// `checkpoint-NNNNNN` folder of a training run).
pub fn clean_stale_temps_where(
    dir: &Path,
    is_target: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CoreError::io(dir, e)),
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some((target, pid)) = name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if !is_target(target) || pid == me || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let res = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => removed.push(path),
            // Another cleaner got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io(&path, e)),
        }
    }
    Ok(removed)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| CoreError::Json {
        path: path.into(),
        source: e,
    })?;
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

/// Writes `records` as JSONL (one compact JSON value per line) atomically: for files that are
/// derived and rewritten whole (queries, bad cases), not for append-only stores
/// ([`JsonlStore`]).
pub fn write_jsonl<T: Serialize>(path: impl AsRef<Path>, records: &[T]) -> Result<()> {
    let path = path.as_ref();
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).map_err(|e| CoreError::Json {
            path: path.into(),
            source: e,
        })?;
        text.push(b'\n');
    }
    atomic_write(path, &text)
}

/// The text of a JSONL file whose last, unterminated line may have been cut inside a UTF-8
/// sequence (a writer killed mid-append). Returns the text without such a torn tail and
/// whether there was one; invalid UTF-8 anywhere else is an error naming the line.
pub fn read_jsonl_text(path: &Path) -> Result<(String, bool)> {
    let bytes = fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let bytes = match String::from_utf8(bytes) {
        Ok(s) => return Ok((s, false)),
        Err(e) => e.into_bytes(),
    };
    let cut = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    match std::str::from_utf8(&bytes[..cut]) {
        Ok(head) => Ok((head.to_string(), true)),
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Err(CoreError::invalid(
                path,
                format!("line {line}: not valid UTF-8 text"),
            ))
        }
    }
}

/// Reads a JSON file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| CoreError::Json {
        path: path.into(),
        source: e,
    })
}

/// Reads every record of a JSONL file. Blank lines are skipped. A torn last line (no trailing
/// newline and invalid JSON: the process died mid-write) is ignored; any other invalid line is an
/// error naming the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    parse_jsonl(path, &text).map(|(v, _)| v)
}

/// Parses JSONL text; returns the records and the byte length of the valid prefix.
fn parse_jsonl<T: DeserializeOwned>(path: &Path, text: &str) -> Result<(Vec<T>, usize)> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut valid_len = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        offset += line.len();
        let complete = line.ends_with('\n');
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if complete {
                valid_len = offset;
            }
            continue;
        }
        match serde_json::from_str::<T>(trimmed) {
            Ok(v) if complete || offset == text.len() => {
                out.push(v);
                valid_len = offset;
            }
            Ok(_) => unreachable!("only the last line can lack a newline"),
            Err(_) if !complete => break,
            Err(e) => {
                return Err(CoreError::JsonLine {
                    path: path.into(),
                    line: i + 1,
                    source: e,
                })
            }
        }
    }
    Ok((out, valid_len))
}

/// Append-only JSONL file keyed by a string id: re-opening it loads the finished keys so a re-run
/// skips them; every append is flushed (one `write` per record) so a killed process loses at most
/// the record in flight; appending a key twice is refused silently (returns `false`).
pub struct JsonlStore<T> {
    path: PathBuf,
    file: File,
    keys: HashSet<String>,
    records: Vec<T>,
    key_fn: fn(&T) -> String,
}

impl<T: Serialize + DeserializeOwned + Clone> JsonlStore<T> {
    /// Opens (creating if needed) the store at `path`. A torn last line left by a killed writer is
    /// truncated away so the next append starts on a clean line.
    pub fn open(path: impl Into<PathBuf>, key_fn: fn(&T) -> String) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        }
        let records: Vec<T> = if path.exists() {
            // A tail cut inside a UTF-8 sequence is torn like any other (dropped below).
            let (text, torn_utf8) = read_jsonl_text(&path)?;
            let (recs, valid) = parse_jsonl(&path, &text)?;
            if valid < text.len() || torn_utf8 {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| CoreError::io(&path, e))?;
                f.set_len(valid as u64)
                    .map_err(|e| CoreError::io(&path, e))?;
            } else if !text.is_empty() && !text.ends_with('\n') {
                // Complete last record without newline: add it so appends stay line-separated.
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| CoreError::io(&path, e))?;
                f.write_all(b"\n").map_err(|e| CoreError::io(&path, e))?;
            }
            recs
        } else {
            Vec::new()
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CoreError::io(&path, e))?;
        let mut keys = HashSet::new();
        let mut unique = Vec::with_capacity(records.len());
        for r in records {
            if keys.insert(key_fn(&r)) {
                unique.push(r);
            }
        }
        Ok(Self {
            path,
            file,
            keys,
            records: unique,
            key_fn,
        })
    }

    /// Whether a record with this key is already stored.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Appends a record unless its key is present; returns whether it was written.
    pub fn append(&mut self, record: &T) -> Result<bool> {
        let key = (self.key_fn)(record);
        if self.keys.contains(&key) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(record).map_err(|e| CoreError::Json {
            path: self.path.clone(),
            source: e,
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| CoreError::io(&self.path, e))?;
        self.file
            .flush()
            .map_err(|e| CoreError::io(&self.path, e))?;
        self.keys.insert(key);
        self.records.push(record.clone());
        Ok(true)
    }

    /// Records in file order (first occurrence of each key).
    pub fn records(&self) -> &[T] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes file contents to disk (fsync).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| CoreError::io(&self.path, e))
    }
}

/// Rounds like Python's `round(x, decimals)`: the exact binary value is rounded to the nearest
/// decimal, exact ties to even (`round(0.0625, 3) == 0.062`). Used for the released 3-decimal
/// weights and box coordinates.
pub fn round_to(x: f64, decimals: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's float formatting rounds the exact value with ties-to-even, as CPython does.
    format!("{x:.decimals$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct R {
        id: String,
        v: u32,
    }

    #[test]
    fn store_opens_after_a_cut_inside_a_utf8_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        let whole = "{\"id\":\"a\",\"v\":1}\n{\"id\":\"é\",\"v\":2}\n";
        // Cut in the middle of the two-byte 'é' of the second record.
        let cut = whole.find('é').unwrap() + 1;
        std::fs::write(&p, &whole.as_bytes()[..cut]).unwrap();
        let s: JsonlStore<R> = JsonlStore::open(&p, |r: &R| r.id.clone()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"id\":\"a\",\"v\":1}\n"
        );
        // Invalid UTF-8 before the last line is an error naming the line.
        std::fs::write(&p, b"{\"id\":\"\xff\",\"v\":1}\n{}\n").unwrap();
        let e = read_jsonl_text(&p).unwrap_err().to_string();
        assert!(e.contains("line 1: not valid UTF-8"), "{e}");
    }

    #[test]
    fn store_resumes_and_never_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        {
            let mut s: JsonlStore<R> = JsonlStore::open(&p, |r: &R| r.id.clone()).unwrap();
            assert!(s
                .append(&R {
                    id: "a".into(),
                    v: 1
                })
                .unwrap());
            assert!(!s
                .append(&R {
                    id: "a".into(),
                    v: 2
                })
                .unwrap());
            assert!(s
                .append(&R {
                    id: "b".into(),
                    v: 3
                })
                .unwrap());
        }
        // simulate a torn write
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"id\":\"c\",\"v\"").unwrap();
        drop(f);
        let mut s: JsonlStore<R> = JsonlStore::open(&p, |r: &R| r.id.clone()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.contains("b") && !s.contains("c"));
        assert!(s
            .append(&R {
                id: "c".into(),
                v: 4
            })
            .unwrap());
        let all: Vec<R> = read_jsonl(&p).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            R {
                id: "c".into(),
                v: 4
            }
        );
    }

    #[test]
    fn invalid_middle_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.jsonl");
        fs::write(
            &p,
            "{\"id\":\"a\",\"v\":1}\nnot json\n{\"id\":\"b\",\"v\":1}\n",
        )
        .unwrap();
        let err = read_jsonl::<R>(&p).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2"), "{err}");
    }

    #[test]
    fn round_to_matches_python() {
        assert_eq!(round_to(0.0625, 3), 0.062);
        assert_eq!(round_to(0.0635, 3), 0.064);
        assert_eq!(round_to(2.675, 2), 2.67);
        assert_eq!(round_to(0.375, 2), 0.38);
        assert_eq!(round_to(2.0 / 3.0, 3), 0.667);
    }

    /// A pid that runs no process: the largest pid Linux allows is 2^22.
    const DEAD_PID: u32 = 4_000_000_000;

    #[test]
    fn temp_names_parse() {
        assert_eq!(
            parse_temp_name(&temp_name("a.json", 42)),
            Some(("a.json", 42))
        );
        assert_eq!(
            parse_temp_name(".checkpoint-000120.tmp-7"),
            Some(("checkpoint-000120", 7))
        );
        for not_temp in [
            "a.json",
            ".a.json",
            ".a.json.tmp",
            ".a.json.12x.tmp",
            "..12.tmp",
            "a.json.12.tmp",
            ".a.tmp-",
        ] {
            assert_eq!(parse_temp_name(not_temp), None, "{not_temp}");
        }
    }

    #[test]
    fn stale_temps_of_the_target_are_removed_and_nothing_else() {
        if !Path::new("/proc/self").exists() {
            eprintln!("no /proc: every pid counts as alive, nothing to test");
            return;
        }
        assert!(!process_alive(DEAD_PID));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let target = "report.json";
        // A live process that is not this one (pid 1 always runs).
        let live = 1;
        assert!(process_alive(live));
        let stale_file = d.join(temp_name(target, DEAD_PID));
        let stale_dir = d.join(temp_name(target, DEAD_PID - 1));
        let legacy_dir = d.join(format!(".{target}.tmp-{}", DEAD_PID - 2));
        let live_temp = d.join(temp_name(target, live));
        let own_temp = d.join(temp_name(target, std::process::id()));
        let other_target = d.join(temp_name("report.md", DEAD_PID));
        let prefix_target = d.join(temp_name("report.json.bak", DEAD_PID));
        let not_temp = d.join(format!(".{target}.{DEAD_PID}.tmp.keep"));
        fs::write(&stale_file, b"half").unwrap();
        fs::create_dir_all(stale_dir.join("sub")).unwrap();
        fs::write(stale_dir.join("sub/weights"), b"gigabytes").unwrap();
        fs::create_dir_all(&legacy_dir).unwrap();
        for p in [
            &live_temp,
            &own_temp,
            &other_target,
            &prefix_target,
            &not_temp,
        ] {
            fs::write(p, b"keep").unwrap();
        }
        fs::write(d.join(target), b"old").unwrap();
        let mut removed = clean_stale_temps(d, target).unwrap();
        removed.sort();
        let mut want = vec![stale_file.clone(), stale_dir.clone(), legacy_dir.clone()];
        want.sort();
        assert_eq!(removed, want);
        for p in [&stale_file, &stale_dir, &legacy_dir] {
            assert!(!p.exists(), "{} was kept", p.display());
        }
        for p in [
            &live_temp,
            &own_temp,
            &other_target,
            &prefix_target,
            &not_temp,
        ] {
            assert!(p.exists(), "{} was removed", p.display());
        }
        assert_eq!(fs::read(d.join(target)).unwrap(), b"old");
        // A write of the target cleans the same way (its own temp is renamed into place).
        let stale = d.join(temp_name(target, DEAD_PID));
        fs::write(&stale, b"half").unwrap();
        atomic_write(d.join(target), b"new").unwrap();
        assert!(!stale.exists());
        assert!(live_temp.exists() && other_target.exists());
        assert_eq!(fs::read(d.join(target)).unwrap(), b"new");
        // A missing folder has nothing to clean.
        assert!(clean_stale_temps(&d.join("missing"), target)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write_json(
            &p,
            &R {
                id: "x".into(),
                v: 1,
            },
        )
        .unwrap();
        write_json(
            &p,
            &R {
                id: "x".into(),
                v: 2,
            },
        )
        .unwrap();
        let r: R = read_json(&p).unwrap();
        assert_eq!(r.v, 2);
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
