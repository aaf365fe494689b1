# The horizontal direction of a red object in a demo latent.safetensors (pixels in [-1, 1]): the red
# mask centroid at frames 0, T/2 and T-1; "left"/"right" when it moves more than 3 px.
import sys, torch
from safetensors.torch import load_file
def cx(path):
    d=load_file(path); x=list(d.values())[0].float()[0]  # [3,T,H,W]
    # red: R high, G,B low; values in [-1,1]?
    r,g,b=x[0],x[1],x[2]
    m=((r>0.3)&(g<0)&(b<0)).float()
    T=x.shape[1]; cols=torch.arange(x.shape[3]).float()
    out=[]
    for t in [0,T//2,T-1]:
        s=m[t].sum()
        out.append(float((m[t].sum(0)*cols).sum()/s) if s>0 else float('nan'))
    return out
for p in sys.argv[1:]:
    c=cx(p); print(p.split('/')[-2], "x0 %.1f mid %.1f xT %.1f -> %s"%(c[0],c[1],c[2], "left" if c[2]<c[0]-3 else "right" if c[2]>c[0]+3 else "?"))
