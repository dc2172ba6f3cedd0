//! Row shards of a CPU training step: one one-thread rayon pool per shard, each shard on its own
//! thread, with candle's gemm single-threaded while the pools live.
//!
//! Why: the tiny models' ops are too small to share between cores. candle's own two-thread
//! parallelism spends most of a step handing work between threads; two single-threaded shards
//! of the batch run 2-3x faster (docs/PERFORMANCE.md). Used by the [`crate::Trainer`] and by
//! mde-loop's visual-encoder pretraining.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};
use crate::trainer::GemmThreadsGuard;

/// `n` one-thread pools; candle's gemm stays single-threaded until this is dropped.
pub struct ShardPools {
    // Declared before the guard, so the pools go first.
    pools: Vec<rayon::ThreadPool>,
    _gemm: GemmThreadsGuard,
}

impl ShardPools {
    /// `n` pools whose threads are named `{name}-{i}`. Build it before any shard thread exists:
    /// it sets `RAYON_NUM_THREADS` (see [`GemmThreadsGuard::single_threaded`]).
    pub fn new(n: usize, name: &str) -> Result<Self> {
        let gemm = GemmThreadsGuard::single_threaded();
        let pools = (0..n)
            .map(|i| {
                let name = format!("{name}-{i}");
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| name.clone())
                    .build()
                    .map_err(|e| TrainError::Invalid(format!("shard thread pool: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self { pools, _gemm: gemm })
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether there is no shard.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Runs `f(i)` for every shard `i` on its own thread inside pool `i`; results in shard order.
    /// A panicking shard gives an error.
    pub fn run<T, E, F>(&self, f: F) -> Vec<std::result::Result<T, E>>
    where
        T: Send,
        E: Send + From<TrainError>,
        F: Fn(usize) -> std::result::Result<T, E> + Sync,
    {
        std::thread::scope(|sc| {
            let handles: Vec<_> = self
                .pools
                .iter()
                .enumerate()
                .map(|(i, pool)| {
                    let f = &f;
                    sc.spawn(move || pool.install(|| f(i)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Invalid("a shard panicked".into()).into())
                    })
                })
                .collect()
        })
    }
}

/// Sums the losses of the shards that had rows (`Ok(None)`: no rows) and keeps their gradient
/// stores in shard order; the first error wins.
pub fn gather<E, S: IntoIterator<Item = GradStore>>(
    results: Vec<std::result::Result<Option<(f32, S)>, E>>,
) -> std::result::Result<(f32, Vec<GradStore>), E> {
    let mut loss = 0f32;
    let mut stores = Vec::with_capacity(results.len());
    for r in results {
        if let Some((l, g)) = r? {
            loss += l;
            stores.extend(g);
        }
    }
    Ok((loss, stores))
}

/// Adds the gradient of each of `vars` found in `stores` into `sums` (same order as `vars`), in
/// store order: the fixed order that makes sharded steps deterministic.
pub fn add_grads<'a>(
    vars: impl IntoIterator<Item = &'a Var>,
    stores: &[GradStore],
    sums: &mut [Option<Tensor>],
) -> Result<()> {
    for (var, sum) in vars.into_iter().zip(sums.iter_mut()) {
        for grads in stores {
            if let Some(g) = grads.get(var.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    Ok(())
}
