# Guarded Inference Service: `make run` starts the service, `make test` runs the tests.
# Everything installs into .venv; torch is pinned to its CPU build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch comes as its CPU build from PyTorch's CPU wheel index (PyPI's Linux torch is the CUDA
# build, GBs of GPU libraries). pip keeps the index it is configured with (PyPI, PIP_INDEX_URL
# or pip.conf) as the fallback and takes 2.13.0+cpu over a plain 2.13.0 (a higher version by
# PEP 440). When TORCH_INDEX does not answer within 5 s, torch comes from that index alone
# rather than after minutes of pip retrying TORCH_INDEX for every package.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
DATA ?= ../shared/data/aclImdb_labelled.tar.gz
# glibc malloc re-maps large activations on every call without these (measured: fp32 CNN
# batch-32 throughput 1,300 -> 2,200 reviews/s).
export GLIBC_TUNABLES := glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824

.PHONY: install run test test-fuzz lint format train bench bench-models bench-http bench-chat bench-drift bench-guard bench-ratios bench-quant guard-double clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if $(PY) -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)' '$(TORCH_INDEX)/torch/' 2>/dev/null; \
	then $(PY) -m pip install --quiet --extra-index-url '$(TORCH_INDEX)' torch==2.13.0; \
	else echo 'make: $(TORCH_INDEX) does not answer: torch from the configured index only' >&2; \
	     $(PY) -m pip install --quiet torch==2.13.0; fi
	$(PY) -m pip install --quiet -e '.[dev,fuzz,drift]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m service serve

test: $(STAMP)
	$(PY) -m ruff check service agents gis_client examples tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -q

# Property-based fuzzing of the whole OpenAPI document (schemathesis, every check, plus "no
# JSON-RPC -32603") against the service on the Ollama double, bounded: FUZZ_EXAMPLES test
# cases per operation and phase, FUZZ_TIME_LIMIT seconds at most; fails on any 5xx, any
# check that fails, and any unhandled error in the service's log. FUZZ_ARGS="--seed N" or
# "--max-time S" (keep fuzzing S seconds) for other runs. tests/test_openapi_fuzz.py is a
# shorter run inside `make test`.
FUZZ_EXAMPLES ?= 30
FUZZ_TIME_LIMIT ?= 900
test-fuzz: $(STAMP)  # the stamp installs the fuzz extra
	$(PY) -m tests.fuzz --max-examples $(FUZZ_EXAMPLES) --time-limit $(FUZZ_TIME_LIMIT) $(FUZZ_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check service agents gis_client examples tests benchmarks
	$(PY) -m mypy
	$(PY) -m ruff format --check service agents gis_client examples tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format service agents gis_client examples tests benchmarks

train: $(STAMP)
	$(PY) -m service train --data $(DATA)

bench: bench-models bench-http bench-chat bench-drift bench-guard bench-ratios

bench-models: $(STAMP)
	$(PY) benchmarks/models_bench.py --out benchmarks/results/models.md

bench-chat: $(STAMP)
	$(PY) -m benchmarks.chat_bench --out benchmarks/results/chat.md

# What the drift monitor adds to a classify request's CPU time (monitor on vs off).
bench-drift: $(STAMP)
	$(PY) -m benchmarks.drift_bench --out benchmarks/results/drift.md

# One request's latency with a guard adding 30 ms per screen (the two screens overlap).
# BENCH_COMPARE=<another checkout> measures that one too, in the same run.
bench-guard: $(STAMP)
	$(PY) -m benchmarks.guard_latency_bench --out benchmarks/results/guard_latency.md $(if $(BENCH_COMPARE),--compare $(BENCH_COMPARE))

bench-http: $(STAMP)
	@command -v h2load >/dev/null || { echo "bench-http needs h2load: apt-get install nghttp2-client"; exit 1; }
	$(PY) benchmarks/http_bench.py --out benchmarks/results/http.md

# The service's overhead goals, each the ratio of two things measured back to back (the floor app,
# a2a-sdk's hello-world agent, the in-process model, 1 vs 2 workers, unscreened chat),
# medians of BENCH_RUNS rounds (about 5 minutes for 3 on 2 cores).
BENCH_RUNS ?= 3
bench-ratios: $(STAMP)
	@command -v h2load >/dev/null || { echo "bench-ratios needs h2load: apt-get install nghttp2-client"; exit 1; }
	$(PY) -m benchmarks.ratios_bench --runs $(BENCH_RUNS) --out benchmarks/results/ratios.md

# The int8 approach against ONNX Runtime and torchao (extra packages: the `bench` extras).
bench-quant: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.quantization_choice --data $(dir $(DATA))imdb_reviews.jsonl.gz --out benchmarks/results/quantization_choice.md

# An Ollama-protocol stand-in on 127.0.0.1:$(GUARD_DOUBLE_PORT) (default 11434; `make guard-double
# GUARD_DOUBLE_PORT=11435`) that answers "safe" (and generates chat replies), for trying the
# service without Ollama. It lives under tests/ and is never part of the product.
GUARD_DOUBLE_PORT ?= 11434
guard-double: $(STAMP)
	$(PY) -m tests.ollama_double --port $(GUARD_DOUBLE_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
