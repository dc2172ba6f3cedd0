#!/usr/bin/env python3
"""PyTorch + PEFT reference for the `train_step` workload of shared/bench/small-config.json.

LoRA r=8 alpha=16 (dropout 0) on q_proj,k_proj of a randomly initialised LLaMA (HF
transformers), everything else frozen (including the projector); batch 4 of sequences
1 BOS + 32 image rows + 63 text tokens (image rows = frozen llama_proj(random Q-Former output));
forward + HF shifted cross-entropy on the text tokens + backward + torch.optim.AdamW.
Prints median / mean / min ms per step on CPU, float32. Counterpart of
`cargo run --release -p mde-train --example bench_train_step`.

    pip install torch transformers peft   # CPU wheels
    python scripts/bench/pytorch_train_step.py [CONFIG.json] [STEPS] [THREADS]
"""
import json
import os
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../shared/bench/small-config.json")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    cfg = json.load(open(path))
    ll = cfg["llama"]
    torch.manual_seed(1234)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=ll["hidden_size"],
            num_hidden_layers=ll["num_hidden_layers"],
            num_attention_heads=ll["num_attention_heads"],
            num_key_value_heads=ll["num_key_value_heads"],
            intermediate_size=ll["intermediate_size"],
            vocab_size=ll["vocab_size"],
            rms_norm_eps=ll["rms_norm_eps"],
            rope_theta=ll["rope_theta"],
            max_position_embeddings=ll["max_position_embeddings"],
            attn_implementation="eager",
        )
    ).float()
    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj"], bias="none"),
    )
    model.train()
    proj = torch.nn.Linear(cfg["qformer"]["hidden_size"], ll["hidden_size"]).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"config {path}; threads {torch.get_num_threads()}; LoRA params {sum(p.numel() for p in params)}")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    b, n_img, n_txt = 4, cfg["num_query_tokens"], 63
    g = torch.Generator().manual_seed(0)
    txt = torch.randint(3, ll["vocab_size"], (b, n_txt), generator=g)
    bos = torch.ones((b, 1), dtype=torch.long)
    qf = torch.randn((b, n_img, cfg["qformer"]["hidden_size"]), generator=g)
    labels = torch.cat([torch.full((b, 1 + n_img), -100, dtype=torch.long), txt], dim=1)
    embed = model.get_input_embeddings()

    def step():
        embeds = torch.cat([embed(bos), proj(qf), embed(txt)], dim=1)
        out = model(inputs_embeds=embeds, attention_mask=torch.ones(labels.shape, dtype=torch.long), labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    step()  # warm-up
    ms = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    print(
        f"train_step: median {statistics.median(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms, "
        f"min {min(ms):.1f} ms over {steps} steps"
    )


if __name__ == "__main__":
    main()
