//! Training records and dataset readers.
//!
//! A [`TrainRecord`] is one image plus a supervised text in one of MiniGPT-4 / DataEngine's
//! formats (`qa`, `qma`, `qmae`, `caption`). Datasets are JSONL (one record per line) or JSON
//! (an array of records), or DataEngine's generated GPTVQA v1 JSON
//! ([`mde_core::records::GptVqaV1`]) whose images are found from `image_id` through an image
//! root and a file-name pattern, so generated rounds train directly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{sample_from_train_text, TrainSample};
use crate::error::{Result, TrainError};

/// Supervision format of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// `{q}\n###Assistant: The answer is {answer}.`
    Qa,
    /// Question + `(A) ..` choices, `The answer is (L) {choice}.`
    Qma,
    /// QMA plus the rationale.
    Qmae,
    /// Instruction (`question`, default "Describe this image in detail.") and free answer.
    Caption,
}

/// One training record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Image file; relative paths are resolved against the dataset's image root.
    pub image: PathBuf,
    pub kind: RecordKind,
    #[serde(default)]
    pub question: String,
    #[serde(default)]
    pub choices: Vec<String>,
    /// Index of the correct choice (qma/qmae; qa may use it instead of `answer`).
    #[serde(default)]
    pub answer_idx: Option<usize>,
    /// Answer text (qa/caption).
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub rationale: Option<String>,
}

const DEFAULT_CAPTION_INSTRUCTION: &str = "Describe this image in detail.";

impl TrainRecord {
    fn answer_text(&self) -> Option<String> {
        self.answer
            .clone()
            .or_else(|| self.answer_idx.and_then(|i| self.choices.get(i)).cloned())
    }

    fn choice_idx(&self) -> std::result::Result<usize, String> {
        let i = self
            .answer_idx
            .ok_or_else(|| "needs `answer_idx`".to_string())?;
        if i >= self.choices.len() {
            return Err(format!(
                "answer_idx {i} is out of range for {} choices",
                self.choices.len()
            ));
        }
        Ok(i)
    }

    /// The prompt/answer pair the batch layout consumes; the error text says what is missing.
    pub fn to_sample(&self) -> std::result::Result<TrainSample, String> {
        use minigpt4::prompt::{format_qa, format_qma, format_qmae, instruction_prompt};
        let tt = match self.kind {
            RecordKind::Qa => {
                let a = self
                    .answer_text()
                    .ok_or("qa record needs `answer` or `answer_idx`")?;
                format_qa(&self.question, &a)
            }
            RecordKind::Qma => format_qma(&self.question, &self.choices, self.choice_idx()?),
            RecordKind::Qmae => format_qmae(
                &self.question,
                &self.choices,
                self.choice_idx()?,
                self.rationale.as_deref(),
            ),
            RecordKind::Caption => {
                let a = self.answer.clone().ok_or("caption record needs `answer`")?;
                let instr = if self.question.is_empty() {
                    DEFAULT_CAPTION_INSTRUCTION
                } else {
                    &self.question
                };
                return Ok(TrainSample {
                    prompt: instruction_prompt(instr),
                    answer: a,
                });
            }
        };
        sample_from_train_text(&tt).map_err(|e| e.to_string())
    }
}

/// File format of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// [`TrainRecord`]s as JSONL (`.jsonl`) or a JSON array.
    #[default]
    Records,
    /// DataEngine GPTVQA v1 JSON array (or JSONL) of [`mde_core::records::GptVqaV1`].
    GptvqaV1,
}

fn default_pattern() -> String {
    "COCO_train2014_{image_id:012}.jpg".into()
}

