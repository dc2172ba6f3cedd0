//! AdamW with `torch.optim.AdamW` semantics (single-tensor path), parameter groups and
//! checkpointable state.
//!
//! Per parameter with a gradient, at step `t` (its own counter, as torch keeps one per
//! parameter):
//!
//! ```text
//! p -= lr * wd * p                         (decoupled weight decay)
//! m  = lerp(m, g, 1 - b1)                  (= b1 m + (1 - b1) g)
//! v  = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Parameters without a gradient in the [`GradStore`] are skipped and keep their step count.
//! State is saved as safetensors (`<name>.exp_avg`, `<name>.exp_avg_sq`) plus JSON (steps,
//! hyper-parameters), both written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// MiniGPT-4 runner rule: no weight decay for tensors with fewer than 2 dims or whose name
/// contains `bias`, `ln` or `bn`.
pub fn runner_applies_weight_decay(name: &str, ndim: usize) -> bool {
    !(ndim < 2 || name.contains("bias") || name.contains("ln") || name.contains("bn"))
}

/// Hyper-parameters shared by the groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Weight decay of the decayed group.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // torch.optim.AdamW defaults except weight decay, which MiniGPT-4 sets to 0.05.
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// A parameter group: its own weight decay and an lr multiplier (1.0 for MiniGPT-4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    pub weight_decay: f64,
    pub lr_scale: f64,
    pub names: Vec<String>,
}

struct ParamState {
    name: String,
    var: Var,
    group: usize,
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

/// Serialisable scalar state of the optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWStateMeta {
    pub config: AdamWConfig,
    pub groups: Vec<ParamGroup>,
    /// Per-parameter step counts.
    pub steps: BTreeMap<String, u64>,
}

/// AdamW over named candle [`Var`]s.
pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    params: Vec<ParamState>,
}

impl AdamW {
    /// Builds the optimizer with MiniGPT-4's two groups: decayed (`config.weight_decay`) and
    /// not decayed (see [`runner_applies_weight_decay`]). Empty groups are dropped.
    pub fn new_runner_groups(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut decay = Vec::new();
        let mut no_decay = Vec::new();
        for (n, v) in &params {
            if runner_applies_weight_decay(n, v.as_tensor().rank()) {
                decay.push(n.clone());
            } else {
                no_decay.push(n.clone());
            }
        }
        let mut groups = Vec::new();
        if !decay.is_empty() {
            groups.push(ParamGroup {
                weight_decay: config.weight_decay,
                lr_scale: 1.0,
                names: decay,
            });
        }
        if !no_decay.is_empty() {
            groups.push(ParamGroup {
                weight_decay: 0.0,
                lr_scale: 1.0,
                names: no_decay,
            });
        }
        Self::new(params, groups, config)
    }

