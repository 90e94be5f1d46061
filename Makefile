# The two commands of the README: `make demo` and `make test`; each sets everything up first.
.PHONY: install demo test lint bench

export YOLO_OFFLINE ?= True
export YOLO_AUTOINSTALL ?= false

install:
	bash scripts/install.sh all

demo: install
	.venv/bin/promptlabel demo --out demo-out

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: install lint
	.venv/bin/pytest

bench: install
	.venv/bin/python benchmarks/bench_propose.py
	.venv/bin/python benchmarks/bench_verify.py
	.venv/bin/python benchmarks/bench_runtime.py
	.venv/bin/python benchmarks/bench_service.py
