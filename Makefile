# Two set-up commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/crm up

test: $(STAMP)
	$(BIN)/python -m pytest

# constraints.txt anew from the newest releases pyproject.toml allows, in a scratch environment;
# then `make test` (and `make bench`) before committing it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[test]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^crm[= @]'; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .lock-venv build

clean:
	rm -rf $(VENV) .crm .pytest_cache build *.egg-info

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || \
	  echo "wrk missing: the HTTP figures are skipped (apt-get install wrk)"
	$(BIN)/python -m bench.run

# Issue 9: the whole system at half the benchmarked command rate (SOAK_SECONDS=60 for a short run;
# SOAK_RATE=105 for another rate than half of commands_per_s in bench/results.json).
SOAK_SECONDS ?= 600
SOAK_RATE ?=
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) $(if $(SOAK_RATE),--rate $(SOAK_RATE))
