# The two commands of the README: `make demo` and `make test`; each sets everything up first.
.PHONY: install install-base demo test lint bench

export YOLO_OFFLINE ?= True
export YOLO_AUTOINSTALL ?= false

install:
	bash scripts/install.sh all

# The base install alone (what a device runs), for the tests that check what it can and cannot do.
install-base:
	VENV=.venv-base bash scripts/install.sh base

demo: install
	.venv/bin/promptlabel demo --out demo-out

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: install install-base lint
	PROMPTLABEL_BASE_VENV=$(CURDIR)/.venv-base .venv/bin/pytest

bench: install
	.venv/bin/python benchmarks/bench_propose.py
	.venv/bin/python benchmarks/bench_verify.py
	.venv/bin/python benchmarks/bench_runtime.py
	.venv/bin/python benchmarks/bench_service.py
