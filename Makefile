# KneeSegmentation: the obvious targets. Everything runs in a local virtualenv (.venv) with pinned packages.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
KNEESEG := $(VENV)/bin/kneeseg
SHARED ?= ../shared/data
DEMO_OUT ?= demo-output
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help venv demo test test-fast coverage-slicer panel-pngs bench eval train-default synth-cache clean

help:
	@echo "make demo           set up .venv, fetch a real knee MRI (pip, hash-checked), segment it -> $(DEMO_OUT)/"
	@echo "make test           run the whole test suite (core + Slicer logic on slicer-core + the panel under Qt)"
	@echo "make coverage-slicer line coverage of KneeSegmentation.py and KneeSegmentationLib by the Slicer tests"
	@echo "make panel-pngs     render the Slicer panel (default, running, done, flagged, training) -> docs/slicer-panel-*.png"
	@echo "make bench          speed/memory benchmarks -> docs/benchmarks.md (uses $(SHARED) when present)"
	@echo "make eval           evaluate the shipped model on $(SHARED) -> docs/evaluation.md"
	@echo "make train-default  retrain the default model from $(SHARED)/labelmaps on this CPU (< 1 h) -> build/default"

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/demo.py --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# The panel tests need ../shared/slicer_python (Slicer's own Python layer); without it they skip and
# the figure covers the logic layer only.
SLICER_COVERAGE_FILES := KneeSegmentation/KneeSegmentation.py,KneeSegmentation/KneeSegmentationLib/*
coverage-slicer: venv
	COVERAGE_FILE=.coverage-slicer $(PY) -m coverage run --include="$(SLICER_COVERAGE_FILES)" -m pytest -q Testing/slicer_extension
	COVERAGE_FILE=.coverage-slicer $(PY) -m coverage report -m

panel-pngs: venv
	KNEESEG_PANEL_PNG_DIR=docs $(PY) -m pytest -q Testing/slicer_extension/test_panel.py -m "not slow"

bench: venv
	$(PY) -m bench.run --out docs/benchmarks.json --markdown docs/benchmarks.md

eval: venv
	$(PY) scripts/evaluate_default.py --data $(SHARED) --out docs/evaluation.md

synth-cache: venv
	$(KNEESEG) synth prepare $(SHARED)/labelmaps .cache/labelmaps

train-default: synth-cache
	$(PY) scripts/train_default.py train --cache .cache/labelmaps --preset cpu --out build/default
	$(PY) scripts/train_default.py finalize build/default/stage2 --stage1 build/default/stage1 --cache .cache/labelmaps --real2d $(SHARED)/real_2d/sagittal_slices_dev.npz --hardware "this machine (CPU)"

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO_OUT) .demo .coverage-slicer
