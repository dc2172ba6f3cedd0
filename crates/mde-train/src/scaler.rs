//! Dynamic loss scaling for half-precision training, with the semantics of PyTorch's
//! `torch.cuda.amp.GradScaler`: the loss is multiplied by the scale before backward, the
//! gradients are divided by it before clipping and the optimizer step; a step whose gradients
//! hold an inf or NaN is skipped and the scale halved; after `growth_interval` clean steps in a
//! row the scale doubles.
//!
//! f16 needs it (its smallest normal is 6e-5, so small activation gradients flush to zero, and
//! its largest value is 65504); bf16 has f32's range and needs none, so `auto` scales only when
//! the model computes in f16. Trainable parameters are f32 master weights in every dtype.
//!
//! ```
//! use mde_train::scaler::{LossScaleSettings, LossScaler};
//! let s = LossScaleSettings { growth_interval: 2, ..Default::default() };
//! let mut sc = LossScaler::new(&s);
//! assert_eq!(sc.scale(), 65536.0);
//! sc.update(true, &s); // inf/NaN gradients: the step is skipped, the scale halves
//! assert_eq!((sc.scale(), sc.skipped()), (32768.0, 1));
//! sc.update(false, &s);
//! sc.update(false, &s); // two clean steps: it grows again
//! assert_eq!(sc.scale(), 65536.0);
//! ```

use serde::{Deserialize, Serialize};

/// When the trainer scales the loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossScaleMode {
    /// Only when the model computes in f16.
    #[default]
    Auto,
    /// Always (also f32 and bf16; for tests).
    On,
    /// Never (an f16 model then trains unscaled, as with `enabled=False` in torch).
    Off,
}

/// `[train.loss_scale]`; the defaults are `GradScaler`'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleSettings {
    pub mode: LossScaleMode,
    /// First scale (2^16).
    pub init_scale: f64,
    /// Factor after `growth_interval` clean steps.
    pub growth_factor: f64,
    /// Factor after a step with inf/NaN gradients.
    pub backoff_factor: f64,
    /// Clean steps in a row before the scale grows.
    pub growth_interval: u64,
}

impl Default for LossScaleSettings {
    fn default() -> Self {
        Self {
            mode: LossScaleMode::Auto,
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl LossScaleSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a model computing in `dtype` trains with a scaled loss.
    pub fn applies_to(&self, dtype: candle_core::DType) -> bool {
        match self.mode {
            LossScaleMode::Auto => dtype == candle_core::DType::F16,
            LossScaleMode::On => true,
            LossScaleMode::Off => false,
        }
    }

    /// Range checks (each failure names the key).
    pub fn check(&self) -> Result<(), String> {
        let finite_pos = |k: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("loss_scale.{k} = {v}: must be a finite number > 0"))
            }
        };
        finite_pos("init_scale", self.init_scale)?;
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return Err(format!(
                "loss_scale.growth_factor = {}: must be > 1",
                self.growth_factor
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(format!(
                "loss_scale.backoff_factor = {}: must be in (0, 1)",
                self.backoff_factor
            ));
        }
        if self.growth_interval == 0 {
            return Err("loss_scale.growth_interval = 0: must be at least 1".into());
        }
        Ok(())
    }
}

/// The scaler's state (saved in checkpoints, so a resumed run scales as an uninterrupted one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    scale: f64,
    /// Clean steps since the last change.
    growth_tracker: u64,
    /// Steps skipped for inf/NaN gradients, in total.
    skipped: u64,
}

impl LossScaler {
    pub fn new(s: &LossScaleSettings) -> Self {
        Self {
            scale: s.init_scale,
            growth_tracker: 0,
            skipped: 0,
        }
    }

    /// The factor the loss is multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// After a step: `found_inf` when its unscaled gradients held an inf or NaN (the step was
    /// skipped).
    pub fn update(&mut self, found_inf: bool, s: &LossScaleSettings) {
        if found_inf {
            self.scale *= s.backoff_factor;
            self.growth_tracker = 0;
            self.skipped += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker >= s.growth_interval {
                self.scale *= s.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}
