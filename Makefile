# The two commands: `make bench` (the main job) and `make test`. Both build first.
PYTHON ?= python3
BENCH_ARGS ?=
SAMPLER_BENCH_ARGS ?=
JOBS ?= $(shell nproc)

.PHONY: all deps build test test-py test-slow ctest cuda-check dist-check sanitize bench mutants clean

all: build

deps:
	$(PYTHON) scripts/ensure_deps.py

# AOT build of gumbel_ext._C in place (the same setup.py `pip install --no-build-isolation .` runs).
build: deps
	MAX_JOBS=$(JOBS) $(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest -q
	$(MAKE) ctest
	$(MAKE) cuda-check
	$(MAKE) dist-check

test-slow: build
	$(PYTHON) -m pytest -q -m slow --run-slow

# The libtorch (CMake) build and its C++ test program.
ctest: deps
	$(PYTHON) scripts/cmake_build.py

# nvcc compiles every .cu translation unit for sm_80 and sm_90 (no GPU needed), then the
# SASS instruction budget per element (scripts/sass_budget.py) is read from sm_90 code.
cuda-check: deps
	$(PYTHON) scripts/check_cuda_compile.py
	$(PYTHON) scripts/sass_budget.py

# sdist + wheel (reusing build's objects), twine check, the sdist's contents, and the wheel
# in a fresh venv holding only torch (scripts/dist_check.py).
dist-check: build
	MAX_JOBS=$(JOBS) $(PYTHON) scripts/dist_check.py

# ASan + UBSan build in build-sanitize/ and the fast CPU suites under it, once per forced
# copy of the CPU kernels (scripts/sanitize.py). Run before every merge of kernel code.
sanitize: deps
	$(PYTHON) scripts/sanitize.py

bench: build
	$(PYTHON) -m benchmarks.run $(BENCH_ARGS)
	$(PYTHON) -m benchmarks.sampler $(SAMPLER_BENCH_ARGS)

# Does the fast suite kill every mutation in tests/mutants/? Rebuilds a scratch copy per
# mutant (minutes each): run it before closing a kernel issue, not in CI (`make test`).
mutants: deps
	MAX_JOBS=$(JOBS) $(PYTHON) scripts/mutants.py $(MUTANTS)

clean:
	rm -rf build build-cmake build-mutants build-sanitize gumbel_ext/_C*.so gumbel_ext/_build_info.json *.egg-info .pytest_cache
