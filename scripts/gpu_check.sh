#!/usr/bin/env bash
# Everything the GPU must show, in one run on one GPU (its steps' limits add up to 490 s; with each step's 5 s
# kill grace and the unpacking, under 9 minutes), results as JSON
# under $OUT (default gpu_check_out/):
#   here (no GPU needed):  bash scripts/setup.sh && bash scripts/device_bundle.sh .dev
#                          bash scripts/gpu_check.sh --fetch-wheels      # diffusers for vs_diffusers, into .whl/
#   there (carry .dev and .whl):  bash scripts/gpu_check.sh
#   a dry run of the plumbing on the CPU, small sizes:  bash scripts/gpu_check.sh --cpu-smoke
#   torch.compile's row against ditto's forward, a run of its own (compiling takes minutes; limit 300 s):
#     bash scripts/gpu_check.sh --compile-row
# Steps, each under its own time limit (one failing does not stop the others): the device; the
# gpu-labelled tests; NCCL at one rank (test_comm); bench_forward on wan2.1-t2v-1.3b (480 x 832 x 81,
# CFG batch 2, bf16: per-step time, MFU against the measured matmul peak, host syncs, peak memory) and
# stdit3-xl; benchmarks/vs_diffusers.py --size gpu; bench_cache speed rows (compute and time, random
# weights) on wan2.1-t2v-1.3b and stdit3-xl; bench_decode: Wan-VAE 2.1 decode of 81 frames at 480 x 832
# (a 16 x 21 x 60 x 104 latent, random weights, bf16, one rank) and a 512-token umT5-XXL encoding.
# $OUT/summary.json: each step's exit code and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
only=
bundle=.dev
for a in "$@"; do
  case "$a" in
    --cpu-smoke) mode=cpu ;;
    --compile-row) only=vs_diffusers_compile ;;
    --fetch-wheels) mode=wheels ;;
    --bundle=*) bundle="${a#--bundle=}" ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$a' (--cpu-smoke, --fetch-wheels, --compile-row, --bundle=DIR)" >&2; exit 2 ;;
  esac
done

if [ "$mode" = wheels ]; then
  # The GPU image has torch 2.11 and transformers but not diffusers (see the device library's KINDS.md).
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.36.0 importlib_metadata zipp
  exit $?
fi

out="${OUT:-gpu_check_out}"
mkdir -p "$out"
steps="$out/steps.jsonl"
: > "$steps"

if [ "$mode" = gpu ]; then
  if [ ! -f "$bundle/env.sh" ] && [ -f "$bundle/bundle.tar.xz" ]; then tar -C "$bundle" -xJf "$bundle/bundle.tar.xz"; fi
  [ -f "$bundle/env.sh" ] || { echo "gpu_check: no bundle at $bundle (run scripts/device_bundle.sh $bundle here first)" >&2; exit 2; }
  # shellcheck disable=SC1090
  source "$bundle/env.sh"
  bin="$bundle/bin"
  dev=(--device cuda)
  wan=(--config wan2.1-t2v-1.3b --random-weights)
  stdit=(--config stdit3-xl --random-weights)
  vs_size=gpu
  decode=(--config wan2.1 --frames 81 --height 480 --width 832 --dtype bfloat16 --encode umt5-xxl)
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  limit() { echo "$1"; }
else
  # The same steps on the CPU at small sizes: the script's plumbing, not the figures.
  bin=build
  [ -x build/ditto ] || { echo "gpu_check: build first (bash scripts/setup.sh)" >&2; exit 2; }
  dev=(--device cpu --threads 2)
  wan=(--config wan-tiny --random-weights --latent 3x8x8)
  stdit=(--config stdit3-tiny --random-weights --latent 3x8x8)
  vs_size=cpu
  decode=(--config wan-tiny --frames 5 --height 32 --width 48 --dtype float32 --encode umt5-tiny)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  limit() { echo $(( $1 * 2 )); }
fi
test_gpu="$bin/test_gpu"; [ -x "$test_gpu" ] || test_gpu="$bin/tests/test_gpu"
test_comm="$bin/test_comm"; [ -x "$test_comm" ] || test_comm="$bin/tests/test_comm"

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output in $out/NAME.log.
step() {
  local name="$1" seconds="$2"
  shift 2
  local t0 ms rc
  t0=$(date +%s%N)
  timeout --kill-after=5 "$seconds" "$@" > "$out/$name.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '{"step": "%s", "exit_code": %d, "seconds": %d.%03d, "limit_s": %d}\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$seconds" >> "$steps"
  echo "gpu_check: $name exit $rc ($(tail -n 1 "$out/$name.log" | cut -c1-120))"
}

