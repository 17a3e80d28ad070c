"""The trainer and recipes: learning per recipe, what each recipe freezes, optimiser groups, schedule,
exact resume, atomic checkpoints, the CLI. Tiny preset, batch 2, a 2-episode LeRobot v3 dataset."""

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from xr0 import XR0Policy
from xr0.data import DataError
from xr0.data.lerobot_v3 import LeRobotV3Writer
from xr0.train import TrainConfig, Trainer, find_latest, get_recipe, lr_at
from xr0.train import cli as train_cli
from xr0.train import trainer as trainer_mod
from xr0.model.choice import ChoiceHeads
from xr0.train.recipes import EMBEDDINGS
from xr0.data.vqa import write_vqa_jsonl

STATE_DIM, ACTION_DIM, T = 8, 7, 10
CAMS = {"front": (32, 32), "wrist": (32, 32)}


def write_dataset(root, lengths=(24, 20), frames_per_file=None, env_state=False):
    """Toy episodes (one random image per episode); env_state=True also records a 3-D environment state that
    only the images reveal (a per-episode constant)."""
    names = ["a", "b", "c"] if env_state else None
    with LeRobotV3Writer(root, 10, CAMS, STATE_DIM, ACTION_DIM, robot_type="toy", frames_per_file=frames_per_file,
                         env_state_names=names) as w:
        for e, n in enumerate(lengths):
            rng = np.random.default_rng(e)
            t = np.linspace(0, 1, n)[:, None]
            actions = 2.0 * np.sin(2 * np.pi * (t + np.arange(ACTION_DIM) / ACTION_DIM)) + 0.1 * rng.normal(size=(n, 7))
            states = np.cumsum(rng.normal(size=(n, STATE_DIM)), 0)
            images = {c: np.repeat(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), n, 0)
                      for c, (h, w) in CAMS.items()}
            env = np.repeat(rng.normal(size=(1, 3)), n, 0) if env_state else None
            w.add_episode(images, states, actions, f"move arm pattern {e}", env_states=env)
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("lerobot"))


def config(dataset, out, **kw):
    base = dict(preset=None if "init" in kw else "tiny", data=str(dataset), out=str(out), robot_type="toy", steps=30, batch_size=2, lr=3e-3, warmup=3,
                save_every=1000, log_every=1, dtype="fp32", seed=0, progress=False)
    return TrainConfig(**{**base, **kw})


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def snapshot(policy):
    return {k: v.detach().clone() for k, v in policy.model.named_parameters()}


