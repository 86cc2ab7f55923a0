#!/bin/sh
# Builds conc for AArch64 with Debian's cross compiler and runs the
# coroutine smoke test (tests/cross/coro_smoke.c: the switch, the
# floating-point state, deep stacks, the hub) under qemu-user.  Takes
# seconds; needs gcc-aarch64-linux-gnu and qemu-user (deps.sh cross).
# Usage: cross-aarch64.sh [BUILD_DIR]   (default build-aarch64)
set -e
dir=${1:-build-aarch64}
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "cross-aarch64.sh: $tool is missing (sh scripts/deps.sh cross)" >&2
    exit 1
  fi
done
cmake -S . -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$(pwd)/cmake/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONC_WERROR=ON \
  -DCONC_BUILD_TESTS=OFF -DCONC_BUILD_EXAMPLES=OFF -DCONC_BUILD_BENCH=OFF >/dev/null
cmake --build "$dir" -j "$(nproc 2>/dev/null || echo 2)" --target conc_static
aarch64-linux-gnu-gcc -O2 -Wall -Wextra -Werror -static -Iinclude \
  tests/cross/coro_smoke.c "$dir/libconc.a" -lpthread -lm -o "$dir/coro_smoke"
qemu-aarch64 "$dir/coro_smoke"
