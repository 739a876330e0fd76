# The two front-door commands: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-headless test test-under-load install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/conceptgen demo

demo-headless: $(STAMP)
	$(BIN)/conceptgen demo --headless

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

# The concurrency and distributed tests with four CPU-bound processes beside them (.ci/under-load).
test-under-load: $(STAMP)
	PYTHON=$(BIN)/python .ci/under-load

clean:
	rm -rf $(VENV) workspace
