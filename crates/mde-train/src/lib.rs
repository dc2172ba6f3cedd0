//! Fine-tuning foundations for MiniGPT-4 (MLLM-DataEngine's stage 2): torch-exact AdamW with
//! parameter groups and checkpointable state, MiniGPT-4's warmup-cosine schedule, the
//! training batch layout, PEFT adapter I/O, resumable checkpoints and seeded dataset mixing.
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
pub mod error;
pub mod io;
pub mod mix;
pub mod optim;
pub mod peft;
pub mod schedule;
pub mod step;

pub use error::{Result, TrainError};