# ---------------------------------------------------------------- each recipe learns and freezes what it should
@pytest.mark.parametrize("recipe", ["stage2", "post-sync", "post-async"])
def test_recipe_lowers_loss_and_freezes(dataset, tmp_path, recipe):
    tr = Trainer(config(dataset, tmp_path / recipe, recipe=recipe, overfit_batch=True, augment=False))
    before = snapshot(tr.policy)
    tr.run()
    rows = metrics(tmp_path / recipe)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 30 and all(np.isfinite(losses))
    # the MSE on the active dims: the official rFFT term also covers the dims the action mask drops, where the
    # target (-noise) cannot be predicted, so the total has a floor
    mse = [r["mse"] for r in rows]
    first, last = np.mean(mse[:5]), np.mean(mse[-5:])
    assert last < 0.6 * first, (recipe, mse)
    # the schedule the trainer applied: warm-up from the floor to the peak, cosine back to the floor
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s, 3e-3, 3, 30) for s in range(30)], rel=1e-12)
    after = dict(tr.policy.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    vlm = {k for k in before if k.startswith("vlm.")}
    expert = set(before) - vlm
    assert expert <= changed, sorted(expert - changed)
    if recipe == "stage2":
        assert not (changed & vlm), sorted(changed & vlm)[:5]
        assert not tr.policy.model.vlm.training and all(not p.requires_grad for p in tr.policy.model.vlm.parameters())
    else:
        assert EMBEDDINGS not in changed and not after[EMBEDDINGS].requires_grad
        assert any(k.startswith("vlm.model.visual.") for k in changed)
        assert any(k.startswith("vlm.model.language_model.layers.") for k in changed)
    prefixes = [r["prefix_len"][0] for r in rows]
    if recipe == "post-async":
        assert 0 in prefixes and any(p > 0 for p in prefixes) and max(prefixes) <= 6
        # the losses of prefix-free steps still fall monotonically-ish under the fixed batch
        sync = [r["mse"] for r in rows if r["prefix_len"][0] == 0]
        assert sync[-1] < 0.6 * sync[0]
    else:
        assert set(prefixes) == {0}


# ---------------------------------------------------------------- optimiser groups and schedule
def test_param_groups_and_schedule(dataset, tmp_path):
    tr = Trainer(config(dataset, tmp_path, recipe="post-sync"))
    decay, no_decay = tr.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert tr.optimizer.defaults["betas"] == (0.9, 0.95) and tr.optimizer.defaults["eps"] == 1e-8
    patterns = ("bias", "norm", "ln", "rotary_emb", "adaln")
    assert all(any(p in n for p in patterns) for n in no_decay["names"])
    assert not any(any(p in n for p in patterns) for n in decay["names"])
    for name in ("model.dit.layers.0.adaln_table", "model.dit.layers.1.attn.qkv_proj.bias",
                 "model.dit.layers.0.input_layernorm.weight", "model.t_projector.layers.0.bias",
                 "model.vlm.model.visual.blocks.0.norm1.bias", "model.vlm.model.language_model.norm.weight"):
        assert name in no_decay["names"], name
    for name in ("model.dit.layers.0.attn.qkv_proj.weight", "model.sink.weight",
                 "model.vlm.model.language_model.layers.0.self_attn.q_proj.weight"):
        assert name in decay["names"], name
    assert "model." + EMBEDDINGS not in decay["names"] + no_decay["names"]  # frozen: not optimised at all
    trainable = {n for n, p in tr.core.named_parameters() if p.requires_grad}
    assert trainable == set(decay["names"]) | set(no_decay["names"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trainer_mod.resolve_dtype("bf16", cpu) == trainer_mod.resolve_dtype("auto", cuda) == torch.bfloat16
    assert trainer_mod.resolve_dtype("fp32", cuda) is None and tr.amp_dtype is None  # config(): dtype fp32
    with pytest.raises(ValueError, match="--dtype"):  # one name check for training and inference
        trainer_mod.resolve_dtype("fp16", cpu)
    # spec §6.6 shape: 5e-7 -> peak over the warm-up, cosine to 5e-7 at max_steps
    assert lr_at(0, 1e-4, 2000, 30_000) == 5e-7
    assert lr_at(1000, 1e-4, 2000, 30_000) == pytest.approx(5e-7 + (1e-4 - 5e-7) / 2)
    assert lr_at(2000, 1e-4, 2000, 30_000) == 1e-4
    assert lr_at(16_000, 1e-4, 2000, 30_000) == pytest.approx(5e-7 + (1e-4 - 5e-7) / 2)
    assert lr_at(30_000, 1e-4, 2000, 30_000) == pytest.approx(5e-7)
    assert lr_at(40_000, 1e-4, 2000, 30_000) == pytest.approx(5e-7)


# ---------------------------------------------------------------- resume replays the same trajectory
def test_resume_gives_identical_losses(dataset, tmp_path):
    kw = dict(recipe="post-async", steps=6, save_every=3, grad_accum=2, dtype="bf16", lr=1e-3, warmup=2)
    straight = Trainer(config(dataset, tmp_path / "a", **kw))
    straight.run()
    Trainer(config(dataset, tmp_path / "b", stop_after=3, **kw)).run()  # "killed" right after the step-3 checkpoint
    assert find_latest(tmp_path / "b").name == "step_000003"
    resumed = Trainer(config(dataset, tmp_path / "b", resume=True, **kw))
    assert resumed.step == 3 and resumed.data_position == 3 * 2 * 2
    resumed.run()
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["prefix_len"] for r in a] == [r["prefix_len"] for r in b]
    sa, sb = straight.policy.model.state_dict(), resumed.policy.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the checkpoint holds no pickle: only JSON and safetensors files
    ckpt = find_latest(tmp_path / "b")
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".json", ".safetensors", ".safetensors",
                                                        ".safetensors"]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data_position"] == 24 and set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["scheduler"]["total"] == 6 and state["scheduler"]["warmup"] == 2


def test_sigterm_checkpoints_at_the_next_step_and_resume_is_identical(dataset, tmp_path, capsys):
    """SIGTERM (what SLURM and Kubernetes send before killing) during step 4: the run saves step 4, returns normally
    (the CLI exits 0), and --resume continues with the losses of an uninterrupted run. save_every is not a divisor."""
    import os
    import signal

    kw = dict(recipe="post-async", steps=7, save_every=5, lr=1e-3, warmup=2)
    Trainer(config(dataset, tmp_path / "a", **kw)).run()
    tr = Trainer(config(dataset, tmp_path / "b", **kw))
    step = tr.train_step

    def step_then_sigterm():
        out = step()
        if tr.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag; the step in flight completes
        return out

    tr.train_step = step_then_sigterm
    before = signal.getsignal(signal.SIGTERM)
    result = tr.run()
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone again
    assert result.steps_done == 4 and result.last_checkpoint.name == "step_000004"
    assert "SIGTERM: stopped at step 4/7" in capsys.readouterr().err
    Trainer(config(dataset, tmp_path / "b", resume=True, **kw)).run()
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 8))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


