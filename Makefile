# Two commands on a fresh machine: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
CONFIG ?= conf/demo.yaml

.PHONY: venv demo test lint bench clean chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m d3r.demo --config $(CONFIG)

# tests/test_viewer.py renders the HTML viewer in headless Chromium: install Debian's chromium when root.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "make test: chromium is missing and was not installed (needs root): tests/test_viewer.py will fail; apt-get install chromium" >&2

test: venv chromium
	$(VENV)/bin/ruff check d3r jobs bench tests
	$(VENV)/bin/python -m pytest

lint: venv
	$(VENV)/bin/ruff check d3r jobs bench tests

clean:
	rm -rf $(VENV) .pytest_cache demo_out
