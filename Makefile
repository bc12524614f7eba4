# The two commands of the quick start are `make demo` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FONTS   := /usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed-BoldItalic.ttf
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test bench install system-data system-servers data models lint check-models clean-workspace

demo: models                      ## install, verify data and models, run the demo requests, print the lineage
	$(BIN)/lethe demo
	$(BIN)/lethe --params params.text-to-image.yaml demo

test: lint check-models system-servers  ## the checks and the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

bench: models                     ## the benchmark protocol (about 6 h on 2 CPU cores), then BENCHMARKS.md's tables
	$(BIN)/python benchmarks/tune.py all
	$(BIN)/python benchmarks/render_tables.py --markdown benchmarks/results/report.md

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile --disable-pip-version-check -c constraints.txt torch==2.13.0 -e ".[test]"
	touch $@

system-data:                      ## Fashion-MNIST and the DejaVu fonts (the letters) ship as Debian packages
	@if [ ! -f $(FASHION) ] || [ ! -f $(FONTS) ]; then \
	  echo "installing the Debian packages dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra; \
	fi

system-servers:                   ## PostgreSQL's server binaries, which the server-profile tests start on loopback
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  echo "installing the Debian package postgresql (server binaries for the tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql; \
	fi

data: install system-data         ## copy the raw data into data/ and verify it against data.dvc; prepare tensors
	$(BIN)/python -m lethe.tasks.stages.ingest --params params.yaml
	$(BIN)/dvc repro -q prepare

models: data                      ## base generator and judge: checked against dvc.lock, retrained only if stale
	$(BIN)/dvc repro -q
	@$(BIN)/dvc status

lint: install                     ## ruff (lint and format) over the whole tree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check-models: data                ## fails when a shipped artefact no longer matches its code, data or params
	$(BIN)/python -m lethe.tasks.stages.freshness

clean-workspace:                  ## forget every run-time state (queue, registry, datasets); keeps the models
	rm -rf workspace
