# The two commands of the README: `make demo` and `make test`; each sets everything up first.
.PHONY: install install-base install-label-studio install-browser demo test lint bench screenshots

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

# Debian's Chromium for the pages' browser tests (Playwright drives it; its own browser download
# is not needed). As root it is installed; otherwise the browser tests skip, unless
# PROMPTLABEL_REQUIRE_BROWSER is set (CI), where they fail.
install-browser:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "no Chromium: sudo apt-get install -y chromium (the browser tests skip without it)" >&2

test: install install-base install-label-studio install-browser lint
	PROMPTLABEL_BASE_VENV=$(CURDIR)/.venv-base \
		PROMPTLABEL_LABEL_STUDIO=$(CURDIR)/.venv-ls/bin/label-studio .venv/bin/pytest

# The README's picture of the review page, made by its browser test.
screenshots: install install-browser
	PROMPTLABEL_SCREENSHOTS=1 .venv/bin/pytest -q tests/serve/pages

bench: install
	.venv/bin/python benchmarks/bench_propose.py
	.venv/bin/python benchmarks/bench_verify.py
	.venv/bin/python benchmarks/bench_runtime.py
	.venv/bin/python benchmarks/bench_service.py
