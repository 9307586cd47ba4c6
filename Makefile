# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test proto clean bench-deps

install: $(STAMP)

# torch first, pinned: the CPU build of 2.13.0 is on disk; anything looser pulls a
# multi-GB CUDA build. The stamp is refreshed whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/fedsecure demo

test: install
	$(PY) -m pytest -q

# TRL for `fedsecure bench grpo`: without its dependencies, so torch stays the pinned CPU build.
bench-deps: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps trl==1.16.0

proto: install
	$(PY) -m fedsecure.proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
