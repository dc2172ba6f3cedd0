//! Never-lose-work file I/O: atomic writes and a resumable append-only JSONL store.
use crate::error::{CoreError, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, then rename.
/// A reader sees the old file or the new one, never a partial one.
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
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| CoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| CoreError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    Ok(())
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
            let text = fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
            let (recs, valid) = parse_jsonl(&path, &text)?;
            if valid < text.len() {
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
