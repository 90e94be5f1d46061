# The two commands of the README: `make demo` and `make test`; each sets everything up first.
.PHONY: install install-base install-label-studio demo test lint bench

export YOLO_OFFLINE ?= True
export YOLO_AUTOINSTALL ?= false

install:
	bash scripts/install.sh all

# The base install alone (what a device runs), for the tests that check what it can and cannot do.
install-base:
	VENV=.venv-base bash scripts/install.sh base

# Label Studio in a virtual environment of its own (its pins clash with ours), for the round-trip
# test (tests/labeler/export/test_label_studio_server.py); kept once installed.
install-label-studio:
	[ -x .venv-ls/bin/label-studio ] || { python3 -m venv .venv-ls \
		&& .venv-ls/bin/python -m pip install --quiet --upgrade pip \
		&& .venv-ls/bin/python -m pip install --quiet "label-studio>=1.23,<2"; }

demo: install
	.venv/bin/promptlabel demo --out demo-out

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: install install-base install-label-studio lint
	PROMPTLABEL_BASE_VENV=$(CURDIR)/.venv-base \
		PROMPTLABEL_LABEL_STUDIO=$(CURDIR)/.venv-ls/bin/label-studio .venv/bin/pytest

bench: install
	.venv/bin/python benchmarks/bench_propose.py
	.venv/bin/python benchmarks/bench_verify.py
	.venv/bin/python benchmarks/bench_runtime.py
	.venv/bin/python benchmarks/bench_service.py
