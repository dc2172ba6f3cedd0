//! Sharded evaluation for `mde eval`: `--shard I/N` evaluates a deterministic slice of the items
//! into `OUT/shards/I-of-N/predictions.jsonl` (resumable like any run), `--merge` writes the
//! shards' predictions, in benchmark order, into `OUT/predictions.jsonl`, after which the usual
//! scoring writes the official files, scores and bad cases a single process would write.
//!
//! The slices are contiguous runs of whole batches (the batch size the run would use: the
//! smaller of `--batch-size` and the model config's `max_batch`), so every batch of a shard is
//! a batch of the single-process run: since predictions do not depend on the batch a request
//! is in beyond float rounding (docs/PERFORMANCE.md, "Batch invariance"), and here not even
//! that, the merged files equal a single run's byte for byte.
//!
//! `--shard auto` takes the shard from the environment: `RANK`/`WORLD_SIZE` (torchrun and
//! friends) or `SLURM_ARRAY_TASK_ID`/`SLURM_ARRAY_TASK_COUNT` (Slurm array jobs, which number
//! tasks from the array's first index: use `--array=0-N`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mde_core::records::{BenchItem, Prediction};

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `I/N` or `auto`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (i, n) = if spec == "auto" {
            let var = |k: &str| std::env::var(k).ok();
            match (var("RANK"), var("WORLD_SIZE")) {
                (Some(i), Some(n)) => (i, n),
                _ => match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
                    (Some(i), Some(n)) => (i, n),
                    _ => bail!(
                        "--shard auto: neither RANK/WORLD_SIZE nor SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT is set"
                    ),
                },
            }
        } else {
            let (i, n) = spec
                .split_once('/')
                .with_context(|| format!("--shard {spec:?}: expected I/N (e.g. 0/4) or auto"))?;
            (i.trim().to_string(), n.trim().to_string())
        };
        let num = |s: &str, what: &str| -> Result<usize> {
            s.parse()
                .with_context(|| format!("--shard {spec:?}: {what} {s:?} is not a whole number"))
        };
        let (index, count) = (num(&i, "index")?, num(&n, "count")?);
        if count == 0 || index >= count {
            bail!("--shard {spec:?}: needs 0 <= I < N (got I = {index}, N = {count})");
        }
        Ok(Shard { index, count })
    }

    /// The shard's folder under the run folder.
    pub fn dir(&self, out: &Path) -> PathBuf {
        out.join("shards")
            .join(format!("{}-of-{}", self.index, self.count))
    }

    /// The item range of this shard among `n` selected items: contiguous blocks of whole
    /// batches of `batch`, the first shards taking the larger share.
    pub fn range(&self, n: usize, batch: usize) -> std::ops::Range<usize> {
        let batch = batch.max(1);
        let batches = n.div_ceil(batch);
        let (q, r) = (batches / self.count, batches % self.count);
        let start_b = self.index * q + self.index.min(r);
        let len_b = q + usize::from(self.index < r);
        let start = (start_b * batch).min(n);
        let end = ((start_b + len_b) * batch).min(n);
        start..end
    }
}

/// The merged predictions of every shard of `out`, in the order of `selected`. Every shard
/// `0..N` must be there and complete (each of its items predicted); the shard count is read
/// from the folder names.
pub fn merge(out: &Path, selected: &[BenchItem], batch: usize) -> Result<Vec<Prediction>> {
    let root = out.join("shards");
    let mut counts = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&root).with_context(|| {
        format!(
            "--merge: no {} (run the shards with --shard I/N first)",
            root.display()
        )
    })? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some((_, n)) = name.split_once("-of-") {
            counts.insert(n.to_string());
        }
    }
    let count: usize = match counts.len() {
        0 => bail!("--merge: {} holds no shard folder", root.display()),
        1 => counts.iter().next().unwrap().parse().with_context(|| {
            format!("--merge: {}: unreadable shard folder names", root.display())
        })?,
        _ => bail!(
            "--merge: {} holds shards of different counts ({:?}); remove the stale ones",
            root.display(),
            counts
        ),
    };
    let mut merged = Vec::with_capacity(selected.len());
    for index in 0..count {
        let shard = Shard { index, count };
        let store = shard.dir(out).join("predictions.jsonl");
        if !store.is_file() {
            bail!(
                "--merge: shard {index}/{count} has not run ({} is missing)",
                store.display()
            );
        }
        // The first record per id (the store's rule), torn last line tolerated.
        let mut read = mde_core::input_report::read_jsonl_report::<Prediction>(&store)?;
        read.dedup_first(|p| p.id.clone());
        let by_id: std::collections::HashMap<&str, &Prediction> =
            read.records.iter().map(|p| (p.id.as_str(), p)).collect();
        let range = shard.range(selected.len(), batch);
        let mut missing = 0;
        for it in &selected[range.clone()] {
            match by_id.get(it.id.as_str()) {
                Some(p) => merged.push((*p).clone()),
                None => missing += 1,
            }
        }
        if missing > 0 {
            bail!(
                "--merge: shard {index}/{count} is incomplete ({missing} of {} items unpredicted); re-run it with --shard {index}/{count}",
                range.len()
            );
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_item_once_in_whole_batches() {
        for n in [0, 1, 7, 16, 33, 100] {
            for count in 1..6 {
                for batch in [1, 4, 16] {
                    let mut next = 0;
                    for index in 0..count {
                        let r = Shard { index, count }.range(n, batch);
                        assert_eq!(r.start, next, "n {n} count {count} batch {batch}");
                        assert!(r.start.is_multiple_of(batch) || r.start == n);
                        next = r.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }

    #[test]
    fn specs() {
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("x/4").is_err());
        assert!(Shard::parse("3").is_err());
    }
}
