//! AdamW against a scalar f64 re-derivation of torch's update, runner weight-decay groups,
//! optimizer/checkpoint save-resume equivalence, and dataset mixing.
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use mde_train::checkpoint::{
    latest_checkpoint, load_checkpoint, save_checkpoint, LossLog, RngState, TrainState,
};
use mde_train::mix::{DatasetMixer, MixEntry};
use mde_train::optim::{runner_applies_weight_decay, AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Loss = sum(c * p^2 / 2 + d * p) so grad = c * p + d (per element).
fn grads_for(vars: &[(String, Var)], coef: &[f32]) -> Result<candle_core::backprop::GradStore> {
    let mut total: Option<Tensor> = None;
    for ((_, v), c) in vars.iter().zip(coef) {
        let t = v.as_tensor();
        let l = ((t.sqr()? * (*c as f64 / 2.0))? + t.affine(0.3, 0.0)?)?.sum_all()?;
        total = Some(match total {
            Some(x) => (x + l)?,
            None => l,
        });
    }
    Ok(total.unwrap().backward()?)
}

fn make_vars(seed: u64) -> Result<Vec<(String, Var)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    Ok(vec![
        (
            "proj.weight".to_string(),
            Var::from_tensor(&Tensor::from_vec(v(6), (2, 3), &Device::Cpu)?)?,
        ),
        (
            "proj.bias".to_string(),
            Var::from_tensor(&Tensor::from_vec(v(2), 2, &Device::Cpu)?)?,
        ),
    ])
}

#[test]
fn adamw_matches_scalar_reference() -> Result<()> {
    let vars = make_vars(1)?;
    let coef = [1.5f32, 0.7];
    let cfg = AdamWConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut opt = AdamW::new_runner_groups(vars.clone(), cfg)?;
    // reference state in f64
    let mut refp: Vec<Vec<f64>> = vars
        .iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect()
        })
        .collect();
    let wds = [0.05, 0.0];
    let mut m: Vec<Vec<f64>> = refp.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut s: Vec<Vec<f64>> = m.clone();
    let lrs = [1e-2, 3e-2, 2e-2, 5e-3, 1e-3];
    for (t, lr) in lrs.iter().enumerate() {
        opt.set_learning_rate(*lr);
        let g = grads_for(&vars, &coef)?;
        opt.step(&g)?;
        let t = (t + 1) as f64;
        for k in 0..refp.len() {
            for i in 0..refp[k].len() {
                let p = refp[k][i];
                let grad = coef[k] as f64 * p + 0.3;
                let p = p * (1.0 - lr * wds[k]);
                m[k][i] = 0.9 * m[k][i] + 0.1 * grad;
                s[k][i] = 0.999 * s[k][i] + 0.001 * grad * grad;
                let denom = s[k][i].sqrt() / (1.0 - 0.999f64.powf(t)).sqrt() + 1e-8;
                refp[k][i] = p - lr / (1.0 - 0.9f64.powf(t)) * m[k][i] / denom;
            }
        }
    }
    for (k, (_, v)) in vars.iter().enumerate() {
        let got = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for (g, r) in got.iter().zip(&refp[k]) {
            assert!((*g as f64 - r).abs() < 1e-6, "{g} vs {r}");
        }
    }
    assert_eq!(opt.step_of("proj.weight"), Some(5));
    Ok(())
}

#[test]
fn runner_weight_decay_rule() {
    assert!(runner_applies_weight_decay("llama_proj.weight", 2));
    assert!(!runner_applies_weight_decay("llama_proj.bias", 1));
    assert!(!runner_applies_weight_decay("x.weight", 1));
    assert!(!runner_applies_weight_decay("ln_vision.weight", 2));
    assert!(!runner_applies_weight_decay("bn.weight", 2));
    assert!(runner_applies_weight_decay(
        "layers.0.self_attn.q_proj.lora_A.default.weight",
        2
    ));
}

