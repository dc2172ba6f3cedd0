//! Step 2 bookkeeping: trial items of a prompt version and the human labels given to them.
//! Both are append-only JSONL under `DIR/trials/v{N}/`; a relabel appends a newer label and the
//! latest label of an item wins, so labelling can stop and resume at any point.
use crate::IpoError;
use mde_core::io::{read_jsonl, JsonlStore};
use mde_core::records::{FailureCategory, GenQuery};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One generated sample of a trial batch, with the validator's pre-labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialItem {
    pub id: String,
    pub query: GenQuery,
    /// The teacher's raw reply.
    pub reply: String,
    /// Parsed question / choices / answer index when the reply parsed.
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub choices: Vec<String>,
    #[serde(default)]
    pub answer_idx: Option<usize>,
    /// Failure categories the automatic validator suggests.
    #[serde(default)]
    pub prelabels: Vec<FailureCategory>,
    /// The validator's reasons, shown to the labeller.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A human verdict on one trial item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub item_id: String,
    pub ok: bool,
    #[serde(default)]
    pub failures: Vec<FailureCategory>,
    /// One-line explanation (required for failures).
    #[serde(default)]
    pub explanation: String,
    /// Unix seconds.
    #[serde(default)]
    pub at: u64,
}

/// The trial batch of one version: items + labels.
pub struct Trial {
    dir: PathBuf,
    items: JsonlStore<TrialItem>,
    labels: BTreeMap<String, Label>,
}

impl Trial {
    /// Opens (creating) the trial folder of version `v` under `root`.
    pub fn open(root: &Path, v: u32) -> Result<Self, IpoError> {
        let dir = root.join("trials").join(format!("v{v}"));
        let items = JsonlStore::open(dir.join("items.jsonl"), |i: &TrialItem| i.id.clone())?;
        let lpath = dir.join("labels.jsonl");
        let mut labels = BTreeMap::new();
        if lpath.exists() {
            for l in read_jsonl::<Label>(&lpath)? {
                labels.insert(l.item_id.clone(), l);
            }
        }
        Ok(Self { dir, items, labels })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds an item unless present; returns whether it was added.
    pub fn add_item(&mut self, item: &TrialItem) -> Result<bool, IpoError> {
        Ok(self.items.append(item)?)
    }

    pub fn items(&self) -> &[TrialItem] {
        self.items.records()
    }

    pub fn item(&self, id: &str) -> Option<&TrialItem> {
        self.items.records().iter().find(|i| i.id == id)
    }

    /// Latest label of an item.
    pub fn label(&self, id: &str) -> Option<&Label> {
        self.labels.get(id)
    }

    pub fn labels(&self) -> impl Iterator<Item = &Label> {
        self.labels.values()
    }

    /// Items without a label yet, in item order.
    pub fn unlabelled(&self) -> Vec<&TrialItem> {
        self.items
            .records()
            .iter()
            .filter(|i| !self.labels.contains_key(&i.id))
            .collect()
    }

    /// Persists a label immediately (append + flush) and makes it the item's current label.
    pub fn set_label(&mut self, mut label: Label) -> Result<(), IpoError> {
        if self.item(&label.item_id).is_none() {
            return Err(IpoError::Invalid(format!(
                "no trial item {:?} in {}",
                label.item_id,
                self.dir.display()
            )));
        }
        if !label.ok && label.failures.is_empty() {
            return Err(IpoError::Invalid(format!(
                "label for {:?}: a failure needs at least one category",
                label.item_id
            )));
        }
        if label.ok {
            label.failures.clear();
        }
        if label.at == 0 {
            label.at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
        }
        let path = self.dir.join("labels.jsonl");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| IpoError::io(&path, e))?;
        let mut line = serde_json::to_vec(&label).map_err(|e| IpoError::Invalid(e.to_string()))?;
        line.push(b'\n');
        f.write_all(&line).map_err(|e| IpoError::io(&path, e))?;
        f.flush().map_err(|e| IpoError::io(&path, e))?;
        self.labels.insert(label.item_id.clone(), label);
        Ok(())
    }
}
