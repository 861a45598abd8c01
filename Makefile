# fc-edge: every target sets itself up on a fresh machine (venv, package, mosquitto).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
# Debian packages the tests and the demo run for real: the broker, socat (Modbus RTU over a
# pty pair), openssl (test certificates), systemd-analyze (unit checks) and strace (the
# sandbox test), chromium (the local web page's browser test, headless); as binary:package pairs.
APT_TOOLS := mosquitto:mosquitto socat:socat openssl:openssl systemd-analyze:systemd strace:strace chromium:chromium

.PHONY: test test-slow demo lint typecheck bench soak fuzz clean system-deps

$(STAMP): pyproject.toml gateway/engine/_hotloop.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	@missing=""; \
	for tool in $(APT_TOOLS); do \
	  bin=$${tool%%:*}; pkg=$${tool##*:}; \
	  command -v $$bin >/dev/null 2>&1 || test -x /usr/sbin/$$bin || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing:$$missing -- run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP) system-deps
	$(PY) -m pytest -m slow -q

demo: $(STAMP) system-deps
	$(PY) -m gateway.cli demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy gateway drivers simulators

soak: $(STAMP) system-deps
	$(PY) -m tools.soak $(ARGS)

fuzz: $(STAMP)
	$(PY) tools/fuzz.py --examples 1000000

bench: $(STAMP) system-deps
	$(PY) -m gateway.cli bench all --json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
