# The README's commands. Everything runs inside .venv in this folder.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 unless .venv already has a torch; pick another build with TORCH_SPEC="torch --index-url ..."
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.shoal-installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/shoal train --config tiny
	$(VENV)/bin/shoal generate runs/tiny "def fibonacci(n):" --max-tokens 120 --seed 0

test: setup
	$(PY) -m pytest tests; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ]

bench: setup
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) bench/train_throughput.py
	$(PY) bench/scaling.py
	$(PY) bench/moe.py
	$(PY) bench/eval.py
	$(PY) bench/serve.py
	$(PY) bench/compress.py
	$(PY) bench/registry.py

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs prepared
