//! The bad-case pool: bad cases grouped by question type (taxonomy id).
use crate::error::{AbsError, Result};
use mde_core::records::BadCase;
use mde_core::taxonomy::Taxonomy;
use serde::Serialize;
use std::collections::BTreeMap;

/// Bad cases by type id, in input order within each type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadCasePool {
    by_type: BTreeMap<String, Vec<BadCase>>,
}

/// What went into the pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolReport {
    pub total: usize,
    pub pooled: usize,
    /// Ids of bad cases without a question type (classify them first).
    pub untyped: Vec<String>,
    /// Bad cases whose answer index is outside their choices (unusable as examples).
    pub invalid: Vec<String>,
}

impl BadCasePool {
    /// Groups typed bad cases by type. Types are resolved through the taxonomy (id, name or
    /// number) and stored under the canonical id; a type the taxonomy lacks is an error naming
    /// the case. Untyped cases and cases whose answer index is out of range are left out and
    /// listed in the report.
    pub fn new(
        cases: impl IntoIterator<Item = BadCase>,
        taxonomy: &Taxonomy,
    ) -> Result<(Self, PoolReport)> {
        let mut pool = BadCasePool::default();
        let mut report = PoolReport::default();
        for mut case in cases {
            report.total += 1;
            let Some(t) = case
                .question_type
                .as_deref()
                .filter(|t| !t.trim().is_empty())
            else {
                report.untyped.push(case.id.clone());
                continue;
            };
            let Some(qt) = taxonomy.lookup(t) else {
                return Err(AbsError::Input(format!(
                    "bad case {:?}: question type {t:?} is not in taxonomy {:?} (types: {})",
                    case.id,
                    taxonomy.name,
                    taxonomy.ids().join(", ")
                )));
            };
            if case.answer_idx >= case.choices.len() {
                report.invalid.push(case.id.clone());
                continue;
            }
            case.question_type = Some(qt.id.clone());
            pool.by_type.entry(qt.id.clone()).or_default().push(case);
            report.pooled += 1;
        }
        Ok((pool, report))
    }

    /// Cases of a type id.
    pub fn cases(&self, type_id: &str) -> &[BadCase] {
        self.by_type.get(type_id).map_or(&[], |v| v.as_slice())
    }

    /// Type ids present, sorted.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(|s| s.as_str())
    }

    /// Number of cases per type.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.by_type
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_type.values().map(|v| v.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}
