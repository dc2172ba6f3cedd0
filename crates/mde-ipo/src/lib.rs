//! Interactive Prompt Optimization (IPO): the human-in-the-loop workflow that refines the
//! generation prompt, with the bookkeeping done on disk.
//!
//! One workspace folder holds every prompt version (`versions/v{N}/template.txt` + `meta.json`,
//! `active`), and per version a trial batch with its labels (`trials/v{N}/items.jsonl`,
//! `labels.jsonl`). The three steps:
//! 1. [`Ipo::critique_step`]: the teacher reviews the active prompt; the user accepts, edits or rejects
//!    the revised draft; an accepted draft becomes a new version.
//! 2. trial batch + labelling: items are added with the validator's pre-labels
//!    ([`trial::Trial::add_item`]); the user labels them in the terminal ([`Ipo::label_step`]) or in
//!    the local web page ([`web`]); every label is saved as it is made.
//! 3. [`Ipo::correction_step`]: the teacher gets the prompt and labelled failures and proposes edits.
//!
//! [`stats::VersionStats`] gives failure counts by type and the stop rule.
//!
//! ```
//! use mde_ipo::{Ipo, versions::VersionSource};
//! let dir = tempfile::tempdir().unwrap();
//! let ipo = Ipo::init(dir.path(), "Write a question about {captions}").unwrap();
//! let v2 = ipo.store.add(Some(1), "Write one question about {captions}", VersionSource::Manual, "shorter").unwrap();
//! assert_eq!(ipo.store.active().unwrap(), v2);
//! ```

pub mod review;
pub mod stats;
pub mod steps;
pub mod trial;
pub mod trial_gen;
pub mod versions;
pub mod web;

use mde_core::teacher::Teacher;
use review::{Decision, Reviewer};
use std::path::{Path, PathBuf};
use versions::{PromptStore, VersionSource};

/// Errors of the IPO workflow.
#[derive(Debug, thiserror::Error)]
pub enum IpoError {
    #[error(transparent)]
    Core(#[from] mde_core::CoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("teacher: {0}")]
    Teacher(String),
    #[error("{0}")]
    Invalid(String),
}

impl IpoError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        IpoError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// An IPO workspace.
pub struct Ipo {
    pub store: PromptStore,
}

/// What a step did.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// A new version was created and made active.
    NewVersion(u32),
    /// The user rejected the proposal (or none was made); the active version is unchanged.
    Unchanged,
}

impl Ipo {
    /// Creates (or opens) a workspace whose version 1 is `template`.
    pub fn init(root: impl Into<PathBuf>, template: &str) -> Result<Self, IpoError> {
        Ok(Self {
            store: PromptStore::init(root, template)?,
        })
    }

    pub fn open(root: impl Into<PathBuf>) -> Result<Self, IpoError> {
        Ok(Self {
            store: PromptStore::open(root)?,
        })
    }

    /// The trial batch of a version.
    pub fn trial(&self, version: u32) -> Result<trial::Trial, IpoError> {
        trial::Trial::open(self.store.root(), version)
    }

    fn apply(
        &self,
        step: &str,
        source: VersionSource,
        review: &steps::Review,
        reviewer: &mut dyn Reviewer,
    ) -> Result<StepOutcome, IpoError> {
        let active = self.store.active()?;
        let current = self.store.get(active)?.template;
        let text = match reviewer.decide(step, &current, review)? {
            Decision::Reject => return Ok(StepOutcome::Unchanged),
            Decision::Accept => match &review.revised {
                Some(t) => t.clone(),
                None => return Ok(StepOutcome::Unchanged),
            },
            Decision::Edit(t) => t,
        };
        if text.trim() == current.trim() {
            return Ok(StepOutcome::Unchanged);
        }
        let mut rationale = review.findings.join("\n");
        if !review.edits.is_empty() {
            rationale.push_str("\nedits:\n");
            rationale.push_str(&review.edits.join("\n"));
        }
        let v = self
            .store
            .add(Some(active), &text, source, rationale.trim())?;
        Ok(StepOutcome::NewVersion(v))
    }

    /// Step 1: critique of the active prompt, decided by `reviewer`.
    pub async fn critique_step(
        &self,
        teacher: &dyn Teacher,
        reviewer: &mut dyn Reviewer,
    ) -> Result<(steps::Review, StepOutcome), IpoError> {
        let template = self.store.get(self.store.active()?)?.template;
        let review = steps::critique(teacher, &template).await?;
        let outcome = self.apply("critique", VersionSource::Critique, &review, reviewer)?;
        Ok((review, outcome))
    }

    /// Step 2 (labelling part): labels the active version's unlabelled trial items until the
    /// reviewer stops; returns how many labels were saved.
    pub fn label_step(&self, reviewer: &mut dyn Reviewer) -> Result<usize, IpoError> {
        let mut trial = self.trial(self.store.active()?)?;
        let pending: Vec<trial::TrialItem> = trial.unlabelled().into_iter().cloned().collect();
        let mut n = 0;
        for item in pending {
            match reviewer.label(&item)? {
                Some(label) => {
                    trial.set_label(label)?;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Step 3: corrections from up to `max_cases` labelled failures of the active version.
    pub async fn correction_step(
        &self,
        teacher: &dyn Teacher,
        reviewer: &mut dyn Reviewer,
        max_cases: usize,
    ) -> Result<(steps::Review, StepOutcome), IpoError> {
        let active = self.store.active()?;
        let template = self.store.get(active)?.template;
        let trial = self.trial(active)?;
        let failures: Vec<(&trial::TrialItem, &trial::Label)> = trial
            .items()
            .iter()
            .filter_map(|i| trial.label(&i.id).filter(|l| !l.ok).map(|l| (i, l)))
            .take(max_cases)
            .collect();
        if failures.is_empty() {
            return Err(IpoError::Invalid(format!(
                "version v{active} has no labelled failures; label its trial batch first (`mde ipo label`)"
            )));
        }
        let review = steps::correct(teacher, &template, &failures).await?;
        let outcome = self.apply("correction", VersionSource::Correction, &review, reviewer)?;
        Ok((review, outcome))
    }

    /// Statistics of every version that has a trial batch.
    pub fn status(&self) -> Result<Vec<stats::VersionStats>, IpoError> {
        let mut out = Vec::new();
        for v in self.store.list()? {
            if self
                .store
                .root()
                .join("trials")
                .join(format!("v{v}"))
                .is_dir()
            {
                out.push(stats::VersionStats::from_trial(v, &self.trial(v)?));
            }
        }
        Ok(out)
    }
}
