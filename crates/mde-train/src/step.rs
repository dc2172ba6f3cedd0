//! One stage-2 training step on a [`minigpt4::model::MiniGpt4`]: projector forward from frozen
//! Q-Former features, layout embedding, differentiable LLaMA forward, HF shifted loss,
//! backward and AdamW update.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use minigpt4::model::MiniGpt4;

use crate::batch::TrainBatch;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;

/// Device tensors of a [`TrainBatch`].
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// `[B, T]` i64, -1 at image rows.
    pub token_ids: Tensor,
    /// `[B, T]` u32.
    pub attention_mask: Tensor,
    /// `[B, T]` i64.
    pub labels: Tensor,
    /// `[B, T]` u32, `0..T` per row (all padding sits at the end of each row).
    pub position_ids: Tensor,
}

impl BatchTensors {
    /// Uploads a batch layout.
    pub fn new(b: &TrainBatch, device: &Device) -> Result<Self> {
        let (n, t) = (b.batch_size(), b.seq_len());
        let token_ids = Tensor::from_vec(TrainBatch::flat(&b.token_ids), (n, t), device)?;
        let mask: Vec<u32> = TrainBatch::flat(&b.attention_mask)
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let attention_mask = Tensor::from_vec(mask, (n, t), device)?;
        let labels = Tensor::from_vec(TrainBatch::flat(&b.labels), (n, t), device)?;
        let position_ids = Tensor::arange(0u32, t as u32, device)?
            .unsqueeze(0)?
            .repeat((n, 1))?;
        Ok(Self {
            token_ids,
            attention_mask,
            labels,
            position_ids,
        })
    }
}

/// Training loss for frozen Q-Former features `qformer_out` `[B, num_query, qf_hidden]`.
pub fn loss(model: &MiniGpt4, qformer_out: &Tensor, batch: &BatchTensors) -> Result<Tensor> {
    let img = model.project(qformer_out, true)?;
    let embeds = model.embed_layout(&batch.token_ids, &img)?;
    Ok(model.train_loss(
        &embeds,
        &batch.attention_mask,
        &batch.position_ids,
        &batch.labels,
    )?)
}

/// Loss, gradients, and one optimizer step at learning rate `lr`; returns the loss (before the
/// update) and the gradients.
pub fn train_step(
    model: &MiniGpt4,
    opt: &mut AdamW,
    lr: f64,
    qformer_out: &Tensor,
    batch: &BatchTensors,
) -> Result<(f32, GradStore)> {
    opt.set_learning_rate(lr);
    let l = loss(model, qformer_out, batch)?;
    let value = l.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !value.is_finite() {
        return Err(TrainError::Invalid(format!("non-finite loss {value}")));
    }
    let grads = l.backward()?;
    opt.step(&grads)?;
    Ok((value, grads))
}
