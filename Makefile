# Thin wrapper over CMake. Run as root on a fresh Debian machine:
#   make demo   installs what is missing, builds, runs the tour of examples
#   make test   installs what is missing, builds and runs the whole suite
#               (plain -Werror build, ASan+UBSan build, TSan build)
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
PREFIX ?= /usr/local
CMAKE_FLAGS ?=
# No "Entering/Leaving directory" lines from the makes CMake generates.
MAKEFLAGS += --no-print-directory

.PHONY: all deps build test test-plain test-asan test-tsan demo bench install clean

all: build

deps:
	@sh scripts/deps.sh build

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)
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
	@{ cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) && \
	   cmake --build build -j $(JOBS); } >build/build.log 2>&1 || \
	 { cat build/build.log; echo "make demo: the build failed (its output is above)" >&2; exit 1; }
	@sh scripts/demo.sh build/examples

# The peers' packages come first: CMake builds a peer (Boost.Context's) only
# when its package is there at configure time.
bench: deps
	@sh scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	@sh scripts/bench.sh build/bench

install: build
	cmake --install build --prefix $(PREFIX)

clean:
	rm -rf build build-asan build-tsan
