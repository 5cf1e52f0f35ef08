# The two set-up commands: `make run` (the main job) and `make test` (lint + the whole test suite +
# runtime-check, mediapipe-check and, where qemu-user is installed or in CI, arm64-check). Both create
# .venv if missing and install edgepack with its toolchain and dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(if $(EDGEPACK_DATA),$(EDGEPACK_DATA),../shared/data/cifar-10-python.tar.gz)
OUT ?= runs/pipeline
# Two workers, one test module each at a time (module fixtures such as the Ray instance are built once).
PYTEST_ARGS ?= -n 2 --dist loadfile
# The runtime as apps install it (`pip install .`, no extras: no TensorFlow) and the small exported
# files the test run leaves for it to check.
RUNTIME_VENV := .venv-runtime
RUNTIME_MODELS := runs/runtime-check
# MediaPipe (reads the standard TFLite metadata back) in its own environment: it needs absl-py >= 2,
# which TF-MOT refuses in .venv.
MEDIAPIPE_VENV := .venv-mediapipe

.PHONY: run test lint venv clean runtime-check mediapipe-check browser-deps arm64-check system-deps

# uv installs the ~100 packages of the toolchain in ~25 s where pip takes ~2 minutes (the same
# versions: both take the newest release within pyproject.toml's ranges).
UV_VERSION := uv>=0.9,<1
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(UV_VERSION)"

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[toolchain,dev]"
	touch $@

venv: $(VENV)/.installed

# The main job: train, compress, export and compare into $(OUT)/report (re-running resumes).
# CONFIG=examples/full-study.toml: the full study (about three times as long).
CONFIG ?=
run: venv
	$(BIN)/edgepack pipeline --data $(DATA) --out $(OUT) $(if $(CONFIG),--config $(CONFIG))

lint: venv
	$(BIN)/ruff check edgepack tests examples scripts

# System tools the target tests drive, from Debian's packages: qemu-user (the arm64 target) and Chromium
# (the browser target). Installed when missing and run as root; otherwise named, and their tests skip.
SYSTEM_TOOLS := qemu-aarch64:qemu-user chromium:chromium

system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing (Debian packages)"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	else echo "the arm64/browser target tests need:$$missing (apt-get install$$missing); they skip without"; fi

test: lint system-deps browser-deps
	rm -rf $(RUNTIME_MODELS)
	EDGEPACK_DATA=$(DATA) EDGEPACK_RUNTIME_MODELS=$(CURDIR)/$(RUNTIME_MODELS) $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory runtime-check
	$(MAKE) --no-print-directory mediapipe-check
	@if command -v qemu-aarch64 >/dev/null || [ -n "$$CI" ]; then $(MAKE) --no-print-directory arm64-check; \
	else echo "arm64-check skipped: qemu-aarch64 not installed (apt-get install qemu-user)"; fi

$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(RUNTIME_VENV)/bin/python -m pip install --quiet .
	touch $@

# edgepack.runtime, `edgepack predict` and `edgepack bench` without TensorFlow: re-installs the current
# sources into .venv-runtime, then loads and runs the exported files there (made here if missing).
runtime-check: $(RUNTIME_VENV)/.installed | $(BIN)/python
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation --force-reinstall .
	test -f $(RUNTIME_MODELS)/images.npy || $(BIN)/python tests/runtime_only_check.py --make $(RUNTIME_MODELS)
	cd $(RUNTIME_VENV) && bin/python $(CURDIR)/tests/runtime_only_check.py $(CURDIR)/$(RUNTIME_MODELS)

$(MEDIAPIPE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet ".[mediapipe-check]"
	touch $@

# MediaPipe's ImageClassifier and metadata schema read labels and normalization back from the exported
# .tflite files runtime-check uses (made here if missing); ~10 s after the one-time install.
mediapipe-check: $(MEDIAPIPE_VENV)/.installed | $(BIN)/python
	test -f $(RUNTIME_MODELS)/images.npy || $(BIN)/python tests/runtime_only_check.py --make $(RUNTIME_MODELS)
	$(MEDIAPIPE_VENV)/bin/python tests/mediapipe_check.py $(RUNTIME_MODELS)

# The browser target (docs/browser.md): onnxruntime-web at the version pinned in the page's
# package-lock.json, installed with `npm ci` into the user cache where edgepack looks for it (~15 s,
# 150 MB); Playwright (the browser extra) comes with the dev extra. Needs node and npm; measuring also
# needs a system Chromium (system-deps).
BROWSER_PAGE := edgepack/target/browser_page
ORT_WEB_VERSION := $(shell sed -n 's/.*"onnxruntime-web": "\(.*\)".*/\1/p' $(BROWSER_PAGE)/package.json)
ORT_WEB_DIR ?= $(or $(EDGEPACK_ORT_WEB),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/edgepack/onnxruntime-web-$(ORT_WEB_VERSION))

$(ORT_WEB_DIR)/.installed: $(BROWSER_PAGE)/package-lock.json
	mkdir -p $(ORT_WEB_DIR)
	cp $(BROWSER_PAGE)/package.json $(BROWSER_PAGE)/package-lock.json $(ORT_WEB_DIR)/
	cd $(ORT_WEB_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

browser-deps: venv $(ORT_WEB_DIR)/.installed

# The runtime-check files (made here if missing; not their altered copies) on aarch64 ONNX Runtime and
# LiteRT under qemu-user, against this machine (edgepack target-check --target arm64, docs/arm64.md).
# Builds the emulated Python into ~/.cache/edgepack on first use; needs root, qemu-user, apt, unshare.
arm64-check: venv
	test -f $(RUNTIME_MODELS)/images.npy || $(BIN)/python tests/runtime_only_check.py --make $(RUNTIME_MODELS)
	$(BIN)/edgepack target-check --target arm64 --images $(RUNTIME_MODELS)/images.npy \
		--out $(RUNTIME_MODELS)/arm64.json $$(ls $(RUNTIME_MODELS)/*.onnx $(RUNTIME_MODELS)/*.tflite | grep -v /altered-)

clean:
	rm -rf $(VENV) .venv-runtime $(MEDIAPIPE_VENV) .pytest_cache .ruff_cache
