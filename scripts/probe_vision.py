"""Can the demo's tiny vision tower learn the synthetic world's shapes and positions when it is
supervised directly (no LLM, no question to bind)?

A ViT of the demo's size (width 64, 2 layers, 4 heads, MLP 4x width) with multi-label heads on its
mean-pooled output: shapes present, colours present, quadrants holding an object centre. Trained
with AdamW (lr 1e-3, batch 64) on the world's COCO-format training images; accuracy on 2,000
validation images, per label and all labels of a group right. docs/RESULTS.md (session 7) has
the numbers.

usage: python3 scripts/probe_vision.py WORLD_DIR STEPS N_TRAIN [PATCH [WIDTH]]
  WORLD_DIR  a world of `mde loop` (runs/.cache/world-*)
  PATCH      patch size (default 8, the demo's); 0 = a small conv stem down to 8x8 tokens instead
Needs torch, numpy and pillow. 2 threads."""
import json, sys, time, numpy as np, torch, torch.nn as nn
from PIL import Image
torch.manual_seed(0); torch.set_num_threads(2)
W = sys.argv[1]; steps = int(sys.argv[2]); ntrain = int(sys.argv[3]); P_ARG = int(sys.argv[4]) if len(sys.argv) > 4 else 8; WID = int(sys.argv[5]) if len(sys.argv) > 5 else 64
def load(split, n):
    d = json.load(open(f"{W}/coco/annotations/instances_{split}2017.json"))
    shapes = sorted({a["attributes"]["shape"] for a in d["annotations"]})
    colors = sorted({a["attributes"]["color"] for a in d["annotations"]})
    by = {}
    for a in d["annotations"]:
        by.setdefault(a["image_id"], []).append(a)
    imgs = d["images"][:n]
    X = np.zeros((len(imgs), 3, 64, 64), np.float32)
    Y = np.zeros((len(imgs), len(shapes) + len(colors) + 4), np.float32)
    for i, im in enumerate(imgs):
        X[i] = np.asarray(Image.open(f"{W}/coco/{split}2017/{im['file_name']}").convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
        for a in by.get(im["id"], []):
            Y[i, shapes.index(a["attributes"]["shape"])] = 1
            Y[i, len(shapes) + colors.index(a["attributes"]["color"])] = 1
            x, y, w, h = a["bbox"]; cx, cy = x + w / 2, y + h / 2
            Y[i, len(shapes) + len(colors) + (2 if cy >= 32 else 0) + (1 if cx >= 32 else 0)] = 1
    return torch.tensor((X - 0.5) / 0.25), torch.tensor(Y), shapes, colors
class ViT(nn.Module):
    def __init__(s, nout):
        super().__init__()
        s.patch = nn.Conv2d(3, WID, P_ARG, P_ARG) if P_ARG > 0 else nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, WID, 3, 2, 1), nn.GELU(), nn.Conv2d(WID, WID, 2, 2)); s.pos = nn.Parameter(torch.randn(1, (64 // (P_ARG if P_ARG > 0 else 8)) ** 2, WID) * 0.05)
        layer = nn.TransformerEncoderLayer(WID, 4, 4 * WID, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        s.enc = nn.TransformerEncoder(layer, 2); s.norm = nn.LayerNorm(WID); s.head = nn.Linear(WID, nout)
    def forward(s, x):
        t = s.patch(x).flatten(2).transpose(1, 2) + s.pos
        return s.head(s.norm(s.enc(t)).mean(1))
t0 = time.time()
Xtr, Ytr, shapes, colors = load("train", ntrain)
Xva, Yva, _, _ = load("val", 2000)
base = torch.maximum(Yva.mean(0), 1 - Yva.mean(0)); print("majority per-label:", [round(float(x), 3) for x in base])
print(f"loaded {len(Xtr)} / {len(Xva)} images in {time.time()-t0:.0f} s; shapes {shapes}, colours {colors}", flush=True)
m = ViT(Ytr.shape[1]); opt = torch.optim.AdamW(m.parameters(), 1e-3, weight_decay=0.01)
lossf = nn.BCEWithLogitsLoss(); t0 = time.time()
def evaluate():
    m.eval()
    with torch.no_grad():
        p = (m(Xva) > 0).float()
    m.train()
    ns, nc = len(shapes), len(colors)
    groups = {"shapes": slice(0, ns), "colours": slice(ns, ns + nc), "quadrants": slice(ns + nc, ns + nc + 4)}
    return {k: (float((p[:, g] == Yva[:, g]).float().mean()), float((p[:, g] == Yva[:, g]).all(1).float().mean())) for k, g in groups.items()}
for step in range(1, steps + 1):
    idx = torch.randint(0, len(Xtr), (64,))
    loss = lossf(m(Xtr[idx]), Ytr[idx]); opt.zero_grad(); loss.backward(); opt.step()
    if step % (steps // 5) == 0:
        r = evaluate()
        print(f"step {step} loss {loss.item():.3f} {time.time()-t0:.0f} s | " + " | ".join(f"{k}: per-label {a:.3f}, all-correct {e:.3f}" for k, (a, e) in r.items()), flush=True)
