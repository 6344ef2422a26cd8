# Entry points of the README. uv comes from PyPI; everything else from uv.lock.
PYTHON ?= python3.11
UV := $(PYTHON) -m uv
export OPENBLAS_NUM_THREADS := 1
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test test-fast test-notebooks clean-notebooks notebooks lint bench setup requirements \
	console-shots

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv>=0.5"
	@$(UV) sync --frozen --quiet

demo: setup
	$(UV) run --frozen nbo demo

# the linters, then the whole suite, real-data and slow tests included (real-data tests
# skip where ../shared/data is absent); pytest's "no tests collected" is not a failure
test: lint
	$(UV) run --frozen pytest -m "" --nbmake tests notebooks ; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-fast: setup
	$(UV) run --frozen pytest -m "not slow and not realdata"

# the notebooks, executed top to bottom on a small generated shop
test-notebooks: setup
	$(UV) run --frozen pytest --nbmake notebooks

# strip outputs and execution counts before committing a notebook
clean-notebooks: setup
	$(UV) run --frozen jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

notebooks: setup
	$(UV) run --frozen jupyter lab notebooks

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy features training serving nbo

# screenshots of each console page on the demo shop, into docs/console/ (system Chromium)
console-shots: setup
	$(UV) run --frozen python docs/console/shots.py

bench: setup
	$(UV) run --frozen python bench/pipeline.py

# the Bento's pinned packages (bentofile.yaml), from uv.lock; rerun after 'uv lock'
requirements:
	$(UV) export --frozen --no-default-groups --no-hashes --no-emit-project --no-header --quiet \
		--output-file serving/requirements.txt
