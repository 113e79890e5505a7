# The two commands a newcomer needs:
#   make run    set up, index a generated sample catalogue in the embedded store, start the UI
#   make test   set up, run the whole test suite (offline; tiny models built at test time)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SAMPLE ?= sample_catalogue

# Never wait on a hub for what the tests build themselves.
TEST_ENV = HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
           YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 GRADIO_ANALYTICS_ENABLED=False

.PHONY: setup run test bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m tools.sample_catalogue $(SAMPLE)
	@for factory in $(SAMPLE)/*/; do $(BIN)/ingest add "$$factory" || exit $$?; done
	$(BIN)/ingest stats
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/search-ui

test: setup
	$(TEST_ENV) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data $(SAMPLE) .pytest_cache
