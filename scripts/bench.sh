#!/bin/sh
# Runs every benchmark binary in a directory, passing extra arguments through.
# Usage: sh scripts/bench.sh [DIR] [ARGS...]    (DIR defaults to build/bench)
#   sh scripts/bench.sh build/bench              readable tables
#   sh scripts/bench.sh build/bench --tsv        METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT lines
#   sh scripts/bench.sh build/bench --quick      smoke test: few iterations
# Exit status: 0 when every benchmark succeeded, else 1 (all of them still run).
dir=build/bench
if [ $# -gt 0 ]; then
  case "$1" in
    -*) ;;                       # first argument is an option: keep the default dir
    *) dir=$1; shift ;;
  esac
fi
if [ ! -d "$dir" ]; then
  echo "bench.sh: no directory '$dir' (build first: make build)" >&2
  exit 2
fi
tsv=0
for a in "$@"; do
  [ "$a" = --tsv ] && tsv=1
done
status=0
found=0
failed=""
for b in "$dir"/bench_*; do
  if [ ! -f "$b" ] || [ ! -x "$b" ]; then continue; fi
  found=1
  name=$(basename "$b")
  # Tables get a heading; TSV output stays pure (headings go to stderr).
  if [ "$tsv" = 1 ]; then
    echo "=== $name ===" >&2
  else
    echo "=== $name ==="
  fi
  if ! "$b" "$@"; then
    status=1
    failed="$failed $name"
  fi
  [ "$tsv" = 1 ] || echo
done
if [ "$found" = 0 ]; then
  echo "bench.sh: no bench_* binaries in '$dir'" >&2
  exit 2
fi
if [ "$status" != 0 ]; then
  echo "bench.sh: failed:$failed" >&2
fi
exit $status
