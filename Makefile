# Everything a fresh clone needs, with only python3 on the machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo archive lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dask]'
	touch $(STAMP)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: venv
	$(BIN)/obsharvest run --config config/local.yaml --targets config/demo-targets.csv --output output/demo

archive: venv
	$(BIN)/obsharvest archive --host 127.0.0.1 --port 8765

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
