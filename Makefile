# Quick start:  make demo   (venv + install + compile the bundled example)
#               make test   (venv + dev and docs extras + the default suite, docs examples included:
#                            the fast loop, ~10 min on 2 cores)
# More tests:   make test-slow  (only the tests marked slow: the full-size zoo, the 2000 random
#                                draws, every pruning criterion on every zoo model, front-end parity:
#                                ~26 CPU-min, so ~13 min on 2 idle cores; measured 2026-12-07)
#               make test-all   (both at once: every test that is not GPU-only)
# CI (.ci/run) runs `make test`, then `make test-slow`: every non-GPU test, none twice.
# PYTEST_ARGS passes more options (e.g. PYTEST_ARGS="--durations=30").
# Docs:         make docs   (the documentation site, warnings as errors → site/)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: this machine has the CPU wheel of 2.13.0 on disk; any other
# spec would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test test-slow test-all docs bench compare-quick compare-quant gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -qq $(TORCH)
	$(BIN)/python -m pip install -qq -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -qq -e ".[dev,docs]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/slimc compile examples/demo/model.py --masks examples/demo/masks.pth -o out/demo

PYTEST := $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider $(PYTEST_ARGS)

test: $(VENV)/.installed-dev
	$(PYTEST) -m "not slow and not gpu"

test-slow: $(VENV)/.installed-dev
	$(PYTEST) -m "slow and not gpu"

test-all: $(VENV)/.installed-dev
	$(PYTEST) -m "not gpu"

# The site: docs/ + mkdocs.yml (hooks in docs/hooks.py generate the CLI and rules reference and
# the measured tables); no network needed.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/latency.py --models transformers --stem latency_cpu_transformers
	$(BIN)/python benchmarks/compile_time.py
	$(BIN)/python benchmarks/compile_time.py --models vit_small,bert_small,gpt_small,llama_small --kinds '' --stem compile_time_cpu_transformers

$(VENV)/.installed-digits: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -qq -e ".[digits]"
	touch $@

# The pruner comparison on scikit-learn's digits (two small CNNs × 8 pruners × 5 compression
# targets × 2 seeds at a params budget, then the VGG-style net at a FLOPs budget), all with
# measured slim latency → benchmarks/results/compare_pruners/: 24.7 min for the committed run
# (one core; the test suite ran beside it for 8 of those minutes).
COMPARE := $(BIN)/python benchmarks/compare_pruners.py --targets 2,4,8,16,32 --seeds 2
compare-quick: $(VENV)/.installed-digits
	$(COMPARE) --models digits_vgg,digits_resnet --budgets params --fresh
	$(COMPARE) --models digits_vgg --budgets flops

# The quantizer comparison on the same digits nets: float, Naive 8, static 8 per-tensor and
# per-channel, QAT 8, DoReFa 4, BNN × dense and slim 50 % → benchmarks/results/compare_quantizers/
# (accuracy of the int8 file in onnxruntime, file size, latency; one seed).
compare-quant: $(VENV)/.installed-digits
	$(BIN)/python benchmarks/compare_quantizers.py --fresh

# On a GPU machine: the `gpu` tests and benchmarks/latency.py --device cuda (eager and CUDA
# graphs) → benchmarks/results/latency_cuda.*; a few minutes on one H200. Without CUDA: one
# line "no CUDA device: …" and a non-zero exit. GPU_PYTHON: a Python whose torch sees the GPU
# and where slimc is installed (`pip install --no-deps -e .`); default the project venv's.
GPU_PYTHON ?= $(BIN)/python

gpu-check: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),$(VENV)/.installed-dev)
	$(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) out build site *.egg-info
