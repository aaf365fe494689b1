#!/usr/bin/env python3
"""Per-step time of two ditto builds side by side, in one run: `ditto sample` with each binary in
turn (A B A B ...) on the same settings, the steady per-step time read from each run's metrics.json
(mean of the steps after the first), and per case the median of each and the median of the pairwise
ratios B / A. Prints one table and writes the same rows as JSON.

  benchmarks/compare_step_time.py --a OLD/ditto --b build/ditto --runs 5 --json out.json
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CASES = {
    # The shipped demo model (found by each binary itself) at its own geometry.
    "demo": ["--prompt", "a red circle moving right slow", "--steps", "12"],
    # A random stdit3-small: 51 frames at 128 x 128 (15 x 16 x 16 latent, 960 tokens), CFG batched.
    "stdit3-small": ["--config", "stdit3-small", "--random-weights", "--random-caption", "16", "--frames", "51",
                     "--height", "128", "--width", "128", "--steps", "6"],
}


def step_time(binary, case, threads, out):
    args = [binary, "sample", *CASES[case], "--threads", str(threads), "--quiet", "--no-mp4", "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    shutil.rmtree(out)
    return m["timing"]["steady_step_s"], m["timing"].get("host_reads_per_step")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="the first ditto binary (e.g. the build before a change)")
    p.add_argument("--b", required=True, help="the second ditto binary")
    p.add_argument("--runs", type=int, default=5, help="runs of each binary per case")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--json", help="write the rows as JSON here")
    o = p.parse_args()
    rows = []
    tmp = tempfile.mkdtemp(prefix="ditto_compare_")
    print(f"# per-step time, `ditto sample` on the CPU, {o.threads} threads, {o.runs} runs each, A = {o.a}, B = {o.b}")
    print("| case | A s/step (median) | B s/step (median) | B / A (median of pairs) | B host reads/step |")
    print("|---|---|---|---|---|")
    for case in o.cases.split(","):
        a, b, reads = [], [], None
        step_time(o.a, case, o.threads, os.path.join(tmp, "warm"))  # warm caches once
        for i in range(o.runs):
            a.append(step_time(o.a, case, o.threads, os.path.join(tmp, f"a{i}"))[0])
            t, reads = step_time(o.b, case, o.threads, os.path.join(tmp, f"b{i}"))
            b.append(t)
        ratios = [y / x for x, y in zip(a, b)]
        row = {"case": case, "a_s": a, "b_s": b, "a_median_s": statistics.median(a), "b_median_s": statistics.median(b),
               "ratio_median": statistics.median(ratios), "b_host_reads_per_step": reads}
        rows.append(row)
        print(f"| {case} | {row['a_median_s']:.4f} | {row['b_median_s']:.4f} | {row['ratio_median']:.3f} | {reads} |")
    shutil.rmtree(tmp, ignore_errors=True)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"a": o.a, "b": o.b, "threads": o.threads, "runs": o.runs, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
