#!/usr/bin/env python3
"""PyTorch reference for the candle CPU benchmark of the "small" MiniGPT-4 configuration.

Runs the same workloads as `crates/minigpt4/examples/bench_small.rs` and
`crates/mde-train/examples/bench_train_step.rs` (see `shared/bench/small-config.json`):

* vision_encode: one 224x224 image through EVA-style ViT + ln_vision + Q-Former + llama_proj
* prefill: 32 image embeddings + 64 text tokens (96 positions), logits of the last position
* decode: 64 greedy new tokens with a KV cache (ms per token)
* train_step: PEFT LoRA r=8 alpha=16 on q_proj,k_proj, everything else frozen, batch 4 of
  1 BOS + 32 image + 63 text tokens, forward + backward + AdamW (ms per step)

Random seeded weights (std 1/sqrt(fan_in) for matrices, 1 for norm weights, as the candle
benches), float32, batch 1, `torch.set_num_threads(THREADS)` (default 2). The vision tower and
Q-Former are transformers' `Blip2VisionModel` (EVA ViT layout: pre-LN blocks, fused qkv with
q/v bias only, exact GELU, post_layernorm = MiniGPT-4's ln_vision) and `Blip2QFormerModel`;
the LLM is transformers' `LlamaForCausalLM`, measured with attention implementation "sdpa"
(the default) and "eager".

Usage: python3 scripts/bench/pytorch_small.py [--config PATH] [--reps N] [--threads T]
       [--attn sdpa,eager] [--skip-train]
Prints one JSON object on stdout (progress goes to stderr).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def init_random(module: nn.Module, seed: int):
    """Seeded random weights mirroring the candle benches' scheme."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() == 1:
                p.normal_(1.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5, generator=g)


def timed(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - s) * 1e3)
    return ts


def summary(ts):
    return {
        "median_ms": round(statistics.median(ts), 3),
        "min_ms": round(min(ts), 3),
        "mean_ms": round(statistics.fmean(ts), 3),
        "n": len(ts),
    }


def build_vision(cfg):
    from transformers import Blip2QFormerConfig, Blip2VisionConfig
    from transformers.models.blip_2.modeling_blip_2 import (
        Blip2QFormerModel,
        Blip2VisionModel,
    )

    v = cfg["vision"]
    vcfg = Blip2VisionConfig(
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"],
        image_size=cfg["image_size"],
        patch_size=v["patch_size"],
        hidden_act="gelu",  # exact (erf) GELU, as EVA ViT-g
        layer_norm_eps=v["layer_norm_eps"],
        qkv_bias=True,
    )
    vision = Blip2VisionModel(vcfg)
    # MiniGPT-4's ln_vision has its own eps (HF puts it in post_layernorm).
    vision.post_layernorm.eps = cfg["ln_vision_eps"]
    q = cfg["qformer"]
    qcfg = Blip2QFormerConfig(
        hidden_size=q["hidden_size"],
        num_hidden_layers=q["num_hidden_layers"],
        num_attention_heads=q["num_attention_heads"],
        intermediate_size=q["intermediate_size"],
        cross_attention_frequency=q["cross_attention_frequency"],
        encoder_hidden_size=q["encoder_hidden_size"],
        layer_norm_eps=q["layer_norm_eps"],
        hidden_act="gelu",
    )
    qformer = Blip2QFormerModel(qcfg)
    query_tokens = nn.Parameter(torch.zeros(1, cfg["num_query_tokens"], q["hidden_size"]))
    llama_proj = nn.Linear(q["hidden_size"], cfg["llama"]["hidden_size"])
    return vision, qformer, query_tokens, llama_proj


