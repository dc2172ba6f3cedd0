//! Step 5: failure statistics per prompt version and the stop rule.
use crate::trial::Trial;
use mde_core::records::FailureCategory;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Failure statistics of one version's trial batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionStats {
    pub version: u32,
    pub items: usize,
    pub labelled: usize,
    pub failed: usize,
    /// Failures per category (an item may count in several categories).
    pub by_category: BTreeMap<String, usize>,
    /// failed / labelled (0 when nothing is labelled).
    pub failure_rate: f64,
    /// Items the validator pre-labelled as failing (before human review).
    pub prelabelled_failed: usize,
}

impl VersionStats {
    pub fn from_trial(version: u32, trial: &Trial) -> Self {
        let mut s = VersionStats {
            version,
            items: trial.items().len(),
            ..Default::default()
        };
        for c in FailureCategory::BUILTIN.iter() {
            s.by_category.insert(c.as_str().to_string(), 0);
        }
        for item in trial.items() {
            if !item.prelabels.is_empty() {
                s.prelabelled_failed += 1;
            }
            if let Some(l) = trial.label(&item.id) {
                s.labelled += 1;
                if !l.ok {
                    s.failed += 1;
                    for c in &l.failures {
                        *s.by_category.entry(c.as_str().to_string()).or_default() += 1;
                    }
                }
            }
        }
        s.failure_rate = if s.labelled == 0 {
            0.0
        } else {
            s.failed as f64 / s.labelled as f64
        };
        s
    }

    /// The stop rule: every item labelled and the failure rate at or below `threshold`.
    pub fn meets(&self, threshold: f64) -> bool {
        self.items > 0 && self.labelled == self.items && self.failure_rate <= threshold
    }
}

/// The ablation-style table: one row per failure category, one column per version.
pub fn markdown_table(stats: &[VersionStats]) -> String {
    let mut cats: Vec<String> = Vec::new();
    for s in stats {
        for c in s.by_category.keys() {
            if !cats.contains(c) {
                cats.push(c.clone());
            }
        }
    }
    let mut out = String::from("| failure |");
    for s in stats {
        out.push_str(&format!(" v{} |", s.version));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(stats.len()));
    out.push('\n');
    for c in &cats {
        out.push_str(&format!("| {} |", FailureCategory::parse(c).label()));
        for s in stats {
            out.push_str(&format!(
                " {} |",
                s.by_category.get(c).copied().unwrap_or(0)
            ));
        }
        out.push('\n');
    }
    out.push_str("| **failed items** |");
    for s in stats {
        out.push_str(&format!(" {} / {} |", s.failed, s.labelled));
    }
    out.push_str("\n| **failure rate** |");
    for s in stats {
        out.push_str(&format!(" {:.1}% |", s.failure_rate * 100.0));
    }
    out.push('\n');
    out
}
