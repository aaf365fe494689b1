#!/usr/bin/env bash
# Installs the build into a fresh prefix, builds tests/consumer against it with find_package(ditto),
# runs it, and runs the installed ditto, which must find its demo model beside itself and carry no
# source path. Usage: install_consumer.sh BUILD_DIR SOURCE_DIR PREFIX_PATH
set -euo pipefail
build="$1" src="$2" prefix_path="$3"
work="$build/install_test"
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
      -DCMAKE_PREFIX_PATH="$work/prefix;$prefix_path" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
out=$("$work/build/consumer")
echo "consumer: $out"
case "$out" in
  "ditto 0.2."*" family stdit3 units 12 out [1, 8, 3, 4, 4] finite 1") ;;
  *) echo "unexpected consumer output"; exit 1 ;;
esac
# The installed command finds the shipped demo model next to itself, not in the source tree.
env -u DITTO_DEMO_MODEL "$work/prefix/bin/ditto" sample --prompt "a red circle moving right slow" --steps 2 --quiet \
    --no-mp4 --out "$work/out"
grep -q '"source": "'"$work/prefix/bin/../share/ditto/models/ditto-demo"'"' "$work/out/metrics.json" ||
  grep -q '"source": "'"$work/prefix/share/ditto/models/ditto-demo"'"' "$work/out/metrics.json" ||
  { echo "the installed ditto did not use its own demo model:"; grep '"source"' "$work/out/metrics.json"; exit 1; }
# No source path in the program itself (debug information aside).
strip -o "$work/ditto.stripped" "$work/prefix/bin/ditto"
if grep -q -a -F "$src" "$work/ditto.stripped"; then echo "the installed ditto names the source tree $src"; exit 1; fi
echo "install test: ok"
