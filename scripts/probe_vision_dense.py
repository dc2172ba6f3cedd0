"""Dense (per-patch) probe of the demo's tiny ViT: can it learn the shape and colour of the object
under each 8-px patch when supervised directly? The PyTorch mirror of session 8 (docs/RESULTS.md).

usage: python3 scripts/probe_vision_dense.py WORLD_DIR STEPS N_TRAIN PATCH [THREADS]
  env G5=1   also size and quadrant targets (four groups, like the Rust stage's tower)
  env COS=1  cosine lr 1e-3 -> 1e-5 instead of a constant 1e-3
  env STD=s  init every matrix and the position table N(0, s) (the demo: 0.05)
Needs torch, numpy and pillow."""
import json, sys, time, numpy as np, torch, torch.nn as nn
from PIL import Image
torch.manual_seed(0); torch.set_num_threads(int(sys.argv[5]) if len(sys.argv)>5 else 1)
W=sys.argv[1]; steps=int(sys.argv[2]); ntrain=int(sys.argv[3]); P=int(sys.argv[4]); WID=64; G=64//P
import os; G5=os.environ.get('G5')=='1'; COS=os.environ.get('COS')=='1'; STD=float(os.environ.get('STD','0'))
def load(split,n):
    d=json.load(open(f"{W}/coco/annotations/instances_{split}2017.json"))
    shapes=sorted({a["attributes"]["shape"] for a in d["annotations"]}); colors=sorted({a["attributes"]["color"] for a in d["annotations"]})
    by={}
    for a in d["annotations"]: by.setdefault(a["image_id"],[]).append(a)
    imgs=d["images"][:n]
    X=np.zeros((len(imgs),3,64,64),np.float32); S=np.zeros((len(imgs),G*G),np.int64); C=np.zeros((len(imgs),G*G),np.int64); Z=np.zeros((len(imgs),G*G),np.int64); Q=np.zeros((len(imgs),G*G),np.int64)
    cs=(np.arange(G)+0.5)*P
    for i,im in enumerate(imgs):
        X[i]=np.asarray(Image.open(f"{W}/coco/{split}2017/{im['file_name']}").convert("RGB"),np.float32).transpose(2,0,1)/255.0
        for a in by.get(im["id"],[]):
            x,y,w,h=a["bbox"]
            for gy in range(G):
                for gx in range(G):
                    if x<=cs[gx]<=x+w and y<=cs[gy]<=y+h:
                        S[i,gy*G+gx]=1+shapes.index(a["attributes"]["shape"]); C[i,gy*G+gx]=1+colors.index(a["attributes"]["color"]); Z[i,gy*G+gx]=1+(a['attributes']['size']=='large'); Q[i,gy*G+gx]=1+2*((y+h/2)>=32)+((x+w/2)>=32)
    return torch.tensor((X-0.5)/0.25),torch.tensor(S),torch.tensor(C),torch.tensor(Z),torch.tensor(Q),shapes,colors
class ViT(nn.Module):
    def __init__(s,ns,nc):
        super().__init__(); s.patch=nn.Conv2d(3,WID,P,P); s.pos=nn.Parameter(torch.randn(1,G*G,WID)*0.05)
        l=nn.TransformerEncoderLayer(WID,4,4*WID,dropout=0.0,activation="gelu",batch_first=True,norm_first=True)
        s.enc=nn.TransformerEncoder(l,2); s.norm=nn.LayerNorm(WID); s.hs=nn.Linear(WID,ns+1); s.hc=nn.Linear(WID,nc+1); s.hz=nn.Linear(WID,3); s.hq=nn.Linear(WID,5)
    def forward(s,x):
        t=s.norm(s.enc(s.patch(x).flatten(2).transpose(1,2)+s.pos)); s.t=t; return s.hs(t),s.hc(t)
t0=time.time(); Xtr,Str,Ctr,Ztr,Qtr,shapes,colors=load("train",ntrain); Xva,Sva,Cva,_,_,_,_=load("val",2000)
occ=Sva>0; print("shapes",shapes,"occupied frac",float(occ.float().mean()), "majority shape among occupied", float(torch.bincount(Sva[occ]).max()/occ.sum()),flush=True)
m=ViT(len(shapes),len(colors))
if STD>0:
    for n,p in m.named_parameters():
        if p.dim()>1 or n=='pos': torch.nn.init.normal_(p,0,STD)
opt=torch.optim.AdamW(m.parameters(),1e-3,weight_decay=0.01); ce=nn.CrossEntropyLoss(); t0=time.time()
for step in range(1,steps+1):
    idx=torch.randint(0,len(Xtr),(64,)); ls,lc=m(Xtr[idx])
    loss=ce(ls.reshape(-1,ls.shape[-1]),Str[idx].reshape(-1))+ce(lc.reshape(-1,lc.shape[-1]),Ctr[idx].reshape(-1))
    if G5:
        t=m.t; lz=m.hz(t); lq=m.hq(t); loss=loss+ce(lz.reshape(-1,3),Ztr[idx].reshape(-1))+ce(lq.reshape(-1,5),Qtr[idx].reshape(-1))
    if COS:
        import math
        for g in opt.param_groups: g['lr']=1e-5+(1e-3-1e-5)*0.5*(1+math.cos(math.pi*step/steps))
    opt.zero_grad(); loss.backward(); opt.step()
    if step%(steps//5)==0:
        m.eval()
        with torch.no_grad(): ps,pc=m(Xva)
        m.train(); ps=ps.argmax(-1); pc=pc.argmax(-1)
        print(f"step {step} loss {loss.item():.3f} {time.time()-t0:.0f}s occ-acc {float((ps>0)==occ).mean() if False else float(((ps>0)==occ).float().mean()):.3f} shape|occ {float((ps[occ]==Sva[occ]).float().mean()):.3f} colour|occ {float((pc[occ]==Cva[occ]).float().mean()):.3f}",flush=True)
