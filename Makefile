# Every target creates .venv itself when it is missing; every pip install goes
# through constraints.txt (torch==2.13.0, the CPU build on this machine).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: install test lint format bench bench-real demo fuzz clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks examples scripts

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/run.py --out benchmarks/results

# a longer property-based run of the loader and command-line fuzz tests (make test runs 25
# examples each)
fuzz: $(STAMP)
	SCOREKIT_FUZZ_EXAMPLES=5000 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_fuzz_cli.py

# digits and moons under fixed CPU-minute budgets: 5 runs on 2 processes of one thread
# (measured: 60 CPU-minutes, 37 minutes wall)
bench-real: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/real_data.py --out benchmarks/results/real_data

demo: $(STAMP)
	$(VENV)/bin/scorekit demo --out runs/demo

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

# the measured run on a CUDA machine (scripts/gpu_check.py); never part of make test
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py