    /// Builds the optimizer with explicit groups; every parameter must be in exactly one group.
    pub fn new(
        params: Vec<(String, Var)>,
        groups: Vec<ParamGroup>,
        config: AdamWConfig,
    ) -> Result<Self> {
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for n in &g.names {
                if group_of.insert(n.as_str(), gi).is_some() {
                    return Err(TrainError::Invalid(format!(
                        "parameter {n} is in two groups"
                    )));
                }
            }
        }
        let mut states = Vec::with_capacity(params.len());
        for (name, var) in params {
            let group = *group_of
                .get(name.as_str())
                .ok_or_else(|| TrainError::Invalid(format!("parameter {name} is in no group")))?;
            if var.as_tensor().dtype() != DType::F32 {
                return Err(TrainError::Invalid(format!(
                    "parameter {name} is {:?}: trainable parameters must be f32",
                    var.as_tensor().dtype()
                )));
            }
            states.push(ParamState {
                name,
                var,
                group,
                step: 0,
                exp_avg: None,
                exp_avg_sq: None,
            });
        }
        if states.len() != group_of.len() {
            return Err(TrainError::Invalid(
                "a group names a parameter that was not given".into(),
            ));
        }
        Ok(Self {
            config,
            groups,
            params: states,
        })
    }

    /// Current base learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    /// Sets the base learning rate (the scheduler calls this before each step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Named parameters in registration order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Step count of a parameter.
    pub fn step_of(&self, name: &str) -> Option<u64> {
        self.params.iter().find(|p| p.name == name).map(|p| p.step)
    }

    /// One AdamW update from the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            let group = &self.groups[p.group];
            let lr = c.lr * group.lr_scale;
            p.step += 1;
            let t = p.step as f64;
            let mut param = p.var.as_tensor().clone();
            if group.weight_decay != 0.0 {
                param = param.affine(1.0 - lr * group.weight_decay, 0.0)?;
            }
            let m_prev = match &p.exp_avg {
                Some(m) => m.clone(),
                None => g.zeros_like()?,
            };
            let v_prev = match &p.exp_avg_sq {
                Some(v) => v.clone(),
                None => g.zeros_like()?,
            };
            // torch's lerp with weight < 0.5: self + weight * (end - self).
            let m = (&m_prev + ((&g - &m_prev)?.affine(1.0 - c.beta1, 0.0))?)?;
            let v = (v_prev.affine(c.beta2, 0.0)? + (g.sqr()?.affine(1.0 - c.beta2, 0.0))?)?;
            let bc1 = 1.0 - c.beta1.powf(t);
            let bc2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
            let step_size = lr / bc1;
            let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, 0.0)?.affine(1.0, c.eps)?;
            let update = (m.div(&denom))?.affine(step_size, 0.0)?;
            let new_param = (param - update)?;
            p.var.set(&new_param)?;
            p.exp_avg = Some(m);
            p.exp_avg_sq = Some(v);
        }
        Ok(())
    }

    /// Scalar state (steps, hyper-parameters).
    pub fn state_meta(&self) -> AdamWStateMeta {
        AdamWStateMeta {
            config: self.config,
            groups: self.groups.clone(),
            steps: self
                .params
                .iter()
                .map(|p| (p.name.clone(), p.step))
                .collect(),
        }
    }

    /// Moment tensors as `<name>.exp_avg` / `<name>.exp_avg_sq`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            if let (Some(m), Some(v)) = (&p.exp_avg, &p.exp_avg_sq) {
                out.push((format!("{}.exp_avg", p.name), m.clone()));
                out.push((format!("{}.exp_avg_sq", p.name), v.clone()));
            }
        }
        out
    }

    /// Writes `<stem>.safetensors` (moments) and `<stem>.json` (steps, config) atomically.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        let tensors = self.state_tensors();
        let bytes = crate::io::safetensors_bytes(&tensors)?;
        mde_core::io::atomic_write(dir.join(format!("{stem}.safetensors")), &bytes)?;
        mde_core::io::write_json(dir.join(format!("{stem}.json")), &self.state_meta())?;
        Ok(())
    }

    /// Restores the state written by [`AdamW::save`]; parameter names and shapes must match.
    pub fn load(&mut self, dir: &Path, stem: &str) -> Result<()> {
        let json = dir.join(format!("{stem}.json"));
        let meta: AdamWStateMeta = mde_core::io::read_json(&json)?;
        let st = dir.join(format!("{stem}.safetensors"));
        let device = self
            .params
            .first()
            .map(|p| p.var.as_tensor().device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let tensors = crate::io::load_safetensors(&st, &device)?;
        for p in self.params.iter_mut() {
            let step = *meta.steps.get(&p.name).ok_or_else(|| {
                TrainError::file(&json, format!("no step count for parameter {}", p.name))
            })?;
            p.step = step;
            let m = tensors.get(&format!("{}.exp_avg", p.name));
            let v = tensors.get(&format!("{}.exp_avg_sq", p.name));
            match (m, v) {
                (Some(m), Some(v)) => {
                    let dims = p.var.as_tensor().dims();
                    if m.dims() != dims || v.dims() != dims {
                        return Err(TrainError::file(
                            &st,
                            format!(
                                "moments of {} have shape {:?}, parameter is {:?}",
                                p.name,
                                m.dims(),
                                dims
                            ),
                        ));
                    }
                    p.exp_avg = Some(m.to_dtype(DType::F32)?);
                    p.exp_avg_sq = Some(v.to_dtype(DType::F32)?);
                }
                (None, None) if step == 0 => {
                    p.exp_avg = None;
                    p.exp_avg_sq = None;
                }
                _ => {
                    return Err(TrainError::file(
                        &st,
                        format!("missing moments for parameter {} (step {step})", p.name),
                    ))
                }
            }
        }
        self.config = meta.config;
        self.groups = meta.groups;
        Ok(())
    }
}
