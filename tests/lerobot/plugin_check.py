"""make test-lerobot, part 2: xr0 as a LeRobot policy plugin (integrations/lerobot), with the real LeRobot 0.6.1.

    .venv-lerobot/bin/python tests/lerobot/plugin_check.py create DIR [image] # a dataset written by LeRobot itself
    .venv/bin/python tests/lerobot/plugin_check.py read DIR                   # read by xr0 (image dtype: exactly)
    .venv-lerobot/bin/python tests/lerobot/plugin_check.py train DATA OUT [INIT]  # 3 lerobot-train --policy.type=xr0
                                                                      # steps (fresh tiny preset, or from INIT)
    .venv-lerobot/bin/python tests/lerobot/plugin_check.py act CKPT DATA     # select_action, RTC == xr0's sample()
    .venv/bin/python tests/lerobot/plugin_check.py stats DATA                # xr0 data stats == LeRobot's stats.json

Each step prints one JSON line and exits non-zero on a failed check. `xr0 eval metaworld --checkpoint OUT` (main
venv) then evaluates what lerobot-train saved.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

EPISODES, FRAMES, SIZE = 2, 30, 64


def _pixels(ep: int, frame: int, camera: int) -> np.ndarray:
    return np.random.default_rng([ep, frame, camera]).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def create(root: str, dtype: str = "video") -> dict:
    """A dataset written by LeRobot itself; dtype "image" stores the cameras as PNG in the data parquet."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    shutil.rmtree(root, ignore_errors=True)
    image = {"dtype": dtype, "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    features = {"observation.images.base_view": image, "observation.images.top_view": image,
                "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "grip"]},
                "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]}}
    ds = LeRobotDataset.create("local/lerobot-written", fps=40, root=root, robot_type="metaworld", features=features,
                               use_videos=dtype == "video")
    rng = np.random.default_rng(0)
    for ep in range(EPISODES):
        for f in range(FRAMES):
            ds.add_frame({"observation.images.base_view": _pixels(ep, f, 0),
                          "observation.images.top_view": _pixels(ep, f, 1),
                          "observation.state": rng.normal(size=4).astype(np.float32),
                          "action": rng.uniform(-1, 1, size=4).astype(np.float32), "task": f"task {ep}"})
        ds.save_episode()
    ds.finalize()
    info = json.loads((Path(root) / "meta" / "info.json").read_text())
    codec = (info["features"]["observation.images.base_view"].get("info") or {}).get("video.codec")
    return {"created": root, "dtype": dtype, "episodes": EPISODES, "frames": EPISODES * FRAMES, "video_codec": codec}


def read(root: str) -> dict:
    """xr0's reader (main venv) on a LeRobot-written dataset: every sample; image-dtype pixels exactly."""
    from xr0.data.lerobot_v3 import LeRobotV3Dataset

    ds = LeRobotV3Dataset(root, 4)
    assert len(ds) == EPISODES * FRAMES and ds.cameras == ["base_view", "top_view"], (len(ds), ds.cameras)
    exact = ds.info["features"]["observation.images.base_view"]["dtype"] == "image"
    diffs = []
    for i in range(len(ds)):
        s = ds[i]
        for c, cam in enumerate(ds.cameras):
            diffs.append(np.abs(s["images"][cam].astype(float) - _pixels(s["episode"], s["frame"], c)))
    worst, mean = float(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs]))
    if exact:
        assert worst == 0.0, worst  # PNG: lossless
    return {"read": root, "samples": len(ds), "image_dtype": exact, "max_abs_pixel_diff": worst,
            "mean_abs_pixel_diff": round(mean, 2)}  # video: lossy AV1 of random pixels


