# Two commands do all set-up on a fresh machine:
#   make serve      - create .venv, install, run the page + websocket API
#   make test       - create .venv, install (pip + Debian packages), run every test
# and for development:
#   make test-fast  - the quick tier: no browser, no real weights, no RTSP server, nothing marked slow
#   make lint       - ruff, configured in pyproject.toml
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
# Debian packages the tests need: a real RTSP server (GStreamer), a real browser, ffmpeg for media fixtures,
# espeak-ng for real speech.
APT_PACKAGES := python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base gstreamer1.0-plugins-bad chromium ffmpeg espeak-ng
SERVE_ARGS ?=
PYTEST_ARGS ?=
# The quick tier, by the markers declared in pyproject.toml.
FAST_MARKERS := not slow and not browser and not real_weights and not rtsp
# The offline extra's exact pins (pyproject.toml is the one place for them); installed with --no-deps below.
OFFLINE_PINS = $(shell $(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['offline']))")

.PHONY: serve test test-fast lint install apt clean

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is pinned first so pip takes the CPU build on disk, never a CUDA download.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,ray]'
	$(PIP) install --quiet --no-deps $(OFFLINE_PINS)
	touch $(STAMP)

install: $(STAMP)

$(APT_STAMP): Makefile | $(PY)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	touch $(APT_STAMP)

apt: $(APT_STAMP)

serve: $(STAMP)
	$(VENV)/bin/livesight serve $(SERVE_ARGS)

test: $(STAMP) $(APT_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
