//! The loop config: the demo config parses, its sizes agree, fingerprints ignore defaults that
//! were added later, and unknown keys are refused by name.

use std::path::Path;

#[test]
fn demo_config_parses() -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/shapes-demo.toml");
    let cfg = mde_loop::config::LoopConfig::load(&path)?;
    let world = cfg.world.clone().expect("the demo has a [world]");
    world.validate()?;
    let mde_loop::config::ModelSection::Tiny { cfg: model, .. } = &cfg.model else {
        anyhow::bail!("the demo's [model] is the tiny model");
    };
    assert_eq!(
        model.image_size as u32, world.image_size,
        "model and world image sizes differ"
    );
    // `[abs] chance_margin` at its default is not serialised, so the fingerprint of run folders
    // written before the key existed still matches; another value changes it.
    let abs = serde_json::to_value(&cfg.abs)?;
    assert!(abs.get("chance_margin").is_none(), "{abs}");
    let mut other = cfg.clone();
    other.abs.chance_margin = 0.1;
    assert_ne!(other.fingerprint(), cfg.fingerprint());
    // Unknown keys of [model] are rejected with their name.
    let text = std::fs::read_to_string(&path)?.replace("[model]\n", "[model]\nvit_widht = 3\n");
    let e = mde_loop::config::LoopConfig::parse(&text, Some(&path)).unwrap_err();
    assert!(e.to_string().contains("vit_widht"), "{e}");
    Ok(())
}
