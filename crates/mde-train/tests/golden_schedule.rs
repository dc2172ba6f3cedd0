//! The warmup-cosine schedule reproduces `training.*.lrs` of expected.json (rel 1e-9).
mod common;
use anyhow::{Context, Result};
use mde_train::schedule::LinearWarmupCosine;

#[test]
fn lrs_match_fixture() -> Result<()> {
    let exp = common::expected()?;
    let t = &exp["training"];
    let s = &t["schedule"];
    let num = |k: &str| {
        s[k].as_f64()
            .with_context(|| format!("training.schedule.{k}"))
    };
    let sched = LinearWarmupCosine {
        max_epoch: num("max_epoch")? as usize,
        iters_per_epoch: num("iters_per_epoch")? as usize,
        init_lr: num("init_lr")?,
        min_lr: num("min_lr")?,
        warmup_lr: num("warmup_lr")?,
        warmup_steps: num("warmup_steps")? as usize,
    };
    let mut checked = 0;
    for mode in ["fc", "lora"] {
        let Some(lrs) = t[mode].get("lrs") else {
            continue;
        };
        let want = common::f64s(lrs, "lrs")?;
        for (i, w) in want.iter().enumerate() {
            let got = sched.lr_at(i);
            assert!(
                ((got - w) / w).abs() <= 1e-9,
                "{mode} step {i}: lr {got} vs {w}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "expected.json has no training lrs");
    Ok(())
}