def build_llama(cfg, attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    l = cfg["llama"]
    lcfg = LlamaConfig(
        hidden_size=l["hidden_size"],
        num_hidden_layers=l["num_hidden_layers"],
        num_attention_heads=l["num_attention_heads"],
        num_key_value_heads=l["num_key_value_heads"],
        intermediate_size=l["intermediate_size"],
        vocab_size=l["vocab_size"],
        rms_norm_eps=l["rms_norm_eps"],
        rope_theta=l["rope_theta"],
        max_position_embeddings=l["max_position_embeddings"],
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    m = LlamaForCausalLM(lcfg)
    init_random(m, 4321)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument(
        "--config",
        default=os.path.join(here, "..", "..", "..", "shared", "bench", "small-config.json"),
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--train-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa,eager")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.config) as f:
        cfg = json.load(f)
    import transformers

    out = {
        "config": os.path.abspath(args.config),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": os.getloadavg(),
        "results": {},
    }

    # ---- vision encode: ViT + ln_vision + Q-Former + llama_proj, one image ----
    vision, qformer, query_tokens, llama_proj = build_vision(cfg)
    for i, m in enumerate((vision, qformer, llama_proj)):
        init_random(m, 100 + i)
        m.eval()
    with torch.no_grad():
        query_tokens.normal_(0.0, 0.02)
    s = cfg["image_size"]
    px = torch.full((1, 3, s, s), 0.1)

    def encode(pixels):
        img = vision(pixel_values=pixels).last_hidden_state  # post_layernorm = ln_vision
        att = torch.ones(img.shape[:-1], dtype=torch.long)
        q = query_tokens.expand(img.shape[0], -1, -1)
        qf = qformer(query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=att)
        return qf.last_hidden_state

    with torch.inference_mode():
        ts = timed(lambda: llama_proj(encode(px)).sum().item(), args.reps, 2)
        out["results"]["vision_encode"] = summary(ts)
        qf1 = encode(px)
        img_embeds = llama_proj(qf1)[0]  # [32, H]
    log("vision_encode", out["results"]["vision_encode"])

    nq = img_embeds.shape[0]
    l_cfg = cfg["llama"]
    for attn in [a for a in args.attn.split(",") if a]:
        llama = build_llama(cfg, attn)
        emb_layer = llama.get_input_embeddings()
        # Prompt as in bench_small.rs: BOS, image rows, text tokens 101.. (96 positions).
        text = torch.arange(100, 100 + 96 - nq)[1:]
        with torch.inference_mode():
            prompt = torch.cat(
                [emb_layer(torch.tensor([1])), img_embeds, emb_layer(text)], 0
            ).unsqueeze(0)
        tlen = prompt.shape[1]

        def prefill():
            return llama(inputs_embeds=prompt, use_cache=False, logits_to_keep=1).logits

        with torch.inference_mode():
            ts = timed(lambda: prefill().sum().item(), args.reps, 2)
        out["results"][f"prefill_{tlen}_{attn}"] = summary(ts)
        log(f"prefill_{tlen}_{attn}", out["results"][f"prefill_{tlen}_{attn}"])

        # Decode: prefill with a cache, then 64 greedy tokens one at a time.
        def decode_run(n_new=64):
            from transformers import DynamicCache

            cache = DynamicCache()
            o = llama(inputs_embeds=prompt, past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
            tok = o.logits[:, -1].argmax(-1, keepdim=True)
            step_ms = []
            for _ in range(n_new):
                st = time.perf_counter()
                o = llama(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = o.logits[:, -1].argmax(-1, keepdim=True)
                tok.item()
                step_ms.append((time.perf_counter() - st) * 1e3)
            return step_ms

        with torch.inference_mode():
            decode_run(8)  # warm-up
            runs = [decode_run() for _ in range(max(1, min(args.reps, 3)))]
        per_run_mean = [statistics.fmean(r) for r in runs]
        out["results"][f"decode_{attn}"] = {
            "ms_per_token_median_of_run_means": round(statistics.median(per_run_mean), 3),
            "ms_per_token_median_step": round(statistics.median(sum(runs, [])), 3),
            "tokens": len(runs[0]),
            "runs": len(runs),
        }
        log(f"decode_{attn}", out["results"][f"decode_{attn}"])

        if args.skip_train:
            continue
        # ---- LoRA train step ----
        from peft import LoraConfig, get_peft_model

        pm = get_peft_model(
            llama,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                       target_modules=["q_proj", "k_proj"], bias="none"),
        )
        pm.train()
        for p in llama_proj.parameters():
            p.requires_grad_(False)
        trainable = [p for p in pm.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
        b, seq = 4, 1 + nq + 63
        ids = torch.zeros(b, seq, dtype=torch.long)
        labels = torch.full((b, seq), -100, dtype=torch.long)
        for r in range(b):
            for p in range(seq):
                if p == 0:
                    ids[r, p] = 1
                elif p > nq:
                    ids[r, p] = (200 + r * 7 + p) % l_cfg["vocab_size"]
                    labels[r, p] = ids[r, p]
        with torch.inference_mode():
            qf = qf1.repeat(b, 1, 1)
        qf = qf.clone()  # normal tensor (not an inference tensor) for autograd
        is_img = torch.zeros(b, seq, dtype=torch.bool)
        is_img[:, 1:1 + nq] = True
        emb = pm.get_input_embeddings()

        def train_step():
            img = llama_proj(qf)  # frozen projection, as candle's model.project
            tok = emb(ids.clamp(min=0))
            x = tok.clone()
            x[is_img] = img.reshape(-1, img.shape[-1])
            loss = pm(inputs_embeds=x, labels=labels, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        ts = timed(train_step, args.train_reps, 1)
        out["results"][f"train_step_{attn}"] = {**summary(ts), "batch": b, "seq": seq,
                                                "lora_params": n_trainable}
        log(f"train_step_{attn}", out["results"][f"train_step_{attn}"])

        # Breakdown (forward+loss, forward+backward) for the comparison with candle's.
        def fwd():
            img = llama_proj(qf)
            x = emb(ids.clamp(min=0)).clone()
            x[is_img] = img.reshape(-1, img.shape[-1])
            return pm(inputs_embeds=x, labels=labels, use_cache=False).loss

        tf = timed(lambda: fwd().item(), args.train_reps, 0)

        def fb():
            fwd().backward()
            opt.zero_grad(set_to_none=True)

        tb = timed(fb, args.train_reps, 0)
        out["results"][f"train_breakdown_{attn}"] = {
            "forward_loss_median_ms": round(statistics.median(tf), 3),
            "forward_backward_median_ms": round(statistics.median(tb), 3),
        }
        del pm, llama, opt

    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
