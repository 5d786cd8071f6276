# Two commands, each sets itself up on a fresh machine: `make demo` and `make test`.
# The virtual environment lives in .venv; delete it to start over.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python

.PHONY: demo test install clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/petlbench run --methods vpt_deep,linear --suite demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean-demo:
	rm -rf results/demo ~/.cache/petlbench/demo