/// A dataset in a training mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub format: DatasetFormat,
    /// Folder that relative image paths (and GPTVQA image files) are resolved against;
    /// default: the dataset file's folder. Every record's image must resolve inside it
    /// (`mde_core::paths`): `/etc/passwd`, `../x.png` or a symlink out of the root are refused
    /// when the dataset is loaded, so no local file outside the root reaches a training set.
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Explicit opt-in: accept records whose image is an absolute path anywhere (datasets your
    /// own pipeline wrote). Relative paths still stay inside `image_root`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_absolute_image_paths: bool,
    /// GPTVQA image file name; `{image_id}` or zero-padded `{image_id:012}` is replaced.
    #[serde(default = "default_pattern")]
    pub image_pattern: String,
    /// GPTVQA supervision format (default qmae, DataEngine's choice).
    #[serde(default)]
    pub kind: Option<RecordKind>,
    /// Sampling weight; default sqrt(size).
    #[serde(default)]
    pub ratio: Option<f64>,
}

/// Fills `{image_id}` / `{image_id:0N}` in `pattern`.
pub fn image_file_name(pattern: &str, image_id: u64) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find("{image_id") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "{image_id".len()..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let spec = &after[..close];
        let width = spec
            .strip_prefix(":0")
            .and_then(|w| w.parse::<usize>().ok())
            .unwrap_or(0);
        out.push_str(&format!("{image_id:0width$}"));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn read_items<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed)
            .map_err(|e| TrainError::file(path, format!("expected a JSON array of records: {e}")));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line)
                .map_err(|e| TrainError::file(path, format!("line {}: bad record: {e}", i + 1)))?,
        );
    }
    Ok(out)
}

