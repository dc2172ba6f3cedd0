//! The one path policy of the workspace: how a file name found in *data* becomes a local file.
//!
//! Benchmark files, generation queries, teacher replies and training records name their images
//! relative to an image root (MME `image_path`, SEED-Bench `data_id`, COCO
//! `val2017/000000123456.jpg`, `GenQuery::image_path`, `TrainRecord::image`). A hostile or broken
//! file could point outside the root (`../../etc/passwd`, `/home/user/.ssh/id_rsa`, or a symlink
//! inside the root that leads out), and some of these files end up sent to a remote teacher
//! (base64 images) or baked into a training set. [`resolve_in_root`] refuses all of these with a
//! clear error; [`PathPolicy`] adds the two choices a caller has: which root, and whether the
//! user explicitly allowed absolute references in a config they wrote themselves.
//!
//! Every loader that turns a name from a data file into a path goes through this module:
//! the benchmark loaders and the evaluation image loader (`mde-eval`), the teacher client's
//! image attachment (`mde-gen`), the training-set loader (`mde-train`) and the IPO page
//! (`mde-ipo`).
//!
//! ```
//! use mde_core::paths::resolve_in_root;
//! let root = tempfile::tempdir().unwrap();
//! std::fs::write(root.path().join("a.jpg"), b"x").unwrap();
//! assert!(resolve_in_root(root.path(), "a.jpg").is_ok());
//! assert!(resolve_in_root(root.path(), "../a.jpg").is_err());
//! ```
use crate::records::ImageRef;
use std::path::{Component, Path, PathBuf};

/// Why an image reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("empty image reference (image root {root})")]
    Empty { root: PathBuf },
    #[error("image reference {reference:?} contains a NUL byte")]
    Nul { reference: String },
    #[error(
        "image reference {reference:?} escapes the image root {root} (a `..` leads outside it)"
    )]
    Escapes { reference: String, root: PathBuf },
    #[error("image reference {reference:?} is an absolute path outside the image root {root}")]
    AbsoluteOutside { reference: String, root: PathBuf },
    #[error("image reference {reference:?} resolves through a symlink to {target}, outside the image root {root}")]
    SymlinkOutside {
        reference: String,
        target: PathBuf,
        root: PathBuf,
    },
    #[error("image reference {reference:?} has no image root to resolve against ({hint})")]
    NoRoot { reference: String, hint: String },
    #[error("cannot resolve {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Normalises `.` and `..` lexically (without touching the file system). Returns `None` when a
