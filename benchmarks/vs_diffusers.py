#!/usr/bin/env python3
"""ditto's Wan against diffusers' WanTransformer3DModel, side by side in one run: the same random
weights (made once by diffusers, saved as a diffusers model directory that ditto loads), the same
input shapes, the same threads. Rows: one transformer forward of a CFG batch (ditto's bench_forward
vs diffusers eager with SDPA, and torch.compile'd where it works) and one whole guided sampling step
(ditto: the batched forward, guidance and its UniPC update; diffusers: WanPipeline's way, a
conditional and an unconditional call, guidance and UniPCMultistepScheduler.step). Repetitions are
interleaved (ditto, diffusers, ditto, ...); min and median per row, the ratio of medians, the median of
the per-repetition ratios (paired: what to read on a machine whose speed drifts), and the
largest difference of the two forward outputs (ditto forward on the saved inputs). Two more rows for the
stages around the transformer: Wan-VAE 2.1 decode (ditto's bench_decode vs diffusers' AutoencoderKLWan,
the same random weights saved by diffusers, one latent frame at a time as both decode, untiled) and a
umT5 encoding (bench_decode --text-encoder vs transformers' UMT5EncoderModel, the same random weights;
--size gpu uses umT5-XXL's layer shape with 6 of its 24 layers and a 32,128-word vocabulary, so the
checkpoint stays small). One table, and the rows as JSON.

  PYTHONPATH=/opt/ditto/torch-2.11.0:PYREF LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
      benchmarks/vs_diffusers.py --build build --size cpu --json out.json
(PYREF: diffusers==0.36.0 and transformers installed by pip --target.) --size gpu is Wan 2.1 T2V-1.3B
at 480 x 832, 81 frames (21 x 60 x 104 latents, 32,760 tokens) in bf16 on cuda.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from make_wan_fixtures import randomize  # noqa: E402  every tensor random and of moderate size

SIZES = {
    # A small Wan for the 2-core CPU: 12 heads of 32 (dim 384), 4 layers, 720 tokens per sample.
    "cpu": dict(model=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=32, in_channels=16,
                           out_channels=16, text_dim=512, freq_dim=256, ffn_dim=1536, num_layers=4,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
                latent=(5, 24, 24), text_len=64, dtype="float32", device="cpu",
                vae=dict(base_dim=96, frames=5, height=64, width=64),  # Wan-VAE 2.1's widths, a small video
                umt5=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=4, num_heads=8, vocab_size=32128, tokens=128)),
    # Wan 2.1 T2V-1.3B at 480 x 832, 81 frames.
    "gpu": dict(model=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                           out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
                latent=(21, 60, 104), text_len=512, dtype="bfloat16", device="cuda",
                vae=dict(base_dim=96, frames=81, height=480, width=832),
                umt5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=6, num_heads=64, vocab_size=32128, tokens=512)),
}


def stats(ms):
    return {"min_ms": min(ms), "median_ms": statistics.median(ms), "ms": ms}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(f, n, device):
    """n calls of f, each waited for: milliseconds."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="ditto's build directory (ditto, bench_forward)")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--iters", type=int, default=3, help="timed forwards (and steps) per repetition and side")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both sides")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--no-stages", action="store_true", help="skip the VAE decode and umT5 encode rows")
    p.add_argument("--forward-only", action="store_true",
                   help="only the forward rows (eager and torch.compile): no sampling-step or stage rows")
    p.add_argument("--work", help="directory for the model and inputs (default: a temporary one)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    if a.forward_only:
        a.no_stages = True
    size = SIZES[a.size]
    dtype = getattr(torch, size["dtype"])
    device = size["device"]
    torch.set_num_threads(a.threads)
    work = a.work or tempfile.mkdtemp(prefix="vs_diffusers_")
    os.makedirs(work, exist_ok=True)

    # The model, saved once; both sides load these weights.
    torch.manual_seed(0)
    model = WanTransformer3DModel(**size["model"])
    randomize(model)
    model_dir = os.path.join(work, "model")
    model.save_pretrained(model_dir, safe_serialization=True)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    config["text_len"] = size["text_len"]  # ditto pads caption files to the text length
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    model = model.to(device=device, dtype=dtype).eval()

    # The inputs: a CFG batch (conditional, unconditional) at one timestep.
    g = torch.Generator().manual_seed(1)
    T, H, W = size["latent"]
    C = size["model"]["in_channels"]
    L, D = size["text_len"], size["model"]["text_dim"]
    x = torch.randn(2, C, T, H, W, generator=g)
    t = torch.tensor([500.0, 500.0])
    y = torch.randn(2, L, D, generator=g)
    inputs = os.path.join(work, "inputs.safetensors")
    save_file({"hidden_states": x, "timestep": t, "encoder_hidden_states": y}, inputs)
    x, t, y = x.to(device, dtype), t.to(device), y.to(device, dtype)

    # The two outputs on the same inputs.
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out_path = os.path.join(work, "ditto_out.safetensors")
    dev_args = ["--device", device, "--dtype", size["dtype"], "--threads", str(a.threads)]
    r = subprocess.run([os.path.join(a.build, "ditto"), "forward", "--model", model_dir, "--inputs", inputs, "--out",
                        out_path, *dev_args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ditto forward failed:\n{r.stderr}")
    ditto_out = load_file(out_path)["out"].float()
    with torch.no_grad():
        ref = model(hidden_states=x, timestep=t, encoder_hidden_states=y, return_dict=False)[0].float().cpu()
    max_diff = (ditto_out - ref).abs().max().item()
    rel_diff = max_diff / ref.abs().max().item()

    # diffusers' sampling step as WanPipeline takes it: two calls, guidance, the scheduler's update.
    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=5.0, solver_order=2, solver_type="bh2", lower_order_final=True,
                                        final_sigmas_type="zero")

    def diffusers_forward(m):
        with torch.no_grad():
            m(hidden_states=x, timestep=t, encoder_hidden_states=y, return_dict=False)

    def diffusers_steps(m, n):
        scheduler.set_timesteps(n + 1)
        latents = x[:1].float()
        times = []
        with torch.no_grad():
            for ts in scheduler.timesteps[:n]:
                t0 = time.perf_counter()
                tt = ts.expand(1).to(device)
                lat = latents.to(dtype)
                cond = m(hidden_states=lat, timestep=tt, encoder_hidden_states=y[:1], return_dict=False)[0]
                uncond = m(hidden_states=lat, timestep=tt, encoder_hidden_states=y[1:], return_dict=False)[0]
                pred = uncond + 5.0 * (cond - uncond)
                latents = scheduler.step(pred, ts, latents, return_dict=False)[0]
                sync(device)
                times.append(1e3 * (time.perf_counter() - t0))
        return times

    compiled = None
    compile_note = "skipped (--no-compile)"
    if not a.no_compile:
        try:
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            diffusers_forward(compiled)  # compiles
            sync(device)
            compile_note = f"compiled in {time.perf_counter() - t0:.0f} s"
        except Exception as e:  # torch.compile is optional: the row says why it is missing
            compiled = None
            compile_note = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"

    bench = os.path.join(a.build, "bench_forward")
    rows = {k: [] for k in ("ditto_forward", "ditto_step", "diffusers_forward", "diffusers_step", "compiled_forward")}
    diffusers_forward(model)  # warm-up
    for rep in range(a.reps):
        js = os.path.join(work, f"bench_{rep}.json")
        r = subprocess.run([bench, "--model", model_dir, "--latent", f"{T}x{H}x{W}", "--batch", "2", "--caption-tokens",
                            str(L), "--warmup", "2", "--iters", str(a.iters), "--no-extras", "--json", js, *dev_args],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_forward failed:\n{r.stderr}")
        with open(js) as f:
            b = json.load(f)
        rows["ditto_forward"].append(b["rows"][0]["ms"])
        rows["ditto_step"].append(b["rows"][1]["ms"])
        rows["diffusers_forward"].append(timed(lambda: diffusers_forward(model), a.iters, device))
        if not a.forward_only:
            rows["diffusers_step"].append(diffusers_steps(model, a.iters + 1)[1:])  # the first step as warm-up
        if compiled is not None:
            rows["compiled_forward"].append(timed(lambda: diffusers_forward(compiled), a.iters, device))

    if not a.no_stages:
        rows.update(stage_rows(a, size, work, env, dtype, device))

    table = []
    def row(what, ditto_reps, ref_reps, ref_name):
        """Each side's times per repetition (lists); the ratio of medians over all of them, and the
        median over repetitions of each repetition's ratio (paired: robust to the machine's drift)."""
        if not ref_reps:
            table.append({"what": what, "reference": ref_name, "note": compile_note})
            return
        d = stats([x for rep in ditto_reps for x in rep])
        f = stats([x for rep in ref_reps for x in rep])
        paired = statistics.median(statistics.median(x) / statistics.median(y) for x, y in zip(ditto_reps, ref_reps))
        d["ms_per_rep"], f["ms_per_rep"] = ditto_reps, ref_reps
        table.append({"what": what, "reference": ref_name, "ditto": d, "diffusers": f,
                      "ratio_ditto_over_diffusers": d["median_ms"] / f["median_ms"],
                      "ratio_paired_median": paired})
    row("forward (CFG batch 2)", rows["ditto_forward"], rows["diffusers_forward"], "diffusers eager (SDPA)")
    row("forward (CFG batch 2)", rows["ditto_forward"], rows["compiled_forward"], "diffusers torch.compile")
    if not a.forward_only:
        row("guided sampling step", rows["ditto_step"], rows["diffusers_step"],
            "diffusers eager (WanPipeline's two calls + UniPC)")
    if not a.no_stages:
        v, u = size["vae"], size["umt5"]
        row(f"Wan-VAE decode ({v['frames']} frames {v['height']}x{v['width']})", rows["ditto_decode"],
            rows["diffusers_decode"], "diffusers AutoencoderKLWan")
        row(f"umT5 encode ({u['num_layers']} layers of {u['d_model']}, {u['tokens']} tokens)", rows["ditto_encode"],
            rows["transformers_encode"], "transformers UMT5EncoderModel")

    tokens = T * (H // 2) * (W // 2)
    print(f"# ditto vs diffusers {__import__('diffusers').__version__}: Wan {a.size} size, latent {T}x{H}x{W} "
          f"({tokens} tokens/sample), text {L}, {size['dtype']} on {device}, {a.threads} threads, "
          f"{a.reps} x {a.iters} interleaved; torch.compile: {compile_note}")
    print(f"# forward outputs differ by at most {max_diff:.3g} ({rel_diff:.3g} of the largest output)")
    print("| what | reference | ditto min / median ms | reference min / median ms | ditto / reference (median) "
          "| paired (median of per-repetition ratios) |")
    print("|---|---|---|---|---|---|")
    for rw in table:
        if "ditto" not in rw:
            print(f"| {rw['what']} | {rw['reference']} | - | - | n/a: {rw['note']} | - |")
            continue
        print(f"| {rw['what']} | {rw['reference']} | {rw['ditto']['min_ms']:.1f} / {rw['ditto']['median_ms']:.1f} | "
              f"{rw['diffusers']['min_ms']:.1f} / {rw['diffusers']['median_ms']:.1f} | "
              f"{rw['ratio_ditto_over_diffusers']:.2f}x | {rw['ratio_paired_median']:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": a.size, "latent": [T, H, W], "tokens_per_sample": tokens, "text_len": L,
                       "dtype": size["dtype"], "device": device, "threads": a.threads, "reps": a.reps,
                       "iters": a.iters, "torch": torch.__version__,
                       "diffusers": __import__("diffusers").__version__, "compile": compile_note,
                       "max_abs_diff": max_diff, "max_rel_diff": rel_diff, "rows": table}, f, indent=2)


def stage_rows(a, size, work, env, dtype, device):
    """Wan-VAE decode and umT5 encode, ditto (bench_decode) and the reference interleaved."""
    from transformers import UMT5Config, UMT5EncoderModel
    v, u = size["vae"], size["umt5"]
    torch.manual_seed(2)
    vae = AutoencoderKLWan(base_dim=v["base_dim"], z_dim=16)
    vae_dir = os.path.join(work, "vae")
    vae.save_pretrained(vae_dir, safe_serialization=True)
    vae = vae.to(device=device, dtype=dtype).eval()
    T = (v["frames"] - 1) // 4 + 1
    z = torch.randn(1, 16, T, v["height"] // 8, v["width"] // 8, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    cfg = UMT5Config(vocab_size=u["vocab_size"], d_model=u["d_model"], d_kv=u["d_kv"], d_ff=u["d_ff"],
                     num_layers=u["num_layers"], num_heads=u["num_heads"], relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                     is_encoder_decoder=False, tie_word_embeddings=False)
    enc = UMT5EncoderModel(cfg)
    enc_dir = os.path.join(work, "umt5")
    enc.save_pretrained(enc_dir, safe_serialization=True)
    enc = enc.to(device=device, dtype=dtype).eval()
    ids = torch.randint(u["vocab_size"], (1, u["tokens"]), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    bench = os.path.join(a.build, "bench_decode")
    dev = ["--device", device, "--dtype", size["dtype"]]

    def ditto(args, stage):
        js = os.path.join(work, "bench_decode.json")
        r = subprocess.run([bench, *args, *dev, "--warmup", "1", "--repeats", str(a.iters), "--json", js], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_decode failed:\n{r.stderr}")
        with open(js) as f:
            rr = [x for x in json.load(f)["rows"] if x["stage"].startswith(stage)]
        return [1e3 * s for s in rr[0]["seconds"]]

    def ref_decode():
        with torch.no_grad():
            vae.decode(z)

    def ref_encode():
        with torch.no_grad():
            enc(input_ids=ids, attention_mask=mask)

    out = {k: [] for k in ("ditto_decode", "diffusers_decode", "ditto_encode", "transformers_encode")}
    ref_decode()
    ref_encode()
    for _ in range(a.reps):
        out["ditto_decode"].append(ditto(["--vae", vae_dir, "--frames", str(v["frames"]), "--height", str(v["height"]),
                                          "--width", str(v["width"]), "--untiled", "--ranks", ""], "decode"))
        out["diffusers_decode"].append(timed(ref_decode, a.iters, device))
        out["ditto_encode"].append(ditto(["--ranks", "", "--text-encoder", enc_dir, "--tokens", str(u["tokens"])], "encode"))
        out["transformers_encode"].append(timed(ref_encode, a.iters, device))
    return out


if __name__ == "__main__":
    main()
