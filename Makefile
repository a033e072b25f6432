# breast_d2 — every target builds .venv on first use (scripts/setup_env.sh; idempotent).
PY := .venv/bin/python
ENV := .venv/.breast_d2_env_ok
export OMP_NUM_THREADS ?= 2
# UTF-8 text files and console whatever the machine's locale (reports and tables hold "±").
export PYTHONUTF8 ?= 1

.PHONY: env demo test bench clean-demo

env: $(ENV)

$(ENV): scripts/setup_env.sh requirements/requirements.txt requirements/test.txt requirements/constraints.txt setup.py
	bash scripts/setup_env.sh

# The main job on the synthetic cohort: phantom -> COCO -> U-Net++ -> masks -> detector -> FROC report.
demo: $(ENV)
	$(PY) tools/demo.py --out output/demo

# Lint (ruff.toml), then the test suite (tiny phantoms and configs; a few minutes on 2 CPU cores).
test: $(ENV)
	.venv/bin/ruff check .
	$(PY) -m pytest -q tests

# Benchmarks whose results are recorded in BENCHMARKS.md (long; not part of the tests).
bench: $(ENV)
	$(PY) benchmarks/run_all.py

clean-demo:
	rm -rf output/demo
