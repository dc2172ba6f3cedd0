//! How inference uses candle's CPU threads.
//!
//! candle 0.11 runs CPU work on two pools:
//! - **gemm** splits each matmul over rayon's *current* pool. Called from the program's own thread,
//!   that is rayon's global pool: the caller blocks while the pool's threads compute.
//! - **Element-wise ops** of 64K elements or more go through candle's "barrier pool": the caller
//!   plus `threads - 1` workers. After each op a worker spins for 25,000 rounds
//!   (`CANDLE_BARRIER_POOL_SPIN_LIMIT`) before it parks.
//!
//! On a 2-core machine this is two gemm threads plus one spinning barrier worker after every
//! layer norm, GELU or softmax, on two cores, while the calling thread sits idle during every
//! matmul. The vision encode of the small benchmark config then gains almost nothing from the
//! second core (1 thread: 66 ms; 2 threads: 57-70 ms, with runs from 46 to 90 ms).
//!
//! Two settings fix it:
//! 1. [`tune_threads`] lowers the barrier workers' spin to [`BARRIER_SPIN_LIMIT`] rounds, so they
//!    give their core back to the gemm threads almost at once.
//! 2. [`on_compute_pool`] runs a forward pass *on* candle's rayon pool (`with_threadpool`). The
//!    thread that runs the model is then one of the gemm threads instead of a bystander.
//!    The model's inference entry points already do this: [`crate::vision::VisionModel`],
//!    [`crate::qformer::QFormer`], [`crate::model::MiniGpt4::encode_images`] and the
//!    [`crate::llama::Llama`] forwards with `train = false`.
//!
//! Measured with both (`bench_small`, 2 threads, docs/perf/pytorch-s7.md): vision encode
//! 53-55 -> 37-38 ms, prefill of 96 positions 39-40 -> 29 ms.
//!
//! Training forwards (`train = true`) stay on the caller's thread: the trainer chooses its own
//! threads (data-parallel shards in one-thread pools).
//!
//! ```
//! minigpt4::runtime::tune_threads(); // once, first thing in `main`
//! let four = minigpt4::runtime::on_compute_pool(&candle_core::Device::Cpu, || 2 + 2);
//! assert_eq!(four, 4);
//! ```
//!
//! Set `MDE_THREAD_DEFAULTS=1` to keep candle's own behaviour (to measure the difference).

use std::sync::OnceLock;

use candle_core::Device;

/// Spin rounds of candle's barrier-pool workers after each job, set by [`tune_threads`]
/// (candle's default is 25,000). 0 and 1,000 measured the same on 2 cores.
pub const BARRIER_SPIN_LIMIT: u32 = 1000;

const SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

fn defaults_kept() -> bool {
    static KEEP: OnceLock<bool> = OnceLock::new();
    *KEEP.get_or_init(|| std::env::var_os("MDE_THREAD_DEFAULTS").is_some())
}

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`BARRIER_SPIN_LIMIT`] unless the variable is already
/// set or `MDE_THREAD_DEFAULTS` is. candle reads it once, when its barrier pool starts (the first
/// large element-wise op), so call this at the start of `main`, before other threads exist.
/// Returns whether it set the variable.
pub fn tune_threads() -> bool {
    if defaults_kept() || std::env::var_os(SPIN_VAR).is_some() {
        return false;
    }
    // Edition 2021: `set_var` is safe but races with concurrent environment reads from other
    // threads; the docs ask callers to do this first thing in `main`.
    std::env::set_var(SPIN_VAR, BARRIER_SPIN_LIMIT.to_string());
    true
}

/// [`crate::alloc::tune_malloc`] and [`tune_threads`]: the process settings `mde` uses.
pub fn tune_process() {
    crate::alloc::tune_malloc();
    tune_threads();
}

/// Runs `f` on candle's CPU compute pool (see the module docs), or inline when that would not
/// help: on other devices, with one thread, on a thread that already belongs to a rayon pool
/// (nested calls, or a trainer shard in its own pool), or with `MDE_THREAD_DEFAULTS` set.
pub fn on_compute_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu()
        || defaults_kept()
        || rayon::current_thread_index().is_some()
        || candle_core::utils::get_num_threads() <= 1
    {
        return f();
    }
    candle_core::utils::with_threadpool(f)
}

/// [`on_compute_pool`] for inference only: with `train = true` `f` runs on the caller's thread.
pub(crate) fn inference<R: Send>(train: bool, device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if train {
        f()
    } else {
        on_compute_pool(device, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_work_returns_its_value_and_nests() {
        let dev = Device::Cpu;
        let v = on_compute_pool(&dev, || on_compute_pool(&dev, || 40) + 2);
        assert_eq!(v, 42);
        assert_eq!(inference(true, &dev, || 1), 1);
    }
}
