//! The vision-encoder pretraining stage: it trains the tower and the Q-Former (and nothing
//! else), in two row shards; a killed run resumes to the same weights bit for bit, and a
//! finished one is reused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;
use mde_tiny::tiny::{build_base_model, load_trainable, CorpusSource, TinyModelConfig};
use mde_tiny::vision_pretrain::{pretrain_vision, VisionPretrainSection};
use mde_world::{World, WorldConfig};

fn values(vm: &VarMap) -> HashMap<String, Vec<u32>> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            let bits = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect();
            (n.clone(), bits)
        })
        .collect()
}

fn fresh(world: &World, dir: &Path) -> anyhow::Result<(minigpt4::MiniGpt4, VarMap)> {
    let cfg = TinyModelConfig {
        llm_layers: 1,
        vocab_size: 400,
        ..Default::default()
    };
    let base = build_base_model(&cfg, CorpusSource::WorldDir(world.dir()), dir, 3)?;
    Ok(load_trainable(&base, &Device::Cpu)?)
}

#[test]
fn trains_the_encoder_only_resumes_bit_exact_and_is_reused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let world = World::generate(&WorldConfig::tiny(5), tmp.path().join("world"))?;
    let cfg = VisionPretrainSection {
        steps: 5,
        batch_size: 4,
        warmup_steps: 1,
        images: 40,
        val_images: 8,
        checkpoint_every: 2,
        qformer: true,
        shards: 2,
        ..Default::default()
    };
    let (m, vm) = fresh(&world, &tmp.path().join("init"))?;
    let init = values(&vm);
    let dir = tmp.path().join("a");
    let info = pretrain_vision(&m, &vm, &world, &cfg, 0, &dir, false)?;
    assert_eq!(info.steps, 5);
    assert!(info.final_loss.unwrap() < info.first_loss.unwrap());
    assert!(info.patches.rows > 0 && (0.0..=1.0).contains(&info.patches.groups["shape"]));
    let slots = info.slots.as_ref().expect("slot accuracies");
    assert_eq!(slots.groups.len(), 8);
    assert!(info.slot_count.is_some());
    let trained = values(&vm);
    for (n, v) in &trained {
        let encoder =
            n.starts_with("vision_model.") || n.starts_with("qformer.") || n == "query_tokens";
        if encoder {
            assert_ne!(&init[n], v, "{n} did not train");
        } else {
            assert_eq!(&init[n], v, "{n} changed outside the tower");
        }
    }

    // Killed after the checkpoint of step 4: the result files are gone, the checkpoint is
    // there. A fresh process resumes from it and ends with the same weights.
    std::fs::remove_file(dir.join("done.json"))?;
    std::fs::remove_file(dir.join("vision.safetensors"))?;
    let (m2, vm2) = fresh(&world, &tmp.path().join("init"))?;
    let again = pretrain_vision(&m2, &vm2, &world, &cfg, 0, &dir, false)?;
    assert_eq!(again.steps, 5);
    assert_eq!(values(&vm2), trained, "resumed weights differ");

    // Finished: reused without training, loading the same weights.
    let (m3, vm3) = fresh(&world, &tmp.path().join("init"))?;
    let reused = pretrain_vision(&m3, &vm3, &world, &cfg, 0, &dir, false)?;
    assert_eq!(reused.patches, again.patches);
    assert_eq!(values(&vm3), trained);

    // Fewer query slots than objects: a clear error naming both settings.
    let small = TinyModelConfig {
        llm_layers: 1,
        vocab_size: 400,
        num_query_tokens: 2,
        ..Default::default()
    };
    let base = build_base_model(
        &small,
        CorpusSource::WorldDir(world.dir()),
        &tmp.path().join("small"),
        3,
    )?;
    let (m4, vm4) = load_trainable(&base, &Device::Cpu)?;
    let e = pretrain_vision(&m4, &vm4, &world, &cfg, 0, &tmp.path().join("b"), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_query_tokens") && e.contains("max_objects"),
        "{e}"
    );
    Ok(())
}

#[test]
fn the_stage_picks_the_base_mode_and_keys_the_cache() -> anyhow::Result<()> {
    use mde_tiny::base::BaseSection;
    use mde_tiny::base::{base_key, base_train_config};
    use mde_train::trainer::TrainMode;
    let mut base = BaseSection::default();
    assert_eq!(base_train_config(&base, 0).mode, TrainMode::Full);
    base.vision.steps = 10;
    assert_eq!(base_train_config(&base, 0).mode, TrainMode::FrozenVit);
    base.vision.qformer = true;
    assert_eq!(base_train_config(&base, 0).mode, TrainMode::LlmFc);
    base.vision.freeze = false;
    assert_eq!(base_train_config(&base, 0).mode, TrainMode::Full);

    // Off, the stage's settings do not touch the base key (old caches stay valid); on, they do.
    let tmp = tempfile::tempdir()?;
    let world = World::generate(&WorldConfig::tiny(5), tmp.path().join("world"))?;
    let model = TinyModelConfig::default();
    let off = BaseSection::default();
    let mut off_other = off.clone();
    off_other.vision.lr = 0.5;
    assert_eq!(
        base_key(&world, &model, 0, &off),
        base_key(&world, &model, 0, &off_other)
    );
    let mut on = off.clone();
    on.vision.steps = 10;
    let mut on_other = on.clone();
    on_other.vision.shape_weight = 2.0;
    assert_ne!(
        base_key(&world, &model, 0, &off),
        base_key(&world, &model, 0, &on)
    );
    assert_ne!(
        base_key(&world, &model, 0, &on),
        base_key(&world, &model, 0, &on_other)
    );
    Ok(())
}
