//! Prompt versions on disk: `DIR/versions/v{N}/template.txt` + `meta.json`, and `DIR/active`.
use crate::IpoError;
use mde_core::io::{atomic_write, read_json, write_json};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    Initial,
    /// Step 1: an accepted (possibly edited) critique draft.
    Critique,
    /// Step 3: suggested corrections applied.
    Correction,
    /// Edited by hand.
    Manual,
}

/// Metadata of one prompt version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub version: u32,
    pub parent: Option<u32>,
    /// Unix seconds.
    pub created: u64,
    pub source: VersionSource,
    pub rationale: String,
}

/// A prompt version: its template text and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptVersion {
    pub meta: VersionMeta,
    pub template: String,
}

/// The prompt-version store of one IPO workspace.
#[derive(Debug, Clone)]
pub struct PromptStore {
    root: PathBuf,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PromptStore {
    /// Opens a store; `init` must have been called once (or use [`PromptStore::init`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, IpoError> {
        let root = root.into();
        if !root.join("versions").is_dir() {
            return Err(IpoError::Invalid(format!(
                "{}: not an IPO workspace (no versions/ folder); run `mde ipo init` first",
                root.display()
            )));
        }
        Ok(Self { root })
    }

    /// Creates the store with `template` as version 1 (active). Idempotent: an existing store is
    /// opened unchanged.
    pub fn init(root: impl Into<PathBuf>, template: &str) -> Result<Self, IpoError> {
        let root = root.into();
        if root.join("versions").is_dir() {
            return Self::open(root);
        }
        fs::create_dir_all(root.join("versions")).map_err(|e| IpoError::io(&root, e))?;
        let store = Self { root };
        store.add(None, template, VersionSource::Initial, "initial prompt")?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, v: u32) -> PathBuf {
        self.root.join("versions").join(format!("v{v}"))
    }

    /// All version numbers, ascending.
    pub fn list(&self) -> Result<Vec<u32>, IpoError> {
        let dir = self.root.join("versions");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| IpoError::io(&dir, e))? {
            let e = e.map_err(|e| IpoError::io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix('v').and_then(|s| s.parse::<u32>().ok()) {
                if e.path().join("meta.json").is_file() {
                    out.push(n);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Loads one version.
    pub fn get(&self, v: u32) -> Result<PromptVersion, IpoError> {
        let dir = self.dir(v);
        let meta: VersionMeta = read_json(dir.join("meta.json"))?;
        let tpath = dir.join("template.txt");
        let template = fs::read_to_string(&tpath).map_err(|e| IpoError::io(&tpath, e))?;
        Ok(PromptVersion { meta, template })
    }

    /// Adds a new version (the next number) and makes it active.
    pub fn add(
        &self,
        parent: Option<u32>,
        template: &str,
        source: VersionSource,
        rationale: &str,
    ) -> Result<u32, IpoError> {
        let v = self.list()?.last().copied().unwrap_or(0) + 1;
        let dir = self.dir(v);
        let meta = VersionMeta {
            version: v,
            parent,
            created: now_secs(),
            source,
            rationale: rationale.to_string(),
        };
        // template first, meta last: a version only counts once meta.json exists (see `list`).
        atomic_write(dir.join("template.txt"), template.as_bytes())?;
        write_json(dir.join("meta.json"), &meta)?;
        self.set_active(v)?;
        Ok(v)
    }

    /// The active version number (the one generation uses).
    pub fn active(&self) -> Result<u32, IpoError> {
        let p = self.root.join("active");
        let text = fs::read_to_string(&p).map_err(|e| IpoError::io(&p, e))?;
        text.trim().parse().map_err(|_| {
            IpoError::Invalid(format!(
                "{}: expected a version number, found {:?}",
                p.display(),
                text.trim()
            ))
        })
    }

    pub fn set_active(&self, v: u32) -> Result<(), IpoError> {
        if !self.dir(v).join("meta.json").is_file() {
            return Err(IpoError::Invalid(format!(
                "no prompt version v{v} in {}",
                self.root.display()
            )));
        }
        atomic_write(self.root.join("active"), format!("{v}\n").as_bytes())?;
        Ok(())
    }

    /// Path of a version's template file (what generation reads).
    pub fn template_path(&self, v: u32) -> PathBuf {
        self.dir(v).join("template.txt")
    }

    /// Unified-style line diff between two versions.
    pub fn diff(&self, a: u32, b: u32) -> Result<String, IpoError> {
        let (va, vb) = (self.get(a)?, self.get(b)?);
        Ok(line_diff(
            &va.template,
            &vb.template,
            &format!("v{a}"),
            &format!("v{b}"),
        ))
    }
}

/// A line diff (LCS-based) printed with `-`/`+`/` ` prefixes and a `---`/`+++` header.
pub fn line_diff(a: &str, b: &str, name_a: &str, name_b: &str) -> String {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let (n, m) = (la.len(), lb.len());
    // lcs[i][j] = LCS length of la[i..], lb[j..]
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if la[i] == lb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- {name_a}\n+++ {name_b}\n");
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && la[i] == lb[j] {
            out.push_str(&format!("  {}\n", la[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", lb[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", la[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_roundtrip_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        let s = PromptStore::init(dir.path(), "a\nb\nc\n").unwrap();
        assert_eq!(s.active().unwrap(), 1);
        let v2 = s
            .add(Some(1), "a\nB\nc\nd\n", VersionSource::Manual, "fix b")
            .unwrap();
        assert_eq!(v2, 2);
        assert_eq!(s.active().unwrap(), 2);
        assert_eq!(s.list().unwrap(), vec![1, 2]);
        let d = s.diff(1, 2).unwrap();
        assert!(
            d.contains("- b\n")
                && d.contains("+ B\n")
                && d.contains("+ d\n")
                && d.contains("  a\n"),
            "{d}"
        );
        // re-init keeps existing versions
        let s2 = PromptStore::init(dir.path(), "other").unwrap();
        assert_eq!(s2.get(1).unwrap().template, "a\nb\nc\n");
        assert_eq!(s2.get(2).unwrap().meta.parent, Some(1));
        assert!(s.set_active(9).is_err());
    }
}