# ---------------------------------------------------------------- atomic checkpoints
def test_checkpoints_are_atomic(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tr = Trainer(config(dataset, out, recipe="stage2", steps=4, save_every=2))
    real = trainer_mod.flatten_optimizer
    calls = []

    def crash_on_second(sd):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(sd)

    monkeypatch.setattr(trainer_mod, "flatten_optimizer", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        tr.run()
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_000002"
    assert not (root / "step_000004").exists()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and leftovers[0].startswith(".tmp-step_000004")
    # an incomplete step folder (e.g. copied by hand) and a stale pointer to it are ignored too
    (root / "step_000009").mkdir()
    (root / "step_000009" / "config.json").write_text("{}")
    (root / "latest").write_text("step_000009\n")
    assert find_latest(out).name == "step_000002"
    monkeypatch.setattr(trainer_mod, "flatten_optimizer", real)
    resumed = Trainer(config(dataset, out, recipe="stage2", steps=4, save_every=2, resume=True))
    assert resumed.step == 2
    result = resumed.run()
    assert result.last_checkpoint.name == "step_000004" and (root / "latest").read_text().strip() == "step_000004"
    loaded = XR0Policy.from_pretrained(result.last_checkpoint)
    spec = loaded.robot("toy")
    assert spec.action_mean.shape == (T, 32) and spec.action_mask.tolist() == [1] * 7 + [0] * 25
    assert (spec.action_std[:, :7] != spec.action_std[0, :7]).any()  # per-timestep statistics
    assert spec.state_dim == STATE_DIM and np.any(spec.state_std[:STATE_DIM] != 1)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config(dataset, out, recipe="stage2"))
    # stage2 -> post-async: --init takes the weights and statistics (a run folder means its latest checkpoint)
    post = Trainer(config(dataset, tmp_path / "post", recipe="post-async", init=str(out), steps=2))
    assert post.step == 0 and post.policy.robot("toy").action_mean.tolist() == spec.action_mean.tolist()
    assert all(torch.equal(v, dict(loaded.model.named_parameters())[k]) for k, v in post.policy.model.named_parameters())
    assert all(p.requires_grad for n, p in post.policy.model.named_parameters() if n != EMBEDDINGS)
    assert post.run().steps_done == 2


# ---------------------------------------------------------------- recipes, switches, CLI
def test_async_prefix_draws_and_switches():
    rec = get_recipe("post-async")
    assert (rec.reweight, rec.freq_weight, rec.repeat, rec.max_prefix, rec.lambda_mask) == (True, 1.0, 4, 6, True)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    draws = [rec.options(10, rng, gen) for _ in range(4000)]
    ps = np.array([o.prefix_len for o in draws])
    assert abs((ps == 0).mean() - 0.5) < 0.03
    counts = np.bincount(ps[ps > 0], minlength=7)[1:]  # p ~ U{1..6}
    assert counts.min() > 0.8 * counts.mean()
    assert all(o.reweight and o.repeat == 4 and o.freq_weight == 1.0 for o in draws)
    long = [o for o in draws if o.prefix_len >= 3]
    assert all(o.hidden_prefix.shape == (o.prefix_len,) and not o.hidden_prefix[-2:].any() for o in long)
    assert np.mean([o.hidden_prefix[0].item() for o in long]) == pytest.approx(0.5, abs=0.05)
    assert all(o.hidden_prefix is None for o in draws if 0 < o.prefix_len <= 2)  # keep_last=2: nothing to hide
    assert max(get_recipe("post-async").options(3, random.Random(s), gen).prefix_len for s in range(50)) == 3
    off = get_recipe("post-async", prefix_dropout=0.0, reweight=False)
    assert all(o.hidden_prefix is None and not o.reweight for o in (off.options(10, rng, gen) for _ in range(50)))
    assert get_recipe("post-sync").options(10, rng, gen).prefix_len == 0
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("stage3")


def test_cli_flags_map_to_config_and_ablations():
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--recipe", "post-async", "--no-lambda-mask", "--no-rope-offset", "--no-reweight",
                              "--no-prefix-dropout", "--freq-weight", "0", "--repeat", "2", "--max-prefix", "3",
                              "--steps", "5", "--batch-size", "3", "--dtype", "fp32", "--cameras", "wrist,front",
                              "--grad-accum", "2", "--fsdp", "--skip-bad", "--resume", "--raw-state", "--no-augment",
                              "--overfit-batch", "--no-progress", "--image-size", "96,128", "--state-dropout", "0.5",
                              "--env-state-loss", "0.5", "--start-frames", "8", "--start-repeat", "4"])
    cfg = train_cli.config_from_args(args)
    assert cfg.image_size == (96, 128) and cfg.state_dropout == 0.5
    assert (cfg.start_frames, cfg.start_repeat) == (8, 4)
    assert (cfg.steps, cfg.batch_size, cfg.dtype, cfg.grad_accum, cfg.fsdp, cfg.skip_bad, cfg.resume) == \
        (5, 3, "fp32", 2, True, True, True)
    assert (cfg.raw_state, cfg.augment, cfg.overfit_batch, cfg.progress) == (True, False, True, False)
    assert cfg.cameras == ("wrist", "front") and cfg.lr == TrainConfig().lr
    rec = get_recipe(cfg.recipe, **cfg.recipe_overrides)
    assert (rec.lambda_mask, rec.rope_offset, rec.reweight, rec.prefix_dropout, rec.freq_weight, rec.repeat,
            rec.max_prefix, rec.env_state_weight) == (False, 0, False, 0.0, 0.0, 2, 3, 0.5)
    policy = XR0Policy.from_preset("tiny")
    rec.configure(policy.model)
    assert policy.config.expert.local_window is None and policy.config.expert.rope_offset == 0
    assert policy.config.max_prefix == 3
    defaults = train_cli.config_from_args(parser.parse_args([]))
    assert dataclasses.asdict(defaults) == dataclasses.asdict(TrainConfig())


def test_state_dropout_hides_the_state_of_a_seeded_share_of_samples(dataset, tmp_path):
    positions = list(range(40))
    keep = Trainer(config(dataset, tmp_path / "a", recipe="post-sync", augment=False))._samples(positions)
    tr = Trainer(config(dataset, tmp_path / "b", recipe="post-sync", augment=False, state_dropout=0.5))
    drop = tr._samples(positions)
    robot = tr.policy.robot("toy")
    hidden = [np.array_equal(d["state"], robot.state_mean[:STATE_DIM]) for d in drop]
    assert 10 <= sum(hidden) <= 30  # about half, drawn per sample position
    for k, d, h in zip(keep, drop, hidden):
        if not h:
            np.testing.assert_array_equal(d["state"], k["state"])
        np.testing.assert_array_equal(d["actions"], k["actions"])  # only the state changes
    assert [np.array_equal(d["state"], robot.state_mean[:STATE_DIM]) for d in tr._samples(positions)] == hidden
    batch = tr.policy.make_batch([drop[hidden.index(True)]], "toy")
    assert float(batch["state"].abs().max()) < 1e-5  # a hidden state is zero to the model
    with pytest.raises(ValueError, match="state_dropout"):
        Trainer(config(dataset, tmp_path / "c", state_dropout=1.5))


def test_start_frames_are_drawn_start_repeat_times_per_epoch(dataset, tmp_path):
    """--start-frames N --start-repeat R: one epoch draws each episode's first N frames R times, every other frame
    once, in a seeded order that is the same on every call (so resuming is exact)."""
    lengths = (24, 20)
    plain = Trainer(config(dataset, tmp_path / "a", recipe="post-sync"))
    tr = Trainer(config(dataset, tmp_path / "b", recipe="post-sync", start_frames=3, start_repeat=4))
    frames = tr.dataset.frame_indices()
    assert frames.tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert plain.sampler.n == sum(lengths) and tr.sampler.n == sum(lengths) + 2 * 3 * 3
    drawn = np.bincount([tr.sampler[k] for k in range(tr.sampler.n)], minlength=sum(lengths))
    assert drawn.tolist() == [4 if f < 3 else 1 for f in frames]
    again = Trainer(config(dataset, tmp_path / "c", recipe="post-sync", start_frames=3, start_repeat=4))
    assert [again.sampler[k] for k in range(100)] == [tr.sampler[k] for k in range(100)]
    for bad in ({"start_frames": -1}, {"start_repeat": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Trainer(config(dataset, tmp_path / "d", **bad))


def test_env_state_loss_teaches_the_image_tokens_and_stays_out_of_the_policy(dataset, tmp_path):
    """--env-state-loss: a head reads the environment state from the VLM's image tokens and learns it (loss well
    under 1 = predicting the mean); it is checkpointed in its own file, reloaded on resume, and the policy's
    weights keep their layout (loadable by XR0Policy, no head tensors)."""
    data = write_dataset(tmp_path / "es-data", env_state=True)
    kw = dict(recipe="post-sync", overfit_batch=True, augment=False, steps=40, save_every=20,
              recipe_overrides={"env_state_weight": 1.0})
    tr = Trainer(config(data, tmp_path / "es", **kw))
    assert tr.heads.dims["env_state_dim"] == 3
    tr.run()
    rows = metrics(tmp_path / "es")
    for key in ("env_state_vlm", "env_state_expert"):  # both readouts learn what only the images reveal
        first, last = np.mean([r[key] for r in rows[:3]]), np.mean([r[key] for r in rows[-3:]])
        assert last < 0.3 * first and last < 0.3, (key, first, last)
    ckpt = find_latest(tmp_path / "es")
    assert (ckpt / "env_state_head.safetensors").is_file()
    policy = XR0Policy.from_pretrained(ckpt)  # strict load: the head is not in the policy's weights
    assert set(policy.model.state_dict()) == set(tr.policy.model.state_dict())
    resumed = Trainer(config(data, tmp_path / "es", **{**kw, "steps": 41, "resume": True}))
    assert all(torch.equal(v, resumed.heads.state_dict()[k]) for k, v in tr.heads.state_dict().items())
    with pytest.raises(ValueError, match="environment_state"):
        Trainer(config(dataset, tmp_path / "plain", recipe_overrides={"env_state_weight": 1.0}))
    with pytest.raises(ValueError, match="env_state_weight"):
        get_recipe("stage1", env_state_weight=1.0)


def test_stage1_recipe_trains_vlm_and_heads_with_vl_data(dataset, tmp_path):
    """`--recipe stage1 --vl-data`: choice heads + VLM learn (WTA, score, VL next-token at 1:6), the DiT is
    untouched, the heads are checkpointed in their own file and a resume reloads them."""
    vl = write_vqa_jsonl(tmp_path / "vqa", 8, seed=0, size=(32, 32))
    kw = dict(recipe="stage1", vl_data=str(vl), batch_size=6, overfit_batch=True, augment=False, steps=20, save_every=10)
    tr = Trainer(config(dataset, tmp_path / "s1", **kw))
    assert [tr._vl_batch(step, 0)["labels"].shape[0] for step in range(4)] == [1] * 4  # 1 VL : 6 robot samples
    before = snapshot(tr.policy)
    tr.run()
    rows = metrics(tmp_path / "s1")
    assert {"loss", "action", "score", "vl"} <= set(rows[0])
    assert np.mean([r["action"] for r in rows[-3:]]) < 0.6 * np.mean([r["action"] for r in rows[:3]])
    after = dict(tr.policy.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if not k.startswith("vlm.")}, "stage 1 must not train the DiT"
    assert EMBEDDINGS in changed and any(k.startswith("vlm.model.language_model.layers.") for k in changed)
    ckpt = find_latest(tmp_path / "s1")
    heads = ChoiceHeads.load(ckpt)
    assert all(torch.equal(v, tr.heads.state_dict()[k]) for k, v in heads.state_dict().items())
    resumed = Trainer(config(dataset, tmp_path / "s1", **{**kw, "steps": 22, "resume": True}))
    assert all(torch.equal(v, resumed.heads.state_dict()[k]) for k, v in heads.state_dict().items())
    assert train_cli.main(["--preset", "tiny", "--recipe", "stage1", "--data", str(dataset), "--out", str(tmp_path / "bad"),
                           "--vl-data", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_run_skips_bad_episodes(tmp_path):
    root = write_dataset(tmp_path / "data", lengths=(12, 12, 12), frames_per_file=1)
    mp4 = root / "videos/observation.images.front/chunk-000/file-001.mp4"
    mp4.write_bytes(mp4.read_bytes()[:200])  # episode 1 unreadable
    with pytest.raises(DataError, match=r"file-001\.mp4.*episode 1"):
        Trainer(config(root, tmp_path / "run", recipe="stage2"))
    cmd = [sys.executable, "-m", "xr0.cli", "train", "--preset", "tiny", "--recipe", "stage2", "--data", str(root), "--out",
           str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--warmup", "1", "--lr", "1e-3",
           "--robot-type", "toy", "--no-progress", "--dtype", "fp32", "--skip-bad"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr
    assert "skipped 1 bad episode" in ok.stderr and "episode 1" in ok.stderr
    assert find_latest(tmp_path / "run").name == "step_000002"
    assert len(metrics(tmp_path / "run")) == 1  # --log-every default 10: the last step is always logged


def cli_command(dataset, save_every: int):
    """out, *extra -> the argv of a 12-step post-async `xr0 train` run on the toy dataset."""
    args = ["--preset", "tiny", "--recipe", "post-async", "--data", str(dataset), "--robot-type", "toy", "--steps", "12",
            "--batch-size", "2", "--save-every", str(save_every), "--log-every", "1", "--lr", "1e-3", "--warmup",
            "2", "--no-progress"]
    return lambda out, *extra: [sys.executable, "-m", "xr0.train.cli", "--out", str(out), *args, *extra]


@pytest.mark.slow
def test_resume_after_kill_9(dataset, tmp_path):
    """The real thing: SIGKILL a CLI run once its step-4 checkpoint exists, resume, compare with a straight run."""
    run = cli_command(dataset, save_every=4)
    subprocess.run(run(tmp_path / "a"), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(run(tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while find_latest(tmp_path / "b") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    killed_at = find_latest(tmp_path / "b")
    assert killed_at is not None
    subprocess.run(run(tmp_path / "b", "--resume"), check=True, capture_output=True, timeout=600)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


@pytest.mark.slow
def test_cli_exits_0_on_sigterm_and_resumes_identically(dataset, tmp_path):
    """The real thing: SIGTERM a CLI run once it has logged a step; it exits 0 with a checkpoint, --resume matches."""
    import signal

    run = cli_command(dataset, save_every=100)
    subprocess.run(run(tmp_path / "a"), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(run(tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (tmp_path / "b" / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "SIGTERM" in err, err
    stopped = find_latest(tmp_path / "b")
    assert stopped is not None and int(stopped.name.split("_")[1]) < 12
    subprocess.run(run(tmp_path / "b", "--resume"), check=True, capture_output=True, timeout=600)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
