#!/usr/bin/env python3
"""Checks that a LoRA adapter written by mde loads in PEFT and behaves like mde's merged model.

usage: check_peft_adapter.py VICUNA_DIR ADAPTER_DIR [MERGED_SAFETENSORS]

Loads the base LLaMA with transformers, applies the adapter with peft.PeftModel.from_pretrained,
checks every LoRA tensor equals the file, and (if given) compares the logits of PEFT's merged model
with a LLaMA whose weights are mde's merged safetensors. Needs torch, transformers, peft.
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

base_dir, adapter_dir = sys.argv[1], sys.argv[2]
merged = sys.argv[3] if len(sys.argv) > 3 else None
torch.manual_seed(0)
base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter_dir)
model.eval()
file = load_file(f"{adapter_dir}/adapter_model.safetensors")
sd = model.state_dict()
n = 0
for k, v in file.items():
    # PEFT inserts the adapter name into the key when loaded.
    kk = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
    assert kk in sd, f"{k} not in the PEFT model"
    assert torch.equal(sd[kk], v), f"{k} differs after loading"
    n += 1
print(f"PEFT loaded {n} LoRA tensors from {adapter_dir}: identical")
ids = torch.randint(3, base.config.vocab_size, (1, 24))
with torch.no_grad():
    lora_logits = model(ids).logits
    merged_model = model.merge_and_unload()
    peft_merged_logits = merged_model(ids).logits
print(f"PEFT LoRA vs PEFT merged: max abs {(lora_logits - peft_merged_logits).abs().max().item():.2e}")
if merged:
    ours = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    missing, unexpected = ours.load_state_dict(load_file(merged), strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        d = (ours(ids).logits - peft_merged_logits).abs().max().item()
    print(f"mde merged vs PEFT merged: max abs {d:.2e} (missing keys: {len(missing)})")
    assert d < 1e-4
print("OK")
