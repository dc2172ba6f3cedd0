//! `mde ask`: answer one question about one image with MiniGPT-4 (Vicuna v0 chat template).
//!
//! Model location comes from flags or from `--config FILE.toml` with the same keys
//! (`blip2`, `eva_vit`, `blip2_config`, `vicuna`, `projector`); flags override the file.
//! Greedy decoding by default; `--sample` samples with `--temperature` / `--top-p`;
//! `--num-beams N` runs beam search. The decoding flags are checked before any file is read
//! (`--num-beams` >= 1, `--temperature` >= 0, `--top-p` in (0, 1], `--max-new-tokens` >= 1).
//! Decoding stops at `</s>` or at "###" (every tokenization of
//! it the tokenizer has). Tokens are streamed to stdout unless beam search is used.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use minigpt4::generation::{generate, GenerationConfig};
use minigpt4::model::{MiniGpt4, ModelPaths};
use minigpt4::preprocess::{load_rgb, ImageProcessor};
use minigpt4::prompt::{postprocess_answer_ids, tokenize_segments, ChatTemplate};
use minigpt4::tokenizer::LlamaTokenizer;
use minigpt4::weights::Location;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image file (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// Question about the image.
    #[arg(long)]
    pub question: String,
    /// TOML file with `blip2`, `eva_vit`, `blip2_config`, `vicuna`, `projector` keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// BLIP-2: HF folder / repo id, or LAVIS `.pth`.
    #[arg(long)]
    pub blip2: Option<String>,
    /// Raw `eva_vit_g.pth` when the LAVIS file has no ViT.
    #[arg(long)]
    pub eva_vit: Option<String>,
    /// BLIP-2 `config.json` giving head counts for LAVIS files.
    #[arg(long)]
    pub blip2_config: Option<String>,
    /// Vicuna HF folder or repo id (with tokenizer.json).
    #[arg(long)]
    pub vicuna: Option<String>,
    /// MiniGPT-4 checkpoint holding `llama_proj.*`.
    #[arg(long)]
    pub projector: Option<String>,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value_t = 300)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam search length penalty (HF: score / len^penalty).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    pub sample: bool,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.9)]
    pub top_p: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run on the CPU even when a GPU build is available.
    #[arg(long)]
    pub cpu: bool,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" | "fp16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("--dtype must be f32, f16 or bf16, got `{other}`"),
    })
}

fn model_paths(a: &Args) -> Result<ModelPaths> {
    let mut p: ModelPaths = match &a.config {
        Some(f) => {
            let s =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            toml::from_str(&s).with_context(|| {
                format!(
                    "{}: expected keys blip2, vicuna, projector, eva_vit, blip2_config",
                    f.display()
                )
            })?
        }
        None => ModelPaths::default(),
    };
    if let Some(x) = &a.blip2 {
        p.blip2 = x.clone();
    }
    if let Some(x) = &a.vicuna {
        p.vicuna = x.clone();
    }
    if a.eva_vit.is_some() {
        p.eva_vit = a.eva_vit.clone();
    }
    if a.blip2_config.is_some() {
        p.blip2_config = a.blip2_config.clone();
    }
    if a.projector.is_some() {
        p.projector = a.projector.clone();
    }
    if p.blip2.is_empty() || p.vicuna.is_empty() {
        bail!("model location missing: give --blip2 and --vicuna (or a --config TOML with those keys)");
    }
    Ok(p)
}

/// The decoding settings of the flags, checked before anything is loaded; an error names the
/// flag (`--top-p 7: must be in (0, 1]`).
fn generation_config(a: &Args) -> Result<GenerationConfig> {
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        num_beams: a.num_beams,
        do_sample: a.sample,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        length_penalty: a.length_penalty,
        ..Default::default()
    };
    match cfg.validate() {
        Ok(()) => Ok(cfg),
        Err(minigpt4::Error::BadValue {
            key,
            value,
            expected,
            ..
        }) => bail!("--{} {value}: {expected}", key.replace('_', "-")),
        Err(e) => Err(e.into()),
    }
}

pub fn run(args: Args) -> Result<()> {
    let gen = generation_config(&args)?;
    let paths = model_paths(&args)?;
    let dtype = parse_dtype(&args.dtype)?;
    let device = if args.cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let mut model = MiniGpt4::load(&paths, dtype, &device).context("loading MiniGPT-4")?;
    model
        .set_inference_layout(true)
        .context("storing the weights for inference")?;
    let tok_path = Location::parse(&paths.vicuna)?
        .file("tokenizer.json")
        .with_context(|| format!("{}: no tokenizer.json", paths.vicuna))?;
    let tok = LlamaTokenizer::from_file(&tok_path)?;

    let img =
        load_rgb(&args.image).with_context(|| format!("reading image {}", args.image.display()))?;
    let proc = ImageProcessor::eval(model.vision.cfg.image_size as u32);
    let px = proc.process_eval(&img, &device)?.unsqueeze(0)?;
    let img_emb = model.encode_images(&px)?;

    let prompt = ChatTemplate::vicuna0().single_turn(&args.question);
    let segs = tokenize_segments(&tok, &prompt, true)?;
    let images = vec![img_emb.get(0)?; segs.len() - 1];
    let embeds = model.embed_segments(&segs, &images)?;

    // The tokenizer's ids win over config.json (Vicuna v0 configs disagree).
    let cfg = GenerationConfig {
        eos_token_ids: vec![tok.eos_id()],
        stop_sequences: tok.stop_sequences(),
        stop_token_ids: tok.ids_containing_stop_text(),
        ..gen
    };
    let mut so_far: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let stream = args.num_beams <= 1;
    let mut out = std::io::stdout();
    let mut cb = |_row: usize, t: u32| {
        so_far.push(t);
        if let Ok(text) = postprocess_answer_ids(&tok, &so_far) {
            if text.starts_with(&printed) && text.len() > printed.len() {
                let _ = write!(out, "{}", &text[printed.len()..]);
                let _ = out.flush();
                printed = text;
            }
        }
    };
    let res = generate(
        &model.llama,
        &[embeds],
        &cfg,
        if stream { Some(&mut cb) } else { None },
    )?;
    let answer = postprocess_answer_ids(&tok, &res[0].tokens)?;
    if stream {
        if answer.starts_with(&printed) {
            println!("{}", &answer[printed.len()..]);
        } else {
            println!("\n{answer}");
        }
    } else {
        println!("{answer}");
    }
    Ok(())
}
