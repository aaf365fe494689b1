# The shipped text encoder recomputed in float64 (models/ditto-demo/text_encoder.safetensors): distances
# between words at the input and output, and the left/right caption embeddings amplified around their
# midpoint, written to /tmp/amp for `ditto sample --caption-embedding`. Run from the repository root with
# PYTHONPATH pointing at the LibTorch wheel (scripts/setup.sh installs it under /opt/ditto/torch-2.11.0).
import torch, json
from safetensors import safe_open
f = safe_open("models/ditto-demo/text_encoder.safetensors","pt")
md = f.metadata(); w = {k: f.get_tensor(k).double() for k in f.keys()}
vocab = md["vocab"].split(); D=int(md["dim"]); H=int(md["heads"]); L=int(md["max_tokens"]); NL=int(md["layers"])
print(vocab, D, H, L, NL)
def enc(p):
    ids=[vocab.index(x)+1 for x in p.split()]; ids += [0]*(L-len(ids))
    ids=torch.tensor([ids]); mask=ids.ne(0)
    x=w["token_embedding"][ids]+w["position_embedding"][None]
    for l in range(NL):
        P=f"layers.{l}."
        h=torch.nn.functional.layer_norm(x,(D,),w[P+"norm1.weight"],w[P+"norm1.bias"],1e-5)
        qkv=torch.nn.functional.linear(h,w[P+"qkv.weight"],w[P+"qkv.bias"]).view(1,L,3,H,D//H).permute(2,0,3,1,4)
        o=torch.nn.functional.scaled_dot_product_attention(qkv[0],qkv[1],qkv[2],attn_mask=mask[:,None,None,:]).transpose(1,2).reshape(1,L,D)
        x=x+torch.nn.functional.linear(o,w[P+"proj.weight"],w[P+"proj.bias"])
        h=torch.nn.functional.layer_norm(x,(D,),w[P+"norm2.weight"],w[P+"norm2.bias"],1e-5)
        x=x+torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(h,w[P+"fc1.weight"],w[P+"fc1.bias"]),approximate="tanh"),w[P+"fc2.weight"],w[P+"fc2.bias"])
    return torch.nn.functional.layer_norm(x,(D,),w["final_norm.weight"],w["final_norm.bias"],1e-5)[0]
E=w["token_embedding"]
def tok(a): return E[vocab.index(a)+1]
import itertools
words=["left","right","up","down","still","slow","fast","red","blue","green","circle","square"]
print("token embedding distances")
for a,b in [("left","right"),("up","down"),("left","up"),("right","down"),("left","down"),("slow","fast"),("red","blue"),("circle","square")]:
    print(a,b, "dist %.3f norms %.3f %.3f cos %.3f"%((tok(a)-tok(b)).norm(), tok(a).norm(), tok(b).norm(), torch.cosine_similarity(tok(a),tok(b),0)))
base="a red circle moving {} slow on a black background"
outs={d:enc(base.format(d)) for d in ["left","right","up","down"]}
for a,b in [("left","right"),("up","down"),("left","up")]:
    d=(outs[a]-outs[b]).norm(dim=-1)
    print(a,b,"per-token output diff", [round(float(v),3) for v in d[:10]])
print("output token norms", [round(float(v),2) for v in outs["left"].norm(dim=-1)[:10]])

from safetensors.torch import save_file
import os
os.makedirs("/tmp/amp", exist_ok=True)
yl=enc("a red circle moving left fast on a black background"); yr=enc("a red circle moving right fast on a black background")
ids=[vocab.index(x)+1 for x in "a red circle moving left fast on a black background".split()]
mask=torch.zeros(L,dtype=torch.long); mask[:len(ids)]=1
m=(yl+yr)/2
for k in [1,3,6]:
    for name,yy in [("left",yl),("right",yr)]:
        save_file({"y":(m+k*(yy-m)).float().contiguous(),"mask":mask}, f"/tmp/amp/{name}-k{k}.safetensors")