#[test]
fn checkpoint_resume_equals_continuous_run() -> Result<()> {
    let coef = [1.1f32, 0.4];
    let cfg = AdamWConfig {
        lr: 2e-2,
        ..Default::default()
    };
    // continuous 5 steps
    let va = make_vars(9)?;
    let mut oa = AdamW::new_runner_groups(va.clone(), cfg)?;
    for _ in 0..5 {
        let g = grads_for(&va, &coef)?;
        oa.step(&g)?;
    }
    // 3 steps, checkpoint, fresh objects, resume, 2 steps
    let dir = tempfile::tempdir()?;
    let vb = make_vars(9)?;
    let mut ob = AdamW::new_runner_groups(vb.clone(), cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..3 {
        let g = grads_for(&vb, &coef)?;
        ob.step(&g)?;
    }
    let _: u64 = rng.random();
    let state = TrainState {
        step: 3,
        epoch: 0,
        rng: RngState::capture(&rng),
        extra: serde_json::json!({"mode": "test"}),
    };
    save_checkpoint(dir.path(), &vb, &ob, &state)?;
    let vc = make_vars(123)?; // different init: must be overwritten by the checkpoint
    let mut oc = AdamW::new_runner_groups(vc.clone(), cfg)?;
    let ck = latest_checkpoint(dir.path())?.expect("a checkpoint");
    let st = load_checkpoint(&ck, &vc, &mut oc, &Device::Cpu)?;
    assert_eq!(st.step, 3);
    let mut rng2 = st.rng.restore()?;
    assert_eq!(rng.random::<u64>(), rng2.random::<u64>());
    for _ in 0..2 {
        let g = grads_for(&vc, &coef)?;
        oc.step(&g)?;
    }
    for ((_, a), (_, c)) in va.iter().zip(&vc) {
        let d = (a.as_tensor() - c.as_tensor())?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
    }
    Ok(())
}

/// A pid that runs no process (Linux pids stop at 2^22).
const DEAD_PID: u32 = 4_000_000_000;

#[test]
fn killed_checkpoint_writers_leave_nothing_behind() -> Result<()> {
    if !std::path::Path::new("/proc/self").exists() {
        eprintln!("no /proc: writers cannot be told dead, nothing is removed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let run = dir.path();
    let vars = make_vars(2)?;
    let opt = AdamW::new_runner_groups(vars.clone(), AdamWConfig::default())?;
    let state = |step| TrainState {
        step,
        epoch: 0,
        rng: RngState::capture(&ChaCha8Rng::seed_from_u64(1)),
        extra: serde_json::Value::Null,
    };
    save_checkpoint(run, &vars, &opt, &state(2))?;
    // The half-written folders of killed writers (current and older naming), a temp of a
    // running writer (pid 1 always runs) and things that are no checkpoint temps.
    let stale = run.join(mde_core::io::temp_name("checkpoint-000004", DEAD_PID));
    let legacy = run.join(format!(".checkpoint-000006.tmp-{}", DEAD_PID - 1));
    let stale_latest = run.join(mde_core::io::temp_name("latest.json", DEAD_PID));
    let live = run.join(mde_core::io::temp_name("checkpoint-000004", 1));
    let other = run.join(mde_core::io::temp_name("metrics.json", DEAD_PID));
    let not_temp = run.join(".checkpoint-000004.keep");
    for d in [&stale, &legacy, &live] {
        std::fs::create_dir_all(d)?;
        std::fs::write(d.join("trainable.safetensors"), b"half")?;
    }
    for f in [&stale_latest, &other, &not_temp] {
        std::fs::write(f, b"x")?;
    }
    // Opening the run folder cleans up.
    let ck = latest_checkpoint(run)?.expect("a checkpoint");
    assert!(ck.ends_with("checkpoint-000002"));
    for p in [&stale, &legacy, &stale_latest] {
        assert!(!p.exists(), "{} was kept", p.display());
    }
    for p in [&live, &other, &not_temp] {
        assert!(p.exists(), "{} was removed", p.display());
    }
    // So does writing one; the writer's own temp never stays behind.
    std::fs::create_dir_all(&stale)?;
    save_checkpoint(run, &vars, &opt, &state(4))?;
    assert!(!stale.exists() && live.exists() && other.exists());
    let mut names: Vec<String> = std::fs::read_dir(run)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let live_name = mde_core::io::temp_name("checkpoint-000004", 1);
    let other_name = mde_core::io::temp_name("metrics.json", DEAD_PID);
    let mut want = vec![
        ".checkpoint-000004.keep",
        live_name.as_str(),
        other_name.as_str(),
        "checkpoint-000002",
        "checkpoint-000004",
        "latest.json",
    ];
    want.sort();
    assert_eq!(names, want);
    Ok(())
}

#[test]
fn loss_log_survives_checkpoints_and_old_ones_load() -> Result<()> {
    let mut log = LossLog::default();
    for l in [6.25f32, 6.1, 6.08] {
        log.record(l);
    }
    assert_eq!(log.first_loss, Some(6.25));
    assert_eq!(log.last_loss, Some(6.08));
    // Through state.json and back, bit for bit.
    let dir = tempfile::tempdir()?;
    let vars = make_vars(3)?;
    let opt = AdamW::new_runner_groups(vars.clone(), AdamWConfig::default())?;
    let st = TrainState {
        step: 3,
        epoch: 0,
        rng: RngState::capture(&ChaCha8Rng::seed_from_u64(1)),
        extra: serde_json::to_value(log)?,
    };
    save_checkpoint(dir.path(), &vars, &opt, &st)?;
    let ck = latest_checkpoint(dir.path())?.expect("a checkpoint");
    let mut o2 = AdamW::new_runner_groups(vars.clone(), AdamWConfig::default())?;
    let back = load_checkpoint(&ck, &vars, &mut o2, &Device::Cpu)?;
    let got = LossLog::from_extra(&back.extra)?;
    assert_eq!(
        got.first_loss.map(f32::to_bits),
        log.first_loss.map(f32::to_bits)
    );
    assert_eq!(
        got.last_loss.map(f32::to_bits),
        log.last_loss.map(f32::to_bits)
    );
    // Checkpoints of older versions: the trainer's had only `last_loss`, the vision
    // pretraining's only `first_loss`, tests' none; other keys are ignored.
    let old = LossLog::from_extra(&serde_json::json!({"mixer": {"a": 1}, "last_loss": 2.5}))?;
    assert_eq!(
        old,
        LossLog {
            first_loss: None,
            last_loss: Some(2.5)
        }
    );
    let old = LossLog::from_extra(&serde_json::json!({"first_loss": 7.0}))?;
    assert_eq!(
        old,
        LossLog {
            first_loss: Some(7.0),
            last_loss: None
        }
    );
    assert_eq!(
        LossLog::from_extra(&serde_json::Value::Null)?,
        LossLog::default()
    );
    assert_eq!(
        LossLog::from_extra(&serde_json::json!({"mode": "test"}))?,
        LossLog::default()
    );
    Ok(())
}

#[test]
fn mixer_is_seeded_homogeneous_and_proportional() -> Result<()> {
    let entries = vec![
        MixEntry {
            name: "a".into(),
            size: 3600,
            ratio: None,
        },
        MixEntry {
            name: "b".into(),
            size: 400,
            ratio: None,
        },
        MixEntry {
            name: "empty".into(),
            size: 0,
            ratio: None,
        },
    ];
    let mut m1 = DatasetMixer::new(entries.clone())?;
    let mut m2 = DatasetMixer::new(entries.clone())?;
    let p = m1.probabilities();
    assert!((p[0] - 0.75).abs() < 1e-12 && (p[1] - 0.25).abs() < 1e-12 && p[2] == 0.0);
    let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
    let mut counts = [0usize; 3];
    for _ in 0..4000 {
        let b1 = m1.next_batch(4, &mut r1);
        let b2 = m2.next_batch(4, &mut r2);
        assert_eq!(b1, b2);
        assert_eq!(b1.indices.len(), 4);
        assert!(b1.indices.iter().all(|&i| i < entries[b1.dataset].size));
        counts[b1.dataset] += 1;
    }
    assert_eq!(counts[2], 0);
    let frac = counts[0] as f64 / 4000.0;
    assert!((frac - 0.75).abs() < 0.03, "{frac}");
    assert!(DatasetMixer::new(vec![MixEntry {
        name: "z".into(),
        size: 0,
        ratio: None
    }])
    .is_err());
    Ok(())
}
