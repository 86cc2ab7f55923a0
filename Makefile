# Thin wrapper over CMake.
#   make, make build    configure and build into build/ (never installs packages)
#   make install        build, then install under PREFIX (never installs packages)
# The README's one-command paths install what is missing first (as root on a
# fresh Debian machine, scripts/deps.sh):
#   make demo           builds, runs the tour of examples
#   make test           builds and runs the whole suite three times
#                       (plain -Werror build, ASan+UBSan build, TSan build)
#   make bench          builds, runs the benchmarks beside their peers
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
PREFIX ?= /usr/local
DESTDIR ?=
CMAKE_FLAGS ?=
# No "Entering/Leaving directory" lines from the makes CMake generates.
MAKEFLAGS += --no-print-directory

.PHONY: all deps build test test-plain test-asan test-tsan demo bench install clean

all: build

deps:
	@sh scripts/deps.sh build

build:
	@command -v cmake >/dev/null 2>&1 || { echo "make build: cmake is not installed (as root, 'make deps' installs what conc's build and tests need)" >&2; exit 1; }
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)
	cmake --build build -j $(JOBS)

test: deps
	@sh scripts/test.sh

test-plain test-asan test-tsan: deps
	@sh scripts/test.sh $(subst test-,,$@)

# The tour: the build's output goes to build/build.log (shown only when the
# build fails), so the tour is what the screen shows.
demo: deps
	@mkdir -p build
	@echo "building conc and its examples (output in build/build.log) ..."
	@{ cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=$(PREFIX) \
	     -DCONC_BUILD_EXAMPLES=ON $(CMAKE_FLAGS) && \
	   cmake --build build -j $(JOBS); } >build/build.log 2>&1 || \
	 { cat build/build.log; echo "make demo: the build failed (its output is above)" >&2; exit 1; }
	@sh scripts/demo.sh build/examples

# The peers' packages come first: CMake builds a peer (Boost.Context's) only
# when its package is there at configure time.
bench: deps
	@sh scripts/deps.sh bench
	@$(MAKE) --no-print-directory build CMAKE_FLAGS="-DCONC_BUILD_BENCH=ON $(CMAKE_FLAGS)"
	@sh scripts/bench.sh build/bench

install: build
	DESTDIR="$(DESTDIR)" cmake --install build --prefix $(PREFIX)

clean:
	rm -rf build build-asan build-tsan
