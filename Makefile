# Set-up in two commands: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-avx2 lint bench clean gpu-check

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU wheel; a CUDA build of torch is gigabytes and CI has no GPU.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,train,crawl,cluster,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/wsvs demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

# The tests that train, export or threshold a model, again with PyTorch's AVX2 kernels (oneDNN's too) and on one
# thread: what an AVX2-only CPU computes, on a machine with AVX-512, and another thread count's float rounding.
# CI runs it after `make test` (default kernels, every core). Two one-thread processes share the tests; those on
# the synthetic world's fixtures stay in one of them (tests/conftest.py), so the world is trained once.
test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m model \
		-n 2 --dist loadgroup tests

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable

clean:
	rm -rf $(VENV) runs

# The GPU report of benchmarks/gpu_check.py (environment, GPU tests, pooling kernel, model latency on torch, ONNX
# Runtime CUDA and TensorRT where installed), with $(PYTHON) as it is: no .venv, nothing installed, no network.
# Without a GPU it writes a report saying so and exits 0.
GPU_CHECK_OUT ?= benchmarks/results
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)