if [ -n "$only" ]; then
  # torch.compile's forward row against ditto's, a run of its own (the compilation alone may take minutes).
  step vs_diffusers_compile "$(limit 300)" env PYTHONUNBUFFERED=1 python3 benchmarks/vs_diffusers.py --build "$bin" \
    --size "$vs_size" --reps 2 --iters 3 --forward-only --json "$out/vs_diffusers_compile.json"
else
if [ "$mode" = gpu ]; then
  step device "$(limit 10)" nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
step gpu_tests "$(limit 40)" "$test_gpu" --gtest_color=no
step nccl_one_rank "$(limit 20)" mpirun --allow-run-as-root --oversubscribe -np 1 "$test_comm" --gtest_color=no
step bench_forward_wan "$(limit 65)" "$bin/bench_forward" "${wan[@]}" "${dev[@]}" --warmup 2 --iters 4 --json "$out/bench_forward_wan.json"
step bench_forward_stdit3 "$(limit 35)" "$bin/bench_forward" "${stdit[@]}" "${dev[@]}" --warmup 2 --iters 5 --json "$out/bench_forward_stdit3.json"
if python3 -c 'import diffusers' 2>/dev/null; then
  # Eager rows first (forward, guided step, VAE decode, umT5 encode); torch.compile's row last (below),
  # so a slow compilation cannot cost the others.
  step vs_diffusers "$(limit 200)" env PYTHONUNBUFFERED=1 python3 benchmarks/vs_diffusers.py --build "$bin" --size "$vs_size" \
    --reps 2 --iters 3 --no-compile --json "$out/vs_diffusers.json"
else
  printf '{"step": "vs_diffusers", "exit_code": -1, "seconds": 0, "skipped": "diffusers is not importable (bash scripts/gpu_check.sh --fetch-wheels here, carry .whl)"}\n' >> "$steps"
  echo "gpu_check: vs_diffusers skipped: diffusers is not importable"
fi
# The cache policies' speed at real size (random weights: speed and compute only; quality lives on
# the demo models). Few videos and steps: the table's compute fraction and time per video.
cache_size=(--videos 1 --steps 8)
wan_frames=() stdit_frames=()
if [ "$mode" = cpu ]; then
  cache_size=(--videos 1 --steps 4 --height 16 --width 16)
  wan_frames=(--frames 5) stdit_frames=(--frames 17)  # each family's smallest video of several frames
fi
step bench_cache_wan "$(limit 55)" "$bin/bench_cache" "${wan[@]:0:3}" "${dev[@]}" "${cache_size[@]}" "${wan_frames[@]}" \
  --only teacache,fbcache,magcache --json "$out/bench_cache_wan.json"
step bench_cache_stdit3 "$(limit 35)" "$bin/bench_cache" "${stdit[@]:0:3}" "${dev[@]}" "${cache_size[@]}" "${stdit_frames[@]}" \
  --only static,pab,adacache,teacache,fbcache --json "$out/bench_cache_stdit3.json"
# The stages around the transformer: the VAE's decode (untiled, one rank) and the text encoder.
step bench_decode "$(limit 30)" mpirun --allow-run-as-root --oversubscribe -np 1 "$bin/bench_decode" "${decode[@]}" \
  "${dev[@]:0:2}" --untiled --ranks '' --warmup 1 --repeats 2 --json "$out/bench_decode.json"

fi

python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl")) if l.strip()]
results = {}
for name in ("bench_forward_wan", "bench_forward_stdit3", "vs_diffusers", "bench_cache_wan", "bench_cache_stdit3",
             "bench_decode", "vs_diffusers_compile"):
    p = os.path.join(out, name + ".json")
    if os.path.exists(p):
        with open(p) as f:
            results[name] = json.load(f)
summary = {"steps": steps, "ok": all(s["exit_code"] == 0 for s in steps), "results": results}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print("gpu_check: %d steps, %d failed; %s" % (len(steps), sum(s["exit_code"] != 0 for s in steps), os.path.join(out, "summary.json")))
EOF
