//! Generates a world and prints its counts and the time taken.
//!
//! `cargo run -p mde-world --example gen_world -- <dir> [config.json]`
//! (without a config: the default world, seed 0).
use anyhow::{Context, Result};
use mde_world::{World, WorldConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--bench") {
        return bench();
    }
    let dir = args
        .get(1)
        .context("usage: gen_world <dir> [config.json]")?;
    let cfg: WorldConfig = match args.get(2) {
        Some(p) => mde_core::io::read_json(p)?,
        None => WorldConfig::default(),
    };
    let t = std::time::Instant::now();
    let world = World::generate(&cfg, dir)?;
    let m = world.manifest();
    println!("{}", serde_json::to_string_pretty(&m.counts)?);
    println!("content_hash {}", m.content_hash);
    println!("generated/loaded in {:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Times the stages of image production on 2,000 scenes.
fn bench() -> Result<()> {
    use mde_world::render::{encode_jpeg, render};
    use mde_world::scene::{sample_scene, SceneRequest};
    let cfg = WorldConfig::default();
    let mut rng = mde_world::world::item_rng(0, 1, 0);
    let t = std::time::Instant::now();
    let scenes: Vec<_> = (0..2000)
        .map(|i| sample_scene(&cfg, &mut rng, i, "train", SceneRequest::default()))
        .collect();
    let t_scene = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let imgs: Vec<_> = scenes.iter().map(render).collect();
    let t_render = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for img in &imgs {
        bytes += encode_jpeg(img, cfg.jpeg_quality)?.len();
    }
    let t_jpeg = t.elapsed().as_secs_f64();
    println!(
        "2000 scenes: sample {:.1} ms, render {:.1} ms, jpeg {:.1} ms ({} KiB)",
        t_scene * 1e3,
        t_render * 1e3,
        t_jpeg * 1e3,
        bytes / 1024
    );
    Ok(())
}
