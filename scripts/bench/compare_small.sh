#!/usr/bin/env bash
# Candle vs PyTorch on the "small" MiniGPT-4 CPU workloads (shared/bench/small-config.json).
#
# Usage: scripts/bench/compare_small.sh [CONFIG.json] [REPS]
#   THREADS=2 (default) is passed to both sides (RAYON_NUM_THREADS / torch.set_num_threads).
#   SKIP_TRAIN=1 skips the train-step workloads on both sides.
# Needs python3 with torch, transformers, peft (PyPI's torch is the CUDA build; it runs on CPU but
# only imports with its nvidia-* dependencies installed, so use a plain `pip install torch
# transformers peft`; see docs/perf/pytorch.md).
# Prints both sides' raw output, then a table of candle / pytorch time ratios (>1: candle slower).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
CONFIG=${1:-$ROOT/../shared/bench/small-config.json}
REPS=${2:-5}
THREADS=${THREADS:-2}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -q -p minigpt4 --example bench_small
HAVE_TRAIN=0
if [ -f crates/mde-train/examples/bench_train_step.rs ] && [ -z "${SKIP_TRAIN:-}" ]; then
  if cargo build --release -q -p mde-train --example bench_train_step; then HAVE_TRAIN=1; fi
fi

echo "== candle: bench_small"
RAYON_NUM_THREADS=$THREADS cargo run --release -q -p minigpt4 --example bench_small -- \
  "$CONFIG" "$REPS" | tee "$OUT/candle.txt"
if [ "$HAVE_TRAIN" = 1 ]; then
  echo "== candle: bench_train_step"
  RAYON_NUM_THREADS=$THREADS cargo run --release -q -p mde-train --example bench_train_step -- \
    "$CONFIG" "$REPS" | tee "$OUT/candle_train.txt"
else
  : >"$OUT/candle_train.txt"
fi

echo "== pytorch: scripts/bench/pytorch_small.py"
PYARGS=(--config "$CONFIG" --reps "$REPS" --threads "$THREADS")
[ -n "${SKIP_TRAIN:-}" ] && PYARGS+=(--skip-train)
python3 scripts/bench/pytorch_small.py "${PYARGS[@]}" | tee "$OUT/torch.json"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT/candle.txt" "$OUT/candle_train.txt" "$OUT/torch.json" <<'EOF'
import json, re, sys
candle_txt = open(sys.argv[1]).read()
train_txt = open(sys.argv[2]).read()
torch_res = json.load(open(sys.argv[3]))["results"]

def grab(pat, text):
    m = re.search(pat, text)
    return float(m.group(1)) if m else None

c = {
    "vision_encode": grab(r"vision_encode_ms ([\d.]+)", candle_txt),
    "prefill": grab(r"prefill_\d+_ms ([\d.]+)", candle_txt),
    "decode (ms/token)": grab(r"decode_ms_per_token ([\d.]+)", candle_txt),
    "train_step (bench_small)": grab(r"lora_train_step_ms ([\d.]+)", candle_txt),
    "train_step (mde-train)": grab(r"train_step: median ([\d.]+)", train_txt),
}

def tr(prefix, attn, field="median_ms"):
    for k, v in torch_res.items():
        if k.startswith(prefix) and k.endswith("_" + attn):
            return v.get(field)
    return None

rows = []
for attn in ("sdpa", "eager"):
    p = {
        "vision_encode": torch_res.get("vision_encode", {}).get("median_ms"),
        "prefill": tr("prefill_", attn),
        "decode (ms/token)": tr("decode", attn, "ms_per_token_median_of_run_means"),
        "train_step (bench_small)": tr("train_step", attn),
        "train_step (mde-train)": tr("train_step", attn),
    }
    for k, cv in c.items():
        pv = p[k]
        if cv is None or pv is None:
            continue
        rows.append((k, attn, cv, pv, cv / pv))
print()
print(f"{'workload':28} {'torch attn':10} {'candle ms':>11} {'torch ms':>10} {'candle/torch':>13}")
for k, a, cv, pv, r in rows:
    print(f"{k:28} {a:10} {cv:11.2f} {pv:10.2f} {r:13.2f}")
EOF
