//! Safe resolution of image references found in benchmark files.
//!
//! Benchmark files name their images relative to an image root (MME `image_path`, SEED-Bench
//! `data_id`, COCO `val2017/000000123456.jpg`). A hostile or broken file could point outside the
//! root (`../../etc/passwd`, `/home/user/.ssh/id_rsa`, or a symlink inside the root that leads
//! out). [`resolve_in_root`] refuses all of these with a clear error.
//!
//! ```
//! use mde_eval::paths::resolve_in_root;
//! let root = tempfile::tempdir().unwrap();
//! std::fs::write(root.path().join("a.jpg"), b"x").unwrap();
//! assert!(resolve_in_root(root.path(), "a.jpg").is_ok());
//! assert!(resolve_in_root(root.path(), "../a.jpg").is_err());
//! ```
use mde_core::records::ImageRef;
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
        root.join(norm)
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