/// `..` would climb above the start of a relative path.
fn normalize_lexically(p: &Path) -> Option<PathBuf> {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/` on Unix.
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out.iter().map(|c| c.as_os_str()).collect())
}

/// Resolves `reference` (relative to `root`, or absolute but inside `root`) to a path inside
/// `root`.
///
/// - `..` components may not lead outside the root (checked lexically, so it holds whether or
///   not the file exists);
/// - an absolute reference must lie inside the root;
/// - when the target exists, both paths are canonicalised so a symlink that leads outside the
///   root is refused too.
///
/// The returned path is `root` joined with the normalised reference (not canonicalised, so error
/// messages and reports keep the user's spelling).
pub fn resolve_in_root(root: &Path, reference: &str) -> Result<PathBuf, PathError> {
    // `Path::new("a.json").parent()` is the empty path: it means the current folder (and the
    // result keeps the reference's own spelling, without a `./`).
    let empty_root = root.as_os_str().is_empty();
    let root = if empty_root { Path::new(".") } else { root };
    if reference.is_empty() {
        return Err(PathError::Empty {
            root: root.to_path_buf(),
        });
    }
    if reference.contains('\0') {
        return Err(PathError::Nul {
            reference: reference.to_string(),
        });
    }
    // Lexical root: an absolute version when possible so absolute references compare sensibly.
    let root_abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| PathError::Io {
                path: root.to_path_buf(),
                source: e,
            })?
            .join(root)
    };
    let root_norm = normalize_lexically(&root_abs).unwrap_or(root_abs.clone());
    let rel = Path::new(reference);
    let joined = if rel.is_absolute() {
        let norm = normalize_lexically(rel).unwrap_or_else(|| rel.to_path_buf());
        if !norm.starts_with(&root_norm) {
            // Canonical comparison as a second chance (root given through a symlink).
            let inside = match (std::fs::canonicalize(&norm), std::fs::canonicalize(root)) {
                (Ok(a), Ok(b)) => a.starts_with(b),
                _ => false,
            };
            if !inside {
                return Err(PathError::AbsoluteOutside {
                    reference: reference.to_string(),
                    root: root.to_path_buf(),
                });
            }
        }
        norm
    } else {
        let norm = normalize_lexically(rel).ok_or_else(|| PathError::Escapes {
            reference: reference.to_string(),
            root: root.to_path_buf(),
        })?;
        if norm.as_os_str().is_empty() {
            return Err(PathError::Empty {
                root: root.to_path_buf(),
            });
        }
        if empty_root {
            norm
        } else {
            root.join(norm)
        }
    };
    if joined.exists() {
        let target = std::fs::canonicalize(&joined).map_err(|e| PathError::Io {
            path: joined.clone(),
            source: e,
        })?;
        let root_canon = std::fs::canonicalize(root).map_err(|e| PathError::Io {
            path: root.to_path_buf(),
            source: e,
        })?;
        if !target.starts_with(&root_canon) {
            return Err(PathError::SymlinkOutside {
                reference: reference.to_string(),
                target,
                root: root.to_path_buf(),
            });
        }
    }
    Ok(joined)
}

/// Where references found in data may lead.
///
/// - `root = Some(r)`: a reference must resolve inside `r` ([`resolve_in_root`]: relative, no
///   `..` above the root, no symlink out of it; an absolute reference is accepted only when it
///   lies inside the root).
/// - `root = None`: no local file is reachable at all (the error says which config key sets the
///   root), so a data file alone can never make mde read a local file.
/// - `allow_absolute = true` is the explicit opt-in for configs the user wrote themselves (e.g.
///   query files with absolute image paths made by their own pipeline): absolute references are
///   then taken as written. Relative references still resolve inside the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// The folder references resolve against.
    pub root: Option<PathBuf>,
    /// Accept absolute references anywhere (opt-in; off by default).
    pub allow_absolute: bool,
    /// Names the config key that sets the root, for the error when there is none.
    pub root_key: String,
}

impl PathPolicy {
    /// References resolve inside `root`; absolute references outside it are refused.
    pub fn in_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Some(root.into()),
            allow_absolute: false,
            root_key: String::new(),
        }
    }

    /// Resolves one reference under this policy.
    pub fn resolve(&self, reference: &str) -> Result<PathBuf, PathError> {
        if self.allow_absolute && Path::new(reference).is_absolute() {
            if reference.contains('\0') {
                return Err(PathError::Nul {
                    reference: reference.to_string(),
                });
            }
            return Ok(PathBuf::from(reference));
        }
        match &self.root {
            Some(root) => resolve_in_root(root, reference),
            None => Err(PathError::NoRoot {
                reference: reference.to_string(),
                hint: if self.root_key.is_empty() {
                    "no image root was configured".to_string()
                } else {
                    format!("set `{}`", self.root_key)
                },
            }),
        }
    }
}

/// Like [`resolve_in_root`], then returns the first candidate that exists among `reference`
/// itself and `reference` + each of `extensions` (e.g. SEED-Bench `data_id`s written without
/// `.jpg`). When none exists, the plain resolved path is returned so the caller's open reports it.
pub fn resolve_with_extensions(
    root: &Path,
    reference: &str,
    extensions: &[&str],
) -> Result<PathBuf, PathError> {
    let plain = resolve_in_root(root, reference)?;
    if plain.is_file() {
        return Ok(plain);
    }
    for ext in extensions {
        let cand = resolve_in_root(root, &format!("{reference}.{ext}"))?;
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Ok(plain)
}

/// Resolves the file of a benchmark item's image: a [`ImageRef::Path`] is resolved inside
/// `root` (see [`resolve_in_root`]; SEED-Bench ids without an extension also try `.jpg`/`.png`),
/// a [`ImageRef::Coco`] id becomes `val2017/<id:012>.jpg` under `root`; base64 images have no
/// file and give `None`.
pub fn resolve_image_ref(root: &Path, image: &ImageRef) -> Result<Option<PathBuf>, PathError> {
    match image {
        ImageRef::Path { path } => {
            resolve_with_extensions(root, path, &["jpg", "png", "jpeg"]).map(Some)
        }
        ImageRef::Coco { image_id } => {
            resolve_in_root(root, &format!("val2017/{image_id:012}.jpg")).map(Some)
        }
        ImageRef::Base64 { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes_and_accepts_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"x").unwrap();

        assert_eq!(
            resolve_in_root(&root, "sub/a.jpg").unwrap(),
            root.join("sub/a.jpg")
        );
        assert_eq!(
            resolve_in_root(&root, "./sub/../sub/a.jpg").unwrap(),
            root.join("sub/a.jpg")
        );
        // Non-existing files inside are fine (the caller reports the missing file).
        assert!(resolve_in_root(&root, "sub/missing.jpg").is_ok());
        assert!(matches!(
            resolve_in_root(&root, "../secret.txt"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            resolve_in_root(&root, "sub/../../secret.txt"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            resolve_in_root(&root, ""),
            Err(PathError::Empty { .. })
        ));
        let abs_out = dir.path().join("secret.txt");
        assert!(matches!(
            resolve_in_root(&root, abs_out.to_str().unwrap()),
            Err(PathError::AbsoluteOutside { .. })
        ));
        let abs_in = root.join("sub/a.jpg");
        assert!(resolve_in_root(&root, abs_in.to_str().unwrap()).is_ok());
        let msg = resolve_in_root(&root, "../secret.txt")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("../secret.txt") && msg.contains("escapes"),
            "{msg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlink_out_of_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.jpg")).unwrap();
        assert!(matches!(
            resolve_in_root(&root, "link.jpg"),
            Err(PathError::SymlinkOutside { .. })
        ));
        // A symlink that stays inside is fine.
        std::fs::write(root.join("real.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("real.jpg"), root.join("alias.jpg")).unwrap();
        assert!(resolve_in_root(&root, "alias.jpg").is_ok());
    }

    #[test]
    fn policy_needs_a_root_and_an_explicit_opt_in_for_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"x").unwrap();
        let secret = dir.path().join("secret.txt");
        let secret = secret.to_str().unwrap();

        let p = PathPolicy::in_root(&root);
        assert_eq!(p.resolve("a.png").unwrap(), root.join("a.png"));
        assert!(matches!(
            p.resolve(secret),
            Err(PathError::AbsoluteOutside { .. })
        ));
        assert!(matches!(
            p.resolve("../secret.txt"),
            Err(PathError::Escapes { .. })
        ));

        let none = PathPolicy {
            root_key: "[teacher] image_root".into(),
            ..Default::default()
        };
        let e = none.resolve("a.png").unwrap_err().to_string();
        assert!(
            e.contains("a.png") && e.contains("[teacher] image_root"),
            "{e}"
        );
        assert!(matches!(
            none.resolve(secret),
            Err(PathError::NoRoot { .. })
        ));

        let opted = PathPolicy {
            allow_absolute: true,
            ..PathPolicy::in_root(&root)
        };
        assert_eq!(opted.resolve(secret).unwrap(), PathBuf::from(secret));
        // The opt-in is for absolute paths only: relative ones still stay inside the root.
        assert!(matches!(
            opted.resolve("../secret.txt"),
            Err(PathError::Escapes { .. })
        ));
    }

    #[test]
    fn extension_fallback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("123_456.jpg"), b"x").unwrap();
        assert_eq!(
            resolve_with_extensions(dir.path(), "123_456", &["png", "jpg"]).unwrap(),
            dir.path().join("123_456.jpg")
        );
        let r = resolve_image_ref(
            dir.path(),
            &ImageRef::Path {
                path: "123_456".into(),
            },
        )
        .unwrap();
        assert_eq!(r, Some(dir.path().join("123_456.jpg")));
        assert!(resolve_image_ref(
            dir.path(),
            &ImageRef::Path {
                path: "../x.jpg".into()
            }
        )
        .is_err());
        assert_eq!(
            resolve_image_ref(dir.path(), &ImageRef::Base64 { data: "x".into() }).unwrap(),
            None
        );
    }
}
