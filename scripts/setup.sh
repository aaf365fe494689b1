#!/usr/bin/env bash
# Sets up a fresh Debian machine for ditto and builds it into build/ (idempotent; root, no prompts):
#   - Debian packages: compiler, CMake/Ninja, ccache, OpenMPI, Boost.Program_options, GoogleTest, JSON
#   - LibTorch 2.11 from PyPI's torch==2.11.0 wheel (CUDA 13.0 build), unpacked with pip --target into
#     $DITTO_LIBTORCH_DIR (default /opt/ditto/torch-2.11.0): only its C++ libraries and headers are
#     used, plus the three NVIDIA wheels its CUDA libraries link against that /usr/local/cuda lacks.
#   - configures with CMake (DITTO_CUDA=ON when /usr/local/cuda has nvcc) and builds with all cores.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

pkgs=(g++ cmake ninja-build ccache python3 python3-pip libopenmpi-dev openmpi-bin libsentencepiece-dev ffmpeg
      libboost-program-options-dev libgtest-dev nlohmann-json3-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# A python3 with pip elsewhere on PATH (pyenv, conda) is just as good as Debian's.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}"); missing=("${missing[@]/python3}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

LIBTORCH_DIR="${DITTO_LIBTORCH_DIR:-/opt/ditto/torch-2.11.0}"
if [ ! -f "$LIBTORCH_DIR/.ditto-complete" ]; then
  echo "setup: fetching LibTorch 2.11.0 (PyPI torch wheel) into $LIBTORCH_DIR"
  $SUDO mkdir -p "$LIBTORCH_DIR"
  # --target keeps the wheel out of every Python environment; --python-version/--platform make the
  # choice of wheel independent of the local interpreter (only the C++ parts are used).
  $SUDO python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
      --target "$LIBTORCH_DIR" --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --only-binary=:all: \
      torch==2.11.0 nvidia-cusparselt-cu13==0.8.0 nvidia-nvshmem-cu13==3.4.5 "nvidia-cufile==1.15.1.6.*"
  $SUDO touch "$LIBTORCH_DIR/.ditto-complete"
fi

cuda=OFF
if [ -x /usr/local/cuda/bin/nvcc ]; then cuda=ON; fi
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDITTO_CUDA=$cuda \
        -DCMAKE_PREFIX_PATH="$LIBTORCH_DIR/torch/share/cmake" >/dev/null
fi
cmake --build build -j "$(nproc)"
echo "setup: built build/ditto"
