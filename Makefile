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

# The demo first, alone on both cores; then every other test in two pytest-xdist workers of one
# thread each, each worker taking whole files (module fixtures are built once). The tests
# besides the demo keep one core busy on average, and a torch process of two threads next to
# any other job stalls (docs/notes.md, "Timing on the build machines"). Both parts always run
# and the target fails if either failed; pytest's 5 (it selected nothing, e.g. the demo part
# under PYTEST_ARGS=tests/test_rm.py) fails it only when both parts selected nothing.
TEST_WORKERS ?= 2
test: venv
	$(VENV)/bin/pytest --suite-part=slow $(PYTEST_ARGS); demo=$$?; \
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest --suite-part=rest -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder $(PYTEST_ARGS); rest=$$?; \
	if [ $$demo -eq 5 ] && [ $$rest -eq 5 ]; then exit 5; fi; \
	for rc in $$demo $$rest; do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; done

clean:
	rm -rf $(VENV) outputs multirun
