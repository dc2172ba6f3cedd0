//! Fine-tuning foundations for MiniGPT-4 (MLLM-DataEngine's stage 2): torch-exact AdamW with
//! parameter groups and checkpointable state, MiniGPT-4's warmup-cosine schedule, the
//! training batch layout, PEFT adapter I/O, resumable checkpoints and seeded dataset mixing,
//! plus the [`Trainer`] driver (fc / lora / lora+fc, and full / frozen-vit / llm+fc on a model whose
//! parameters are Vars; gradient accumulation, exact resume,
//! validation-based best checkpoint) and exports (PEFT adapter, runner-keyed safetensors,
//! merged LLaMA).
//!
//! Driving a run (model, tokenizer and records loaded elsewhere):
//!
//! ```no_run
//! # fn demo(model: minigpt4::MiniGpt4, tok: minigpt4::tokenizer::LlamaTokenizer,
//! #         records: Vec<mde_train::data::TrainRecord>) -> mde_train::Result<()> {
//! use mde_train::{RunOptions, TrainConfig, TrainDataset, TrainMode, Trainer};
//! let cfg = TrainConfig { mode: TrainMode::LoraFc, iters_per_epoch: 100, ..Default::default() };
//! let data = vec![TrainDataset { name: "round1".into(), ratio: None, records }];
//! // Resumes if `runs/r1` already holds a checkpoint.
//! let mut t = Trainer::new(model, tok, data, cfg, std::path::Path::new("runs/r1"))?;
//! t.run(None, RunOptions { progress: true, ..Default::default() })?;
//! # Ok(()) }
//! ```
//!
//! Full training (every parameter, vision tower and Q-Former included):
//!
//! ```no_run
//! # fn demo(paths: minigpt4::ModelPaths, data: Vec<mde_train::TrainDataset>) -> mde_train::Result<()> {
//! use mde_train::{RunOptions, TrainConfig, TrainMode, Trainer};
//! let dev = candle_core::Device::Cpu;
//! let (model, varmap, tok) = mde_train::trainer::load_model_varmap(&paths, &dev)?;
//! let cfg = TrainConfig { mode: TrainMode::Full, ..Default::default() };
//! let mut t = Trainer::new_full(model, varmap, tok, data, cfg, std::path::Path::new("runs/f"))?;
//! t.run(None, RunOptions::default())?; // writes runs/f/final/model.safetensors
//! # Ok(()) }
//! ```
//!
//! Foundations:
//!
//! ```no_run
//! use mde_train::schedule::LinearWarmupCosine;
//! use mde_train::batch::{build_batch, LayoutConfig, TrainSample};
//! use minigpt4::tokenizer::LlamaTokenizer;
//! let sched = LinearWarmupCosine { max_epoch: 1, iters_per_epoch: 6, init_lr: 1e-3, min_lr: 1e-5, warmup_lr: 1e-6, warmup_steps: 2 };
//! assert_eq!(sched.lr_at(0), 1e-6);
//! let tok = LlamaTokenizer::from_dir("vicuna").unwrap();
//! let sample = TrainSample { prompt: minigpt4::prompt::instruction_prompt("Describe this image in detail."), answer: "A cat.".into() };
//! let batch = build_batch(&tok, &[sample], "###", LayoutConfig::minigpt4(32)).unwrap();
//! assert_eq!(batch.batch_size(), 1);
//! ```

pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod io;
pub mod mix;
pub mod optim;
pub mod peft;
pub mod progress;
pub mod scaler;
pub mod schedule;
pub mod shards;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{
    FnValidator, RunOptions, TrainConfig, TrainDataset, TrainMode, Trainer, Validator,
};
