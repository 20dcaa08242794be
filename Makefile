# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
RUN ?= runs/iris

.PHONY: install run test lock clean

install: $(STAMP)

# One resolve, pinned in requirements.lock (regenerate with `make lock`); uv installs it quickly.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/bdk run --dataset iris --out $(RUN) --overwrite

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --dist loadfile  # one worker per core; a test file stays on one worker

lock:
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) runs
