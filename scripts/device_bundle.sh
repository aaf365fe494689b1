#!/usr/bin/env bash
# Packs this machine's build of ditto for a GPU machine that has CUDA and PyTorch 2.11 (whose LibTorch
# ditto links against) but neither OpenMPI nor Boost, e.g. the GPU machines ditto's developers borrow:
#   DIR/bin/    stripped ditto, the benchmarks scripts/gpu_check.sh runs and the GPU tests
#   DIR/root/   the Debian OpenMPI 4.1 runtime (libraries, MCA plugins, mpirun, help texts, config)
#               and Boost.Program_options, laid out as under / (copied there without overwriting)
#   DIR/env.sh  sourced there: installs root/, points the loader at PyPI torch's and NVIDIA's libraries
# all packed into DIR/bundle.tar.xz (about 8 MB instead of 30: the repository, the bundle and diffusers'
# wheels travel together under the 64 MiB a device run carries); scripts/gpu_check.sh unpacks it.
# Usage: scripts/device_bundle.sh [DIR (default .dev)]; then, there: `tar -C DIR -xJf DIR/bundle.tar.xz;
# source DIR/env.sh` (gpu_check.sh does both).
set -euo pipefail
cd "$(dirname "$0")/.."
final="${1:-.dev}"
# Replace only an earlier bundle (or create the folder): never a folder that holds anything else.
if [ -e "$final" ] && [ -n "$(ls -A "$final")" ] && [ ! -f "$final/env.sh" ] && [ ! -f "$final/bundle.tar.xz" ]; then
  echo "device_bundle: '$final' exists and is not a bundle; name a new folder" >&2
  exit 1
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/root"
# What scripts/gpu_check.sh runs (the bundle and the repository travel together under 64 MiB; bench_scaling
# and bench_alltoall need several GPUs).
for b in ditto bench_forward bench_cache bench_decode tests/test_gpu tests/test_comm; do
  [ -x "build/$b" ] && strip -o "$dir/bin/$(basename "$b")" "build/$b"
done
pkgs=(libopenmpi3 openmpi-bin openmpi-common libhwloc15 libhwloc-plugins libevent-core-2.1-7 libevent-pthreads-2.1-7
      libevent-2.1-7 libpmix2 libfabric1 libucx0 libibverbs1 libnl-3-200 libnl-route-3-200 libpsm2-2
      libpsm-infinipath1 librdmacm1 libmunge2 libboost-program-options1.74.0 libsentencepiece0)
for p in "${pkgs[@]}"; do
  dpkg -L "$p" 2>/dev/null | while read -r f; do
    case "$f" in /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*|*sentencepiece_train*) continue ;; esac
    if [ -f "$f" ] || [ -L "$f" ]; then mkdir -p "$dir/root$(dirname "$f")" && cp -a "$f" "$dir/root$f"; fi
  done
done
# Alternatives links (mpirun -> orterun) that dpkg -L does not list.
for f in /usr/bin/mpirun /usr/bin/mpiexec /etc/alternatives/mpirun /etc/alternatives/mpiexec; do
  [ -e "$f" ] && mkdir -p "$dir/root$(dirname "$f")" && cp -a "$f" "$dir/root$f"
done
cat > "$dir/env.sh" <<'EOS'
# Sourced on the GPU machine from the repository root.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cp -an "$here/root/." / && ldconfig
py=$(command -v python3)
site=$($py -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
libs="$site/torch/lib"
for d in $(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u); do libs="$libs:$d"; done
for d in /usr/local/cuda/lib64 /usr/local/cuda/extras/CUPTI/lib64; do [ -d "$d" ] && libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$here/bin:$PATH"
export DITTO_DEMO_MODEL="$here/../models/ditto-demo"  # the repository's, which travels beside the bundle
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=/bin/false
export OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_btl_vader_single_copy_mechanism=none
# No binding: a singleton or small job is otherwise bound to one core and its CPU threads share it.
export OMPI_MCA_hwloc_base_binding_policy=none
EOS
rm -rf "$final" && mkdir -p "$final"
tar -C "$dir" -cJf "$final/bundle.tar.xz" .
du -sh "$final/bundle.tar.xz"