def stats(root: str) -> dict:
    """`xr0 data stats` (main venv) on a copy of a LeRobot-written dataset: observation.state and action equal the
    stats.json LeRobot wrote, every value (LeRobot computes in float32, hence the tolerance)."""
    import tempfile

    from xr0.data.stats_cli import write_stats

    theirs = json.loads((Path(root) / "meta" / "stats.json").read_text())
    copy = Path(tempfile.mkdtemp()) / "copy"
    shutil.copytree(root, copy)
    write_stats(copy, [4])
    ours = json.loads((copy / "meta" / "stats.json").read_text())
    worst = {}
    for key in ("observation.state", "action"):
        assert set(ours[key]) == set(theirs[key]), (key, sorted(ours[key]), sorted(theirs[key]))
        for stat, value in theirs[key].items():
            diff = float(np.abs(np.asarray(ours[key][stat], float) - np.asarray(value, float)).max())
            worst[f"{key}/{stat}"] = diff
            assert diff <= 1e-6, (key, stat, diff)
    return {"stats": root, "values": len(worst), "max_abs_diff": max(worst.values())}


def train(data: str, out: str, init_from: str | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    # T = 20 as the MetaWorld recipe (a fresh preset's default would be its own, 10 for tiny)
    start = [f"--policy.init_from={init_from}"] if init_from else ["--policy.preset=tiny", "--policy.chunk_len=20"]
    cmd = [str(Path(sys.executable).with_name("lerobot-train")), "--policy.type=xr0", *start,
           "--policy.device=cpu", "--policy.push_to_hub=false", f"--dataset.repo_id=local/{Path(data).name}",
           f"--dataset.root={data}", f"--output_dir={out}", "--steps=3", "--batch_size=2", "--save_freq=3",
           "--log_freq=1", "--num_workers=0", "--wandb.enable=false"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"lerobot-train failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    folder = Path(out) / "checkpoints" / "last" / "pretrained_model"
    files = sorted(p.name for p in folder.iterdir())
    for name in ("config.json", "xr0_config.json", "model.safetensors", "normalization.safetensors"):
        assert name in files, (name, files)
    assert json.loads((folder / "config.json").read_text())["type"] == "xr0"
    losses = [line for line in (run.stdout + run.stderr).splitlines() if "loss:" in line]
    return {"trained": out, "data": data, "init_from": init_from, "steps": 3, "files": files,
            "last_log": losses[-1].strip() if losses else None}


def act(ckpt: str, data: str) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot_policy_xr0.modeling_xr0 import XR0Policy

    from xr0.checkpoints import resolve_checkpoint

    folder = resolve_checkpoint(ckpt)  # a lerobot-train run -> checkpoints/last/pretrained_model
    policy = XR0Policy.from_pretrained(folder)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(folder))
    frame = LeRobotDataset(f"local/{Path(data).name}", root=data)[5]
    obs = {k: v for k, v in frame.items() if k.startswith("observation.")}
    obs["task"] = frame["task"]
    batch = pre(obs)
    # the preprocessor made the VLM inputs (processor_xr0.XR0VLMInputsStep), restored from the saved folder
    assert "observation.xr0.input_ids" in batch and "observation.xr0.pixel_values" in batch, sorted(batch)
    inner, T = policy.inner, policy.config.chunk_len
    images = {cam: (batch[key][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
              for key, cam in policy.cameras.items()}
    state = batch["observation.state"][0].numpy()
    noise = torch.randn(1, T, inner.config.action_dim, generator=torch.Generator().manual_seed(3))

    def xr0_sample(**kw):
        return inner.sample(images, frame["task"], state, noise=noise[0], robot_type=policy.robot_type, **kw)

    chunk = policy.predict_action_chunk(batch, noise=noise)[0].numpy()
    same_plain = float(np.abs(chunk - xr0_sample()).max())
    # lerobot-rollout's RTC call: 3 actions run during inference -> XR-0's trained clean prefix
    left = torch.from_numpy(chunk[T // 2:])
    rtc = policy.predict_action_chunk(batch, noise=noise, inference_delay=3, prev_chunk_left_over=left)[0].numpy()
    same_prefix = float(np.abs(rtc - xr0_sample(prefix=chunk[T // 2:T // 2 + 3])).max())
    assert np.array_equal(rtc[:3], chunk[T // 2:T // 2 + 3]), "the committed actions must come back first"
    # a delay beyond the trained prefix: inference-time RTC guidance toward the whole left-over
    d = inner.config.max_prefix + 1
    from xr0.runtime import rtc_prefix_weights
    guided = policy.predict_action_chunk(batch, noise=noise, inference_delay=d, prev_chunk_left_over=left)[0].numpy()
    same_guided = float(np.abs(guided - xr0_sample(prefix=chunk[T // 2:],
                                                   prefix_weights=rtc_prefix_weights(T - T // 2, d))).max())
    # a batch of 3 frames in one pass equals the frames one by one (each with its own noise)
    dataset = LeRobotDataset(f"local/{Path(data).name}", root=data)
    frames = [dataset[i] for i in (2, 9, 17)]
    one_by_one = []
    for f in frames:
        o = {k: v for k, v in f.items() if k.startswith("observation.")}
        o["task"] = f["task"]
        one_by_one.append(pre(o))
    stacked = {k: torch.cat([b[k] for b in one_by_one]) for k in one_by_one[0] if torch.is_tensor(one_by_one[0][k])}
    stacked["task"] = [f["task"] for f in frames]
    noises = torch.randn(3, T, inner.config.action_dim, generator=torch.Generator().manual_seed(4))
    batched = policy.predict_action_chunk(stacked, noise=noises).numpy()
    single = np.stack([policy.predict_action_chunk(b, noise=noises[i:i + 1])[0].numpy()
                       for i, b in enumerate(one_by_one)])
    batch_diff = float(np.abs(batched - single).max())
    assert batched.shape == (3, T, 4) and batch_diff <= 1e-4 * max(1.0, float(np.abs(single).max())), batch_diff
    policy.reset()
    first = [post(policy.select_action(batch)) for _ in range(policy.config.actions_per_chunk + 1)]
    assert all(tuple(a.shape) == (1, 4) for a in first)
    for name, diff in (("plain", same_plain), ("prefix", same_prefix), ("guided", same_guided)):
        assert diff == 0.0, (name, diff)
    return {"loaded": ckpt, "chunk": list(chunk.shape), "max_abs_diff_vs_xr0_sample": same_plain,
            "rtc_prefix_diff": same_prefix, "rtc_guided_diff": same_guided, "select_action_calls": len(first),
            "batch_of_3_vs_one_by_one": batch_diff,
            "max_prefix": inner.config.max_prefix}


def evaluate(out: str, episodes: str = "2") -> dict:
    """lerobot-eval with the plugin on LeRobot's own MetaWorld env (corner2 camera at 480x480 as
    `observation.image`, the 4-D agent_pos as `observation.state`): a fresh tiny xr0 folder with those features,
    saved with LeRobot's processors, evaluated on reach-v3. Untrained: this checks that it runs end to end."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot_policy_xr0.configuration_xr0 import XR0Config
    from lerobot_policy_xr0.modeling_xr0 import XR0Policy

    shutil.rmtree(out, ignore_errors=True)
    folder = Path(out) / "policy"
    config = XR0Config(preset="tiny", device="cpu", push_to_hub=False,
                       input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 480, 480)),
                                       "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
                       output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))})
    policy = XR0Policy(config)
    policy.save_pretrained(folder)
    pre, post = make_pre_post_processors(config)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    cmd = [str(Path(sys.executable).with_name("lerobot-eval")), f"--policy.path={folder}", "--policy.device=cpu",
           "--env.type=metaworld", "--env.task=reach-v3", f"--eval.n_episodes={episodes}",
           f"--eval.batch_size={episodes}", f"--output_dir={Path(out) / 'eval'}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"lerobot-eval failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    info = json.loads(next((Path(out) / "eval").rglob("eval_info.json")).read_text())
    overall = info.get("overall", info.get("aggregated", {}))
    return {"evaluated": str(folder), "env": "metaworld reach-v3", "episodes": int(episodes),
            "overall": {k: v for k, v in overall.items() if not isinstance(v, (list, dict))}}


if __name__ == "__main__":
    step, *args = sys.argv[1:]
    print(json.dumps({"step": step, **{"create": create, "read": read, "stats": stats, "train": train, "act": act,
                                      "eval": evaluate}[step](*args)}))
