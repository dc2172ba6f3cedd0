//! MiniGPT-4's `LinearWarmupCosineLRScheduler` (`minigpt4/common/optims.py`).
//!
//! The runner calls `step(cur_epoch, cur_step)` *before* each training step, so the learning
//! rate used by global step `s` (0-based, `s = epoch * iters_per_epoch + i`) is
//! [`LinearWarmupCosine::lr_at`]`(s)`:
//!
//! * `s < warmup_steps`: `min(init_lr, warmup_lr + (init_lr - warmup_lr) * s /
//!   max(warmup_steps, 1))`;
//! * otherwise: `(init_lr - min_lr) * 0.5 * (1 + cos(pi * s / (max_epoch * iters_per_epoch))) +
//!   min_lr` — the cosine spans the whole run *including* the warmup, as released.

use serde::{Deserialize, Serialize};

/// Linear warmup then cosine decay, per iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearWarmupCosine {
    pub max_epoch: usize,
    pub iters_per_epoch: usize,
    pub init_lr: f64,
    pub min_lr: f64,
    pub warmup_lr: f64,
    pub warmup_steps: usize,
}

impl LinearWarmupCosine {
    /// Learning rate for 0-based global step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let total = (self.max_epoch * self.iters_per_epoch).max(1) as f64;
        if step < self.warmup_steps {
            let max_step = self.warmup_steps.max(1) as f64;
            let lr = (self.init_lr - self.warmup_lr) * step as f64 / max_step + self.warmup_lr;
            lr.min(self.init_lr)
        } else {
            (self.init_lr - self.min_lr)
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total).cos())
                + self.min_lr
        }
    }

    /// Learning rates of steps `0..n`.
    pub fn lrs(&self, n: usize) -> Vec<f64> {
        (0..n).map(|s| self.lr_at(s)).collect()
    }

    /// The released DataEngine LoRA schedule for a given run length (warmup 1e-6 -> 3e-4 over
    /// 200 steps, cosine to 1e-5).
    pub fn dataengine_lora(max_epoch: usize, iters_per_epoch: usize) -> Self {
        Self {
            max_epoch,
            iters_per_epoch,
            init_lr: 3e-4,
            min_lr: 1e-5,
            warmup_lr: 1e-6,
            warmup_steps: 200,
        }
    }
}
