# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test proto clean bench-deps

install: $(STAMP)

# torch first, pinned: the CPU build of 2.13.0 is on disk; anything looser pulls a
# multi-GB CUDA build. The stamp is refreshed whenever pyproject.toml changes. Quiet:
# pip's output goes to $(VENV)/install.log and is shown only when a step fails.
INSTALL_LOG := $(VENV)/install.log
QUIETLY = >> $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); echo "install failed (log: $(INSTALL_LOG))"; exit 1; }

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(INSTALL_LOG))"
	@: > $(INSTALL_LOG)
	@$(PY) -m pip install --upgrade pip $(QUIETLY)
	@$(PY) -m pip install torch==2.13.0 $(QUIETLY)
	@$(PY) -m pip install -e '.[test]' $(QUIETLY)
	@touch $(STAMP)

demo: install
	$(VENV)/bin/fedsecure demo

test: install
	$(PY) -m pytest -q

# TRL for `fedsecure bench grpo`: without its dependencies (datasets, its one other need,
# is ours already), so torch stays the pinned CPU build.
bench-deps: install
	@$(PY) -m pip install --no-deps trl==1.16.0 $(QUIETLY)

proto: install
	$(PY) -m fedsecure.proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
