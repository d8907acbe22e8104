# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
# Installed first when the venv has no torch. The default is the CPU build these build
# machines carry; on a GPU cluster pass your CUDA build, e.g.
#   make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install $(TORCH_SPEC)
	@# DeepSpeed compiles its CPU ops (shared-memory comm, CPU Adam) with g++ and ninja
	command -v g++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++; }
	$(VENV)/bin/pip install -e ".[dev]"
	@# build them once now (cached in ~/.cache/torch_extensions) instead of inside a test
	DS_ACCELERATOR=cpu $(VENV)/bin/python -c "from deepspeed.ops.op_builder.cpu import \
	  CPUAdamBuilder, ShareMemCommBuilder; CPUAdamBuilder().load(); ShareMemCommBuilder().load()"
	touch $@

# the built-in demo end to end: data, tiny model, SFT, oracle evaluation before and after
demo: venv
	$(VENV)/bin/rlhf experiment=demo

test: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun
