# The two set-up-and-run commands of the README: `make test` and `make generate`.
# Both build .venv on first use (CPU torch 2.13.0 first, so no CUDA wheels are pulled).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= a red circle moving right on a black background
OUT ?= clip.mp4

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

.PHONY: test generate bench
test: $(VENV)/.installed
	$(PY) -m pytest

# Until the trained demo model ships in demo/, the main job runs on a random tiny model set
# (written once into models/ by init-models): the whole chain runs, the pictures are noise.
MODEL_ARG := $(if $(wildcard demo/emu_video_models.json),,--model models)
generate: $(VENV)/.installed
	$(if $(MODEL_ARG),test -f models/emu_video_models.json || $(VENV)/bin/emu-video init-models --preset tiny --out models)
	$(VENV)/bin/emu-video generate $(MODEL_ARG) --prompt "$(PROMPT)" --out "$(OUT)"

bench: $(VENV)/.installed
	$(VENV)/bin/emu-video bench