/// Reads a dataset; image paths come back resolved. `base` resolves a relative `spec.path`
/// and `spec.image_root` (the config file's folder).
pub fn load_dataset(spec: &DatasetSpec, base: &Path) -> Result<Vec<TrainRecord>> {
    let path = base.join(&spec.path);
    let root = match &spec.image_root {
        Some(r) => base.join(r),
        None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let policy = mde_core::paths::PathPolicy {
        allow_absolute: spec.allow_absolute_image_paths,
        ..mde_core::paths::PathPolicy::in_root(root)
    };
    let resolve = |i: usize, name: &Path| -> Result<PathBuf> {
        let name = name.to_str().ok_or_else(|| {
            TrainError::file(&path, format!("record {}: image path is not UTF-8", i + 1))
        })?;
        policy.resolve(name).map_err(|e| {
            TrainError::file(
                &path,
                format!("record {} (dataset {:?}): {e}", i + 1, spec.name),
            )
        })
    };
    let records: Vec<TrainRecord> = match spec.format {
        DatasetFormat::Records => read_items::<TrainRecord>(&path)?
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.image = resolve(i, &r.image)?;
                Ok(r)
            })
            .collect::<Result<_>>()?,
        DatasetFormat::GptvqaV1 => {
            let kind = spec.kind.unwrap_or(RecordKind::Qmae);
            read_items::<mde_core::records::GptVqaV1>(&path)?
                .into_iter()
                .enumerate()
                .map(|(i, g)| {
                    let name = image_file_name(&spec.image_pattern, g.image_id);
                    Ok(TrainRecord {
                        image: resolve(i, Path::new(&name))?,
                        kind,
                        answer: g.choices.get(g.correct_choice_idx).cloned(),
                        answer_idx: Some(g.correct_choice_idx),
                        rationale: minigpt4::prompt::longest(&g.rationales).map(str::to_string),
                        question: g.question,
                        choices: g.choices,
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    // Validate every record up front: a bad record should fail at start, not at step 10k.
    for (i, r) in records.iter().enumerate() {
        r.to_sample()
            .map_err(|m| TrainError::file(&path, format!("record {}: {m}", i + 1)))?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern() {
        assert_eq!(
            image_file_name("a_{image_id:012}.jpg", 42),
            "a_000000000042.jpg"
        );
        assert_eq!(image_file_name("{image_id}.png", 7), "7.png");
    }

    #[test]
    fn gptvqa_v1_reader() {
        let dir = tempfile::tempdir().unwrap();
        let g = mde_core::records::GptVqaV1 {
            image_id: 9,
            raw_instructions: String::new(),
            question_type: "color".into(),
            question: "What color?".into(),
            choices: vec!["red".into(), "blue".into()],
            correct_choice_idx: 1,
            rationales: vec!["short".into(), "the longest one".into()],
        };
        std::fs::write(
            dir.path().join("r.json"),
            serde_json::to_string(&[g]).unwrap(),
        )
        .unwrap();
        let spec = DatasetSpec {
            name: "round1".into(),
            path: "r.json".into(),
            format: DatasetFormat::GptvqaV1,
            image_root: Some("imgs".into()),
            image_pattern: "{image_id:06}.jpg".into(),
            allow_absolute_image_paths: false,
            kind: None,
            ratio: None,
        };
        let r = load_dataset(&spec, dir.path()).unwrap();
        assert_eq!(r[0].image, dir.path().join("imgs/000009.jpg"));
        assert_eq!(r[0].kind, RecordKind::Qmae);
        let s = r[0].to_sample().unwrap();
        assert_eq!(s.answer, "The answer is (B) blue. the longest one");
        std::fs::write(dir.path().join("r.json"), "[{\"image_id\": 1}]").unwrap();
        let e = load_dataset(&spec, dir.path()).unwrap_err().to_string();
        assert!(e.contains("r.json"), "{e}");
    }

    #[test]
    fn record_images_must_stay_inside_the_image_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("imgs")).unwrap();
        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        let record = |image: &str| {
            format!(
                "{{\"image\": {image:?}, \"kind\": \"qma\", \"question\": \"Q?\", \"choices\": [\"a\", \"b\"], \"answer_idx\": 0}}\n"
            )
        };
        let spec = DatasetSpec {
            name: "mine".into(),
            path: "data/r.jsonl".into(),
            format: DatasetFormat::Records,
            image_root: None,
            image_pattern: default_pattern(),
            allow_absolute_image_paths: false,
            kind: None,
            ratio: None,
        };
        let secret = dir.path().join("secret.png").display().to_string();
        for bad in [
            "/etc/passwd",
            "../secret.png",
            "imgs/../../secret.png",
            &secret,
        ] {
            let text = record("imgs/ok.png") + &record(bad);
            std::fs::write(root.join("r.jsonl"), text).unwrap();
            let e = load_dataset(&spec, dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("r.jsonl") && e.contains("record 2") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        // GPTVQA records build their file name from the pattern: it must stay inside too.
        let g = mde_core::records::GptVqaV1 {
            image_id: 9,
            raw_instructions: String::new(),
            question_type: "color".into(),
            question: "What color?".into(),
            choices: vec!["red".into(), "blue".into()],
            correct_choice_idx: 1,
            rationales: vec![],
        };
        std::fs::write(root.join("g.json"), serde_json::to_string(&[g]).unwrap()).unwrap();
        let gspec = DatasetSpec {
            path: "data/g.json".into(),
            format: DatasetFormat::GptvqaV1,
            image_pattern: "../../{image_id}.png".into(),
            ..spec.clone()
        };
        let e = load_dataset(&gspec, dir.path()).unwrap_err().to_string();
        assert!(e.contains("g.json") && e.contains("escapes"), "{e}");
        // The explicit opt-in takes absolute paths as written, and only those.
        std::fs::write(root.join("r.jsonl"), record(&secret)).unwrap();
        let opted = DatasetSpec {
            allow_absolute_image_paths: true,
            ..spec.clone()
        };
        let recs = load_dataset(&opted, dir.path()).unwrap();
        assert_eq!(recs[0].image, PathBuf::from(&secret));
        std::fs::write(root.join("r.jsonl"), record("../secret.png")).unwrap();
        assert!(load_dataset(&opted, dir.path()).is_err());
    }

    #[test]
    fn record_formats() {
        let r = TrainRecord {
            image: "x.png".into(),
            kind: RecordKind::Qma,
            question: "Q?".into(),
            choices: vec!["a".into(), "b".into()],
            answer_idx: Some(1),
            answer: None,
            rationale: None,
        };
        let s = r.to_sample().unwrap();
        assert!(s.prompt.contains("<ImageHere>"));
        assert_eq!(s.answer, "The answer is (B) b.");
        let bad = TrainRecord {
            answer_idx: Some(5),
            ..r
        };
        assert!(bad.to_sample().unwrap_err().contains("out of range"));
    }
}
