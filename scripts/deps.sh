#!/bin/sh
# Installs the Debian packages conc needs for a task, only when some are missing.
#   deps.sh build   compiler and C library headers, CMake, pkg-config, Criterion,
#                   python3 (example tests), libcurl (the coro-tour example),
#                   libsodium (libconc_remote: Listener, Client, manager;
#                   the ftp examples' SHA-256),
#                   clang and its runtimes (the manager's libFuzzer target;
#                   libclang-rt-dev holds libFuzzer and clang's sanitizer
#                   runtimes for the default clang)
#                   rabbitmq-c and rabbitmq-server (the broker library and
#                   the private node its tests and examples start)
#   deps.sh bench   the benchmark peers' packages (python3-pika: bench_broker)
#   deps.sh cross   the AArch64 cross compiler and qemu-user
#                   (scripts/cross-aarch64.sh)
# Only the README's one-command paths (make demo, make test, make bench) run
# it; make build and make install never do.  The names carry no version: the
# sanitizer runtimes (libasan, libubsan, libtsan) come with gcc itself
# (gcc -> gcc-N -> libgcc-N-dev), and binutils (nm, readelf) too;
# libcurl4-openssl-dev is the development package's name in every Debian
# release (libcurl-dev is virtual and cannot be installed by that name).
set -e
what=${1:-build}
case "$what" in
  build) pkgs="gcc libc6-dev make cmake pkgconf libcriterion-dev python3 libcurl4-openssl-dev libsodium-dev clang libclang-rt-dev librabbitmq-dev rabbitmq-server" ;;
  bench) pkgs="python3 g++ libboost-context-dev python3-greenlet python3-gevent golang-go libuv1-dev python3-pika" ;;
  cross) pkgs="gcc-aarch64-linux-gnu qemu-user" ;;
  *) echo "deps.sh: unknown set '$what'" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "conc: missing packages:$missing (run as root, or install them)" >&2
  exit 1
fi
echo "conc: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
