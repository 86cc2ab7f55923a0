#!/bin/sh
# Builds and runs the Criterion suite through ctest: plain, ASan+UBSan, TSan,
# each with -Werror, the tests and the examples they run asked for explicitly
# (a missing Criterion or libcurl stops the configure with its reason).
# Usage: test.sh [plain|asan|tsan ...]   (default: all three)
set -e
jobs=$(nproc 2>/dev/null || echo 2)
flavours=${*:-plain asan tsan}
common="-DCONC_WERROR=ON -DCONC_BUILD_TESTS=ON -DCONC_BUILD_EXAMPLES=ON"
status=0
failed=""
for f in $flavours; do
  case "$f" in
    plain) dir=build;      flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONC_BUILD_BENCH=ON" ;;
    asan)  dir=build-asan; flags="-DCMAKE_BUILD_TYPE=Debug -DCONC_ASAN=ON -DCONC_BUILD_BENCH=OFF" ;;
    tsan)  dir=build-tsan; flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONC_TSAN=ON -DCONC_BUILD_BENCH=OFF" ;;
    *) echo "test.sh: unknown flavour '$f'" >&2; exit 2 ;;
  esac
  echo "=== conc tests: $f build ($dir) ==="
  cmake -S . -B "$dir" $common $flags >/dev/null
  cmake --build "$dir" -j "$jobs"
  # Any sanitizer report stops the process with a failure exit, so it fails its test.
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
  # Criterion's own runner leaks a timer record (tests/support/lsan.supp).
  export LSAN_OPTIONS="suppressions=$(pwd)/tests/support/lsan.supp:print_suppressions=0"
  export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1"
  # Each Criterion binary takes CONC_TEST_JOBS of ctest's slots (tests/CMakeLists.txt).
  run="ctest --test-dir $dir --output-on-failure -j $jobs"
  # TSan's shadow layout can clash with a high mmap randomisation; run without ASLR.
  if [ "$f" = tsan ] && command -v setarch >/dev/null 2>&1; then
    run="setarch $(uname -m) -R $run"
  fi
  if ! $run; then
    status=1
    failed="$failed $f"
  fi
done
# ctest's own summary is the last thing printed when everything passed.
if [ $status -ne 0 ]; then
  echo "conc tests FAILED in:$failed build(s)"
fi
exit $status
