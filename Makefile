# Everything a fresh clone needs, with only python3 on the machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo archive lint typecheck clean bench system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[archive,test,dask]'
	touch $(STAMP)

# Debian's chromium + chromium-driver drive the Prefect UI test (browser downloads do not
# work here, so Playwright's own browsers are not an option).
system-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing Debian's chromium and chromium-driver (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# Nothing is rerun: a crash fails the run like any failure, and pytest's faulthandler
# prints every thread's stack. (The old "rare segfault" was astropy's C VOTable writer;
# docs/history.md, "Known problems fixed"; `make stress` loops the workload that met it.)
#
# Two workers (pytest-xdist), each taking whole files, so a module's servers and fixtures
# stay in one process; each worker has its own session servers on free ports.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
test: venv system-deps interop-deps azurite-deps
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The same suite with every core kept busy by spinning processes (tests/cpu_hog.py): what
# depends on kind scheduling fails here before it fails in CI.
.PHONY: test-loaded
test-loaded: venv system-deps interop-deps azurite-deps
	$(BIN)/python -m tests.cpu_hog -- $(MAKE) test

# A real GAVO DaCHS for the ObsTAP interop tests: Debian's gavodachs2-server and pg_sphere,
# installed once (root, unattended, only what is missing; never upgrades postgresql-15).
# Where Debian packages cannot be installed (not root, no apt) it says why and succeeds,
# and the interop tests skip with that reason.
.PHONY: interop-deps interop
interop-deps:
	@sh tests/interop/install_deps.sh

interop: venv interop-deps
	$(BIN)/python -m pytest -m interop tests/e2e/test_interop_dachs.py $(PYTEST_ARGS)

# Azurite (npm) for the Azure Blob tests: installed once into .cache/azurite with the
# machine's node and npm (the tests start it, tests/emulators.py). Where npm is missing or
# the install fails it says why and succeeds, and the Azure tests skip with that reason.
AZURITE_VERSION ?= 3.35.0
AZURITE_STAMP := .cache/azurite/.installed-$(AZURITE_VERSION)
.PHONY: azurite-deps
azurite-deps: $(AZURITE_STAMP)

$(AZURITE_STAMP):
	@if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then \
	  echo "node/npm not found: the Azure Blob tests will skip (Azurite runs on Node.js)"; \
	elif npm install --prefix .cache/azurite --no-audit --no-fund --loglevel=error \
	    azurite@$(AZURITE_VERSION); then \
	  touch $@; \
	else \
	  echo "npm could not install azurite@$(AZURITE_VERSION): the Azure Blob tests will skip"; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# obsharvest/, tasks/ and flows/ with the pydantic plugin (pyproject.toml [tool.mypy]),
# as installed: flows/ and tasks/ are obsharvest.flows and obsharvest.tasks, which mypy
# cannot map by itself, so it reads a tree of links laid out as the wheel is.
typecheck: venv
	@rm -rf .cache/typeview && mkdir -p .cache/typeview/obsharvest
	@for entry in obsharvest/*; do ln -s "$$PWD/$$entry" .cache/typeview/obsharvest/; done
	@ln -s "$$PWD/flows" .cache/typeview/obsharvest/flows
	@ln -s "$$PWD/tasks" .cache/typeview/obsharvest/tasks
	$(BIN)/mypy

demo: venv
	$(BIN)/obsharvest run --config config/local.yaml --targets config/demo-targets.csv --output output/demo

archive: venv
	$(BIN)/obsharvest archive --host 127.0.0.1 --port 8765

# The bandwidth-bound workload (the targets), then the latency-bound one (50 ms per
# request, no bandwidth cap), whose figure is printed too; then several services (4
# archives, 50 ms each): one run over all against one per service (benchmarks/many.py).
bench: venv
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.bench --bandwidth 0 --latency 0.05 --runs 1 --no-rss
	$(BIN)/python -m benchmarks.many $(BENCH_ARGS_MANY)

# Plan runs of 1k, 4k, 16k and 64k targets against the embedded archive in its own
# process: wall time, peak RSS, rows and their growth ratios (benchmarks/scale.py).
.PHONY: bench-scale
bench-scale: venv
	$(BIN)/python -m benchmarks.scale $(SCALE_ARGS)

# Not part of `make test`: loops archives, TAP uploads, Datalink, header reads and
# quicklooks in fresh processes and reports crashes with their traces (benchmarks/stress.py).
.PHONY: stress
stress: venv
	$(BIN)/python -m benchmarks.stress $(STRESS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
