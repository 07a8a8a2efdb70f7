# The project's commands. `make demo` and `make test` are the README's two set-up commands:
# each installs everything it needs into .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
TORCH  := torch==2.13.0

.PHONY: setup lint format test demo demo-classify parsing bench clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile changed (a second run takes seconds).
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# scripts/install_browser.sh: Debian's chromium for the web page test (a no-op when present; fails
# when it cannot install it). Playwright (from `setup`) drives that chromium and never downloads
# a browser of its own. STRICT=1: with everything installed, a test that would skip for a missing
# optional dependency fails instead (tests/optional.py); only gpu tests skip without CUDA.
test: setup lint
	bash scripts/install_browser.sh
	STRICT=1 $(BIN)/python -m pytest -q tests

# The main job, end to end on the bundled Multi30k: prepare, train DEMO_MINUTES (default 15) on
# this machine, average, BLEU on test2016, translate, plot. `make demo DEMO_MINUTES=60` for longer.
DEMO_MINUTES ?= 15
demo: setup
	DEMO_MINUTES=$(DEMO_MINUTES) BIN=$(BIN) bash scripts/demo.sh

# Text classification with the encoder (AG News news topics, the rows shipped in data/ag_news):
# prepare, train at most CLASSIFY_MINUTES (default 15), average, evaluate on a held-out fold,
# classify a few headlines, draw the attention; the summary ends the output.
CLASSIFY_MINUTES ?= 15
demo-classify: setup
	CLASSIFY_MINUTES=$(CLASSIFY_MINUTES) BIN=$(BIN) bash scripts/demo_classify.sh

# Parsing as translation (the paper's section 6.3) on the bundled GUM treebank (data/gum): prepare,
# train PARSE_MINUTES (default 60), average, and bracket F1 on dev, test and test2 with the
# baselines; the table goes to runs/gum/parsing.md.
PARSE_MINUTES ?= 60
parsing: setup
	PARSE_MINUTES=$(PARSE_MINUTES) BIN=$(BIN) bash scripts/parsing.sh

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/model_speed.py
	@if [ -n "$(MODEL)" ]; then $(BIN)/python benchmarks/decode_speed.py --model $(MODEL); \
	else echo "decode_speed skipped: pass a trained model directory, make bench MODEL=DIR"; fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
