//! The evaluation model config is validated before any file is looked at: `max_batch = 0` is
//! an error, not a silent 1, and the generation tables are checked with their keys named.

use mde_models::eval_adapter::{EvalModelConfig, MiniGpt4Eval};
use serde_json::json;

#[test]
fn eval_model_config_is_validated() {
    // The eval model config: max_batch 0 is an error, not a silent 1; generation tables too.
    let base = json!({"blip2": "b", "vicuna": "v"});
    let ok: EvalModelConfig = serde_json::from_value(base.clone()).unwrap();
    ok.validate().unwrap();
    for (patch, want) in [
        (json!({"max_batch": 0}), "max_batch = 0: must be at least 1"),
        (
            json!({"mmbench": {"num_beams": 0}}),
            "mmbench.num_beams = 0",
        ),
        (json!({"chat": {"top_p": 1.5}}), "chat.top_p = 1.5"),
    ] {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let c: EvalModelConfig = serde_json::from_value(v).unwrap();
        let e = c.validate().unwrap_err();
        let named = e.in_file("models/tiny.toml").to_string();
        assert!(
            named.contains("models/tiny.toml") && named.contains(want),
            "{named}"
        );
        // Loading validates first: the (nonexistent) files are never looked at.
        let e = MiniGpt4Eval::load(&c).err().unwrap().to_string();
        assert!(e.contains(want), "{e}");
    }
}
